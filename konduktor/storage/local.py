"""``file://PATH``: a directory as an object store (the embedded default).

An object is a file at PATH/<key> with its metadata in PATH/<key>.meta.json.
Writes go to a temporary name in the same directory; the object appears with
``os.link`` (which refuses an existing name: the create-only write), so a reader
never sees a partial object, and metadata is in place before the object is.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from konduktor.cache import atomic_file, atomic_write
from konduktor.errors import KeyTakenError, MissingKeyError, PermissionDeniedError, StorageError
from konduktor.storage import base

_META = ".meta.json"
_CHUNK = 1 << 20

_ERRORS = base.ErrorTable(
    (FileNotFoundError, MissingKeyError, "{s.url}: {reason}"),
    (PermissionError, PermissionDeniedError, "{s.url}: permission denied ({reason}); fix the mode"),
    (OSError, StorageError, "{s.url}: {reason}"),
)


class LocalBackend:
    """A directory's files as objects: see :class:`~konduktor.storage.base.Backend`."""

    def __init__(self, url: str, options: base.StoreOptions | None = None) -> None:
        _, path, _ = base.parse_url(url)
        self.root = Path(os.path.expanduser(path))
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or ".." in parts or key.endswith(_META):
            raise StorageError(f"{self.url}: invalid object key {key!r}")
        return self.root / key

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """OSErrors raised in the block become konduktor's, by the table above."""
        try:
            yield
        except OSError as exc:
            raise _ERRORS.error(exc, s=self, reason=exc.strerror or exc) from exc

    def head(self, key: str) -> base.ObjectInfo | None:
        path = self._path(key)
        try:
            with self._errors():
                st = path.stat()
        except MissingKeyError:
            return None
        try:
            metadata: dict[str, str] = json.loads(_meta_path(path).read_text())
        except (OSError, ValueError):
            metadata = {}
        modified = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
        return base.ObjectInfo.from_metadata(key, st.st_size, modified, metadata)

    def create(
        self, key: str, path: Path, size: int, meta: base.Metadata, progress: base.Progress | None
    ) -> str | None:
        target = self._path(key)
        try:
            with self._errors():
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(_meta_path(target), json.dumps(meta).encode())
                with atomic_file(target, place=_link) as out, path.open("rb") as src:
                    os.fchmod(out.fileno(), 0o644)  # not the temporary file's 0600
                    shutil.copyfileobj(base.ReportingReader(src, progress), out, _CHUNK)
        except BaseException:
            if not target.exists():  # no object: its metadata must not linger either
                _meta_path(target).unlink(missing_ok=True)
            raise
        return None  # no versions: the link made the object this writer's own

    def discard(self, key: str, version: str | None) -> None:
        self.delete(key)  # the object is this writer's: keys are never overwritten here

    def stream(self, key: str, out: io.RawIOBase) -> base.ObjectInfo | None:
        info = self.head(key)
        if info is None:
            return None
        with self._errors():
            src = self._path(key).open("rb")
        with src:
            shutil.copyfileobj(src, out, _CHUNK)
        return info

    def list(self, prefix: str) -> Iterator[base.ObjectInfo]:
        found = []
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if rel.startswith(prefix) and not name.endswith(_META) and not name.startswith("."):
                    found.append(rel)
        for key in sorted(found):
            info = self.head(key)
            if info is not None:
                yield info

    def delete(self, key: str) -> None:
        path = self._path(key)
        for victim in (path, _meta_path(path)):
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()

    def mark(self, key: str) -> None:
        with self._errors():
            atomic_write(self._path(key), base.utc_now().encode())

    def sign(self, key: str, expires_seconds: int) -> str | None:
        return None  # the pod copies from the path itself

    def identity(self) -> str:
        return "not applicable"  # files are read as the user running konduktor


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + _META)


def _link(tmp: str, target: Path) -> None:
    """Create-only: os.link refuses a name that exists, where os.replace would replace it."""
    try:
        os.link(tmp, target)
    except FileExistsError as exc:
        raise KeyTakenError(f"file://{target}: another writer created the key first") from exc
