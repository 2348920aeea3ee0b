"""Deterministic layer archives: a POSIX tar stream compressed by zstd, written in one pass.

Headers are written here rather than by :mod:`tarfile` (which costs about 100 µs
a member): ustar headers with mtime 0, uid/gid 0, empty owner names and modes
0644/0755, and a pax extended header only where a name or link target does not
fit ustar (or is not UTF-8, then with ``hdrcharset=BINARY``). Deletions in an
overlay are OCI-style whiteouts: an empty member ``dir/.wh.name``.

zstd runs with worker threads (at least one, so the frame layout does not depend
on the number of cores) and never records the content size, so readers must
stream (``ZstdDecompressor().stream_reader``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import BinaryIO

import zstandard

BLOCK = 512
WHITEOUT_PREFIX = ".wh."
_USTAR_MAX_SIZE = 0o77777777777
_FLUSH_AT = 1 << 20


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


_ZEROS = b"0000000\0"
_TAIL = b"ustar\x0000" + b"\0" * 64 + _ZEROS * 2 + b"\0" * 167  # magic .. padding
_PADDING = [b"\0" * n for n in range(BLOCK)]


def _header(name: bytes, size: int, mode: int, typeflag: bytes, linkname: bytes = b"") -> bytes:
    """A ustar header block: name, mode, uid/gid 0, size, mtime 0, type, link, no owners."""
    head = name.ljust(100, b"\0") + b"%07o\0" % mode + _ZEROS * 2 + b"%011o\0" % size
    head += b"00000000000\0"  # mtime
    tail = typeflag + linkname.ljust(100, b"\0") + _TAIL
    checksum = sum(head) + sum(tail) + 8 * ord(" ")  # the checksum field counts as spaces
    return head + b"%06o\0 " % checksum + tail


def _padding(size: int) -> bytes:
    return _PADDING[-size % BLOCK]


def member_header(path: str, size: int, mode: int, target: str | None = None) -> bytes:
    """Header block(s) for a file (``target`` None) or a symlink member."""
    name = os.fsencode(path)
    link = os.fsencode(target) if target is not None else b""
    records = b""
    if len(name) > 100 or not _utf8(name):
        records += _pax_record("path", name)
    if len(link) > 100 or not _utf8(link):
        records += _pax_record("linkpath", link)
    if size > _USTAR_MAX_SIZE:
        records += _pax_record("size", str(size).encode())
    if records and not (_utf8(name) and _utf8(link)):
        records = _pax_record("hdrcharset", b"BINARY") + records
    pax = b""
    if records:
        pax = _header(b"././@PaxHeader", len(records), 0o644, b"x") + records
        pax += _padding(len(records))
    typeflag = b"0" if target is None else b"2"
    return pax + _header(
        name[:100], 0 if size > _USTAR_MAX_SIZE else size, mode, typeflag, link[:100]
    )


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _HashingSink:
    """A file-like that hashes and counts what is written, and passes it to *out* if any."""

    def __init__(self, out: BinaryIO | None) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)


class LayerWriter:
    """Writes members in the order given into a zstd-compressed tar; hashes the result."""

    def __init__(self, out: BinaryIO | None, level: int) -> None:
        self._sink = _HashingSink(out)
        compressor = zstandard.ZstdCompressor(
            level=level, threads=max(1, os.cpu_count() or 1), write_checksum=True
        )
        self._zstd = compressor.stream_writer(self._sink, closefd=False)  # type: ignore[arg-type]
        self._buffer = bytearray()
        self.tar_bytes = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.tar_bytes += len(data)
        if len(self._buffer) >= _FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        self._zstd.write(self._buffer)
        self._buffer.clear()

    def add_file(self, path: str, mode: int, size: int, chunks: Iterable[bytes]) -> None:
        self.write(member_header(path, size, mode))
        for chunk in chunks:
            if len(chunk) < _FLUSH_AT:
                self.write(chunk)
            else:  # large chunks go to zstd as they are, without a copy into the buffer
                self._flush()
                self._zstd.write(chunk)
                self.tar_bytes += len(chunk)
        self.write(_padding(size))

    def add_symlink(self, path: str, target: str) -> None:
        self.write(member_header(path, 0, 0o777, target))

    def add_whiteout(self, path: str) -> None:
        head, _, name = path.rpartition("/")
        whiteout = f"{head}/{WHITEOUT_PREFIX}{name}" if head else WHITEOUT_PREFIX + name
        self.write(member_header(whiteout, 0, 0o644))

    def finish(self) -> tuple[str, int]:
        """End the tar, flush zstd; return (sha256, compressed size)."""
        self.write(b"\0" * (2 * BLOCK))
        self._flush()
        self._zstd.flush(zstandard.FLUSH_FRAME)
        return self._sink.sha256.hexdigest(), self._sink.size
