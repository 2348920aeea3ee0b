"""Scratch directories that outlive no one: each is named after the process that owns it,
so the next run finds and removes those whose owner died without cleaning up (SIGKILL,
a power cut). A clean exit, an error, Ctrl-C, SIGTERM and SIGHUP remove their own.

They live in ``$TMPDIR/konduktor-<uid>/`` (0700): layers are built there before they
are uploaded, and can be as large as ``sync.hard_limit_mb``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from konduktor.errors import SetupError

log = logging.getLogger(__name__)

MIN_FREE = 1 << 20  # a full TMPDIR has none; a layer of a few small files fits in it
_OWNED = re.compile(r"^[a-z]+-(\d+)-")  # <purpose>-<pid>-<random>


def check() -> None:
    """Layers are built in TMPDIR before they are uploaded: refuse a TMPDIR that is missing,
    unwritable or full now, rather than fail halfway through the upload."""
    named = os.environ.get("TMPDIR")
    where = named or tempfile.gettempdir()
    label = f"TMPDIR {where}" if named else f"the temporary directory {where}"
    fix = "point TMPDIR at a writable directory with free space"
    if not os.path.isdir(where) or not os.access(where, os.W_OK | os.X_OK):
        raise SetupError(f"{label} is not a writable directory; {fix}")
    try:
        free = os.statvfs(where)
    except OSError as exc:
        raise SetupError(f"{label} is unusable: {exc.strerror}; {fix}") from exc
    if free.f_bavail * free.f_frsize < MIN_FREE:
        raise SetupError(f"{label} has no space left; free some, or {fix}")


@contextlib.contextmanager
def directory(purpose: str) -> Iterator[Path]:
    """A fresh private directory for *purpose* (lowercase letters), removed on leaving."""
    root = _root()
    sweep(root)
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{purpose}-{os.getpid()}-", dir=root))
    except OSError as exc:
        raise _unusable(root, exc) from exc
    try:
        yield path
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _unusable(root, exc) from exc
        raise
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep(root: Path) -> list[Path]:
    """Remove the scratch directories in *root* whose owner process is gone; return them."""
    removed = []
    for entry in _entries(root):
        match = _OWNED.match(entry.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
            log.debug("removed %s, left by a process that is gone", entry)
    return removed


def _root() -> Path:
    root = Path(tempfile.gettempdir()) / f"konduktor-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        if root.is_symlink() or root.stat().st_uid != os.getuid():
            raise SetupError(
                f"{root} belongs to another user or is a symlink; remove it, or set TMPDIR "
                "to a directory of your own"
            )
    except OSError as exc:
        raise _unusable(root, exc) from exc
    return root


def _entries(root: Path) -> list[Path]:
    try:
        return list(root.iterdir())
    except OSError:
        return []


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _unusable(root: Path, exc: OSError) -> SetupError:
    reason = exc.strerror or str(exc)
    return SetupError(
        f"cannot use the scratch directory {root} ({reason}); free space there, or set "
        "TMPDIR to a directory with room for the layers being built"
    )
