"""``~/.konduktor/config.yaml`` (``KONDUKTOR_CONFIG`` overrides the path).

Compatible with Konduktor's keys (``allowed_clouds``, ``jobs.bucket``) plus a
``sync:`` section of our own::

    allowed_clouds: [s3]            # or [gs]
    jobs:
      bucket: s3://my-bucket/code   # s3://, gs:// or file://
    sync:
      compression_level: 3
      soft_limit_mb: 1000           # warn above this snapshot size
      hard_limit_mb: 10000          # refuse above it
      presign_seconds: 3600         # lifetime of presigned URLs handed to pods
      shared_store: false           # true: a file:// store that every node has at the
                                    # same path (NFS); pods mount it read-only (hostPath)
      store:
        endpoint_url: http://127.0.0.1:9000   # S3-compatible stores, emulators
        region: eu-west-1
        profile: work                # AWS profile
        retry_mode: standard         # or adaptive
        max_attempts: 5
    hooks:                          # the pre-push hook (`konduktor hooks install`)
      strict: false                 # true: a failed snapshot blocks the push
      timeout: 60                   # seconds the hook may take; then it gives up
      background: false             # true: snapshot after the push returns (log in
                                    # ~/.konduktor/logs/pre-push.log); not with strict
      sync_roots: [train/, tools/]  # besides the repository root, relative to it
    git:                            # --mode git: the SSH key the pod clones with
      ssh_key: ~/.ssh/id_ed25519    # a key file, shipped like a file mount
      ssh_secret: my-git-key        # or a Secret from `konduktor secret create --kind git-ssh`

Which store: ``jobs.bucket`` when set; else, with a cloud allowed, a per-user
bucket ``konduktor-filemounts-<user>-<hash>`` created on first use, like
Konduktor's; else the local directory store ``file://~/.konduktor/store``.
Other top-level keys belong to Konduktor and are left alone.
"""

from __future__ import annotations

import difflib
import getpass
import math
import os
import posixpath
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from konduktor import inputs
from konduktor.cache import atomic_write, konduktor_home
from konduktor.errors import ConfigError, UsageError
from konduktor.storage import StoreOptions, parse_url

CLOUDS = ("s3", "gs")
_STORE_KEYS: dict[str, type | tuple[type, ...]] = {
    "endpoint_url": str,
    "region": str,
    "profile": str,
    "retry_mode": str,
    "max_attempts": int,
}
_SYNC_KEYS: dict[str, type | tuple[type, ...]] = {
    "compression_level": int,
    "soft_limit_mb": (int, float),
    "hard_limit_mb": (int, float),
    "presign_seconds": int,
    "shared_store": bool,
    "store": dict,
}
_HOOKS_KEYS: dict[str, type | tuple[type, ...]] = {
    "strict": bool,
    "timeout": (int, float),
    "background": bool,
    "sync_roots": list,
}
_GIT_KEYS: dict[str, type | tuple[type, ...]] = {"ssh_key": str, "ssh_secret": str}
_TOP_KEYS = ("allowed_clouds", "jobs", "sync", "hooks", "git")
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the longest an S3 presigned URL may live
_ENDPOINT = re.compile(
    r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r"(:(?P<port>[0-9]{1,5}))?(/[^\s?#]*)?"
)
# (key, lowest, highest) for the whole numbers of the config
_COUNTS = (
    ("sync.compression_level", 1, 22),
    ("sync.presign_seconds", 1, MAX_PRESIGN_SECONDS),
    ("sync.store.max_attempts", 1, 100),
)


@dataclass(frozen=True)
class HookSettings:
    """The ``hooks:`` section: how the pre-push hook behaves."""

    strict: bool = False
    timeout: float = 60.0
    background: bool = False
    sync_roots: tuple[str, ...] = ()  # normalised, relative to the repository root


@dataclass(frozen=True)
class Config:
    path: Path | None  # the file read, None when there is none
    allowed_clouds: tuple[str, ...] = ()
    bucket: str | None = None
    compression_level: int = 3
    soft_limit_mb: float = 1000
    hard_limit_mb: float = 10000
    presign_seconds: int = 3600
    shared_store: bool = False  # a file:// store is at the same path on every node
    store: StoreOptions = field(default_factory=StoreOptions)
    hooks: HookSettings = field(default_factory=HookSettings)
    git_ssh_key: Path | None = None  # git mode: a private key file shipped to the pod
    git_ssh_secret: str | None = None  # git mode: a Secret made by `konduktor secret create`

    def store_url(self, cloud: str | None = None) -> tuple[str, StoreOptions]:
        """The store to use and its options (see the module docstring for the rule);
        with *cloud* (s3, gs or file), the store of that kind this config would use."""
        if self.bucket and (cloud is None or self.bucket.startswith(f"{cloud}://")):
            return self.bucket, self.store
        scheme = cloud or (self.allowed_clouds[0] if self.allowed_clouds else "file")
        if scheme == "file":
            return f"file://{konduktor_home() / 'store'}", self.store
        url = f"{scheme}://konduktor-filemounts-{user()}-{_user_hash()}"
        return url, StoreOptions(**{**self.store.__dict__, "create_bucket": True})


def config_path() -> Path:
    return Path(os.environ.get("KONDUKTOR_CONFIG") or konduktor_home() / "config.yaml")


def load(path: Path | None = None) -> Config:
    """Read and validate the config file; a missing file means all defaults."""
    path = path or config_path()
    try:
        data = inputs.load_yaml(path, ConfigError, "config file") or {}
    except FileNotFoundError:
        return Config(path=None)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; check its permissions") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must hold a mapping of keys, not {_kind(data)}")
    return _validate(path, data)


def _validate(path: Path, data: dict[str, Any]) -> Config:
    for key in data:
        close = difflib.get_close_matches(str(key), _TOP_KEYS, n=1, cutoff=0.8)
        if close and close[0] != key:
            raise ConfigError(f"{path}: unknown key {key!r}; did you mean {close[0]!r}?")
    clouds = _clouds(path, data.get("allowed_clouds", []))
    jobs = _mapping(path, "jobs", data.get("jobs", {}))
    bucket = jobs.get("bucket")
    if bucket is not None:
        if not isinstance(bucket, str):
            raise ConfigError(f"{path}: jobs.bucket must be a URL such as s3://bucket/prefix")
        try:
            parse_url(bucket)
        except UsageError as exc:
            raise ConfigError(f"{path}: jobs.bucket: {exc}") from exc
    sync = _section(path, "sync", data.get("sync", {}), _SYNC_KEYS)
    store = _section(path, "sync.store", sync.pop("store", {}), _STORE_KEYS)
    problems = [*_ranges(sync, store), *_store_problems(store)]
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    if "hard_limit_mb" in sync and "soft_limit_mb" not in sync:  # the warning comes first
        sync["soft_limit_mb"] = min(Config.soft_limit_mb, sync["hard_limit_mb"])
    hooks = _hooks(path, data.get("hooks", {}))
    git = _section(path, "git", data.get("git", {}), _GIT_KEYS)
    ssh_key = Path(os.path.expanduser(git["ssh_key"])) if "ssh_key" in git else None
    return Config(
        path,
        clouds,
        bucket,
        store=StoreOptions(**store),
        hooks=hooks,
        git_ssh_key=ssh_key,
        git_ssh_secret=git.get("ssh_secret"),
        **sync,
    )


def _ranges(sync: dict[str, Any], store: dict[str, Any]) -> list[str]:
    """Every number out of its range (all of them, in one message)."""
    values = {f"sync.{k}": v for k, v in sync.items()}
    values.update({f"sync.store.{k}": v for k, v in store.items()})
    problems = [
        f"{key} must be between {low} and {high}, not {values[key]!r}"
        for key, low, high in _COUNTS
        if key in values and not low <= values[key] <= high
    ]
    for key in ("sync.soft_limit_mb", "sync.hard_limit_mb"):
        if key in values and not 0 < values[key] < math.inf:  # NaN fails too
            problems.append(f"{key} must be a number of MB above 0, not {values[key]!r}")
    soft = values.get("sync.soft_limit_mb", 0)
    hard = values.get("sync.hard_limit_mb", Config.hard_limit_mb)
    if soft > hard:
        problems.append(
            f"sync.soft_limit_mb ({soft:g}) is above sync.hard_limit_mb ({hard:g}); the "
            "warning must come before the refusal: lower it"
        )
    return problems


def _store_problems(store: dict[str, Any]) -> list[str]:
    problems = []
    if store.get("retry_mode", "standard") not in ("standard", "adaptive"):
        problems.append("sync.store.retry_mode must be standard or adaptive")
    url = store.get("endpoint_url")
    if url is not None and "@" in url:  # never echo it: user:secret@host
        problems.append(
            "sync.store.endpoint_url holds credentials (user:password@); remove them and "
            "put the keys in an AWS profile (sync.store.profile) or in AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    elif url is not None and not _endpoint_ok(url):
        problems.append(
            f"sync.store.endpoint_url {url!r} is not http(s)://host[:port][/path]; "
            "write e.g. http://127.0.0.1:9000"
        )
    return problems


def _endpoint_ok(url: str) -> bool:
    match = _ENDPOINT.fullmatch(url)
    return match is not None and int(match["port"] or 1) in range(1, 65536)


def _hooks(path: Path, value: object) -> HookSettings:
    section = _section(path, "hooks", value, _HOOKS_KEYS)
    if not 0 < section.get("timeout", 1) < math.inf:
        raise ConfigError(f"{path}: hooks.timeout must be a number of seconds above 0")
    if section.get("strict") and section.get("background"):
        raise ConfigError(
            f"{path}: hooks.strict and hooks.background exclude each other (a snapshot "
            "taken after the push cannot block it); set one of them to false"
        )
    roots = tuple(_sync_root(path, root) for root in section.pop("sync_roots", []))
    return HookSettings(**section, sync_roots=tuple(dict.fromkeys(roots)))


def _sync_root(path: Path, value: object) -> str:
    """A directory relative to the repository root, normalised ("train/" -> "train")."""
    normal = posixpath.normpath(value) if isinstance(value, str) and value else ""
    if not normal or normal.startswith("/") or normal.split("/")[0] == "..":
        raise ConfigError(
            f"{path}: hooks.sync_roots: {value!r} must be a directory relative to the "
            "repository root, such as train/"
        )
    return normal


def _clouds(path: Path, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: allowed_clouds must be a list such as [s3]")
    for cloud in value:
        if cloud not in CLOUDS:
            alias = {"aws": "s3", "gcs": "gs", "gcp": "gs", "google": "gs"}.get(cloud.lower())
            hint = [alias] if alias else difflib.get_close_matches(cloud, CLOUDS, n=1, cutoff=0.5)
            extra = f"; did you mean {hint[0]!r}?" if hint else f"; use one of {list(CLOUDS)}"
            raise ConfigError(f"{path}: allowed_clouds: unknown cloud {cloud!r}{extra}")
    return tuple(value)


def _mapping(path: Path, where: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where} must be a mapping, not {_kind(value)}")
    return dict(value)


def _section(
    path: Path, where: str, value: object, schema: dict[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    section = _mapping(path, where, value)
    for key, item in section.items():
        if key not in schema:
            close = difflib.get_close_matches(str(key), schema, n=1)
            hint = f"did you mean {where}.{close[0]}?" if close else f"known: {', '.join(schema)}"
            raise ConfigError(f"{path}: unknown key {where}.{key}; {hint}")
        wrong_bool = isinstance(item, bool) and schema[key] is not bool  # bool is an int
        if not isinstance(item, schema[key]) or wrong_bool:
            raise ConfigError(f"{path}: {where}.{key} must be {_type_name(schema[key])}")
    return section


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "a mapping",
        bool: "true or false",
        list: "a list",
    }
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _kind(value: object) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


def user() -> str:
    """The login name, made safe for bucket and Kubernetes object names."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "user"
    return re.sub(r"[^a-z0-9-]", "-", name.lower())[:20].strip("-") or "user"


def _user_hash() -> str:
    """A random id kept in ~/.konduktor/user_hash, so the default bucket name is stable."""
    path = konduktor_home() / "user_hash"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_hex(4)
        atomic_write(path, value.encode())
        return value
