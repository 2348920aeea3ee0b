"""``gs://bucket/prefix``: Google Cloud Storage, through google-cloud-storage.

A create-only write is an upload with ``if_generation_match=0``: when another
writer created the key since the Store looked, GCS answers 412, which is KeyTakenError.
Files over 8 MiB go up as resumable uploads in 16 MiB chunks (the SDK chooses by
size); GCS makes the object visible only when the last chunk arrives, so a failed or
interrupted upload (Ctrl-C included) leaves no object. Every transfer is checked with
crc32c by the server and the client; a damaged upload is deleted by its generation.

Credentials: Application Default Credentials, or none at all for an emulator
(``STORAGE_EMULATOR_HOST``, or ``endpoint_url`` over plain ``http://``, where a token
must never travel). Retries of a metadata request stop after a few seconds, so an
unreachable endpoint fails a launch quickly; data transfers get ``read_timeout``.
SDK exceptions become konduktor's at this boundary, by the tables below, each message
naming the store and what to do next.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

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

from konduktor import errors
from konduktor.storage import base

log = logging.getLogger(__name__)

CHUNK_SIZE = 16 << 20  # resumable upload chunk (GCS wants a multiple of 256 KiB)
SINGLE_REQUEST_LIMIT = 8 << 20  # the SDK sends files up to this size in one request
RETRY_DEADLINE = 10.0  # seconds of retries for one metadata request, at most
MAX_SIGNED_SECONDS = 7 * 24 * 3600  # GCS refuses V4 signatures that outlive 7 days
EMULATOR_PROJECT = "konduktor-emulator"  # an emulator needs a project name, any name
_CRC_BLOCK = 1 << 20
_new_crc32c: Callable[[], Any] = google_crc32c.Checksum  # the C extension, untyped

_CANNOT_REACH = (
    "{s.url}: cannot reach {s.endpoint} to {what} after retries ({exc}); check the "
    "network, or sync.store.endpoint_url"
)
# Error answers and failures, by type; a 404 is told apart before these (see _errors).
_ERRORS = base.ErrorTable(
    (
        (gexc.Forbidden, gexc.Unauthorized),
        errors.PermissionDeniedError,
        "{s.url}: permission denied to {what} in bucket {s.bucket} ({exc.code}) with "
        "{s.credentials}; grant it access to the bucket (e.g. roles/storage.objectAdmin) or "
        "use other credentials",
    ),
    (
        gexc.PreconditionFailed,
        errors.KeyTakenError,
        "{s.url}: another writer created the key first ({what})",
    ),
    (
        (gexc.TooManyRequests, gexc.ServerError),
        errors.TransientError,
        "{s.url}: the store kept failing to {what} ({exc.code} {exc.message}); try again later",
    ),
    (
        gexc.GoogleAPICallError,
        errors.StorageError,
        "{s.url}: cannot {what}: {exc.code} {exc.message}",
    ),
    (
        # never answered (not retried, or retried already)
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            google.auth.exceptions.TransportError,
        ),
        errors.TransientError,
        _CANNOT_REACH,
    ),
    (
        # a token that cannot be refreshed (revoked, expired login, anonymous after a 401);
        # the unreachable token endpoint (TransportError) was matched above
        google.auth.exceptions.GoogleAuthError,
        errors.PermissionDeniedError,
        "{s.url}: the Google Cloud {s.credentials} cannot be used to {what} ({exc}); run "
        "gcloud auth application-default login or use other credentials",
    ),
    (
        DataCorruption,
        errors.StorageError,
        "{s.url}: the data was corrupted in transit ({what}): its checksum differs; try again",
    ),
)
# Once retries ran out (RetryError): by what the last attempt met.
_GAVE_UP = base.ErrorTable(
    (
        gexc.GoogleAPICallError,
        errors.TransientError,
        "{s.url}: the store kept failing to {what} ({exc.code} {exc.message}) until the "
        "retry deadline; try again later",
    ),
    (BaseException, errors.TransientError, _CANNOT_REACH),
)


class GCSBackend:
    """A GCS bucket (and key prefix): see :class:`~konduktor.storage.base.Backend`.

    *client* is a ``google.cloud.storage.Client`` to use instead of one made from
    *options* (tests pass one with signing credentials). Threads may share a store: the
    SDK client and its connection pool are shared (the conformance tests race two puts).
    """

    def __init__(self, url: str, options: base.StoreOptions, *, client: Any | None = None) -> None:
        _, self.bucket, self.prefix = base.parse_url(url)
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
            raise errors.PermissionDeniedError(
                f"{self.url}: no Google Cloud credentials: run gcloud auth application-default "
                f"login or set GOOGLE_APPLICATION_CREDENTIALS ({exc})"
            ) from exc
        return storage.Client(
            project=project,  # None is fine until a bucket must be created
            credentials=credentials,
            client_options={"api_endpoint": endpoint} if endpoint else None,
        )

    # -- errors ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """SDK exceptions raised in the block become konduktor's, by the tables above."""
        try:
            yield
        except gexc.NotFound as exc:
            # GCS (and its emulator) answer the same 404 for a missing bucket and a
            # missing object: tell them apart, since only the object is a normal case
            self._check_bucket()
            raise errors.MissingKeyError(f"{self.url}: not found ({what})") from exc
        except gexc.RetryError as exc:
            raise _GAVE_UP.error(exc.cause or exc, s=self, what=what) from exc
        except _ERRORS.kinds as exc:
            raise _ERRORS.error(exc, s=self, what=what) from exc

    @property
    def credentials(self) -> str:
        """What kind of credentials, and whose, in words: never the secrets themselves."""
        credentials = self._client._credentials
        if isinstance(credentials, google.auth.credentials.AnonymousCredentials):
            return "anonymous credentials (an emulator)"
        kind = f"{type(credentials).__module__}.{type(credentials).__qualname__}"
        who = getattr(credentials, "service_account_email", None) or getattr(
            credentials, "account", None
        )
        return f"credentials {kind} of {who}" if who else f"credentials {kind}"

    @property
    def endpoint(self) -> str:
        return str(self._client.api_endpoint)

    # -- the bucket -----------------------------------------------------------------------

    def _check_bucket(self) -> None:
        """After a 404: NotFoundError naming the bucket when it is the bucket that is missing."""
        if self._bucket_seen:
            return
        try:
            found = self._lookup_bucket()
        except errors.PermissionDeniedError:  # objects may be readable without storage.buckets.get
            found = True
        if found is None:
            raise errors.NotFoundError(
                f"bucket {self.bucket} does not exist (store {self.url}); create it "
                f"(gcloud storage buckets create gs://{self.bucket}) or fix jobs.bucket in "
                "~/.konduktor/config.yaml"
            )
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
        with self._errors("look up the bucket"):
            return self._client.lookup_bucket(self.bucket, retry=self._retry, timeout=self._timeout)

    def _create_bucket(self) -> None:
        if self._client.project is None:
            raise errors.StorageError(
                f"{self.url}: cannot create bucket {self.bucket}: no Google Cloud project is "
                "known; set GOOGLE_CLOUD_PROJECT (or gcloud config set project), or create it"
            )
        log.info("creating bucket %s in project %s", self.bucket, self._client.project)
        with self._errors("create the bucket"):
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

    # -- Backend --------------------------------------------------------------------------

    def head(self, key: str) -> base.ObjectInfo | None:
        blob = self._reload(key)
        return None if blob is None else _info(key, blob)

    def _reload(self, key: str) -> Any:
        """The key's blob with its metadata, or None when the key does not exist."""
        self._ensure_bucket()
        # Bucket.get_blob would hide the 404 that tells a missing bucket from a missing key
        blob = self._gcs_bucket.blob(self._key(key))
        try:
            with self._errors("read object metadata"):
                blob.reload(retry=self._retry, timeout=self._timeout)
        except errors.MissingKeyError:
            return None
        return blob

    def create(
        self, key: str, path: Path, size: int, meta: base.Metadata, progress: base.Progress | None
    ) -> str | None:
        """The new object's generation.

        A file the SDK sends in one request is read, checked and sent from memory. A larger
        one goes up resumable, in chunks the SDK may read again on a retry: it is hashed in
        a first pass (sha256, md5 and crc32c), and the object GCS made is compared with
        that pass, by GCS's own md5 and crc32c, then deleted by its generation if it
        differs. GCS is also given the crc32c up front, so that it refuses to finalize
        other bytes (the SDK's own check runs once the object is visible)."""
        blob = self._gcs_bucket.blob(self._key(key), chunk_size=CHUNK_SIZE)
        blob.metadata = dict(meta)
        before = path.stat()
        with base.Source(path, size, meta.get(base.SHA256)) as source:
            if size <= SINGLE_REQUEST_LIMIT:
                data = source.read(size)
                source.check()
                self._upload(blob, io.BytesIO(data), size, _Sums([data]), progress)
                return str(blob.generation)
            sums = _Sums(source.chunks(_CRC_BLOCK))
            source.check()
        try:
            with path.open("rb") as f:
                self._upload(blob, f, size, sums, progress)
        except errors.StorageError as exc:  # e.g. GCS refused other bytes than the crc32c's
            if _fingerprint(path.stat()) != _fingerprint(before):
                raise errors.SourceChangedError(base.changed(path, source.sha256 or "")) from exc
            raise
        self._check_sent(key, blob, size, sums, path, before)
        return str(blob.generation)

    def _upload(
        self, blob: Any, f: Any, size: int, sums: _Sums, progress: base.Progress | None
    ) -> None:
        with self._errors("upload"):
            blob.upload_from_file(
                base.ReportingReader(f, progress),
                size=size,
                if_generation_match=0,
                checksum="crc32c",
                crc32c_checksum_value=sums.crc32c(),
                retry=self._transfer_retry,
                timeout=self._timeout,
            )

    def _check_sent(
        self, key: str, blob: Any, size: int, sums: _Sums, path: Path, before: os.stat_result
    ) -> None:
        """Delete the new object, SourceChangedError, unless GCS got the bytes hashed first
        and the file did not change while it was read again."""
        md5 = blob.md5_hash  # None for composite objects; crc32c is always there
        same = (int(blob.size), blob.crc32c) == (size, sums.crc32c()) and md5 in (None, sums.md5())
        if same and _fingerprint(path.stat()) == _fingerprint(before):
            return
        self.discard(key, str(blob.generation))
        raise errors.SourceChangedError(base.changed(path, blob.metadata[base.SHA256]))

    def discard(self, key: str, version: str | None) -> None:
        # only this upload's generation (create always names it): never a rival's object
        with self._errors("delete a damaged upload"):
            self._gcs_bucket.delete_blob(
                self._key(key), if_generation_match=version, retry=self._retry
            )

    def stream(self, key: str, out: io.RawIOBase) -> base.ObjectInfo | None:
        blob = self._reload(key)
        if blob is None:
            return None
        # The reloaded blob names its generation: the bytes fetched are those it describes.
        try:
            with self._errors("download"):
                blob.download_to_file(
                    out, checksum="crc32c", retry=self._transfer_retry, timeout=self._timeout
                )
        except errors.MissingKeyError as exc:
            raise errors.NotFoundError(
                f"{self.url}/{key} was deleted while it was downloaded"
            ) from exc
        return _info(key, blob)

    def list(self, prefix: str) -> Iterator[base.ObjectInfo]:
        """Objects under *prefix*, in key order (GCS lists names in that order).

        GCS listings carry each object's metadata, so ``sha256`` is filled in.
        """
        self._ensure_bucket()
        blobs = self._client.list_blobs(
            self.bucket, prefix=self._key(prefix), retry=self._retry, timeout=self._timeout
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        # pages are fetched lazily, as the loop asks for them: that is where errors surface
        with self._errors("list objects"):
            for blob in blobs:
                yield _info(blob.name[cut:], blob)

    def delete(self, key: str) -> None:
        self._ensure_bucket()
        # a missing key is fine; a missing bucket still raises (from _errors)
        with contextlib.suppress(errors.MissingKeyError), self._errors("delete"):
            self._gcs_bucket.delete_blob(self._key(key), retry=self._retry, timeout=self._timeout)

    def mark(self, key: str, *, create_only: bool = False, note: str = "") -> None:
        self._ensure_bucket()
        blob = self._gcs_bucket.blob(self._key(key))
        condition = {"if_generation_match": 0} if create_only else {}
        # GCS allows one write per second to a name and answers 429 beyond that, which the
        # retry absorbs.
        with self._errors("write a marker"):
            blob.upload_from_string(
                base.marker_text(note),
                content_type="text/plain",
                retry=self._retry,
                timeout=self._timeout,
                **condition,
            )

    def pending(self, prefix: str) -> Iterator[base.Pending]:
        """Nothing: GCS cannot list resumable upload sessions; it drops unfinished ones
        itself after a week, and they are not billed as objects."""
        return iter(())

    def abort(self, pending: base.Pending) -> None:
        """Nothing to do: :meth:`pending` never lists anything here."""

    def sign(self, key: str, expires_seconds: int) -> str | None:
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
            raise errors.StorageError(
                f"{self.url}/{key}: a signed URL lives 1 to {MAX_SIGNED_SECONDS} s (7 days), "
                f"not {expires_seconds} s"
            )
        blob = self._gcs_bucket.blob(self._key(key))
        with self._errors("sign a URL"):
            url: str = blob.generate_signed_url(
                version="v4",
                expiration=datetime.timedelta(seconds=expires_seconds),
                method="GET",
                credentials=credentials,
            )
        return url

    def identity(self) -> str:
        return self.credentials

    def require_root(self) -> None:
        self._check_bucket()

    def _key(self, key: str) -> str:
        return base.join_key(self.prefix, key)


def _metadata_retry(options: base.StoreOptions) -> Retry:
    """The SDK's retry rules (429, 5xx, connection errors), bounded in time.

    The SDK's default deadline is 120 s; an endpoint that refuses connections should
    fail a launch within seconds instead, and say why.
    """
    deadline = min(RETRY_DEADLINE, options.connect_timeout * options.max_attempts)
    retry: Retry = DEFAULT_RETRY.with_delay(initial=0.25, maximum=4.0, multiplier=2.0)
    return retry.with_timeout(deadline)


class _Sums:
    """The md5 and crc32c of bytes, as GCS writes them: base64 of the digests."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._crc32c = _new_crc32c()
        self._md5 = hashlib.md5(usedforsecurity=False)
        for chunk in chunks:
            self._crc32c.update(chunk)
            self._md5.update(chunk)

    def crc32c(self) -> str:
        return base64.b64encode(self._crc32c.digest()).decode("ascii")

    def md5(self) -> str:
        return base64.b64encode(self._md5.digest()).decode("ascii")


def _fingerprint(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _info(key: str, blob: Any) -> base.ObjectInfo:
    """The base.ObjectInfo of a reloaded or listed blob."""
    metadata = dict(blob.metadata or {})
    modified: datetime.datetime = blob.updated
    return base.ObjectInfo.from_metadata(key, int(blob.size), modified, metadata)
