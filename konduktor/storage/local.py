"""``file://PATH``: a directory as an object store (the embedded default).

An object is a file at PATH/<key> with its metadata in PATH/<key>.meta.json.
Writes go to a temporary name in the same directory (hidden: ``.<name>.<random>``),
hashed on the way; the object appears with ``os.link`` (which refuses an existing
name: the create-only write) once its bytes matched their sha256, so a reader never
sees a partial object, and metadata is in place (written just before) when it appears.

The store is private, since file mounts (an SSH key) land in it: directories are 0700,
the root included (a group- or world-accessible root of this user's is tightened on
the first write), objects and metadata 0600. The pod copies from it as the same user.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import io
import json
import logging
import os
import posixpath
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from konduktor import layout
from konduktor.cache import atomic_file, atomic_write
from konduktor.errors import (
    KeyTakenError,
    MissingKeyError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
)
from konduktor.storage import base

log = logging.getLogger(__name__)

_META = ".meta.json"
_CHUNK = 1 << 20
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}$")  # cache.atomic_file's names

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
        self._private = False  # the root is known to be 0700

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
                self._make_dirs(target.parent)
                with (
                    base.Source(path, size, meta.get(base.SHA256)) as source,
                    atomic_file(target, place=_link) as out,
                ):
                    _copy(source, out, progress)
                    source.check()  # before the link: changed bytes never show
                    atomic_write(_meta_path(target), json.dumps(meta).encode())
        except BaseException:
            if not target.exists():  # no object: its metadata must not linger either
                _meta_path(target).unlink(missing_ok=True)
            raise
        return None  # no versions: the link made the object this writer's own

    def _make_dirs(self, directory: Path) -> None:
        """Create *directory* and its missing parents 0700; tighten an open root once."""
        if not self._private:
            self._tighten_root()
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):  # a rival writer made it
                d.mkdir(mode=0o700)

    def _tighten_root(self) -> None:
        """Make this user's existing root 0700: objects may be private files (SSH keys).
        A sticky directory (``/tmp``) is shared on purpose and stays as it is: then the
        store's own top directory, under it, is what is made private."""
        target = self.root
        try:
            if self.root.stat().st_mode & stat.S_ISVTX:
                target = self.root / layout.VERSION
            st = target.stat()
        except FileNotFoundError:
            return  # _make_dirs creates it 0700
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
            log.warning(
                "%s was readable by other users; made it 0700 (objects may be private files)",
                target,
            )
            target.chmod(0o700)
        self._private = True

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

    def mark(self, key: str, *, create_only: bool = False, note: str = "") -> None:
        target = self._path(key)
        with self._errors():
            self._make_dirs(target.parent)
            with atomic_file(target, place=_link if create_only else os.replace) as out:
                out.write(base.marker_text(note))

    def pending(self, prefix: str) -> Iterator[base.Pending]:
        """Temporary files left by interrupted writes, and metadata without its object."""
        found = []
        top = self.root / posixpath.dirname(prefix)  # keys under prefix live only below it
        for dirpath, _, filenames in os.walk(top):
            for name in filenames:
                pending = self._pending(Path(dirpath) / name)
                if pending is not None and pending.key.startswith(prefix):
                    found.append(pending)
        yield from sorted(found, key=lambda p: (p.key, p.ref))

    def _pending(self, path: Path) -> base.Pending | None:
        """The unfinished write *path* is a trace of, if it is one."""
        temporary = _TEMPORARY.match(path.name)
        if temporary is not None:
            name, what = temporary["name"].removesuffix(_META), "partial file"
        elif path.name.endswith(_META) and not _object_of(path).exists():
            name, what = path.name.removesuffix(_META), "orphan metadata"
        else:
            return None
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:  # finished or removed meanwhile
            return None
        rel = path.relative_to(self.root).as_posix()
        key = posixpath.join(posixpath.dirname(rel), name)
        started = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc)
        return base.Pending(key, started, what, ref=rel)

    def abort(self, pending: base.Pending) -> None:
        path = self.root / pending.ref
        if pending.what == "orphan metadata" and _object_of(path).exists():
            return  # its write finished since it was listed
        with self._errors():
            path.unlink(missing_ok=True)

    def sign(self, key: str, expires_seconds: int) -> str | None:
        return None  # the pod copies from the path itself

    def identity(self) -> str:
        try:
            user = getpass.getuser()
        except (OSError, KeyError):  # no login name in the environment nor in passwd
            user = "?"
        return f"user {user} (uid {os.getuid()}): the local pod copies files as this user"

    def require_root(self) -> None:
        if self.root.is_dir():
            return
        if self.root.exists():
            raise StorageError(
                f"{self.url}: {self.root} is not a directory; give a directory to --store "
                "(or jobs.bucket in ~/.konduktor/config.yaml)"
            )
        raise NotFoundError(
            f"{self.url}: the directory {self.root} does not exist; create it "
            f"(mkdir -m 700 {self.root}), or give another --store (or jobs.bucket in "
            "~/.konduktor/config.yaml); the first upload also creates it"
        )


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + _META)


def _object_of(meta: Path) -> Path:
    return meta.with_name(meta.name.removesuffix(_META))


def _copy(source: base.Source, out: BinaryIO, progress: base.Progress | None) -> None:
    for chunk in source.chunks(_CHUNK):
        out.write(chunk)
        if progress is not None:
            progress(len(chunk))


def _link(tmp: str, target: Path) -> None:
    """Create-only: os.link refuses a name that exists, where os.replace would replace it."""
    try:
        os.link(tmp, target)
    except FileExistsError as exc:
        raise KeyTakenError(f"file://{target}: another writer created the key first") from exc
