"""``s3://bucket/prefix``: Amazon S3 and S3-compatible stores, through boto3.

Writes are create-only: a HEAD first, then a conditional write (``IfNoneMatch='*'``)
so that when another writer creates the key in between, S3 answers 412 and the
object it wrote is checked to hold the same sha256. Large files go up as a
multipart upload with parts sent in parallel; any failure, Ctrl-C included,
aborts the upload so that no part stays behind and no object appears. boto3's
transfer manager is not used for this: it does not pass ``IfNoneMatch`` on to
CompleteMultipartUpload (s3transfer 0.19 refuses it in ``ExtraArgs``).

SDK exceptions become konduktor's at this boundary, each naming the store and
what to do next.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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

MULTIPART_THRESHOLD = 64 << 20  # files of this size or more go up in parallel parts
PART_SIZE = 8 << 20
PARALLEL_PARTS = 8
MAX_PARTS = 10_000  # S3's limit per multipart upload
CONNECT_ATTEMPTS = 2  # attempts on an endpoint that refuses or never answers the connection
LIST_PAGE_SIZE = 1000  # S3's maximum keys per listing request
RACE_ATTEMPTS = 3  # rounds of HEAD + conditional write when other writers keep colliding
_CHUNK = 1 << 20
_MIB = 1 << 20
T = TypeVar("T")

_DENIED = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
    }
)
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})  # HEAD answers a bare 404, no code
_TAKEN = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})  # 412, 409
_BUSY = frozenset({"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException"})
# Connection-level failures: botocore retries them with backoff, then raises one of these.
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ProxyConnectionError,
    botocore.exceptions.HTTPClientError,  # connection closed, read timeout, broken stream
)
_NOT_CONNECTED = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ProxyConnectionError,
)


class S3Store:
    """An S3 bucket (and key prefix) as a konduktor store; see :class:`~konduktor.storage.Store`.

    The client is thread-safe: one store may serve several threads at once. The progress
    callback of a multipart upload is called from worker threads, one call at a time.
    """

    def __init__(self, url: str, options: StoreOptions) -> None:
        _, self.bucket, self.prefix = parse_url(url)
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.options = options
        self._session = self._new_session()
        self._client: Any = self._new_client("s3")
        self._lock = threading.Lock()  # boto3 sessions are not thread-safe
        self._signer: Any = None
        self._bucket_ready = not options.create_bucket

    def _new_session(self) -> Any:
        try:
            return boto3.session.Session(
                profile_name=self.options.profile, region_name=self.options.region
            )
        except botocore.exceptions.ProfileNotFound as exc:
            raise PermissionDeniedError(
                f"{self.url}: AWS profile {self.options.profile!r} is not in the AWS config "
                "files; fix sync.store.profile or add the profile (aws configure --profile)"
            ) from exc

    def _new_client(self, service: str, region: str | None = None) -> Any:
        options = self.options
        config = botocore.config.Config(
            # botocore's "max_attempts" here counts retries; the option counts every attempt
            retries={"mode": options.retry_mode, "total_max_attempts": options.max_attempts},
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            max_pool_connections=PARALLEL_PARTS * 2,
            # presigned URLs otherwise default to SigV2, which newer regions refuse
            signature_version="s3v4" if service == "s3" else None,
        )
        client = self._session.client(
            service, endpoint_url=options.endpoint_url, region_name=region, config=config
        )
        service_id = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register_first(f"needs-retry.{service_id}", _give_up_on_unreachable)
        return client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- errors ---------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run an SDK call, turning its exceptions into konduktor's."""
        try:
            return fn()
        except botocore.exceptions.ClientError as exc:
            raise self._translate(what, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._translate_sdk(what, exc) from exc

    def _translate(self, what: str, exc: botocore.exceptions.ClientError) -> StorageError:
        """The konduktor error for an error answer from the store."""
        code = _code(exc)
        if code == "NoSuchBucket":
            return NotFoundError(self._no_bucket())
        if code in _DENIED:
            return PermissionDeniedError(
                f"{self.url}: permission denied to {what} in bucket {self.bucket} ({code}) "
                f"with the AWS credentials from {self._credential_source()}; grant access "
                "or use other credentials (AWS_PROFILE, sync.store.profile)"
            )
        if code in _MISSING:
            return _NoSuchKey(f"{self.url}: not found ({what})")
        if code in _TAKEN:
            return _KeyTaken(f"{self.url}: another writer created the key first ({what})")
        if code == "BucketAlreadyExists":
            return StorageError(
                f"{self.url}: the bucket name {self.bucket} belongs to another AWS account; "
                "choose another name with jobs.bucket"
            )
        metadata = exc.response.get("ResponseMetadata", {})
        if metadata.get("HTTPStatusCode", 0) >= 500 or code in _BUSY:
            attempts = metadata.get("RetryAttempts", 0) + 1
            return TransientError(
                f"{self.url}: the store kept failing to {what} ({code}, {attempts} attempts); "
                "try again later"
            )
        return StorageError(f"{self.url}: cannot {what}: {code}: {_message(exc)}")

    def _translate_sdk(self, what: str, exc: botocore.exceptions.BotoCoreError) -> StorageError:
        """The konduktor error for a failure that never got an answer from the store."""
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return PermissionDeniedError(
                f"{self.url}: no AWS credentials found; set AWS_PROFILE (or sync.store.profile) "
                "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run `aws configure`"
            )
        if isinstance(
            exc,
            (
                botocore.exceptions.PartialCredentialsError,
                botocore.exceptions.CredentialRetrievalError,
            ),
        ):
            return PermissionDeniedError(f"{self.url}: unusable AWS credentials: {exc}")
        if isinstance(exc, _UNREACHABLE):
            return TransientError(
                f"{self.url}: cannot reach {self._client.meta.endpoint_url} to {what} after "
                f"retries ({exc}); check the network, or sync.store.endpoint_url"
            )
        return StorageError(f"{self.url}: cannot {what}: {exc}")

    def _no_bucket(self) -> str:
        return (
            f"{self.url}: bucket {self.bucket} does not exist; create it "
            f"(aws s3 mb s3://{self.bucket}) or fix jobs.bucket in ~/.konduktor/config.yaml"
        )

    def _credential_source(self) -> str:
        """Where the credentials came from ("env", "shared-credentials-file", ...), not the keys."""
        with self._lock:
            credentials = self._session.get_credentials()
        return str(credentials.method) if credentials is not None else "nowhere"

    # -- the bucket -----------------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        """Create the per-user default bucket on first use (only when the options ask)."""
        if self._bucket_ready:
            return
        try:
            self._call("find the bucket", lambda: self._client.head_bucket(Bucket=self.bucket))
        except _NoSuchKey:  # HEAD says a bare 404 for a missing bucket
            self._create_bucket()
        self._bucket_ready = True

    def _create_bucket(self) -> None:
        region = self._client.meta.region_name
        args: dict[str, Any] = {"Bucket": self.bucket}
        if region and region not in ("us-east-1", "aws-global"):  # us-east-1 refuses it
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}

        def create() -> None:
            try:
                self._client.create_bucket(**args)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) != "BucketAlreadyOwnedByYou":  # else a racing launch made it
                    raise

        log.info("creating bucket %s in %s", self.bucket, region)
        self._call("create the bucket", create)

    # -- Store ----------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo | None:
        self._ensure_bucket()
        try:
            head = self._call(
                "read object metadata",
                lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)),
            )
        except _NoSuchKey:
            return None
        return _info(key, head)

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
                self._upload(key, path, size, meta, progress)
            except _KeyTaken:
                continue  # another writer won (412) or was writing (409): look at its object
            self._verify(key, size, sha256)
            return PutResult(key, size, uploaded=True)
        raise TransientError(
            f"{self.url}/{key}: other writers kept colliding with this upload; try again"
        )

    def _upload(
        self, key: str, path: Path, size: int, meta: dict[str, str], progress: Progress | None
    ) -> None:
        if size < MULTIPART_THRESHOLD:
            self._put_single(key, path, meta, progress)
        else:
            self._put_multipart(key, path, size, meta, progress)

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
            body = ReportingReader(f, progress)
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
            # Parts of an unfinished upload are invisible but stored (and billed) until
            # aborted: a failed part, a lost race (412 on complete) and Ctrl-C all abort.
            self._abort(target, upload_id)
            raise

    def _abort(self, target: dict[str, str], upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(**target, UploadId=upload_id)
        except Exception:  # the failure being handled matters more; say what is left behind
            log.warning(
                "could not abort multipart upload %s of s3://%s/%s; its parts stay until a "
                "lifecycle rule (AbortIncompleteMultipartUpload) removes them",
                upload_id,
                target["Bucket"],
                target["Key"],
                exc_info=True,
            )

    def _send_parts(
        self,
        target: dict[str, str],
        upload_id: str,
        path: Path,
        size: int,
        progress: Progress | None,
    ) -> list[dict[str, Any]]:
        part_size = _part_size(size)
        lock = threading.Lock()  # the caller's progress callback need not be thread-safe
        fd = os.open(path, os.O_RDONLY)

        def send(number: int) -> dict[str, Any]:
            offset = (number - 1) * part_size
            body = os.pread(fd, min(part_size, size - offset), offset)
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

        count = -(-size // part_size)
        pool = ThreadPoolExecutor(max_workers=PARALLEL_PARTS, thread_name_prefix="s3-part")
        try:
            return list(pool.map(send, range(1, count + 1)))
        finally:
            # wait for parts in flight: one finishing after the abort would survive it
            pool.shutdown(wait=True, cancel_futures=True)
            os.close(fd)

    def get(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        self._ensure_bucket()
        try:
            response = self._call(
                "download", lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            )
        except _NoSuchKey as exc:
            raise NotFoundError(f"{self.url}/{key} does not exist") from exc
        info = _info(key, response)
        with contextlib.closing(response["Body"]) as body:
            self._call("download", lambda: self._receive(key, body, dest, info.sha256, progress))
        return info

    def _receive(
        self, key: str, body: Any, dest: Path, sha256: str | None, progress: Progress | None
    ) -> None:
        """Stream *body* into a temporary file next to *dest*, check it, then rename it."""
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for chunk in body.iter_chunks(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            if sha256 is not None and digest.hexdigest() != sha256:
                raise StorageError(f"{self.url}/{key} arrived corrupt (sha256 differs); retry")
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under *prefix*, in key order.

        Listings carry no user metadata, so ``sha256`` is None and ``metadata`` empty here;
        ``stat`` a key for them (one request per key, which a listing should not cost).
        """
        self._ensure_bucket()
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(
            paginator.paginate(
                Bucket=self.bucket,
                Prefix=self._key(prefix),
                PaginationConfig={"PageSize": LIST_PAGE_SIZE},
            )
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        # pages are fetched lazily, so each fetch is where an SDK error can surface
        while (page := self._call("list objects", lambda: next(pages, None))) is not None:
            for item in page.get("Contents", []):
                yield ObjectInfo(item["Key"][cut:], int(item["Size"]), None, _utc(item))

    def delete(self, key: str) -> None:
        self._ensure_bucket()
        # S3 answers 204 for a key that does not exist, so this is idempotent as it stands
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
        """A SigV4 presigned GET; S3 refuses those that outlive 7 days (604800 s)."""
        signer = self._signing_client()
        url: str = self._call(
            "sign a URL",
            lambda: signer.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires_seconds,
            ),
        )
        return url

    def _signing_client(self) -> Any:
        """A client in the bucket's own region: a SigV4 signature names the region, and
        while SDK calls follow S3's redirect to it, a pod's plain GET of a URL cannot."""
        if self._signer is None:
            region = self._bucket_region()
            with self._lock:
                if region == self._client.meta.region_name:
                    self._signer = self._client
                else:
                    self._signer = self._new_client("s3", region)
        return self._signer

    def _bucket_region(self) -> str:
        if self.options.endpoint_url is not None:  # an S3-compatible store: one region
            return str(self._client.meta.region_name)
        self._ensure_bucket()
        configured = str(self._client.meta.region_name)
        try:
            head = self._call(
                "find the bucket's region",
                lambda: self._client.head_bucket(Bucket=self.bucket),
            )
        except _NoSuchKey as exc:
            raise NotFoundError(self._no_bucket()) from exc
        except PermissionDeniedError:  # HeadBucket needs s3:ListBucket, which GETs do not
            log.debug("cannot read the region of %s; signing for %s", self.bucket, configured)
            return configured
        return str(head.get("BucketRegion") or configured)

    def identity(self) -> str:
        """Who the credentials are (for `konduktor check`), never the secrets themselves."""
        with self._lock:
            sts = self._new_client("sts")
        who = self._call("ask who the credentials are", sts.get_caller_identity)
        return f"{who.get('Arn', '?')} (credentials from {self._credential_source()})"


class _NoSuchKey(NotFoundError):
    """The key (or, from a HEAD, the bucket) does not exist."""


class _KeyTaken(ConflictError):
    """A conditional write found the key created by someone else, or being created."""


def _give_up_on_unreachable(
    attempts: int, caught_exception: Exception | None = None, **_: Any
) -> None:
    """botocore ``needs-retry`` hook, run before its retry handler.

    An endpoint that refuses connections or never answers would otherwise be retried
    max_attempts times with exponential backoff (up to ~15 s at 5 attempts, plus the
    connect timeouts): a launch should fail within seconds instead, and say why.
    Answers from the store (5xx, throttling) keep the configured retries.
    """
    if isinstance(caught_exception, _NOT_CONNECTED) and attempts >= CONNECT_ATTEMPTS:
        raise caught_exception


def _part_size(size: int) -> int:
    """PART_SIZE, or more in whole MiB when the file would need more than MAX_PARTS parts."""
    needed = -(-size // MAX_PARTS)
    return max(PART_SIZE, -(-needed // _MIB) * _MIB)


def _info(key: str, response: Mapping[str, Any]) -> ObjectInfo:
    """The ObjectInfo of a HeadObject or GetObject response."""
    metadata = dict(response.get("Metadata", {}))
    size = int(response["ContentLength"])
    return ObjectInfo(key, size, metadata.get(SHA256), _utc(response), metadata)


def _utc(item: Mapping[str, Any]) -> datetime.datetime:
    modified: datetime.datetime = item["LastModified"]
    return modified.astimezone(datetime.timezone.utc)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
