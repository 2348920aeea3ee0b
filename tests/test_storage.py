"""One conformance suite, run on every backend: file://, S3 (moto server), GCS (fake-gcs-server)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import put_concurrently

from konduktor.errors import (
    ConflictError,
    KeyTakenError,
    NotFoundError,
    StorageError,
    TransientError,
    UsageError,
)
from konduktor.storage import Store, StoreOptions, core, open_store, parse_url
from konduktor.storage.local import LocalBackend

BACKENDS = ["file", "s3", "gcs"]
StoreFactory = Callable[..., tuple[str, StoreOptions]]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return open_store(f"file://{tmp_path}/store")
    make: StoreFactory = request.getfixturevalue(f"{request.param}_store_factory")
    url, options = make("team/prefix")
    return open_store(url, options)


def write(path: Path, data: bytes) -> tuple[Path, str]:
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def big_file(path: Path, mib: int) -> tuple[Path, str]:
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(mib):
            chunk = i.to_bytes(4, "big") + block[4:]
            f.write(chunk)
            digest.update(chunk)
    return path, digest.hexdigest()


def test_round_trip_carries_sha256_and_size(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"hello layer\n")
    result = store.put("v1/objects/ab/abc.tar.zst", src, sha256=digest)
    assert result.uploaded
    assert result.size == 12
    info = store.stat("v1/objects/ab/abc.tar.zst")
    assert info is not None
    assert (info.size, info.sha256) == (12, digest)
    assert info.metadata["size"] == "12"
    assert info.modified.tzinfo is not None
    got = store.get("v1/objects/ab/abc.tar.zst", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"hello layer\n"
    assert got.sha256 == digest


def test_missing_key_stat_is_none_and_get_is_not_found(store: Store, tmp_path: Path) -> None:
    assert store.stat("v1/nope") is None
    with pytest.raises(NotFoundError):
        store.get("v1/nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_put_same_content_again_uploads_nothing(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"same")
    assert store.put("k", src, sha256=digest).uploaded
    again = store.put("k", src, sha256=digest)
    assert not again.uploaded
    assert again.size == 4


def test_create_only_refuses_different_content(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"one")
    store.put("k", src, sha256=digest)
    other, other_digest = write(tmp_path / "b", b"two")
    with pytest.raises(ConflictError):
        store.put("k", other, sha256=other_digest)
    store.get("k", tmp_path / "c")
    assert (tmp_path / "c").read_bytes() == b"one"


def test_two_threads_putting_one_key_both_succeed(store: Store, tmp_path: Path) -> None:
    src, digest = big_file(tmp_path / "a", 3)
    results, errors = put_concurrently(store, "race/key", src, digest)
    assert errors == []
    assert len(results) == 2
    store.get("race/key", tmp_path / "out")
    assert hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest() == digest


def test_list_by_prefix_is_sorted_and_relative(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    for key in ("v1/b/2", "v1/a/1", "v1/a/3", "v2/z"):
        store.put(key, src, sha256=digest)
    assert [i.key for i in store.list("v1/a/")] == ["v1/a/1", "v1/a/3"]
    assert [i.key for i in store.list("v1/")] == ["v1/a/1", "v1/a/3", "v1/b/2"]
    assert [i.key for i in store.list("nothing/")] == []
    assert all(i.size == 1 for i in store.list(""))


def test_delete_removes_and_is_idempotent(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    store.put("d/k", src, sha256=digest)
    store.delete("d/k")
    assert store.stat("d/k") is None
    store.delete("d/k")
    assert list(store.list("d/")) == []


def test_extra_metadata_is_kept(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    store.put("m", src, sha256=digest, metadata={"commit": "abc123", "kind": "base"})
    info = store.stat("m")
    assert info is not None
    assert info.metadata["commit"] == "abc123"
    assert info.metadata["kind"] == "base"


def test_empty_object_round_trip(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"")
    store.put("empty", src, sha256=digest)
    store.get("empty", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b""


def test_progress_reports_every_byte(store: Store, tmp_path: Path) -> None:
    src, digest = big_file(tmp_path / "a", 9)
    sent: list[int] = []
    store.put("p", src, sha256=digest, progress=sent.append)
    assert sum(sent) == 9 << 20
    got: list[int] = []
    store.get("p", tmp_path / "b", progress=got.append)
    assert sum(got) == 9 << 20


def test_large_object_round_trip(store: Store, tmp_path: Path) -> None:
    src, digest = big_file(tmp_path / "big", 64)
    assert store.put("big/layer.tar.zst", src, sha256=digest).uploaded
    info = store.stat("big/layer.tar.zst")
    assert info is not None
    assert (info.size, info.sha256) == (64 << 20, digest)
    store.get("big/layer.tar.zst", tmp_path / "back")
    assert (tmp_path / "back").stat().st_size == 64 << 20
    src.unlink()
    assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("mib", [1, 20], ids=["small", "chunked"])
def test_interrupted_upload_leaves_nothing_visible(store: Store, tmp_path: Path, mib: int) -> None:
    src, digest = big_file(tmp_path / "a", mib)
    seen = {"bytes": 0}

    def interrupt(n: int) -> None:
        seen["bytes"] += n
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put("half/key", src, sha256=digest, progress=interrupt)
    assert store.stat("half/key") is None
    assert [i.key for i in store.list("half/")] == []
    assert store.put("half/key", src, sha256=digest).uploaded  # and it can be retried


def test_mark_creates_and_refreshes(store: Store) -> None:
    store.mark("used/x")
    first = store.stat("used/x")
    assert first is not None
    time.sleep(1.1)
    store.mark("used/x")
    second = store.stat("used/x")
    assert second is not None
    assert second.modified > first.modified


def test_nested_keys_do_not_clash_with_prefixes(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    store.put("a/b", src, sha256=digest)
    store.put("a/bc", src, sha256=digest)
    assert [i.key for i in store.list("a/b")] == ["a/b", "a/bc"]
    assert [i.key for i in store.list("a/b/")] == []


def test_get_overwrites_destination_atomically(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"new")
    store.put("k", src, sha256=digest)
    dest = tmp_path / "dest"
    dest.write_bytes(b"old content")
    store.get("k", dest)
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".dest")) == []


def test_signed_url_is_none_or_https_like(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    store.put("s", src, sha256=digest)
    url = store.signed_url("s", 600)
    if store.url.startswith("file://"):
        assert url is None
    elif url is not None:
        assert url.startswith("http")


def test_store_url_is_canonical(store: Store) -> None:
    assert "://" in store.url
    assert not store.url.endswith("/")


@pytest.mark.parametrize(
    "url",
    ["ftp://host/x", "s3://", "s3://Bad_Bucket/x", "gs://a/b?x=1", "file://host/path", "nope"],
)
def test_bad_store_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError, match="store URL"):
        parse_url(url)


def test_local_interrupted_upload_leaves_no_metadata(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/s")
    src, digest = write(tmp_path / "a", b"x" * 10)

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put("k/v", src, sha256=digest, progress=interrupt)
    assert [p.name for p in (tmp_path / "s" / "k").iterdir()] == []


def test_get_verifies_content_against_its_sha256(store: Store, tmp_path: Path) -> None:
    src, _ = write(tmp_path / "a", b"real content")
    store.put("lying", src, sha256="0" * 64)  # metadata that does not match the bytes
    with pytest.raises(StorageError, match="sha256"):
        store.get("lying", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(params=BACKENDS)
def missing_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A store whose bucket (or directory) cannot exist."""
    if request.param == "file":
        (tmp_path / "file").write_text("not a directory")
        return open_store(f"file://{tmp_path}/file/store")
    make: StoreFactory = request.getfixturevalue(f"{request.param}_store_factory")
    url, options = make("x", create_bucket=False)
    return open_store(url, options)


def test_missing_bucket_names_the_store(missing_store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    with pytest.raises(StorageError) as raised:
        missing_store.put("k", src, sha256=digest)
    assert missing_store.url in str(raised.value)


# -- the core's rules, on a local backend made to misbehave ----------------------------------


class LossyBackend(LocalBackend):
    """Stores one byte less than it was given: an upload that does not land intact."""

    def create(self, key: str, path: Path, size: int, *args: Any) -> str | None:
        short = path.with_name(path.name + ".short")
        short.write_bytes(path.read_bytes()[:-1])
        return super().create(key, short, size, *args)


def test_upload_that_does_not_land_intact_is_refused_and_removed(tmp_path: Path) -> None:
    store = Store(LossyBackend(f"file://{tmp_path}/s"))
    src, digest = write(tmp_path / "a", b"twelve bytes")
    with pytest.raises(StorageError, match=r"/k did not land intact .*upload again"):
        store.put("k", src, sha256=digest)
    assert store.stat("k") is None  # this writer's own damaged object was discarded
    assert list(store.list()) == []


class CrowdedBackend(LocalBackend):
    """Another writer always creates the key first, and it is gone again by the next look."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.attempts = 0

    def create(self, key: str, *args: Any) -> str | None:
        self.attempts += 1
        raise KeyTakenError(f"{self.url}: another writer created the key first")


def test_writers_that_keep_colliding_give_up_after_race_attempts(tmp_path: Path) -> None:
    backend = CrowdedBackend(f"file://{tmp_path}/s")
    src, digest = write(tmp_path / "a", b"x")
    with pytest.raises(TransientError, match="other writers kept colliding"):
        Store(backend).put("k", src, sha256=digest)
    assert backend.attempts == core.RACE_ATTEMPTS


def test_identity_of_a_local_store_is_not_applicable(tmp_path: Path) -> None:
    assert open_store(f"file://{tmp_path}/s").identity() == "not applicable"
