"""The files a user writes (task files, the config, ``--env-file``), read defensively.

- Only a regular file is read (a FIFO or ``/dev/zero`` would block or never end), and
  at most :data:`MAX_FILE_BYTES` of it; it must be UTF-8.
- YAML goes through PyYAML's safe loader made stricter: **aliases** (``*name``) are
  refused, since expanding them is how a few lines become gigabytes (a "billion
  laughs"), and neither task files nor the config need them; a **key given twice** in
  one mapping is refused (PyYAML keeps the last one silently), each one named with its
  line when the caller collects them (``duplicates=``) so that they are reported with
  the file's other mistakes; nesting deeper than :data:`MAX_DEPTH` is refused before
  Python's recursion limit is reached.
- Every error is one line, ``file:line:column: cannot read the task file: problem``,
  raised as the caller's
  :class:`~konduktor.errors.KonduktorError` subclass.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, NoReturn, cast

import yaml

from konduktor import units
from konduktor.errors import KonduktorError

MAX_FILE_BYTES = units.MB  # far above any sensible task file or config
MAX_DEPTH = 32


def read_text(path: Path, error: type[KonduktorError], what: str) -> str:
    """*path*'s text; FileNotFoundError when it does not exist, *error* for the rest."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file; give the path of a file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}; check its permissions") from exc
    if len(data) > MAX_FILE_BYTES:
        raise error(
            f"{what} {path} is over {units.size(MAX_FILE_BYTES)}, too big to be one; check the "
            "path (long scripts and data belong in files)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{path}:{line}: cannot read the {what}: not UTF-8 text (byte {exc.start}); "
            "save it as UTF-8"
        ) from None


def load_yaml(
    path: Path, error: type[KonduktorError], what: str, duplicates: list[str] | None = None
) -> Any:
    """The YAML document in *path* (see the module docstring for what is refused). With
    *duplicates*, a key given twice is not raised but added there, as a line
    ``file:line:column: key 'run' is given twice (first at line 1); keep one``, and the
    document read on (the caller reports them)."""
    text = read_text(path, error, what)
    try:
        data, twice = _parse(text, collect=duplicates is not None)
        if duplicates is not None:
            duplicates += [f"{path}:{line}:{column}: {problem}" for line, column, problem in twice]
        return data
    except yaml.MarkedYAMLError as exc:
        raise error(_marked(path, what, exc)) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise error(
            f"{path}:{line}: cannot read the {what}: character #x{exc.character:04x} is not "
            "allowed in YAML; remove it"
        ) from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise error(f"{path}: cannot read the {what}: not valid YAML: {problem}") from None


def _parse(text: str, *, collect: bool = False) -> tuple[Any, list[tuple[int, int, str]]]:
    loader = _StrictLoader(text)
    loader.duplicates = [] if collect else None
    try:
        return loader.get_single_data(), loader.duplicates or []
    finally:
        loader.dispose()


def _marked(path: Path, what: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = " ".join(str(exc.problem or exc.context).split())
    context = ""
    if exc.problem and exc.context and exc.context_mark:
        context = f" ({exc.context} at line {exc.context_mark.line + 1})"
    return f"{where}: cannot read the {what}: not valid YAML: {problem}{context}"


class _StrictLoader(yaml.SafeLoader):
    depth = 0
    duplicates: list[tuple[int, int, str]] | None = None  # collected, or None: raised

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            problem = f"alias *{event.anchor} is refused (aliases expand without bound)"
            _refuse(f"{problem}; write the value out", event)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            _refuse(f"nested deeper than {MAX_DEPTH} levels", event)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[object, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            mark = key_node.start_mark
            if key in first:
                problem = f"key {key!r} is given twice (first at line {first[key]}); keep one"
                if self.duplicates is None:
                    raise yaml.constructor.ConstructorError(None, None, problem, mark)
                self.duplicates.append((mark.line + 1, mark.column + 1, problem))
            else:
                first[key] = mark.line + 1
        return super().construct_mapping(node, deep)


def _refuse(problem: str, event: yaml.Event) -> NoReturn:
    mark = cast(yaml.error.Mark, event.start_mark)
    raise yaml.composer.ComposerError(None, None, problem, mark)
