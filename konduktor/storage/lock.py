"""Upload locks: of several puts of one key at once, one sends the bytes, the others wait.

The lock is a marker object, created create-only, holding who took it and when. Its
holder rewrites it every HEARTBEAT_SECONDS while it uploads, and deletes it when done,
whether the upload succeeded or failed. A waiter polls the key and the marker: the key
appearing ends its wait (nothing to upload), the marker vanishing lets it try to take the
lock, and a marker whose modified time has not changed for STALE_HEARTBEATS heartbeats
belongs to a dead holder: the waiter deletes it and tries to take the lock, create-only,
so one waiter wins. Modified times are compared only with each other, as the store
reports them, so clocks need not agree; a wait lasts as long as the holder makes progress.

The lock saves bandwidth only: create-only writes still decide which object stands, so
two writers that both believe they hold the lock (a takeover racing a late heartbeat)
cost an upload, never a wrong object.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

from konduktor.errors import KeyTakenError, StorageError
from konduktor.storage.base import Backend

log = logging.getLogger(__name__)

MIN_BYTES = 4 << 20  # smaller objects go without: racing launches then send a few MiB
# more each, which costs less than the lock's own requests (create, delete, a listing)
HEARTBEAT_SECONDS = 5.0  # the holder rewrites its marker this often (GCS: 1 write/s at most)
STALE_HEARTBEATS = 3  # heartbeats missed before a holder counts as dead
POLL_SECONDS = 1.0  # a waiter looks at the key and the marker this often


class UploadLock:
    """The lock whose marker is the key *marker* of *backend*."""

    def __init__(self, backend: Backend, marker: str) -> None:
        self._backend = backend
        self.marker = marker
        self._holder = f"held by {socket.gethostname()} pid {os.getpid()}"

    def acquire(self) -> bool:
        """Take the lock if nobody holds it (create-only); False when someone does."""
        try:
            self._backend.mark(self.marker, create_only=True, note=self._holder)
        except KeyTakenError:
            return False
        return True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Keep the acquired lock alive during the block; release it after, in every case."""
        stop = threading.Event()
        beat = threading.Thread(
            target=self._beat, args=(stop,), name=f"lock {self.marker}", daemon=True
        )
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            with contextlib.suppress(StorageError):  # a dead marker only delays waiters
                self._backend.delete(self.marker)

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                self._backend.mark(self.marker, note=self._holder)
            except StorageError as exc:  # waiters may take over: they upload once more
                log.debug("cannot refresh upload lock %s: %s", self.marker, exc)

    def wait(self, until: Callable[[], bool]) -> None:
        """Return once *until* holds, the marker is gone, or its holder is dead (then the
        marker is deleted): in the last two cases the caller may take the lock."""
        seen: datetime.datetime | None = None
        since = time.monotonic()
        while not until():
            info = self._backend.head(self.marker)
            if info is None:
                return
            if info.modified != seen:
                seen, since = info.modified, time.monotonic()
            elif time.monotonic() - since >= HEARTBEAT_SECONDS * STALE_HEARTBEATS:
                log.warning(
                    "upload lock %s was not refreshed for %.0f s: its holder is gone; taking over",
                    self.marker,
                    time.monotonic() - since,
                )
                self._backend.delete(self.marker)
                return
            time.sleep(POLL_SECONDS)
