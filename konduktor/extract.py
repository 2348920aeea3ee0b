"""Verify layer files and extract them, in order, into one directory.

A layer is a zstd stream holding a POSIX tar of regular files and symlinks
(directories are accepted too). Later layers are overlays: a regular file named
``<dir>/.wh.<name>`` is an OCI-style whiteout that deletes ``<dir>/<name>`` left
by earlier layers.

Layers may come from a shared bucket, so they are treated as hostile:

* every expected sha256 is checked before anything is written;
* the result is built in a private staging directory next to ``dest`` and only
  swapped into place when every layer applied cleanly, so a failure (or Ctrl-C)
  leaves ``dest`` as it was;
* a member may not leave the staging directory: absolute names, ``..``
  components and NUL bytes are refused, and nothing is ever written or deleted
  through a symlink, not even one that points back inside the tree;
* only regular files (type ``0``, or the old ``NUL`` type), symlinks and
  directories are extracted; hard links, devices, FIFOs, contiguous and sparse
  files are refused;
* setuid, setgid and sticky bits are refused; other modes become 0o755 (any
  exec bit) or 0o644 for files and 0o755 for directories; owners and mtimes
  are not restored.

Empty and ``.`` components inside a name (``./a//b``) are dropped: they name
the same path, and ``tar -C dir .`` writes names like that. A name made only of
such components (``.``, ``""``, ``./``) is refused, since it would name the root.

Paths are checked with ``lstat`` component by component rather than through
directory file descriptors: the staging directory is mode 0o700 until the swap,
so no other user can swap a component for a link between check and use.
POSIX only (``O_NOFOLLOW``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

import zstandard

from konduktor import layout
from konduktor.errors import ExtractError, RefusedMemberError, UsageError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_WHITEOUT = ".wh."
# A tar ends with two zero blocks; tarfile stops quietly without them.
_END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
_Kind = Literal["file", "symlink", "dir"]
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_REFUSED_TYPES = {
    tarfile.LNKTYPE: "hard links",
    tarfile.CHRTYPE: "character devices",
    tarfile.BLKTYPE: "block devices",
    tarfile.FIFOTYPE: "FIFOs",
    tarfile.CONTTYPE: "contiguous files",
    tarfile.GNUTYPE_SPARSE: "GNU sparse files",
}


@dataclass(frozen=True)
class LayerRef:
    """A layer file and the sha256 (hex) its compressed bytes must have, if known.

    ``kind``, ``key`` and ``base`` come from the layer's manifest (``base``: the key of
    an overlay's base layer); without a manifest they are None and the layer's place
    in the order is not checked.
    """

    path: Path
    sha256: str | None
    kind: str | None = None
    key: str | None = None
    base: str | None = None

    @classmethod
    def beside_manifest(cls, path: Path) -> LayerRef:
        """The layer at *path*, with the sha256 from the manifest ``<name>.json`` beside it
        (as ``konduktor snapshot --out`` writes them); without a manifest, unverified."""
        if not path.is_file():
            raise UsageError(f"layer {path} does not exist")
        manifest = path.with_name(path.name.removesuffix(".tar.zst") + ".json")
        try:
            data = json.loads(manifest.read_text())
            digest = data["sha256"]
        except FileNotFoundError:
            log.warning("no manifest %s beside the layer: its sha256 is not verified", manifest)
            return cls(path, None)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"cannot read the manifest {manifest}: {exc}") from exc
        kind, key, base = (data.get(name) for name in ("kind", "key", "base"))
        return cls(path, str(digest), *(None if v is None else str(v) for v in (kind, key, base)))


def check_order(layers: Sequence[LayerRef], dest: Path) -> None:
    """Refuse layers that do not make one snapshot in the order given (a :class:`UsageError`
    saying what to give instead): a base or full layer is a whole tree and comes first; an
    overlay comes right after the base its manifest names. Extracted the other way round,
    the base would silently undo the overlay's changes."""
    for i, layer in enumerate(layers):
        if layer.kind in ("base", "full") and i > 0:
            raise UsageError(
                f"{layer.path} is a {layer.kind} layer (a whole tree) and must come first; "
                "give one snapshot's layers: its base, then its overlay"
            )
        if layer.kind == "overlay" and layer.base is not None:
            _check_base(layers, i, dest)


def _check_base(layers: Sequence[LayerRef], i: int, dest: Path) -> None:
    overlay = layers[i]
    assert overlay.base is not None
    before = layers[i - 1] if i > 0 else None
    if before is not None and before.key in (None, overlay.base):
        if before.key is None:  # no manifest: unverified, as its sha256 is
            log.warning("cannot check that %s is the base of %s", before.path, overlay.path)
        return
    given = [layer.path for layer in layers if layer.key == overlay.base]
    if given:
        raise UsageError(
            f"layers in the wrong order: {given[0].name} is the base of {overlay.path.name} and "
            f"comes right before it: konduktor extract {given[0]} {overlay.path} {dest}"
        )
    base = overlay.path.with_name(layout.Name(overlay.base).out_name("base") + ".tar.zst")
    raise UsageError(
        f"{overlay.path.name} is an overlay and needs its base layer {base.name} right before "
        f"it: konduktor extract {base} {overlay.path} {dest}"
    )


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`extract` left in ``dest``.

    ``files`` and ``symlinks`` count the final tree; ``deleted`` counts the
    paths that whiteouts removed (a directory tree counts once).
    """

    files: int
    symlinks: int
    deleted: int


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks; raise OSError if unreadable."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def extract(
    layers: Sequence[LayerRef], dest: Path, *, progress: Callable[[int], None] | None = None
) -> ExtractResult:
    """Verify ``layers``, apply them in order, and replace ``dest`` with the result;
    *progress* is called with the count of each layer's compressed bytes as they are read.

    Raises :class:`UsageError` when the layers are not in an order that makes one
    snapshot (:func:`check_order`), and :class:`ExtractError` when a layer is
    unreadable, has the wrong sha256, is truncated or corrupt, or holds a member that
    may not be extracted; ``dest`` is then left untouched and no staging directory
    remains.
    """
    check_order(layers, dest)
    _check_dest(dest)
    for layer in layers:
        _verify(layer)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.konduktor-", dir=dest.parent))
    try:
        deleted = sum(_apply_layer(layer.path, staging, progress) for layer in layers)
        files, symlinks = _count_tree(staging)
        # mkdtemp made it 0o700, which kept other users out while it was built.
        os.chmod(staging, 0o755)
        _swap(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.debug("extracted %d layers into %s", len(layers), dest)
    return ExtractResult(files=files, symlinks=symlinks, deleted=deleted)


def _check_dest(dest: Path) -> None:
    # dest is moved aside and deleted on success: "." would take the working directory.
    if dest.name in ("", ".", ".."):
        raise ExtractError(f"destination {dest} must end in a directory name; name a new directory")
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ExtractError(
            f"destination {dest} exists and is not a directory; remove it or choose another path"
        )


def _verify(layer: LayerRef) -> None:
    if layer.sha256 is None:
        return
    try:
        actual = sha256_file(layer.path)
    except OSError as exc:
        raise ExtractError(
            f"cannot read layer {layer.path}: {exc.strerror}; check that it was downloaded"
        ) from exc
    if actual != layer.sha256.lower():
        raise ExtractError(
            f"layer {layer.path} has sha256 {actual}, expected {layer.sha256}: "
            "the layer is corrupt or was tampered with; rebuild it"
        )


def _swap(staging: Path, dest: Path) -> None:
    """Put staging at dest; an old dest is parked in a trash dir and deleted last."""
    if not os.path.lexists(dest):
        os.replace(staging, dest)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.konduktor-trash-", dir=dest.parent))
    old = trash / "old"
    os.replace(dest, old)
    try:
        os.replace(staging, dest)
    except BaseException:
        os.replace(old, dest)
        os.rmdir(trash)
        raise
    try:
        shutil.rmtree(trash)
    except OSError as exc:
        # The new tree is in place; a leftover old copy only costs disk space.
        log.warning("could not remove the old %s at %s (%s); delete it by hand", dest, trash, exc)


def _count_tree(root: Path) -> tuple[int, int]:
    """Count regular files and symlinks under root (iteratively: trees may be deep)."""
    files = symlinks = 0
    pending = [str(root)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    symlinks += 1
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    files += 1
    return files, symlinks


def _apply_layer(layer: Path, root: Path, progress: Callable[[int], None] | None = None) -> int:
    """Apply one layer on top of root; return how many paths its whiteouts deleted."""
    try:
        with layer.open("rb") as raw:
            source = raw if progress is None else cast(BinaryIO, _Reporting(raw, progress))
            # Frames carry no content size, so decompress as a stream, frame after frame.
            reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
            with _open_tar(reader) as tar:
                deleted = _apply_members(tar, layer, root)
                end = tar.offset
            _check_complete(reader, end, layer)
    except (tarfile.TarError, zstandard.ZstdError) as exc:
        raise ExtractError(f"layer {layer} is truncated or corrupt ({exc}); rebuild it") from exc
    except OSError as exc:
        raise ExtractError(f"cannot read layer {layer}: {exc}") from exc
    return deleted


class _Reporting:
    """A file read once, forwards, that reports how many bytes each read returned."""

    def __init__(self, raw: BinaryIO, progress: Callable[[int], None]) -> None:
        self._raw, self._progress = raw, progress

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._progress(len(data))
        return data


def _check_complete(reader: BinaryIO, end: int, layer: Path) -> None:
    """Refuse a layer whose tar lacks its end-of-archive marker.

    zstandard's stream reader returns what a cut frame holds without complaint
    (a frame checksum is never reached), and tarfile stops quietly when data ends
    on a member boundary: only the missing end marker tells that members were lost.
    Reading to the end also decodes any frames after the tar, so corruption there
    is reported too.
    """
    while reader.read(_CHUNK):
        pass
    if reader.tell() < end + _END_OF_ARCHIVE:
        raise ExtractError(
            f"layer {layer} is truncated: its tar ends without the end-of-archive marker; "
            "rebuild it"
        )


def _apply_members(tar: tarfile.TarFile, layer: Path, root: Path) -> int:
    """Apply every member in archive order; return how many paths whiteouts deleted."""
    deleted = 0
    content_seen = False
    for member in _members(tar):
        with _blame(layer, member):
            parts = _split(member.name)
            kind = _kind(member)
            if not parts[-1].startswith(_WHITEOUT):
                content_seen = True
                _apply_entry(tar, member, kind, parts, root)
                continue
            # A whiteout after content could delete this layer's own files.
            if content_seen:
                raise RefusedMemberError("whiteouts must come before every other member of a layer")
            deleted += _apply_whiteout(member, kind, parts, root)
    return deleted


def _open_tar(reader: BinaryIO) -> tarfile.TarFile:
    # Stream mode: the data is only ever read forwards, once.
    with _header_errors():
        return tarfile.open(fileobj=reader, mode="r|")


@contextlib.contextmanager
def _header_errors() -> Iterator[None]:
    """Report a malformed header as a TarError, whatever tarfile raised."""
    try:
        yield
    except ValueError as exc:
        # Some malformed headers (GNU sparse maps) escape tarfile as a bare ValueError.
        raise tarfile.ReadError(f"malformed header: {exc}") from exc


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Yield the members of a stream-mode tar (tarfile.open read the first one)."""
    while True:
        with _header_errors():
            member = tar.next()
        if member is None:
            return
        yield member


@contextlib.contextmanager
def _blame(layer: Path, member: tarfile.TarInfo) -> Iterator[None]:
    """Turn a refusal or a write error into an ExtractError naming layer and member."""
    try:
        yield
    except RefusedMemberError as exc:
        raise ExtractError(
            f"refusing member {member.name!r} of layer {layer}: {exc}; "
            "the layer is corrupt or hostile, rebuild it from a trusted source"
        ) from None
    except OSError as exc:
        raise ExtractError(
            f"cannot extract member {member.name!r} of layer {layer}: {exc}"
        ) from exc


def _split(name: str) -> list[str]:
    """Return the components of a member name, refusing any that could leave the root."""
    if "\0" in name:
        raise RefusedMemberError("the name contains a NUL byte")
    if name.startswith("/"):
        raise RefusedMemberError("the name is absolute")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise RefusedMemberError("the name has a '..' component")
    if not parts:
        raise RefusedMemberError("the name is empty or names the root")
    return parts


def _kind(member: tarfile.TarInfo) -> _Kind:
    # tarfile.isreg() also accepts contiguous and sparse files: test the type itself.
    if member.sparse is not None:
        raise RefusedMemberError("GNU sparse files are not allowed")
    if member.mode & 0o7000 and member.type != tarfile.SYMTYPE:
        # refused, as the pod refuses them: busybox tar would create them before any check
        raise RefusedMemberError("setuid, setgid and sticky bits are not allowed")
    if member.type in _REGULAR_TYPES:
        return "file"
    if member.type == tarfile.SYMTYPE:
        return "symlink"
    if member.type == tarfile.DIRTYPE:
        return "dir"
    what = _REFUSED_TYPES.get(member.type, f"members of type {member.type!r}")
    raise RefusedMemberError(f"{what} are not allowed")


def _apply_entry(
    tar: tarfile.TarFile, member: tarfile.TarInfo, kind: _Kind, parts: list[str], root: Path
) -> None:
    path = _make_parents(root, parts[:-1]) / parts[-1]
    if kind == "dir":
        _ensure_dir(path)
        return
    _remove(path)
    if kind == "symlink":
        _symlink(member.linkname, path)
    else:
        _write_file(tar, member, path)


def _apply_whiteout(member: tarfile.TarInfo, kind: _Kind, parts: list[str], root: Path) -> int:
    """Delete what a whiteout names; return 1 if something was there, else 0."""
    target = parts[-1][len(_WHITEOUT) :]
    if kind != "file" or member.size != 0:
        raise RefusedMemberError("a whiteout must be an empty regular file")
    if target in ("", ".", ".."):
        raise RefusedMemberError(f"a whiteout may not name {target!r}")
    if target.startswith(_WHITEOUT):
        raise RefusedMemberError("opaque and nested whiteouts (.wh..wh.*) are not supported")
    parent = _existing_parent(root, parts[:-1])
    if parent is None or not _remove(parent / target):
        return 0
    _prune(parent, root)
    return 1


def _make_parents(root: Path, dirs: list[str]) -> Path:
    """Create a member's parent directories, refusing symlinks and files on the way."""
    current = root
    for part in dirs:
        current = current / part
        mode = _lstat_mode(current)
        if mode is None:
            _mkdir(current)
        elif not _is_real_dir(mode, current, root):
            raise RefusedMemberError(
                f"its parent {_relative(current, root)} is a file, not a directory"
            )
    return current


def _existing_parent(root: Path, dirs: list[str]) -> Path | None:
    """Return the parent directory a whiteout points into, or None if it does not exist."""
    current = root
    for part in dirs:
        current = current / part
        mode = _lstat_mode(current)
        if mode is None or not _is_real_dir(mode, current, root):
            return None
    return current


def _is_real_dir(mode: int, path: Path, root: Path) -> bool:
    # Even a link that points inside the tree is refused: following it would let
    # a later member reach whatever the link is changed to point at.
    if stat.S_ISLNK(mode):
        raise RefusedMemberError(
            f"its parent {_relative(path, root)} is a symlink, "
            "and nothing is written or deleted through a symlink"
        )
    return stat.S_ISDIR(mode)


def _relative(path: Path, root: Path) -> str:
    return repr(str(path.relative_to(root)))


def _lstat_mode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None


def _mkdir(path: Path) -> None:
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)  # whatever the umask


def _ensure_dir(path: Path) -> None:
    mode = _lstat_mode(path)
    if mode is not None and stat.S_ISDIR(mode):
        return
    _remove(path)
    _mkdir(path)


def _remove(path: Path) -> bool:
    """Remove a file, a symlink (not its target) or a directory tree; return if one was there."""
    mode = _lstat_mode(path)
    if mode is None:
        return False
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return True


def _prune(directory: Path, root: Path) -> None:
    """Remove directory and its ancestors while they are empty, stopping below root."""
    while directory != root:
        try:
            os.rmdir(directory)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return
            raise
        directory = directory.parent


def _symlink(target: str, path: Path) -> None:
    # The target is stored verbatim, absolute or not: links are never followed here.
    if not target or "\0" in target:
        raise RefusedMemberError("a symlink target must be non-empty and free of NUL bytes")
    os.symlink(target, path)


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise RefusedMemberError("a regular file member has no data")
    mode = 0o755 if member.mode & 0o111 else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with source, os.fdopen(os.open(path, flags, mode), "wb") as out:
        os.fchmod(out.fileno(), mode)  # whatever the umask
        shutil.copyfileobj(source, out, _CHUNK)
