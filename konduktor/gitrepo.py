"""The git repository around a sync root: objects through pygit2, status through git.

Work-tree status comes from ``git status --porcelain=v2``: it is git's own
answer (excludes, stat cache, submodules) and git writes the refreshed stat
cache back to the index, so the next call is cheap. pygit2's status never
writes it back and rehashes every file after a fresh clone or ``touch``.
Everything else (index, trees, blobs, history) is read through pygit2.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import posixpath
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from konduktor.cache import atomic_write, konduktor_home
from konduktor.errors import GitError, UsageError

MODE_LINK = 0o120000
MODE_GITLINK = 0o160000
MODE_EXEC = 0o100755


def run_git(args: Sequence[str], cwd: Path, *, stdin: bytes | None = None) -> bytes:
    """Run git and return its stdout; raise GitError with the command, exit code and stderr."""
    cmd = ["git", *args]
    try:
        done = subprocess.run(
            cmd, cwd=cwd, env=_git_env(), input=stdin, capture_output=True, check=False
        )
    except FileNotFoundError as exc:
        raise GitError("git is not installed or not on PATH; install git") from exc
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        raise GitError(f"`{' '.join(cmd)}` failed in {cwd} (exit {done.returncode}): {stderr}")
    return done.stdout


# Variables that git exports inside hooks point at the outer repository: drop them,
# but keep the ones that configure identity and config lookup.
_KEEP_ENV = frozenset(
    {
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_NOSYSTEM",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_AUTHOR_DATE",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "GIT_COMMITTER_DATE",
        "GIT_SSH",  # how to reach remotes, not where the repository is
        "GIT_SSH_COMMAND",
    }
)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    path: str  # relative to the sync root
    mode: int
    oid: str


@dataclass(frozen=True, slots=True)
class Change:
    """Modes of a changed path in HEAD, the index and the work tree (0: absent)."""

    head: int
    index: int
    work: int
    untracked: bool = False  # listed by git as untracked and not ignored


@dataclass
class Status:
    """Work-tree changes against HEAD under the sync root, paths relative to it.

    Untracked files (not ignored by git's excludes) are changes absent from HEAD and
    the index. Asked for (``status(ignored=True)``), ``ignored`` holds the untracked
    paths git's excludes ignore, as git's "matching" mode lists them: a directory
    that a pattern excludes as one ``dir/`` entry (git does not look inside), other
    files one by one.
    """

    changes: dict[str, Change] = field(default_factory=dict)
    head: str | None = None  # the commit HEAD points at, None before the first commit
    raw: bytes = b""  # git's output, a fingerprint of the index and work tree against HEAD
    started_ns: int = 0  # wall clock when git started looking: later changes are not in it
    ignored: list[str] | None = None  # None: not asked for

    def deleted(self, path: str) -> bool:
        change = self.changes.get(path)
        return change is not None and change.work == 0

    def untracked(self) -> list[str]:
        return [p for p, c in self.changes.items() if c.untracked]


class Repo:
    """A git repository seen from one sync root inside its work tree (or a bare repo)."""

    def __init__(self, repo: pygit2.Repository, root: Path) -> None:
        self.pygit = repo
        self.root = root
        top = repo.workdir
        self.workdir = Path(top).resolve() if top else None
        prefix = root.resolve().relative_to(self.workdir).as_posix() if self.workdir else ""
        self.prefix = "" if prefix == "." else prefix

    @classmethod
    def discover(cls, root: Path) -> Repo | None:
        """The repository whose work tree holds *root*, or None outside git."""
        found = pygit2.discover_repository(str(root))
        if found is None:
            return None
        repo = pygit2.Repository(found)
        if repo.workdir is None:
            return cls(repo, root) if Path(found).resolve() == root.resolve() else None
        return cls(repo, root)

    # -- helpers -----------------------------------------------------------------------------

    def _rel(self, repo_path: str) -> str | None:
        """A repository-relative path made relative to the sync root, None if outside it."""
        if not self.prefix:
            return repo_path
        if repo_path.startswith(self.prefix + "/"):
            return repo_path[len(self.prefix) + 1 :]
        return None

    def _pathspec(self) -> list[str]:
        return ["--", f":(top,literal){self.prefix}"] if self.prefix else []

    # -- revisions ---------------------------------------------------------------------------

    def resolve(self, rev: str) -> str:
        """The commit id that *rev* names, or UsageError saying it does not resolve."""
        try:
            obj = self.pygit.revparse_single(rev)
            commit = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError) as exc:
            if self.pygit.head_is_unborn:
                raise UsageError(
                    f"--commit {rev!r} does not name a commit: the repository {self.pygit.path} "
                    "has no commits yet; commit first, or leave out --commit to snapshot the "
                    "work tree"
                ) from exc
            raise UsageError(
                f"--commit {rev!r} does not name a commit in {self.pygit.path}; "
                "check it with `git rev-parse --verify`"
            ) from exc
        return str(commit.id)

    def repo_id(self, commit: str) -> str:
        """A stable id from the root commit(s) reachable from *commit*: same in every clone.

        Finding the roots walks the whole history (`git rev-list`, seconds on the largest
        repositories), so the answer is cached per commit. A shallow clone cannot see the
        real roots: its id comes from the shallow boundary, so it shares no base layers with
        full clones.
        """
        cache = _RepoIdCache()
        found = cache.get(commit)
        if found is None:
            out = self._git("rev-list", "--max-parents=0", commit, "--")
            roots = sorted(set(out.decode().split()))
            found = hashlib.sha256("\n".join(roots).encode()).hexdigest()[:16]
            cache.put(commit, found)
        return found

    # -- index and trees ---------------------------------------------------------------------

    def _git(self, *args: str) -> bytes:
        return run_git(args, self.workdir or Path(self.pygit.path))

    def _listing(self, out: bytes) -> Iterator[IndexEntry]:
        """Parse `ls-files --stage -z` and `ls-tree -z` records."""
        for mode, oid, path in _LISTING.findall(out):
            rel = self._rel(os.fsdecode(path))
            if rel is not None:
                yield IndexEntry(rel, int(mode, 8), oid.decode())

    def index_entries(self) -> Iterator[IndexEntry]:
        """Index entries under the sync root (stage 0, or the first stage of a conflict)."""
        seen = None
        for entry in self._listing(self._git("ls-files", "--stage", "-z", *self._pathspec())):
            if entry.path != seen:
                seen = entry.path
                yield entry

    def tree_entries(self, commit: str) -> Iterator[IndexEntry]:
        """Every blob, link and gitlink of *commit*'s tree under the sync root."""
        paths = ["--", self.prefix + "/"] if self.prefix else []
        return self._listing(self._git("ls-tree", "-r", "-z", "--full-tree", commit, *paths))

    def tracked_named(self, name: str) -> list[str]:
        """The index's paths under the sync root whose file name is *name*."""
        spec = f":(top,glob){self.prefix}/**/{name}" if self.prefix else f":(top,glob)**/{name}"
        out = self._git("ls-files", "-z", "--", spec)
        found = (self._rel(os.fsdecode(p)) for p in out.split(b"\0") if p)
        return [p for p in found if p is not None]

    def exclude_files(self) -> list[Path]:
        """git's excludes below the per-directory files, weakest first: ``core.excludesFile``
        (or its default under XDG_CONFIG_HOME) and ``info/exclude``."""
        try:
            configured = os.fsdecode(self._git("config", "--path", "core.excludesFile").strip())
        except GitError:  # unset
            configured = ""
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        user = Path(configured) if configured else Path(xdg) / "git" / "ignore"
        info = os.fsdecode(self._git("rev-parse", "--git-path", "info/exclude").strip())
        return [user, (self.workdir or Path(self.pygit.path)) / info]

    def blobs(self) -> BlobReader:
        return BlobReader(self.workdir or Path(self.pygit.path))

    def blob(self, oid: str) -> bytes:
        return self.pygit[oid].read_raw()

    @functools.cached_property
    def _attributes_text(self) -> bytes:
        """Every .gitattributes in the index (anywhere in the repository) and info/attributes."""
        out = self._git("ls-files", "--stage", "-z", "--", ":(top,glob)**/.gitattributes")
        chunks = [self.blob(oid.decode()) for _, oid, _ in _LISTING.findall(out)]
        info = Path(self.pygit.path) / "info" / "attributes"
        if info.exists():
            chunks.append(info.read_bytes())
        return b"\n".join(chunks)

    def uses_lfs(self) -> bool:
        """Whether any attributes route files through git-lfs."""
        return b"filter=lfs" in self._attributes_text

    def content_filters(self) -> bool:
        """Whether work-tree bytes may differ from blob bytes (autocrlf, eol, filters, ...)."""
        try:
            autocrlf = str(self.pygit.config["core.autocrlf"])
        except KeyError:
            autocrlf = "false"
        if autocrlf.lower() not in ("false", "0", "no", "off"):
            return True
        text = self._attributes_text
        words = (b"filter", b"text", b"eol", b"ident", b"working-tree-encoding", b"crlf")
        return any(w in text for w in words)

    def attribute(self, rel: str, name: str, commit: str | None = None) -> str | None:
        """A git attribute of *rel*: from the work tree and index, or from *commit* alone."""
        repo_path = f"{self.prefix}/{rel}" if self.prefix else rel
        if commit is None:
            value = self.pygit.get_attr(repo_path, name)
        else:
            flags = pygit2.enums.AttrCheck.INDEX_ONLY | pygit2.enums.AttrCheck.INCLUDE_COMMIT
            value = self.pygit.get_attr(repo_path, name, flags, commit)
        return value if isinstance(value, str) else None

    # -- work tree ---------------------------------------------------------------------------

    def status(self, *, ignored: bool = False) -> Status:
        """git's view of the work tree under the sync root, compared with HEAD; with
        *ignored*, also the untracked paths its excludes ignore (``Status.ignored``)."""
        started_ns = time.time_ns()
        out = self._git(
            "status",
            "--porcelain=v2",
            "-z",
            "--branch",
            "--untracked-files=all",
            "--ignore-submodules=none",
            *(["--ignored=matching"] if ignored else []),
            *self._pathspec(),
        )
        status = Status(raw=out, started_ns=started_ns, ignored=[] if ignored else None)
        records = iter(out.split(b"\0"))
        for record in records:
            kind = record[:1]
            if record.startswith(b"# branch.oid ") and record[13:] != b"(initial)":
                status.head = record[13:].decode()
            elif kind == b"!" and status.ignored is not None:
                rel = self._rel(os.fsdecode(record[2:]))
                if rel is not None:
                    status.ignored.append(rel)
            elif kind == b"?":  # untracked; may follow a staged deletion of the same path
                rel = self._rel(os.fsdecode(record[2:]))
                if rel is not None:
                    head = status.changes[rel].head if rel in status.changes else 0
                    status.changes[rel] = Change(head, 0, 0o100644, untracked=True)
            elif kind in _FIELDS:
                fields = record.split(b" ", _FIELDS[kind])
                modes = [f.decode() for f in fields[3:6]]
                if kind == b"u":  # unmerged: stage 2 ("ours") stands for HEAD and the index
                    modes = [fields[4].decode(), fields[4].decode(), fields[6].decode()]
                self._add_change(status, fields[-1], *modes)
                if kind == b"2":  # a rename's origin: in HEAD, gone from the index
                    self._add_change(status, next(records), modes[0], "000000", "000000")
        return status

    def _add_change(self, status: Status, path: bytes, head: str, index: str, work: str) -> None:
        rel = self._rel(os.fsdecode(path))
        if rel is not None:
            status.changes[rel] = Change(int(head, 8), int(index, 8), int(work, 8))


class _RepoIdCache:
    """commit -> repo id, for the most recent commits (commit ids are unique everywhere)."""

    _KEEP = 1000

    def __init__(self) -> None:
        self.path = konduktor_home() / "cache" / "repo-ids.json"
        try:
            self.ids: dict[str, str] = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            self.ids = {}

    def get(self, commit: str) -> str | None:
        return self.ids.get(commit)

    def put(self, commit: str, repo_id: str) -> None:
        self.ids[commit] = repo_id
        kept = dict(list(self.ids.items())[-self._KEEP :])
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
            atomic_write(self.path, json.dumps(kept).encode())


# `<mode> <oid> <stage>\t<path>` (ls-files --stage) or `<mode> <type> <oid>\t<path>` (ls-tree)
_LISTING = re.compile(rb"(\d+) (?:[a-z]+ )?([0-9a-f]{40,64})(?: \d)?\t([^\0]*)\0")

# Fields before the path in `git status --porcelain=v2` records: ordinary, rename, unmerged.
_FIELDS = {b"1": 8, b"2": 9, b"u": 10}


def is_within(target: str, link_dir: str) -> bool:
    """Whether a symlink at *link_dir*/<name> with *target* stays inside the root."""
    if target.startswith("/"):
        return False
    joined = posixpath.normpath(posixpath.join(link_dir, target))
    return not (joined == ".." or joined.startswith("../"))


def _git_env() -> dict[str, str]:
    """The environment without the outer repository's variables, and with git's optional
    locks off: konduktor only reads, so `git status` must not rewrite the user's index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEEP_ENV}
    env["GIT_OPTIONAL_LOCKS"] = "0"
    return env


class BlobReader:
    """Streams blobs out of one long-lived `git cat-file --batch` (libgit2 reads slowly from
    delta-heavy packs, and loads whole blobs into memory)."""

    def __init__(self, cwd: Path) -> None:
        self._proc = subprocess.Popen(
            ["git", "cat-file", "--batch"],
            cwd=cwd,
            env=_git_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._in = self._proc.stdin
        self._out = self._proc.stdout

    def open(self, oid: str) -> tuple[int, Iterator[bytes]]:
        """The blob's size and an iterator over its bytes, which must be consumed fully."""
        self._in.write(oid.encode() + b"\n")
        self._in.flush()
        header = self._out.readline().split()
        if len(header) != 3 or header[1] != b"blob":
            raise GitError(
                f"object {oid} is missing from the repository (git cat-file: {header!r})"
            )
        size = int(header[2])
        return size, self._chunks(size)

    def _chunks(self, size: int) -> Iterator[bytes]:
        remaining = size
        while remaining:
            chunk = self._out.read(min(remaining, 1 << 20))
            if not chunk:
                raise GitError("git cat-file ended early")
            remaining -= len(chunk)
            yield chunk
        self._out.read(1)  # the newline after each object

    def close(self) -> None:
        self._in.close()
        self._out.close()
        self._proc.wait()

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
