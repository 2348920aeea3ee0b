"""``s3://bucket/prefix``: Amazon S3 and S3-compatible stores, through boto3.

A create-only write is conditional (``IfNoneMatch='*'``): when another writer
created the key since the Store looked, S3 answers 412 (409 while that writer is
still at it), which is KeyTakenError. Large files go up as a multipart upload with
parts sent in parallel; any failure, Ctrl-C included, aborts the upload so that no
part stays behind and no object appears. boto3's transfer manager is not used for
this: it does not pass ``IfNoneMatch`` on to CompleteMultipartUpload (s3transfer
0.19 refuses it in ``ExtraArgs``).

SDK exceptions become konduktor's at this boundary, by the two tables below (error
answers by their code, failures without an answer by their type), each message
naming the store and what to do next.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from konduktor import errors
from konduktor.storage import base

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 64 << 20  # files of this size or more go up in parallel parts
PART_SIZE = 8 << 20
PARALLEL_PARTS = 8
MAX_PARTS = 10_000  # S3's limit per multipart upload
CONNECT_ATTEMPTS = 2  # attempts on an endpoint that refuses or never answers the connection
LIST_PAGE_SIZE = 1000  # S3's maximum keys per listing request
_CHUNK = 1 << 20
_MIB = 1 << 20

_NO_BUCKET = (
    "{s.url}: bucket {s.bucket} does not exist; create it (aws s3 mb s3://{s.bucket}) "
    "or fix jobs.bucket in ~/.konduktor/config.yaml"
)
_KEPT_FAILING = (
    errors.TransientError,
    "{s.url}: the store kept failing to {what} ({code}, {attempts} attempts); try again later",
)
_OTHER_ANSWER = (errors.StorageError, "{s.url}: cannot {what}: {code}: {message}")
_DENIED = (
    errors.PermissionDeniedError,
    "{s.url}: permission denied to {what} in bucket {s.bucket} ({code}) with the AWS "
    "credentials from {s.credentials_from}; grant access or use other credentials "
    "(AWS_PROFILE, sync.store.profile)",
)
# Error answers from the store, by code; a HEAD's error has no body, so a bare status.
# Any other code is _KEPT_FAILING when its status is 5xx (retried already), else _OTHER_ANSWER.
_ANSWERS: dict[str, tuple[type[errors.StorageError], str]] = {
    "NoSuchBucket": (errors.NotFoundError, _NO_BUCKET),
    **dict.fromkeys(
        (
            "AccessDenied",
            "403",
            "Forbidden",
            "AllAccessDisabled",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "InvalidToken",
        ),
        _DENIED,
    ),
    **dict.fromkeys(
        ("NoSuchKey", "404", "NotFound"), (errors.MissingKeyError, "{s.url}: not found ({what})")
    ),
    **dict.fromkeys(
        ("PreconditionFailed", "ConditionalRequestConflict"),  # 412, 409
        (errors.KeyTakenError, "{s.url}: another writer created the key first ({what})"),
    ),
    "BucketAlreadyExists": (
        errors.StorageError,
        "{s.url}: the bucket name {s.bucket} belongs to another AWS account; choose another "
        "name with jobs.bucket",
    ),
    **dict.fromkeys(
        ("SlowDown", "RequestTimeout", "Throttling", "ThrottlingException"), _KEPT_FAILING
    ),
}
# Connection-level failures: botocore retries them with backoff, then raises one of these.
_NOT_CONNECTED = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ProxyConnectionError,
)
# Failures that never got an answer from the store, by type.
_FAILURES = base.ErrorTable(
    (
        botocore.exceptions.NoCredentialsError,
        errors.PermissionDeniedError,
        "{s.url}: no AWS credentials found; set AWS_PROFILE (or sync.store.profile) "
        "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run `aws configure`",
    ),
    (
        (botocore.exceptions.PartialCredentialsError, botocore.exceptions.CredentialRetrievalError),
        errors.PermissionDeniedError,
        "{s.url}: unusable AWS credentials: {exc}",
    ),
    (
        # HTTPClientError: connection closed, read timeout, broken stream
        (*_NOT_CONNECTED, botocore.exceptions.HTTPClientError),
        errors.TransientError,
        "{s.url}: cannot reach {s.endpoint} to {what} after retries ({exc}); check the "
        "network, or sync.store.endpoint_url",
    ),
    (botocore.exceptions.BotoCoreError, errors.StorageError, "{s.url}: cannot {what}: {exc}"),
)


class S3Backend:
    """An S3 bucket (and key prefix): see :class:`~konduktor.storage.base.Backend`.

    The client is thread-safe: one store may serve several threads at once. The progress
    callback of a multipart upload is called from worker threads, one call at a time.
    """

    def __init__(self, url: str, options: base.StoreOptions) -> None:
        _, self.bucket, self.prefix = base.parse_url(url)
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
            raise errors.PermissionDeniedError(
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

    # -- errors ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """SDK exceptions raised in the block become konduktor's, by the tables above."""
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            raise _answer(exc, s=self, what=what) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise _FAILURES.error(exc, s=self, what=what) from exc

    @property
    def credentials_from(self) -> str:
        """Where the credentials came from ("env", "shared-credentials-file", ...), not the keys."""
        with self._lock:
            credentials = self._session.get_credentials()
        return str(credentials.method) if credentials is not None else "nowhere"

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    # -- the bucket -----------------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        """Create the per-user default bucket on first use (only when the options ask)."""
        if self._bucket_ready:
            return
        try:
            with self._errors("find the bucket"):
                self._client.head_bucket(Bucket=self.bucket)
        except errors.MissingKeyError:  # HEAD says a bare 404 for a missing bucket
            self._create_bucket()
        self._bucket_ready = True

    def _create_bucket(self) -> None:
        region = self._client.meta.region_name
        args: dict[str, Any] = {"Bucket": self.bucket}
        if region and region not in ("us-east-1", "aws-global"):  # us-east-1 refuses it
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        log.info("creating bucket %s in %s", self.bucket, region)
        with self._errors("create the bucket"):
            try:
                self._client.create_bucket(**args)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) != "BucketAlreadyOwnedByYou":  # else a racing launch made it
                    raise

    # -- Backend --------------------------------------------------------------------------

    def head(self, key: str) -> base.ObjectInfo | None:
        response = self._object("read object metadata", self._client.head_object, key)
        return None if response is None else _info(key, response)

    def _object(self, what: str, call: Callable[..., Any], key: str) -> Any:
        """The answer of *call* (HeadObject, GetObject) on *key*; None if the key is absent."""
        self._ensure_bucket()
        try:
            with self._errors(what):
                return call(Bucket=self.bucket, Key=self._key(key))
        except errors.MissingKeyError:
            return None

    def create(
        self, key: str, path: Path, size: int, meta: base.Metadata, progress: base.Progress | None
    ) -> str | None:
        with base.Source(path, size, meta.get(base.SHA256)) as source:
            if size < MULTIPART_THRESHOLD:
                self._put_single(key, source, meta, progress)
            else:
                self._put_multipart(key, source, meta, progress)
        return None  # S3 objects carry no generation to tell this one from a rival's

    def discard(self, key: str, version: str | None) -> None:
        # Without generations, a delete could remove a good object a rival wrote since.
        log.warning("%s/%s failed its check after the upload; delete it by hand", self.url, key)

    def _put_single(
        self, key: str, source: base.Source, meta: base.Metadata, progress: base.Progress | None
    ) -> None:
        """One conditional PUT of bytes read and checked first: botocore reads a body more
        than once (checksums, retries), so a streamed file could change in between.

        *progress* follows the bytes as botocore first reads them: over HTTPS that is the
        send (the checksum goes in a trailer); over plain HTTP botocore reads the body for
        the checksum header and the payload signature before it sends, ahead of the send
        (parts of a multipart upload are reported once sent)."""
        data = source.read(source.size)
        source.check()
        with self._errors("upload"):
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=base.ReportingReader(io.BytesIO(data), progress),
                Metadata=meta,
                IfNoneMatch="*",
            )

    def _put_multipart(
        self, key: str, source: base.Source, meta: base.Metadata, progress: base.Progress | None
    ) -> None:
        target = {"Bucket": self.bucket, "Key": self._key(key)}
        with self._errors("start a multipart upload"):
            upload_id = self._client.create_multipart_upload(**target, Metadata=meta)["UploadId"]
        try:
            parts = self._send_parts(target, upload_id, source, progress)
            with self._errors("finish the multipart upload"):
                self._client.complete_multipart_upload(
                    **target, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
                )
        except BaseException:
            # Parts of an unfinished upload are invisible but stored (and billed) until
            # aborted: a failed part, a changed file, a lost race (412 on complete) and
            # Ctrl-C all abort.
            self._abort(target, upload_id)
            raise

    def _abort(self, target: dict[str, str], upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(**target, UploadId=upload_id)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            # the failure being handled matters more; say what is left behind
            log.warning(
                "could not abort multipart upload %s of s3://%s/%s; its parts stay until a "
                "lifecycle rule (AbortIncompleteMultipartUpload) or `konduktor store gc` "
                "removes them",
                upload_id,
                target["Bucket"],
                target["Key"],
                exc_info=True,
            )

    def _send_parts(
        self,
        target: dict[str, str],
        upload_id: str,
        source: base.Source,
        progress: base.Progress | None,
    ) -> list[dict[str, Any]]:
        """Read the parts in order in this thread (hashing them), send them from a pool, at
        most PARALLEL_PARTS in flight; the parts, once the bytes read passed their check."""
        part_size = _part_size(source.size)
        slots = threading.BoundedSemaphore(PARALLEL_PARTS)
        failed = threading.Event()
        lock = threading.Lock()  # the caller's progress callback need not be thread-safe

        def send(number: int, body: bytes) -> dict[str, Any]:
            with self._errors("upload a part"):
                done = self._client.upload_part(
                    **target, UploadId=upload_id, PartNumber=number, Body=body
                )
            if progress is not None:
                with lock:
                    progress(len(body))
            return {"PartNumber": number, "ETag": done["ETag"]}

        def finished(future: Future[dict[str, Any]]) -> None:
            if future.cancelled() or future.exception() is not None:
                failed.set()
            slots.release()

        pool = ThreadPoolExecutor(max_workers=PARALLEL_PARTS, thread_name_prefix="s3-part")
        futures = []
        try:
            for number in range(1, -(-source.size // part_size) + 1):
                slots.acquire()
                if failed.is_set():
                    break  # its error is raised below
                futures.append(pool.submit(send, number, source.read(part_size)))
                futures[-1].add_done_callback(finished)
            parts = [f.result() for f in futures]
            source.check()
            return parts
        finally:
            # wait for parts in flight: one finishing after the abort would survive it
            pool.shutdown(wait=True, cancel_futures=True)

    def stream(self, key: str, out: io.RawIOBase) -> base.ObjectInfo | None:
        response = self._object("download", self._client.get_object, key)
        if response is None:
            return None
        with self._errors("download"), contextlib.closing(response["Body"]) as body:
            for chunk in body.iter_chunks(_CHUNK):
                out.write(chunk)
        return _info(key, response)

    def list(self, prefix: str) -> Iterator[base.ObjectInfo]:
        """Objects under *prefix*, in key order.

        Listings carry no user metadata, so ``sha256`` is None and ``metadata`` empty here;
        ``stat`` a key for them (one request per key, which a listing should not cost).
        """
        self._ensure_bucket()
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=self._key(prefix),
            PaginationConfig={"PageSize": LIST_PAGE_SIZE},
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        # pages are fetched lazily, as the loop asks for them: that is where errors surface
        with self._errors("list objects"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield base.ObjectInfo(item["Key"][cut:], int(item["Size"]), None, _utc(item))

    def delete(self, key: str) -> None:
        self._ensure_bucket()
        # S3 answers 204 for a key that does not exist, so this is idempotent as it stands
        with self._errors("delete"):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def mark(self, key: str, *, create_only: bool = False, note: str = "") -> None:
        self._ensure_bucket()
        condition = {"IfNoneMatch": "*"} if create_only else {}
        with self._errors("write a marker"):
            self._client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=base.marker_text(note), **condition
            )

    def pending(self, prefix: str) -> Iterator[base.Pending]:
        """Multipart uploads never completed nor aborted, under *prefix*."""
        cut = len(self.prefix) + 1 if self.prefix else 0
        for upload in self._uploads(self._key(prefix)):
            started = upload["Initiated"].astimezone(datetime.timezone.utc)
            what = f"multipart upload {upload['UploadId']}"
            yield base.Pending(upload["Key"][cut:], started, what, ref=upload["UploadId"])

    def _uploads(self, prefix: str) -> Iterator[dict[str, Any]]:
        """The unfinished multipart uploads of the bucket's names under *prefix*."""
        self._ensure_bucket()
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
        )
        with self._errors("list multipart uploads"):
            for page in pages:
                yield from page.get("Uploads", [])

    def abort(self, pending: base.Pending) -> None:
        with self._errors("abort a multipart upload"):
            try:
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self._key(pending.key), UploadId=pending.ref
                )
            except botocore.exceptions.ClientError as exc:
                if _code(exc) != "NoSuchUpload":  # else completed or aborted meanwhile
                    raise

    def sign(self, key: str, expires_seconds: int) -> str | None:
        """A SigV4 presigned GET; S3 refuses those that outlive 7 days (604800 s)."""
        signer = self._signing_client()
        with self._errors("sign a URL"):
            url: str = signer.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires_seconds,
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
        configured = str(self._client.meta.region_name)
        if self.options.endpoint_url is not None:  # an S3-compatible store: one region
            return configured
        self._ensure_bucket()
        try:
            with self._errors("find the bucket's region"):
                head = self._client.head_bucket(Bucket=self.bucket)
        except errors.MissingKeyError as exc:
            raise errors.NotFoundError(_NO_BUCKET.format(s=self)) from exc
        except errors.PermissionDeniedError:  # HeadBucket needs s3:ListBucket, which GETs do not
            log.debug("cannot read the region of %s; signing for %s", self.bucket, configured)
            return configured
        return str(head.get("BucketRegion") or configured)

    def require_root(self) -> None:
        try:
            with self._errors("find the bucket"):
                self._client.head_bucket(Bucket=self.bucket)
        except errors.MissingKeyError as exc:  # HEAD says a bare 404 for a missing bucket
            raise errors.NotFoundError(_NO_BUCKET.format(s=self)) from exc
        except errors.PermissionDeniedError:  # HeadBucket needs s3:ListBucket, which GETs do not
            log.debug("may not look up bucket %s; its objects may still be readable", self.bucket)

    def identity(self) -> str:
        with self._lock:
            sts = self._new_client("sts")
        with self._errors("ask who the credentials are"):
            who = sts.get_caller_identity()
        return f"{who.get('Arn', '?')} (credentials from {self.credentials_from})"

    def _key(self, key: str) -> str:
        return base.join_key(self.prefix, key)


def _answer(exc: botocore.exceptions.ClientError, **fields: object) -> errors.StorageError:
    """The konduktor error for an error answer from the store: by its code, else its status."""
    metadata = exc.response.get("ResponseMetadata", {})
    status = metadata.get("HTTPStatusCode", 0)
    code = _code(exc)
    error, template = _ANSWERS.get(code) or (_KEPT_FAILING if status >= 500 else _OTHER_ANSWER)
    message = str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    attempts = metadata.get("RetryAttempts", 0) + 1
    return error(template.format(code=code, message=message, attempts=attempts, **fields))


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


def _info(key: str, response: Mapping[str, Any]) -> base.ObjectInfo:
    """The base.ObjectInfo of a HeadObject or GetObject response."""
    metadata = dict(response.get("Metadata", {}))
    size = int(response["ContentLength"])
    return base.ObjectInfo.from_metadata(key, size, _utc(response), metadata)


def _utc(item: Mapping[str, Any]) -> datetime.datetime:
    modified: datetime.datetime = item["LastModified"]
    return modified.astimezone(datetime.timezone.utc)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
