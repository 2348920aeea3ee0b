"""The git pre-push hook: every pushed commit's base layer lands in the store.

``konduktor hooks install`` writes a ``pre-push`` script into the directory that
``git rev-parse --git-path hooks`` names (``core.hooksPath`` and linked worktrees
included). A hook already there is renamed ``pre-push.before-konduktor`` and
runs first, with the same arguments and input; its exit status still decides
the push. ``uninstall`` puts it back. The script is recognised as ours by its
:data:`MARKER` line.

How the script finds konduktor: it records the absolute path of the Python
that ran ``install`` and runs ``konduktor.cli`` with it, with the current
directory dropped from ``sys.path`` (``python -m`` would import a ``konduktor/``
directory of the repository being pushed instead). When that interpreter is
gone it runs ``konduktor`` from ``PATH``; when neither exists, or the
interpreter cannot import konduktor, it warns and lets the push go on.

On ``git push``, :func:`run` reads git's lines
(``<local ref> <local sha> <remote ref> <remote sha>``), skips deletions,
peels tags, and for each pushed tip commit and each sync root (the repository
root plus ``hooks.sync_roots``, skipped when the commit has no such directory)
computes the base key (no file read), asks the store for it (one stat) and
builds and uploads the layer from the commit's tree only when it is missing.
Keys are those of ``konduktor snapshot``, so a clean-tree launch at a pushed
commit uploads nothing.

It never blocks a push unless ``hooks.strict`` is set: a failure comes back
as one line in :attr:`RunResult.failure`. The work gets ``hooks.timeout``
seconds; then it is interrupted, as Ctrl-C would, so that an upload in flight
is aborted and scratch files are removed, and the caller exits without waiting
for threads still stuck in a store that hangs (which would otherwise hold the push). With
``hooks.background`` it runs in a detached process logging to
``~/.konduktor/logs/pre-push.log`` and the push returns at once. git runs
hooks with ``GIT_*`` variables that describe the pushing repository: they are
read once, to find the work tree (:func:`_work_tree`); every other git command
runs there through :func:`konduktor.gitrepo.run_git`, which drops them. The
chained hook gets them untouched.
"""

from __future__ import annotations

import datetime
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pygit2

from konduktor import config, remote, snapshot
from konduktor.cache import konduktor_home
from konduktor.errors import GitError, KonduktorError, UsageError
from konduktor.gitrepo import Repo, run_git
from konduktor.storage import open_store

log = logging.getLogger(__name__)

HOOK = "pre-push"
CHAINED = HOOK + ".before-konduktor"
MARKER = "# konduktor pre-push hook: written by `konduktor hooks install`"
LOG_NAME = "pre-push.log"
_PRE_COMMIT = "PRE_COMMIT_TO_REF"
# Runs konduktor's CLI without the current directory on sys.path; warns when konduktor
# cannot be imported, so that a broken installation never blocks a push.
BOOT = """import sys
sys.path[:] = [p for p in sys.path if p]
try:
    from konduktor.cli import main
except ImportError as exc:
    print(f"warning: konduktor pre-push: skipped, {exc} in {sys.executable}; "
          "reinstall konduktor, then run konduktor hooks install --force", file=sys.stderr)
    sys.exit(0)
main()
"""

_SCRIPT = """#!/bin/sh
{marker}
# `konduktor hooks uninstall` removes it and restores the hook it replaced.
# That hook, renamed {chained}, runs first; its exit status still decides the push.
python={python}
chained="$(dirname "$0")/{chained}"
input=$(cat)
feed() {{ if [ -n "$input" ]; then printf '%s\\n' "$input"; fi; }}
if [ -x "$chained" ]; then
    feed | "$chained" "$@" || exit
fi
if [ -x "$python" ]; then
    feed | "$python" -c {boot} hooks run "$@"
elif command -v konduktor >/dev/null 2>&1; then
    feed | konduktor hooks run "$@"
else
    echo "warning: konduktor pre-push: skipped, $python is gone and konduktor is not on PATH;" \\
        "reinstall konduktor, then run konduktor hooks install --force" >&2
fi
"""


def script(python: str) -> str:
    """The text of the pre-push hook that runs konduktor with the interpreter *python*."""
    quote = shlex.quote
    return _SCRIPT.format(marker=MARKER, chained=CHAINED, python=quote(python), boot=quote(BOOT))


# -- install, uninstall, status -------------------------------------------------------------


def hooks_dir(where: Path) -> Path:
    """The hooks directory of the repository around *where* (``core.hooksPath`` honoured)."""
    try:
        out = run_git(["rev-parse", "--path-format=absolute", "--git-path", "hooks"], where)
    except GitError as exc:
        raise GitError(f"{exc}; run this inside the clone you push from") from exc
    return Path(os.fsdecode(out.rstrip(b"\n")))


def is_ours(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:  # absent, or a directory: not a hook of ours either way
        return False
    return MARKER.encode() in head.splitlines()


@dataclass(frozen=True)
class Installed:
    hook: Path
    chained: Path | None  # the hook that was there before ours, now run first by ours
    changed: bool  # False: our hook was there already and --force was not given


def install(where: Path, *, force: bool = False, python: str = sys.executable) -> Installed:
    """Write our pre-push hook, keeping a foreign one as :data:`CHAINED`; idempotent.

    *force* rewrites our own hook (say, to record another interpreter) and lets a
    foreign hook take the chained place when an older one holds it.
    """
    directory = hooks_dir(where)
    hook, chained = directory / HOOK, directory / CHAINED
    kept = chained if os.path.lexists(chained) else None
    if is_ours(hook):
        if not force:
            return Installed(hook, kept, changed=False)
    elif os.path.lexists(hook):
        if kept and not force:
            raise UsageError(
                f"{hook} is not konduktor's, and {chained} (an older hook kept by konduktor) "
                "is in the way; move one of them away, or give --force to chain the current "
                f"hook and delete {chained}"
            )
        os.replace(hook, chained)
        kept = chained
    directory.mkdir(parents=True, exist_ok=True)
    _write_executable(hook, script(python))
    return Installed(hook, kept, changed=True)


def _write_executable(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.konduktor-tmp")
    temp.write_text(text)
    temp.chmod(0o755)
    os.replace(temp, path)


@dataclass(frozen=True)
class Uninstalled:
    hook: Path
    removed: bool  # False: there was no hook of ours
    restored: bool  # the chained hook is back in place


def uninstall(where: Path) -> Uninstalled:
    """Remove our hook and put back the one it chained; leave a foreign hook alone."""
    directory = hooks_dir(where)
    hook, chained = directory / HOOK, directory / CHAINED
    if not is_ours(hook):
        return Uninstalled(hook, removed=False, restored=False)
    if os.path.lexists(chained):
        os.replace(chained, hook)
        return Uninstalled(hook, removed=True, restored=True)
    hook.unlink()
    return Uninstalled(hook, removed=True, restored=False)


@dataclass(frozen=True)
class HookStatus:
    hook: Path
    installed: bool
    foreign: bool  # a pre-push hook that is not ours is in place
    chained: Path | None
    python: str | None  # the interpreter our hook runs
    python_found: bool


def status(where: Path) -> HookStatus:
    directory = hooks_dir(where)
    hook, chained = directory / HOOK, directory / CHAINED
    ours = is_ours(hook)
    python = _recorded_python(hook) if ours else None
    return HookStatus(
        hook,
        installed=ours,
        foreign=os.path.lexists(hook) and not ours,
        chained=chained if ours and os.path.lexists(chained) else None,
        python=python,
        python_found=python is not None and os.access(python, os.X_OK),
    )


def _recorded_python(hook: Path) -> str | None:
    for line in hook.read_text().splitlines():
        if line.startswith("python="):
            return shlex.split(line[len("python=") :])[0]
    return None


# -- running on git push ---------------------------------------------------------------------


def pushed_commits(lines: Iterable[str]) -> list[str]:
    """The local object ids of git's pre-push lines, deletions left out, in order, once each."""
    found: dict[str, None] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise UsageError(
                f"line {number} of the pre-push input is {line.strip()!r}, not "
                "'<local ref> <local sha> <remote ref> <remote sha>'; run this hook from git"
            )
        if fields[1].strip("0"):  # all zeros: a deletion
            found[fields[1]] = None
    return list(found)


def _read_input(stdin: IO[str], environ: Mapping[str, str]) -> str:
    if _PRE_COMMIT in environ:
        return ""
    if stdin.isatty():
        raise UsageError("`konduktor hooks run` reads git's pre-push input: let git run it")
    return stdin.read()


def _commits(text: str, environ: Mapping[str, str]) -> list[str]:
    """From git's input, or from the pre-commit framework, which reads that input itself and
    passes the first pushed commit on."""
    if _PRE_COMMIT in environ:
        to_ref = environ[_PRE_COMMIT]
        return [to_ref] if to_ref.strip("0") else []
    return pushed_commits(text.splitlines())


@dataclass(frozen=True)
class PushedLayer:
    commit: str
    root: str  # the sync root, relative to the repository root ("." for the root itself)
    uploaded_bytes: int  # compressed bytes sent; 0 when the store had the layer


@dataclass(frozen=True)
class RunResult:
    layers: tuple[PushedLayer, ...]  # done before any failure or time-out
    failure: str | None = None  # one line: what went wrong
    strict: bool = False  # the failure must block the push
    timed_out: bool = False  # interrupted and cleaned up; threads may hang in the store
    log: Path | None = None  # background mode: where the detached run writes

    @property
    def exit_code(self) -> int:
        """What the hook exits with: 1 blocks the push (a failure under hooks.strict)."""
        return 1 if self.failure is not None and self.strict else 0

    @property
    def verdict(self) -> str | None:
        """The one line the push shows about a failure, if any."""
        if self.failure is None:
            return None
        if not self.strict:
            return f"warning: konduktor pre-push: {self.failure}; the push goes on"
        return (
            f"error: konduktor pre-push: {self.failure}; the push is blocked (hooks.strict: "
            "true): fix it, or push with --no-verify"
        )


def run(
    cwd: Path,
    stdin: IO[str],
    environ: Mapping[str, str] = os.environ,
    *,
    foreground: bool = False,
) -> RunResult:
    """The pre-push hook's work for a push from the repository at *cwd*; never raises.

    *foreground* ignores ``hooks.background`` (the detached run itself sets it).
    """
    done: list[PushedLayer] = []
    strict = False
    try:
        cfg = config.load()
        strict, timeout = cfg.hooks.strict, cfg.hooks.timeout
        text = _read_input(stdin, environ)
        commits = _commits(text, environ)
        if commits and cfg.hooks.background and not foreground:
            return RunResult((), log=_detach(cwd, text, len(commits)))
        if commits and not _within(timeout, lambda: _snapshot(cwd, commits, cfg, done)):
            return RunResult(
                tuple(done),
                f"gave up after {timeout:g} s (hooks.timeout); raise it, or set "
                "hooks.background: true to snapshot after the push",
                strict,
                timed_out=True,
            )
    except Exception as exc:  # a push shows one line, never a traceback
        return RunResult(tuple(done), _describe(exc), strict)
    return RunResult(tuple(done))


def _describe(exc: Exception) -> str:
    if isinstance(exc, KonduktorError):
        return str(exc)
    log.debug("the pre-push snapshot failed", exc_info=exc)
    return f"unexpected {type(exc).__name__}: {exc}; please report it"


class _TimedOut(BaseException):
    """hooks.timeout passed: raised in the main thread where the work is, so that its
    cleanups run (an upload in flight is aborted, scratch files are removed)."""


GRACE_SECONDS = 10.0  # how long those cleanups may take before they are cut short too


def _within(seconds: float, work: Callable[[], None]) -> bool:
    """Run *work* for up to *seconds* (a SIGALRM interrupts it then): False if it ran out
    of time. Exceptions it raises are raised here. Call it from the main thread."""

    def expire(signum: int, frame: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, GRACE_SECONDS)
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        try:
            work()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _TimedOut:
        return False
    finally:
        signal.signal(signal.SIGALRM, previous)
    return True


def _snapshot(cwd: Path, commits: list[str], cfg: config.Config, done: list[PushedLayer]) -> None:
    """Put the base layer of each commit and sync root that the store lacks into *done*."""
    top = _work_tree(cwd)
    url, options = cfg.store_url()
    store = open_store(url, options)
    repo = pygit2.Repository(str(top))
    level = cfg.compression_level
    for rev in commits:
        commit = _peel(repo, rev)
        for rel in dict.fromkeys((".", *cfg.hooks.sync_roots)):
            if commit is None or not _has_directory(commit, rel):
                continue
            root = top / rel
            key = snapshot.base_key(Repo(repo, root), str(commit.id), level)
            if store.stat(key.key) is not None:
                done.append(PushedLayer(str(commit.id), rel, 0))
                continue
            sent = remote.upload(root, store, commit=str(commit.id), level=level)
            done.append(PushedLayer(str(commit.id), rel, sent.uploaded_bytes))


def _work_tree(cwd: Path) -> Path:
    """The top of the work tree being pushed from.

    git runs the hook where it was run, which is outside the work tree with
    `git --git-dir=... --work-tree=... push`, and then says where the repository
    is in GIT_DIR and GIT_WORK_TREE. This one command reads them; every later one
    runs at the top with all GIT_* variables dropped (run_git).
    """
    found = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, check=False
    )
    if found.returncode != 0:
        error = found.stderr.decode(errors="replace").strip()
        raise GitError(f"cannot find the work tree being pushed from {cwd}: {error}")
    return Path(os.fsdecode(found.stdout.rstrip(b"\n")))


def _peel(repo: pygit2.Repository, rev: str) -> pygit2.Commit | None:
    """The commit that a pushed object id names (tags peeled); None for a tag of a tree."""
    try:
        commit: pygit2.Commit = repo[rev].peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError):
        log.debug("%s is not a commit: nothing to snapshot", rev)
        return None
    return commit


def _has_directory(commit: pygit2.Commit, rel: str) -> bool:
    if rel == ".":
        return True
    try:
        return isinstance(commit.tree[rel], pygit2.Tree)
    except KeyError:
        log.debug("%s has no directory %s: no sync root there", commit.id, rel)
        return False


def _detach(cwd: Path, text: str, count: int) -> Path:
    """Hand git's input to a process of its own that outlives the push; return its log."""
    path = konduktor_home() / "logs" / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        out.write(f"{stamp} pid {os.getpid()}: {count} pushed commit(s) in {cwd}\n".encode())
        out.flush()
        child = subprocess.Popen(
            [sys.executable, "-c", BOOT, "hooks", "run", "--foreground"],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    assert child.stdin is not None
    child.stdin.write(text.encode())
    child.stdin.close()
    return path
