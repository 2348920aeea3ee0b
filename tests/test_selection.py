"""Which files ship (DESIGN.md §3), checked against git itself.

Most cases state the expected set by hand *and* check that git agrees
(``git_oracle``), so a case documents git's behaviour and cannot pass on a
mistaken expectation. Every selection a case takes (through ``select`` below) is
also checked against ``ls-files --why`` on every path of the tree.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from gitrepo_helpers import (
    KONDUKTORIGNORE,
    GitFailed,
    assert_well_formed,
    assert_why_agrees,
    check_ignore,
    commit_all,
    git,
    git_commit_oracle,
    git_oracle,
    gitlinks,
    ls_files,
    make_repo,
    make_symlinks,
    plain_oracle,
    same_inode,
    sorted_paths,
    write_files,
)

from konduktor import cli, snapshot
from konduktor import selection as konduktor_selection
from konduktor.errors import GitError, UsageError
from konduktor.gitrepo import Repo
from konduktor.selection import Entry, Selection, explain

K = KONDUKTORIGNORE


def select(root: Path, *, commit: str | None = None) -> Selection:
    """konduktor's selection, after checking that ``ls-files --why`` agrees with it on
    every path under *root* (and in *commit*'s tree)."""
    selection = konduktor_selection.select(root, commit=commit)
    assert_why_agrees(root, selection.paths(), commit=commit)
    return selection


def ships(root: Path, expected: set[str], *, commit: str | None = None) -> None:
    selection = select(root, commit=commit)
    assert_well_formed(selection)
    assert selection.paths() == sorted_paths(expected)


def entry(root: Path, path: str, *, commit: str | None = None) -> Entry:
    found = [e for e in select(root, commit=commit).entries if e.path == path]
    assert len(found) == 1, f"{path!r} not selected exactly once"
    return found[0]


def warned(warnings: tuple[str, ...], fragment: str) -> bool:
    return any(fragment in w for w in warnings)


def outside_git(path: Path) -> bool:
    proc = subprocess.run(["git", "-C", str(path), "rev-parse"], capture_output=True, check=False)
    return proc.returncode != 0


# --- ignore-file semantics ---------------------------------------------------
# (files, ignore files, what ships). Every case runs with everything tracked
# and with everything untracked: .konduktorignore treats both alike.

PATTERN_CASES = [
    pytest.param(
        ["a.log", "sub/b.log", "sub/c.txt", "sub/deep/d.txt", "other/deep/e.txt"],
        {K: "*.log\n", f"sub/{K}": "deep/\n"},
        {K, f"sub/{K}", "sub/c.txt", "other/deep/e.txt"},
        id="nested-konduktorignore",
    ),
    pytest.param(
        ["a.log", "keep.log", "sub/keep.log", "x.txt"],
        {K: "*.log\n!keep.log\n"},
        {K, "keep.log", "sub/keep.log", "x.txt"},
        id="negation",
    ),
    pytest.param(
        ["a.log", "sub/keep.log", "sub/other.log"],
        {K: "*.log\n", f"sub/{K}": "!keep.log\n"},
        {K, f"sub/{K}", "sub/keep.log"},
        id="deeper-negation-overrides-parent",
    ),
    pytest.param(
        ["keep.tmp", "sub/keep.tmp"],
        {K: "*.tmp\n!keep.tmp\n", f"sub/{K}": "keep.tmp\n"},
        {K, f"sub/{K}", "keep.tmp"},
        id="deeper-rule-excludes-what-parent-reincludes",
    ),
    pytest.param(
        ["a.log", "b.txt"],
        {K: "!a.log\n*.log\n"},
        {K, "b.txt"},
        id="last-matching-rule-wins",
    ),
    pytest.param(
        ["build/a.txt", "build/keep.txt", "build/sub/keep.txt", "x.txt"],
        {K: "build/\n!build/keep.txt\n!keep.txt\n"},
        {K, "x.txt"},
        id="reinclude-under-excluded-dir-stays-excluded",
    ),
    pytest.param(
        ["build/keep.txt", "x.txt"],
        {K: "build/\n", f"build/{K}": "!keep.txt\n"},
        {K, "x.txt"},
        id="nested-reinclude-under-excluded-dir-stays-excluded",
    ),
    pytest.param(
        ["out", "sub/out/x.txt", "sub/outx"],
        {K: "out/\n"},
        {K, "out", "sub/outx"},
        id="dir-only-pattern-vs-file-of-that-name",
    ),
    pytest.param(
        ["sub/a.txt", "x/sub/b.txt", "sub.txt"],
        {K: "sub\n"},
        {K, "sub.txt"},
        id="bare-name-matches-directory-at-any-depth",
    ),
    pytest.param(
        ["top.txt", "sub/top.txt"],
        {K: "/top.txt\n"},
        {K, "sub/top.txt"},
        id="anchored",
    ),
    pytest.param(
        ["top.txt", "sub/top.txt"],
        {K: "top.txt\n"},
        {K},
        id="unanchored",
    ),
    pytest.param(
        ["sub/x.txt", "a/sub/x.txt"],
        {K: "sub/x.txt\n"},
        {K, "a/sub/x.txt"},
        id="middle-slash-anchors",
    ),
    pytest.param(
        ["f.txt", "sub/f.txt", "sub/d/f.txt"],
        {f"sub/{K}": "/f.txt\n"},
        {f"sub/{K}", "f.txt", "sub/d/f.txt"},
        id="nested-anchored-is-relative-to-its-dir",
    ),
    pytest.param(
        ["d/f.txt", "sub/d/f.txt", "sub/e/d/f.txt"],
        {f"sub/{K}": "d/f.txt\n"},
        {f"sub/{K}", "d/f.txt", "sub/e/d/f.txt"},
        id="nested-middle-slash-is-relative-to-its-dir",
    ),
    pytest.param(
        ["cache", "a/cache", "a/b/cache/f", "a/cachex"],
        {K: "**/cache\n"},
        {K, "a/cachex"},
        id="leading-double-star",
    ),
    pytest.param(
        ["a/b", "a/x/b", "a/x/y/b", "c/a/b", "a/bb"],
        {K: "a/**/b\n"},
        {K, "c/a/b", "a/bb"},
        id="middle-double-star",
    ),
    pytest.param(
        ["x/keep", "x/other", "x/d/f"],
        {K: "x/**\n!x/keep\n"},
        {K, "x/keep"},
        id="trailing-double-star-then-reinclude",
    ),
    pytest.param(
        ["x/d/keep", "x/d/f"],
        {K: "x/**\n!x/d/keep\n"},
        {K},
        id="trailing-double-star-excludes-subdirs-too",
    ),
    pytest.param(
        ["x/d/keep", "x/d/f"],
        {K: "x/**\n!x/d/\n!x/d/keep\n"},
        {K, "x/d/keep"},
        id="trailing-double-star-reinclude-subdir-then-file",
    ),
    pytest.param(
        ["build/a", "x/build/b", "x/build.txt"],
        {K: "**/build/\n"},
        {K, "x/build.txt"},
        id="double-star-dir-only",
    ),
    pytest.param(
        ["doc/a.txt", "doc/sub/b.txt"],
        {K: "doc/*\n!doc/sub/\n"},
        {K, "doc/sub/b.txt"},
        id="single-star-under-dir-then-reinclude-subdir",
    ),
    pytest.param(
        ["x.py", "a/x.py", "a/b/x.py"],
        {K: "a/*.py\n"},
        {K, "x.py", "a/b/x.py"},
        id="star-does-not-cross-slash",
    ),
    pytest.param(
        ["x.py", "a/x.py", "a/y.txt", "y.txt"],
        {K: "*\n!*/\n!*.py\n"},
        {"x.py", "a/x.py"},
        id="whitelist-star-then-dirs-then-py",
    ),
    pytest.param(
        ["x.py", "a/x.py", "y.txt"],
        {K: "*\n!*.py\n"},
        {"x.py"},
        id="star-excludes-directories-so-nested-py-stays-out",
    ),
    pytest.param(
        ["a.log", "b.txt"],
        {K: f"{K}\n*.log\n"},
        {"b.txt"},
        id="konduktorignore-excludes-itself-but-still-applies",
    ),
    pytest.param(
        ["#hash", "!bang", "hash", "bang"],
        {K: "\\#hash\n\\!bang\n"},
        {K, "hash", "bang"},
        id="escaped-hash-and-bang",
    ),
    pytest.param(
        ["#hash"],
        {K: "#hash\n"},
        {K, "#hash"},
        id="comment-line-is-not-a-pattern",
    ),
    pytest.param(
        ["tr", "tr "],
        {K: "tr   \n"},
        {K, "tr "},
        id="trailing-spaces-trimmed",
    ),
    pytest.param(
        ["sp", "sp "],
        {K: "sp\\ \n"},
        {K, "sp"},
        id="escaped-trailing-space-kept",
    ),
    pytest.param(
        ["sp", "sp "],
        {K: "sp\\    \n"},
        {K, "sp"},
        id="escaped-space-then-unescaped-spaces",
    ),
    pytest.param(
        ["a.log", "x.log   # comment"],
        {K: "*.log   # comment\n"},
        {K, "a.log"},
        id="trailing-comment-is-part-of-the-pattern",
    ),
    pytest.param(
        ["tab", "tab\t"],
        {K: "tab\t\n"},
        {K, "tab"},
        id="trailing-tab-not-trimmed",
    ),
    pytest.param(
        ["lead.txt", " lead.txt"],
        {K: " lead.txt\n"},
        {K, "lead.txt"},
        id="leading-space-is-significant",
    ),
    pytest.param(
        ["x.txt"],
        {K: "   \n\n"},
        {K, "x.txt"},
        id="whitespace-only-lines-are-blank",
    ),
    pytest.param(
        ["a.log"],
        {K: ""},
        {K, "a.log"},
        id="empty-konduktorignore",
    ),
    pytest.param(
        ["a.txt", "b.txt", "c.txt", "d.txt"],
        {K: "[a-c].txt\n"},
        {K, "d.txt"},
        id="char-class-range",
    ),
    pytest.param(
        ["x.txt", "y.txt"],
        {K: "[!x].txt\n"},
        {K, "x.txt"},
        id="char-class-negated-bang",
    ),
    pytest.param(
        ["x.txt", "y.txt"],
        {K: "[^x].txt\n"},
        {K, "x.txt"},
        id="char-class-negated-caret",
    ),
    pytest.param(
        ["a.txt", "ab.txt"],
        {K: "?.txt\n"},
        {K, "ab.txt"},
        id="question-mark",
    ),
    pytest.param(
        ["*.txt", "a.txt"],
        {K: "\\*.txt\n"},
        {K, "a.txt"},
        id="escaped-star-is-literal",
    ),
    pytest.param(
        ["a.log", "A.LOG"],
        {K: "*.LOG\n"},
        {K, "a.log"},
        id="case-sensitive",
    ),
    pytest.param(
        ["a.log", "secret.txt", "keep.txt", "tr"],
        {K: b"*.log\r\nsecret.txt\r\ntr  \r\n"},
        {K, "keep.txt"},
        id="crlf-line-endings",
    ),
    pytest.param(
        ["a.log", "last.txt", "keep.txt"],
        {K: b"*.log\r\nlast.txt\r"},
        {K, "keep.txt"},
        id="crlf-without-final-newline",
    ),
    pytest.param(
        ["bom.txt", "x.txt"],
        {K: b"\xef\xbb\xbfbom.txt\n"},
        {K, "x.txt"},
        id="utf8-bom-skipped",
    ),
]


@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
@pytest.mark.parametrize(("files", "ignores", "expected"), PATTERN_CASES)
def test_ignore_pattern(
    tmp_path: Path,
    files: list[str],
    ignores: dict[str, str | bytes],
    expected: set[str],
    tracked: bool,
) -> None:
    tree: dict[str, str | bytes] = {name: "x\n" for name in files} | ignores
    repo = make_repo(tmp_path, tree) if tracked else make_repo(tmp_path, {}, untracked=tree)
    assert git_oracle(repo) == expected
    ships(repo, expected)


# --- where the rules come from -----------------------------------------------


def test_tracked_file_excluded_by_konduktorignore(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"app.py": "", "secret.env": "k", K: "secret.env\n"})
    assert git_oracle(repo) == {K, "app.py"}
    ships(repo, {K, "app.py"})


def test_konduktorignore_edited_but_not_committed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.log": "", "b.tmp": "", K: "*.log\n"})
    (repo / K).write_text("*.tmp\n")
    assert git_oracle(repo) == {K, "a.log"}
    ships(repo, {K, "a.log"})


def test_untracked_konduktorignore(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.log": "", "b.txt": ""}, untracked={K: "*.log\n"})
    assert git_oracle(repo) == {K, "b.txt"}
    ships(repo, {K, "b.txt"})


def test_deleted_tracked_konduktorignore_no_longer_applies(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.log": "", K: "*.log\n"})
    (repo / K).unlink()
    assert git_oracle(repo) == {"a.log"}
    ships(repo, {"a.log"})


def test_konduktorignore_in_gitignored_dir_applies_to_tracked_files(tmp_path: Path) -> None:
    # build/ is gitignored but has tracked files; the untracked, gitignored
    # build/.konduktorignore does not ship, yet git still reads it.
    files = {".gitignore": "build/\n", "build/keep.txt": "", "build/drop.txt": ""}
    repo = make_repo(tmp_path, files, untracked={f"build/{K}": "drop.txt\n"})
    assert git_oracle(repo) == {".gitignore", "build/keep.txt"}
    ships(repo, {".gitignore", "build/keep.txt"})


def test_sync_root_in_subdirectory(tmp_path: Path) -> None:
    files = {
        ".gitignore": "*.tmp\n",
        "top.txt": "",
        "sub/a.txt": "",
        "sub/d/c.py": "",
        f"sub/{K}": "d/\n",
    }
    untracked = {"sub/new.txt": "", "sub/b.tmp": "", "other.txt": ""}
    repo = make_repo(tmp_path, files, untracked=untracked)
    expected = {K, "a.txt", "new.txt"}  # .gitignore above the root still applies
    assert git_oracle(repo / "sub") == expected
    ships(repo / "sub", expected)


def test_konduktorignore_above_sync_root_does_not_apply(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {K: "*.log\n", "sub/a.log": "", "sub/b.txt": ""})
    # git -C sub would apply the parent's file; konduktor's root file sits at R.
    dropped = ls_files(repo / "sub", "-c", "-i", f"--exclude-per-directory={K}")
    assert dropped == {"a.log"}
    ships(repo / "sub", {"a.log", "b.txt"})


# --- work-tree states ---------------------------------------------------------


def test_deleted_tracked_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "", "gone.txt": "", "d/gone.txt": ""})
    (repo / "gone.txt").unlink()
    shutil.rmtree(repo / "d")
    assert git_oracle(repo) == {"a.txt"}
    ships(repo, {"a.txt"})


def test_staged_rename(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"old.txt": "content\n", "b.txt": ""})
    git(repo, "mv", "old.txt", "new.txt")
    assert git_oracle(repo) == {"new.txt", "b.txt"}
    ships(repo, {"new.txt", "b.txt"})


def test_unstaged_rename(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"old.txt": "content\n", "b.txt": ""})
    (repo / "old.txt").rename(repo / "new.txt")
    assert git_oracle(repo) == {"new.txt", "b.txt"}
    ships(repo, {"new.txt", "b.txt"})


def test_staged_new_file_not_committed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": ""}, untracked={"staged.txt": "s\n"})
    git(repo, "add", "staged.txt")
    assert git_oracle(repo) == {"a.txt", "staged.txt"}
    ships(repo, {"a.txt", "staged.txt"})


def test_staged_new_file_then_deleted_from_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": ""}, untracked={"staged.txt": "s\n"})
    git(repo, "add", "staged.txt")
    (repo / "staged.txt").unlink()
    assert git_oracle(repo) == {"a.txt"}
    ships(repo, {"a.txt"})


def test_modified_file_ships_from_disk(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "v1\n"})
    (repo / "a.txt").write_text("v2\n")
    assert git_oracle(repo) == {"a.txt"}
    ships(repo, {"a.txt"})
    found = entry(repo, "a.txt")
    assert found.source is not None
    assert same_inode(found.source, repo / "a.txt")
    current = git(repo, "hash-object", "a.txt").decode().strip()
    assert found.oid in (None, current), "oid of the committed blob for a modified file"


def test_worktree_entries_point_at_disk(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "", "d/b.txt": ""}, symlinks={"ln": "a.txt"})
    write_files(repo, {"new.txt": ""})
    selection = select(repo)
    assert selection.paths() == ["a.txt", "d/b.txt", "ln", "new.txt"]
    for found in selection.entries:
        assert found.source is not None
        assert os.path.isabs(found.source)
        assert same_inode(found.source, repo / found.path)


def test_untracked_ignored_by_gitignore(tmp_path: Path) -> None:
    files = {".gitignore": "*.log\n", "sub/.gitignore": "!keep.log\n", "a.txt": ""}
    untracked = {"debug.log": "", "sub/keep.log": "", "sub/x.log": "", "new.txt": ""}
    repo = make_repo(tmp_path, files, untracked=untracked)
    expected = {".gitignore", "sub/.gitignore", "a.txt", "sub/keep.log", "new.txt"}
    assert git_oracle(repo) == expected
    ships(repo, expected)


def test_untracked_ignored_by_info_exclude(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": ""}, untracked={"local.cfg": "", "new.txt": ""})
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("local.cfg\n")
    assert git_oracle(repo) == {"a.txt", "new.txt"}
    ships(repo, {"a.txt", "new.txt"})


def test_untracked_ignored_by_core_excludes_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": ""}, untracked={".idea/ws.xml": "", "new.txt": ""})
    excludes = tmp_path / "global-ignore"
    excludes.write_text(".idea/\n")
    git(repo, "config", "core.excludesFile", str(excludes))
    assert git_oracle(repo) == {"a.txt", "new.txt"}
    ships(repo, {"a.txt", "new.txt"})


def test_tracked_file_matching_gitignore_still_ships(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {".gitignore": "*.log\nvendor/\n", "a.log": "", "vendor/v.py": ""})
    assert git_oracle(repo) == {".gitignore", "a.log", "vendor/v.py"}
    ships(repo, {".gitignore", "a.log", "vendor/v.py"})


# --- re-including gitignored files ---------------------------------------------
# At each directory the .konduktorignore lines count as appended to the .gitignore
# (DESIGN.md §3); git_oracle runs git on a copy with the files combined.


def why(root: Path, path: str) -> tuple[bool, str]:
    (verdict,) = explain(root, [path])
    return verdict.ships, verdict.rule


def test_negation_re_includes_a_gitignored_untracked_file(tmp_path: Path) -> None:
    # The issue changed this case: a `!` line used to leave keep.log out.
    files = {".gitignore": "*.log\n", K: "!keep.log\n"}
    repo = make_repo(tmp_path, files, untracked={"keep.log": "", "other.log": ""})
    assert git_oracle(repo) == {".gitignore", K, "keep.log"}
    ships(repo, {".gitignore", K, "keep.log"})
    assert why(repo, "keep.log") == (True, f"{K}:1:!keep.log")
    assert why(repo, "other.log") == (False, ".gitignore:1:*.log")
    assert "keep.log" in konduktor_selection.select(repo).dirty  # it goes in the overlay


def test_negation_cannot_re_include_inside_a_gitignored_directory(tmp_path: Path) -> None:
    files = {".gitignore": "data/\n", K: "!data/keep.bin\n"}
    repo = make_repo(tmp_path, files, untracked={"data/keep.bin": "", "data/x.bin": ""})
    assert git_oracle(repo) == {".gitignore", K}  # as git: nothing inside comes back
    ships(repo, {".gitignore", K})
    assert why(repo, "data/keep.bin") == (False, ".gitignore:1:data/")


def test_negation_re_includes_a_gitignored_directory(tmp_path: Path) -> None:
    files = {".gitignore": "data/\n*.tmp\n", K: "!data/\n"}
    untracked = {
        "data/a.bin": "a",
        "data/sub/b.bin": "b",
        "data/x.tmp": "",  # *.tmp still applies inside
        "data/.gitignore": "*.cache\n",  # read now that data/ is looked at
        "data/c.cache": "",
        f"data/sub/{K}": "*.skip\n",
        "data/sub/d.skip": "",
        "data/cache/e.bin": "",
        "data/sub/.gitignore": "cache/\n",
        "data/sub/cache/f.bin": "",
    }
    repo = make_repo(tmp_path, files, untracked=untracked)
    make_symlinks(repo, {"data/ln": "a.bin"})
    expected = {".gitignore", K, "data/a.bin", "data/sub/b.bin", "data/.gitignore"}
    expected |= {f"data/sub/{K}", "data/cache/e.bin", "data/sub/.gitignore", "data/ln"}
    assert git_oracle(repo) == expected
    ships(repo, expected)
    assert entry(repo, "data/ln").kind == "symlink"
    assert why(repo, "data/sub/b.bin") == (True, f"{K}:1:!data/")
    assert why(repo, "data/sub/d.skip") == (False, f"data/sub/{K}:1:*.skip")
    assert why(repo, "data/sub/cache/f.bin") == (False, "data/sub/.gitignore:1:cache/")


def test_negation_re_includes_a_gitignored_directory_holding_tracked_files(
    tmp_path: Path,
) -> None:
    # git lists build/new.txt itself as ignored (build/ holds a tracked file), because of
    # the pattern on build/; `!build/` undoes that, `!*.txt` alone could not
    files = {".gitignore": "build/\n", "build/keep.txt": "", "out/keep.txt": ""}
    files |= {".gitignore": "build/\nout/\n", K: "!build/\n!*.txt\n"}
    untracked = {"build/new.txt": "", "build/sub/deep.txt": "", "out/new.txt": ""}
    repo = make_repo(tmp_path, files, untracked=untracked)
    expected = {".gitignore", K, "build/keep.txt", "out/keep.txt", "build/new.txt"}
    expected |= {"build/sub/deep.txt"}
    assert git_oracle(repo) == expected
    ships(repo, expected)
    assert why(repo, "build/new.txt") == (True, f"{K}:2:!*.txt")
    assert why(repo, "out/new.txt") == (False, ".gitignore:2:out/")


def test_negation_in_a_nested_konduktorignore(tmp_path: Path) -> None:
    files = {".gitignore": "*.log\nlogs/\n", f"sub/{K}": "!*.log\n!logs/\n"}
    untracked = {"a.log": "", "sub/b.log": "", "sub/deep/c.log": "", "sub/logs/d.txt": ""}
    untracked |= {"logs/e.txt": ""}
    repo = make_repo(tmp_path, files, untracked=untracked)
    expected = {".gitignore", f"sub/{K}", "sub/b.log", "sub/deep/c.log", "sub/logs/d.txt"}
    assert git_oracle(repo) == expected
    ships(repo, expected)


def test_combined_order_gitignore_lines_then_konduktorignore_lines(tmp_path: Path) -> None:
    # Same directory: the .konduktorignore lines come last and win; a deeper .gitignore
    # comes after both and wins over them, for untracked files. Tracked files follow
    # .konduktorignore alone.
    files = {
        ".gitignore": "*.log\n!keep.bin\n",
        K: "!*.log\nsecret.log\n*.bin\n",
        "sub/.gitignore": "!secret.log\n",
        "tracked.bin": "",
        "sub/tracked-secret.log": "",
    }
    untracked = {"a.log": "", "secret.log": "", "keep.bin": "", "sub/secret.log": ""}
    repo = make_repo(tmp_path, files, untracked=untracked)
    (repo / "sub" / "tracked-secret.log").rename(repo / "sub" / "secret.log")
    git(repo, "add", "--all", "--force")  # the tracked file is now sub/secret.log
    write_files(repo, {"sub/new/secret.log": ""})
    expected = {".gitignore", K, "sub/.gitignore", "a.log", "sub/new/secret.log"}
    assert git_oracle(repo) == expected
    ships(repo, expected)
    assert why(repo, "sub/secret.log") == (False, f"{K}:2:secret.log")  # tracked
    assert why(repo, "sub/new/secret.log") == (True, "sub/.gitignore:1:!secret.log")
    assert why(repo, "keep.bin") == (False, f"{K}:3:*.bin")


def test_deeper_gitignore_negation_beats_shallower_konduktorignore(tmp_path: Path) -> None:
    # No `!` line in any .konduktorignore: git is not asked for ignored files, and the
    # untracked file that a deeper .gitignore's `!` line keeps in still ships.
    files = {K: "*.log\n", "sub/.gitignore": "!keep.log\n", "sub/kept.log": ""}
    repo = make_repo(tmp_path, files, untracked={"sub/keep.log": "", "sub/x.log": ""})
    assert git_oracle(repo) == {K, "sub/.gitignore", "sub/keep.log"}
    ships(repo, {K, "sub/.gitignore", "sub/keep.log"})
    assert konduktor_selection.worktree_status(Repo.discover(repo)).ignored is None


def test_negation_in_a_gitignored_konduktorignore(tmp_path: Path) -> None:
    # git reads a per-directory file that .gitignore ignores: its `!` lines apply too
    files = {".gitignore": ".*\n*.bin\n!.gitignore\n", "sub/t.txt": ""}
    untracked = {K: "!keep.bin\n", f"sub/{K}": "!sub.bin\n", "keep.bin": "", "x.bin": ""}
    untracked |= {"sub/sub.bin": "", "sub/keep.bin": ""}
    repo = make_repo(tmp_path, files, untracked=untracked)
    expected = {".gitignore", "sub/t.txt", "keep.bin", "sub/sub.bin", "sub/keep.bin"}
    assert git_oracle(repo) == expected
    ships(repo, expected)
    (repo / K).unlink()  # only the nested one is left: found by the pass over sub/
    expected -= {"keep.bin", "sub/keep.bin"}
    assert git_oracle(repo) == expected
    ships(repo, expected)


def test_negation_re_includes_what_info_exclude_and_excludes_file_ignore(tmp_path: Path) -> None:
    untracked = {"local.cfg": "", ".idea/ws.xml": "", "other.cfg": "", K: "!local.cfg\n!.idea/\n"}
    repo = make_repo(tmp_path, {"a.txt": ""}, untracked=untracked)
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("*.cfg\n")
    excludes = tmp_path / "global-ignore"
    excludes.write_text(".idea/\n")
    git(repo, "config", "core.excludesFile", str(excludes))
    expected = {"a.txt", K, "local.cfg", ".idea/ws.xml"}
    assert git_oracle(repo) == expected
    ships(repo, expected)
    assert why(repo, "other.cfg") == (False, ".git/info/exclude:1:*.cfg")


def test_negation_re_includes_from_a_subdirectory_root(tmp_path: Path) -> None:
    files = {".gitignore": "*.bin\nout/\n", f"sub/{K}": "!keep.bin\n!out/\n", "sub/a.txt": ""}
    untracked = {"sub/keep.bin": "", "sub/x.bin": "", "sub/out/o.txt": "", "keep.bin": ""}
    untracked |= {"sub/out/o.bin": ""}
    repo = make_repo(tmp_path, files, untracked=untracked)
    expected = {K, "a.txt", "keep.bin", "out/o.txt"}
    assert git_oracle(repo / "sub") == expected
    ships(repo / "sub", expected)
    assert why(repo / "sub", "x.bin") == (False, "../.gitignore:1:*.bin")  # git check-ignore's
    assert why(repo / "sub", "out/o.bin") == (False, "../.gitignore:1:*.bin")  # in a walk


def test_why_names_gitignore_files_from_a_subdirectory_root(tmp_path: Path) -> None:
    # git check-ignore names them from the work tree's top; the selection from its root
    files = {".gitignore": "*.bin\n", "sub/.gitignore": "*.log\n", "sub/a.txt": ""}
    repo = make_repo(tmp_path, files, untracked={"sub/x.bin": "", "sub/y.log": ""})
    assert why(repo / "sub", "x.bin") == (False, "../.gitignore:1:*.bin")
    assert why(repo / "sub", "y.log") == (False, ".gitignore:1:*.log")
    assert why(repo, "sub/y.log") == (False, "sub/.gitignore:1:*.log")


def test_nested_repository_in_a_re_included_directory_is_not_shipped(tmp_path: Path) -> None:
    files = {".gitignore": "vendor/\n", K: "!vendor/\n"}
    repo = make_repo(tmp_path, files, untracked={"vendor/v.py": ""})
    make_repo(repo / "vendor", {"n.txt": ""}, name="lib")
    selection = select(repo)
    assert selection.paths() == sorted_paths({".gitignore", K, "vendor/v.py"})
    assert warned(selection.warnings, "vendor/lib/: a git repository that is not a submodule")


def test_a_new_file_in_a_re_included_directory_changes_the_keys(tmp_path: Path) -> None:
    files = {".gitignore": "data/\n", K: "!data/\n", "a.txt": ""}
    repo = make_repo(tmp_path, files, untracked={"data/a.bin": "a"})
    first = snapshot.keys(repo)
    assert snapshot.keys(repo) == first  # from the cache
    write_files(repo, {"data/new.bin": "n"})
    second = snapshot.keys(repo)
    assert second != first
    assert second == snapshot._keys_of(snapshot.plan(repo))
    write_files(repo, {"data/new.bin": "edited"})
    assert snapshot.keys(repo) not in (first, second)


def test_kept_out_counts_what_gitignore_keeps_out(tmp_path: Path) -> None:
    files = {".gitignore": "*.log\ncache/\nbig.bin\n", K: "!keep.log\n"}
    untracked = {f"cache/{i}.c": "c" for i in range(150)}
    untracked |= {"big.bin": b"x" * 2000, "keep.log": "", "a.log": "aa"}
    repo = make_repo(tmp_path, files, untracked=untracked)
    counted = konduktor_selection.select(repo, kept_out=True).kept_out
    assert counted is not None
    assert (counted.files, counted.bytes) == (152, 150 + 2000 + 2)
    assert counted.largest == (("big.bin", 2000), ("cache/", 150), ("a.log", 2))
    warning = counted.warning()
    assert warning is not None
    assert ".gitignore keeps 152 untracked file(s) (2.2 kB)" in warning
    assert "big.bin (2.0 kB), cache/ (150 B), a.log (2 B)" in warning
    assert f"`!pattern` lines in {K}" in warning
    for i in range(60):
        (repo / "cache" / f"{i}.c").unlink()
    few = konduktor_selection.select(repo, kept_out=True).kept_out
    assert few is not None
    assert few.files == 92
    assert few.warning() is None


def test_kept_out_stops_looking_inside_directories_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {".gitignore": "cache/\nbig.bin\ndeep/\n"}
    untracked = {f"cache/{i}.c": "c" for i in range(150)} | {"big.bin": b"x" * 2000}
    untracked |= {"deep/er/d.c": "dd"}
    repo = make_repo(tmp_path, files, untracked=untracked)
    monkeypatch.setattr(konduktor_selection, "_LOOK_AT_MOST", 40)
    counted = konduktor_selection.select(repo, kept_out=True).kept_out
    assert counted is not None
    assert not counted.complete
    assert 1 < counted.files <= 41  # the files git names are all counted, big.bin first
    assert counted.largest[0] == ("big.bin", 2000)
    assert "deep/" not in dict(counted.largest)  # deeper, so not reached
    warning = counted.warning()
    assert warning is not None
    assert f".gitignore keeps at least {counted.files} untracked file(s) (at least" in warning
    assert "the largest seen big.bin (2.0 kB), cache/" in warning


def test_ls_files_tells_what_gitignore_keeps_out(tmp_path: Path) -> None:
    untracked = {f"data/{i}.bin": "" for i in range(101)} | {"a.txt": ""}
    repo = make_repo(tmp_path, {".gitignore": "data/\n"}, untracked=untracked)
    code, out, err = run_cli("ls-files", repo)
    assert (code, out.split()) == (0, [".gitignore", "a.txt"])
    assert f"warning: {repo}: .gitignore keeps 101 untracked file(s) (0 B)" in err
    (repo / K).write_text("!data/\n")
    code, out, err = run_cli("ls-files", repo)
    assert (code, len(out.split())) == (0, 104)
    assert ".gitignore keeps" not in err


def run_cli(*args: str | Path) -> tuple[int, str, str]:
    """main() as the console script runs it: (exit code, stdout, stderr)."""
    with CliRunner().isolation() as (stdout, stderr, _), pytest.raises(SystemExit) as exited:
        cli.main([str(a) for a in args])
    code = exited.value.code
    return (
        code if isinstance(code, int) else 1,
        stdout.getvalue().decode(),
        stderr.getvalue().decode(),
    )


def test_tracked_file_replaced_by_directory(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a": "file\n", "b.txt": ""})
    (repo / "a").unlink()
    write_files(repo, {"a/inner.txt": ""})
    assert ls_files(repo, "--deleted") == set()  # git does not call "a" deleted
    assert git_oracle(repo) == {"a/inner.txt", "b.txt"}
    ships(repo, {"a/inner.txt", "b.txt"})


def test_tracked_file_replaced_by_symlink(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "", "cfg": "inline\n"})
    (repo / "cfg").unlink()
    os.symlink("a.txt", repo / "cfg")
    assert git_oracle(repo) == {"a.txt", "cfg"}
    ships(repo, {"a.txt", "cfg"})
    assert (entry(repo, "cfg").kind, entry(repo, "cfg").target) == ("symlink", "a.txt")
    assert entry(repo, "cfg", commit="HEAD").kind == "file"


def test_tracked_file_replaced_by_fifo(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "", "pipe": "was a file\n"})
    (repo / "pipe").unlink()
    os.mkfifo(repo / "pipe")
    assert git_oracle(repo) == {"a.txt"}
    selection = select(repo)
    assert selection.paths() == ["a.txt"]
    assert warned(selection.warnings, "pipe")


def test_intent_to_add_file_ships(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": ""}, untracked={"later.txt": "content\n"})
    git(repo, "add", "--intent-to-add", "later.txt")
    assert git_oracle(repo) == {"a.txt", "later.txt"}
    ships(repo, {"a.txt", "later.txt"})


def test_merge_conflict_path_ships_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"f.txt": "base\n", "g.txt": ""})
    git(repo, "checkout", "-q", "-b", "other")
    write_files(repo, {"f.txt": "other\n"})
    commit_all(repo, "other")
    git(repo, "checkout", "-q", "main")
    write_files(repo, {"f.txt": "main\n"})
    commit_all(repo, "main")
    with pytest.raises(GitFailed):
        git(repo, "merge", "-q", "other")
    assert len(git(repo, "ls-files", "-u").splitlines()) == 3  # stages 1, 2, 3
    assert git_oracle(repo) == {"f.txt", "g.txt"}
    ships(repo, {"f.txt", "g.txt"})


# --- file kinds and names -----------------------------------------------------


def test_symlinks_ship_as_symlinks(tmp_path: Path) -> None:
    links = {"link": "data/f.txt", "dirlink": "data", "sub/up": "../data/f.txt"}
    repo = make_repo(tmp_path, {"data/f.txt": "f\n", "sub/s.txt": ""}, symlinks=links)
    expected = {"data/f.txt", "sub/s.txt", *links}
    assert git_oracle(repo) == expected
    selection = select(repo)
    assert selection.paths() == sorted_paths(expected)  # dirlink/f.txt is not followed
    by_path = {e.path: e for e in selection.entries}
    for path, target in links.items():
        assert by_path[path].kind == "symlink"
        assert by_path[path].target == target
        assert not by_path[path].executable
    assert selection.warnings == ()
    assert by_path["data/f.txt"].kind == "file"


def test_symlink_pointing_outside_root_warns(tmp_path: Path) -> None:
    links = {"escape-abs": "/etc/hostname", "escape-rel": "../outside.txt", "stays-in": "a.txt"}
    repo = make_repo(tmp_path, {"a.txt": ""}, symlinks=links)
    assert git_oracle(repo) == {"a.txt", *links}
    selection = select(repo)
    assert selection.paths() == sorted_paths({"a.txt", *links})
    assert entry(repo, "escape-abs").target == "/etc/hostname"
    assert entry(repo, "escape-rel").target == "../outside.txt"
    assert warned(selection.warnings, "escape-abs")
    assert warned(selection.warnings, "escape-rel")
    assert not warned(selection.warnings, "stays-in")


def test_symlink_leaving_subdirectory_root_warns(tmp_path: Path) -> None:
    links = {"sub/escapes-up": "../top.txt", "sub/d/stays-in": "../a.txt"}
    repo = make_repo(tmp_path, {"top.txt": "", "sub/a.txt": ""}, symlinks=links)
    assert git_oracle(repo / "sub") == {"a.txt", "escapes-up", "d/stays-in"}
    selection = select(repo / "sub")
    assert selection.paths() == ["a.txt", "d/stays-in", "escapes-up"]
    assert warned(selection.warnings, "escapes-up")
    assert not warned(selection.warnings, "stays-in")


def test_dangling_symlink_ships(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": ""}, symlinks={"dangling": "missing.txt"})
    assert git_oracle(repo) == {"a.txt", "dangling"}
    ships(repo, {"a.txt", "dangling"})
    found = entry(repo, "dangling")
    assert (found.kind, found.target) == ("symlink", "missing.txt")


def test_symlink_to_directory_is_not_matched_by_dir_pattern(tmp_path: Path) -> None:
    files = {"realdir/f.txt": "", K: "link/\nrealdir/\n"}
    repo = make_repo(tmp_path, files, symlinks={"link": "realdir"})
    assert git_oracle(repo) == {K, "link"}
    ships(repo, {K, "link"})


def test_exec_bit_flip(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"run.sh": "", "tool.sh": ""}, executable=["tool.sh"])
    (repo / "run.sh").chmod(0o755)
    (repo / "tool.sh").chmod(0o644)
    assert entry(repo, "run.sh").executable
    assert not entry(repo, "tool.sh").executable
    assert not entry(repo, "run.sh", commit="HEAD").executable
    assert entry(repo, "tool.sh", commit="HEAD").executable


def test_exec_bit_follows_the_owner_bit_like_git(tmp_path: Path) -> None:
    modes = {"m700": 0o700, "m744": 0o744, "m640": 0o640, "m611": 0o611, "m666": 0o666}
    repo = make_repo(tmp_path, {}, untracked=dict.fromkeys(modes, ""))
    for name, mode in modes.items():
        (repo / name).chmod(mode)
    selection = select(repo)
    git(repo, "add", *modes)
    staged = git(repo, "ls-files", "-s").decode().splitlines()
    git_exec = {line.split("\t")[1]: line.startswith("100755") for line in staged}
    assert git_exec == {"m700": True, "m744": True, "m640": False, "m611": False, "m666": False}
    assert {e.path: e.executable for e in selection.entries} == git_exec


def test_fifo_skipped_with_warning(tmp_path: Path) -> None:
    """A tracked path that became a FIFO is skipped with a warning. (An untracked FIFO is
    invisible to git, like an ignored file: it never ships; plain directories warn.)"""
    repo = make_repo(tmp_path, {"a.txt": "", "pipe": "was a file\n"})
    (repo / "pipe").unlink()
    os.mkfifo(repo / "pipe")
    os.mkfifo(repo / "untracked-pipe")
    selection = select(repo)
    assert selection.paths() == ["a.txt"]
    assert warned(selection.warnings, "pipe")


def test_socket_skipped_with_warning(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "", "sock": "was a file\n"})
    (repo / "sock").unlink()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(repo / "sock"))
    except OSError as exc:  # path too long for sun_path
        pytest.skip(f"cannot bind a unix socket here: {exc}")
    try:
        selection = select(repo)
        assert selection.paths() == ["a.txt"]
        assert warned(selection.warnings, "sock")
    finally:
        sock.close()


def test_non_utf8_file_name(tmp_path: Path) -> None:
    tracked, untracked = os.fsdecode(b"caf\xe9.txt"), os.fsdecode(b"d\xff/na\xefve.txt")
    try:
        repo = make_repo(tmp_path, {tracked: "x", "plain.txt": ""}, untracked={untracked: "y"})
    except OSError as exc:
        pytest.skip(f"file system refuses non-UTF-8 names: {exc}")
    expected = {tracked, untracked, "plain.txt"}
    assert git_oracle(repo) == expected
    ships(repo, expected)
    found = entry(repo, tracked)
    assert found.source is not None
    assert os.fsencode(found.source).endswith(b"/caf\xe9.txt")


def test_names_with_spaces_newline_and_tab(tmp_path: Path) -> None:
    files = {
        "with space.txt": "",
        "dir with space/f": "",
        "new\nline.txt": "",
        "tab\tname": "",
        "drop me.txt": "",
        K: "drop me.txt\n",
    }
    repo = make_repo(tmp_path, files, untracked={"un tracked\n.txt": ""})
    expected = {
        K,
        "with space.txt",
        "dir with space/f",
        "new\nline.txt",
        "tab\tname",
        "un tracked\n.txt",
    }
    assert git_oracle(repo) == expected
    ships(repo, expected)


def test_entries_sorted_by_path_bytes(tmp_path: Path) -> None:
    names = ["a/b", "a-b", "a.b", "a0", "B", "é.txt", "a/b-c", "a/bc"]
    repo = make_repo(tmp_path, dict.fromkeys(names, ""))
    selection = select(repo)
    assert selection.paths() == ["B", "a-b", "a.b", "a/b", "a/b-c", "a/bc", "a0", "é.txt"]


@pytest.mark.parametrize("commit", [None, "HEAD"], ids=["worktree", "commit"])
def test_lfs_pointer_ships_with_warning(tmp_path: Path, commit: str | None) -> None:
    pointer = (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{'ab' * 32}\nsize 123456789\n"
    )
    files = {".gitattributes": "*.bin filter=lfs diff=lfs merge=lfs -text\n", "model.bin": pointer}
    repo = make_repo(tmp_path, files)
    selection = select(repo, commit=commit)
    assert selection.paths() == [".gitattributes", "model.bin"]
    assert warned(selection.warnings, "model.bin")


def test_trailing_comment_line_warns(tmp_path: Path) -> None:
    # DESIGN.md §3: name file:line and the pattern the user probably meant.
    repo = make_repo(tmp_path, {"a.log": "", K: "# logs\n*.log   # skip logs\n"})
    selection = select(repo)
    assert "a.log" in selection.paths()
    assert any(f"{K}:2" in w and "*.log" in w for w in selection.warnings), selection.warnings


def test_pattern_matching_nothing_warns(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.log": "", K: "*.log\n*.xyz\n"})
    selection = select(repo)
    assert selection.paths() == [K]
    assert warned(selection.warnings, "*.xyz")
    assert not any("*.log" in w for w in selection.warnings)


# --- .git ---------------------------------------------------------------------


def test_git_dir_never_ships(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "", K: "!.git\n!.git/**\n"})
    assert git_oracle(repo) == {K, "a.txt"}
    ships(repo, {K, "a.txt"})


def test_plain_dir_never_ships_dot_git(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    if not outside_git(tmp_path):
        pytest.skip("tmp_path is inside a git repository")
    write_files(root, {"a.txt": "", "sub/.git": "not a gitfile\n", "sub/x.txt": ""})
    ships(root, {"a.txt", "sub/x.txt"})


# --- submodules and nested repositories ----------------------------------------


def make_superproject(
    tmp_path: Path, lib_files: dict[str, str], files: dict[str, str], *, at: str = "ext"
) -> Path:
    lib = make_repo(tmp_path, lib_files, name="lib")
    main = make_repo(tmp_path, files, name="main")
    git(main, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), at)
    commit_all(main, "add submodule")
    assert gitlinks(main) == {at}
    return main


def test_submodule_tracked_files_ship_prefixed(tmp_path: Path) -> None:
    main = make_superproject(tmp_path, {"l.py": "", "d/m.txt": ""}, {"a.txt": ""})
    expected = {"a.txt", ".gitmodules", "ext/l.py", "ext/d/m.txt"}
    assert ls_files(main, "--recurse-submodules") == expected
    ships(main, expected)


def test_submodule_untracked_files_do_not_ship(tmp_path: Path) -> None:
    main = make_superproject(tmp_path, {"l.py": "v1\n"}, {"a.txt": ""})
    write_files(main, {"ext/untracked.txt": "", "ext/l.py": "v2\n"})
    ships(main, {"a.txt", ".gitmodules", "ext/l.py"})
    found = entry(main, "ext/l.py")
    assert found.source is not None
    assert same_inode(found.source, main / "ext" / "l.py")


def test_submodule_paths_filtered_by_parent_konduktorignore(tmp_path: Path) -> None:
    # The root .konduktorignore covers every path under R, submodule paths too.
    main = make_superproject(tmp_path, {"l.py": "", "x.log": ""}, {"a.txt": "", K: "*.log\n"})
    ships(main, {K, "a.txt", ".gitmodules", "ext/l.py"})


def test_uninitialized_submodule_warns(tmp_path: Path) -> None:
    main = make_superproject(tmp_path, {"l.py": ""}, {"a.txt": ""})
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(main), str(clone))
    assert not any((clone / "ext").iterdir())
    selection = select(clone)
    assert selection.paths() == [".gitmodules", "a.txt"]
    assert warned(selection.warnings, "ext")


def test_nested_untracked_repository_never_ships_its_git_dir(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": ""})
    nested = make_repo(repo, {"n.txt": ""}, name="nested")
    assert ls_files(repo, "--others", "--exclude-standard") == {"nested/"}
    selection = select(repo)
    assert_well_formed(selection)  # no nested/.git/...
    assert "a.txt" in selection.paths()
    assert "nested/n.txt" in selection.paths() or warned(selection.warnings, "nested")
    assert nested.is_dir()


# --- repository states ----------------------------------------------------------


def test_repo_without_commits(tmp_path: Path) -> None:
    untracked = {"a.txt": "", "b.txt": "", ".gitignore": "*.log\n", "c.log": ""}
    repo = make_repo(tmp_path, {}, commit=False, untracked=untracked)
    git(repo, "add", "a.txt")
    assert git_oracle(repo) == {"a.txt", "b.txt", ".gitignore"}
    ships(repo, {"a.txt", "b.txt", ".gitignore"})
    with pytest.raises((UsageError, GitError)):
        select(repo, commit="HEAD")


def test_detached_head(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "v1\n"})
    write_files(repo, {"b.txt": ""})
    commit_all(repo, "second")
    git(repo, "checkout", "-q", "--detach", "HEAD~1")
    assert git_oracle(repo) == {"a.txt"}
    ships(repo, {"a.txt"})
    ships(repo, {"a.txt"}, commit="HEAD")


def test_shallow_clone(tmp_path: Path) -> None:
    origin = make_repo(tmp_path, {"a.txt": "v1\n", K: "*.log\n", "x.log": ""}, name="origin")
    write_files(origin, {"b.txt": ""})
    commit_all(origin, "second")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{origin}", str(clone))
    assert git(clone, "rev-parse", "--is-shallow-repository").strip() == b"true"
    write_files(clone, {"new.txt": ""})
    assert git_oracle(clone) == {K, "a.txt", "b.txt", "new.txt"}
    ships(clone, {K, "a.txt", "b.txt", "new.txt"})
    ships(clone, {K, "a.txt", "b.txt"}, commit="HEAD")
    with pytest.raises((UsageError, GitError)):
        select(clone, commit="HEAD~1")


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        select(tmp_path / "nope")
    with pytest.raises(UsageError):
        explain(tmp_path / "nope", ["a.txt"])


# --- commit selections ------------------------------------------------------------


def test_commit_selection_reads_only_the_old_tree(tmp_path: Path) -> None:
    files = {
        "a.txt": "v1\n",
        "b.log": "",
        "keep.log": "",
        "tool.sh": "#!/bin/sh\n",
        "sub/c.txt": "",
        K: "*.log\n!keep.log\n",
    }
    repo = make_repo(tmp_path, files, executable=["tool.sh"], symlinks={"link": "a.txt"})
    write_files(repo, {"a.txt": "v2\n", "new.txt": "", K: ""})
    (repo / "sub" / "c.txt").unlink()
    commit_all(repo, "second")
    expected = {K, "a.txt", "keep.log", "tool.sh", "sub/c.txt", "link"}
    assert git_commit_oracle(repo, "HEAD~1", tmp_path) == expected
    # Nothing in the work tree may matter: empty it, then plant misleading files.
    for child in repo.iterdir():
        if child.name == ".git":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    write_files(repo, {K: "*\n", "untracked.txt": ""})

    selection = select(repo, commit="HEAD~1")
    assert_well_formed(selection)
    assert selection.paths() == sorted_paths(expected)
    for found in selection.entries:
        assert found.source is None
        assert found.oid == git(repo, "rev-parse", f"HEAD~1:{found.path}").decode().strip()
    by_path = {e.path: e for e in selection.entries}
    assert by_path["tool.sh"].executable
    assert not by_path["a.txt"].executable
    assert (by_path["link"].kind, by_path["link"].target) == ("symlink", "a.txt")


def test_commit_selection_applies_that_commits_konduktorignore(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.log": "", "b.tmp": "", K: "*.log\n"})
    write_files(repo, {K: "*.tmp\n"})
    commit_all(repo, "swap rules")
    (repo / K).write_text("*\n")  # work-tree edit: must not matter
    assert git_commit_oracle(repo, "HEAD~1", tmp_path) == {K, "b.tmp"}
    ships(repo, {K, "b.tmp"}, commit="HEAD~1")
    ships(repo, {K, "a.log"}, commit="HEAD")


def test_commit_selection_of_subdirectory(tmp_path: Path) -> None:
    files = {"top.txt": "", "sub/a.txt": "", "sub/b.tmp": "", f"sub/{K}": "*.tmp\n"}
    repo = make_repo(tmp_path, files)
    ships(repo / "sub", {K, "a.txt"}, commit="HEAD")


def test_commit_selection_includes_gitignored_tracked_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {".gitignore": "*.log\n", "a.log": ""})
    assert git_commit_oracle(repo, "HEAD", tmp_path) == {".gitignore", "a.log"}
    ships(repo, {".gitignore", "a.log"}, commit="HEAD")


def test_commit_selection_unknown_revision(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": ""})
    with pytest.raises(UsageError):
        select(repo, commit="no-such-branch")


def test_commit_selection_outside_a_repository(tmp_path: Path) -> None:
    if not outside_git(tmp_path):
        pytest.skip("tmp_path is inside a git repository")
    write_files(tmp_path / "plain", {"a.txt": ""})
    with pytest.raises((UsageError, GitError)):
        select(tmp_path / "plain", commit="HEAD")


# --- plain directories ---------------------------------------------------------------


def test_plain_directory_with_nested_ignore_files(tmp_path: Path) -> None:
    if not outside_git(tmp_path):
        pytest.skip("tmp_path is inside a git repository")
    root = tmp_path / "plain"
    write_files(
        root,
        {
            ".gitignore": "*.log\nbuild/\n",
            K: "secret*\n",
            "a.py": "",
            "debug.log": "",
            "build/out.bin": "",
            "sub/.gitignore": "!keep.log\n",
            "sub/keep.log": "",
            f"sub/{K}": "*.tmp\n!important.tmp\n",
            "sub/x.tmp": "",
            "sub/important.tmp": "",
            "sub/secret.txt": "",
            "deep/er/y.py": "",
        },
    )
    make_symlinks(root, {"ln": "a.py"})
    expected = {
        ".gitignore",
        K,
        "a.py",
        "sub/.gitignore",
        "sub/keep.log",
        f"sub/{K}",
        "sub/important.tmp",
        "deep/er/y.py",
        "ln",
    }
    assert plain_oracle(root, tmp_path) == expected
    ships(root, expected)
    assert entry(root, "ln").kind == "symlink"
    assert all(e.source is not None for e in select(root).entries)


def test_plain_directory_konduktorignore_re_includes_gitignored(tmp_path: Path) -> None:
    # The issue changed this case: keep.log used to stay out.
    if not outside_git(tmp_path):
        pytest.skip("tmp_path is inside a git repository")
    root = tmp_path / "plain"
    tree = {".gitignore": "*.log\ndata/\n", K: "!keep.log\n!data/\nsecret.txt\n", "a": ""}
    tree |= {"keep.log": "", "x.log": "", "data/d.bin": "", "sub/.gitignore": "!secret.txt\n"}
    tree |= {"sub/secret.txt": "", "secret.txt": ""}
    write_files(root, tree)
    expected = {".gitignore", K, "a", "keep.log", "data/d.bin", "sub/.gitignore", "sub/secret.txt"}
    assert plain_oracle(root, tmp_path) == expected
    ships(root, expected)


def test_plain_directory_fifo_skipped_with_warning(tmp_path: Path) -> None:
    if not outside_git(tmp_path):
        pytest.skip("tmp_path is inside a git repository")
    root = tmp_path / "plain"
    write_files(root, {"a.txt": ""})
    os.mkfifo(root / "pipe")
    selection = select(root)
    assert selection.paths() == ["a.txt"]
    assert warned(selection.warnings, "pipe")


# --- explain ----------------------------------------------------------------------------


def test_explain_names_the_deciding_rule(tmp_path: Path) -> None:
    files = {
        K: "# comment\n*.tmp\nsecret*\nbuild/\n*.bak\nold.bak\n",
        f"sub/{K}": "!keep.tmp\n",
        ".gitignore": "*.log\n",
        "app.py": "",
        "secret.env": "",
        "build/out/x.o": "",
        "a.tmp": "",
        "sub/keep.tmp": "",
        "old.bak": "",
        "vendor.log": "",
    }
    repo = make_repo(tmp_path, files, untracked={"new.txt": "", "debug.log": ""})
    expected = {
        "secret.env": (False, f"{K}:3:secret*"),
        "build/out/x.o": (False, f"{K}:4:build/"),
        "a.tmp": (False, f"{K}:2:*.tmp"),
        "old.bak": (False, f"{K}:6:old.bak"),
        "sub/keep.tmp": (True, f"sub/{K}:1:!keep.tmp"),
        "debug.log": (False, ".gitignore:1:*.log"),
        "app.py": (True, "tracked"),
        "vendor.log": (True, "tracked"),
        "new.txt": (True, "untracked"),
        "missing.txt": (False, "not found"),
        ".git/HEAD": (False, ".git"),
    }
    # git agrees on every rule that names a file and line.
    konduktor_rules = {p: r for p, (_, r) in expected.items() if r.startswith(("sub/", K))}
    assert check_ignore(repo, list(konduktor_rules), K, tmp_path / "check") == konduktor_rules
    assert git(repo, "check-ignore", "-v", "debug.log") == b".gitignore:1:*.log\tdebug.log\n"

    verdicts = explain(repo, list(expected))
    assert [v.path for v in verdicts] == list(expected)
    assert {v.path: (v.ships, v.rule) for v in verdicts} == expected
    shipped = set(select(repo).paths())
    assert {v.path for v in verdicts if v.ships} == shipped & set(expected)


def test_explain_gitignore_rule_matches_git_check_ignore(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {".gitignore": "# c\n*.log\n", "sub/.gitignore": "*.tmp\n"})
    write_files(repo, {"sub/x.tmp": "", "a.log": "", "sub/b.log": ""})
    paths = ["sub/x.tmp", "a.log", "sub/b.log"]
    out = git(repo, "check-ignore", "-v", *paths).decode().splitlines()
    want = {line.split("\t")[1]: line.split("\t")[0] for line in out}
    assert want == {
        "sub/x.tmp": "sub/.gitignore:1:*.tmp",
        "a.log": ".gitignore:2:*.log",
        "sub/b.log": ".gitignore:2:*.log",
    }
    verdicts = explain(repo, paths)
    assert {v.path: (v.ships, v.rule) for v in verdicts} == {p: (False, want[p]) for p in paths}
    assert select(repo).paths() == [".gitignore", "sub/.gitignore"]


def test_explain_inside_a_checked_out_submodule(tmp_path: Path) -> None:
    # The reported disagreement: ls-files shipped lib/s.txt, --why said "not a file git lists".
    lib_files = {"s.txt": "", "d/t.txt": "", "x.log": "", ".gitignore": "*.tmp\n"}
    main = make_superproject(tmp_path, lib_files, {"a.txt": "", K: "*.log\n"}, at="lib")
    write_files(main, {"lib/new.txt": "", "lib/junk.tmp": "", "lib/e/u.txt": ""})
    expected = {".gitmodules", K, "a.txt", "lib/.gitignore", "lib/s.txt", "lib/d/t.txt"}
    ships(main, expected)
    untracked = (False, "submodule lib: untracked (a submodule ships its tracked files)")
    want = {
        "lib/s.txt": (True, "submodule lib: tracked"),
        "lib/d/t.txt": (True, "submodule lib: tracked"),
        "lib/x.log": (False, f"{K}:1:*.log"),
        "lib/new.txt": untracked,
        "lib/junk.tmp": untracked,
        "lib/e/u.txt": untracked,
        "lib": (True, "directory"),
        "lib/d": (True, "directory"),
        "lib/e": (False, "directory with no file that ships"),
        "lib/.git": (False, ".git"),
    }
    assert {v.path: (v.ships, v.rule) for v in explain(main, list(want))} == want


def test_explain_submodule_not_checked_out_and_nested_repository(tmp_path: Path) -> None:
    main = make_superproject(tmp_path, {"l.py": ""}, {"a.txt": ""})
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(main), str(clone))
    make_repo(clone, {"n.txt": ""}, name="nested")
    assert select(clone).paths() == [".gitmodules", "a.txt"]
    hint = "submodule not checked out; run `git submodule update --init ext`"
    nested = "a git repository that is not a submodule"
    want = {
        "ext": (False, hint),
        "ext/l.py": (False, "not found"),
        "nested": (False, nested),
        "nested/n.txt": (False, nested),
    }
    assert {v.path: (v.ships, v.rule) for v in explain(clone, list(want))} == want


def test_explain_directories(tmp_path: Path) -> None:
    files = {".gitignore": "cache/\nvendor/\n", K: "build/\n", "vendor/v.py": "", "src/a.py": ""}
    untracked = {"build/out.o": "", "cache/c.bin": "", "local/.keep.log": ""}
    repo = make_repo(tmp_path, files, untracked=untracked)
    write_files(repo, {f"local/{K}": ".keep.log\n"})
    want = {
        ".": (True, "directory"),
        "src": (True, "directory"),
        "vendor": (True, "directory"),  # gitignored, but its tracked file ships
        "build": (False, f"{K}:1:build/"),
        "cache": (False, ".gitignore:1:cache/"),
        "cache/c.bin": (False, ".gitignore:1:cache/"),
        "local": (True, "directory"),  # its .konduktorignore ships
        "local/.keep.log": (False, f"local/{K}:1:.keep.log"),
    }
    assert {v.path: (v.ships, v.rule) for v in explain(repo, list(want))} == want
    assert git(repo, "check-ignore", "-v", "cache").startswith(b".gitignore:1:cache/")
    assert set(select(repo).paths()) == {".gitignore", K, "vendor/v.py", "src/a.py", f"local/{K}"}


def test_explain_a_commit_reads_only_its_tree(tmp_path: Path) -> None:
    files = {K: "*.log\n", "a.log": "", "b.txt": "", "sub/c.txt": ""}
    repo = make_repo(tmp_path, files, symlinks={"ln": "b.txt"})
    (repo / "b.txt").unlink()
    write_files(repo, {K: "", "new.txt": ""})
    commit_all(repo, "second")
    old = git(repo, "rev-parse", "HEAD~1").decode().strip()
    ships(repo, {K, "b.txt", "ln", "sub/c.txt"}, commit=old)
    want = {
        "a.log": (False, f"{K}:1:*.log"),
        "b.txt": (True, "tracked"),
        "ln": (True, "tracked"),
        "sub": (True, "directory"),
        "new.txt": (False, f"not in commit {old[:12]}"),
        ".git/HEAD": (False, ".git"),
    }
    verdicts = explain(repo, list(want), commit="HEAD~1")
    assert {v.path: (v.ships, v.rule) for v in verdicts} == want


def test_explain_tells_a_missing_or_outside_path_as_an_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "", "sub/b.txt": ""}, untracked={"out.txt": ""})
    verdicts = explain(repo / "sub", ["b.txt", "nope.txt", "../out.txt", "../gone.txt"])
    assert [(v.path, v.ships, v.rule) for v in verdicts] == [
        ("b.txt", True, "tracked"),
        ("nope.txt", False, "not found"),
        ("../out.txt", False, "outside the synced directory"),
        ("../gone.txt", False, "not found"),
    ]
    assert [v.error for v in verdicts] == [
        None,
        f"nope.txt does not exist in {repo / 'sub'}; check the path",
        f"../out.txt is outside the synced directory {repo / 'sub'}; "
        "give --root a directory that holds it",
        "../gone.txt does not exist; check the path",
    ]
    [gone] = explain(repo, ["sub/c.txt"], commit="HEAD")
    assert gone.error is not None
    assert gone.error.startswith("sub/c.txt is not in commit ")


PICK_FILES = {
    "train.py": "",
    "model/net.py": "",
    "model/ckpt.pt": "",
    "model/deep/x.py": "",
    "data/big.bin": "",
    "notes.txt": "",
    ".gitignore": "*.log\n",
    KONDUKTORIGNORE: "*.pt\ndata/\n",
}


@pytest.mark.parametrize(
    "args",
    [
        ["train.py"],
        ["model"],
        ["model/deep", "train.py"],
        ["model/ckpt.pt"],  # tracked, excluded by .konduktorignore: nothing
        ["data", "data/big.bin"],  # an excluded directory: nothing
        ["new.py", "run.log"],  # untracked; gitignored
        ["notes.txt", "model/net.py", "notes.txt"],  # named twice: listed once
        ["."],
    ],
)
def test_pick_lists_what_git_ls_files_lists_of_what_ships(tmp_path: Path, args: list[str]) -> None:
    repo = make_repo(tmp_path, PICK_FILES, untracked={"new.py": "", "run.log": ""})
    (repo / "notes.txt").unlink()
    git_lists = ls_files(repo, "--cached", "--others", "--exclude-standard", "--", *args)
    listing = konduktor_selection.pick(repo, args)
    assert listing.errors == ()
    assert list(listing.paths) == sorted_paths(git_lists & git_oracle(repo))


def test_pick_reports_each_path_that_names_nothing_and_lists_the_rest(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, PICK_FILES)
    listing = konduktor_selection.pick(repo / "model", ["nope.py", "net.py", "../train.py"])
    assert listing.paths == ("net.py",)
    assert listing.errors == (
        f"nope.py does not exist in {repo / 'model'}; check the path",
        f"../train.py is outside the synced directory {repo / 'model'}; "
        "give --root a directory that holds it",
    )


def test_pick_from_a_commit_reads_its_tree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, PICK_FILES)
    (repo / "train.py").unlink()
    write_files(repo, {"new.py": ""})
    listing = konduktor_selection.pick(repo, ["train.py", "model", "new.py"], commit="HEAD")
    assert listing.paths == ("model/deep/x.py", "model/net.py", "train.py")
    assert len(listing.errors) == 1
    assert listing.errors[0].startswith("new.py is not in commit ")
    # in the work tree, a deleted tracked file is an answer (it does not ship), not an error
    assert konduktor_selection.pick(repo, ["train.py"]).errors == ()
