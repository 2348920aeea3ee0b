"""GCS specifics on fake-gcs-server: what goes on the wire (the create-only precondition,
crc32c, resumable chunks), racing writers, interrupted uploads, error translation, bounded
failures, signing. The behaviour every backend shares is in test_storage.py.

Where the emulator cannot show a behaviour (it does not enforce create-only on resumable
uploads, deny access, or check signatures), the tests record the requests the client sends,
ask a small local server to answer as GCS would, or check the signature themselves.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import hashlib
import http.server
import json
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import google.api_core.exceptions as gexc
import google_crc32c
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from gcs_server import GCSStoreFactory, emulator_client
from google.cloud import storage
from google.oauth2 import service_account
from storage_helpers import put_concurrently

from konduktor.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    TransientError,
)
from konduktor.storage import Store, StoreOptions, open_store
from konduktor.storage import gcs as gcs_module
from konduktor.storage.gcs import GCSBackend

Factory = GCSStoreFactory
MIB = 1 << 20
SIGNER = "signer@konduktor-test.iam.gserviceaccount.com"


def file_of(path: Path, mib: int, seed: bytes = b"") -> str:
    """Write *mib* MiB of incompressible data quickly; return its sha256."""
    block = os.urandom(MIB)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(mib):
            chunk = seed + i.to_bytes(4, "big") + block[len(seed) + 4 :]
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def crc32c_of(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def bucket_of(url: str) -> str:
    return url.split("/")[2]


def raw_bucket(url: str, options: StoreOptions) -> Any:
    """The bucket seen through a plain client, behind the store's back."""
    assert options.endpoint_url is not None
    return emulator_client(options.endpoint_url).bucket(bucket_of(url))


@dataclasses.dataclass(frozen=True)
class Sent:
    method: str
    url: str
    status: int
    size: int  # of the request body
    body: bytes  # its first 64 KiB


class Wire:
    """Every request a client sends, with the status that came back (a requests hook)."""

    def __init__(self, client: Any) -> None:
        self.sent: list[Sent] = []
        client._http.hooks["response"].append(self._record)

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        body = response.request.body or b""
        data = body.encode() if isinstance(body, str) else bytes(body)
        request = response.request
        self.sent.append(
            Sent(
                str(request.method), str(request.url), response.status_code, len(data), data[:65536]
            )
        )

    def uploads(self) -> list[Sent]:
        return [s for s in self.sent if "/upload/" in s.url]


def watched(url: str, options: StoreOptions) -> tuple[Store, Wire]:
    """A store on the emulator whose requests are recorded."""
    assert options.endpoint_url is not None
    client = emulator_client(options.endpoint_url)
    return Store(GCSBackend(url, options, client=client)), Wire(client)


# -- what lands in the bucket -------------------------------------------------------------


def test_round_trip_stores_sha256_and_size_as_gcs_metadata(
    gcs_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = gcs_store_factory("team/code")
    store = open_store(url, options)
    digest = write(tmp_path / "a", b"layer bytes")
    assert store.put("v1/objects/ab/x", tmp_path / "a", sha256=digest, metadata={"kind": "base"})
    blob = raw_bucket(url, options).get_blob("team/code/v1/objects/ab/x")
    assert blob.metadata == {"sha256": digest, "size": "11", "kind": "base"}
    assert blob.crc32c == crc32c_of(b"layer bytes")
    got: list[int] = []
    info = store.get("v1/objects/ab/x", tmp_path / "back", progress=got.append)
    assert (tmp_path / "back").read_bytes() == b"layer bytes"
    assert (info.sha256, info.size, sum(got)) == (digest, 11, 11)
    assert info.modified.utcoffset() == datetime.timedelta(0)


def test_create_only_skips_same_content_and_refuses_other(
    gcs_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = gcs_store_factory()
    store, wire = watched(url, options)
    one, two = write(tmp_path / "one", b"one"), write(tmp_path / "two", b"two")
    assert store.put("k", tmp_path / "one", sha256=one).uploaded
    uploads = len(wire.uploads())
    again = store.put("k", tmp_path / "one", sha256=one)
    assert (again.uploaded, again.size) == (False, 3)
    with pytest.raises(ConflictError, match=r"gs://test-bucket-[\d-]+/k already holds other"):
        store.put("k", tmp_path / "two", sha256=two)
    assert len(wire.uploads()) == uploads  # the metadata GET was enough both times
    assert raw_bucket(url, options).blob("k").download_as_bytes() == b"one"


def test_single_request_upload_is_conditional_and_carries_its_crc32c(
    gcs_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = gcs_store_factory()
    store, wire = watched(url, options)
    data = os.urandom(300_000)
    store.put("small", tmp_path.joinpath("a"), sha256=write(tmp_path / "a", data))
    [upload] = wire.uploads()
    assert upload.method == "POST"
    assert "uploadType=multipart" in upload.url
    assert "ifGenerationMatch=0" in upload.url
    # the object's metadata part names the crc32c, so GCS refuses damaged bytes
    assert f'"crc32c": "{crc32c_of(data)}"'.encode() in upload.body


def test_64_mib_goes_up_resumable_in_chunks_with_precondition_and_crc32c(
    gcs_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = gcs_store_factory()
    store, wire = watched(url, options)
    digest = file_of(tmp_path / "big", 64)
    sent: list[int] = []
    assert store.put("big", tmp_path / "big", sha256=digest, progress=sent.append).uploaded
    assert sent == [16 * MIB] * 4  # reported chunk by chunk, as read
    start, *chunks = wire.uploads()
    assert (start.method, start.status) == ("POST", 200)
    assert "uploadType=resumable" in start.url
    assert "ifGenerationMatch=0" in start.url  # where real GCS enforces create-only
    expected_crc = crc32c_of((tmp_path / "big").read_bytes())
    assert json.loads(start.body)["crc32c"] == expected_crc
    assert [(c.method, c.size, c.status) for c in chunks] == [("PUT", 16 * MIB, 308)] * 3 + [
        ("PUT", 16 * MIB, 200)
    ]
    blob = raw_bucket(url, options).get_blob("big")
    assert (blob.size, blob.metadata["sha256"], blob.crc32c) == (64 * MIB, digest, expected_crc)
    got: list[int] = []
    info = store.get("big", tmp_path / "back", progress=got.append)
    assert (info.size, info.sha256, sum(got)) == (64 * MIB, digest, 64 * MIB)
    (tmp_path / "big").unlink()
    assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == digest


def test_the_emulator_enforces_create_only_on_single_request_uploads_only(
    gcs_store_factory: Factory, tmp_path: Path
) -> None:
    """Why the resumable tests above look at the request rather than at a 412."""
    url, options = gcs_store_factory()
    bucket = raw_bucket(url, options)
    bucket.blob("k").upload_from_string(b"first", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("k").upload_from_string(b"second", if_generation_match=0)
    file_of(tmp_path / "a", 9)  # the SDK goes resumable above 8 MiB
    resumable = bucket.blob("k", chunk_size=4 * MIB)
    resumable.upload_from_filename(str(tmp_path / "a"), if_generation_match=0)  # not refused
    assert bucket.get_blob("k").size == 9 * MIB


# -- racing writers -----------------------------------------------------------------------


@pytest.mark.parametrize("mib", [1, 12], ids=["single-request", "resumable"])
def test_two_writers_past_the_metadata_check_both_succeed(
    gcs_store_factory: Factory, tmp_path: Path, mib: int
) -> None:
    """Both threads find the key absent and read their first bytes before either sends
    them (a barrier in the progress callback), so both really upload. On single-request
    uploads the emulator answers the second one 412, and that writer accepts the first's
    object. It lets both resumable uploads through (real GCS would not): both succeed,
    and the content is right either way."""
    url, options = gcs_store_factory()
    store = open_store(url, options)
    digest = file_of(tmp_path / "a", mib)
    both_reading = threading.Barrier(2, timeout=30)
    waited: set[int] = set()

    def in_step(n: int) -> None:
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            both_reading.wait()

    results, errors = put_concurrently(store, "race", tmp_path / "a", digest, progress=in_step)
    assert errors == []
    uploaded = sorted(r.uploaded for r in results)
    assert uploaded == ([False, True] if mib == 1 else [True, True])
    store.get("race", tmp_path / "back")
    assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == digest


# -- no partial object --------------------------------------------------------------------


def test_upload_interrupted_midway_leaves_no_object(
    gcs_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = gcs_store_factory()
    store, wire = watched(url, options)
    digest = file_of(tmp_path / "a", 40)  # three chunks
    reads = []

    def ctrl_c_on_the_second_chunk(n: int) -> None:
        reads.append(n)
        if len(reads) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put("half", tmp_path / "a", sha256=digest, progress=ctrl_c_on_the_second_chunk)
    chunks = [s for s in wire.uploads() if s.method == "PUT"]
    assert [(c.size, c.status) for c in chunks] == [(16 * MIB, 308)]  # one chunk in, not final
    assert store.stat("half") is None
    assert list(raw_bucket(url, options).list_blobs()) == []
    assert store.put("half", tmp_path / "a", sha256=digest).uploaded  # and it can be retried


class CutAdapter(requests.adapters.HTTPAdapter):
    """A connection that can be cut: then every chunk PUT fails as if the network dropped.
    It counts the requests sent through it, refused ones included."""

    def __init__(self) -> None:
        super().__init__()
        self.cut = False
        self.refused = 0
        self.sent = 0

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        self.sent += 1
        if self.cut and request.method == "PUT":
            self.refused += 1
            raise requests.exceptions.ConnectionError("connection cut by the test")
        return super().send(request, *args, **kwargs)


def test_upload_failing_midway_is_transient_and_leaves_no_object(
    gcs_store_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcs_module, "RETRY_DEADLINE", 1.0)
    url, options = gcs_store_factory()
    options = dataclasses.replace(options, read_timeout=1.0)
    assert options.endpoint_url is not None
    client = emulator_client(options.endpoint_url)
    adapter = CutAdapter()
    client._http.mount("http://", adapter)
    store = Store(GCSBackend(url, options, client=client))
    digest = file_of(tmp_path / "a", 40)
    reads = []

    def cut_after_the_first_chunk(n: int) -> None:
        reads.append(n)
        adapter.cut = len(reads) >= 2

    with pytest.raises(TransientError, match=r"cannot reach .* to upload after retries") as raised:
        store.put("half", tmp_path / "a", sha256=digest, progress=cut_after_the_first_chunk)
    assert isinstance(raised.value.__cause__, gexc.RetryError)
    assert adapter.refused >= 2  # retried before giving up
    adapter.cut = False
    assert store.stat("half") is None
    assert list(raw_bucket(url, options).list_blobs()) == []


class ShortBackend(GCSBackend):
    """Uploads one byte less than it was given: an upload that does not land intact."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generations: list[str | None] = []

    def create(
        self, key: str, path: Path, size: int, meta: Mapping[str, str], progress: Any
    ) -> str | None:
        short = path.with_name(path.name + ".short")
        short.write_bytes(path.read_bytes()[:-1])
        # the metadata still says 12 bytes; the bytes sent pass their check as read
        sent = {**meta, "sha256": hashlib.sha256(short.read_bytes()).hexdigest()}
        self.generations.append(super().create(key, short, size - 1, sent, progress))
        return self.generations[-1]


def test_upload_that_does_not_land_intact_is_deleted_by_its_generation(
    gcs_store_factory: Factory, tmp_path: Path
) -> None:
    """Only the generation this writer made is deleted, never a rival's object written
    since; the emulator ignores that condition on deletes, so the request shows it."""
    url, options = gcs_store_factory()
    assert options.endpoint_url is not None
    client = emulator_client(options.endpoint_url)
    wire = Wire(client)
    backend = ShortBackend(url, options, client=client)
    digest = write(tmp_path / "a", b"twelve bytes")
    with pytest.raises(StorageError, match=r"/k did not land intact .*upload again"):
        Store(backend).put("k", tmp_path / "a", sha256=digest)
    [generation] = backend.generations
    [delete] = [s for s in wire.sent if s.method == "DELETE"]
    assert f"ifGenerationMatch={generation}" in delete.url
    assert raw_bucket(url, options).get_blob("k") is None


# -- buckets ------------------------------------------------------------------------------


def test_missing_bucket_is_named_with_the_fix(gcs_store_factory: Factory, tmp_path: Path) -> None:
    url, options = gcs_store_factory("team", create_bucket=False)
    store = open_store(url, options)
    digest = write(tmp_path / "a", b"x")
    message = rf"bucket {bucket_of(url)} does not exist \(store {url}\); create it .*jobs.bucket"
    attempts = [
        lambda: store.put("k", tmp_path / "a", sha256=digest),
        lambda: store.stat("k"),
        lambda: store.get("k", tmp_path / "out"),
        lambda: list(store.list()),
        lambda: store.delete("k"),
        lambda: store.mark("k"),
    ]
    for attempt in attempts:
        with pytest.raises(NotFoundError, match=message):
            attempt()
    assert not (tmp_path / "out").exists()


def test_missing_key_is_none_or_not_found_in_an_existing_bucket(
    gcs_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = gcs_store_factory()
    store = open_store(url, options)
    assert store.stat("nope") is None
    with pytest.raises(NotFoundError, match=rf"^{url}/nope does not exist$"):
        store.get("nope", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither dest nor a temporary file


def test_per_user_bucket_is_created_on_first_use(gcs_store_factory: Factory) -> None:
    url, options = gcs_store_factory("team", create_bucket=False)
    options = dataclasses.replace(options, create_bucket=True, region="EUROPE-WEST4")
    store, wire = watched(url, options)
    assert store.stat("k") is None
    assert raw_bucket(url, options).exists()
    [create] = [s for s in wire.sent if s.method == "POST"]
    assert "/storage/v1/b?project=" in create.url
    # the emulator puts every bucket in one location, so look at what was asked
    assert json.loads(create.body) == {"name": bucket_of(url), "location": "EUROPE-WEST4"}
    open_store(url, options).mark("k")  # a second store finds it there and goes on


# -- errors -------------------------------------------------------------------------------


@contextlib.contextmanager
def answering(status: int) -> Iterator[tuple[str, list[str]]]:
    """A local server that answers every request with *status* and a GCS-style JSON error,
    for what the emulator never does (deny access, keep failing); also the requests seen."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            error = {"code": status, "message": "said the test server", "errors": []}
            body = json.dumps({"error": error}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def signer_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account_credentials(key: rsa.RSAPrivateKey) -> Any:
    """Service-account credentials with a freshly made key, as a key file would give."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "konduktor-test",
        "private_key_id": "0" * 40,
        "private_key": pem,
        "client_email": SIGNER,
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return service_account.Credentials.from_service_account_info(info)


def with_token(client: Any) -> Any:
    """The client, its credentials holding a token already: nothing asks Google for one."""
    credentials = client._credentials  # the scoped copy the client made
    credentials.token = "test-token-never-printed"
    credentials.expiry = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    credentials.expiry += datetime.timedelta(hours=1)
    return client


def test_access_denied_names_bucket_and_credential_source(
    signer_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    with answering(403) as (endpoint, seen):
        client = storage.Client(
            project="konduktor-test",
            credentials=service_account_credentials(signer_key),
            client_options={"api_endpoint": endpoint},
        )
        with_token(client)
        store = Store(
            GCSBackend(
                "gs://private-bucket/team", StoreOptions(endpoint_url=endpoint), client=client
            )
        )
        with pytest.raises(PermissionDeniedError) as raised:
            store.put("k", tmp_path.joinpath("a"), sha256=write(tmp_path / "a", b"x"))
    message = str(raised.value)
    assert message.startswith(
        f"gs://private-bucket/team: permission denied to read object metadata in bucket "
        "private-bucket (403) with credentials google.oauth2.service_account.Credentials "
        f"of {SIGNER}"
    )
    assert "PRIVATE KEY" not in message
    assert "test-token" not in message
    assert len(seen) == 1  # a denial is not retried


def test_unauthenticated_with_credentials_that_cannot_refresh_is_permission_denied() -> None:
    """On a 401 the SDK refreshes its token and tries again; anonymous credentials cannot."""
    with answering(401) as (endpoint, seen):
        store = open_store("gs://private-bucket/team", StoreOptions(endpoint_url=endpoint))
        with pytest.raises(PermissionDeniedError, match=r"anonymous credentials .*cannot be used"):
            store.stat("k")
    assert len(seen) == 1


def test_error_answers_are_retried_until_the_deadline_then_transient(tmp_path: Path) -> None:
    with answering(503) as (endpoint, seen):
        options = StoreOptions(endpoint_url=endpoint, max_attempts=2, connect_timeout=1)
        store = open_store("gs://some-bucket/x", options)
        with pytest.raises(TransientError, match=r"kept failing to read object metadata \(503"):
            store.stat("k")
    assert len(seen) >= 2


def test_refused_endpoint_fails_within_the_retry_deadline_as_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    endpoint = f"http://127.0.0.1:{port}"
    options = StoreOptions(endpoint_url=endpoint, max_attempts=2, connect_timeout=1)
    client = emulator_client(endpoint)
    adapter = CutAdapter()  # never cut: it only counts the attempts
    client._http.mount("http://", adapter)
    store = Store(GCSBackend("gs://some-bucket/x", options, client=client))
    with pytest.raises(TransientError, match=rf"cannot reach {endpoint} to read") as raised:
        store.stat("k")
    assert adapter.sent >= 2  # retried
    # what stopped the retries: the deadline of 2 s (connect_timeout x max_attempts), not
    # the SDK's 120 s
    assert isinstance(raised.value.__cause__, gexc.RetryError)
    assert str(raised.value.__cause__).startswith("Timeout of 2.0s exceeded")


def test_default_retry_deadline_is_ten_seconds() -> None:
    assert gcs_module._metadata_retry(StoreOptions()).timeout == 10.0
    assert gcs_module._metadata_retry(StoreOptions(connect_timeout=1, max_attempts=3)).timeout == 3


@pytest.mark.parametrize("endpoint", [None, "https://storage.example.invalid"])
def test_no_credentials_is_permission_denied(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str | None
) -> None:
    """Outside an emulator, real credentials are needed, an https endpoint_url included."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(PermissionDeniedError, match="no Google Cloud credentials: run gcloud auth"):
        open_store("gs://some-bucket", StoreOptions(endpoint_url=endpoint))


# -- listing, deleting, marking -----------------------------------------------------------


def test_list_by_prefix_is_relative_and_has_sha256_from_the_listing(
    gcs_store_factory: Factory, tmp_path: Path
) -> None:
    url, options = gcs_store_factory("team")
    store, wire = watched(url, options)
    digests = {}
    for key in ("v1/b/2", "v1/a/1", "v1/a/3", "v2/z"):
        digests[key] = write(tmp_path / "a", key.encode())
        store.put(key, tmp_path / "a", sha256=digests[key])
    raw_bucket(url, options).blob("team/v1/foreign").upload_from_string(b"not ours")
    raw_bucket(url, options).blob("elsewhere/v1/x").upload_from_string(b"outside the prefix")
    before = len(wire.sent)
    listed = list(store.list("v1/"))
    assert [i.key for i in listed] == ["v1/a/1", "v1/a/3", "v1/b/2", "v1/foreign"]
    assert [i.sha256 for i in listed] == [
        digests["v1/a/1"],
        digests["v1/a/3"],
        digests["v1/b/2"],
        None,
    ]
    assert [i.size for i in listed] == [6, 6, 6, 8]
    assert len(wire.sent) - before == 1  # one listing request, no metadata GET per object
    assert [i.key for i in store.list("v1/a/")] == ["v1/a/1", "v1/a/3"]
    assert list(store.list("nothing/")) == []


def test_delete_is_idempotent(gcs_store_factory: Factory, tmp_path: Path) -> None:
    url, options = gcs_store_factory()
    store = open_store(url, options)
    store.put("d/k", tmp_path / "a", sha256=write(tmp_path / "a", b"x"))
    store.delete("d/k")
    assert raw_bucket(url, options).get_blob("d/k") is None
    store.delete("d/k")
    store.delete("never/was")


def test_mark_overwrites(gcs_store_factory: Factory) -> None:
    url, options = gcs_store_factory()
    store = open_store(url, options)
    store.mark("used/x")
    first = raw_bucket(url, options).get_blob("used/x")
    store.mark("used/x")
    second = raw_bucket(url, options).get_blob("used/x")
    assert second.generation != first.generation
    stamp = datetime.datetime.fromisoformat(second.download_as_text())
    assert stamp.tzinfo is not None
    assert second.content_type == "text/plain"


# -- signing and identity -----------------------------------------------------------------


def check_v4_signature(signed_url: str, key: rsa.RSAPrivateKey) -> dict[str, str]:
    """Check the URL's signature the way GCS does (V4, query-string form); its parameters."""
    parts = urlsplit(signed_url)
    pairs = parts.query.split("&")
    query = dict(parse_qsl(parts.query))
    unsigned = sorted(
        (p for p in pairs if not p.startswith("X-Goog-Signature=")), key=lambda p: p.split("=")[0]
    )
    canonical_request = "\n".join(
        [
            "GET",
            parts.path,
            "&".join(unsigned),
            f"host:{parts.netloc}",
            "",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = query["X-Goog-Credential"].split("/", 1)[1]
    string_to_sign = "\n".join(
        [
            "GOOG4-RSA-SHA256",
            query["X-Goog-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key.public_key().verify(
        bytes.fromhex(query["X-Goog-Signature"]),
        string_to_sign.encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    return query


def test_signed_url_is_none_without_a_private_key(gcs_store_factory: Factory) -> None:
    """Anonymous credentials cannot sign: the store says None, and the pod fetches with
    its own credentials instead."""
    url, options = gcs_store_factory()
    assert open_store(url, options).signed_url("k", 600) is None


def test_signed_url_with_a_service_account_key_is_v4_and_fetches(
    gcs_store_factory: Factory, signer_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    url, options = gcs_store_factory("team")
    open_store(url, options).put("s", tmp_path / "a", sha256=write(tmp_path / "a", b"signed"))
    client = storage.Client(
        project="konduktor-test",
        credentials=service_account_credentials(signer_key),
        client_options={"api_endpoint": options.endpoint_url},
    )
    signer = Store(GCSBackend(url, options, client=client))
    signed = signer.signed_url("s", 600)
    assert signed is not None
    assert signed.startswith(f"{options.endpoint_url}/{bucket_of(url)}/team/s?")
    query = check_v4_signature(signed, signer_key)
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Expires"] == "600"
    assert query["X-Goog-Credential"].startswith(f"{SIGNER}/")
    # The emulator serves it (it would serve a wrong signature too: it checks none).
    with urllib.request.urlopen(signed, timeout=10) as response:
        assert response.read() == b"signed"
    with pytest.raises(StorageError, match=r"1 to 604800 s \(7 days\), not 691200 s"):
        signer.signed_url("s", 8 * 24 * 3600)


def test_identity_names_the_credentials_never_the_secret(
    gcs_store_factory: Factory, signer_key: rsa.RSAPrivateKey
) -> None:
    url, options = gcs_store_factory()
    assert "anonymous credentials" in open_store(url, options).identity()
    client = storage.Client(
        project="konduktor-test",
        credentials=service_account_credentials(signer_key),
        client_options={"api_endpoint": options.endpoint_url},
    )
    who = Store(GCSBackend(url, options, client=client)).identity()
    assert who == f"credentials google.oauth2.service_account.Credentials of {SIGNER}"
