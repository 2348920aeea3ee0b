"""Real git repositories for tests, and git itself as the oracle for what ships.

The oracle for a sync root R inside a work tree (see DESIGN.md §3), run in R:

    T = ls-files --cached                                  (index)
      - ls-files --deleted                                 (tracked, gone from the work tree)
      - ls-files --cached --ignored --exclude-per-directory=.konduktorignore
    U = ls-files --others --exclude-standard, run in a copy of the work tree where each
        directory's .konduktorignore is appended to its .gitignore (the combined files:
        a `!` line of .konduktorignore re-includes what .gitignore excluded)
    ship = T + U

Without a `!` line in a .konduktorignore (and without one in a .gitignore deeper than
some .konduktorignore's excluding line) U is the untracked files git does not ignore
minus what .konduktorignore excludes.

Facts about git 2.39 this relies on (each checked by hand and by the tests):
- Without ``--directory``, ``--others --ignored`` lists every file under an
  excluded directory one by one, and ``--cached --ignored`` applies the
  "excluded directory" rule to tracked files as well (a file under ``build/``
  stays excluded even if a later ``!build/keep`` names it). So B needs no
  extra flags.
- ``--exclude-per-directory`` takes one name (the last one given wins) and,
  without ``--exclude-standard``, reads neither ``.gitignore``,
  ``.git/info/exclude`` nor ``core.excludesFile``: B is the ``.konduktorignore``
  rules alone.
- Per-directory files are read from the work tree (an edited, untracked or
  gitignored ``.konduktorignore`` applies; a deleted tracked one does not),
  except for skip-worktree entries, which are read from the index.
- ``git -C R`` applies per-directory files from the directories *above* R too,
  so oracle users must make sure no ``.konduktorignore`` sits above R
  (``.gitignore`` above R must apply, and does).
- ``--deleted`` reports only paths whose lstat() fails: a tracked file replaced
  by a directory or a FIFO is not "deleted" (nor is a skip-worktree entry missing from
  a sparse checkout), so :func:`git_oracle` drops the first by hand and
  refuses the second.
- FIFOs and sockets never appear in ``--others``.
- Gitlinks appear as the bare submodule path, and an untracked nested
  repository as ``path/`` (with a slash, even without ``--directory``):
  :func:`git_oracle` refuses both; such tests state their expectations.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from konduktor.selection import explain

KONDUKTORIGNORE = ".konduktorignore"

PINNED_IDENTITY = {
    "GIT_AUTHOR_NAME": "Konduktor Test",
    "GIT_AUTHOR_EMAIL": "test@konduktor.invalid",
    "GIT_AUTHOR_DATE": "2024-01-02T03:04:05+0000",
    "GIT_COMMITTER_NAME": "Konduktor Test",
    "GIT_COMMITTER_EMAIL": "test@konduktor.invalid",
    "GIT_COMMITTER_DATE": "2024-01-02T03:04:05+0000",
}

Content = str | bytes


class GitFailed(AssertionError):
    """A git command run by a test helper failed; the message carries git's stderr."""


def git(repo: Path, *args: str, stdin: bytes | None = None) -> bytes:
    """Run ``git -C repo *args`` with a pinned identity and return its stdout."""
    cmd = ["git", "-C", os.fspath(repo), *args]
    try:
        proc = subprocess.run(
            cmd, input=stdin, capture_output=True, check=True, env={**os.environ, **PINNED_IDENTITY}
        )
    except subprocess.CalledProcessError as exc:
        err = exc.stderr.decode(errors="replace").strip()
        raise GitFailed(f"{' '.join(cmd)} exited {exc.returncode}: {err}") from exc
    return proc.stdout


def write_files(root: Path, files: Mapping[str, Content]) -> None:
    """Write ``files`` under ``root`` byte for byte (str is UTF-8, no newline translation).

    Keys are '/'-separated; non-UTF-8 names are given as ``os.fsdecode(raw_bytes)``.
    """
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def make_symlinks(root: Path, links: Mapping[str, str]) -> None:
    for rel, target in links.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)


def commit_all(repo: Path, message: str = "commit") -> None:
    """Stage everything (ignored files too) and commit."""
    git(repo, "add", "--all", "--force")
    git(repo, "commit", "-q", "--allow-empty", "--no-verify", "-m", message)


def make_repo(
    tmp_path: Path,
    files: Mapping[str, Content],
    *,
    commit: bool = True,
    symlinks: Mapping[str, str] | None = None,
    executable: Iterable[str] = (),
    untracked: Mapping[str, Content] | None = None,
    name: str = "repo",
) -> Path:
    """Create ``tmp_path/name`` as a git repository and return its path.

    ``files``, ``symlinks`` and ``executable`` are committed (force-added, so a
    file matching ``.gitignore`` is tracked) when ``commit`` is true; otherwise
    the repository has no commit and nothing staged. ``untracked`` files are
    written afterwards and never added.
    """
    repo = tmp_path / name
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    write_files(repo, files)
    make_symlinks(repo, symlinks or {})
    for rel in executable:
        (repo / rel).chmod(0o755)
    if commit:
        commit_all(repo, "initial")
    write_files(repo, untracked or {})
    return repo


def ls_files(root: Path, *args: str) -> set[str]:
    """``git ls-files -z *args`` run in ``root``, decoded with ``os.fsdecode``."""
    out = git(root, "ls-files", "-z", *args)
    return {os.fsdecode(p) for p in out.split(b"\0") if p}


def gitlinks(root: Path) -> set[str]:
    out = git(root, "ls-files", "-z", "--stage")
    links = set()
    for record in out.split(b"\0"):
        if record.startswith(b"160000 "):
            links.add(os.fsdecode(record.split(b"\t", 1)[1]))
    return links


def toplevel(root: Path) -> Path:
    return Path(os.fsdecode(git(root, "rev-parse", "--show-toplevel").rstrip(b"\n")))


def assert_no_konduktorignore_above(root: Path) -> None:
    top = toplevel(root).resolve()
    here = root.resolve()
    while here != top:
        here = here.parent
        assert not (here / KONDUKTORIGNORE).exists(), (
            f"{here / KONDUKTORIGNORE} would be applied by git but not by konduktor"
        )


def git_oracle(root: Path) -> set[str]:
    """What git says ships from the work tree under ``root`` (paths relative to ``root``)."""
    assert_no_konduktorignore_above(root)
    tracked = ls_files(root, "--cached")
    deleted = ls_files(root, "--deleted")
    dropped = ls_files(root, "--cached", "--ignored", f"--exclude-per-directory={KONDUKTORIGNORE}")
    untracked = combined_others(root)
    nested = {p for p in untracked if p.endswith("/")} | gitlinks(root)
    if nested:
        raise ValueError(f"oracle cannot expand submodules or nested repositories: {nested}")
    if sparse := skip_worktree(root):
        raise ValueError(f"oracle does not know whether skip-worktree entries ship: {sparse}")
    # --deleted only reports paths whose lstat() fails: a tracked file that is
    # now a directory (or a FIFO) is not "deleted" to git, but there is no file
    # to ship.
    replaced = {p for p in tracked - deleted if not _file_or_symlink(root / p)}
    return (tracked - deleted - dropped - replaced) | untracked


def combined_others(root: Path) -> set[str]:
    """``ls-files --others --exclude-standard`` under ``root``, run in a copy of its work
    tree (``.git`` included) where every directory's ``.konduktorignore`` is appended to
    its ``.gitignore``, so that git itself applies the combined files."""
    top = toplevel(root)
    copy = Path(tempfile.mkdtemp(prefix="konduktor-oracle-")) / "work"
    try:
        shutil.copytree(top, copy, symlinks=True, ignore=_special_files)
        created = combine_ignore_files(copy)
        here = copy / root.resolve().relative_to(top.resolve())
        found = ls_files(here, "--others", "--exclude-standard")
        prefix = os.fsdecode(git(here, "rev-parse", "--show-prefix").rstrip(b"\n"))
        return found - {p[len(prefix) :] for p in created if p.startswith(prefix)}
    finally:
        shutil.rmtree(copy.parent)


def _special_files(directory: str, names: list[str]) -> list[str]:
    """FIFOs, sockets and devices, which cannot be copied (git never lists them)."""
    kinds = (stat.S_ISREG, stat.S_ISDIR, stat.S_ISLNK)
    return [
        n for n in names if not any(k(os.lstat(os.path.join(directory, n)).st_mode) for k in kinds)
    ]


def combine_ignore_files(tree: Path) -> set[str]:
    """Append each ``.konduktorignore`` under ``tree`` to the ``.gitignore`` beside it, as
    git reads them (a symlinked one is not read, so not appended; a symlinked
    ``.gitignore`` is not read, so it is replaced by the ``.konduktorignore`` lines alone).
    Returns the ``.gitignore`` files created (relative to ``tree``)."""
    created = set()
    for found in tree.rglob(KONDUKTORIGNORE):
        rel = found.relative_to(tree)
        if ".git" in rel.parts or found.is_symlink() or not found.is_file():
            continue
        beside = found.parent / ".gitignore"
        if beside.is_symlink():
            beside.unlink()
        if not beside.exists():
            created.add((rel.parent / ".gitignore").as_posix())
            before = b""
        else:
            before = beside.read_bytes()
        separator = b"\n" if before and not before.endswith(b"\n") else b""
        beside.write_bytes(before + separator + found.read_bytes())
    return created


def _file_or_symlink(path: Path) -> bool:
    mode = os.lstat(path).st_mode
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


def skip_worktree(root: Path) -> set[str]:
    """Index entries marked skip-worktree (sparse checkout): tagged 'S' by ls-files -t."""
    return {p[2:] for p in ls_files(root, "-t", "--cached") if p.startswith("S ")}


def git_commit_oracle(repo: Path, rev: str, scratch: Path) -> set[str]:
    """What ships from commit ``rev`` of ``repo`` (whole tree, no submodules).

    The tree is checked out into a fresh repository with its own index, so only
    that commit's ``.konduktorignore`` files exist when git applies them.
    """
    commit = git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()
    clone = scratch / "commit-oracle"
    git(scratch, "clone", "-q", "--no-checkout", os.fspath(repo), os.fspath(clone))
    git(clone, "checkout", "-q", "--detach", commit)
    return git_oracle(clone)


def plain_oracle(src: Path, scratch: Path) -> set[str]:
    """What ships from a plain directory: its tree with each directory's
    ``.konduktorignore`` appended to its ``.gitignore``, as for untracked files in a
    work tree.

    The tree is copied into a fresh repository with nothing committed, the ignore
    files combined there (:func:`combine_ignore_files`).
    """
    assert not any(p.name == ".git" for p in src.rglob(".git")), "plain tree holds .git"
    copy = scratch / "plain-oracle"
    shutil.copytree(src, copy, symlinks=True)
    git(copy, "init", "-q")
    created = combine_ignore_files(copy)
    return ls_files(copy, "--others", "--exclude-per-directory=.gitignore") - created


def check_ignore(
    root: Path, paths: Sequence[str], ignore_file: str, scratch: Path
) -> dict[str, str]:
    """``git check-ignore -v -n`` for ``paths`` under ``root`` with the rules of
    ``ignore_file`` (per directory) alone.

    Returns ``path -> "source:line:pattern"`` ('' when no rule matches). The
    tree's ignore files are copied into a repository at ``scratch`` under the
    name ``.gitignore`` (check-ignore knows no other) and renamed back in the
    result. Matching negated patterns are reported too (``-v`` does that).
    """
    git(root, "init", "-q", os.fspath(scratch))
    for found in root.rglob(ignore_file):
        rel = found.relative_to(root)
        if ".git" not in rel.parts:
            dest = scratch / rel.parent / ".gitignore"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, dest)
    out = git(
        scratch,
        *("check-ignore", "-v", "-n", "--no-index", "--stdin", "-z"),
        stdin=b"".join(os.fsencode(p) + b"\0" for p in paths),
    )
    fields = [os.fsdecode(f) for f in out.split(b"\0")][:-1]
    result = {}
    for source, line, pattern, path in zip(*[iter(fields)] * 4, strict=True):
        if source.endswith(".gitignore"):
            source = source[: -len(".gitignore")] + ignore_file
        result[path] = f"{source}:{line}:{pattern}" if source else ""
    return result


def sorted_paths(paths: Iterable[str]) -> list[str]:
    """Paths in selection order: by their file-system bytes."""
    return sorted(paths, key=os.fsencode)


def assert_well_formed(selection: Any) -> None:
    """Invariants every selection keeps, whatever it holds."""
    keys = [os.fsencode(entry.path) for entry in selection.entries]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"paths selected more than once: {duplicates}"
    assert keys == sorted(keys), "entries not sorted by path bytes"
    assert selection.paths() == [entry.path for entry in selection.entries]
    for entry in selection.entries:
        parts = entry.path.split("/")
        assert ".git" not in parts, f"{entry.path!r} ships .git"
        assert not {"", ".", ".."} & set(parts), f"{entry.path!r} is not a clean relative path"
        assert entry.kind in ("file", "symlink")
        assert (entry.target is not None) == (entry.kind == "symlink"), entry
        assert all(isinstance(w, str) for w in selection.warnings)


def tree_paths(root: Path) -> list[str]:
    """Every file, link and directory under ``root`` (relative), without descending into
    links or ``.git`` directories."""
    found = []
    pending = [""]
    while pending:
        directory = pending.pop()
        for child in os.scandir(root / directory):
            rel = f"{directory}/{child.name}" if directory else child.name
            found.append(rel)
            if child.is_dir(follow_symlinks=False) and child.name != ".git":
                pending.append(rel)
    return sorted_paths(found)


def assert_why_agrees(root: Path, shipped: Sequence[str], *, commit: str | None = None) -> None:
    """``ls-files --why`` (``explain``) agrees with ``ls-files`` (``shipped``) on ``root``
    itself and every path under it (in the work tree, and in ``commit``'s tree when given):
    a file or link ships exactly when it is listed, a directory exactly when something
    under it is, and every verdict names a rule."""
    listed = set(shipped)
    holding = {d for p in listed for d in _parents(p)} | ({"."} if listed else set())
    in_commit = ls_tree(root, commit) if commit is not None else []
    paths = [".", *dict.fromkeys(tree_paths(root) + in_commit)]
    verdicts = explain(root, paths, commit=commit)
    assert [v.path for v in verdicts] == paths
    wrong = {
        v.path: (v.ships, v.rule)
        for v in verdicts
        if v.ships != (v.path in listed or v.path in holding) or not v.rule
    }
    assert wrong == {}, f"--why disagrees with ls-files ({sorted_paths(listed)}): {wrong}"


def ls_tree(root: Path, commit: str) -> list[str]:
    """Every path (trees too) of ``commit`` under ``root``, relative to ``root``."""
    out = git(root, "ls-tree", "-r", "-t", "-z", "--name-only", commit)
    return [os.fsdecode(p) for p in out.split(b"\0") if p and p != b"./"]


def _parents(path: str) -> Iterable[str]:
    while "/" in path:
        path = path.rpartition("/")[0]
        yield path


def same_inode(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    sa, sb = os.lstat(a), os.lstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
