"""``gs://bucket/prefix``: Google Cloud Storage, through google-cloud-storage.

Writes are create-only (``if_generation_match=0``): a 412 means another writer
created the key first, and the object is checked to hold the same sha256.
Files over 8 MB go up as resumable uploads, which GCS only finalizes when the
last chunk arrives, so a failed or interrupted upload leaves no object. Every
transfer is checked with crc32c. Retries stop after a bounded deadline.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import google.api_core.exceptions as gexc
import google.auth.exceptions
import requests
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from konduktor.errors import (
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

CHUNK_SIZE = 16 << 20  # resumable upload chunk (a multiple of 256 KiB)
RESUMABLE_THRESHOLD = 8 << 20
T = TypeVar("T")


class GCSStore:
    def __init__(self, url: str, options: StoreOptions) -> None:
        _, self.bucket_name, self.prefix = parse_url(url)
        self.url = f"gs://{self.bucket_name}" + (f"/{self.prefix}" if self.prefix else "")
        self.options = options
        deadline = options.connect_timeout * options.max_attempts
        self._retry: Retry = DEFAULT_RETRY.with_timeout(deadline)
        self._timeout = (options.connect_timeout, options.read_timeout)
        self._client = self._call("connect", lambda: _client(options))
        self._bucket: Any = self._client.bucket(self.bucket_name)
        self._bucket_checked = not options.create_bucket

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run an SDK call, turning its exceptions into konduktor's."""
        try:
            return fn()
        except gexc.NotFound as exc:
            raise NotFoundError(
                f"{self.url}: bucket {self.bucket_name} or the object does not exist ({what}); "
                "create the bucket or fix jobs.bucket in ~/.konduktor/config.yaml"
            ) from exc
        except (gexc.Forbidden, gexc.Unauthorized) as exc:
            raise PermissionDeniedError(
                f"{self.url}: permission denied to {what} in bucket {self.bucket_name} with "
                f"{self._credential_source()}; grant access or use other credentials"
            ) from exc
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise PermissionDeniedError(
                f"{self.url}: no Google Cloud credentials found; run `gcloud auth "
                "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
            ) from exc
        except (
            gexc.RetryError,
            gexc.ServerError,
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
        ) as exc:
            endpoint = self.options.endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST", "GCS")
            raise TransientError(
                f"{self.url}: cannot reach {endpoint} to {what} after retries; check the "
                "network and sync.store.endpoint_url"
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise StorageError(f"{self.url}: cannot {what}: {exc}") from exc

    def _credential_source(self) -> str:
        credentials = getattr(self._client, "_credentials", None)
        email = getattr(credentials, "service_account_email", None)
        kind = type(credentials).__module__ + "." + type(credentials).__name__
        return f"credentials {email or kind}"

    def _ensure_bucket(self) -> None:
        """Create the per-user default bucket on first use (only when the config asks)."""
        if self._bucket_checked:
            return
        self._bucket_checked = True
        found = self._call("find the bucket", lambda: self._client.lookup_bucket(self.bucket_name))
        if found is None:
            self._call("create the bucket", lambda: self._client.create_bucket(self.bucket_name))

    # -- Store ----------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo | None:
        self._ensure_bucket()
        blob = self._call(
            "read object metadata",
            lambda: self._bucket.get_blob(self._key(key), retry=self._retry, timeout=self._timeout),
        )
        return None if blob is None else self._info(key, blob)

    def _info(self, key: str, blob: Any) -> ObjectInfo:
        metadata = dict(blob.metadata or {})
        return ObjectInfo(key, int(blob.size), metadata.get(SHA256), blob.updated, metadata)

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
        self._ensure_bucket()
        existing = self.stat(key)
        if existing is not None:
            return already_there(self.url, existing, sha256)
        # Resumable (chunked) only when large: single-request uploads are cheaper, and
        # they are where emulators enforce the create-only precondition too.
        chunk = CHUNK_SIZE if size > RESUMABLE_THRESHOLD else None
        blob = self._bucket.blob(self._key(key), chunk_size=chunk)
        blob.metadata = {**(metadata or {}), SHA256: sha256, SIZE: str(size)}
        try:
            with path.open("rb") as f:
                self._call("upload", lambda: self._upload(blob, ReportingReader(f, progress), size))
        except StorageError as exc:
            if not isinstance(exc.__cause__, gexc.PreconditionFailed):
                raise
            found = self.stat(key)  # someone else created it first
            if found is None:
                raise
            return already_there(self.url, found, sha256)
        info = self.stat(key)
        if info is None or info.size != size or info.sha256 != sha256:
            raise StorageError(f"{self.url}/{key} did not land intact; upload again")
        return PutResult(key, size, uploaded=True)

    def _upload(self, blob: Any, source: io.RawIOBase, size: int) -> None:
        blob.upload_from_file(
            source,
            size=size,
            if_generation_match=0,
            checksum="crc32c",
            retry=self._retry,
            timeout=self._timeout,
        )

    def get(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        info = self.stat(key)
        if info is None:
            raise NotFoundError(f"{self.url}/{key} does not exist")
        blob = self._bucket.blob(self._key(key))
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                sink = _HashingWriter(out, progress)
                self._call(
                    "download",
                    lambda: blob.download_to_file(
                        sink, checksum="crc32c", retry=self._retry, timeout=self._timeout
                    ),
                )
            if info.sha256 is not None and sink.sha256.hexdigest() != info.sha256:
                raise StorageError(f"{self.url}/{key} arrived corrupt: its sha256 differs")
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._ensure_bucket()
        blobs = self._call(
            "list objects",
            lambda: list(
                self._client.list_blobs(
                    self.bucket_name,
                    prefix=self._key(prefix),
                    retry=self._retry,
                    timeout=self._timeout,
                )
            ),
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        for blob in sorted(blobs, key=lambda b: b.name):
            yield self._info(blob.name[cut:], blob)

    def delete(self, key: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._call(
                "delete",
                lambda: self._bucket.delete_blob(
                    self._key(key), retry=self._retry, timeout=self._timeout
                ),
            )

    def mark(self, key: str) -> None:
        self._ensure_bucket()
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        blob = self._bucket.blob(self._key(key))
        self._call(
            "write a marker",
            lambda: blob.upload_from_string(now, retry=self._retry, timeout=self._timeout),
        )

    def signed_url(self, key: str, expires_seconds: int) -> str | None:
        """A v4 signed URL, or None when the credentials cannot sign (no private key)."""
        credentials = getattr(self._client, "_credentials", None)
        if not hasattr(credentials, "sign_bytes") or isinstance(credentials, AnonymousCredentials):
            return None
        url: str = self._bucket.blob(self._key(key)).generate_signed_url(
            version="v4",
            expiration=datetime.timedelta(seconds=expires_seconds),
            method="GET",
            credentials=credentials,
        )
        return url

    def identity(self) -> str:
        """Who the credentials are (for `konduktor check`), never the secrets themselves."""
        return self._credential_source()


def _client(options: StoreOptions) -> Any:
    endpoint = options.endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST")
    if endpoint:  # an emulator: no real credentials
        return storage.Client(
            project="konduktor-test",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": endpoint},
        )
    return storage.Client()


class _HashingWriter(io.RawIOBase):
    """Writes through to a file, hashing and reporting the bytes."""

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
