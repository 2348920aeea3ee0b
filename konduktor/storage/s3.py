"""``s3://bucket/prefix``: Amazon S3 and S3-compatible stores, through boto3.

Writes are create-only (``IfNoneMatch='*'``): when another writer created the
key first, S3 answers 412 and the object is checked to hold the same sha256.
Large files go up as a multipart upload with parts sent in parallel; any
failure, Ctrl-C included, aborts the upload so that no part stays behind and
no object appears.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from konduktor.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    TransientError,
)
from konduktor.storage import StoreOptions, parse_url
from konduktor.storage.base import SHA256, SIZE, ObjectInfo, Progress, PutResult

MULTIPART_THRESHOLD = 64 << 20
PART_SIZE = 16 << 20
PARALLEL_PARTS = 8
_CHUNK = 1 << 20
T = TypeVar("T")


class S3Store:
    def __init__(self, url: str, options: StoreOptions) -> None:
        _, self.bucket, self.prefix = parse_url(url)
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.options = options
        self._session = boto3.session.Session(
            profile_name=options.profile, region_name=options.region
        )
        config = botocore.config.Config(
            retries={"mode": options.retry_mode, "max_attempts": options.max_attempts},
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            max_pool_connections=PARALLEL_PARTS * 2,
        )
        self._client: Any = self._session.client(
            "s3", endpoint_url=options.endpoint_url, config=config
        )
        self._bucket_checked = not options.create_bucket

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run an SDK call, turning its exceptions into konduktor's."""
        try:
            return fn()
        except botocore.exceptions.ClientError as exc:
            raise self._translate(what, exc) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise PermissionDeniedError(
                f"{self.url}: no AWS credentials found; set AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run `aws configure`"
            ) from exc
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectionClosedError,
        ) as exc:
            endpoint = self.options.endpoint_url or "AWS"
            raise TransientError(
                f"{self.url}: cannot reach {endpoint} to {what} after retries ({exc}); check "
                "the network and sync.store.endpoint_url"
            ) from exc

    def _ensure_bucket(self) -> None:
        """Create the per-user default bucket on first use (only when the config asks)."""
        if self._bucket_checked:
            return
        self._bucket_checked = True
        try:
            self._call("find the bucket", lambda: self._client.head_bucket(Bucket=self.bucket))
            return
        except NotFoundError:  # HEAD says a bare 404
            pass
        region = self._client.meta.region_name
        args: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        self._call("create the bucket", lambda: self._client.create_bucket(**args))

    def _translate(self, what: str, exc: botocore.exceptions.ClientError) -> StorageError:
        code = _code(exc)
        if code == "NoSuchBucket":
            return NotFoundError(
                f"{self.url}: bucket {self.bucket} does not exist; create it or fix "
                "jobs.bucket in ~/.konduktor/config.yaml"
            )
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return PermissionDeniedError(
                f"{self.url}: permission denied to {what} in bucket {self.bucket} with the "
                f"credentials from {self._credential_source()}; grant access or use other "
                "credentials (AWS_PROFILE)"
            )
        if code in ("NoSuchKey", "404"):
            return _NoSuchKey(f"{self.url}: no such object ({what})")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status >= 500:
            return TransientError(f"{self.url}: the store kept failing to {what}: {code}")
        return StorageError(f"{self.url}: cannot {what}: {code}: {exc}")

    def _credential_source(self) -> str:
        credentials = self._session.get_credentials()
        return str(credentials.method) if credentials is not None else "nowhere"

    # -- Store ----------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._call(
                "read object metadata",
                lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)),
            )
        except _NoSuchKey:
            return None
        metadata = dict(head.get("Metadata", {}))
        return ObjectInfo(
            key, int(head["ContentLength"]), metadata.get(SHA256), head["LastModified"], metadata
        )

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
            return self._same(existing, sha256)
        meta = {**(metadata or {}), SHA256: sha256, SIZE: str(size)}
        try:
            if size < MULTIPART_THRESHOLD:
                self._put_single(key, path, meta, progress)
            else:
                self._put_multipart(key, path, size, meta, progress)
        except StorageError as exc:
            if "PreconditionFailed" not in str(exc) and "ConditionalRequestConflict" not in str(
                exc
            ):
                raise
            found = self.stat(key)  # someone else created it first
            if found is None:
                raise
            return self._same(found, sha256)
        self._verify(key, size, sha256)
        return PutResult(key, size, uploaded=True)

    def _same(self, existing: ObjectInfo, sha256: str) -> PutResult:
        if existing.sha256 != sha256:
            raise ConflictError(
                f"{self.url}/{existing.key} already holds other content (sha256 "
                f"{existing.sha256}); keys are immutable: delete that object"
            )
        return PutResult(existing.key, existing.size, uploaded=False)

    def _verify(self, key: str, size: int, sha256: str) -> None:
        info = self.stat(key)
        if info is None or info.size != size or info.sha256 != sha256:
            raise StorageError(
                f"{self.url}/{key} did not land intact (size or sha256 differ); upload again"
            )

    def _put_single(
        self, key: str, path: Path, meta: dict[str, str], progress: Progress | None
    ) -> None:
        with path.open("rb") as f:
            body = _Reporting(f, progress)
            self._call(
                "upload",
                lambda: self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Body=body,
                    Metadata=meta,
                    IfNoneMatch="*",
                ),
            )

    def _put_multipart(
        self, key: str, path: Path, size: int, meta: dict[str, str], progress: Progress | None
    ) -> None:
        target = {"Bucket": self.bucket, "Key": self._key(key)}
        started = self._call(
            "start a multipart upload",
            lambda: self._client.create_multipart_upload(**target, Metadata=meta),
        )
        upload_id = started["UploadId"]
        try:
            parts = self._send_parts(target, upload_id, path, size, progress)
            self._call(
                "finish the multipart upload",
                lambda: self._client.complete_multipart_upload(
                    **target,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                ),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(**target, UploadId=upload_id)
            raise

    def _send_parts(
        self,
        target: dict[str, str],
        upload_id: str,
        path: Path,
        size: int,
        progress: Progress | None,
    ) -> list[dict[str, Any]]:
        lock = threading.Lock()
        fd = os.open(path, os.O_RDONLY)

        def send(number: int) -> dict[str, Any]:
            offset = (number - 1) * PART_SIZE
            body = os.pread(fd, min(PART_SIZE, size - offset), offset)
            done = self._call(
                "upload a part",
                lambda: self._client.upload_part(
                    **target, UploadId=upload_id, PartNumber=number, Body=body
                ),
            )
            if progress is not None:
                with lock:
                    progress(len(body))
            return {"PartNumber": number, "ETag": done["ETag"]}

        count = (size + PART_SIZE - 1) // PART_SIZE
        pool = ThreadPoolExecutor(max_workers=PARALLEL_PARTS, thread_name_prefix="s3-part")
        try:
            return list(pool.map(send, range(1, count + 1)))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            os.close(fd)

    def get(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        info = self.stat(key)
        if info is None:
            raise NotFoundError(f"{self.url}/{key} does not exist")
        response = self._call(
            "download", lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for chunk in response["Body"].iter_chunks(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            if info.sha256 is not None and digest.hexdigest() != info.sha256:
                raise StorageError(f"{self.url}/{key} arrived corrupt: its sha256 differs")
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under *prefix*; listings carry no metadata, so sha256 is None here."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = self._call(
            "list objects",
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix))),
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        for page in pages:
            for item in page.get("Contents", []):
                yield ObjectInfo(item["Key"][cut:], int(item["Size"]), None, item["LastModified"])

    def delete(self, key: str) -> None:
        self._call(
            "delete", lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        )

    def mark(self, key: str) -> None:
        self._ensure_bucket()
        now = datetime.datetime.now(datetime.timezone.utc).isoformat().encode()
        self._call(
            "write a marker",
            lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=now),
        )

    def signed_url(self, key: str, expires_seconds: int) -> str | None:
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expires_seconds,
        )
        return url

    def identity(self) -> str:
        """Who the credentials are (for `konduktor check`), never the secrets themselves."""
        sts = self._session.client("sts", endpoint_url=self.options.endpoint_url)
        who = self._call("ask who the credentials are", sts.get_caller_identity)
        return f"{who.get('Arn', '?')} (credentials from {self._credential_source()})"


class _NoSuchKey(NotFoundError):
    """The key (not the bucket) does not exist."""


class _Reporting(io.RawIOBase):
    """A readable file that reports each byte once as it is first read, so a request body
    is progress-tracked while it streams; an exception from the callback aborts it."""

    def __init__(self, f: BinaryIO, progress: Progress | None) -> None:
        self._f = f
        self._progress = progress
        self._reported = 0  # botocore reads the body more than once (checksums, retries)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        position = self._f.tell()
        if self._progress is not None and position > self._reported:
            self._progress(position - self._reported)
            self._reported = position
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
