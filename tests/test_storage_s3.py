"""S3 specifics against moto's server: what lands on the wire, conditional writes, multipart
hygiene, error translation, bounded failures, signing. The behaviour every backend shares is
in test_storage.py."""

from __future__ import annotations

import datetime
import hashlib
import http.server
import os
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from storage_helpers import put_concurrently
from test_cli import run

from konduktor.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    SourceChangedError,
    StorageError,
    TransientError,
)
from konduktor.storage import Store, StoreOptions, open_store
from konduktor.storage import s3 as s3_module
from konduktor.storage.s3 import S3Backend

Factory = Callable[..., tuple[str, StoreOptions]]


def file_of(path: Path, mib: int, seed: bytes = b"") -> str:
    """Write *mib* MiB of incompressible data quickly; return its sha256."""
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(mib):
            chunk = seed + i.to_bytes(4, "big") + block[len(seed) + 4 :]
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def raw(options: StoreOptions, region: str = "us-east-1") -> Any:
    """A plain boto3 client, to look at the bucket without going through the store."""
    return boto3.client("s3", endpoint_url=options.endpoint_url, region_name=region)


def bucket_of(url: str) -> str:
    return url.split("/")[2]


def pending_uploads(url: str, options: StoreOptions) -> list[object]:
    listing = raw(options).list_multipart_uploads(Bucket=bucket_of(url))
    return list(listing.get("Uploads", []))


def count_requests(backend: S3Backend, operation: str) -> list[int]:
    """A list that grows by one each time the backend's client sends *operation* (retries too)."""
    sent: list[int] = []
    backend._client.meta.events.register(f"before-send.s3.{operation}", lambda **_: sent.append(1))
    return sent


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Multipart from 8 MiB on, in 5 MiB parts (S3's minimum): multipart tests stay quick."""
    monkeypatch.setattr(s3_module, "MULTIPART_THRESHOLD", 8 << 20)
    monkeypatch.setattr(s3_module, "PART_SIZE", 5 << 20)


# -- what lands in the bucket -------------------------------------------------------------


def test_round_trip_stores_sha256_and_size_as_s3_metadata(
    s3_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = s3_store_factory("team/code")
    store = open_store(url, options)
    (tmp_path / "a").write_bytes(b"layer bytes")
    digest = hashlib.sha256(b"layer bytes").hexdigest()
    assert store.put("v1/objects/ab/x", tmp_path / "a", sha256=digest, metadata={"kind": "base"})
    head = raw(options).head_object(Bucket=bucket_of(url), Key="team/code/v1/objects/ab/x")
    assert head["Metadata"] == {"sha256": digest, "size": "11", "kind": "base"}
    info = store.get("v1/objects/ab/x", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == b"layer bytes"
    assert (info.sha256, info.size) == (digest, 11)
    assert info.modified.utcoffset() == datetime.timedelta(0)


def test_create_only_skips_same_content_and_refuses_other(
    s3_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = s3_store_factory()
    store = open_store(url, options)
    (tmp_path / "one").write_bytes(b"one")
    (tmp_path / "two").write_bytes(b"two")
    one, two = (hashlib.sha256(b).hexdigest() for b in (b"one", b"two"))
    assert store.put("k", tmp_path / "one", sha256=one).uploaded
    assert not store.put("k", tmp_path / "one", sha256=one).uploaded
    with pytest.raises(ConflictError, match=r"s3://test-bucket-\d+/k already holds other"):
        store.put("k", tmp_path / "two", sha256=two)
    body = raw(options).get_object(Bucket=bucket_of(url), Key="k")["Body"].read()
    assert body == b"one"


@pytest.mark.usefixtures("small_parts")
@pytest.mark.parametrize("mib", [1, 12], ids=["single", "multipart"])
def test_two_writers_past_the_head_check_both_succeed(
    s3_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mib: int
) -> None:
    """Both threads see the key absent, then both write: the conditional write makes one
    of them get a 412, find the other's object and accept it.

    The writes themselves take turns: moto checks If-None-Match and then stores the object
    without a lock, so two requests in the same instant can both pass there (S3 itself
    decides atomically)."""
    url, options = s3_store_factory()
    store = open_store(url, options)
    digest = file_of(tmp_path / "a", mib)
    both_looked = threading.Barrier(2, timeout=30)
    one_write_at_a_time = threading.Lock()
    real_head, real_create, calls = S3Backend.head, S3Backend.create, iter(range(1_000))

    def head_in_step(self: S3Backend, key: str) -> object:
        found = real_head(self, key)
        if next(calls) < 2:  # each thread's first look, before its upload
            both_looked.wait()
        return found

    def create_in_turn(self: S3Backend, *args: Any) -> str | None:
        with one_write_at_a_time:
            return real_create(self, *args)

    monkeypatch.setattr(S3Backend, "head", head_in_step)
    monkeypatch.setattr(S3Backend, "create", create_in_turn)
    results, errors = put_concurrently(store, "race", tmp_path / "a", digest)
    assert errors == []
    assert sorted(r.uploaded for r in results) == [False, True]
    assert pending_uploads(url, options) == []
    store.get("race", tmp_path / "back")
    assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == digest


@pytest.mark.usefixtures("small_parts")
@pytest.mark.parametrize("mib", [1, 12], ids=["single", "multipart"])
def test_rival_with_other_content_after_the_head_check_is_a_conflict(
    s3_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mib: int
) -> None:
    url, options = s3_store_factory()
    store = open_store(url, options)
    ours = file_of(tmp_path / "ours", mib, seed=b"ours")
    theirs = file_of(tmp_path / "theirs", mib, seed=b"theirs")
    real_head, first = S3Backend.head, iter([True])

    def rival_writes_after_the_look(self: S3Backend, key: str) -> object:
        found = real_head(self, key)
        if next(first, False):
            open_store(url, options).put(key, tmp_path / "theirs", sha256=theirs)
        return found

    monkeypatch.setattr(S3Backend, "head", rival_writes_after_the_look)
    with pytest.raises(ConflictError, match="already holds other content"):
        store.put("k", tmp_path / "ours", sha256=ours)
    assert pending_uploads(url, options) == []
    head = raw(options).head_object(Bucket=bucket_of(url), Key="k")
    assert head["Metadata"]["sha256"] == theirs  # the first writer's object stands


class ShortBackend(S3Backend):
    """Uploads one byte less than it was given: an upload that does not land intact."""

    def create(
        self, key: str, path: Path, size: int, meta: Mapping[str, str], progress: Any
    ) -> str | None:
        short = path.with_name(path.name + ".short")
        short.write_bytes(path.read_bytes()[:-1])
        # the metadata still says 12 bytes; the bytes sent pass their check as read
        sent = {**meta, "sha256": hashlib.sha256(short.read_bytes()).hexdigest()}
        return super().create(key, short, size - 1, sent, progress)


def test_upload_that_does_not_land_intact_is_refused_and_left_with_a_warning(
    s3_store_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """S3 has no generations: deleting could remove a rival's good object written since."""
    url, options = s3_store_factory()
    (tmp_path / "a").write_bytes(b"twelve bytes")
    digest = hashlib.sha256(b"twelve bytes").hexdigest()
    with pytest.raises(StorageError, match=r"/k did not land intact .*upload again"):
        Store(ShortBackend(url, options)).put("k", tmp_path / "a", sha256=digest)
    assert raw(options).head_object(Bucket=bucket_of(url), Key="k")["ContentLength"] == 11
    assert f"{url}/k failed its check after the upload; delete it by hand" in caplog.text


# -- multipart ----------------------------------------------------------------------------


def test_64_mib_goes_up_in_parallel_parts_and_leaves_no_upload(
    s3_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = s3_store_factory()
    store = open_store(url, options)
    digest = file_of(tmp_path / "big", 64)
    sent: list[int] = []
    assert store.put("big", tmp_path / "big", sha256=digest, progress=sent.append).uploaded
    assert sum(sent) == 64 << 20
    head = raw(options).head_object(Bucket=bucket_of(url), Key="big")
    parts = (64 << 20) // s3_module._part_size(64 << 20)
    assert head["ETag"].endswith(f'-{parts}"')  # the ETag of a multipart object
    assert pending_uploads(url, options) == []
    (tmp_path / "big").unlink()
    store.get("big", tmp_path / "back")
    assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == digest


@pytest.mark.usefixtures("small_parts")
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_multipart_upload_is_aborted(
    s3_store_factory: Factory, tmp_path: Path, error: type[BaseException]
) -> None:
    url, options = s3_store_factory()
    store = open_store(url, options)
    digest = file_of(tmp_path / "big", 24)
    parts_done = iter(range(1_000))

    def interrupt_at_the_second_part(n: int) -> None:
        if next(parts_done) == 1:
            raise error

    with pytest.raises(error):
        store.put("k", tmp_path / "big", sha256=digest, progress=interrupt_at_the_second_part)
    assert store.stat("k") is None
    assert pending_uploads(url, options) == []
    assert store.put("k", tmp_path / "big", sha256=digest).uploaded  # and it can be retried
    assert pending_uploads(url, options) == []


def sparse_file(path: Path, mib: int) -> str:
    """A file of *mib* MiB of zeros, made in no time; its sha256."""
    with path.open("wb") as f:
        f.truncate(mib << 20)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_64_mib_file_changed_while_its_parts_are_read_aborts_the_upload(
    s3_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts are read in order and at most PARALLEL_PARTS are in flight: the change made
    when the first part is sent lands in a part read later, whose hash gives it away."""
    monkeypatch.setattr(s3_module, "PARALLEL_PARTS", 2)
    url, options = s3_store_factory("team")
    store = open_store(url, options)
    big = tmp_path / "big"
    digest = sparse_file(big, 64)
    changed: list[int] = []

    def change_the_last_part(n: int) -> None:
        if not changed:
            changed.append(n)
            with big.open("r+b") as f:
                f.seek(-1, os.SEEK_END)
                f.write(b"!")

    with pytest.raises(SourceChangedError, match=f"{big} changed while it was being uploaded"):
        store.put("v1/objects/00/big", big, sha256=digest, progress=change_the_last_part)
    assert store.stat("v1/objects/00/big") is None
    assert pending_uploads(url, options) == []  # aborted, never completed
    settled = hashlib.sha256(big.read_bytes()).hexdigest()
    assert store.put("v1/objects/00/big", big, sha256=settled).uploaded
    assert pending_uploads(url, options) == []


def test_a_single_put_sends_the_bytes_it_read_and_checked(
    s3_store_factory: Factory, tmp_path: Path
) -> None:
    """Below the multipart threshold the file is read whole, checked, then sent from
    memory: a change once it was read cannot reach the object (botocore reads a body
    more than once, for its checksum and on retries)."""
    url, options = s3_store_factory()
    store = open_store(url, options)
    src = tmp_path / "a"
    digest = file_of(src, 3)
    original = src.read_bytes()

    def change_while_sending(n: int) -> None:
        src.write_bytes(b"other bytes" * 1000)

    assert store.put("k", src, sha256=digest, progress=change_while_sending).uploaded
    assert raw(options).get_object(Bucket=bucket_of(url), Key="k")["Body"].read() == original


# -- unfinished uploads ---------------------------------------------------------------------


def test_unfinished_multipart_uploads_are_listed_and_swept(
    s3_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = s3_store_factory("team")
    store = open_store(url, options)
    big = tmp_path / "big"
    digest = sparse_file(big, 64)

    def ctrl_c(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put("v1/objects/00/big", big, sha256=digest, progress=ctrl_c)
    assert list(store.pending()) == []  # the interrupted put aborted its own upload
    # a launcher killed mid-upload (or a lost CreateMultipartUpload answer) leaves one
    left = raw(options).create_multipart_upload(Bucket=bucket_of(url), Key="team/v1/objects/00/x")
    raw(options).create_multipart_upload(Bucket=bucket_of(url), Key="elsewhere/y")
    [pending] = store.pending()
    assert (pending.key, pending.what) == (
        "v1/objects/00/x",
        f"multipart upload {left['UploadId']}",
    )
    assert pending.started.utcoffset() == datetime.timedelta(0)
    assert list(store.pending("v1/objects/00/")) == [pending]
    assert list(store.pending("v1/plans/")) == []
    # (moto says every upload started in 2010: the cutoff's test is on file://)
    assert store.sweep(datetime.timedelta(0)) == [pending]
    assert list(store.pending()) == []
    assert [u["Key"] for u in pending_uploads(url, options)] == ["elsewhere/y"]  # not ours
    store.sweep(datetime.timedelta(0))  # aborting what is gone already is fine
    open_store(url, options)._backend.abort(pending)


@pytest.mark.usefixtures("small_parts")
def test_a_retried_create_multipart_upload_leaves_one_upload(
    s3_store_factory: Factory, tmp_path: Path
) -> None:
    """The first CreateMultipartUpload succeeds but its answer is lost (botocore is made
    to retry it): the put that holds the key's lock aborts the upload nobody knows."""
    url, options = s3_store_factory()
    store = open_store(url, options)
    backend: S3Backend = store._backend  # type: ignore[assignment]
    attempts = iter(range(1_000))

    def lose_the_first_answer(**_: Any) -> int | None:
        return 0 if next(attempts) == 0 else None  # retry at once, as after a timeout

    backend._client.meta.events.register_first(
        "needs-retry.s3.CreateMultipartUpload", lose_the_first_answer
    )
    digest = file_of(tmp_path / "a", 12)
    assert store.put("k", tmp_path / "a", sha256=digest, lock="locks/k").uploaded
    assert next(attempts) == 2  # the create was sent twice
    assert pending_uploads(url, options) == []


@pytest.mark.parametrize(
    ("size", "part_size"),
    [(64 << 20, s3_module.PART_SIZE), (200 << 30, 21 << 20), (5 << 40, 525 << 20)],
)
def test_parts_grow_to_stay_within_10000(size: int, part_size: int) -> None:
    assert s3_module._part_size(size) == part_size
    assert -(-size // part_size) <= s3_module.MAX_PARTS


# -- reading, listing, deleting, marking --------------------------------------------------


def test_get_refuses_bytes_that_do_not_match_the_sha256(
    s3_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = s3_store_factory()
    wrong = hashlib.sha256(b"expected").hexdigest()
    raw(options).put_object(
        Bucket=bucket_of(url), Key="k", Body=b"tampered", Metadata={"sha256": wrong}
    )
    with pytest.raises(StorageError, match="arrived corrupt"):
        open_store(url, options).get("k", tmp_path / "dest")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_get_missing_key_is_not_found_and_leaves_dest(
    s3_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = s3_store_factory()
    (tmp_path / "dest").write_bytes(b"keep")
    with pytest.raises(NotFoundError, match=r"/nope does not exist"):
        open_store(url, options).get("nope", tmp_path / "dest")
    assert (tmp_path / "dest").read_bytes() == b"keep"


def test_list_pages_through_keys_relative_to_the_prefix(
    s3_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "LIST_PAGE_SIZE", 2)
    url, options = s3_store_factory("team")
    client, bucket = raw(options), bucket_of(url)
    for key in ("team/v1/a", "team/v1/b", "team/v1/c", "team/v1/d", "team/v2/e", "team2/v1/x"):
        client.put_object(Bucket=bucket, Key=key, Body=b"xy", Metadata={"sha256": "0" * 64})
    backend = S3Backend(url, options)
    requests = count_requests(backend, "ListObjectsV2")
    store = Store(backend)
    listed = list(store.list("v1/"))
    assert [i.key for i in listed] == ["v1/a", "v1/b", "v1/c", "v1/d"]
    assert len(requests) >= 2
    # listings carry no user metadata: sha256 is left unknown rather than fetched per key
    assert all((i.size, i.sha256, dict(i.metadata)) == (2, None, {}) for i in listed)
    assert all(i.modified.utcoffset() == datetime.timedelta(0) for i in listed)
    assert [i.key for i in store.list()] == ["v1/a", "v1/b", "v1/c", "v1/d", "v2/e"]


def test_delete_is_idempotent(s3_store_factory: Factory, tmp_path: Path) -> None:
    url, options = s3_store_factory("p")
    store = open_store(url, options)
    (tmp_path / "a").write_bytes(b"x")
    store.put("k", tmp_path / "a", sha256=hashlib.sha256(b"x").hexdigest())
    store.delete("k")
    store.delete("k")
    store.delete("never-was")
    assert raw(options).list_objects_v2(Bucket=bucket_of(url)).get("Contents", []) == []


def test_mark_overwrites(s3_store_factory: Factory) -> None:
    url, options = s3_store_factory()
    store = open_store(url, options)
    store.mark("used/x")
    first = raw(options).get_object(Bucket=bucket_of(url), Key="used/x")["Body"].read()
    store.mark("used/x")
    second = raw(options).get_object(Bucket=bucket_of(url), Key="used/x")["Body"].read()
    assert first < second  # ISO timestamps of when each mark was written


def test_signed_url_is_sigv4_and_fetches_without_credentials(
    s3_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = s3_store_factory("p")
    store = open_store(url, options)
    (tmp_path / "a").write_bytes(b"signed content")
    store.put("layer", tmp_path / "a", sha256=hashlib.sha256(b"signed content").hexdigest())
    signed = store.signed_url("layer", 300)
    assert signed is not None
    assert "X-Amz-Signature=" in signed
    assert "X-Amz-Expires=300" in signed
    with urllib.request.urlopen(signed) as response:
        assert response.read() == b"signed content"


# -- buckets ------------------------------------------------------------------------------


def test_missing_bucket_is_named_with_the_fix(s3_store_factory: Factory, tmp_path: Path) -> None:
    url, options = s3_store_factory(create_bucket=False)
    store = open_store(url, options)
    (tmp_path / "a").write_bytes(b"x")
    message = r"s3://test-bucket-\d+: bucket test-bucket-\d+ does not exist; create it.*jobs.bucket"
    with pytest.raises(NotFoundError, match=message):
        store.put("k", tmp_path / "a", sha256=hashlib.sha256(b"x").hexdigest())
    with pytest.raises(NotFoundError, match=message):
        store.get("k", tmp_path / "b")
    with pytest.raises(NotFoundError, match=message):
        list(store.list())


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_per_user_bucket_is_created_on_first_use_in_its_region(
    s3_store_factory: Factory, tmp_path: Path, region: str
) -> None:
    url, options = s3_store_factory(create_bucket=False)
    options = StoreOptions(endpoint_url=options.endpoint_url, region=region, create_bucket=True)
    (tmp_path / "a").write_bytes(b"x")
    digest = hashlib.sha256(b"x").hexdigest()
    assert open_store(url, options).put("k", tmp_path / "a", sha256=digest).uploaded
    assert not open_store(url, options).put("k", tmp_path / "a", sha256=digest).uploaded
    location = raw(options).get_bucket_location(Bucket=bucket_of(url))["LocationConstraint"]
    assert (location or "us-east-1") == region


# -- credentials and reachability ---------------------------------------------------------


@pytest.mark.parametrize("code", ["AccessDenied", "403", "InvalidAccessKeyId"])
def test_access_denied_names_bucket_and_credential_source(
    s3_store_factory: Factory, code: str
) -> None:
    """moto's server enforces no IAM unless started in its auth mode for the whole session:
    the translation is checked on botocore errors of the shapes S3 sends (a HEAD's 403 has
    no body, hence the bare code); ErrorServer below sends a real one over HTTP."""
    url, options = s3_store_factory()
    backend = S3Backend(url, options)
    denied = botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "Access Denied"}}, "PutObject"
    )
    with pytest.raises(PermissionDeniedError) as raised, backend._errors("upload"):
        raise denied
    error = raised.value
    assert error.__cause__ is denied
    assert "permission denied to upload" in str(error)
    assert f"bucket {bucket_of(url)}" in str(error)
    assert "credentials from env" in str(error)
    assert "testing" not in str(error)  # never the key itself


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
    with pytest.raises(PermissionDeniedError, match=r"no AWS credentials found.*aws configure"):
        store.stat("k")
    with pytest.raises(PermissionDeniedError, match="no AWS credentials found"):
        store.signed_url("k", 60)


def test_unknown_profile_is_permission_denied(s3_store_factory: Factory) -> None:
    url, options = s3_store_factory()
    with pytest.raises(PermissionDeniedError, match="AWS profile 'nope' is not in the AWS config"):
        open_store(url, StoreOptions(endpoint_url=options.endpoint_url, profile="nope"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.usefixtures("s3_server")  # for its fake credentials
def test_refused_endpoint_fails_after_few_attempts_as_transient() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    backend = S3Backend("s3://some-bucket/x", StoreOptions(endpoint_url=endpoint, max_attempts=5))
    attempts = count_requests(backend, "HeadObject")
    with pytest.raises(TransientError, match=rf"s3://some-bucket/x: cannot reach {endpoint}"):
        Store(backend).stat("k")
    assert len(attempts) == s3_module.CONNECT_ATTEMPTS  # not max_attempts=5: no endless retries


class ErrorServer(http.server.ThreadingHTTPServer):
    """An S3 endpoint that answers every request with one error, counting requests."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(("127.0.0.1", 0), _ErrorHandler)
        self.status, self.code, self.requests = status, code, 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ErrorHandler(http.server.BaseHTTPRequestHandler):
    server: ErrorServer

    def do_GET(self) -> None:
        self.server.requests += 1
        body = f"<Error><Code>{self.server.code}</Code><Message>no</Message></Error>".encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


@pytest.fixture
def error_server(request: pytest.FixtureRequest, s3_server: str) -> Iterator[ErrorServer]:
    server = ErrorServer(*request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(
    ("error_server", "error", "requests", "message"),
    [
        ((500, "InternalError"), TransientError, 3, r"list objects \(InternalError, 3 attempts"),
        ((403, "AccessDenied"), PermissionDeniedError, 1, r"bucket some-bucket.*from env"),
    ],
    indirect=["error_server"],
    ids=["500", "403"],
)
def test_error_answers_are_retried_as_configured_then_translated(
    error_server: ErrorServer, error: type[Exception], requests: int, message: str
) -> None:
    store = open_store(
        "s3://some-bucket", StoreOptions(endpoint_url=error_server.url, max_attempts=3)
    )
    with pytest.raises(error, match=message):
        list(store.list())
    assert error_server.requests == requests


# -- `konduktor check` and the CLI --------------------------------------------------------


def test_identity_for_check(s3_store_factory: Factory) -> None:
    url, options = s3_store_factory()
    who = open_store(url, options).identity()
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
    config = tmp_path / "sync.yaml"
    config.write_text(f"sync:\n  store:\n    endpoint_url: {endpoint}\n    max_attempts: 2\n")
    monkeypatch.setenv("KONDUKTOR_SYNC_CONFIG", str(config))
    code, _, err = run("snapshot", repo, "--upload", "--store", url)
    assert code == 1
    assert err.startswith("error: s3://")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_cli_check_s3(
    s3_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = s3_store_factory()
    config = tmp_path / "sync.yaml"
    config.write_text(f"sync:\n  store:\n    endpoint_url: {options.endpoint_url}\n")
    monkeypatch.setenv("KONDUKTOR_SYNC_CONFIG", str(config))
    code, out, _ = run("check", "s3", "--store", url)
    assert code == 0
    assert "ok    identity: arn:aws" in out
    assert "ok    delete" in out


def test_the_per_user_bucket_is_created_on_first_use_but_never_by_check(
    s3_store_factory: Factory,
) -> None:
    from konduktor import remote

    url, options = s3_store_factory(create_bucket=False)
    store = open_store(url, StoreOptions(**{**options.__dict__, "create_bucket": True}))
    results = remote.check(store)
    assert [(r.step, r.ok) for r in results] == [("identity", True), ("bucket reachable", False)]
    assert "does not exist" in results[-1].detail
    assert list(store.list("v1/")) == []  # the first use creates it
    assert all(r.ok for r in remote.check(store))
