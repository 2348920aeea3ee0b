"""Local caches under ``~/.konduktor`` (``KONDUKTOR_HOME`` overrides).

The hash cache remembers the sha256 of files read from disk, keyed by their
stat fingerprint, so that a file that did not change is never hashed twice.
A file modified within the last two seconds is not cached: its mtime may not
yet tell a later edit apart (git's "racy" case).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

_RACY_SECONDS = 2


def konduktor_home() -> Path:
    return Path(os.environ.get("KONDUKTOR_HOME") or Path.home() / ".konduktor")


@contextlib.contextmanager
def atomic_file(dest: Path, place: Callable[[str, Path], None] = os.replace) -> Iterator[BinaryIO]:
    """A temporary file beside *dest* that *place* makes into *dest* once the block has
    succeeded (os.replace by default; os.link for a create-only write). It is removed in
    every case, so neither a partial *dest* nor the temporary is ever left behind."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        place(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(path: Path, data: bytes) -> None:
    """Write *path* through a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write(data)


def fingerprint(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def root_digest(root: Path) -> str:
    """A file name for per-directory cache entries."""
    return hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:24]


class HashCache:
    """sha256 of files under one root, remembered by stat fingerprint."""

    def __init__(self, root: Path) -> None:
        self.path = konduktor_home() / "cache" / "hashes" / f"{root_digest(root)}.json"
        self._entries: dict[str, list[object]] = {}
        self._dirty = False
        try:
            self._entries = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.debug("ignoring unreadable hash cache %s: %s", self.path, exc)

    def get(self, rel: str, st: os.stat_result) -> str | None:
        found = self._entries.get(rel)
        if found is not None and found[:4] == fingerprint(st):
            return str(found[4])
        return None

    def put(self, rel: str, st: os.stat_result, sha256: str) -> None:
        if st.st_mtime >= time.time() - _RACY_SECONDS:
            return
        self._entries[rel] = [*fingerprint(st), sha256]
        self._dirty = True

    def save(self, keep: set[str] | None = None) -> None:
        """Persist the cache, dropping entries for paths not in *keep* when given."""
        if keep is not None and not keep.issuperset(self._entries):
            self._entries = {k: v for k, v in self._entries.items() if k in keep}
            self._dirty = True
        if not self._dirty:
            return
        try:
            atomic_write(self.path, json.dumps(self._entries, separators=(",", ":")).encode())
        except OSError as exc:  # a cache that cannot be written only costs time
            log.debug("cannot write hash cache %s: %s", self.path, exc)


Built = tuple[str, int, int, int]
"""A layer as this machine built it: sha256 and size of the compressed bytes, tar members
and the tar's uncompressed size."""


class Vouched:
    """What every layer this machine built is (:data:`Built`), by layer name.

    These are the only digests a launch hands a pod (DESIGN §4's trust rule): a
    digest read back from store metadata could have been written by anyone who can
    write the bucket. A lost entry (two launches saving at once) only costs one
    rebuild to verify that layer again.
    """

    def __init__(self) -> None:
        self.path = konduktor_home() / "cache" / "vouched.json"
        self._entries: dict[str, list[object]] = self._read()
        self._added: dict[str, list[object]] = {}

    def _read(self) -> dict[str, list[object]]:
        try:
            entries: dict[str, list[object]] = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.debug("ignoring unreadable cache %s: %s", self.path, exc)
            return {}
        return entries if isinstance(entries, dict) else {}

    def get(self, name: str) -> Built | None:
        found = self._entries.get(name)
        if not isinstance(found, list) or len(found) != 4:
            return None
        sha256, size, members, tar_bytes = found
        if not isinstance(sha256, str):
            return None
        if isinstance(size, int) and isinstance(members, int) and isinstance(tar_bytes, int):
            return sha256, size, members, tar_bytes
        return None

    def put(self, name: str, built: Built) -> None:
        self._entries[name] = self._added[name] = list(built)

    def save(self) -> None:
        """Add this run's entries to what is on disk now (another launch may have saved)."""
        if not self._added:
            return
        entries = {**self._read(), **self._added}
        try:
            atomic_write(self.path, json.dumps(entries, separators=(",", ":")).encode())
        except OSError as exc:  # a cache that cannot be written only costs time
            log.debug("cannot write %s: %s", self.path, exc)
        self._added.clear()
