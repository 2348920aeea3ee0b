"""Property: for any small tree, what ships is what git says ships (DESIGN.md §3), and
``ls-files --why`` agrees with ``ls-files`` on every path of the tree.

Trees mix tracked, untracked and deleted files under zero to three ``.gitignore``
and one to three ``.konduktorignore`` files; their lines are drawn from a fixed list and
from wildmatch's whole grammar (``*``, ``?``, ``**`` in every position, bracket
expressions with ranges, reversed ranges, POSIX classes, ``!``/``^`` negation and
escapes, malformed brackets, ``!`` re-includes, anchoring, trailing ``/`` and
trailing spaces), over names chosen to hit them. A ``!`` line of a ``.konduktorignore``
re-includes what a ``.gitignore`` excluded, and a deeper ``.gitignore`` wins over a
shallower ``.konduktorignore``. The oracle is ``git_oracle`` (git ls-files, on a copy
whose ``.gitignore`` files have the ``.konduktorignore`` lines appended, see
gitrepo_helpers). 240 trees cost about 40 s on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gitrepo_helpers import (
    KONDUKTORIGNORE,
    assert_why_agrees,
    git,
    git_oracle,
    sorted_paths,
    write_files,
)
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from konduktor.selection import select

DIRS = ["a", "b", "c", "d9"]
# "b" is also a directory name; the others are there for brackets, classes and escapes
NAMES = ["x.py", "y.log", "z", "k.txt", "b", "]1", "-3", "b3", "Z9", "z ", "[", ":", "é", "*"]
NESTED_IGNORE_DIRS = ["a", "b", "a/b", "c", "d9"]
LINES = [
    "*.log",
    "!y.log",
    "b/",
    "/a",
    "a/**",
    "**/z",
    "!a/x.py",
    "*",
    "!*.py",
    "!*/",
    "!b/",
    "!c",
    "c",
    "a/*/k.txt",
    "[xy].*",
    "z   ",
    "*.log   # trailing comment",
    "",
    "# comment",
]


# Pieces of one path segment of a generated pattern.
ATOMS = [
    *("a", "b", "c", "x", "z", "9", "3", "1", ".py", ".log", "d", "é"),
    *("*", "?", "**", "***"),
    *("[xy]", "[!xy]", "[^a-c]", "[z-a]", "[a-c[:digit:]]", "[\\]]", "[a\\-c]", "[]a]"),
    *("[[:digit:]]", "[![:lower:]]", "[[:upper:][:punct:]]", "[[:space:]]", "[[:alnum:]]"),
    *("[[:bogus:]]", "[[:alpha:]", "[", "[[:]", "[!]", "[-]", "[\\", "[!é]"),
    *("\\*", "\\?", "\\[", "\\ ", "\\a", "\\!", "\\#"),
]
ENDS = ["", "", "/", " ", "  ", "\\ ", "\t", "/ "]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    """One line of wildmatch's grammar: 1 to 3 segments of 1 or 2 atoms."""
    segment = st.lists(st.sampled_from(ATOMS), min_size=1, max_size=2).map("".join)
    body = "/".join(draw(st.lists(segment, min_size=1, max_size=3)))
    bang = draw(st.sampled_from(["", "", "!"]))
    anchor = draw(st.sampled_from(["", "", "/", "**/"]))
    return f"{bang}{anchor}{body}{draw(st.sampled_from(ENDS))}"


LINE = st.one_of(st.sampled_from(LINES), patterns())
# .gitignore lines: mostly broad ones, so that untracked files are often gitignored and
# the .konduktorignore `!` lines have something to re-include
GITIGNORE_LINES = ["*.log", "*.py", "b/", "a", "z", "*", "d9/", "[xy].*", "k.txt", "!x.py"]
GITIGNORE_LINE = st.one_of(*[st.sampled_from(GITIGNORE_LINES)] * 3, LINE)
REINCLUDE = st.sampled_from(["!*/", *(f"!{line}" for line in GITIGNORE_LINES if line[0] != "!")])
KONDUKTOR_LINE = st.one_of(LINE, REINCLUDE, REINCLUDE)


@dataclass(frozen=True)
class Tree:
    contents: dict[str, str]  # path -> content; ignore files included
    states: dict[str, str]  # path -> "tracked" | "untracked" | "deleted" (tracked, then removed)


def ignore_path(directory: str, name: str = KONDUKTORIGNORE) -> str:
    return f"{directory}/{name}" if directory else name


def _clashes(path: str, others: set[str]) -> bool:
    """A file whose path is also used as a directory cannot exist."""
    return any(other.startswith(path + "/") for other in others)


@st.composite
def trees(draw: st.DrawFn, reinclude: bool = False) -> Tree:
    """A tree; with *reinclude*, one made for `!` lines re-including gitignored files: a
    root .gitignore of broad lines, mostly untracked files, mostly `!` lines."""
    path = st.tuples(st.lists(st.sampled_from(DIRS), max_size=3), st.sampled_from(NAMES)).map(
        lambda t: "/".join([*t[0], t[1]])
    )
    paths = draw(st.lists(path, min_size=4, max_size=20, unique=True))
    nested = st.lists(st.sampled_from(NESTED_IGNORE_DIRS), max_size=2, unique=True)
    ignore_dirs = ["", *draw(nested)]
    gitignore_dirs = draw(st.lists(st.sampled_from(["", "", *NESTED_IGNORE_DIRS]), max_size=3))
    gitignore_dirs = ["", *gitignore_dirs] if reinclude else gitignore_dirs
    ignores = [ignore_path(d) for d in ignore_dirs]
    ignores += [ignore_path(d, ".gitignore") for d in dict.fromkeys(gitignore_dirs)]
    used = set(paths) | set(ignores)
    contents = {p: "x\n" for p in paths if not _clashes(p, used)}
    end = draw(st.sampled_from(["\n", "\r\n"]))
    drawn: list[str] = []  # the .gitignore lines so far, which `!` lines may undo
    if reinclude:  # the .gitignore files first
        ignores.sort(key=lambda p: KONDUKTORIGNORE in p)
    for path in ignores:
        konduktor = KONDUKTORIGNORE in path
        line = KONDUKTOR_LINE if konduktor else GITIGNORE_LINE
        if reinclude and konduktor:
            undo = [f"!{line}" for line in drawn if line and line[0] not in "!#"]
            choices = [LINE, REINCLUDE, *[st.sampled_from(undo)] * 3] if undo else [LINE]
            line = st.one_of(*choices, REINCLUDE, REINCLUDE)
        lines = draw(st.lists(line, min_size=1, max_size=5 if konduktor else 3))
        drawn += [] if konduktor else lines
        contents[path] = "".join(line + end for line in lines)
    state = st.sampled_from(["tracked", "tracked", "untracked", "untracked", "deleted"])
    if reinclude:
        state = st.sampled_from(["tracked", "untracked", "untracked", "untracked"])
    return Tree(contents=contents, states={p: draw(state) for p in contents})


def build(root: Path, tree: Tree) -> None:
    git(root, "init", "-q", "-b", "main")
    write_files(root, tree.contents)
    tracked = [p for p, s in tree.states.items() if s != "untracked"]
    listing = b"".join(os.fsencode(p) + b"\0" for p in tracked)
    git(root, "add", "--force", "--pathspec-from-file=-", "--pathspec-file-nul", stdin=listing)
    git(root, "commit", "-q", "--allow-empty", "-m", "tree")
    for p, s in tree.states.items():
        if s == "deleted":
            (root / p).unlink()


SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@settings(max_examples=240, **SETTINGS)
@given(tree=trees())
def test_selection_matches_git(tree: Tree) -> None:
    check(tree)


@settings(max_examples=120, **SETTINGS)
@given(tree=trees(reinclude=True))
def test_re_including_gitignored_files_matches_git(tree: Tree) -> None:
    check(tree)


def check(tree: Tree) -> None:
    root = Path(tempfile.mkdtemp(prefix="konduktor-prop-"))
    try:
        build(root, tree)
        note(f"states: {tree.states}")
        note(f"ignore files: { {p: c for p, c in tree.contents.items() if 'ignore' in p} }")
        expected = git_oracle(root)
        shipped = select(root).paths()
        assert shipped == sorted_paths(expected)
        assert_why_agrees(root, shipped)  # `ls-files --why` says the same of every path
    finally:
        shutil.rmtree(root)
