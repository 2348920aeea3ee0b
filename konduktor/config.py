"""The config: ``~/.konduktor/config.yaml``, shared with Konduktor, and ``~/.konduktor/sync.yaml``,
konduktor's own settings.

``config.yaml`` (``KONDUKTOR_CONFIG`` overrides the path) holds only Konduktor's keys, so
that Konduktor, whose schema refuses any key it does not know, keeps reading it::

    allowed_clouds: [s3]            # or [gs]; Konduktor's aliases aws, gcp work too
    jobs:
      bucket: s3://my-bucket/code   # s3:// or gs:// (Konduktor refuses file://: see sync.bucket)
    kubernetes:
      allowed_contexts: [my-cluster]   # at most one: submit there unless --context says otherwise
      pod_config: {spec: {imagePullSecrets: [{name: regcred}]}}   # merged into every pod
      jobset_config: {}                # merged into every JobSet

``sync.yaml`` (``KONDUKTOR_SYNC_CONFIG`` overrides the path) holds konduktor's sections::

    sync:
      bucket: file:///srv/konduktor   # overrides jobs.bucket; any store URL, file:// too
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

A ``config.yaml`` that still holds ``sync:``, ``hooks:`` or ``git:`` (where they lived
before) is read as before, with one warning saying how to move them; when both files
have a section, ``sync.yaml``'s wins and the other is ignored, with a warning.

Which store: ``sync.bucket``, else ``jobs.bucket``; else, with a cloud allowed, a
per-user bucket ``konduktor-filemounts-<user>-<hash>`` created on first use, like
Konduktor's; else the local directory store ``file://~/.konduktor/store``.
Other keys belong to Konduktor and are left alone; keys under ``jobs:`` other than
``bucket`` are ignored with a warning (as Konduktor does), with a did-you-mean.
"""

from __future__ import annotations

import copy
import difflib
import getpass
import logging
import math
import os
import posixpath
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from konduktor import inputs
from konduktor.cache import atomic_write, konduktor_home
from konduktor.errors import ConfigError, UsageError
from konduktor.storage import StoreOptions, parse_url

CLOUDS = ("s3", "gs")
# Konduktor's names of storage clouds, and the compute clouds of SkyPilot configs that it
# accepts in allowed_clouds and ignores (they say nothing about storage)
_CLOUD_ALIASES = {"aws": "s3", "gcp": "gs"}
_COMPUTE_CLOUDS = frozenset(
    [
        "kubernetes",
        "azure",
        "oci",
        "ibm",
        "lambda",
        "runpod",
        "fluidstack",
        "paperspace",
        "cudo",
        "scp",
        "vast",
        "vsphere",
        "do",
        "nebius",
    ]
)
_STORE_KEYS: dict[str, type | tuple[type, ...]] = {
    "endpoint_url": str,
    "region": str,
    "profile": str,
    "retry_mode": str,
    "max_attempts": int,
}
_SYNC_KEYS: dict[str, type | tuple[type, ...]] = {
    "bucket": str,
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
OWN_SECTIONS = ("sync", "hooks", "git")  # konduktor's: in sync.yaml
# the top-level keys of Konduktor's config schema
KONDUKTOR_KEYS = (
    "admin_policy",
    "nvidia_gpus",
    "allowed_clouds",
    "jobs",
    "logs",
    "hub",
    "tailscale",
    "ssh",
    "apt",
    "serving",
    "kubernetes",
)
_JOBS_KEYS = ("bucket",)
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
log = logging.getLogger(__name__)
_warned: set[str] = set()  # each warning once per process, however often the config is read


@dataclass(frozen=True)
class HookSettings:
    """The ``hooks:`` section: how the pre-push hook behaves."""

    strict: bool = False
    timeout: float = 60.0
    background: bool = False
    sync_roots: tuple[str, ...] = ()  # normalised, relative to the repository root


@dataclass(frozen=True)
class Config:
    path: Path | None  # config.yaml as read, None when there is none
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
    sync_path: Path | None = None  # sync.yaml as read, None when there is none
    # kubernetes.allowed_contexts (at most one: Konduktor's schema allows no more)
    allowed_contexts: tuple[str, ...] = ()
    pod_config: Mapping[str, Any] = field(default_factory=dict)  # kubernetes.pod_config
    jobset_config: Mapping[str, Any] = field(default_factory=dict)  # kubernetes.jobset_config
    origin: Mapping[str, Path] = field(default_factory=dict)  # own section -> the file it is in

    def store_url(self, cloud: str | None = None) -> tuple[str, StoreOptions]:
        """The store to use and its options (see the module docstring for the rule);
        with *cloud* (s3, gs or file), the store of that kind this config would use."""
        if self.bucket and (cloud is None or self.bucket.startswith(f"{cloud}://")):
            return self.bucket, self.store
        scheme = cloud or (self.allowed_clouds[0] if self.allowed_clouds else "file")
        if scheme == "file":
            return f"file://{konduktor_home() / 'store'}", self.store
        url = f"{scheme}://konduktor-filemounts-{user()}-{user_hash()}"
        return url, StoreOptions(**{**self.store.__dict__, "create_bucket": True})

    def where(self, section: str) -> Path:
        """The file that holds (or would hold) *section* (``sync``, ``kubernetes``, ...)."""
        if section in OWN_SECTIONS:
            return self.origin.get(section) or sync_config_path()
        return self.path or config_path()


def config_path() -> Path:
    """Konduktor's config file, shared with it."""
    return Path(os.environ.get("KONDUKTOR_CONFIG") or konduktor_home() / "config.yaml")


def sync_config_path() -> Path:
    """konduktor's own settings (``sync:``, ``hooks:``, ``git:``)."""
    return Path(os.environ.get("KONDUKTOR_SYNC_CONFIG") or konduktor_home() / "sync.yaml")


def load(path: Path | None = None, sync_path: Path | None = None) -> Config:
    """Read and validate config.yaml and sync.yaml; a missing file means its defaults."""
    path, sync_path = path or config_path(), sync_path or sync_config_path()
    shared, own = _read(path, "config file"), _read(sync_path, "sync config file")
    for key in own or {}:
        if key not in OWN_SECTIONS:
            raise ConfigError(_misplaced(sync_path, str(key), path))
    sections, origin = _own_sections(path, shared or {}, sync_path, own or {})
    cfg = _validate(path, shared or {}, sections, origin)
    return replace(
        cfg,
        path=path if shared is not None else None,
        sync_path=sync_path if own is not None else None,
    )


def _read(path: Path, what: str) -> dict[str, Any] | None:
    try:
        data = inputs.load_yaml(path, ConfigError, what)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; check its permissions") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must hold a mapping of keys, not {_kind(data)}")
    return data


def _misplaced(sync_path: Path, key: str, path: Path) -> str:
    if key in KONDUKTOR_KEYS:
        return f"{sync_path}: {key} is one of Konduktor's keys: move it to {path}"
    close = difflib.get_close_matches(key, OWN_SECTIONS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"it holds only {', '.join(OWN_SECTIONS)}"
    return f"{sync_path}: unknown key {key!r}; {hint}"


def _own_sections(
    path: Path, shared: dict[str, Any], sync_path: Path, own: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Path]]:
    """konduktor's sections, from sync.yaml or else (warning) from config.yaml."""
    sections, origin = dict(own), dict.fromkeys(own, sync_path)
    stale = [key for key in OWN_SECTIONS if key in shared]
    ignored = [key for key in stale if key in own]
    moved = [key for key in stale if key not in own]
    if moved:
        names, them = ", ".join(f"{key}:" for key in moved), "it" if len(moved) == 1 else "them"
        warn(
            f"{path} holds konduktor's {names} which Konduktor refuses (unsupported field): "
            f"cut {them} from {path} and paste {them} unchanged into {sync_path}"
        )
    for key in ignored:
        warn(f"{path}: {key}: is ignored, {sync_path} has one (it wins); delete it from {path}")
    for key in moved:
        sections[key], origin[key] = shared[key], path
    return sections, origin


def warn(message: str) -> None:
    """Log *message* as a warning, once per process."""
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def _validate(
    path: Path, data: dict[str, Any], own: dict[str, Any], origin: dict[str, Path]
) -> Config:
    for key in data:
        known = (*KONDUKTOR_KEYS, *OWN_SECTIONS)
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.8)
        if close and close[0] != key:
            raise ConfigError(f"{path}: unknown key {key!r}; did you mean {close[0]!r}?")
    clouds = _clouds(path, data.get("allowed_clouds", []))
    bucket = _jobs(path, data.get("jobs", {}))
    contexts, pod_config, jobset_config = _kubernetes(path, data.get("kubernetes", {}))
    sync_file = origin.get("sync", path)
    sync = _section(sync_file, "sync", own.get("sync", {}), _SYNC_KEYS)
    store = _section(sync_file, "sync.store", sync.pop("store", {}), _STORE_KEYS)
    problems = [*_ranges(sync, store), *_store_problems(store)]
    if problems:
        raise ConfigError(f"{sync_file}: " + "; ".join(problems))
    if "hard_limit_mb" in sync and "soft_limit_mb" not in sync:  # the warning comes first
        sync["soft_limit_mb"] = min(Config.soft_limit_mb, sync["hard_limit_mb"])
    own_bucket = sync.pop("bucket", None)
    if own_bucket is not None:
        _bucket_url(sync_file, "sync.bucket", own_bucket)
    hooks = _hooks(origin.get("hooks", path), own.get("hooks", {}))
    git = _section(origin.get("git", path), "git", own.get("git", {}), _GIT_KEYS)
    ssh_key = Path(os.path.expanduser(git["ssh_key"])) if "ssh_key" in git else None
    return Config(
        path,
        clouds,
        own_bucket or bucket,
        store=StoreOptions(**store),
        hooks=hooks,
        git_ssh_key=ssh_key,
        git_ssh_secret=git.get("ssh_secret"),
        allowed_contexts=contexts,
        pod_config=pod_config,
        jobset_config=jobset_config,
        origin=origin,
        **sync,
    )


def _jobs(path: Path, value: object) -> str | None:
    """``jobs.bucket``; other keys are ignored with a warning, as Konduktor does."""
    jobs = _mapping(path, "jobs", value)
    for key in jobs:
        if key not in _JOBS_KEYS:
            close = difflib.get_close_matches(str(key), _JOBS_KEYS, n=1, cutoff=0.5)
            hint = f"did you mean jobs.{close[0]}? " if close else ""
            warn(f"{path}: jobs.{key} is not read by konduktor or Konduktor; {hint}it is ignored")
    bucket = jobs.get("bucket")
    if bucket is None:
        return None
    _bucket_url(path, "jobs.bucket", bucket)  # file:// too, which Konduktor refuses (sync.bucket)
    return str(bucket)


def _bucket_url(path: Path, where: str, value: object) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {where} must be a URL such as s3://bucket/prefix")
    try:
        parse_url(value)
    except UsageError as exc:
        raise ConfigError(f"{path}: {where}: {exc}") from exc


def _kubernetes(
    path: Path, value: object
) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]:
    """``kubernetes.allowed_contexts``, ``pod_config`` and ``jobset_config``; the section's
    other keys are Konduktor's and are left alone."""
    section = _mapping(path, "kubernetes", value)
    contexts = section.get("allowed_contexts", [])
    if not isinstance(contexts, list) or not all(isinstance(c, str) and c for c in contexts):
        raise ConfigError(
            f"{path}: kubernetes.allowed_contexts must be a list of one kubeconfig context "
            "name, such as [my-cluster]"
        )
    if len(contexts) > 1:  # Konduktor's schema allows one; it drops a longer list too
        warn(
            f"{path}: kubernetes.allowed_contexts lists {len(contexts)} contexts; like "
            "Konduktor, konduktor uses at most one, so it ignores them and uses the "
            "kubeconfig's current context: keep only the one to submit to"
        )
        contexts = []
    pod_config, jobset_config = (_object(path, key, section.get(key, {})) for key in _OBJECTS)
    return tuple(contexts), pod_config, jobset_config


_OBJECTS = ("pod_config", "jobset_config")


def _object(path: Path, key: str, value: object) -> dict[str, Any]:
    """A partial Kubernetes object (merged into what konduktor renders), copied."""
    found = _mapping(path, f"kubernetes.{key}", value)
    for part in ("metadata", "spec"):
        if part in found:
            _mapping(path, f"kubernetes.{key}.{part}", found[part])
    if key == "pod_config":
        _pod_lists(path, found.get("spec") or {})
    return copy.deepcopy(found)


def _pod_lists(path: Path, spec: Mapping[str, Any]) -> None:
    """The lists of pod_config's spec that konduktor merges item by item (as Konduktor
    does) hold mappings, each with a name where merging goes by name."""
    where = f"{path}: kubernetes.pod_config.spec"
    lists = [(f"{where}.{k}", spec[k], k != "containers") for k in _NAMED if k in spec]
    containers = spec.get("containers")
    for i, c in enumerate(containers if isinstance(containers, list) else []):
        if isinstance(c, Mapping):
            at = f"{where}.containers[{i}]"
            lists += [(f"{at}.{k}", c[k], True) for k in ("env", "volumeMounts") if k in c]
    for at, items, named in lists:
        if not isinstance(items, list) or not all(
            isinstance(i, Mapping) and (not named or isinstance(i.get("name"), str)) for i in items
        ):
            fix = "mappings with a name" if named else "mappings"
            raise ConfigError(f"{at} must be a list of {fix}, as in a pod's spec")


_NAMED = ("containers", "volumes", "imagePullSecrets")


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
    """allowed_clouds as storage clouds: Konduktor's aliases (aws, gcp) translated, the
    compute clouds of SkyPilot configs (kubernetes, ...) dropped, as Konduktor does."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: allowed_clouds must be a list such as [s3]")
    clouds = []
    for name in value:
        cloud = _CLOUD_ALIASES.get(name.lower(), name.lower())
        if cloud in _COMPUTE_CLOUDS:
            continue
        if cloud not in CLOUDS:
            alias = {"gcs": "gs", "google": "gs"}.get(cloud)
            hint = [alias] if alias else difflib.get_close_matches(cloud, CLOUDS, n=1, cutoff=0.5)
            extra = f"; did you mean {hint[0]!r}?" if hint else f"; use one of {list(CLOUDS)}"
            raise ConfigError(f"{path}: allowed_clouds: unknown cloud {name!r}{extra}")
        clouds.append(cloud)
    return tuple(dict.fromkeys(clouds))


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


def user_hash() -> str:
    """The user's id, as Konduktor has it: ``KONDUKTOR_USER_ID`` when it is 8 hex digits,
    else the one kept in ``~/.konduktor/user_hash`` (written on first use), so that the
    default bucket's name and the Secrets' owner label are stable and shared with it."""
    given = os.environ.get("KONDUKTOR_USER_ID", "")
    if _HASH.fullmatch(given):
        return given
    path = konduktor_home() / "user_hash"
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if _HASH.fullmatch(kept):
        return kept
    value = secrets.token_hex(4)
    atomic_write(path, value.encode())
    return value


_HASH = re.compile(r"[0-9a-fA-F]{8}")
