"""Cloud credentials for pods: one Secret per user and cloud, written by `konduktor check`.

The pod mounts both of its user's Secrets (each optional) read-only at
``/run/konduktor/credentials``; the startup script copies the files it finds into
``~/.aws`` or ``~/.config/gcloud`` with mode 0600. File names inside the Secret:
``aws-credentials``, ``aws-config`` and ``gcs-credentials.json``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

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


# -- Secrets the user names: git SSH keys for --mode git ------------------------------------------

KIND_LABEL = "konduktor.dev/kind"
MANAGED = {"app.kubernetes.io/managed-by": "konduktor"}
GIT_SSH_KEY = "ssh-privatekey"  # the file name in the mounted Secret (kubernetes.io/ssh-auth's)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def is_private_key(data: bytes) -> bool:
    """*data* starts like a PEM or OpenSSH private key file."""
    return data.startswith(b"-----BEGIN") and b"PRIVATE KEY" in data.split(b"\n", 1)[0]


def check_name(name: str) -> None:
    """UsageError unless *name* is a valid Secret name (checked before the cluster is asked)."""
    if not _NAME.match(name):
        raise UsageError(f"{name!r} is not a valid Secret name: use lowercase letters, digits, - .")


def git_ssh_key(name: str, key: Path) -> bytes:
    """The private key file *key* for the Secret *name*, read; UsageError when the name or
    the file will not do (so bad arguments fail before any cluster is asked)."""
    check_name(name)
    try:
        data = key.read_bytes()
    except OSError as exc:
        raise UsageError(f"--from-file {key}: cannot read it ({exc.strerror})") from None
    if not is_private_key(data):
        raise UsageError(
            f"--from-file {key} is not a private key file (-----BEGIN ... PRIVATE KEY)"
        )
    return data


def create_git_ssh(cluster: Any, name: str, data: bytes) -> str:
    """Create or replace the Secret *name* holding the private key *data* (read by
    :func:`git_ssh_key`)."""
    from konduktor.k8s import submit

    labels = {**MANAGED, KIND_LABEL: "git-ssh"}
    done = submit.apply_secret(cluster, name, {GIT_SSH_KEY: data}, labels=labels)
    return f"{done} Secret {name} in namespace {cluster.namespace}; launch with --ssh-secret {name}"


def listed(cluster: Any) -> list[dict[str, Any]]:
    """The Secrets konduktor manages in the cluster's namespace (names and kinds, no data)."""
    from konduktor.k8s import submit

    selector = ",".join(f"{k}={v}" for k, v in MANAGED.items())
    return submit.list_secrets(cluster, selector)


def delete(cluster: Any, name: str) -> None:
    """Delete the Secret *name* if konduktor manages it; refuse to touch others."""
    from konduktor.k8s import submit

    if name not in {s["name"] for s in listed(cluster)}:
        raise UsageError(
            f"no Secret {name} made by konduktor in namespace {cluster.namespace}; "
            "see konduktor secret list"
        )
    submit.delete_secret(cluster, name)
