"""Which files ship: the one selection used by preview, keys, archives and hooks.

In a git work tree, for a sync root R: the index entries under R and the
untracked files git's standard excludes keep, minus tracked files deleted from
the work tree, minus what ``.konduktorignore`` files (at R and below, git's own
semantics) exclude, never ``.git``. From a commit, the same from the commit's
tree alone. Outside git, a walk of R applying ``.gitignore`` and
``.konduktorignore`` files. Paths are '/'-separated and relative to R; bytes
that are not UTF-8 are kept as surrogate escapes (``os.fsdecode``).
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from konduktor.errors import GitError, SelectionError, UsageError
from konduktor.gitrepo import MODE_EXEC, MODE_GITLINK, MODE_LINK, Repo, Status, is_within, run_git
from konduktor.ignore import IgnoreChain

log = logging.getLogger(__name__)

IGNORE_FILE = ".konduktorignore"
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


@dataclass(frozen=True, slots=True)
class Entry:
    """One file that ships."""

    path: str
    kind: Literal["file", "symlink"]
    executable: bool
    target: str | None = None  # symlink target as stored
    oid: str | None = None  # git blob id, when content comes from the object database
    source: str | None = None  # absolute path, when content comes from disk

    @property
    def mode(self) -> int:
        return 0o755 if self.executable else 0o644


@dataclass(frozen=True)
class Selection:
    root: Path
    entries: tuple[Entry, ...]
    warnings: tuple[str, ...] = ()
    commit: str | None = None  # the commit the selection was taken from, or HEAD of the work tree
    repo: Repo | None = field(default=None, compare=False, repr=False)
    dirty: frozenset[str] = frozenset()  # work tree: paths that differ from HEAD per git
    checked_ns: int = 0  # work tree: when git started checking which files are clean

    def paths(self) -> list[str]:
        return [e.path for e in self.entries]


@dataclass(frozen=True)
class Verdict:
    path: str
    ships: bool
    rule: str


def select(root: Path, *, commit: str | None = None) -> Selection:
    """The files under *root* that ship, from the work tree or from *commit*'s tree."""
    root = _check_root(root)
    repo = Repo.discover(root)
    if commit is not None:
        if repo is None:
            raise UsageError(f"--commit needs a git repository, and {root} is not inside one")
        return _from_commit(repo, repo.resolve(commit))
    if repo is None:
        return _from_directory(root)
    if repo.workdir is None:
        raise UsageError(f"{root} is a bare repository: give --commit REV to snapshot a commit")
    return _from_worktree(repo)


def _check_root(root: Path) -> Path:
    if not root.exists():
        raise UsageError(f"{root} does not exist; give an existing directory")
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; give the directory to sync")
    return root.absolute()


class _Collector:
    """Accumulates entries and warnings for one selection."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: list[Entry] = []
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        log.debug("%s", message)  # callers show Selection.warnings once, however they combine
        self.warnings.append(message)

    def add_from_disk(self, rel: str) -> None:
        """lstat *rel* and add it as a file or link; skip (with a warning) anything else."""
        full = os.path.join(self.root, rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return  # deleted between git's scan and ours: it is not there to ship
        except OSError as exc:
            raise SelectionError(
                f"cannot read {full}: {exc.strerror}; fix its permissions"
            ) from exc
        if stat.S_ISREG(st.st_mode):
            self.entries.append(Entry(rel, "file", bool(st.st_mode & stat.S_IXUSR), source=full))
        elif stat.S_ISLNK(st.st_mode):
            self.add_link(rel, os.readlink(full), source=full)
        elif not stat.S_ISDIR(st.st_mode):
            self.warn(f"{rel}: skipped, not a regular file or symlink (socket, FIFO or device)")

    def add_link(self, rel: str, target: str, **where: str) -> None:
        if not is_within(target, posixpath.dirname(rel)):
            self.warn(f"{rel}: symlink to {target} points outside the synced directory")
        self.entries.append(Entry(rel, "symlink", False, target=target, **where))

    def ignore_warnings(self, chain: IgnoreChain, paths: Sequence[str]) -> None:
        for message in chain.warnings + chain.unused_warnings(paths):
            self.warn(message)

    def result(self, **kwargs: object) -> Selection:
        entries = sorted(self.entries, key=lambda e: os.fsencode(e.path))
        return Selection(self.root, tuple(entries), tuple(self.warnings), **kwargs)  # type: ignore[arg-type]


def _has_git_component(path: str) -> bool:
    return ".git" in path and ".git" in path.split("/")


# -- git work tree ---------------------------------------------------------------------------


def _fs_reader(root: Path, name: str) -> IgnoreChain:
    def read(directory: str) -> bytes | None:
        try:
            with open(os.path.join(root, directory, name), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    return IgnoreChain(name, read)


def _from_worktree(repo: Repo, *, untracked: bool = True) -> Selection:
    status = repo.status()
    chain = _fs_reader(repo.root, IGNORE_FILE)
    out = _Collector(repo.root)
    lfs = _lfs_paths(repo)
    changes = status.changes
    root = str(repo.root)
    tracked = []
    for entry in repo.index_entries():
        path = entry.path
        tracked.append(path)
        change = changes.get(path)
        if (change is not None and change.work == 0) or chain.excludes(path):
            continue
        if _has_git_component(path):
            continue
        if entry.mode == MODE_GITLINK:
            _add_submodule(repo, path, chain, out)
        elif change is not None:
            out.add_from_disk(path)
        elif entry.mode == MODE_LINK:
            out.add_link(path, os.readlink(os.path.join(root, path)), source=f"{root}/{path}")
        else:
            if path in lfs:
                _check_lfs(path, out)
            out.entries.append(
                Entry(path, "file", entry.mode == MODE_EXEC, source=f"{root}/{path}")
            )
    others = status.untracked() if untracked else []
    for path in others:
        if path.endswith("/"):
            out.warn(f"{path}: a git repository that is not a submodule; its files are not shipped")
        elif not _has_git_component(path) and not chain.excludes(path):
            out.add_from_disk(path)
    out.ignore_warnings(chain, tracked + others)
    dirty = frozenset(changes.keys() | lfs)
    return out.result(commit=status.head, repo=repo, dirty=dirty, checked_ns=status.started_ns)


def _add_submodule(repo: Repo, path: str, chain: IgnoreChain, out: _Collector) -> None:
    sub_root = repo.root / path
    sub_repo = Repo.discover(sub_root)
    if not (sub_root / ".git").exists() or sub_repo is None:
        out.warn(
            f"{path}: submodule is not checked out, its files are not shipped; "
            f"run `git submodule update --init {path}`"
        )
        return
    sub = _from_worktree(sub_repo, untracked=False)  # a submodule ships its tracked files
    for entry in sub.entries:
        prefixed = f"{path}/{entry.path}"
        if not chain.excludes(prefixed):
            out.entries.append(replace(entry, path=prefixed))
    out.warnings.extend(f"{path}/{w}" for w in sub.warnings)


def _lfs_paths(repo: Repo) -> set[str]:
    """Tracked paths whose git attributes route them through git-lfs (none without LFS)."""
    if not repo.uses_lfs():
        return set()
    return {e.path for e in repo.index_entries() if repo.attribute(e.path, "filter") == "lfs"}


def _check_lfs(path: str, out: _Collector) -> None:
    try:
        with open(os.path.join(out.root, path), "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError:
        return
    if head == LFS_POINTER:
        out.warn(
            f"{path}: only the git-lfs pointer is checked out, not the content; run `git lfs pull`"
        )


# -- commit tree -----------------------------------------------------------------------------


def _from_commit(repo: Repo, commit: str) -> Selection:
    entries = list(repo.tree_entries(commit))
    ignore_files = {
        posixpath.dirname(e.path): e.oid
        for e in entries
        if posixpath.basename(e.path) == IGNORE_FILE and e.mode != MODE_GITLINK
    }

    def read(directory: str) -> bytes | None:
        oid = ignore_files.get(directory)
        return repo.blob(oid) if oid else None

    chain = IgnoreChain(IGNORE_FILE, read)
    out = _Collector(repo.root)
    lfs = any(
        posixpath.basename(e.path) == ".gitattributes" and b"filter=lfs" in repo.blob(e.oid)
        for e in entries
    )
    for entry in entries:
        if _has_git_component(entry.path) or chain.excludes(entry.path):
            continue
        if lfs and repo.attribute(entry.path, "filter", commit) == "lfs":
            out.warn(f"{entry.path}: commit layers hold the git-lfs pointer, not the content")
        if entry.mode == MODE_GITLINK:
            log.info("%s: submodule contents are not part of commit layers", entry.path)
        elif entry.mode == MODE_LINK:
            out.add_link(entry.path, os.fsdecode(repo.blob(entry.oid)), oid=entry.oid)
        else:
            out.entries.append(Entry(entry.path, "file", entry.mode == MODE_EXEC, oid=entry.oid))
    out.warnings.extend(chain.warnings)  # patterns matching nothing: told for the work tree
    return out.result(commit=commit, repo=repo)


# -- plain directory -------------------------------------------------------------------------


def _from_directory(root: Path) -> Selection:
    chains = (_fs_reader(root, ".gitignore"), _fs_reader(root, IGNORE_FILE))
    out = _Collector(root)
    seen: list[str] = []
    pending = [""]
    while pending:
        directory = pending.pop()
        try:
            children = list(os.scandir(os.path.join(root, directory)))
        except OSError as exc:
            raise SelectionError(f"cannot list {root / directory}: {exc.strerror}") from exc
        for child in children:
            rel = posixpath.join(directory, child.name) if directory else child.name
            is_dir = child.is_dir(follow_symlinks=False)
            if not is_dir:
                seen.append(rel)
            if child.name == ".git" or any(c.excludes(rel, is_dir) for c in chains):
                continue
            if is_dir:
                pending.append(rel)
            else:
                out.add_from_disk(rel)
    out.ignore_warnings(chains[1], seen)
    return out.result()


# -- explain ---------------------------------------------------------------------------------


def explain(root: Path, paths: Sequence[str]) -> list[Verdict]:
    """For each root-relative path: does it ship, and which rule decided."""
    root = _check_root(root)
    repo = Repo.discover(root)
    if repo is None or repo.workdir is None:
        chains = (_fs_reader(root, ".gitignore"), _fs_reader(root, IGNORE_FILE))
        return [_explain_plain(root, p, chains) for p in paths]
    status = repo.status()
    tracked = {e.path for e in repo.index_entries()}
    chain = _fs_reader(root, IGNORE_FILE)
    return [_explain_git(repo, p, status, tracked, chain) for p in paths]


def _explain_plain(root: Path, path: str, chains: tuple[IgnoreChain, ...]) -> Verdict:
    full = root / path
    if _has_git_component(path):
        return Verdict(path, False, ".git")
    if not full.exists() and not full.is_symlink():
        return Verdict(path, False, "not found")
    is_dir = full.is_dir() and not full.is_symlink()
    rule = None
    for chain in chains:
        excluded, rule_here = chain.decide(path, is_dir)
        if excluded:
            return Verdict(path, False, str(rule_here))
        rule = rule_here or rule
    return Verdict(path, True, str(rule) if rule else "untracked")


def _explain_git(
    repo: Repo, path: str, status: Status, tracked: set[str], chain: IgnoreChain
) -> Verdict:
    if _has_git_component(path):
        return Verdict(path, False, ".git")
    if status.deleted(path):
        return Verdict(path, False, "deleted in the work tree")
    change = status.changes.get(path)
    if os.path.isdir(repo.root / path) and not os.path.islink(repo.root / path):
        excluded, rule = chain.decide(path, is_dir=True)
        if excluded:
            return Verdict(path, False, str(rule))
        ignored = _git_ignore_rule(repo, path)
        if ignored is not None:
            return Verdict(path, False, f"{ignored} (tracked files inside still ship)")
        return Verdict(path, True, "directory")
    if path in tracked:
        base = "tracked"
    elif change is not None and change.untracked:
        base = "untracked"
    elif os.path.lexists(repo.root / path):
        return Verdict(path, False, _git_ignore_rule(repo, path) or "not a file git lists")
    else:
        return Verdict(path, False, "not found")
    excluded, rule = chain.decide(path)
    if excluded:
        return Verdict(path, False, str(rule))
    return Verdict(path, True, str(rule) if rule else base)


def _git_ignore_rule(repo: Repo, path: str) -> str | None:
    """The .gitignore (or exclude) rule that ignores *path*, as file:line:pattern, if any."""
    try:
        out = run_git(["check-ignore", "-v", "-z", "--stdin"], repo.root, stdin=os.fsencode(path))
    except GitError:  # exit 1: not ignored
        return None
    source, line, pattern, _ = out.split(b"\0", 3)
    if pattern.startswith(b"!"):  # -v also reports a re-include that decided "not ignored"
        return None
    return f"{os.fsdecode(source)}:{line.decode()}:{os.fsdecode(pattern)}"
