"""Which files ship: the one selection used by preview, keys, archives, hooks and --why.

In a git work tree, for a sync root R: the index entries under R and the
untracked files git's standard excludes keep, minus tracked files deleted from
the work tree, minus what ``.konduktorignore`` files (at R and below, git's own
semantics) exclude, never ``.git``. From a commit, the same from the commit's
tree alone. Outside git, a walk of R applying ``.gitignore`` and
``.konduktorignore`` files. Paths are '/'-separated and relative to R; bytes
that are not UTF-8 are kept as surrogate escapes (``os.fsdecode``).

Asked to (``select(root, why=True)``), the same pass records the deciding rule
of every path it looks at; :func:`explain` (``ls-files --why``) only looks
paths up in that record, so it cannot disagree with what ships; so does :func:`pick`
(``ls-files PATH...``), which keeps the entries named by some paths.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from konduktor import units
from konduktor.errors import GitError, SelectionError, UsageError
from konduktor.gitrepo import (
    MODE_EXEC,
    MODE_GITLINK,
    MODE_LINK,
    IndexEntry,
    Repo,
    Status,
    is_within,
    run_git,
)
from konduktor.ignore import (
    IgnoreChain,
    Reader,
    Rule,
    SymlinkedIgnoreFile,
    parent_dirs,
    parse,
)

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


class Reasons:
    """Why one selection pass kept or dropped each path it looked at.

    ``decided``: path -> (ships, deciding rule). ``trees``: directory -> the rule
    that keeps out everything under it (an excluded directory, a nested
    repository). ``unlisted``: directory -> the rule for files under it that the
    pass never saw (a submodule's untracked files). Rules stay ``Rule`` objects
    until shown, so recording costs a dict entry per path. ``commit``: the commit
    whose tree the pass read instead of the disk.
    """

    def __init__(self, commit: str | None) -> None:
        self.commit = commit
        self.decided: dict[str, tuple[bool, Rule | str]] = {}
        self.trees: dict[str, Rule | str] = {}
        self.unlisted: dict[str, Rule | str] = {}

    def merge(self, prefix: str, sub: Reasons) -> None:
        """Take in a submodule's reasons, its paths under *prefix*."""
        label = f"submodule {prefix}: "
        for path, (ships, rule) in sub.decided.items():
            self.decided[f"{prefix}/{path}"] = (ships, f"{label}{rule}")
        for mine, theirs in ((self.trees, sub.trees), (self.unlisted, sub.unlisted)):
            mine.update({f"{prefix}/{path}": f"{label}{rule}" for path, rule in theirs.items()})


@dataclass(frozen=True)
class Selection:
    root: Path
    entries: tuple[Entry, ...]
    warnings: tuple[str, ...] = ()
    commit: str | None = None  # the commit the selection was taken from, or HEAD of the work tree
    repo: Repo | None = field(default=None, compare=False, repr=False)
    dirty: frozenset[str] = frozenset()  # work tree: paths that differ from HEAD per git
    checked_ns: int = 0  # work tree: when git started checking which files are clean
    reasons: Reasons | None = field(default=None, compare=False, repr=False)  # select(why=True)
    kept_out: KeptOut | None = field(default=None, compare=False)  # select(kept_out=True)

    def paths(self) -> list[str]:
        return [e.path for e in self.entries]


@dataclass(frozen=True)
class Verdict:
    """Whether one path ships, and the rule that decided (``.konduktorignore:3:secret*``).

    ``error`` says why a path given could not be looked up (it does not exist, or lies
    outside the root) and what to do; such a path never ships.
    """

    path: str
    ships: bool
    rule: str
    error: str | None = None


@dataclass(frozen=True)
class Listing:
    """The files that ship from some paths under a root (:func:`pick`): ``paths`` in
    selection order, each once; one ``errors`` line per path that names nothing."""

    paths: tuple[str, ...]
    errors: tuple[str, ...]
    warnings: tuple[str, ...]


def select(
    root: Path, *, commit: str | None = None, why: bool = False, kept_out: bool = False
) -> Selection:
    """The files under *root* that ship, from the work tree or from *commit*'s tree.

    With *why*, the pass also records the deciding rule of every path it looks at
    (``Selection.reasons``), for :func:`explain`. With *kept_out*, a work tree's
    selection also counts the untracked files ``.gitignore`` keeps out
    (``Selection.kept_out``), from the same `git status`.
    """
    root = _check_root(root)
    repo = Repo.discover(root)
    if commit is not None:
        if repo is None:
            raise UsageError(f"--commit needs a git repository, and {root} is not inside one")
        return _from_commit(repo, repo.resolve(commit), why)
    if repo is None:
        return _from_directory(root, why)
    if repo.workdir is None:
        raise UsageError(f"{root} is a bare repository: give --commit REV to snapshot a commit")
    return _from_worktree(repo, why, kept_out=kept_out)


def _check_root(root: Path) -> Path:
    if not root.exists():
        raise UsageError(f"{root} does not exist; give an existing directory")
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; give the directory to sync")
    return root.absolute()


class _Collector:
    """Accumulates entries, warnings and (when asked) reasons for one selection."""

    def __init__(self, root: Path, why: bool, commit: str | None = None) -> None:
        self.root = root
        self.entries: list[Entry] = []
        self.warnings: list[str] = []
        self.reasons = Reasons(commit) if why else None

    def warn(self, message: str) -> None:
        log.debug("%s", message)  # callers show Selection.warnings once, however they combine
        self.warnings.append(message)

    def add(self, entry: Entry, rule: Rule | str) -> None:
        self.entries.append(entry)
        if self.reasons is not None:
            self.reasons.decided[entry.path] = (True, rule)

    def skip(self, path: str, rule: Rule | str) -> None:
        if self.reasons is not None:
            self.reasons.decided[path] = (False, rule)

    def skip_tree(self, path: str, rule: Rule | str) -> None:
        """*path* and everything under it stay out."""
        if self.reasons is not None:
            self.reasons.decided[path] = (False, rule)
            self.reasons.trees[path] = rule

    def screen(
        self, path: str, chains: Sequence[IgnoreChain], is_dir: bool = False
    ) -> tuple[bool, Rule | None]:
        """Whether *path* gets past ``.git`` and *chains* (if not, why is recorded), and the
        last re-include that matched it."""
        if _has_git_component(path):
            (self.skip_tree if is_dir else self.skip)(path, ".git")
            return False, None
        kept = None
        for chain in chains:
            rule = chain.decide(path, is_dir)
            if rule is not None and not rule.negate:
                (self.skip_tree if is_dir else self.skip)(path, rule)
                return False, rule
            kept = rule or kept
        return True, kept

    def add_from_disk(self, rel: str, rule: Rule | str) -> None:
        """lstat *rel* and add it as a file or link; skip (with a warning) anything else."""
        full = os.path.join(self.root, rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            self.skip(rel, "not found")  # deleted between git's scan and ours
            return
        except OSError as exc:
            raise SelectionError(
                f"cannot read {full}: {exc.strerror}; fix its permissions"
            ) from exc
        if stat.S_ISREG(st.st_mode):
            self.add(Entry(rel, "file", bool(st.st_mode & stat.S_IXUSR), source=full), rule)
        elif stat.S_ISLNK(st.st_mode):
            self.add_link(rel, os.readlink(full), rule, source=full)
        elif not stat.S_ISDIR(st.st_mode):  # a directory: what ships from it is listed itself
            self.warn(f"{rel}: skipped, {_NOT_A_FILE}")
            self.skip(rel, _NOT_A_FILE)

    def add_link(self, rel: str, target: str, rule: Rule | str, **where: str) -> None:
        if not is_within(target, posixpath.dirname(rel)):
            self.warn(f"{rel}: symlink to {target} points outside the synced directory")
        self.add(Entry(rel, "symlink", False, target=target, **where), rule)

    def skip_excluded_dirs(self, chain: IgnoreChain) -> None:
        if self.reasons is not None:
            for directory, rule in chain.excluded_dirs():
                self.skip_tree(directory, rule)

    def ignore_warnings(self, chain: IgnoreChain, paths: Sequence[str]) -> None:
        for message in chain.warnings + chain.unused_warnings(paths):
            self.warn(message)

    def result(self, **kwargs: object) -> Selection:
        entries = sorted(self.entries, key=lambda e: os.fsencode(e.path))
        return Selection(
            self.root,
            tuple(entries),
            tuple(self.warnings),
            reasons=self.reasons,
            **kwargs,  # type: ignore[arg-type]
        )


_NOT_A_FILE = "not a regular file or symlink (socket, FIFO or device)"


def _has_git_component(path: str) -> bool:
    return ".git" in path and ".git" in path.split("/")


# -- git work tree ---------------------------------------------------------------------------


def _fs_reader(root: Path, name: str) -> IgnoreChain:
    return IgnoreChain(name, _fs_read(root, name))


def _fs_read(root: Path, name: str) -> Reader:
    """Reads the *name* file of a directory under *root* as git does (not through a link)."""

    def read(directory: str) -> bytes | None:
        try:
            fd = os.open(os.path.join(root, directory, name), os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # git opens per-directory files without following
                raise SymlinkedIgnoreFile(name) from exc
            raise
        try:
            with open(fd, "rb") as f:
                return f.read()
        except IsADirectoryError:
            return None

    return read


def _from_worktree(
    repo: Repo, why: bool, *, untracked: bool = True, kept_out: bool = False
) -> Selection:
    tracked = list(repo.index_entries())
    if untracked:
        status, ignored = _status(repo, [e.path for e in tracked], ignored=kept_out)
    else:  # a submodule: only its tracked files ship
        status, ignored = repo.status(), None
    walk = _WorkTree(repo, status, _Collector(repo.root, why), ignored)
    for entry in tracked:
        walk.add_tracked(entry)
    others = status.untracked() if untracked else []
    for path in others:
        walk.add_untracked(path)
    if untracked and _more_negations(walk.chain, ignored):
        # a `!` line in a .konduktorignore that .gitignore ignores (read, as git reads it)
        listed = status.ignored if status.ignored is not None else repo.status(ignored=True).ignored
        walk.ignored = _revive(repo, listed or [], walk.chain.negations())
    revived = walk.add_ignored() if untracked else []
    out = walk.out
    candidates = [e.path for e in tracked] + others + revived
    out.warnings.extend(_ignore_files_above(repo, candidates))
    out.ignore_warnings(walk.chain, candidates)
    out.skip_excluded_dirs(walk.chain)
    dirty = frozenset(status.changes.keys() | walk.lfs | set(revived))
    counted = _count_kept_out(repo.root, walk.kept_out()) if kept_out else None
    return out.result(
        commit=status.head,
        repo=repo,
        dirty=dirty,
        checked_ns=status.started_ns,
        kept_out=counted,
    )


def _ignore_files_above(repo: Repo, paths: list[str]) -> list[str]:
    """Warnings for the ignore files between the sync root and the work tree's top, which
    do not apply (only the root's own and those below it do), when their patterns match
    some of *paths* (relative to the root): a file that ships though a rule names it."""
    if repo.workdir is None:
        return []
    root = repo.root.resolve()
    above = [d for d in root.parents if d == repo.workdir or repo.workdir in d.parents]
    warnings = []
    for d in above:
        try:
            data = (d / IGNORE_FILE).read_bytes() if not (d / IGNORE_FILE).is_symlink() else b""
        except OSError:
            continue
        rules = [r for r in parse(data, source="", base="", warnings=[]) if not r.negate]
        rel = root.relative_to(d).as_posix()
        named = [p for p in paths if _named(rules, f"{rel}/{p}")]
        if named:
            warnings.append(
                f"{d / IGNORE_FILE}: not applied, it is above the sync root {root}, so "
                f"{len(named)} file(s) it names ship ({', '.join(named[:3])}); move its rules "
                f"into {root / IGNORE_FILE} if they are meant for this launch"
            )
    return warnings


def _named(rules: list[Rule], path: str) -> bool:
    """Whether a pattern of *rules* matches *path* or a directory above it."""
    dirs = list(parent_dirs(path))
    return any(r.matches(path, False) or any(r.matches(d, True) for d in dirs) for r in rules)


class _WorkTree:
    """One pass over a work tree's index entries and untracked files."""

    def __init__(
        self, repo: Repo, status: Status, out: _Collector, ignored: _Ignored | None
    ) -> None:
        self.repo = repo
        self.changes = status.changes
        self.status = status
        self.out = out
        self.chain = _fs_reader(repo.root, IGNORE_FILE)
        self.chains = (self.chain,)
        self.lfs = _lfs_paths(repo)
        self.root = str(repo.root)
        self.ignored = ignored
        self._combined = ignored.chain if ignored else None

    def add_tracked(self, entry: IndexEntry) -> None:
        path, out = entry.path, self.out
        change = self.changes.get(path)
        if change is not None and change.work == 0:
            out.skip(path, "deleted in the work tree")
            return
        kept, rule = out.screen(path, self.chains)
        if not kept:
            return
        why = rule or "tracked"
        full = f"{self.root}/{path}"
        if entry.mode == MODE_GITLINK:
            self.add_submodule(path)
        elif change is not None:
            out.add_from_disk(path, why)
        elif entry.mode == MODE_LINK:
            out.add_link(path, os.readlink(full), why, source=full)
        else:
            if path in self.lfs:
                _check_lfs(path, out)
            out.add(Entry(path, "file", entry.mode == MODE_EXEC, source=full), why)

    def add_untracked(self, path: str) -> None:
        if path.endswith("/"):
            self.out.warn(f"{path}: {_NESTED_REPO}; its files are not shipped")
            self.out.skip_tree(path[:-1], _NESTED_REPO)
            return
        kept, rule = self.out.screen(path, self.chains)
        if not kept and rule is not None:
            # .konduktorignore excludes it; appended to the .gitignore files, its lines
            # may still lose to a deeper .gitignore's `!` line
            again = self.combined().decide(_top(self.repo, path))
            if again is not None and again.negate:
                kept, rule = True, again
        if kept:
            self.out.add_from_disk(path, rule or "untracked")

    def add_ignored(self) -> list[str]:
        """Add the gitignored untracked files that ``.konduktorignore`` re-includes; return
        their paths."""
        if self.ignored is None:
            return []
        for path, excluding in self.ignored.excluded:
            skip = self.out.skip_tree if path.endswith("/") else self.out.skip
            skip(path.rstrip("/"), excluding)
        for path in self.ignored.nested:
            self.out.warn(f"{path}/: {_NESTED_REPO}; its files are not shipped")
            self.out.skip_tree(path, _NESTED_REPO)
        for path, rule in self.ignored.revived:
            self.out.add_from_disk(path, rule)
        return [path for path, _ in self.ignored.revived]

    def kept_out(self) -> list[str]:
        """The gitignored untracked paths that stay out (``dir/`` for a directory)."""
        if self.ignored is not None:
            return self.ignored.kept
        return self.status.ignored or []

    def combined(self) -> IgnoreChain:
        if self._combined is None:
            self._combined = _combined_chain(self.repo, fallback=False)
        return self._combined

    def add_submodule(self, path: str) -> None:
        sub_root = self.repo.root / path
        sub_repo = Repo.discover(sub_root)
        if not (sub_root / ".git").exists() or sub_repo is None:
            hint = f"run `git submodule update --init {path}`"
            self.out.warn(
                f"{path}: submodule is not checked out, its files are not shipped; {hint}"
            )
            self.out.skip_tree(path, f"submodule not checked out; {hint}")
            return
        sub = _from_worktree(sub_repo, self.out.reasons is not None, untracked=False)
        self.merge(path, sub)
        for entry in sub.entries:
            prefixed = f"{path}/{entry.path}"
            if self.out.screen(prefixed, self.chains)[0]:
                self.out.entries.append(replace(entry, path=prefixed))  # its reason is merged
        self.out.warnings.extend(f"{path}/{w}" for w in sub.warnings)

    def merge(self, path: str, sub: Selection) -> None:
        reasons = self.out.reasons
        if reasons is not None and sub.reasons is not None:
            reasons.merge(path, sub.reasons)
            reasons.unlisted[path] = (
                f"submodule {path}: untracked (a submodule ships its tracked files)"
            )


_NESTED_REPO = "a git repository that is not a submodule"


# -- gitignored files that .konduktorignore re-includes --------------------------------------


def worktree_status(repo: Repo) -> Status:
    """git's status of the work tree under the sync root, as the selection sees it: when a
    ``.konduktorignore`` holds a ``!`` line, ``Status.raw`` also lists the gitignored files
    it re-includes, so that a fingerprint of it sees one appear or go."""
    return _status(repo, None)[0]


@dataclass
class _Ignored:
    """The untracked paths git's excludes ignore, decided by the combined chain:
    ``revived`` ship, ``excluded`` stay out (path, rule), ``kept`` are the entries git
    listed that stay out, ``nested`` are repositories found inside re-included
    directories."""

    chain: IgnoreChain
    negations: Sequence[Rule]  # the `!` rules that could bring paths back
    revived: list[tuple[str, Rule | str]] = field(default_factory=list)
    excluded: list[tuple[str, Rule]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    nested: list[str] = field(default_factory=list)


def _status(
    repo: Repo, tracked: Sequence[str] | None, *, ignored: bool = False
) -> tuple[Status, _Ignored | None]:
    """The status, and (when a ``.konduktorignore`` has a ``!`` line) what the combined chain
    makes of the ignored paths. Without a ``!`` line git is not asked for ignored paths
    (unless *ignored*): nothing can bring them back."""
    if tracked is None:
        named = repo.tracked_named(IGNORE_FILE)
    else:
        named = [p for p in tracked if p.endswith(IGNORE_FILE) and _named_ignore_file(p)]
    named.append(IGNORE_FILE)  # the root's, even if gitignored (no more than one `open`)
    negations = _negations(repo.root, named)
    status = repo.status(ignored=ignored or bool(negations))
    if not negations:
        fresh = [p for p in status.untracked() if _named_ignore_file(p)]
        negations = _negations(repo.root, fresh)
        if negations and status.ignored is None:
            status = repo.status(ignored=True)
    if not negations:
        return status, None
    found = _revive(repo, status.ignored or [], negations)
    status.raw += b"\0!!\0" + b"\0".join(os.fsencode(p) for p, _ in found.revived)
    return status, found


def _more_negations(chain: IgnoreChain, ignored: _Ignored | None) -> bool:
    """Whether the pass read ``!`` lines that deciding the ignored paths did not know of."""
    known = {(r.source, r.line) for r in ignored.negations} if ignored else set()
    return any((r.source, r.line) not in known for r in chain.negations())


def _named_ignore_file(path: str) -> bool:
    return posixpath.basename(path) == IGNORE_FILE


def _negations(root: Path, paths: Sequence[str]) -> list[Rule]:
    """The ``!`` lines of the ignore files at *paths*."""
    found = []
    for path in paths:
        try:
            fd = os.open(os.path.join(root, path), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone, or a symlink: git reads no rule from it
            continue
        with open(fd, "rb") as f:
            data = f.read()
        if b"!" in data:
            base = posixpath.dirname(path)
            found += [r for r in parse(data, source=path, base=base, warnings=[]) if r.negate]
    return found


def _combined_chain(repo: Repo, *, fallback: bool) -> IgnoreChain:
    """Every directory's ``.gitignore`` lines followed by its ``.konduktorignore`` lines
    (those at the sync root and below), over git's other excludes (with *fallback*), rooted
    at the work tree's top."""
    assert repo.workdir is not None
    top, prefix = repo.workdir, repo.prefix
    konduktor = _fs_read(top, IGNORE_FILE)

    def below_root(directory: str) -> bytes | None:
        inside = not prefix or directory == prefix or directory.startswith(prefix + "/")
        return konduktor(directory) if inside else None

    rules: list[Rule] = []
    for path in repo.exclude_files() if fallback else []:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        rules += parse(data, source=_shown(path, top), base="", warnings=[])
    return IgnoreChain(
        ".gitignore",
        _fs_read(top, ".gitignore"),
        more=((IGNORE_FILE, below_root),),
        fallback=tuple(reversed(rules)),
        prefix=prefix,
        report=IGNORE_FILE,
    )


def _shown(path: Path, top: Path) -> str:
    return path.relative_to(top).as_posix() if path.is_relative_to(top) else str(path)


def _top(repo: Repo, path: str) -> str:
    """A root-relative path relative to the work tree's top."""
    return f"{repo.prefix}/{path}" if repo.prefix else path


def _revive(repo: Repo, ignored: Sequence[str], negations: Sequence[Rule]) -> _Ignored:
    """Decide each ignored path with the combined chain: a file or directory that a ``!``
    line decides comes back (a directory: what the chain keeps under it), as in git with
    the ``.konduktorignore`` lines appended to the ``.gitignore`` files.

    git lists a path as ignored because a pattern matches it or a directory above it
    (one holding tracked files), so only where a ``.konduktorignore``'s ``!`` line
    (one of *negations*) matches one of those can the combined chain decide otherwise;
    the other paths stay out without asking it."""
    found = _Ignored(_combined_chain(repo, fallback=True), negations)
    may = _Negations(negations)
    for entry in ignored:
        path, is_dir = entry.rstrip("/"), entry.endswith("/")
        if not may.touch(path, is_dir):
            found.kept.append(entry)
            continue
        rule = found.chain.decide(_top(repo, path), is_dir)
        if rule is not None and not rule.negate:
            found.kept.append(entry)
            found.excluded.append((entry, rule))
        elif is_dir:
            _revive_tree(repo, path, found)
        else:  # no rule at all: the one git saw was above it, and a `!` line undid that
            why = rule or found.chain.reincluded_by(_top(repo, path)) or "untracked"
            found.revived.append((path, why))
    return found


class _Negations:
    """Whether some ``!`` rule matches a path or a directory above it (memoized by
    directory: the ignored paths of a tree share most of theirs)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = rules
        self.dirs: dict[str, bool] = {"": False}

    def touch(self, path: str, is_dir: bool) -> bool:
        return self._matches(path, is_dir) or self._dir(path.rpartition("/")[0])

    def _dir(self, directory: str) -> bool:
        known = self.dirs.get(directory)
        if known is None:
            parent = directory.rpartition("/")[0]
            known = self.dirs[directory] = self._matches(directory, True) or self._dir(parent)
        return known

    def _matches(self, path: str, is_dir: bool) -> bool:
        return any(
            r.matches(path, is_dir)
            for r in self.rules
            if not r.base or path.startswith(f"{r.base}/")
        )


def _revive_tree(repo: Repo, directory: str, found: _Ignored) -> None:
    """Walk a re-included directory git did not look inside, deciding by the chain."""
    children = _scan(repo.root, directory)
    if any(child.name == ".git" for child in children):
        found.nested.append(directory)
        return
    for child in children:
        path = f"{directory}/{child.name}"
        is_dir = child.is_dir(follow_symlinks=False)
        rule = found.chain.decide(_top(repo, path), is_dir)
        if rule is not None and not rule.negate:
            found.excluded.append((f"{path}/" if is_dir else path, rule))
        elif is_dir:
            _revive_tree(repo, path, found)
        else:
            why = rule or found.chain.reincluded_by(_top(repo, path)) or "untracked"
            found.revived.append((path, why))


# -- what .gitignore keeps out ---------------------------------------------------------------

KEPT_OUT_FILES = 100  # above this many gitignored files, or
KEPT_OUT_BYTES = 10_000_000  # bytes, launch and ls-files tell the user what stays out
# Looking inside ignored directories (a .venv, a __pycache__ beside every module) stops
# after this many files sized or directories listed: a few ms, told as "at least".
_LOOK_AT_MOST = 2_000


@dataclass(frozen=True)
class KeptOut:
    """The untracked files ``.gitignore`` (git's excludes) keeps out of what ships:
    ``largest`` are the biggest entries as git names them (a directory excluded as a
    whole ends with ``/``), with their bytes. Looking inside directories stops after a
    while: then ``complete`` is false and the figures are lower bounds."""

    root: Path
    files: int
    bytes: int
    largest: tuple[tuple[str, int], ...]
    complete: bool = True

    def warning(self) -> str | None:
        """One line for the user, when more than the thresholds stay out."""
        small = self.files <= KEPT_OUT_FILES and self.bytes <= KEPT_OUT_BYTES
        if small and self.complete:  # not complete: more than could be looked at
            return None
        some, seen = ("", "") if self.complete else ("at least ", " seen")
        top = ", ".join(f"{path} ({units.size(n)})" for path, n in self.largest)
        return (
            f"{self.root}: .gitignore keeps {some}{self.files} untracked file(s) "
            f"({some}{units.size(self.bytes)}) out of what ships, the largest{seen} {top}; "
            f"to ship some, re-include them with `!pattern` lines in {IGNORE_FILE}"
        )


def _count_kept_out(root: Path, entries: Sequence[str]) -> KeptOut:
    """Files first (one lstat each), then directories, shallow ones first (a data/ rather
    than the caches deep in the tree), while the budget lasts."""
    budget = [_LOOK_AT_MOST]
    sized = []
    files = total = 0
    for entry in sorted(entries, key=lambda e: (e.endswith("/"), e.count("/"))):
        n, size = _count(os.path.join(root, entry), budget)
        files, total = files + n, total + size
        if n:
            sized.append((entry, size))
    largest = tuple(sorted(sized, key=lambda item: -item[1])[:3])
    return KeptOut(root, files, total, largest, complete=budget[0] >= 0)


def _count(path: str, budget: list[int]) -> tuple[int, int]:
    """Files and bytes at *path* (a file, or a directory walked without following links);
    inside a directory, each file sized and directory listed takes one from *budget*
    (below 0: spent before the walk ended)."""
    if path.endswith("/"):
        pending, files, total = [path], 0, 0
    else:
        with contextlib.suppress(OSError):
            return 1, os.lstat(path).st_size
        return 0, 0
    while pending and budget[0] > 0:
        budget[0] -= 1
        try:
            children = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for child in children:
            if child.is_dir(follow_symlinks=False):
                pending.append(child.path)
            elif budget[0] > 0:
                budget[0] -= 1
                files += 1
                with contextlib.suppress(OSError):
                    total += child.stat(follow_symlinks=False).st_size
            else:
                budget[0] = -1
                return files, total
    if pending:
        budget[0] = -1
    return files, total


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


def _from_commit(repo: Repo, commit: str, why: bool) -> Selection:
    entries = list(repo.tree_entries(commit))
    ignore_files = {
        posixpath.dirname(e.path): e
        for e in entries
        if posixpath.basename(e.path) == IGNORE_FILE and e.mode != MODE_GITLINK
    }

    def read(directory: str) -> bytes | None:
        entry = ignore_files.get(directory)
        if entry is not None and entry.mode == MODE_LINK:
            raise SymlinkedIgnoreFile(entry.path)  # as in the work tree, where git skips it
        return repo.blob(entry.oid) if entry else None

    chains = (IgnoreChain(IGNORE_FILE, read),)
    out = _Collector(repo.root, why, commit)
    out.warnings.extend(_ignore_files_above(repo, [e.path for e in entries]))
    lfs = any(
        posixpath.basename(e.path) == ".gitattributes" and b"filter=lfs" in repo.blob(e.oid)
        for e in entries
    )
    for entry in entries:
        kept, rule = out.screen(entry.path, chains)
        if not kept:
            continue
        if lfs and repo.attribute(entry.path, "filter", commit) == "lfs":
            out.warn(f"{entry.path}: commit layers hold the git-lfs pointer, not the content")
        if entry.mode == MODE_GITLINK:
            log.info("%s: %s", entry.path, _SUBMODULE_IN_COMMIT)
            out.skip_tree(entry.path, _SUBMODULE_IN_COMMIT)
        elif entry.mode == MODE_LINK:
            target = os.fsdecode(repo.blob(entry.oid))
            out.add_link(entry.path, target, rule or "tracked", oid=entry.oid)
        else:
            file = Entry(entry.path, "file", entry.mode == MODE_EXEC, oid=entry.oid)
            out.add(file, rule or "tracked")
    out.warnings.extend(chains[0].warnings)  # patterns matching nothing: told for the work tree
    out.skip_excluded_dirs(chains[0])
    return out.result(commit=commit, repo=repo)


_SUBMODULE_IN_COMMIT = "submodule contents are not part of commit layers"


# -- plain directory -------------------------------------------------------------------------


def _from_directory(root: Path, why: bool) -> Selection:
    """Each directory's ``.konduktorignore`` lines count as appended to its ``.gitignore``."""
    combined = IgnoreChain(
        ".gitignore",
        _fs_read(root, ".gitignore"),
        more=((IGNORE_FILE, _fs_read(root, IGNORE_FILE)),),
        report=IGNORE_FILE,
    )
    chains = (combined,)
    out = _Collector(root, why)
    seen: list[str] = []
    pending = [""]
    while pending:
        directory = pending.pop()
        for child in _scan(root, directory):
            rel = posixpath.join(directory, child.name) if directory else child.name
            is_dir = child.is_dir(follow_symlinks=False)
            if not is_dir:
                seen.append(rel)
            kept, rule = out.screen(rel, chains, is_dir)
            if kept and is_dir:
                pending.append(rel)
            elif kept:
                out.add_from_disk(rel, rule or "untracked")
    out.ignore_warnings(combined, seen)
    return out.result()


def _scan(root: Path, directory: str) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(os.path.join(root, directory)))
    except OSError as exc:
        raise SelectionError(f"cannot list {root / directory}: {exc.strerror}") from exc


# -- explain ---------------------------------------------------------------------------------


def explain(root: Path, paths: Sequence[str], *, commit: str | None = None) -> list[Verdict]:
    """For each root-relative path: does it ship (from the work tree, or *commit*'s tree),
    and which rule decided.

    A lookup into one selection pass (``select(root, commit=commit, why=True)``). A path
    the pass never looked at is explained by what it did look at: the rule over a
    directory above it, else git's own excludes (``git check-ignore``); a directory ships
    when a file under it does. A path that does not exist (in the work tree, or in
    *commit*) or lies outside *root* (``../x``) gets a verdict with an ``error``.
    """
    selection = select(root, commit=commit, why=True)
    assert selection.reasons is not None  # why=True always records
    return [_lookup(selection, selection.reasons, path) for path in paths]


def pick(root: Path, paths: Sequence[str], *, commit: str | None = None) -> Listing:
    """The files that ship from *root* (its work tree, or *commit*'s tree) and are named by
    *paths* (root-relative, ``.`` for all) or lie under one of them, as ``git ls-files
    PATH...`` picks them. A path that exists but ships nothing adds nothing, as in git; one
    that does not exist, or lies outside *root*, adds an error (:attr:`Verdict.error`)."""
    selection = select(root, commit=commit, why=True)
    assert selection.reasons is not None  # why=True always records
    verdicts = [_lookup(selection, selection.reasons, path) for path in paths]
    named = {v.path for v in verdicts if v.error is None}
    under = tuple(_dir_prefix(path) for path in named)
    picked = (e.path for e in selection.entries if e.path in named or e.path.startswith(under))
    errors = tuple(v.error for v in verdicts if v.error is not None)
    return Listing(tuple(picked), errors, selection.warnings)


def _lookup(selection: Selection, reasons: Reasons, path: str) -> Verdict:
    if _outside(path):
        return _outside_verdict(selection.root, path)
    if _has_git_component(path):
        return Verdict(path, False, ".git")
    kind = _kind(selection, reasons, path)
    if kind == "directory":
        return _directory(selection, reasons, path)
    decided = reasons.decided.get(path)
    if decided is not None:
        return Verdict(path, decided[0], str(decided[1]))
    if kind is None:
        return _missing(selection.root, reasons.commit, path)
    unseen = _above(path, reasons.trees, reasons.unlisted) or _git_excludes(
        selection, reasons, path
    )
    return Verdict(path, False, unseen or "not a file git lists")


def _outside(path: str) -> bool:
    normal = posixpath.normpath(path)
    return normal == ".." or normal.startswith(("../", "/"))


def _outside_verdict(root: Path, path: str) -> Verdict:
    if not os.path.lexists(os.path.join(root, path)):
        return Verdict(path, False, "not found", f"{path} does not exist; check the path")
    return Verdict(
        path,
        False,
        "outside the synced directory",
        f"{path} is outside the synced directory {root}; give --root a directory that holds it",
    )


def _missing(root: Path, commit: str | None, path: str) -> Verdict:
    if commit is None:
        return Verdict(path, False, "not found", f"{path} does not exist in {root}; check the path")
    error = (
        f"{path} is not in commit {commit[:12]}; check the path, or drop --commit for the work tree"
    )
    return Verdict(path, False, f"not in commit {commit[:12]}", error)


def _kind(selection: Selection, reasons: Reasons, path: str) -> Literal["directory", "file"] | None:
    """What *path* is: a directory, a file (or link, FIFO, ...), or nothing (None)."""
    if reasons.commit is not None:  # the tree's every path was decided
        prefix = _dir_prefix(path)
        if any(p.startswith(prefix) for p in reasons.decided):
            return "directory"
        return "file" if path in reasons.decided else None
    full = os.path.join(selection.root, path)
    if os.path.isdir(full) and not os.path.islink(full):
        return "directory"
    return "file" if os.path.lexists(full) else None


def _dir_prefix(path: str) -> str:
    return "" if path == "." else f"{path}/"


def _directory(selection: Selection, reasons: Reasons, path: str) -> Verdict:
    """A directory ships when a file under it does. If none does, the reason recorded for
    the path (an excluded directory or gitlink, a tracked file it replaced), else for a
    directory above it, else git's excludes."""
    prefix = _dir_prefix(path)
    if any(e.path.startswith(prefix) for e in selection.entries):
        return Verdict(path, True, "directory")
    decided = reasons.decided.get(path)
    unseen = str(decided[1]) if decided else _above(path, reasons.trees)
    unseen = unseen or _git_excludes(selection, reasons, path)
    return Verdict(path, False, unseen or "directory with no file that ships")


def _above(path: str, *rules: dict[str, Rule | str]) -> str | None:
    """The rule recorded for the nearest directory above *path*, if any."""
    while "/" in path:
        path = path.rpartition("/")[0]
        for by_dir in rules:
            if path in by_dir:
                return str(by_dir[path])
    return None


def _git_excludes(selection: Selection, reasons: Reasons, path: str) -> str | None:
    """The .gitignore (or exclude) rule that ignores *path* in the work tree, as
    file:line:pattern, if any."""
    if selection.repo is None or reasons.commit is not None:
        return None
    stdin = os.fsencode(path)
    try:
        out = run_git(["check-ignore", "-v", "-z", "--stdin"], selection.root, stdin=stdin)
    except GitError:  # exit 1: not ignored
        return None
    source, line, pattern, _ = out.split(b"\0", 3)
    if pattern.startswith(b"!"):  # -v also reports a re-include that decided "not ignored"
        return None
    shown = _per_directory(selection.repo, os.fsdecode(source))
    return f"{shown}:{line.decode()}:{os.fsdecode(pattern)}"


def _per_directory(repo: Repo, source: str) -> str:
    """git names a ``.gitignore`` relative to the work tree's top; the selection names it
    relative to the sync root (``../.gitignore`` above it), as its own rules are named."""
    if not repo.prefix or posixpath.basename(source) != ".gitignore" or os.path.isabs(source):
        return source
    return posixpath.relpath(source, repo.prefix)
