"""What every store shares: options, URL parsing, the values stores return, the
``Backend`` protocol each backend implements, and the helpers backends share.

Nothing here imports a backend or an SDK, so backends import this module freely.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from konduktor.errors import SourceChangedError, StorageError, UsageError

Progress = Callable[[int], None]
"""Called with the number of bytes transferred since the previous call."""

Metadata = Mapping[str, str]
"""An object's user metadata: konduktor's objects carry their sha256 and size in it."""

SHA256 = "sha256"  # metadata keys every object carries
SIZE = "size"

# scheme -> (module, backend class, pip extra, the SDK's package on PyPI); modules are
# imported only when used
BACKENDS = {
    "file": ("konduktor.storage.local", "LocalBackend", None, None),
    "s3": ("konduktor.storage.s3", "S3Backend", "s3", "boto3"),
    "gs": ("konduktor.storage.gcs", "GCSBackend", "gcs", "google-cloud-storage"),
}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StoreOptions:
    """Settings from the `sync:` section of the config; every field is optional."""

    endpoint_url: str | None = None  # an S3-compatible endpoint, or a GCS emulator
    region: str | None = None
    profile: str | None = None  # AWS profile
    create_bucket: bool = False  # create the bucket on first use (per-user default bucket)
    retry_mode: str = "standard"  # botocore: standard or adaptive
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


def parse_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket or path, prefix) of a store URL, or UsageError saying what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        if not url:
            raise UsageError(f"the store URL is empty; write one such as file:///path ({known})")
        if not scheme:  # a path: stores are URLs everywhere (--store, jobs.bucket)
            absolute = os.path.abspath(os.path.expanduser(url))
            raise UsageError(
                f"store URL {url!r} has no scheme; for that directory write file://{absolute} "
                f"(stores are URLs: {known})"
            )
        raise UsageError(f"store URL {url!r} has an unknown scheme; use one of {known}")
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise UsageError(f"store URL {url!r} is malformed; write file:///absolute/path")
        return scheme, parts.path, ""
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not _BUCKET.match(bucket) or parts.query or parts.fragment:
        raise UsageError(
            f"store URL {url!r} is malformed; write {scheme}://bucket-name/optional/prefix "
            "(bucket names: 3-63 lowercase letters, digits, dots and dashes)"
        )
    return scheme, bucket, prefix


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None  # from the object's metadata; None for objects konduktor did not write
    modified: datetime.datetime  # timezone-aware, UTC
    metadata: Metadata = field(default_factory=dict)

    @classmethod
    def from_metadata(
        cls, key: str, size: int, modified: datetime.datetime, metadata: Metadata
    ) -> ObjectInfo:
        """The info of an object with its user metadata (konduktor's carries its sha256)."""
        return cls(key, size, metadata.get(SHA256), modified, metadata)


@dataclass(frozen=True)
class PutResult:
    key: str
    size: int
    uploaded: bool  # False: the key already held this content


@dataclass(frozen=True)
class Pending:
    """A write that started and never finished: no reader sees it, but it takes space
    (on S3, billed parts) until it is aborted."""

    key: str  # the key it was writing
    started: datetime.datetime  # timezone-aware, UTC; file://: when last written to
    what: str  # for people: "multipart upload <id>", "partial file", "orphan metadata"
    ref: str = field(default="", repr=False)  # the backend's handle: an upload id, a path


class Backend(Protocol):
    """The SDK calls behind a :class:`~konduktor.storage.Store`, and nothing more: the
    semantics (create-only, verification, atomic download) are the Store's, written once.

    Private to konduktor.storage. Every method raises konduktor's errors, never the SDK's.
    """

    url: str  # the canonical URL of the store's root, e.g. s3://bucket/prefix

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and metadata, or None when the key does not exist."""
        ...

    def create(
        self, key: str, path: Path, size: int, meta: Metadata, progress: Progress | None
    ) -> str | None:
        """Upload *path* as *key* only if the key is absent, else raise KeyTakenError; no
        partial object ever shows. The bytes sent are read once, through a :class:`Source`
        that checks them against ``meta["sha256"]`` before the object may show
        (SourceChangedError otherwise). Returns the new object's version, where stores
        have one."""
        ...

    def discard(self, key: str, version: str | None) -> None:
        """Remove what create() just made (*version*: what it returned), which failed its
        check, where the store can tell that object apart from one a rival wrote since."""
        ...

    def stream(self, key: str, out: io.RawIOBase) -> ObjectInfo | None:
        """Write the object's bytes to *out*; its info, or None when the key does not exist."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with *prefix*, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Delete *key*; deleting a key that does not exist is not an error."""
        ...

    def mark(self, key: str, *, create_only: bool = False, note: str = "") -> None:
        """Create or replace the small marker object *key* (its modified time says when)
        holding the time and *note*; *create_only*: KeyTakenError when the key exists."""
        ...

    def pending(self, prefix: str) -> Iterator[Pending]:
        """The unfinished writes to keys under *prefix*, in key order."""
        ...

    def abort(self, pending: Pending) -> None:
        """Remove what the unfinished write *pending* left; gone already is not an error."""
        ...

    def sign(self, key: str, expires_seconds: int) -> str | None:
        """An HTTPS URL a pod can GET without credentials, or None if the store cannot sign."""
        ...

    def identity(self) -> str:
        """Who the credentials are (for `konduktor check`), never the secrets themselves."""
        ...

    def require_root(self) -> None:
        """NotFoundError saying how to create it when the bucket (``file://``: the
        directory) does not exist; never creates it. Where the credentials may not tell,
        it passes: objects may be readable without the right to look up the bucket."""
        ...


Kinds = type[BaseException] | tuple[type[BaseException], ...]


class ErrorTable:
    """SDK exception types -> the konduktor error and message to raise instead; the first
    rule that matches wins (model: httpx's map of httpcore's exceptions to its own).

    A message is a ``str.format`` template over the exception (``exc``) and the fields the
    backend passes; ``{s.name}`` reads an attribute of the backend only when that rule is
    the one used, so a costly detail (where credentials came from) costs nothing otherwise.
    """

    def __init__(self, *rules: tuple[Kinds, type[StorageError], str]) -> None:
        self.rules = rules
        self.kinds = tuple(k for kinds, _, _ in rules for k in _as_tuple(kinds))

    def error(self, exc: BaseException, **fields: object) -> StorageError:
        """The konduktor error for *exc* (an instance of one of ``kinds``)."""
        for kinds, error, template in self.rules:
            if isinstance(exc, kinds):
                return error(template.format(exc=exc, **fields))
        raise exc  # not in the table: not ours to translate


def _as_tuple(kinds: Kinds) -> tuple[type[BaseException], ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def join_key(prefix: str, key: str) -> str:
    """The object name of *key* under the store's *prefix* in its bucket."""
    return f"{prefix}/{key}" if prefix else key


def marker_text(note: str) -> bytes:
    """The content of a marker object: when it was written, then *note* on a line."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return f"{now}\n{note}".encode() if note else now.encode()


class Source:
    """The file a put sends, read once and in order, its sha256 computed on the way.

    A backend sends exactly the bytes it read from here, so :meth:`check` (after the last
    read) proves what the object holds: the file's sha256 may have been computed earlier
    (from a stat-keyed cache), and the file may change while it is read. Not thread-safe:
    one thread reads, in order.
    """

    def __init__(self, path: Path, size: int, sha256: str | None) -> None:
        self.path = path
        self.size = size
        self.sha256 = sha256  # None: a test's foreign writer, nothing to check but the size
        self.offset = 0
        self._hash = hashlib.sha256()
        self._f = path.open("rb")

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def read(self, n: int) -> bytes:
        """The next bytes, at most *n*, never past the size the put started with."""
        data = self._f.read(min(n, self.size - self.offset))
        self._hash.update(data)
        self.offset += len(data)
        return data

    def chunks(self, n: int) -> Iterator[bytes]:
        """The remaining bytes, *n* at a time."""
        while chunk := self.read(n):
            yield chunk

    def check(self) -> None:
        """SourceChangedError unless the file held exactly *size* bytes, of that sha256."""
        grew = self._f.read(1) != b""
        digest = self._hash.hexdigest()
        if self.offset == self.size and not grew and self.sha256 in (None, digest):
            return
        raise SourceChangedError(changed(self.path, self.sha256 or digest))


def changed(path: Path, sha256: str) -> str:
    """The message of a SourceChangedError on *path*, whose content should be *sha256*."""
    return (
        f"{path} changed while it was being uploaded (its sha256 is no longer "
        f"{sha256[:12]}); wait until it stops changing and launch again"
    )


class ReportingReader(io.RawIOBase):
    """A readable file that reports each byte once, as it is first read: a request body is
    progress-tracked while it streams (SDKs read bodies more than once, for checksums and
    retries), and an exception raised by the callback aborts the request."""

    def __init__(self, f: BinaryIO, progress: Progress | None) -> None:
        self._f = f
        self._progress = progress
        self._reported = 0

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
