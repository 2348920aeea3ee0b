"""Snapshots: the selection turned into one or two layers, their keys and manifests.

- In a git work tree with commits: a **base** layer holding commit C's files
  (from C's tree: the same bytes under the same key from any clone), plus an
  **overlay** with what the work tree changes on top: files added or modified,
  and whiteouts for paths to delete.
- From ``--commit C`` alone: the base layer only.
- A plain directory, or a repository without commits: one **full** layer.

Keys never depend on compressed bytes. A base key is a function of the
repository id, the commit, the sync root's path, the format version and the
compression level, and reads no file. Overlay and full keys are content
addresses: the sha256 of the canonical manifest core (paths, modes, sizes,
file sha256s, link targets, deletions, format, level), so computing them reads
only the files that ship in them, and cached hashes spare even that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal

from konduktor import layout, units
from konduktor.archive import LayerWriter
from konduktor.cache import HashCache, atomic_write, fingerprint, konduktor_home, root_digest
from konduktor.errors import SelectionError, UsageError
from konduktor.gitrepo import BlobReader, Repo
from konduktor.selection import Entry, Selection, select, worktree_status

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_LEVEL = 3
_IN_MEMORY = 8 << 20  # files up to this size are read whole; larger ones stream
_CHUNK = 1 << 20
_CLOCK_MARGIN_NS = 2_000_000_000  # ctime granularity and clock steps between git and us
SIZE_ADVICE = "exclude data in .konduktorignore and mount it from a bucket instead"

Kind = Literal["base", "overlay", "full"]
Progress = Callable[[int, int], None]
"""Called after each file with (files done, files in all layers)."""


@dataclass(frozen=True)
class Record:
    """One manifest entry."""

    path: str
    mode: int  # 0o644, 0o755, or 0o120000 for a symlink
    size: int
    sha256: str | None = None
    target: str | None = None

    def core(self) -> list[object]:
        return [self.path, f"{self.mode:o}", self.size, self.sha256 or self.target]

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"path": self.path, "mode": f"{self.mode:04o}", "size": self.size}
        out.update({"sha256": self.sha256} if self.target is None else {"target": self.target})
        return out


@dataclass(frozen=True)
class LayerPlan:
    kind: Kind
    key: layout.Name | None  # None: content-addressed, files not hashed yet (build keys it)
    entries: tuple[Entry, ...]
    deletions: tuple[str, ...] = ()
    base: layout.Name | None = None
    hashed: tuple[Record, ...] = ()  # what a content key was computed from (with_keys)


@dataclass(frozen=True)
class SnapshotPlan:
    root: Path
    prefix: str  # the sync root's path inside the repository ("" outside git)
    commit: str | None
    dirty: bool
    layers: tuple[LayerPlan, ...]
    warnings: tuple[str, ...]
    level: int
    repo: Repo | None = field(default=None, repr=False, compare=False)
    clean_paths: frozenset[str] = field(default=frozenset(), repr=False)  # base files on disk
    clean_before_ns: int = 0  # a clean path whose ctime is older is trusted without hashing

    def names(self) -> tuple[layout.Name, ...]:
        """Every layer's name, base first; only a plan made with ``hash_files`` has them all."""
        found = tuple(layer.key for layer in self.layers if layer.key is not None)
        if len(found) != len(self.layers):
            raise ValueError("the plan's content layers are not hashed: plan(hash_files=True)")
        return found


@dataclass(frozen=True)
class BuiltLayer:
    kind: Kind
    key: layout.Name
    sha256: str  # of the compressed layer
    bytes: int  # file contents
    compressed_bytes: int
    files: int
    members: int  # tar members: files, symlinks and whiteouts
    tar_bytes: int  # the uncompressed tar's exact size
    path: Path | None
    manifest: dict[str, object] = field(repr=False)


@dataclass(frozen=True)
class SnapshotInfo:
    root: Path
    commit: str | None
    dirty: bool
    layers: tuple[BuiltLayer, ...]
    warnings: tuple[str, ...]
    seconds: float


# -- keys ------------------------------------------------------------------------------------


def base_key(repo: Repo, commit: str, level: int) -> layout.Name:
    """The base layer's name, from the repository id, commit and sync root: no file is read."""
    root_id = hashlib.sha256(f"{repo.prefix}\0{FORMAT_VERSION}\0{level}".encode()).hexdigest()
    return layout.base(repo.repo_id(commit), commit, root_id[:16])


def content_key(records: list[Record], deletions: tuple[str, ...], level: int) -> layout.Name:
    """A content-addressed layer's name: the sha256 of its canonical manifest core."""
    core = {
        "format": FORMAT_VERSION,
        "level": level,
        "entries": [r.core() for r in records],
        "deletions": list(deletions),
    }
    digest = hashlib.sha256(json.dumps(core, separators=(",", ":")).encode()).hexdigest()
    return layout.layer(digest)


# -- planning --------------------------------------------------------------------------------


def plan(
    root: Path,
    *,
    commit: str | None = None,
    level: int = DEFAULT_LEVEL,
    hash_files: bool = True,
    kept_out: bool = False,
) -> SnapshotPlan:
    """Decide the layers and (with *hash_files*) all their keys, without writing archives;
    with *kept_out*, the warnings say what .gitignore keeps out of a work tree, when that
    is much (from the same `git status`)."""
    if not 1 <= level <= 22:
        raise UsageError(f"compression level {level} is out of range; use 1-22")
    if commit is not None:
        sel = select(root, commit=commit)
        assert sel.repo is not None
        assert sel.commit is not None
        layer = LayerPlan("base", base_key(sel.repo, sel.commit, level), sel.entries)
        return _plan(sel, (layer,), level, dirty=False)
    work = select(root, kept_out=kept_out)
    told = work.kept_out.warning() if work.kept_out else None
    if told:
        work = replace(work, warnings=(*work.warnings, told))
    if work.repo is None or work.commit is None:
        layer = LayerPlan("full", None, work.entries)
        result = _plan(work, (layer,), level, dirty=work.repo is not None)
    else:
        result = _plan_layers(work, level)
    return with_keys(result) if hash_files else result


def _plan(
    sel: Selection, layers: tuple[LayerPlan, ...], level: int, *, dirty: bool
) -> SnapshotPlan:
    prefix = sel.repo.prefix if sel.repo else ""
    return SnapshotPlan(sel.root, prefix, sel.commit, dirty, layers, sel.warnings, level, sel.repo)


def _plan_layers(work: Selection, level: int) -> SnapshotPlan:
    assert work.repo is not None
    assert work.commit is not None
    base = select(work.root, commit=work.commit)
    base_entries = {e.path: e for e in base.entries}
    adds = tuple(
        e for e in work.entries if e.path in work.dirty or _differs(e, base_entries.get(e.path))
    )
    work_paths = {e.path for e in work.entries}
    deletions = _deletions([p for p in base_entries if p not in work_paths], work_paths)
    key = base_key(work.repo, work.commit, level)
    layers = [LayerPlan("base", key, base.entries)]
    if adds or deletions:
        layers.append(LayerPlan("overlay", None, adds, deletions, base=key))
    clean: frozenset[str] = frozenset()
    if not work.repo.content_filters():
        clean = frozenset(p for p in base_entries if p in work_paths and p not in work.dirty)
    result = _plan(work, tuple(layers), level, dirty=len(layers) > 1)
    # The work tree's warnings say what ships; the base's would repeat them.
    before = work.checked_ns - _CLOCK_MARGIN_NS
    return replace(result, clean_paths=clean, clean_before_ns=before)


def _deletions(gone: list[str], work_paths: set[str]) -> tuple[str, ...]:
    """The whiteouts for base paths *gone* from the work tree. Where a file or symlink now
    stands in place of a directory, the directory itself is deleted (one whiteout), so that
    no whiteout inside it keeps the directory alive when the file takes its place."""
    out = []
    for path in gone:
        parts = path.split("/")
        prefixes = ("/".join(parts[:i]) for i in range(1, len(parts)))
        out.append(next((a for a in prefixes if a in work_paths), path))
    return tuple(dict.fromkeys(out))


def _differs(work: Entry, base: Entry | None) -> bool:
    if base is None:
        return True
    return (work.kind, work.executable, work.target) != (base.kind, base.executable, base.target)


def shipped_sizes(p: SnapshotPlan) -> dict[str, int]:
    """Path -> bytes of what *p* ships (its layers applied in order), from ``lstat`` alone:
    a size limit can refuse before any file is read."""
    paths: set[str] = set()
    for layer in p.layers:
        paths.difference_update(layer.deletions)
        paths.update(e.path for e in layer.entries)
    return {path: _lstat_size(p.root / path) for path in sorted(paths)}


def _lstat_size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def check_size(what: str, sizes: Mapping[str, int], hard_limit_mb: float) -> None:
    """Refuse (naming the largest files) when *sizes* add up to more than *hard_limit_mb*
    (``sync.hard_limit_mb``)."""
    total = sum(sizes.values())
    if total > hard_limit_mb * units.MB:
        raise SelectionError(
            f"{what} would ship {units.size(total)}, above the hard limit of "
            f"{hard_limit_mb:g} MB "
            f"(sync.hard_limit_mb); largest: {largest(sizes)}; {SIZE_ADVICE}"
        )


def largest(sizes: Mapping[str, int], count: int = 3) -> str:
    """The *count* biggest of *sizes*, as ``path (12.3 MB), ...``."""
    top = sorted(sizes.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{path} ({units.size(n)})" for path, n in top)


def with_keys(p: SnapshotPlan) -> SnapshotPlan:
    """*p* with its content keys, hashing only files whose stat fingerprint is not cached."""
    cache = HashCache(p.root)
    layers = []
    for layer in p.layers:
        if layer.key is None:
            records = [_record_from_disk(e, cache) for e in layer.entries]
            key = content_key(records, layer.deletions, p.level)
            layer = replace(layer, key=key, hashed=tuple(records))
        layers.append(layer)
    cache.save()
    return replace(p, layers=tuple(layers))


def _record_from_disk(entry: Entry, cache: HashCache) -> Record:
    if entry.kind == "symlink":
        return Record(entry.path, 0o120000, 0, target=entry.target)
    assert entry.source is not None
    try:
        st = os.stat(entry.source)
        digest = cache.get(entry.path, st)
        if digest is None:
            digest = _hash_file(entry.source)
            cache.put(entry.path, st, digest)
    except OSError as exc:
        raise _unreadable(entry, exc) from exc
    return Record(entry.path, entry.mode, st.st_size, digest)


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _unreadable(entry: Entry, exc: OSError) -> SelectionError:
    return SelectionError(
        f"cannot read {entry.source}: {exc.strerror}; fix its permissions or add it to "
        ".konduktorignore"
    )


# -- keys only, with a cache for the nothing-changed case -----------------------------------


@dataclass(frozen=True)
class Keys:
    commit: str | None
    dirty: bool
    layers: tuple[tuple[Kind, layout.Name], ...]  # (kind, name), base first


def keys(root: Path, *, level: int = DEFAULT_LEVEL) -> Keys:
    """The layer keys of the work tree at *root*, as a launch needs them before uploading.

    When git reports the same HEAD, index and work-tree changes as last time and
    every file that ships in the overlay has the same stat fingerprint, the keys
    cannot have changed: they come from a cache, for the cost of one `git status`.
    (Repositories with submodules always recompute: git's status of a submodule
    does not change with every edit inside it.)
    """
    root = root.absolute()
    repo = Repo.discover(root) if root.is_dir() else None
    if repo is None or repo.workdir is None or (repo.workdir / ".gitmodules").exists():
        return _keys_of(plan(root, level=level))
    status = worktree_status(repo)  # lists re-included gitignored files too
    token = hashlib.sha256(b"%d\0%d\0%s\0" % (FORMAT_VERSION, level, os.fsencode(repo.prefix)))
    token.update(status.raw)
    cache_path = konduktor_home() / "cache" / "keys" / f"{root_digest(root)}.json"
    cached = _load_keys(cache_path, token.hexdigest(), root)
    if cached is not None:
        return cached
    p = plan(root, level=level)
    result = _keys_of(p)
    watched = {e.path for layer in p.layers[1:] for e in layer.entries} | set(status.changes)
    _store_keys(cache_path, token.hexdigest(), root, watched, result)
    return result


def _keys_of(p: SnapshotPlan) -> Keys:
    return Keys(p.commit, p.dirty, tuple(zip((la.kind for la in p.layers), p.names(), strict=True)))


def _stat_list(root: Path, paths: Iterable[str]) -> list[object]:
    out: list[object] = []
    for path in sorted(paths):
        try:
            out.append([path, *fingerprint(os.lstat(root / path))])
        except OSError:
            out.append([path, None])
    return out


def _load_keys(path: Path, token: str, root: Path) -> Keys | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if data.get("token") != token:
        return None
    if _stat_list(root, [s[0] for s in data["stats"]]) != data["stats"]:
        return None
    layers = tuple((kind, layout.Name(key)) for kind, key in data["layers"])
    return Keys(data["commit"], data["dirty"], layers)


def _store_keys(path: Path, token: str, root: Path, watched: set[str], keys: Keys) -> None:
    data = {
        "token": token,
        "stats": _stat_list(root, watched),
        "commit": keys.commit,
        "dirty": keys.dirty,
        "layers": [list(layer) for layer in keys.layers],
    }
    try:
        atomic_write(path, json.dumps(data).encode())
    except OSError as exc:
        log.debug("cannot write %s: %s", path, exc)


# -- building --------------------------------------------------------------------------------


def build(
    root: Path,
    *,
    commit: str | None = None,
    out: Path | None = None,
    level: int = DEFAULT_LEVEL,
    progress: Progress | None = None,
) -> SnapshotInfo:
    """Build the layers of *root* (optionally written into directory *out*)."""
    started = time.monotonic()
    p = plan(root, commit=commit, level=level, hash_files=False)
    layers = build_layers(p, p.layers, out=out, progress=progress)
    seconds = time.monotonic() - started
    return SnapshotInfo(p.root, p.commit, p.dirty, layers, p.warnings, seconds)


def build_layers(
    p: SnapshotPlan,
    layers: Sequence[LayerPlan],
    *,
    out: Path | None = None,
    progress: Progress | None = None,
) -> tuple[BuiltLayer, ...]:
    """Build some layers of a plan; on any failure no file of them is left in *out*."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    tick = _counter(sum(len(layer.entries) for layer in layers), progress)
    try:
        return tuple(_build_layer(p, layer, out, written, tick) for layer in layers)
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise


def _counter(total: int, progress: Progress | None) -> Callable[[], None]:
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return tick


def _build_layer(
    p: SnapshotPlan,
    layer: LayerPlan,
    out: Path | None,
    written: list[Path],
    tick: Callable[[], None],
) -> BuiltLayer:
    tmp: BinaryIO | None = None
    if out is not None:
        fd, tmp_name = tempfile.mkstemp(prefix=".layer-", suffix=".tmp", dir=out)
        os.fchmod(fd, 0o644)
        tmp = os.fdopen(fd, "wb")
        written.append(Path(tmp_name))
    try:
        writer = LayerWriter(tmp, p.level)
        cache = HashCache(p.root) if layer.kind != "base" else None
        with _Source(p, cache) as source:
            for path in layer.deletions:
                writer.add_whiteout(path)
            records = [source.write(entry, writer, tick) for entry in layer.entries]
        sha256, compressed = writer.finish()
        if cache is not None:
            cache.save()
    finally:
        if tmp is not None:
            tmp.close()
    key = _built_key(p, layer, records)
    manifest = _manifest(p, layer, key, records, sha256, compressed)
    placed = _place(out, layer.kind, key, written, manifest) if out is not None else None
    counts = (len(records), len(records) + len(layer.deletions), writer.tar_bytes)
    size = sum(r.size for r in records)
    return BuiltLayer(layer.kind, key, sha256, size, compressed, *counts, placed, manifest)


def _built_key(p: SnapshotPlan, layer: LayerPlan, records: list[Record]) -> layout.Name:
    """The key of the layer built from *records*: a base layer's is its commit's; a
    content-addressed one's must be the key planned (and maybe found missing in the store),
    else the bytes just read are not those hashed and would land under another's key."""
    if layer.kind == "base" and layer.key is not None:
        return layer.key
    key = content_key(records, layer.deletions, p.level)
    if layer.key is not None and key != layer.key:
        planned = dict(zip([r.path for r in layer.hashed], layer.hashed, strict=True))
        changed = [r.path for r in records if planned.get(r.path) != r]
        what = ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else "")
        raise SelectionError(
            f"{p.root}: {what or 'a file'} changed between hashing and archiving (its "
            f"{layer.kind} layer is no longer {layer.key}); run again once the files stop "
            "changing, or exclude a file that is being written (a log) in .konduktorignore"
        )
    return key


def _place(
    out: Path, kind: Kind, key: layout.Name, written: list[Path], manifest: dict[str, object]
) -> Path:
    """Move the finished layer into place as <name>.tar.zst, with <name>.json beside it
    (``base-<commit>-<root>``, ``overlay-<sha>``: see :meth:`layout.Name.out_name`)."""
    name = key.out_name(kind)
    final = out / f"{name}.tar.zst"
    os.replace(written[-1], final)
    written[-1] = final
    fd, tmp_name = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=out)
    os.fchmod(fd, 0o644)
    written.append(Path(tmp_name))
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp_name, out / f"{name}.json")
    written[-1] = out / f"{name}.json"
    return final


def _manifest(
    p: SnapshotPlan,
    layer: LayerPlan,
    key: layout.Name,
    records: list[Record],
    sha256: str,
    compressed: int,
) -> dict[str, object]:
    return {
        "format": FORMAT_VERSION,
        "kind": layer.kind,
        "key": key,
        "commit": p.commit,
        "dirty": p.dirty,
        "base": layer.base,
        "root": p.prefix,
        "compression": {"codec": "zstd", "level": p.level},
        "sha256": sha256,
        "compressed_bytes": compressed,
        "entries": [r.to_json() for r in records],
        "deletions": list(layer.deletions),
    }


class _Source:
    """Reads entry contents once, from disk or from git's object database, into a writer."""

    def __init__(self, p: SnapshotPlan, cache: HashCache | None) -> None:
        self._plan = p
        self._root = str(p.root)
        self._cache = cache
        self._blobs: BlobReader | None = None

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._blobs is not None:
            self._blobs.close()

    def write(self, entry: Entry, writer: LayerWriter, tick: Callable[[], None]) -> Record:
        tick()
        if entry.kind == "symlink":
            assert entry.target is not None
            writer.add_symlink(entry.path, entry.target)
            return Record(entry.path, 0o120000, 0, target=entry.target)
        size, digest = self._write_file(entry, writer)
        return Record(entry.path, entry.mode, size, digest)

    def _write_file(self, entry: Entry, writer: LayerWriter) -> tuple[int, str]:
        if entry.oid is not None:
            if entry.path in self._plan.clean_paths:
                path = f"{self._root}/{entry.path}"
                data = _read_verified(path, entry.oid, self._plan.clean_before_ns)
                if data is not None:
                    writer.add_file(entry.path, entry.mode, len(data), (data,))
                    return len(data), hashlib.sha256(data).hexdigest()
            return self._write_blob(entry, writer)
        return self._write_disk(entry, writer)

    def _write_blob(self, entry: Entry, writer: LayerWriter) -> tuple[int, str]:
        assert entry.oid is not None
        assert self._plan.repo is not None
        if self._blobs is None:
            self._blobs = self._plan.repo.blobs()
        size, chunks = self._blobs.open(entry.oid)
        h = hashlib.sha256()
        writer.add_file(entry.path, entry.mode, size, _hashing(chunks, h))
        return size, h.hexdigest()

    def _write_disk(self, entry: Entry, writer: LayerWriter) -> tuple[int, str]:
        assert entry.source is not None
        try:
            fd = os.open(entry.source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise _unreadable(entry, exc) from exc
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SelectionError(f"{entry.source} stopped being a regular file; retry")
            h = hashlib.sha256()
            writer.add_file(
                entry.path, entry.mode, st.st_size, _hashing(_exact(f, st.st_size, entry), h)
            )
        digest = h.hexdigest()
        if self._cache is not None:
            self._cache.put(entry.path, st, digest)
        return st.st_size, digest


def _hashing(chunks: Iterator[bytes], h: hashlib._Hash) -> Iterator[bytes]:
    for chunk in chunks:
        h.update(chunk)
        yield chunk


def _exact(f: BinaryIO, size: int, entry: Entry) -> Iterator[bytes]:
    """Exactly *size* bytes of *f*, or an error if the file changed size while being read."""
    remaining = size
    while remaining:
        chunk = f.read(min(remaining, _IN_MEMORY))
        if not chunk:
            break
        remaining -= len(chunk)
        yield chunk
    if remaining or f.read(1):
        raise SelectionError(f"{entry.source} changed while it was being read; run again")


def _read_verified(path: str, oid: str, trusted_before_ns: int) -> bytes | None:
    """The file's bytes if they are exactly git object *oid*, else None.

    A clean work tree holds the commit's bytes, and reading them from disk is several
    times faster than inflating them from packs. But a base layer is stored under its
    commit forever, so a file edited after `git status` found it clean must never slip
    in: git's verdict is trusted only for a file whose ctime (which every write and
    chmod moves, and no tool can set back) is older than the moment git started
    looking; any other file is checked by hashing it as git would.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_size > _IN_MEMORY:
            return None
        data = os.read(fd, st.st_size + 1)
        if st.st_ctime_ns < trusted_before_ns and os.fstat(fd).st_ctime_ns == st.st_ctime_ns:
            return data if len(data) == st.st_size else None
    finally:
        os.close(fd)
    h = hashlib.sha1() if len(oid) == 40 else hashlib.sha256()
    h.update(b"blob %d\0" % len(data))
    h.update(data)
    return data if h.hexdigest() == oid else None
