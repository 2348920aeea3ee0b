"""``gs://bucket/prefix``: Google Cloud Storage, through google-cloud-storage.

Writes are create-only: a metadata GET first, then an upload with
``if_generation_match=0``, so that when another writer creates the key in between,
GCS answers 412 and the object it wrote is checked to hold the same sha256.
Files over 8 MiB go up as resumable uploads in 16 MiB chunks (the SDK chooses by
size); GCS makes the object visible only when the last chunk arrives, so a failed or
interrupted upload (Ctrl-C included) leaves no object. Every transfer is checked with
crc32c by the server and the client, every object against its sha256 after the upload.

Credentials: Application Default Credentials, or none at all for an emulator
(``STORAGE_EMULATOR_HOST``, or ``endpoint_url`` over plain ``http://``, where a token
must never travel). Retries of a metadata request stop after a few seconds, so an
unreachable endpoint fails a launch quickly; data transfers get ``read_timeout``.
SDK exceptions become konduktor's at this boundary, each naming the store and what
to do next.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import google.api_core.exceptions as gexc
import google.auth
import google.auth.credentials
import google.auth.exceptions
import google_crc32c
import requests
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

from konduktor.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    TransientError,
)
from konduktor.storage import StoreOptions, parse_url
from konduktor.storage.base import (
    SHA256,
    SIZE,
    ObjectInfo,
    Progress,
    PutResult,
    ReportingReader,
    already_there,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 16 << 20  # resumable upload chunk (GCS wants a multiple of 256 KiB)
RETRY_DEADLINE = 10.0  # seconds of retries for one metadata request, at most
RACE_ATTEMPTS = 3  # rounds of GET + conditional upload when other writers keep colliding
MAX_SIGNED_SECONDS = 7 * 24 * 3600  # GCS refuses V4 signatures that outlive 7 days
EMULATOR_PROJECT = "konduktor-emulator"  # an emulator needs a project name, any name
_CRC_BLOCK = 1 << 20
_new_crc32c: Callable[[], Any] = google_crc32c.Checksum  # the C extension, untyped
T = TypeVar("T")

# Failures that never got an answer from the store (not retried, or retried already).
_UNREACHABLE = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    google.auth.exceptions.TransportError,
)


class GCSStore:
    """A GCS bucket (and key prefix) as a konduktor store; see :class:`~konduktor.storage.Store`.

    *client* is a ``google.cloud.storage.Client`` to use instead of one made from
    *options* (tests pass one with signing credentials). Threads may share a store: the
    SDK client and its connection pool are shared (the conformance tests race two puts).
    """

    def __init__(self, url: str, options: StoreOptions, *, client: Any | None = None) -> None:
        _, self.bucket, self.prefix = parse_url(url)
        self.url = f"gs://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.options = options
        self._retry = _metadata_retry(options)
        # A data request may rightly take long (a 16 MiB chunk on a slow link), so its
        # retries are bounded by the read timeout rather than the short deadline.
        self._transfer_retry = self._retry.with_timeout(max(RETRY_DEADLINE, options.read_timeout))
        self._timeout = (options.connect_timeout, options.read_timeout)
        self._client: Any = client if client is not None else self._new_client()
        self._gcs_bucket: Any = self._client.bucket(self.bucket)
        self._bucket_ready = not options.create_bucket  # created, or not ours to create
        self._bucket_seen = False  # known to exist (looked up once, after a 404)

    def _new_client(self) -> Any:
        endpoint = self.options.endpoint_url
        if os.environ.get("STORAGE_EMULATOR_HOST") or (endpoint or "").startswith("http://"):
            anonymous = google.auth.credentials.AnonymousCredentials()  # type: ignore[no-untyped-call]
            # without client_options the SDK reads STORAGE_EMULATOR_HOST itself
            client_options = {"api_endpoint": endpoint} if endpoint else None
            return storage.Client(
                project=EMULATOR_PROJECT, credentials=anonymous, client_options=client_options
            )
        try:
            credentials, project = google.auth.default()
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise PermissionDeniedError(
                f"{self.url}: no Google Cloud credentials: run gcloud auth application-default "
                f"login or set GOOGLE_APPLICATION_CREDENTIALS ({exc})"
            ) from exc
        return storage.Client(
            project=project,  # None is fine until a bucket must be created
            credentials=credentials,
            client_options={"api_endpoint": endpoint} if endpoint else None,
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- errors ---------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run an SDK call, turning its exceptions into konduktor's."""
        try:
            return fn()
        except gexc.NotFound as exc:
            # GCS (and its emulator) answer the same 404 for a missing bucket and a
            # missing object: tell them apart, since only the object is a normal case
            self._check_bucket()
            raise _Missing(f"{self.url}: not found ({what})") from exc
        except gexc.GoogleAPICallError as exc:
            raise self._translate(what, exc) from exc
        except gexc.RetryError as exc:
            raise self._gave_up(what, exc.cause) from exc
        except _UNREACHABLE as exc:
            raise self._gave_up(what, exc) from exc
        except google.auth.exceptions.GoogleAuthError as exc:
            # a token that cannot be refreshed (revoked, expired login, anonymous after a
            # 401); the unreachable token endpoint (TransportError) was handled above
            raise PermissionDeniedError(
                f"{self.url}: the Google Cloud {self._credential_source()} cannot be used to "
                f"{what} ({exc}); run gcloud auth application-default login or use other "
                "credentials"
            ) from exc
        except DataCorruption as exc:
            raise StorageError(
                f"{self.url}: the data was corrupted in transit ({what}): its checksum "
                "differs; try again"
            ) from exc

    def _translate(self, what: str, exc: gexc.GoogleAPICallError) -> StorageError:
        """The konduktor error for an error answer from the store (other than 404)."""
        if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized)):
            return PermissionDeniedError(
                f"{self.url}: permission denied to {what} in bucket {self.bucket} ({exc.code}) "
                f"with {self._credential_source()}; grant it access to the bucket (e.g. "
                "roles/storage.objectAdmin) or use other credentials"
            )
        if isinstance(exc, gexc.PreconditionFailed):
            return _KeyTaken(f"{self.url}: another writer created the key first ({what})")
        if isinstance(exc, (gexc.TooManyRequests, gexc.ServerError)):
            return TransientError(
                f"{self.url}: the store kept failing to {what} ({exc.code} {exc.message}); "
                "try again later"
            )
        return StorageError(f"{self.url}: cannot {what}: {exc.code} {exc.message}")

    def _gave_up(self, what: str, last: BaseException | None) -> TransientError:
        """The error once retries ran out: the store kept answering errors, or never answered."""
        if isinstance(last, gexc.GoogleAPICallError):
            return TransientError(
                f"{self.url}: the store kept failing to {what} ({last.code} {last.message}) "
                "until the retry deadline; try again later"
            )
        return TransientError(
            f"{self.url}: cannot reach {self._client.api_endpoint} to {what} after retries "
            f"({last}); check the network, or sync.store.endpoint_url"
        )

    def _credential_source(self) -> str:
        """What kind of credentials, and whose, in words: never the secrets themselves."""
        credentials = self._client._credentials
        if isinstance(credentials, google.auth.credentials.AnonymousCredentials):
            return "anonymous credentials (an emulator)"
        kind = f"{type(credentials).__module__}.{type(credentials).__qualname__}"
        who = getattr(credentials, "service_account_email", None) or getattr(
            credentials, "account", None
        )
        return f"credentials {kind} of {who}" if who else f"credentials {kind}"

    def _no_bucket(self) -> str:
        return (
            f"bucket {self.bucket} does not exist (store {self.url}); create it "
            f"(gcloud storage buckets create gs://{self.bucket}) or fix jobs.bucket in "
            "~/.konduktor/config.yaml"
        )

    # -- the bucket -----------------------------------------------------------------------

    def _check_bucket(self) -> None:
        """After a 404: NotFoundError naming the bucket when it is the bucket that is missing."""
        if self._bucket_seen:
            return
        try:
            found = self._lookup_bucket()
        except PermissionDeniedError:  # objects may be readable without storage.buckets.get
            found = True
        if found is None:
            raise NotFoundError(self._no_bucket())
        self._bucket_seen = True

    def _ensure_bucket(self) -> None:
        """Create the per-user default bucket on first use (only when the options ask)."""
        if self._bucket_ready:
            return
        if self._lookup_bucket() is None:
            self._create_bucket()
        self._bucket_ready = self._bucket_seen = True

    def _lookup_bucket(self) -> Any:
        """The bucket, or None when it does not exist (404 is not an error here)."""
        return self._call(
            "look up the bucket",
            lambda: self._client.lookup_bucket(
                self.bucket, retry=self._retry, timeout=self._timeout
            ),
        )

    def _create_bucket(self) -> None:
        if self._client.project is None:
            raise StorageError(
                f"{self.url}: cannot create bucket {self.bucket}: no Google Cloud project is "
                "known; set GOOGLE_CLOUD_PROJECT (or gcloud config set project), or create it"
            )

        def create() -> None:
            try:
                self._client.create_bucket(
                    self.bucket,
                    location=self.options.region,
                    retry=self._retry,
                    timeout=self._timeout,
                )
            except gexc.Conflict:
                # a racing launch made it; if the (global) name is someone else's, the
                # next request says 403 with the bucket's name
                log.debug("bucket %s exists already", self.bucket)

        log.info("creating bucket %s in project %s", self.bucket, self._client.project)
        self._call("create the bucket", create)

    # -- Store ----------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo | None:
        self._ensure_bucket()
        try:
            blob = self._call("read object metadata", lambda: self._reload(key))
        except _Missing:
            return None
        return _info(key, blob)

    def _reload(self, key: str) -> Any:
        # Bucket.get_blob would hide the 404 that tells a missing bucket from a missing key
        blob = self._gcs_bucket.blob(self._key(key))
        blob.reload(retry=self._retry, timeout=self._timeout)
        return blob

    def put(
        self,
        key: str,
        path: Path,
        *,
        sha256: str,
        metadata: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> PutResult:
        size = path.stat().st_size
        meta = {**(metadata or {}), SHA256: sha256, SIZE: str(size)}
        for _ in range(RACE_ATTEMPTS):
            existing = self.stat(key)
            if existing is not None:
                return already_there(self.url, existing, sha256)
            try:
                generation = self._upload(key, path, size, meta, progress)
            except _KeyTaken:
                continue  # another writer won (412): look at what it wrote
            self._verify(key, generation, size, sha256)
            return PutResult(key, size, uploaded=True)
        raise TransientError(
            f"{self.url}/{key}: other writers kept colliding with this upload; try again"
        )

    def _upload(
        self, key: str, path: Path, size: int, meta: dict[str, str], progress: Progress | None
    ) -> int:
        """Create the object (412 if it exists); its generation."""
        # The SDK uploads files over 8 MiB resumable (in these chunks), smaller ones in a
        # single request that carries their crc32c. A resumable upload is given the whole
        # file's crc32c up front, so that GCS refuses to finalize damaged bytes (the SDK's
        # own check runs once the object is visible, then deletes it).
        blob = self._gcs_bucket.blob(self._key(key), chunk_size=CHUNK_SIZE)
        blob.metadata = meta
        whole_crc32c = _crc32c(path)
        with path.open("rb") as f:
            source = ReportingReader(f, progress)
            self._call(
                "upload",
                lambda: blob.upload_from_file(
                    source,
                    size=size,
                    if_generation_match=0,
                    checksum="crc32c",
                    crc32c_checksum_value=whole_crc32c,
                    retry=self._transfer_retry,
                    timeout=self._timeout,
                ),
            )
        return int(blob.generation)

    def _verify(self, key: str, generation: int, size: int, sha256: str) -> None:
        """Check what readers now see; remove this upload's object if it is not that."""
        info = self.stat(key)
        if info is not None and info.size == size and info.sha256 == sha256:
            return
        if info is not None:  # e.g. the file shrank while it was read
            name = self._key(key)
            with contextlib.suppress(StorageError):  # the error below matters more
                self._call(
                    "delete a damaged upload",
                    lambda: self._gcs_bucket.delete_blob(
                        name, if_generation_match=generation, retry=self._retry
                    ),
                )
        raise StorageError(
            f"{self.url}/{key} did not land intact (size or sha256 differ); upload again"
        )

    def get(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        self._ensure_bucket()
        try:
            blob = self._call("read object metadata", lambda: self._reload(key))
        except _Missing as exc:
            raise NotFoundError(f"{self.url}/{key} does not exist") from exc
        info = _info(key, blob)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                sink = _HashingWriter(out, progress)
                self._download(key, blob, sink)
            if info.sha256 is not None and sink.sha256.hexdigest() != info.sha256:
                raise StorageError(f"{self.url}/{key} arrived corrupt (sha256 differs); retry")
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return info

    def _download(self, key: str, blob: Any, sink: _HashingWriter) -> None:
        # The reloaded blob names its generation: the bytes fetched are those it describes.
        try:
            self._call(
                "download",
                lambda: blob.download_to_file(
                    sink, checksum="crc32c", retry=self._transfer_retry, timeout=self._timeout
                ),
            )
        except _Missing as exc:
            raise NotFoundError(f"{self.url}/{key} was deleted while it was downloaded") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under *prefix*, in key order (GCS lists names in that order).

        GCS listings carry each object's metadata, so ``sha256`` is filled in.
        """
        self._ensure_bucket()
        blobs = iter(
            self._client.list_blobs(
                self.bucket, prefix=self._key(prefix), retry=self._retry, timeout=self._timeout
            )
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        # pages are fetched lazily, so each step is where an SDK error can surface
        while (blob := self._call("list objects", lambda: next(blobs, None))) is not None:
            yield _info(blob.name[cut:], blob)

    def delete(self, key: str) -> None:
        self._ensure_bucket()
        # a missing key is fine; a missing bucket still raises (from _call)
        with contextlib.suppress(_Missing):
            self._call(
                "delete",
                lambda: self._gcs_bucket.delete_blob(
                    self._key(key), retry=self._retry, timeout=self._timeout
                ),
            )

    def mark(self, key: str) -> None:
        self._ensure_bucket()
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        blob = self._gcs_bucket.blob(self._key(key))
        # An overwrite, so not create-only. GCS allows one write per second to a name and
        # answers 429 beyond that, which the retry absorbs.
        self._call(
            "write a marker",
            lambda: blob.upload_from_string(
                now, content_type="text/plain", retry=self._retry, timeout=self._timeout
            ),
        )

    def signed_url(self, key: str, expires_seconds: int) -> str | None:
        """A V4 signed GET URL; None when the credentials hold no private key to sign with.

        Anonymous (emulator), user (gcloud) and metadata-server (GCE, GKE) credentials
        cannot sign: then the store cannot sign, and the pod fetches with credentials.
        Service-account keys (and impersonated credentials) can.
        """
        credentials = self._client._credentials
        if not isinstance(credentials, google.auth.credentials.Signing) or isinstance(
            credentials, google.auth.credentials.AnonymousCredentials
        ):
            return None
        if not 0 < expires_seconds <= MAX_SIGNED_SECONDS:
            raise StorageError(
                f"{self.url}/{key}: a signed URL lives 1 to {MAX_SIGNED_SECONDS} s (7 days), "
                f"not {expires_seconds} s"
            )
        blob = self._gcs_bucket.blob(self._key(key))
        url: str = self._call(
            "sign a URL",
            lambda: blob.generate_signed_url(
                version="v4",
                expiration=datetime.timedelta(seconds=expires_seconds),
                method="GET",
                credentials=credentials,
            ),
        )
        return url

    def identity(self) -> str:
        """Who the credentials are (for `konduktor check`), never the secrets themselves."""
        return self._credential_source()


class _Missing(NotFoundError):
    """The key does not exist (the bucket does, or could not be looked up)."""


class _KeyTaken(ConflictError):
    """A create-only upload found the key created by someone else (412)."""


def _metadata_retry(options: StoreOptions) -> Retry:
    """The SDK's retry rules (429, 5xx, connection errors), bounded in time.

    The SDK's default deadline is 120 s; an endpoint that refuses connections should
    fail a launch within seconds instead, and say why.
    """
    deadline = min(RETRY_DEADLINE, options.connect_timeout * options.max_attempts)
    retry: Retry = DEFAULT_RETRY.with_delay(initial=0.25, maximum=4.0, multiplier=2.0)
    return retry.with_timeout(deadline)


def _crc32c(path: Path) -> str:
    """The file's CRC32C as GCS writes it: base64 of the big-endian 32-bit value."""
    checksum = _new_crc32c()
    with path.open("rb") as f:
        while block := f.read(_CRC_BLOCK):
            checksum.update(block)
    return base64.b64encode(checksum.digest()).decode("ascii")


def _info(key: str, blob: Any) -> ObjectInfo:
    """The ObjectInfo of a reloaded or listed blob."""
    metadata = dict(blob.metadata or {})
    modified: datetime.datetime = blob.updated
    return ObjectInfo(key, int(blob.size), metadata.get(SHA256), modified, metadata)


class _HashingWriter(io.RawIOBase):
    """Writes through to a file, hashing the bytes and reporting their count."""

    def __init__(self, out: BinaryIO, progress: Progress | None) -> None:
        self._out = out
        self._progress = progress
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self._out.write(data)
        if self._progress is not None:
            self._progress(len(data))
        return len(data)
