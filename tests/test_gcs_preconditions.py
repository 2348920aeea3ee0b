"""GCS specifics on fake-gcs-server: create-only races (enforced by the emulator on
single-request uploads, not on resumable ones)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from konduktor.errors import ConflictError
from konduktor.storage import StoreOptions, open_store
from konduktor.storage import gcs as gcs_module

Factory = Callable[..., tuple[str, StoreOptions]]


def miss_first_stat(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Make the first look at the key miss, as if a rival created the key just after it."""
    real_head = gcs_module.GCSBackend.head
    calls = {"n": 0}

    def head(self: gcs_module.GCSBackend, key: str) -> object:
        calls["n"] += 1
        return None if calls["n"] == 1 else real_head(self, key)

    monkeypatch.setattr(gcs_module.GCSBackend, "head", head)
    return calls


def test_a_racing_writer_gets_412_and_both_succeed(
    gcs_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = gcs_store_factory()
    (tmp_path / "a").write_bytes(b"layer")
    digest = hashlib.sha256(b"layer").hexdigest()
    open_store(url, options).put("k", tmp_path / "a", sha256=digest)  # the rival got there
    store = open_store(url, options)
    calls = miss_first_stat(monkeypatch)
    result = store.put("k", tmp_path / "a", sha256=digest)
    assert not result.uploaded  # the server refused the second create (412)
    assert calls["n"] == 2


def test_a_racing_writer_with_other_content_is_a_conflict(
    gcs_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = gcs_store_factory()
    (tmp_path / "a").write_bytes(b"one")
    (tmp_path / "b").write_bytes(b"two")
    open_store(url, options).put("k", tmp_path / "a", sha256=hashlib.sha256(b"one").hexdigest())
    miss_first_stat(monkeypatch)
    with pytest.raises(ConflictError):
        open_store(url, options).put("k", tmp_path / "b", sha256=hashlib.sha256(b"two").hexdigest())
    back = tmp_path / "back"
    open_store(url, options).get("k", back)
    assert back.read_bytes() == b"one"


def test_signed_urls_need_a_signing_credential(gcs_store_factory: Factory) -> None:
    """Anonymous emulator credentials cannot sign: the store says so with None, and the pod
    fetches with its mounted credentials instead (the launch issue)."""
    url, options = gcs_store_factory()
    assert open_store(url, options).signed_url("k", 600) is None


def test_refused_endpoint_fails_in_bounded_time_as_transient() -> None:
    import socket

    import google.api_core.exceptions as gexc

    from konduktor.errors import TransientError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = StoreOptions(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2)
    store = open_store("gs://some-bucket/x", options)
    with pytest.raises(TransientError, match=r"gs://some-bucket/x: cannot reach") as raised:
        store.stat("k")
    # a deadline stopped the retries (min(10 s, connect_timeout 5 s x 2 attempts)), never
    # endless retries
    assert isinstance(raised.value.__cause__, gexc.RetryError)
    assert str(raised.value.__cause__).startswith("Timeout of 10.0s exceeded")


def test_the_per_user_bucket_is_created_on_first_use_but_never_by_check(
    gcs_store_factory: Factory,
) -> None:
    from konduktor import remote

    url, options = gcs_store_factory(create_bucket=False)
    store = open_store(url, StoreOptions(**{**options.__dict__, "create_bucket": True}))
    results = remote.check(store)
    assert [(r.step, r.ok) for r in results] == [("identity", True), ("bucket reachable", False)]
    assert "does not exist" in results[-1].detail
    assert list(store.list("v1/")) == []  # the first use creates it
    assert all(r.ok for r in remote.check(store))
