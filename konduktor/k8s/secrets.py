"""Cloud credentials for pods: one Secret per user and cloud, written by `konduktor check`.

The pod mounts both of its user's Secrets (each optional) read-only at
``/run/konduktor/credentials``; the startup script copies the files it finds into
``~/.aws`` or ``~/.config/gcloud`` with mode 0600. File names inside the Secret:
``aws-credentials``, ``aws-config`` and ``gcs-credentials.json``.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from konduktor import config
from konduktor.config import user
from konduktor.errors import ConfigError, UsageError

CLOUDS = ("s3", "gs")


def secret_name(cloud: str) -> str:
    return f"konduktor-credentials-{user()}-{cloud}"


def credentials(cloud: str) -> dict[str, bytes]:
    """The files the pod needs for *cloud*, read from this machine's own setup."""
    found = _aws() if cloud == "s3" else _gcs()
    if not found:
        where = (
            "~/.aws/credentials (aws configure) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            if cloud == "s3"
            else "GOOGLE_APPLICATION_CREDENTIALS or ~/.config/gcloud/"
            "application_default_credentials.json (gcloud auth application-default login)"
        )
        raise ConfigError(f"no {cloud} credentials to give pods: set up {where}")
    return found


def _aws() -> dict[str, bytes]:
    home = Path.home()
    files = {
        "aws-credentials": os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
        or home / ".aws" / "credentials",
        "aws-config": os.environ.get("AWS_CONFIG_FILE") or home / ".aws" / "config",
    }
    found = {name: Path(path).read_bytes() for name, path in files.items() if Path(path).is_file()}
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:  # the environment wins, as it does for the SDK
        lines = ["[default]", f"aws_access_key_id = {key}", f"aws_secret_access_key = {secret}"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            lines.append(f"aws_session_token = {os.environ['AWS_SESSION_TOKEN']}")
        found["aws-credentials"] = ("\n".join(lines) + "\n").encode()
    return found


def _gcs() -> dict[str, bytes]:
    path = Path(
        os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        or Path.home() / ".config" / "gcloud" / "application_default_credentials.json"
    )
    if not path.is_file():
        return {}
    data = path.read_bytes()
    try:
        json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a JSON credentials file: {exc}") from exc
    return {"gcs-credentials.json": data}


def write(cluster: Any, cloud: str) -> str:
    """Create or replace *cloud*'s Secret on *cluster*; return what was done."""
    from konduktor.k8s import submit

    name = secret_name(cloud)
    done = submit.apply_secret(
        cluster, name, credentials(cloud), labels={"app.kubernetes.io/managed-by": "konduktor"}
    )
    return f"{done} Secret {name} in namespace {cluster.namespace} (context {cluster.context})"


# -- the user's Secrets, as Konduktor makes them: git-ssh, env, default --------------------------

# Konduktor's labels: both tools list, inject and delete each other's Secrets by them.
OWNER_LABEL = "trainy.ai/secret-owner"  # the user hash (config.user_hash)
BASENAME_LABEL = "trainy.ai/secret-basename"  # the name the user gave
KIND_LABEL = "trainy.ai/secret-kind"
PARENT = {"parent": "konduktor"}
MANAGED = {"app.kubernetes.io/managed-by": "konduktor"}  # the credentials Secrets above
KINDS = ("default", "env", "git-ssh")
GIT_SSH_KEY = "gitkey"  # the key file's name in a git-ssh Secret, Konduktor's
LEGACY_GIT_SSH_KEY = "ssh-privatekey"  # ... in the ones konduktor made before
PAYLOAD = "payload.zip"  # a --from-directory Secret: the directory, zipped (Konduktor's)
DEFAULT_SECRETS = "/konduktor/default-secrets"  # default Secret NAME at .../NAME in each pod
# where the pod copies them, each payload.zip unpacked (KONDUKTOR_DEFAULT_SECRETS then)
EXPANDED_SECRETS = "/run/konduktor/expanded-default-secrets"
MAX_BYTES = 1024 * 1024  # the API server's limit on a Secret's data
_BASENAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,46}[a-z0-9])?$")  # "default-secret-" + it: 63
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


@dataclass(frozen=True)
class UserSecret:
    """One of the user's Secrets, as listed (its keys, never its values)."""

    name: str  # the Secret's name: <basename>-<user hash>
    basename: str  # the name the user gave
    kind: str | None  # default, env, git-ssh (None: not labelled with one)
    keys: tuple[str, ...] = ()
    created: str | None = None


def is_private_key(data: bytes) -> bool:
    """*data* starts like a PEM or OpenSSH private key file."""
    return data.startswith(b"-----BEGIN") and b"PRIVATE KEY" in data.split(b"\n", 1)[0]


def check_name(name: str) -> None:
    """UsageError unless *name* will do as a Secret's name (checked before the cluster is
    asked): lowercase letters, digits and -, at most 48, so that the pod's volume for it
    (``default-secret-<name>``) is a valid name."""
    if not _BASENAME.match(name):
        raise UsageError(
            f"{name!r} is not a valid Secret name: use lowercase letters, digits and -, "
            "starting and ending with a letter or digit, at most 48 characters"
        )


def user_secret_name(basename: str) -> str:
    """The user's Secret *basename*'s name in the cluster, as Konduktor names it."""
    return f"{basename}-{config.user_hash()}"


def read_data(
    kind: str,
    *,
    from_file: Path | None = None,
    from_directory: Path | None = None,
    inline: Sequence[str] = (),
) -> dict[str, bytes]:
    """What a Secret of *kind* holds, read from exactly one source (Konduktor's rules:
    git-ssh takes a file, env takes --inline); UsageError naming every problem at once,
    so bad arguments fail before any cluster is asked."""
    sources = (("--from-file", from_file), ("--from-directory", from_directory))
    given = [flag for flag, value in (*sources, ("--inline", inline)) if value]
    if len(given) != 1:
        what = "only one of" if given else "one of"
        raise UsageError(f"give {what} --from-file, --from-directory, --inline")
    need = {"git-ssh": "--from-file", "env": "--inline"}.get(kind)
    if need is not None and given != [need]:
        raise UsageError(f"--kind {kind} takes {need}, not {given[0]}")
    if from_file is not None:
        data = _file_data(kind, from_file)
    elif from_directory is not None:
        data = {PAYLOAD: _zipped(from_directory)}
    else:
        data = _inline_data(kind, inline)
    size = sum(len(value) for value in data.values())
    if size > MAX_BYTES:
        raise UsageError(
            f"{given[0]}: {size} bytes is over the {MAX_BYTES} a Kubernetes Secret can hold; "
            "put large files in the bucket (file_mounts) instead"
        )
    return data


def _file_data(kind: str, path: Path) -> dict[str, bytes]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--from-file {path}: cannot read it ({exc.strerror})") from None
    if kind == "git-ssh":
        if not is_private_key(data):
            raise UsageError(
                f"--from-file {path} is not a private key file (-----BEGIN ... PRIVATE KEY)"
            )
        return {GIT_SSH_KEY: data}
    if not _DATA_KEY.match(path.name):
        raise UsageError(
            f"--from-file {path}: the file's name becomes the key in the Secret and may "
            "hold only letters, digits, - . _; rename it"
        )
    return {path.name: data}


def _inline_data(kind: str, pairs: Sequence[str]) -> dict[str, bytes]:
    data, problems = {}, []
    rule = _ENV_NAME if kind == "env" else _DATA_KEY
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not rule.match(key):
            what = "an environment variable name" if kind == "env" else "letters, digits, - . _"
            problems.append(f"--inline {key!r}: give KEY=VALUE, KEY {what}")
        elif key in data:
            problems.append(f"--inline {key} is given twice")
        data[key] = value.encode()
    if problems:
        raise UsageError("; ".join(problems))
    return data


def _zipped(directory: Path) -> bytes:
    """*directory* as Konduktor zips it for a Secret: entries ``<its name>/<path>``; here
    sorted and with fixed times, so the same files give the same bytes."""
    if not directory.is_dir():
        raise UsageError(f"--from-directory {directory} is not a directory")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != ".DS_Store")
    if not files:
        raise UsageError(f"--from-directory {directory} holds no file")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(f"{directory.resolve().name}/{path.relative_to(directory)}")
            info.external_attr = (stat.S_IFREG | (path.stat().st_mode & 0o777)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            try:
                archive.writestr(info, path.read_bytes())
            except OSError as exc:
                raise UsageError(f"--from-directory: cannot read {path} ({exc.strerror})") from None
    return out.getvalue()


def create(cluster: Any, basename: str, kind: str, data: Mapping[str, bytes]) -> str:
    """Create (or replace) the user's Secret *basename* of *kind* holding *data* (read by
    :func:`read_data`), labelled as Konduktor labels it; a user has one git-ssh Secret, as
    in Konduktor, so a new one replaces the one there. Returns what was done."""
    from konduktor.k8s import submit

    name, owner = user_secret_name(basename), config.user_hash()
    labels = {**PARENT, OWNER_LABEL: owner, BASENAME_LABEL: basename, KIND_LABEL: kind}
    replaced = []
    if kind == "git-ssh":
        for other in user_secrets(cluster):
            if other.kind == "git-ssh" and other.name != name:
                submit.delete_secret(cluster, other.name)
                replaced.append(other.basename)
    done = submit.apply_secret(cluster, name, data, labels=labels)
    where = f"Secret {basename} ({name}) in namespace {cluster.namespace}"
    note = f"; it replaces the git-ssh Secret {', '.join(replaced)}" if replaced else ""
    use = {
        "git-ssh": "launch --mode git uses it",
        "env": f"every launched pod gets {', '.join(sorted(data))} from it",
        "default": f"every launched pod has it in {DEFAULT_SECRETS}/{basename}",
    }[kind]
    return f"{done} {where}{note}; {use}"


def user_secrets(cluster: Any) -> list[UserSecret]:
    """The user's Secrets in the cluster's namespace (Konduktor's owner label): one request."""
    from konduktor.k8s import submit

    found = submit.list_secrets(cluster, f"{OWNER_LABEL}={config.user_hash()}")
    return [_user_secret(item) for item in found]


def _user_secret(item: Mapping[str, Any]) -> UserSecret:
    labels, name = item["labels"], item["name"]
    basename = labels.get(BASENAME_LABEL) or name.rsplit("-", 1)[0]  # Konduktor's fallback
    created = item.get("created")
    return UserSecret(
        name,
        basename,
        labels.get(KIND_LABEL),
        tuple(item.get("keys", ())),
        None if created is None else str(created),
    )


def listed(cluster: Any) -> list[UserSecret]:
    """The user's Secrets, and those konduktor made before it labelled them as Konduktor
    does (git-ssh keys, and the credentials ``konduktor check`` writes)."""
    from konduktor.k8s import submit

    mine = user_secrets(cluster)
    names = {s.name for s in mine}
    selector = ",".join(f"{k}={v}" for k, v in MANAGED.items())
    for item in submit.list_secrets(cluster, selector):
        if item["name"] not in names:
            kind = item["labels"].get("konduktor.dev/kind") or "credentials"
            mine.append(replace(_user_secret(item), basename=item["name"], kind=kind))
    return mine


def delete(cluster: Any, name: str) -> str:
    """Delete the user's Secret *name* (the name given at creation, or the Secret's own);
    refuse to touch others. Returns the Secret's name."""
    from konduktor.k8s import submit

    matches = [s for s in listed(cluster) if name in (s.basename, s.name)]
    if not matches:
        raise UsageError(
            f"no Secret {name} made by konduktor or Konduktor for you in namespace "
            f"{cluster.namespace}; see konduktor secret list"
        )
    if len(matches) > 1:
        names = ", ".join(s.name for s in matches)
        raise UsageError(f"{name} names {len(matches)} Secrets ({names}); give the one to delete")
    submit.delete_secret(cluster, matches[0].name)
    return matches[0].name


def pod_config(found: Sequence[UserSecret]) -> dict[str, Any]:
    """The pod fragment (the shape of Konduktor's ``kubernetes.pod_config``) that gives every
    pod the user's Secrets as Konduktor does: each key of an env Secret becomes an
    environment variable read from it (``secretKeyRef``), each default Secret is mounted
    read-only at ``/konduktor/default-secrets/<its name>`` and copied by the pod, its
    ``payload.zip`` unpacked, to ``EXPANDED_SECRETS``, which ``KONDUKTOR_DEFAULT_SECRETS``
    names then. Empty when there is nothing to add."""
    env = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": s.name, "key": key}}}
        for s in found
        if s.kind == "env"
        for key in s.keys
    ]
    defaults = [s for s in found if s.kind == "default"]
    if defaults:
        env.append({"name": "KONDUKTOR_DEFAULT_SECRETS", "value": DEFAULT_SECRETS})
        env.append({"name": "KONDUKTOR_DEFAULT_SECRETS_EXPANDED", "value": EXPANDED_SECRETS})
    if not env:
        return {}
    container: dict[str, Any] = {"env": env}
    volumes = [
        {"name": f"default-secret-{s.basename}", "secret": {"secretName": s.name}} for s in defaults
    ]
    if volumes:
        container["volumeMounts"] = [
            {"name": f"default-secret-{s.basename}", "mountPath": f"{DEFAULT_SECRETS}/{s.basename}"}
            for s in defaults
        ] + [{"name": "default-secrets-expanded", "mountPath": EXPANDED_SECRETS}]
        volumes.append({"name": "default-secrets-expanded", "emptyDir": {}})
    spec: dict[str, Any] = {"containers": [container]}
    if volumes:
        spec["volumes"] = volumes
    return {"spec": spec}


def git_ssh(found: Sequence[UserSecret], name: str | None = None) -> tuple[str, str] | None:
    """(the Secret's name, the key file in it) for git mode: the git-ssh Secret *name*
    (given at creation, or the Secret's own), else the user's one git-ssh Secret; None
    when there is none."""
    for s in found:
        if s.kind == "git-ssh" and name in (None, s.basename, s.name):
            if GIT_SSH_KEY in s.keys or not s.keys:
                return s.name, GIT_SSH_KEY
            return s.name, LEGACY_GIT_SSH_KEY if LEGACY_GIT_SSH_KEY in s.keys else s.keys[0]
    return None
