"""git's wildmatch grammar in ``.konduktorignore`` (issue 16), case by case against git.

Each case states what ships by hand and checks that git agrees (``git_oracle``), then
that konduktor ships the same, says "matches nothing" of no rule git decides a path
with (``git check-ignore``), and lets no Python warning through.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from gitrepo_helpers import (
    KONDUKTORIGNORE,
    assert_why_agrees,
    check_ignore,
    git_oracle,
    ls_files,
    make_repo,
    sorted_paths,
)
from test_selection_property import ATOMS, DIRS, ENDS, NAMES

from konduktor.cli import cli
from konduktor.selection import Selection, select
from konduktor.wildmatch import CLASSES, translate

K = KONDUKTORIGNORE

JENKINS_HOME = """\
# JENKINS_HOME.gitignore from github/gitignore, .gitignore renamed
/*
!/jobs
!/.konduktorignore
!/*.xml
jobs/**
!jobs/**/
!config.xml
"""

CASES = [
    pytest.param(
        ["experiments/run_13.py", "experiments/run_x.py"],
        "*[[:digit:]].py\n",
        {K, "experiments/run_x.py"},
        id="posix-digit",
    ),
    pytest.param(
        ["examples/a.py", "exampLes/b.py", "main.py"],
        "examp[[:lower:]]es\n",
        {K, "exampLes/b.py", "main.py"},
        id="posix-lower-directory",
    ),
    pytest.param(
        ["conf/full.yaml", "conf/sub/full.yaml", "conf/full.Yaml"],
        {K: "*.yaml\n*.Yaml\n", f"conf/{K}": "!**/full.[[:lower:]]aml\n"},
        {K, f"conf/{K}", "conf/full.yaml", "conf/sub/full.yaml"},
        id="nested-negated-posix-class",
    ),
    pytest.param(
        ["a1", "B1", "_1", "x9", "X9", "c2", "-2"],
        "[![:lower:]]1\n[a-c[:digit:]]2\n[[:upper:][:punct:]]9\n",
        {K, "a1", "x9", "-2"},
        id="posix-mixed-and-negated",
    ),
    pytest.param(
        ["docs/readme.md", "docs/api/index.md", "docs/keep/k.md"],
        "docs/**/\n!keep\n",
        {K, "docs/readme.md", "docs/keep/k.md"},
        id="dir-double-star-slash-is-not-dir",
    ),
    pytest.param(
        ["data/shakespeare/notes", "data/other/x", "data/top.txt"],
        "/data/**/\n!shakespeare\n",
        {K, "data/shakespeare/notes", "data/top.txt"},
        id="data-double-star-then-reinclude",
    ),
    pytest.param(["z1", "a1", "m1"], "[z-a]1\n", {K, "a1", "m1"}, id="reversed-range"),
    pytest.param(
        ["]1", "-3", "b3", "\\1"], "[\\]]1\n[a\\-c]3\n", {K, "b3", "\\1"}, id="bracket-escapes"
    ),
    pytest.param(
        ["foobar", "foo/x/bar", "foo/bar/x", "foo/baz", "c/y/d", "cx", "z", "q/z"],
        "foo**/bar\nc**/d\n***/z\n",
        {K, "foo/baz", "cx"},
        id="double-star-quirks",
    ),
    pytest.param(
        ["a", "[", ":", "b"],
        "[[:bogus:]]\n[[:alpha:]\n[\n[[:]\n",
        {K, "a", "b"},
        id="malformed-brackets",
    ),
    pytest.param(
        [
            "config.xml",
            "secret.key",
            "hudson.model.UpdateCenter.xml",
            "plugins/git.jpi",
            "users/admin/config.xml",
            "jobs/build/config.xml",
            "jobs/build/nextBuildNumber",
            "jobs/build/builds/1/log",
            "jobs/folder/config.xml",
            "jobs/folder/jobs/inner/config.xml",
            "jobs/folder/jobs/inner/builds/2/log",
        ],
        JENKINS_HOME,
        {
            K,
            "config.xml",
            "hudson.model.UpdateCenter.xml",
            "jobs/build/config.xml",
            "jobs/folder/config.xml",
            "jobs/folder/jobs/inner/config.xml",
        },
        id="jenkins-home-template",
    ),
]


def _select(root: Path) -> Selection:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning from re fails the test
        return select(root)


def _no_false_nothing(root: Path, selection: Selection, scratch: Path) -> None:
    """No rule git decides a path with is called one that matches nothing."""
    paths = [p.relative_to(root).as_posix() for p in root.rglob("*") if ".git" not in p.parts]
    decided = {rule for rule in check_ignore(root, paths, K, scratch).values() if rule}
    told = {w.removesuffix(_NOTHING) for w in selection.warnings if w.endswith(_NOTHING)}
    assert not told & decided, selection.warnings


_NOTHING = ": pattern matches nothing (harmless, unless it is a typo)"


@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
@pytest.mark.parametrize(("files", "ignores", "expected"), CASES)
def test_pattern_agrees_with_git(
    tmp_path: Path,
    files: list[str],
    ignores: str | dict[str, str],
    expected: set[str],
    tracked: bool,
) -> None:
    tree = {name: "x\n" for name in files} | (
        ignores if isinstance(ignores, dict) else {K: ignores}
    )
    repo = make_repo(tmp_path, tree) if tracked else make_repo(tmp_path, {}, untracked=tree)
    assert git_oracle(repo) == expected
    selection = _select(repo)
    assert selection.paths() == sorted_paths(expected)
    assert_why_agrees(repo, selection.paths())
    _no_false_nothing(repo, selection, tmp_path / "scratch")


def test_posix_classes_are_gits(tmp_path: Path) -> None:
    # One file per ASCII byte ('/' and NUL aside): git says which each class matches.
    bytes_ = [b for b in range(1, 128) if b != ord("/")]
    files = {os.fsdecode(b"f" + bytes([b])): "" for b in bytes_}
    repo = make_repo(tmp_path, {}, untracked=files)
    for name, members in CLASSES.items():
        (repo / K).write_text(f"f[[:{name}:]]\n")
        by_git = ls_files(repo, "-o", "-i", f"--exclude-per-directory={K}")
        assert {os.fsencode(p)[1] for p in by_git} == members - {0, ord("/")}, name


@pytest.mark.parametrize(
    "pattern", ["[z-a]", "[[a]", "[[:alpha:][]", "[\\", "a\\", "[!]", "[]-[]", "[^-^]"]
)
def test_no_pattern_fails_to_compile_or_warns(pattern: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pathname in (False, True):
            re.compile(translate(pattern, pathname=pathname))


def test_reversed_range_does_not_stop_ls_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"z1": "", "a1": "", K: "[z-a]1\n"})
    result = CliRunner().invoke(cli, ["ls-files", str(repo)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [K, "a1"]


def test_symlinked_konduktorignore_is_not_read(tmp_path: Path) -> None:
    files = {"rules": "*.secret\n", "d/key.secret": "", "d/a.py": ""}
    repo = make_repo(tmp_path, files, symlinks={f"d/{K}": "../rules"})
    expected = {"rules", "d/key.secret", "d/a.py", f"d/{K}"}
    assert git_oracle(repo) == expected  # git warns "unable to access" and applies nothing
    for commit in (None, "HEAD"):
        selection = select(repo, commit=commit)
        assert selection.paths() == sorted_paths(expected)
        told = [w for w in selection.warnings if w.startswith(f"d/{K}: is a symlink")]
        assert len(told) == 1, selection.warnings


def test_malformed_bracket_is_told_as_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a": "", K: "[[:bogus:]]\n[[:alpha:]\n"})
    warned = [w for w in _select(repo).warnings if "git never matches this pattern" in w]
    assert [w.split(": git never")[0] for w in warned] == [
        f"{K}:1:[[:bogus:]]",
        f"{K}:2:[[:alpha:]",
    ]


def test_commented_line_is_warned_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"secret.txt": "", K: "secret.txt  # keep out\n"})
    warned = [w for w in _select(repo).warnings if f"{K}:1" in w]
    assert len(warned) == 1, warned
    assert "did you mean 'secret.txt'?" in warned[0]


def test_konduktorignore_above_the_root_is_reported(tmp_path: Path) -> None:
    files = {K: "*.secret\n", "sub/key.secret": "", "sub/deeper/a.py": ""}
    repo = make_repo(tmp_path, files)
    for root in (repo / "sub", repo / "sub" / "deeper"):
        for commit in (None, "HEAD"):
            selection = select(root, commit=commit)
            assert selection.paths() == (
                ["deeper/a.py", "key.secret"] if root.name == "sub" else ["a.py"]
            )
            told = [w for w in selection.warnings if "above the sync root" in w]
            if root.name == "deeper":  # its rules name nothing that ships from there
                assert told == []
                continue
            assert told == [
                f"{repo / K}: not applied, it is above the sync root {root}, so 1 file(s) it "
                f"names ship (key.secret); move its rules into {root / K} if they are meant "
                "for this launch"
            ]
    assert not any("above" in w for w in select(repo).warnings)


EXTRA_ATOMS = ["**\\/", "\\/", "*a*", "a**", "**a", "*/", "?/", "[/]", "[!/]", "[a-]", "[--0]"]


def _random_pattern(rng: random.Random) -> str:
    atoms = ATOMS + EXTRA_ATOMS
    segments = ["".join(rng.choices(atoms, k=rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
    return rng.choice(["", "!", "/", "**/"]) + "/".join(segments) + rng.choice(ENDS)


def test_many_patterns_agree_with_git(tmp_path: Path) -> None:
    # One directory per pattern pair, each holding the same tree: one git call decides all.
    rng = random.Random(16)
    names = {
        "/".join([*rng.choices(DIRS, k=rng.randint(0, 2)), rng.choice(NAMES)]) for _ in range(24)
    }
    names = {n for n in names if not any(o.startswith(n + "/") for o in names)}
    tree = {}
    for i in range(200):
        lines = [_random_pattern(rng) for _ in range(rng.randint(1, 2))]
        tree |= {f"p{i}/{K}": "".join(f"{line}\n" for line in lines)}
        tree |= {f"p{i}/{n}": "" for n in names}
    repo = make_repo(tmp_path, {}, untracked=tree)
    by_git = ls_files(repo, "-o", "-i", f"--exclude-per-directory={K}")
    assert sorted_paths(set(tree) - by_git) == _select(repo).paths()
