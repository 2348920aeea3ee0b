"""Task files, compatible with Konduktor's task YAML (DESIGN §2).

A task file is validated by a JSON Schema (``TASK_SCHEMA``) and then by the rules
a schema cannot say (paths exist, mount targets do not collide, ``${VAR}``
references resolve). Every error names the file, the key path and the fix, e.g.
``task.yaml: resources.memory: '16G' is not a number of GiB; write memory: 16``;
the mistakes of one file are reported together, in one line.

Sizes and counts are bounded here, before anything is uploaded, by what a JobSet can
carry (see the README's "Limits"): :data:`MAX_NODES`, :data:`MAX_CPUS`,
:data:`MAX_MEMORY_GIB`, :data:`MAX_GPUS` and :data:`MAX_TEXT_BYTES` for ``run:`` and
``envs`` together.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema

from konduktor import inputs
from konduktor.errors import TaskError, UsageError

WORKDIR_TARGET = "~/konduktor_workdir"
# A DNS-1035 label short enough that every pod's host name, <name>-<8 hex>-workers-0-<rank>
# (rank up to MAX_NODES - 1), fits Kubernetes' 63 characters.
MAX_NAME = 40
NAME = rf"^[a-z]([-a-z0-9]{{0,{MAX_NAME - 2}}}[a-z0-9])?$"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# NODE_HOST_IPS lists every pod's host name (up to 140 bytes each) in one env var, and
# Linux caps one env string at 128 KiB: 512 nodes keep it under 72 KB.
MAX_NODES = 512
MAX_CPUS = 1024  # vCPUs: above the largest machines sold
MAX_MEMORY_GIB = 65536
MAX_GPUS = 64  # per node
# run: rides in the pod's `sh -c` script, one argument, which Linux caps at 128 KiB
# (MAX_ARG_STRLEN); the script's own code takes about 24 KiB of it. envs go into the
# container's env beside it.
MAX_TEXT_BYTES = 64 << 10
_LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
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
        "num_nodes": {"type": "integer", "minimum": 1, "maximum": MAX_NODES},
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
                "image_id": {"type": "string", "pattern": r"^\S+$"},
                "labels": {
                    "type": "object",
                    "propertyNames": {"pattern": _LABEL_KEY},
                    "additionalProperties": {
                        "anyOf": [
                            {"type": "string", "pattern": _LABEL_VALUE},
                            {"type": ["number", "boolean"]},
                        ]
                    },
                },
            },
        },
        "envs": {
            "type": "object",
            "propertyNames": {"pattern": f"^{ENV_NAME.pattern}$"},
            "additionalProperties": {"anyOf": [_SCALAR, {"type": "null"}]},
        },
        "run": {"type": "string", "pattern": r"\S"},
    },
}

_FIXES = {
    "name": f"use lowercase letters, digits and -, starting with a letter, at most {MAX_NAME} "
    "characters (Kubernetes names the pods' hosts after it), e.g. name: my-train",
    "num_nodes": f"write a whole number of nodes, at least 1 and at most {MAX_NODES}",
    "cpus": f"write a number of vCPUs above 0 and at most {MAX_CPUS}, e.g. cpus: 4",
    "memory": f"write a number of GiB above 0 and at most {MAX_MEMORY_GIB}, e.g. memory: 16",
    "accelerators": f"write TYPE or TYPE:COUNT (COUNT at most {MAX_GPUS}), e.g. H100:8",
    "image_id": "write an image reference without spaces, e.g. image_id: ubuntu:22.04",
    "labels": "write Kubernetes labels: name (or prefix/name) and value of at most 63 "
    "letters, digits, - _ .",
    "envs": "names are letters, digits and _, not starting with a digit, e.g. MY_VAR",
    "envs value": "write a string, a number or true/false",
    "labels value": "write at most 63 letters, digits, - _ . (starting and ending with a "
    "letter or digit)",
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
    workdir: Path | None = None  # relative to the current directory, as on a command line


# Where each override lands in the task, as the key paths in error messages name it.
_FLAGS = {
    "name": "--name",
    "num_nodes": "--num-nodes",
    "resources.cpus": "--cpus",
    "resources.memory": "--memory",
    "resources.accelerators": "--gpus",
    "resources.image_id": "--image-id",
}


def load(path: Path, overrides: Overrides | None = None) -> Task:
    """Read, override, validate and resolve a task file."""
    overrides = overrides or Overrides()
    data = _read(path)
    data = _apply_overrides(path, data, overrides)
    given = {
        "name": overrides.name,
        "num_nodes": overrides.num_nodes,
        "resources.cpus": overrides.cpus,
        "resources.memory": overrides.memory,
        "resources.accelerators": overrides.gpus,
        "resources.image_id": overrides.image_id,
    }
    _validate(path, data, {key for key, value in given.items() if value is not None})
    return _resolve(path, data)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = inputs.load_yaml(path, TaskError, "task file")
    except FileNotFoundError:
        raise TaskError(f"task file {path} does not exist; check the path") from None
    except OSError as exc:
        raise TaskError(f"cannot read task file {path}: {exc.strerror}") from exc
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
    if o.workdir is not None:
        data["workdir"] = os.path.abspath(o.workdir)
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
    envs.update(_cli_envs(o.envs))
    if envs or "envs" in data:
        data["envs"] = envs
    return data


def _cli_envs(items: Sequence[str]) -> dict[str, str]:
    """``--env K=V`` and ``--env K`` (K's value here); every bad name is reported at once."""
    found, bad = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not ENV_NAME.fullmatch(key):
            bad.append(repr(key))  # the name only: the value may be a secret
        elif not sep and key not in os.environ:
            raise UsageError(f"--env {key}: not set in this environment; use --env {key}=VALUE")
        else:
            found[key] = value if sep else os.environ[key]
    if bad:
        raise UsageError(f"--env {', '.join(bad)}: not a variable name; {_FIXES['envs']}")
    return found


def _env_file(path: Path) -> dict[str, str]:
    try:
        lines = inputs.read_text(path, TaskError, "--env-file").splitlines()
    except OSError as exc:
        raise TaskError(f"--env-file {path}: cannot read it: {exc.strerror}") from exc
    found, problems = {}, []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"{number}: write KEY=VALUE")
        elif not ENV_NAME.fullmatch(key):
            problems.append(f"{number}: {key!r} is not a variable name; {_FIXES['envs']}")
        else:
            found[key] = value.strip().strip("'\"")
    if problems:
        raise TaskError(f"--env-file {path}:" + f"; {path}:".join(problems))
    return found


def _validate(path: Path, data: dict[str, Any], overridden: Set[str] = frozenset()) -> None:
    """Every mistake the schema and the limits find, in one line; a value from the command
    line (its key path in *overridden*) is blamed on its flag, not on the file."""
    validator = jsonschema.Draft202012Validator(TASK_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.path])
    problems = list(dict.fromkeys([*(_message(e) for e in errors), *_limits(data)]))
    flags, in_file = [], []
    for problem in problems:
        key = problem.partition(":")[0]
        if key in overridden:
            flags.append(_FLAGS[key] + problem[len(key) :])
        else:
            in_file.append(problem)
    if in_file:
        raise TaskError("; ".join([*flags, f"{path}: " + "; ".join(in_file)]))
    if flags:  # the file is fine: only the command line is wrong
        raise UsageError("; ".join(flags))


def _message(error: jsonschema.ValidationError) -> str:
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
        return f"unknown key `{at}`; {hint}"
    if error.validator == "required":
        return f"`run` is missing; {_FIXES['run']}"
    return f"{where}: {error.instance!r} is not valid; {_fix(keys, error)}"


def _fix(keys: list[str], error: jsonschema.ValidationError) -> str:
    """The advice for a bad value at *keys*: a mapping's values get their own."""
    key = keys[-1] if keys else ""
    if error.validator != "propertyNames" and len(keys) > 1 and keys[-2] in ("envs", "labels"):
        key = f"{keys[-2]} value"
    return _FIXES.get(key, 'see "Task file reference" in the README')


def _limits(data: dict[str, Any]) -> list[str]:
    """What the schema cannot bound: NaN and out-of-range numbers also written as strings,
    GPUs per node, and the bytes of run: and envs together."""
    res = data.get("resources")
    res = res if isinstance(res, dict) else {}
    problems = []
    for key, most in (("cpus", MAX_CPUS), ("memory", MAX_MEMORY_GIB)):
        value = _number(res.get(key))
        if value is not None and not 0 < value <= most:  # NaN fails both comparisons
            problems.append(f"resources.{key}: {res[key]!r} is not valid; {_FIXES[key]}")
    gpus = res.get("accelerators")
    count = gpus.partition(":")[2] if isinstance(gpus, str) else ""
    if count.isdigit() and int(count) > MAX_GPUS:
        problems.append(f"resources.accelerators: {gpus!r} is not valid; {_FIXES['accelerators']}")
    size = _text_bytes(data)
    if size > MAX_TEXT_BYTES:
        problems.append(
            f"run: and envs take {size / 1024:.0f} KiB together, above the "
            f"{MAX_TEXT_BYTES >> 10} KiB a pod's startup script carries; put long scripts "
            "and data in files in the workdir"
        )
    return problems


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _text_bytes(data: dict[str, Any]) -> int:
    run = data.get("run")
    envs = data.get("envs")
    size = len(run.encode()) if isinstance(run, str) else 0
    if isinstance(envs, dict):
        size += sum(len(str(k).encode()) + len(str(v).encode()) for k, v in envs.items())
    return size


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
    return Path(os.path.realpath(local if local.is_absolute() else base / local))


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
    return FileMount(target, str(local), _source_kind(f"{path}: {where}", local))


def _source_kind(where: str, local: Path) -> Literal["dir", "file"]:
    """A directory, or a regular file that opens (a FIFO, device or socket would block
    the upload or never end)."""
    try:
        mode = local.stat().st_mode
    except FileNotFoundError:
        raise TaskError(f"{where}: {local} does not exist; fix the source path") from None
    except OSError as exc:
        raise TaskError(f"{where}: cannot reach {local}: {exc.strerror}; fix the path") from exc
    if stat.S_ISDIR(mode):
        return "dir"
    if not stat.S_ISREG(mode):
        raise TaskError(
            f"{where}: {local} is a {_KINDS.get(stat.S_IFMT(mode), 'special file')}, not a "
            "regular file or a directory; mount a file or a directory"
        )
    try:
        local.open("rb").close()
    except OSError as exc:
        raise TaskError(
            f"{where}: cannot read {local}: {exc.strerror}; fix its permissions"
        ) from exc
    return "file"


_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


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
    """The task file's name made a valid task name (``My_Train.yaml``: ``my-train``)."""
    stem = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).lstrip("-0123456789")
    return stem[:MAX_NAME].rstrip("-") or "task"
