"""``file://PATH``: a directory as an object store (the embedded default).

An object is a file at PATH/<key> with its metadata in PATH/<key>.meta.json.
Writes go to a temporary name in the same directory; the object appears with
``os.link`` (which refuses an existing name: the create-only write), so a reader
never sees a partial object, and metadata is in place before the object is.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from konduktor.cache import atomic_write
from konduktor.errors import NotFoundError, PermissionDeniedError, StorageError
from konduktor.storage.base import SHA256, SIZE, ObjectInfo, Progress, PutResult, already_there

_META = ".meta.json"
_CHUNK = 1 << 20


class LocalStore:
    def __init__(self, url: str, options: object = None) -> None:
        from konduktor.storage import parse_url

        _, path, _ = parse_url(url)
        self.root = Path(os.path.expanduser(path))
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or ".." in parts or key.endswith(_META):
            raise StorageError(f"{self.url}: invalid object key {key!r}")
        return self.root / key

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _translate(self.url, exc) from exc
        try:
            metadata: dict[str, str] = json.loads(path.with_name(path.name + _META).read_text())
        except (OSError, ValueError):
            metadata = {}
        modified = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
        return ObjectInfo(key, st.st_size, metadata.get(SHA256), modified, metadata)

    def put(
        self,
        key: str,
        path: Path,
        *,
        sha256: str,
        metadata: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> PutResult:
        target = self._path(key)
        size = path.stat().st_size
        existing = self.stat(key)
        if existing is not None:
            return already_there(self.url, existing, sha256)
        meta = {**(metadata or {}), SHA256: sha256, SIZE: str(size)}
        meta_path = target.with_name(target.name + _META)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(meta_path, json.dumps(meta).encode())
            created = self._create(target, path, progress)
        except BaseException as exc:
            if not target.exists():  # no object: its metadata must not linger either
                meta_path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _translate(self.url, exc) from exc
            raise
        if not created:  # another writer won the race
            found = self.stat(key)
            assert found is not None
            return already_there(self.url, found, sha256)
        return PutResult(key, size, uploaded=True)

    def _create(self, target: Path, source: Path, progress: Progress | None) -> bool:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def get(self, key: str, dest: Path, *, progress: Progress | None = None) -> ObjectInfo:
        info = self.stat(key)
        if info is None:
            raise NotFoundError(f"{self.url}/{key} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, self._path(key).open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            if info.sha256 is not None and digest.hexdigest() != info.sha256:
                raise StorageError(f"{self.url}/{key} is corrupt: its sha256 does not match")
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        found = []
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if rel.startswith(prefix) and not name.endswith(_META) and not name.startswith("."):
                    found.append(rel)
        for key in sorted(found):
            info = self.stat(key)
            if info is not None:
                yield info

    def delete(self, key: str) -> None:
        path = self._path(key)
        for victim in (path, path.with_name(path.name + _META)):
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()

    def mark(self, key: str) -> None:
        try:
            now = datetime.datetime.now(datetime.timezone.utc)
            atomic_write(self._path(key), now.isoformat().encode())
        except OSError as exc:
            raise _translate(self.url, exc) from exc

    def signed_url(self, key: str, expires_seconds: int) -> str | None:
        return None  # the pod copies from the path itself


def _translate(url: str, exc: OSError) -> StorageError:
    if isinstance(exc, PermissionError):
        return PermissionDeniedError(f"{url}: permission denied ({exc.strerror}); fix the mode")
    return StorageError(f"{url}: {exc.strerror or exc}")
