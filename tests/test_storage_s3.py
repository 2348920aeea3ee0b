"""S3 specifics against moto's server: multipart hygiene, errors, bounded failures, signing."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from test_cli import run

from konduktor.errors import NotFoundError, PermissionDeniedError, TransientError
from konduktor.storage import StoreOptions, open_store
from konduktor.storage import s3 as s3_module

Factory = Callable[..., tuple[str, StoreOptions]]


def file_of(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(mib):
            block = os.urandom(1 << 20)
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def pending_uploads(url: str, options: StoreOptions) -> list[object]:
    bucket = url.split("/")[2]
    client = boto3.client("s3", endpoint_url=options.endpoint_url, region_name="us-east-1")
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def test_interrupted_multipart_upload_is_aborted(
    s3_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "MULTIPART_THRESHOLD", 8 << 20)
    monkeypatch.setattr(s3_module, "PART_SIZE", 5 << 20)
    url, options = s3_store_factory()
    store = open_store(url, options)
    digest = file_of(tmp_path / "big", 24)
    calls = {"n": 0}

    def interrupt_after_two_parts(n: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put("k", tmp_path / "big", sha256=digest, progress=interrupt_after_two_parts)
    assert store.stat("k") is None
    assert pending_uploads(url, options) == []
    assert store.put("k", tmp_path / "big", sha256=digest).uploaded
    assert pending_uploads(url, options) == []


def test_multipart_upload_is_create_only(
    s3_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers past the HEAD check: the second's complete gets a 412 and carries on."""
    monkeypatch.setattr(s3_module, "MULTIPART_THRESHOLD", 8 << 20)
    monkeypatch.setattr(s3_module, "PART_SIZE", 5 << 20)
    url, options = s3_store_factory()
    store = open_store(url, options)
    digest = file_of(tmp_path / "big", 12)
    real_stat = s3_module.S3Store.stat
    seen = {"first": True}

    def stat_misses_once(self: s3_module.S3Store, key: str) -> object:
        if seen["first"]:
            seen["first"] = False
            open_store(url, options).put(key, tmp_path / "big", sha256=digest)  # the rival
            return None
        return real_stat(self, key)

    monkeypatch.setattr(s3_module.S3Store, "stat", stat_misses_once)
    result = store.put("k", tmp_path / "big", sha256=digest)
    assert not result.uploaded
    assert pending_uploads(url, options) == []


def test_missing_bucket_is_named_with_the_fix(s3_store_factory: Factory, tmp_path: Path) -> None:
    url, options = s3_store_factory(create_bucket=False)
    store = open_store(url, options)
    (tmp_path / "a").write_bytes(b"x")
    with pytest.raises(NotFoundError, match=r"bucket test-bucket-\d+ does not exist.*jobs.bucket"):
        store.put("k", tmp_path / "a", sha256=hashlib.sha256(b"x").hexdigest())


def test_per_user_bucket_is_created_on_first_use(s3_store_factory: Factory, tmp_path: Path) -> None:
    url, options = s3_store_factory(create_bucket=False)
    store = open_store(url, StoreOptions(**{**options.__dict__, "create_bucket": True}))
    (tmp_path / "a").write_bytes(b"x")
    assert store.put("k", tmp_path / "a", sha256=hashlib.sha256(b"x").hexdigest()).uploaded


def test_access_denied_names_bucket_and_credential_source(s3_store_factory: Factory) -> None:
    """moto's server does not enforce IAM here: the translation is checked on a real
    botocore error of the shape S3 sends."""
    url, options = s3_store_factory()
    store = open_store(url, options)
    denied = botocore.exceptions.ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject"
    )
    error = store._translate("upload", denied)  # type: ignore[attr-defined]
    assert isinstance(error, PermissionDeniedError)
    assert "bucket test-bucket-" in str(error)
    assert "credentials from env" in str(error)


def test_no_credentials_is_permission_denied(
    s3_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = s3_store_factory()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store(url, options)
    with pytest.raises(PermissionDeniedError, match="no AWS credentials"):
        store.stat("k")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_refused_endpoint_fails_fast_as_transient() -> None:
    options = StoreOptions(endpoint_url=f"http://127.0.0.1:{closed_port()}", max_attempts=3)
    store = open_store("s3://some-bucket/x", options)
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"cannot reach http://127\.0\.0\.1"):
        store.stat("k")
    assert time.monotonic() - started < 30  # retries are bounded, never endless


def test_signed_url_fetches_without_credentials(s3_store_factory: Factory, tmp_path: Path) -> None:
    url, options = s3_store_factory("p")
    store = open_store(url, options)
    (tmp_path / "a").write_bytes(b"signed content")
    store.put("layer", tmp_path / "a", sha256=hashlib.sha256(b"signed content").hexdigest())
    signed = store.signed_url("layer", 300)
    assert signed is not None
    with urllib.request.urlopen(signed) as response:
        assert response.read() == b"signed content"


def test_identity_for_check(s3_store_factory: Factory) -> None:
    url, options = s3_store_factory()
    who = open_store(url, options).identity()  # type: ignore[attr-defined]
    assert "arn:aws" in who
    assert "credentials from env" in who
    assert "testing" not in who  # never the key itself


@pytest.mark.parametrize("case", ["refused", "no-bucket"])
def test_cli_store_failures_are_one_line(
    case: str, s3_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gitrepo_helpers import make_repo

    repo = make_repo(tmp_path, {"a.py": "a\n"})
    monkeypatch.setenv("KONDUKTOR_HOME", str(tmp_path / "home"))
    if case == "refused":
        endpoint, url = f"http://127.0.0.1:{closed_port()}", "s3://some-bucket"
    else:
        url, options = s3_store_factory(create_bucket=False)
        endpoint = str(options.endpoint_url)
    config = tmp_path / "config.yaml"
    config.write_text(f"sync:\n  store:\n    endpoint_url: {endpoint}\n    max_attempts: 2\n")
    monkeypatch.setenv("KONDUKTOR_CONFIG", str(config))
    code, _, err = run("snapshot", repo, "--upload", "--store", url)
    assert code == 1
    assert err.startswith("error: s3://")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_cli_check_s3(
    s3_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = s3_store_factory()
    config = tmp_path / "config.yaml"
    config.write_text(f"sync:\n  store:\n    endpoint_url: {options.endpoint_url}\n")
    monkeypatch.setenv("KONDUKTOR_CONFIG", str(config))
    code, out, _ = run("check", "s3", "--store", url)
    assert code == 0
    assert "ok    identity: arn:aws" in out
    assert "ok    delete" in out
