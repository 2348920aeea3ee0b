"""git's wildmatch (``wildmatch.c``) and pattern rules (``dir.c``) as Python regexes.

pathspec's gitignore translator is the base of the pattern class, but its translation
is replaced here: it hands bracket expressions to ``re`` almost verbatim (no POSIX
classes, a reversed range is an ``re`` error, a backslash is literal, ``[`` inside
prints FutureWarning) and normalizes ``**`` where git does not. This module follows
git's algorithm step by step instead:

- a pattern without a slash (a trailing one aside) is matched against the basename;
  one with a slash against the path below the ignore file's directory, after git
  compares its literal prefix (up to the first ``*?[\\``) by hand: so a ``**`` right
  after that prefix counts as starting a segment (``foo**/bar`` matches ``foobar``);
- ``**`` spans directories only between slashes (or the pattern's ends), elsewhere it
  is ``*``; a bracket expression is read as wildmatch reads it (``]`` first is
  literal, ``\\`` escapes, ``[z-a]`` matches ``z``, POSIX classes), and one that is
  malformed (unclosed, ``[[:bogus:]]``) makes the whole pattern match nothing.

git compares bytes: the regexes and the paths they are matched against are
"byte views" (each byte one latin-1 character), see :func:`byte_view`. Every regex
is built from escaped characters and ``\\xNN`` classes, so none can fail to compile
or make ``re`` warn.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

NEVER = "(?!)"
_SPECIAL = "*?[\\"
_SLASH = ord("/")


def _chars(text: str) -> frozenset[int]:
    return frozenset(map(ord, text))


def _span(first: str, last: str) -> frozenset[int]:
    return frozenset(range(ord(first), ord(last) + 1))


_LOWER, _UPPER, _DIGIT = _span("a", "z"), _span("A", "Z"), _span("0", "9")
_PRINT = _span(" ", "~")
_SPACE = _chars(" \t\n\r")  # git's own ctype: no \v nor \f (checked against git 2.39)
# Checked class by class against `git ls-files -i` over files named by every ASCII byte.
CLASSES: dict[str, frozenset[int]] = {
    "alnum": _LOWER | _UPPER | _DIGIT,
    "alpha": _LOWER | _UPPER,
    "blank": _chars(" \t"),
    "cntrl": frozenset(range(32)) | {127},
    "digit": _DIGIT,
    "graph": _PRINT - {ord(" ")},
    "lower": _LOWER,
    "print": _PRINT,
    "punct": _PRINT - _LOWER - _UPPER - _DIGIT - {ord(" ")},
    "space": _SPACE,
    "upper": _UPPER,
    "xdigit": _DIGIT | _span("a", "f") | _span("A", "F"),
}


class Malformed(ValueError):
    """A bracket expression wildmatch aborts on: the pattern matches nothing."""


def byte_view(text: str) -> str:
    """*text* (a path or pattern decoded with surrogateescape) with one character per byte."""
    return text if text.isascii() else os.fsencode(text).decode("latin-1")


def _class_regex(members: Iterable[int], negated: bool) -> str:
    chosen = set(members) ^ set(range(256)) if negated else set(members)
    chosen.discard(_SLASH)  # a bracket never matches '/', negated or not
    if not chosen:
        return NEVER
    runs: list[list[int]] = []
    for byte in sorted(chosen):
        if runs and runs[-1][1] == byte - 1:
            runs[-1][1] = byte
        else:
            runs.append([byte, byte])
    body = "".join(f"\\x{a:02x}" if a == b else f"\\x{a:02x}-\\x{b:02x}" for a, b in runs)
    return f"[{body}]"


def _posix_class(pattern: str, start: int) -> tuple[frozenset[int] | None, int]:
    """Read ``[:name:]`` at *start* (its ``[``): the class and the index of its ``]``.

    None and *start* when it is not a class (no ``:]`` before the next ``]``): then
    wildmatch takes the ``[`` as a literal character.
    """
    name_start = start + 2
    end = pattern.find("]", name_start)
    if end < 0:
        raise Malformed(pattern)
    if end - name_start - 1 < 0 or pattern[end - 1] != ":":
        return None, start
    members = CLASSES.get(pattern[name_start : end - 1])
    if members is None:
        raise Malformed(pattern)
    return members, end


def _bracket(pattern: str, i: int) -> tuple[str, int]:
    """Translate the bracket expression whose ``[`` is at *i*; returns (regex, next index).

    Mirrors wildmatch.c's loop: the first member is read before ``]`` can close, a
    range's start is the previous single character (so ``[z-a]`` holds ``z``).
    """
    i += 1
    negated = pattern[i : i + 1] in ("!", "^")
    i += negated
    members: set[int] = set()
    prev: str | None = None
    while True:
        char = _at(pattern, i)
        if char == "\\":
            i += 1
            char = _at(pattern, i)
            members.add(ord(char))
        elif char == "-" and prev and pattern[i + 1 : i + 2] not in ("", "]"):
            i += 1
            last = _at(pattern, i)
            if last == "\\":
                i += 1
                last = _at(pattern, i)
            members.update(range(ord(prev), ord(last) + 1))
            char = ""
        elif char == "[" and pattern[i + 1 : i + 2] == ":":
            posix, i = _posix_class(pattern, i)
            members.update(posix if posix is not None else {ord("[")})
            char = "" if posix is not None else "["
        else:
            members.add(ord(char))
        prev, i = char, i + 1
        if _at(pattern, i) == "]":
            return _class_regex(members, negated), i + 1


def _at(pattern: str, i: int) -> str:
    if i >= len(pattern):
        raise Malformed(pattern)  # unclosed bracket or a trailing backslash inside it
    return pattern[i]


def _stars(pattern: str, i: int, pathname: bool) -> tuple[str, int]:
    """Translate the run of ``*`` at *i*: ``**`` spans directories only as a whole segment."""
    end = i
    while end < len(pattern) and pattern[end] == "*":
        end += 1
    starts_segment = i == 0 or pattern[i - 1] == "/"  # i == 0: after git's literal prefix
    if not pathname or end - i == 1 or not starts_segment:
        return "[^/]*", end
    after = pattern[end : end + 2]
    if after[:1] == "/":  # zero or more whole directories
        return "(?:.*/)?", end + 1
    if after in ("", "\\/"):  # wildmatch tries no zero-directory match before "\/"
        return ".*", end
    return "[^/]*", end


def translate(pattern: str, *, pathname: bool) -> str:
    """The regex for wildmatch(*pattern*) over a whole string (WM_PATHNAME if *pathname*)."""
    out = []
    i = 0
    try:
        while i < len(pattern):
            char = pattern[i]
            if char == "*":
                part, i = _stars(pattern, i, pathname)
            elif char == "?":
                part, i = "[^/]", i + 1
            elif char == "[":
                part, i = _bracket(pattern, i)
            elif char == "\\":
                part, i = re.escape(_at(pattern, i + 1)), i + 2
            else:
                part, i = re.escape(char), i + 1
            out.append(part)
    except Malformed:
        return NEVER
    return "".join(out)


def _literal_prefix(pattern: str) -> int:
    """git's simple_length: how much of *pattern* precedes the first wildcard or escape."""
    return next((i for i, c in enumerate(pattern) if c in _SPECIAL), len(pattern))


def entry_regex(body: str) -> str:
    """The regex deciding one entry path (relative to the ignore file's directory).

    *body* is the pattern without ``!`` and trailing ``/``, as a byte view.
    """
    if "/" not in body:  # match_basename; wildmatch without WM_PATHNAME
        return f"(?s)(?:^|/){translate(body, pathname=False)}$"
    body = body.removeprefix("/")  # match_pathname
    prefix = _literal_prefix(body)
    rest = translate(body[prefix:], pathname=True)
    return f"(?s)^{re.escape(body[:prefix])}{rest}$"


class WildmatchPattern(GitIgnoreSpecPattern):
    """pathspec's gitignore pattern class, compiled by git's rules (see the module doc).

    *include* is False for a ``!`` line, as in pathspec; *dir_only* for a trailing ``/``.
    """

    __slots__ = ("dir_only",)

    def __init__(self, line: str) -> None:
        negate = line.startswith("!")
        body = line[negate:]
        self.dir_only = body.endswith("/")
        body = body.removesuffix("/")
        super().__init__(re.compile(entry_regex(byte_view(body))), include=not negate)
