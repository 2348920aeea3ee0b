"""Task files, compatible with Konduktor's task YAML (DESIGN §2).

A task file is validated by a JSON Schema (``TASK_SCHEMA``) and then by the rules
a schema cannot say (paths exist, mount targets do not collide, ``$VAR`` and
``${VAR}`` references resolve). Every error names the file, the key path and the fix,
e.g. ``task.yaml: resources.memory: '16G' is not a number of GiB; write memory: 16``;
every mistake of one file is reported in one :class:`TaskError`, one line each.

Local paths (``workdir``, ``file_mounts`` sources) are relative to the current
directory, as in Konduktor (and SkyPilot): ``konduktor launch configs/train.yaml`` with
``workdir: .`` ships the directory it is run from.

Sizes and counts are bounded here, before anything is uploaded, by what a JobSet can
carry (see the README's "Limits"): :data:`MAX_NODES`, :data:`MAX_CPUS`,
:data:`MAX_MEMORY_GIB`, :data:`MAX_GPUS` and :data:`MAX_TEXT_BYTES` for ``setup:``,
``run:`` and ``envs`` together.
"""

from __future__ import annotations

import difflib
import logging
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

log = logging.getLogger(__name__)

WORKDIR_TARGET = "~/konduktor_workdir"
# A DNS-1035 label short enough that every pod's host name, <name>-<8 hex>-workers-0-<rank>
# (rank up to MAX_NODES - 1: 40 + 23 = 63), fits Kubernetes' 63 characters; MASTER_ADDR's
# first label, <name>-<8 hex>-workers-0-0, is the shortest of them.
MAX_NAME = 40
NAME = rf"^[a-z]([-a-z0-9]{{0,{MAX_NAME - 2}}}[a-z0-9])?$"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# NODE_HOST_IPS lists every pod's host name (up to 140 bytes each) in one env var, and
# Linux caps one env string at 128 KiB: 512 nodes keep it under 72 KB.
MAX_NODES = 512
MAX_CPUS = 1024  # vCPUs: above the largest machines sold
MAX_MEMORY_GIB = 65536
MAX_GPUS = 64  # per node
# setup: and run: ride in the pod's `sh -c` script, one argument, which Linux caps at
# 128 KiB (MAX_ARG_STRLEN); the script's own code takes about 30 KiB of it. envs go into
# the container's env beside it.
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
_ACCELERATOR = {"type": "string", "pattern": r"^[A-Za-z0-9_-]+(:[1-9][0-9]*)?$"}
_COUNT = {"type": "integer", "minimum": 1, "maximum": MAX_GPUS}
MAX_RESTARTS = 1000
# Upstream Konduktor's accelerator types (accelerator_registry): a type is one of these,
# in any case; its GPU pools are tainted and labelled with the canonical spelling.
NVIDIA_ACCELERATORS = (
    "A100",
    "A100-80GB",
    "B200",
    "B300",
    "GB200",
    "GB300",
    "H100",
    "H100-MEGA-80GB",
    "H200",
    "L40S",
    "T4",
    "L40",
    "RTX-PRO-6000",
)
AMD_ACCELERATORS = ("MI300X", "MI355X")
ACCELERATORS = NVIDIA_ACCELERATORS + AMD_ACCELERATORS

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
                # TYPE, TYPE:COUNT, {TYPE: COUNT} or a list of one of those (as upstream's)
                "accelerators": {
                    "anyOf": [
                        _ACCELERATOR,
                        {"type": "object", "maxProperties": 1, "additionalProperties": _COUNT},
                        {"type": "array", "items": _ACCELERATOR, "minItems": 1, "maxItems": 1},
                    ]
                },
                "disk_size": {"type": "integer"},  # accepted, deprecated: a warning
                "job_config": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "max_restarts": {"type": "integer", "minimum": 0, "maximum": MAX_RESTARTS},
                        "completions": {"type": "integer", "minimum": 1, "maximum": MAX_NODES},
                    },
                },
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
        "setup": {"type": "string"},
        "run": {"type": "string", "pattern": r"\S"},
    },
}

_FIXES = {
    "name": "a name is a DNS-1035 label: lowercase letters, digits and -, starting with a "
    f"letter, ending with a letter or digit, at most {MAX_NAME} characters (so that every "
    "pod's host name, <name>-<8 hex>-workers-0-<rank>, and MASTER_ADDR fit Kubernetes' 63); "
    "no _ or ., e.g. name: my-train",
    "num_nodes": f"write a whole number of nodes, at least 1 and at most {MAX_NODES}",
    "cpus": f"write a number of vCPUs above 0 and at most {MAX_CPUS}, e.g. cpus: 4",
    "memory": f"write a number of GiB above 0 and at most {MAX_MEMORY_GIB}, e.g. memory: 16",
    "accelerators": f"write TYPE or TYPE:COUNT (COUNT at most {MAX_GPUS}), e.g. H100:8, or "
    "{H100: 8}",
    "disk_size": "write a whole number of GiB (it has no effect: remove it)",
    "job_config": "job_config has max_restarts (0 or more) and completions (1 or more)",
    "max_restarts": f"write a whole number of restarts from 0 to {MAX_RESTARTS}",
    "completions": f"write a whole number of completions from 1 to {MAX_NODES}",
    "image_id": "write an image reference without spaces, e.g. image_id: ubuntu:22.04",
    "labels": "write Kubernetes labels: name (or prefix/name) and value of at most 63 "
    "letters, digits, - _ .",
    "envs": "names are letters, digits and _, not starting with a digit, e.g. MY_VAR",
    "envs value": "write a string, a number or true/false",
    "labels value": "write at most 63 letters, digits, - _ . (starting and ending with a "
    "letter or digit)",
    "run": "give the commands to run, e.g. run: python train.py",
    "setup": "give the commands to run before run:, e.g. setup: pip install -r requirements.txt",
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
    max_restarts: int | None = None  # job_config.max_restarts: the JobSet's failurePolicy
    completions: int | None = None  # job_config.completions (default: num_nodes)


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
    setup: str = ""  # run before run:, in the workdir; its failure is the task's


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
    max_restarts: int | None = None  # job_config.max_restarts
    completions: int | None = None  # job_config.completions


# Where each override lands in the task, as the key paths in error messages name it.
_FLAGS = {
    "name": "--name",
    "num_nodes": "--num-nodes",
    "resources.cpus": "--cpus",
    "resources.memory": "--memory",
    "resources.accelerators": "--gpus",
    "resources.image_id": "--image-id",
    "resources.job_config.max_restarts": "--max-restarts",
    "resources.job_config.completions": "--completions",
}


def load(path: Path, overrides: Overrides | None = None) -> Task:
    """Read, override, validate and resolve a task file. Every mistake found is in the one
    error raised, a line each: a TaskError when the file has any (the command line's
    mistakes listed first), else a UsageError for the command line's."""
    overrides = overrides or Overrides()
    duplicates: list[str] = []  # whole lines, ``file:line:column: ...``
    data = _read(path, duplicates)
    data = _apply_overrides(path, data, overrides)
    given = {
        "name": overrides.name,
        "num_nodes": overrides.num_nodes,
        "resources.cpus": overrides.cpus,
        "resources.memory": overrides.memory,
        "resources.accelerators": overrides.gpus,
        "resources.image_id": overrides.image_id,
        "resources.job_config.max_restarts": overrides.max_restarts,
        "resources.job_config.completions": overrides.completions,
    }
    flags, problems = _validate(data, {key for key, value in given.items() if value is not None})
    resolved = _resolve(data, problems)
    if duplicates or problems:
        lines = [*flags, *duplicates, *(f"{path}: {problem}" for problem in problems)]
        raise TaskError("\n".join(lines))
    if flags:  # the file is fine: only the command line is wrong
        raise UsageError("\n".join(flags))
    return _build(path, data, resolved)


def _read(path: Path, duplicates: list[str]) -> dict[str, Any]:
    try:
        data = inputs.load_yaml(path, TaskError, "task file", duplicates=duplicates)
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
    job = {"max_restarts": o.max_restarts, "completions": o.completions}
    if any(v is not None for v in job.values()):
        given = resources.get("job_config")
        given = dict(given) if isinstance(given, dict) else {}
        resources["job_config"] = given | {k: v for k, v in job.items() if v is not None}
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


def _validate(data: dict[str, Any], overridden: Set[str]) -> tuple[list[str], list[str]]:
    """Every mistake the schema and the limits find: those of a value from the command
    line (its key path in *overridden*) blamed on its flag, and those of the file."""
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
    return flags, in_file


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
    if "accelerators" in res:
        _accelerators(res["accelerators"], problems)
    size = _text_bytes(data)
    if size > MAX_TEXT_BYTES:
        problems.append(
            f"setup:, run: and envs take {size / 1024:.0f} KiB together, above the "
            f"{MAX_TEXT_BYTES >> 10} KiB a pod's startup script carries; put long scripts "
            "and data in files in the workdir"
        )
    return problems


def _accelerators(given: object, problems: list[str]) -> str | None:
    """*given* (``TYPE``, ``TYPE:N``, ``{TYPE: N}`` or a list of one) as ``TYPE:N`` with
    upstream's spelling of TYPE; None, and a problem, if it is not one of its types or
    N is too large (what the schema refused is not reported again)."""
    if isinstance(given, list) and len(given) == 1:
        given = given[0]
    if isinstance(given, dict) and len(given) == 1:
        [(kind, count)] = given.items()
    elif isinstance(given, str) and re.fullmatch(_ACCELERATOR["pattern"], given):
        kind, _, text = given.partition(":")
        count = int(text) if text.isdigit() else 1
    else:
        return None
    if not isinstance(kind, str) or not isinstance(count, int) or isinstance(count, bool):
        return None
    where = f"resources.accelerators: {given!r}"
    known = {k.lower(): k for k in ACCELERATORS}
    if kind.lower() not in known:
        spelled = re.sub(r"[xX*](\d+)$", r":\1", kind)  # H100x8: H100:8
        close = difflib.get_close_matches(spelled.partition(":")[0].upper(), ACCELERATORS, n=1)
        hint = spelled if spelled != kind and spelled.partition(":")[0].lower() in known else ""
        hint = hint or (close[0] if close else "")
        problems.append(
            f"{where} is not a GPU type Konduktor knows"
            + (f"; did you mean {hint}?" if hint else "")
            + f" Known types: {', '.join(ACCELERATORS)}; {_FIXES['accelerators']}"
        )
        return None
    if not 0 < count <= MAX_GPUS:
        problems.append(f"{where} is not valid; {_FIXES['accelerators']}")
        return None
    return f"{known[kind.lower()]}:{count}"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _text_bytes(data: dict[str, Any]) -> int:
    envs = data.get("envs")
    size = sum(
        len(text.encode()) for text in (data.get("setup"), data.get("run")) if isinstance(text, str)
    )
    if isinstance(envs, dict):
        size += sum(len(str(k).encode()) + len(str(v).encode()) for k, v in envs.items())
    return size


@dataclass(frozen=True)
class _Resolved:
    envs: Mapping[str, str]
    workdir: Path | None
    mounts: tuple[FileMount, ...]


def _resolve(data: dict[str, Any], problems: list[str]) -> _Resolved:
    """Values, paths and mounts, each mistake added to *problems*; a part the schema
    already refused (a list where a mapping belongs) is skipped, not reported again."""
    envs = _envs(data.get("envs"), problems)
    workdir = _workdir(data.get("workdir"), envs, problems)
    mounts = []
    given = data.get("file_mounts")
    for target, source in given.items() if isinstance(given, dict) else ():
        if isinstance(target, str) and isinstance(source, str) and source:
            mount = _mount(target, source, envs, problems)
            if mount is not None:
                mounts.append(mount)
    _check_targets(mounts, problems)
    return _Resolved(envs, workdir, tuple(mounts))


def _build(path: Path, data: dict[str, Any], resolved: _Resolved) -> Task:
    """The task of a file found valid."""
    res = data.get("resources") or {}
    job = res.get("job_config") or {}
    if "disk_size" in res:
        log.warning(
            "%s: resources.disk_size is deprecated and has no effect (as in Konduktor); remove it",
            path,
        )
    resources = Resources(
        cpus=float(res["cpus"]) if "cpus" in res else None,
        memory=float(res["memory"]) if "memory" in res else None,
        accelerators=_accelerators(res["accelerators"], []) if "accelerators" in res else None,
        image_id=res.get("image_id", "ubuntu"),
        labels={str(k): str(v) for k, v in (res.get("labels") or {}).items()},
        max_restarts=job.get("max_restarts"),
        completions=job.get("completions"),
    )
    return Task(
        path,
        data.get("name") or _default_name(path),
        int(data.get("num_nodes", 1)),
        resolved.workdir,
        resolved.mounts,
        resources,
        resolved.envs,
        data["run"],
        setup=data.get("setup") or "",
    )


def _envs(given: object, problems: list[str]) -> dict[str, str]:
    envs = {}
    for key, value in given.items() if isinstance(given, dict) else ():
        if value is None:
            problems.append(
                f"envs.{key} has no value; set it in the file or pass --env {key}=VALUE"
            )
        elif isinstance(value, bool):
            envs[str(key)] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            envs[str(key)] = str(value)
    return envs


def _workdir(given: object, envs: Mapping[str, str], problems: list[str]) -> Path | None:
    if not isinstance(given, str) or not given:
        return None  # none, or the schema reported it
    text = _substitute("workdir", given, envs, problems)
    if text is None:
        return None
    workdir = _local(text)
    if not workdir.is_dir():
        problems.append(f"workdir: {workdir} is not a directory; fix the path{_relative(text)}")
    return workdir


def _relative(text: str) -> str:
    """The reminder a relative path deserves: it is not the task file's folder's."""
    return "" if os.path.isabs(os.path.expanduser(text)) else " (relative to the current directory)"


# $NAME or ${NAME}, as Konduktor (SkyPilot) substitutes them in workdir and file_mounts.
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _substitute(where: str, text: str, envs: Mapping[str, str], problems: list[str]) -> str | None:
    """*text* with each ``$NAME`` and ``${NAME}`` replaced by its value in *envs*; None
    (and a problem for each) if some name is not there."""
    missing: dict[str, str] = {}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in envs:
            return envs[name]
        missing[match.group(0)] = name
        return match.group(0)

    result = _VAR.sub(value, text)
    for spelled, name in missing.items():
        problems.append(
            f"{where}: {spelled} is not in envs; add it to envs or pass --env {name}=VALUE"
        )
    return None if missing else result


def _local(text: str) -> Path:
    """A local path as written in the task file: relative to the current directory."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(text))))


def _mount(
    target: str, source: str, envs: Mapping[str, str], problems: list[str]
) -> FileMount | None:
    where = f"file_mounts.{target}"
    found = len(problems)
    target_ = _substitute(where, target, envs, problems)
    source_ = _substitute(where, source, envs, problems)
    if target_ is None or source_ is None:
        return None
    target, source = target_, source_
    if "://" in target:
        problems.append(
            f"{where}: a mount target is a path in the pod, not a URL; "
            "write it as `/path/in/pod: s3://bucket/prefix`"
        )
    elif not (target.startswith("/") or target == "~" or target.startswith("~/")):
        problems.append(f"{where}: the target must be absolute or start with ~/")
    elif target.rstrip("/") in ("", "~") or ".." in target.split("/"):
        problems.append(
            f"{where}: a mount would replace the whole / or home directory, or "
            "climb with ..; name a directory or file inside it, e.g. ~/data"
        )
    if source.startswith(("s3://", "gs://")):
        return FileMount(target, source, "bucket") if len(problems) == found else None
    if "://" in source:
        problems.append(f"{where}: {source!r}: only s3:// and gs:// URLs can be mounted")
        return None
    local = _local(source)
    kind = _source_kind(where, local, _relative(source), problems)
    if kind is None or len(problems) > found:
        return None
    return FileMount(target, str(local), kind)


def _source_kind(
    where: str, local: Path, hint: str, problems: list[str]
) -> Literal["dir", "file"] | None:
    """A directory, or a regular file that opens (a FIFO, device or socket would block
    the upload or never end)."""
    try:
        mode = local.stat().st_mode
    except FileNotFoundError:
        problems.append(f"{where}: {local} does not exist; fix the source path{hint}")
        return None
    except OSError as exc:
        problems.append(f"{where}: cannot reach {local}: {exc.strerror}; fix the path")
        return None
    if stat.S_ISDIR(mode):
        return "dir"
    if not stat.S_ISREG(mode):
        problems.append(
            f"{where}: {local} is a {_KINDS.get(stat.S_IFMT(mode), 'special file')}, not a "
            "regular file or a directory; mount a file or a directory"
        )
        return None
    try:
        local.open("rb").close()
    except OSError as exc:
        problems.append(f"{where}: cannot read {local}: {exc.strerror}; fix its permissions")
        return None
    return "file"


_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


def _check_targets(mounts: Sequence[FileMount], problems: list[str]) -> None:
    """No mount on the workdir's place, and no place mounted twice (``~/x`` and ``~/x/``,
    or two targets that name the same path once their variables are substituted)."""
    workdir = WORKDIR_TARGET.rstrip("/")
    seen: dict[str, str] = {}
    for mount in mounts:
        target = mount.target.rstrip("/")
        if target == workdir or target.startswith(workdir + "/"):
            problems.append(
                f"file_mounts.{mount.target}: collides with the workdir's place "
                f"{WORKDIR_TARGET}; mount it elsewhere"
            )
        elif target in seen:
            problems.append(
                f"file_mounts.{mount.target}: the same place as file_mounts.{seen[target]}; "
                "mount each place once"
            )
        else:
            seen[target] = mount.target


def _default_name(path: Path) -> str:
    """The task file's name made a valid task name (``My_Train.yaml``: ``my-train``)."""
    stem = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).lstrip("-0123456789")
    return stem[:MAX_NAME].rstrip("-") or "task"
