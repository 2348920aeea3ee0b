"""The one store: put/get semantics written once, over any backend's SDK calls.

Keys are '/'-separated paths relative to the store's URL (bucket and prefix).
Objects are immutable: a key is written once ("create-only"), carries its
sha256 and size as metadata, and is verified after the upload. A put that
finds the key already there with the same sha256 succeeds without uploading
(two launches racing on one key both succeed); a different sha256 is a
ConflictError. The sha256 is checked against the bytes as they are sent (a
file that changed since the caller hashed it, or while it is read, is a
SourceChangedError and the key stays free). No partial object is ever visible:
a failed or interrupted upload leaves the key absent, and what it left behind
is listed by :meth:`Store.pending` and removed by :meth:`Store.sweep`. With a
*lock*, concurrent puts of one key send its bytes once (:mod:`.lock`). A
download lands under its name only once its bytes matched the object's sha256.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import hashlib
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from konduktor.cache import atomic_file
from konduktor.errors import (
    ConflictError,
    KeyTakenError,
    NotFoundError,
    StorageError,
    TransientError,
)
from konduktor.storage import lock as locks
from konduktor.storage.base import (
    SHA256,
    SIZE,
    Backend,
    ObjectInfo,
    Pending,
    Progress,
    PutResult,
)

RACE_ATTEMPTS = 3  # rounds of look + create-only write when other writers keep colliding


class Store:
    """An object store under one URL (``file://``, ``s3://`` or ``gs://``).

    Threads may share a store when its backend allows (all three do).
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.url = backend.url  # the canonical URL of the store's root, e.g. s3://bucket/prefix

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and metadata, or None when the key does not exist."""
        return self._backend.head(key)

    def put(
        self,
        key: str,
        path: Path,
        *,
        sha256: str,
        metadata: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        lock: str | None = None,
    ) -> PutResult:
        """Create *key* from the file *path*, create-only, if its bytes have this *sha256*.

        *lock* names a marker key (``layout.Name.lock``): while this put uploads, other
        puts of *key* with the same *lock* wait for it instead of sending the bytes too
        (for files of ``lock.MIN_BYTES`` or more; smaller ones go without).
        """
        size = path.stat().st_size
        meta = {**(metadata or {}), SHA256: sha256, SIZE: str(size)}
        if lock is None or size < locks.MIN_BYTES:
            return self._put(key, path, size, meta, progress)
        upload_lock = locks.UploadLock(self._backend, lock)
        return self._put_locked(upload_lock, key, path, size, meta, progress)

    def _put_locked(
        self,
        lock: locks.UploadLock,
        key: str,
        path: Path,
        size: int,
        meta: dict[str, str],
        progress: Progress | None,
    ) -> PutResult:
        """Put while holding *lock*, or wait for its holder: each round ends in a result,
        or in a wait that ends when the holder does (or is found dead)."""
        while True:
            existing = self._backend.head(key)
            if existing is not None:
                return self._already_there(existing, meta[SHA256])
            if lock.acquire():
                with lock.held():
                    try:
                        return self._put(key, path, size, meta, progress)  # looks again first
                    finally:
                        self._abort_orphans(key)
            lock.wait(until=lambda: self._backend.head(key) is not None)

    def _abort_orphans(self, key: str) -> None:
        """Abort what is still pending of *key*: under its lock nobody else uploads it, so
        that was left by a holder that died (SIGKILL) or a create whose answer was lost."""
        with contextlib.suppress(StorageError):  # the sweep of `store gc` is the backstop
            for pending in list(self._backend.pending(key)):
                if pending.key == key:
                    self._backend.abort(pending)

    def _put(
        self, key: str, path: Path, size: int, meta: dict[str, str], progress: Progress | None
    ) -> PutResult:
        """Look, then create-only; a lost race looks again, RACE_ATTEMPTS times at most."""
        sha256 = meta[SHA256]
        for _ in range(RACE_ATTEMPTS):
            existing = self._backend.head(key)
            if existing is not None:
                return self._already_there(existing, sha256)
            try:
                version = self._backend.create(key, path, size, meta, progress)
            except KeyTakenError:
                continue  # another writer won (412) or was writing (409): look at its object
            self._verify(key, version, size, sha256)
            return PutResult(key, size, uploaded=True)
        raise TransientError(
            f"{self.url}/{key}: other writers kept colliding with this upload; try again"
        )

    def _already_there(self, existing: ObjectInfo, sha256: str) -> PutResult:
        """The result of putting a key that exists: fine with the same content, else a conflict."""
        if existing.sha256 != sha256:
            raise ConflictError(
                f"{self.url}/{existing.key} already holds other content (sha256 "
                f"{existing.sha256}, not {sha256}); keys are immutable, so the store is "
                "inconsistent: delete that object"
            )
        return PutResult(existing.key, existing.size, uploaded=False)

    def _verify(self, key: str, version: str | None, size: int, sha256: str) -> None:
        """Check what readers now see; remove this upload's object if it is not that."""
        info = self._backend.head(key)
        if info is not None and (info.size, info.sha256) == (size, sha256):
            return
        if info is not None:  # e.g. the file changed while it was read
            with contextlib.suppress(StorageError):  # the error below matters more
                self._backend.discard(key, version)
        raise StorageError(
            f"{self.url}/{key} did not land intact (size or sha256 differ); upload again"
        )

    def get(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        """Download *key* into *dest* atomically; NotFoundError when it does not exist."""
        with atomic_file(dest) as out:
            sink = _HashingWriter(out, progress)
            info = self._backend.stream(key, sink)
            if info is None:
                raise NotFoundError(f"{self.url}/{key} does not exist")
            if info.sha256 is not None and sink.sha256.hexdigest() != info.sha256:
                raise StorageError(f"{self.url}/{key} arrived corrupt (sha256 differs); retry")
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with *prefix*, in key order."""
        return self._backend.list(prefix)

    def delete(self, key: str) -> None:
        """Delete *key*; deleting a key that does not exist is not an error."""
        self._backend.delete(key)

    def mark(self, key: str) -> None:
        """Create or replace the small marker object *key* (its modified time says when)."""
        self._backend.mark(key)

    def pending(self, prefix: str = "") -> Iterator[Pending]:
        """Unfinished writes under *prefix* (interrupted uploads), in key order."""
        return self._backend.pending(prefix)

    def sweep(
        self, older_than: datetime.timedelta, prefix: str = "", *, dry_run: bool = False
    ) -> builtins.list[Pending]:
        """Abort the unfinished writes under *prefix* started more than *older_than* ago
        (*dry_run*: only list them); the younger ones may be writes in progress. Returns
        those aborted."""
        cutoff = datetime.datetime.now(datetime.timezone.utc) - older_than
        swept = [p for p in self._backend.pending(prefix) if p.started < cutoff]
        for pending in [] if dry_run else swept:
            self._backend.abort(pending)
        return swept

    def signed_url(self, key: str, expires_seconds: int) -> str | None:
        """An HTTPS URL a pod can GET without credentials, or None if the store cannot sign."""
        return self._backend.sign(key, expires_seconds)

    def identity(self) -> str:
        """Who the credentials are (for `konduktor check`), never the secrets themselves."""
        return self._backend.identity()

    def require_root(self) -> None:
        """NotFoundError, saying how to create it, when the bucket (``file://``: the
        directory) does not exist; never creates it (for `konduktor check`)."""
        self._backend.require_root()


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
