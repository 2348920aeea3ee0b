"""Task files, compatible with Konduktor's task YAML (DESIGN §2).

A task file is validated by a JSON Schema (``TASK_SCHEMA``) and then by the rules
a schema cannot say (paths exist, mount targets do not collide, ``${VAR}``
references resolve). Every error names the file, the key path and the fix, e.g.
``task.yaml: resources.memory: '16G' is not a number of GiB; write memory: 16``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

from konduktor.errors import TaskError

WORKDIR_TARGET = "~/konduktor_workdir"
NAME = r"^[a-z0-9]([a-z0-9._-]{0,56}[a-z0-9])?$"  # job name = <name>-<4 hex>, at most 63
_NUMBER = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": r"^(0*[1-9][0-9]*(\.[0-9]+)?|0*\.[0-9]*[1-9][0-9]*)$"},
    ]
}
_SCALAR = {"type": ["string", "number", "boolean"]}

TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["run"],
    "properties": {
        "name": {"type": "string", "pattern": NAME},
        "num_nodes": {"type": "integer", "minimum": 1},
        "workdir": {"type": "string", "minLength": 1},
        "file_mounts": {
            "type": "object",
            "additionalProperties": {"type": "string", "minLength": 1},
        },
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "cpus": _NUMBER,
                "memory": _NUMBER,
                "accelerators": {"type": "string", "pattern": r"^[A-Za-z0-9_-]+(:[1-9][0-9]*)?$"},
                "image_id": {"type": "string", "minLength": 1},
                "labels": {"type": "object", "additionalProperties": _SCALAR},
            },
        },
        "envs": {"type": "object", "additionalProperties": {"anyOf": [_SCALAR, {"type": "null"}]}},
        "run": {"type": "string", "pattern": r"\S"},
    },
}

_FIXES = {
    "name": "use lowercase letters, digits and . _ - inside, at most 58 characters",
    "num_nodes": "write a whole number of nodes, at least 1",
    "cpus": "write a number of vCPUs, e.g. cpus: 4",
    "memory": "write a number of GiB, e.g. memory: 16",
    "accelerators": "write TYPE or TYPE:COUNT, e.g. accelerators: H100:8",
    "run": "give the commands to run, e.g. run: python train.py",
}


@dataclass(frozen=True)
class FileMount:
    target: str  # where it appears in the pod; ~ is the container user's $HOME
    source: str  # an absolute local path, or a bucket URL
    kind: Literal["dir", "file", "bucket"]


@dataclass(frozen=True)
class Resources:
    cpus: float | None = None
    memory: float | None = None  # GiB
    accelerators: str | None = None
    image_id: str = "ubuntu"
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    path: Path
    name: str
    num_nodes: int
    workdir: Path | None
    file_mounts: tuple[FileMount, ...]
    resources: Resources
    envs: Mapping[str, str]
    run: str


@dataclass(frozen=True)
class Overrides:
    """Command-line overrides, as in Konduktor's `launch`."""

    name: str | None = None
    num_nodes: int | None = None
    cpus: str | None = None
    memory: str | None = None
    gpus: str | None = None
    image_id: str | None = None
    envs: Sequence[str] = ()  # K=V, or K to take the value from the environment
    env_file: Path | None = None


def load(path: Path, overrides: Overrides | None = None) -> Task:
    """Read, override, validate and resolve a task file."""
    data = _read(path)
    data = _apply_overrides(path, data, overrides or Overrides())
    _validate(path, data)
    return _resolve(path, data)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TaskError(f"task file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"cannot read task file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise TaskError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise TaskError(f"{path}: a task file is a mapping of keys (name, run, ...)")
    return data


def _apply_overrides(path: Path, data: dict[str, Any], o: Overrides) -> dict[str, Any]:
    data = dict(data)
    if not isinstance(data.get("resources") or {}, dict) or not isinstance(
        data.get("envs") or {}, dict
    ):
        return data  # the schema reports it
    resources = dict(data.get("resources") or {})
    for key, value in (("name", o.name), ("num_nodes", o.num_nodes)):
        if value is not None:
            data[key] = value
    for key, value in (("cpus", o.cpus), ("memory", o.memory), ("image_id", o.image_id)):
        if value is not None:
            resources[key] = value
    if o.gpus is not None:
        resources["accelerators"] = o.gpus
    if resources or "resources" in data:
        data["resources"] = resources
    envs = dict(data.get("envs") or {})
    if o.env_file is not None:
        envs.update(_env_file(o.env_file))
    for item in o.envs:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                raise TaskError(f"--env {key}: not set in this environment; use --env {key}=VALUE")
            value = os.environ[key]
        envs[key] = value
    if envs or "envs" in data:
        data["envs"] = envs
    return data


def _env_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TaskError(f"--env-file {path}: cannot read it: {exc.strerror}") from exc
    found = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise TaskError(f"--env-file {path}:{number}: write KEY=VALUE")
        found[key.strip()] = value.strip().strip("'\"")
    return found


def _validate(path: Path, data: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(TASK_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise TaskError(_message(path, error))


def _message(path: Path, error: jsonschema.ValidationError) -> str:
    keys = [str(p) for p in error.absolute_path]
    where = ".".join(keys) or "(top level)"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        known = list(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known]
        key = extra[0] if extra else "?"
        at = f"{where}.{key}" if keys else key
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known)}"
        return f"{path}: unknown key `{at}`; {hint}"
    if error.validator == "required":
        return f"{path}: `run` is missing; {_FIXES['run']}"
    fix = _FIXES.get(keys[-1] if keys else "", "see the task file reference in the README")
    return f"{path}: {where}: {error.instance!r} is not valid; {fix}"


def _resolve(path: Path, data: dict[str, Any]) -> Task:
    base = path.parent
    envs = {k: _env_value(path, k, v) for k, v in (data.get("envs") or {}).items()}
    workdir = None
    if "workdir" in data:
        workdir = _local(path, "workdir", _substitute(path, "workdir", data["workdir"], envs), base)
        if not workdir.is_dir():
            raise TaskError(f"{path}: workdir: {workdir} is not a directory; fix the path")
    mounts = tuple(
        _mount(path, target, source, envs, base)
        for target, source in (data.get("file_mounts") or {}).items()
    )
    _check_targets(path, mounts)
    res = data.get("resources") or {}
    resources = Resources(
        cpus=float(res["cpus"]) if "cpus" in res else None,
        memory=float(res["memory"]) if "memory" in res else None,
        accelerators=res.get("accelerators"),
        image_id=res.get("image_id", "ubuntu"),
        labels={str(k): str(v) for k, v in (res.get("labels") or {}).items()},
    )
    name = data.get("name") or _default_name(path)
    return Task(
        path, name, int(data.get("num_nodes", 1)), workdir, mounts, resources, envs, data["run"]
    )


def _env_value(path: Path, key: str, value: object) -> str:
    if value is None:
        raise TaskError(
            f"{path}: envs.{key} has no value; set it in the file or pass --env {key}=V"
        )
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute(path: Path, where: str, text: str, envs: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in envs:
            raise TaskError(f"{path}: {where}: ${{{name}}} is not in envs; add it to envs or --env")
        return envs[name]

    return _VAR.sub(value, text)


def _local(path: Path, where: str, text: str, base: Path) -> Path:
    local = Path(os.path.expanduser(text))
    return (local if local.is_absolute() else base / local).resolve()


def _mount(path: Path, target: str, source: str, envs: Mapping[str, str], base: Path) -> FileMount:
    where = f"file_mounts.{target}"
    target = _substitute(path, where, target, envs)
    source = _substitute(path, where, source, envs)
    if "://" in target:
        raise TaskError(
            f"{path}: {where}: a mount target is a path in the pod, not a URL; "
            "write it as `/path/in/pod: s3://bucket/prefix`"
        )
    if not (target.startswith("/") or target == "~" or target.startswith("~/")):
        raise TaskError(f"{path}: {where}: the target must be absolute or start with ~/")
    if target.rstrip("/") in ("", "~") or ".." in target.split("/"):
        raise TaskError(
            f"{path}: {where}: a mount would replace the whole / or home directory, or "
            "climb with ..; name a directory or file inside it, e.g. ~/data"
        )
    if source.startswith(("s3://", "gs://")):
        return FileMount(target, source, "bucket")
    if "://" in source:
        raise TaskError(f"{path}: {where}: {source!r}: only s3:// and gs:// URLs can be mounted")
    local = _local(path, where, source, base)
    if not local.exists():
        raise TaskError(f"{path}: {where}: {local} does not exist; fix the source path")
    return FileMount(target, str(local), "dir" if local.is_dir() else "file")


def _check_targets(path: Path, mounts: Sequence[FileMount]) -> None:
    workdir = WORKDIR_TARGET.rstrip("/")
    for mount in mounts:
        target = mount.target.rstrip("/")
        if target == workdir or target.startswith(workdir + "/"):
            raise TaskError(
                f"{path}: file_mounts.{mount.target}: collides with the workdir's place "
                f"{WORKDIR_TARGET}; mount it elsewhere"
            )


def _default_name(path: Path) -> str:
    stem = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("._-")
    return stem[:58] or "task"
