"""Progress of the long steps on stderr, for the command line (library code only takes the
callbacks these make, and never prints).

On a terminal: a bar (click's). Otherwise (a CI log, ``2>file``): one line at most every
:data:`PERIOD` seconds, e.g. ``konduktor: upload base layer 120.0 MB of 400.0 MB (30%)``.
Transfers under :data:`LARGE` bytes show nothing, and ``--quiet`` silences it all.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

import click

from konduktor import units

LARGE = 4_000_000  # bytes: smaller transfers show no progress
PERIOD = 5.0  # seconds between two lines when stderr is not a terminal
BAR_DELAY = 0.5  # seconds of counted work before its bar shows

Bytes = Callable[[int], None]
"""Called with the bytes done since the last call."""
Factory = Callable[[str, int], Bytes | None]
"""Called with (what, total bytes) before a transfer; a :data:`Bytes` callback, or None."""


class _Meter:
    """Counts towards *total*: a bar on a terminal (once *delay* seconds have passed), else
    a line every PERIOD seconds."""

    def __init__(self, label: str, total: int, *, sized: bool, delay: float = 0.0) -> None:
        self.label, self.total, self.sized = label, total, sized
        self.done = 0
        self._tty = sys.stderr.isatty()
        self._bar: click._termui_impl.ProgressBar[int] | None = None
        self._last = time.monotonic()
        self._bar_at = self._last + delay
        self._closed = False

    def advance(self, n: int) -> None:
        self.done += n
        if self._closed:
            return
        now = time.monotonic()
        if self._tty and self._bar is None and now >= self._bar_at:
            self._bar = click.progressbar(
                length=self.total, label=self.label[-40:], file=sys.stderr
            )
            self._bar.__enter__()
            n = self.done
        if self._bar is not None:
            self._bar.update(n)
        elif not self._tty and now - self._last >= PERIOD and self.done < self.total:
            self._last = now
            click.echo(f"konduktor: {self.line()}", err=True)
        if self.done >= self.total:
            self.close()

    def line(self) -> str:
        """``upload base layer 120.0 MB of 400.0 MB (30%)``; counts: ``3 of 10 files``."""
        share = self.done * 100 // max(self.total, 1)
        if self.sized:
            return f"{self.label} {units.size(self.done)} of {units.size(self.total)} ({share}%)"
        return f"{self.label} {self.done} of {self.total} files ({share}%)"

    def close(self) -> None:
        self._closed = True
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.__exit__(None, None, None)


def transfers(verb: str, *, quiet: bool) -> Factory | None:
    """A factory of byte callbacks for transfers of :data:`LARGE` bytes or more, labelled
    ``<verb> <what>``; None with *quiet*."""
    if quiet:
        return None

    def start(what: str, total: int) -> Bytes | None:
        if total < LARGE:
            return None
        return _Meter(f"{verb} {what}".strip(), total, sized=True).advance

    return start


class Counter:
    """A (done, total) callback for counted work (the files of a snapshot build): each run
    up to its total gets its own bar (after :data:`BAR_DELAY`: quick ones show none) or
    lines."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._meter: _Meter | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._meter is None or self._meter.done >= self._meter.total:
            self._meter = _Meter(self.label, total, sized=False, delay=BAR_DELAY)
        self._meter.advance(done - self._meter.done)

    def close(self) -> None:
        """End a bar left open (a failed build)."""
        if self._meter is not None:
            self._meter.close()


def counts(label: str, *, quiet: bool) -> Counter | None:
    return None if quiet else Counter(label)


@contextlib.contextmanager
def counting(label: str, *, quiet: bool) -> Iterator[Counter | None]:
    """:func:`counts`, any bar ended when the block ends."""
    counter = counts(label, quiet=quiet)
    try:
        yield counter
    finally:
        if counter is not None:
            counter.close()
