"""The object store protocol every backend implements, and what it returns.

Keys are '/'-separated paths relative to the store's URL (bucket and prefix).
Objects are immutable: a key is written once ("create-only"), carries its
sha256 and size as metadata, and is verified after the upload. A put that
finds the key already there with the same sha256 succeeds without uploading
(two launches racing on one key both succeed); a different sha256 is a
ConflictError. No partial object is ever visible: a failed or interrupted
upload leaves the key absent.
"""

from __future__ import annotations

import datetime
import io
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from konduktor.errors import ConflictError

Progress = Callable[[int], None]
"""Called with the number of bytes transferred since the previous call."""

SHA256 = "sha256"  # metadata keys every object carries
SIZE = "size"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None  # from the object's metadata; None for objects konduktor did not write
    modified: datetime.datetime  # timezone-aware, UTC
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PutResult:
    key: str
    size: int
    uploaded: bool  # False: the key already held this content


class Store(Protocol):
    """An object store under one URL (``file://``, ``s3://`` or ``gs://``)."""

    url: str  # the canonical URL of the store's root, e.g. s3://bucket/prefix

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and metadata, or None when the key does not exist."""
        ...

    def put(
        self,
        key: str,
        path: Path,
        *,
        sha256: str,
        metadata: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> PutResult:
        """Create *key* from the file *path* (whose sha256 the caller computed), create-only."""
        ...

    def get(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        """Download *key* into *dest* atomically; NotFoundError when it does not exist."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with *prefix*, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Delete *key*; deleting a key that does not exist is not an error."""
        ...

    def mark(self, key: str) -> None:
        """Create or replace the small marker object *key* (its modified time says when)."""
        ...

    def signed_url(self, key: str, expires_seconds: int) -> str | None:
        """An HTTPS URL a pod can GET without credentials, or None if the store cannot sign."""
        ...


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


def already_there(url: str, existing: ObjectInfo, sha256: str) -> PutResult:
    """The result of putting a key that exists: fine with the same content, else a conflict."""
    if existing.sha256 != sha256:
        raise ConflictError(
            f"{url}/{existing.key} already holds other content (sha256 {existing.sha256}, "
            f"not {sha256}); keys are immutable, so the store is inconsistent: delete that object"
        )
    return PutResult(existing.key, existing.size, uploaded=False)
