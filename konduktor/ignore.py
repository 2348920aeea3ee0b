"""Per-directory ignore files with git's own semantics.

git decides whether a path is ignored by walking from the root down: each
directory's ignore file adds rules that apply to that directory and below,
the last matching rule wins (deeper files after shallower ones, later lines
after earlier ones), a ``!`` rule re-includes, and once a directory is
excluded nothing below it is looked at again, so no rule can re-include a
file inside it (and ignore files inside it are never read).

Patterns are compiled by :mod:`konduktor.wildmatch` (git's wildmatch on pathspec's
pattern class). Each entry (directory or file) is tested on its own as git does, and
directory-only patterns (``build/``) are only tried on directories.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from konduktor.wildmatch import NEVER, WildmatchPattern, byte_view

_TRAILING_COMMENT = re.compile(r"^(?P<pattern>.*?[^\s\\])\s+#")


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One pattern line of one ignore file."""

    source: str  # the ignore file, relative to the sync root
    line: int
    text: str
    negate: bool
    dir_only: bool
    base: str  # directory of the ignore file, relative to the sync root ("" at the root)
    regex: re.Pattern[str]

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.text}"

    def matches(self, path: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        below = path[len(self.base) + 1 :] if self.base else path
        return self.regex.search(byte_view(below)) is not None


def _trim(line: str) -> str:
    """git's trailing-space rule: drop unescaped trailing spaces, and nothing else."""
    end = len(line)
    i = 0
    last_space = None
    while i < end:
        char = line[i]
        if char == " ":
            last_space = i if last_space is None else last_space
        elif char == "\\" and i + 1 < end:
            i += 1
            last_space = None
        else:
            last_space = None
        i += 1
    return line[:last_space] if last_space is not None else line


def _compile(text: str) -> tuple[re.Pattern[str], bool, bool] | None:
    """The regex, negation and directory-only flag of one line; None for no pattern."""
    text = _trim(text)
    if not text or text.startswith("#") or text in ("!", "/", "!/"):
        return None
    pattern = WildmatchPattern(text)
    assert pattern.regex is not None  # a compiled pattern always has one
    return pattern.regex, not pattern.include, pattern.dir_only


def parse(data: bytes, *, source: str, base: str, warnings: list[str]) -> list[Rule]:
    """Parse one ignore file's bytes the way git reads them (BOM and CR stripped).

    Lines that look like they carry a trailing comment add a warning: gitignore has no
    trailing comments, so the whole line is the pattern.
    """
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    rules = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        compiled = _compile(line)
        if compiled is None:
            continue
        regex, negate, dir_only = compiled
        rules.append(Rule(source, number, line, negate, dir_only, base, regex))
        hint = _comment_hint(line)
        if hint:
            warnings.append(
                f"{source}:{number}: {line!r} is one pattern (gitignore has no trailing "
                f"comments); did you mean {hint!r}?"
            )
    return rules


def _comment_hint(line: str) -> str | None:
    """The pattern a line that looks like ``pattern  # comment`` was probably meant to be."""
    hint = _TRAILING_COMMENT.match(line)
    return hint.group("pattern") if hint and not line.startswith("#") else None


class SymlinkedIgnoreFile(Exception):
    """Raised by a :data:`Reader`: the ignore file is a symlink, which git does not read."""


Reader = Callable[[str], "bytes | None"]
"""Returns the ignore file's content in a directory (relative to the root), or None;
raises :class:`SymlinkedIgnoreFile` if it is a symlink."""


class IgnoreChain:
    """The ignore files of one name (``.konduktorignore`` or ``.gitignore``) under one root.

    Only the *report* files' (default: *filename*) mistakes and unused rules are told.
    With *more*, each directory's rules are its *filename* file's lines followed by
    those of each file in *more* (``.gitignore`` then ``.konduktorignore``: the lines
    of the latter count as if appended to the former). *fallback* rules (git's
    ``info/exclude`` and ``core.excludesFile``, newest first) rank below every
    directory's. Sources are named relative to *prefix* (``../.gitignore`` above it),
    for a chain rooted above the sync root.
    """

    def __init__(
        self,
        filename: str,
        read: Reader,
        *,
        more: Sequence[tuple[str, Reader]] = (),
        fallback: Sequence[Rule] = (),
        prefix: str = "",
        report: str | None = None,
    ) -> None:
        self.filename = filename
        self._report = report or filename  # the files whose mistakes and unused rules are told
        self._files = ((filename, read), *more)
        self._fallback = tuple(fallback)
        self._prefix = prefix
        # directory -> (rule excluding it or a parent, rules inside it, newest first)
        self._dirs: dict[str, tuple[Rule | None, tuple[Rule, ...]]] = {}
        self._hit: set[Rule] = set()
        self.warnings: list[str] = []

    def _state(self, directory: str) -> tuple[Rule | None, tuple[Rule, ...]]:
        state = self._dirs.get(directory)
        if state is not None:
            return state
        if directory:
            parent, _, _ = directory.rpartition("/")
            excluded, inherited = self._state(parent)
            if excluded is None:
                rule = _last_match(inherited, directory, True)
                if rule is not None:
                    self._hit.add(rule)
                excluded = rule if rule is not None and not rule.negate else None
        else:
            excluded, inherited = None, self._fallback
        own: list[Rule] = []
        if excluded is None:  # git never reads ignore files inside excluded directories
            for name, read in self._files:
                source = self._source(directory, name)
                told = self.warnings if name == self._report else []
                data = self._read_file(read, directory, source, told)
                if data:
                    own += parse(data, source=source, base=directory, warnings=told)
        state = self._dirs[directory] = (excluded, (*reversed(own), *inherited))
        return state

    def _source(self, directory: str, name: str) -> str:
        path = f"{directory}/{name}" if directory else name
        return posixpath.relpath(path, self._prefix) if self._prefix else path

    def _read_file(
        self, read: Reader, directory: str, source: str, warnings: list[str]
    ) -> bytes | None:
        try:
            return read(directory)
        except SymlinkedIgnoreFile:
            warnings.append(
                f"{source}: is a symlink, and git reads no rule from a symlinked ignore "
                "file, so none of its rules apply; replace it with a regular file"
            )
            return None

    def decide(self, path: str, is_dir: bool = False) -> Rule | None:
        """The rule that decides *path*: it excludes it unless it is a ``!`` re-include.

        None when no rule matches. Deciding marks the rule used (see :meth:`unused`).
        """
        excluded, rules = self._state(path.rpartition("/")[0])
        if excluded is not None:
            return excluded
        for rule in rules:  # _last_match, inlined: this runs for every file of every launch
            if rule.matches(path, is_dir):
                self._hit.add(rule)
                return rule
        return None

    def reincluded_by(self, path: str) -> Rule | None:
        """The ``!`` rule that decided the nearest directory above *path*, if a ``!`` rule
        decided it (the reason a file under an excluded-looking directory is looked at)."""
        for directory in parent_dirs(path):
            _, rules = self._state(directory.rpartition("/")[0])
            rule = _last_match(rules, directory, True)
            if rule is not None:
                return rule if rule.negate else None
        return None

    def negations(self) -> list[Rule]:
        """The ``!`` rules of the files read so far."""
        return list({r for _, own in self._dirs.values() for r in own if r.negate})

    def excluded_dirs(self) -> Iterator[tuple[str, Rule]]:
        """The directories looked at so far that a rule excludes (theirs or a parent's)."""
        for directory, (rule, _) in self._dirs.items():
            if rule is not None:
                yield directory, rule

    def unused(self, paths: Iterable[str]) -> list[Rule]:
        """Rules read so far from *filename* files that match none of *paths* (files) nor
        their directories."""
        rules = {r for _, own in self._dirs.values() for r in own if self._named(r)} - self._hit
        if not rules:
            return []
        files = list(paths)
        dirs = {d for p in files for d in parent_dirs(p)}
        candidates = [(p, False) for p in files] + [(d, True) for d in dirs]
        unused = [
            r
            for r in rules
            if not any(
                r.matches(p, is_dir)
                for p, is_dir in candidates
                if not r.base or p.startswith(r.base + "/")
            )
        ]
        return sorted(unused, key=lambda r: (r.source, r.line))

    def unused_warnings(self, paths: Iterable[str]) -> list[str]:
        return [
            _unused_warning(rule)
            for rule in self.unused(paths)
            if _comment_hint(rule.text) is None  # already told, as a likely mistake
        ]

    def _named(self, rule: Rule) -> bool:
        return rule.source.rpartition("/")[2] == self._report


def _unused_warning(rule: Rule) -> str:
    if NEVER in rule.regex.pattern:
        return (
            f"{rule}: git never matches this pattern (a malformed or unclosed bracket "
            "expression, one holding only '/', or a trailing backslash); fix it, POSIX classes "
            "look like [[:digit:]]"
        )
    return f"{rule}: pattern matches nothing (harmless, unless it is a typo)"


def parent_dirs(path: str) -> Iterator[str]:
    while "/" in path:
        path = path.rpartition("/")[0]
        yield path


def _last_match(newest_first: tuple[Rule, ...], path: str, is_dir: bool) -> Rule | None:
    for rule in newest_first:
        if rule.matches(path, is_dir):
            return rule
    return None
