"""A task rendered as a JobSet (``jobset.x-k8s.io/v1alpha2``) in Konduktor's shape.

Pure: task and launch facts in, a manifest dict out. One replicated job
``workers`` runs ``num_nodes`` indexed pods; requests equal limits; the
task's ``resources.labels`` go onto the JobSet (Kueue reads its queue there);
provenance (commit, dirty flag, layer digests, tool version) rides in
annotations and env vars.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from konduktor import __version__
from konduktor.task import Task

API_VERSION = "jobset.x-k8s.io/v1alpha2"
CONTAINER = "konduktor-container"
CREDENTIALS_VOLUME = "konduktor-credentials"
CREDENTIALS_PATH = "/run/konduktor/credentials"
GIT_SSH_VOLUME = "konduktor-git-ssh"
GIT_SSH_PATH = "/run/konduktor/git-ssh"  # git mode's key Secret (secrets.GIT_SSH_KEY in it)
STORE_VOLUME = "konduktor-store"  # a shared file:// store, from the node at the same path
MAX_RUN_ANNOTATION = "kueue.x-k8s.io/maxRunDurationSeconds"
DEFAULT_MAX_RUN_SECONDS = 604800
_COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# Upstream Konduktor's labels (konduktor/utils/jobset_utils.py), so that both tools list
# the same jobs: its `status` keeps the JobSets whose USERNAME_LABEL is the cleaned login.
JOB_NAME_LABEL = "trainy.ai/job-name"
USER_ID_LABEL = "trainy.ai/user-id"
USERNAME_LABEL = "trainy.ai/username"
ACCELERATOR_LABEL = "trainy.ai/accelerator"
NUM_ACCELERATORS_LABEL = "trainy.ai/num-accelerators"
MANAGED_LABEL = "trainy.ai/konduktor-managed"
POD_JOB_LABEL = "konduktor.dev/job"


@dataclass(frozen=True)
class Owner:
    """Who launched a job: the cleaned login name and upstream's user id
    (``<login>-<last 4 hex of md5(hostname)>``, as its ``user_and_hostname_hash``)."""

    username: str
    user_id: str


def current_owner() -> Owner:
    """The user launching from this machine."""
    from konduktor import config

    host = hashlib.md5(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[-4:]
    name = config.user()  # upstream puts the raw login here; a label value must be clean
    return Owner(name, f"{name}-{host}")


def to_yaml(manifest: dict[str, Any]) -> str:
    """*manifest* as YAML, multi-line strings (the startup script) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(manifest, Dumper=Dumper, sort_keys=False)


def job_name(task: Task) -> str:
    """``<name>-<8 hex>`` (the task's name is at most ``task.MAX_NAME`` characters): 32
    random bits, so that launches of one task practically never collide with a plan kept
    in the store (16 bits did, with probability N/65536 once N plans existed)."""
    return f"{task.name}-{secrets.token_hex(4)}"


def render(
    task: Task,
    *,
    name: str,
    command: str,
    secret_names: Sequence[str],
    provenance: Mapping[str, str],
    git_secret: str | None = None,
    store_path: str | None = None,
    owner: Owner | None = None,
) -> dict[str, Any]:
    """The JobSet manifest; *command* is the pod's startup script, run by ``sh -c``;
    the Secrets *secret_names* (each optional) are mounted read-only together, and a
    shared ``file://`` store's directory *store_path* read-only from the node; *owner*
    (default: :func:`current_owner`) goes into upstream Konduktor's labels."""
    labels = dict(task.resources.labels)
    max_run = labels.pop("maxRunDurationSeconds", str(DEFAULT_MAX_RUN_SECONDS))
    labels.update(_labels(task, name, owner or current_owner()))
    annotations = {MAX_RUN_ANNOTATION: max_run, "konduktor.dev/version": __version__}
    annotations.update({f"konduktor.dev/{k}": v for k, v in provenance.items()})
    return {
        "apiVersion": API_VERSION,
        "kind": "JobSet",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "network": {"enableDNSHostnames": True},
            "replicatedJobs": [
                {
                    "name": "workers",
                    "replicas": 1,
                    "template": _job(
                        task, name, command, secret_names, provenance, git_secret, store_path
                    ),
                }
            ],
        },
    }


def _labels(task: Task, name: str, owner: Owner) -> dict[str, str]:
    """Upstream's JobSet labels; they win over a task label of the same key, which would
    otherwise hide the job from its owner's `status`."""
    kind, _, count = (task.resources.accelerators or "").partition(":")
    return {
        JOB_NAME_LABEL: name,
        USER_ID_LABEL: owner.user_id,
        USERNAME_LABEL: owner.username,
        ACCELERATOR_LABEL: kind or "None",
        NUM_ACCELERATORS_LABEL: (count or "1") if kind else "0",
        MANAGED_LABEL: "true",
    }


def _job(
    task: Task,
    name: str,
    command: str,
    secret_names: Sequence[str],
    provenance: Mapping[str, str],
    git_secret: str | None,
    store_path: str | None,
) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {
            "name": CREDENTIALS_VOLUME,
            "projected": {
                "sources": [{"secret": {"name": n, "optional": True}} for n in secret_names]
            },
        }
    ]
    if git_secret:
        volumes.append(
            {"name": GIT_SSH_VOLUME, "secret": {"secretName": git_secret, "defaultMode": 0o400}}
        )
    if store_path:
        volumes.append(
            {"name": STORE_VOLUME, "hostPath": {"path": store_path, "type": "Directory"}}
        )
    container = _container(task, name, command, provenance, git_secret)
    if store_path:
        mount = {"name": STORE_VOLUME, "mountPath": store_path, "readOnly": True}
        container["volumeMounts"].append(mount)
    return {
        "spec": {
            "parallelism": task.num_nodes,
            "completions": task.num_nodes,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {POD_JOB_LABEL: name, JOB_NAME_LABEL: name}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        }
    }


def _container(
    task: Task, name: str, command: str, provenance: Mapping[str, str], git_secret: str | None
) -> dict[str, Any]:
    resources = _resources(task)
    mounts = [{"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_PATH, "readOnly": True}]
    if git_secret:
        mounts.append({"name": GIT_SSH_VOLUME, "mountPath": GIT_SSH_PATH, "readOnly": True})
    return {
        "name": CONTAINER,
        "image": task.resources.image_id,
        "command": ["/bin/sh", "-c", command],
        "env": _env(task, name, provenance),
        "resources": {"requests": resources, "limits": dict(resources)},
        "volumeMounts": mounts,
    }


def _resources(task: Task) -> dict[str, str]:
    out = {}
    if task.resources.cpus is not None:
        out["cpu"] = f"{task.resources.cpus:g}"
    if task.resources.memory is not None:
        out["memory"] = f"{task.resources.memory:g}Gi"
    if task.resources.accelerators:
        _, _, count = task.resources.accelerators.partition(":")
        out["nvidia.com/gpu"] = count or "1"
    return out


def _env(task: Task, name: str, provenance: Mapping[str, str]) -> list[dict[str, Any]]:
    hosts = ",".join(f"{name}-workers-0-{i}.{name}" for i in range(task.num_nodes))
    env: list[dict[str, Any]] = [
        {"name": "NUM_NODES", "value": str(task.num_nodes)},
        {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": _COMPLETION_INDEX}}},
        {"name": "MASTER_ADDR", "value": f"{name}-workers-0-0.{name}"},
        {"name": "NODE_HOST_IPS", "value": hosts},
    ]
    env += [
        {"name": "KONDUKTOR_" + k.upper().replace("-", "_"), "value": v}
        for k, v in provenance.items()
    ]
    env += [{"name": k, "value": v} for k, v in task.envs.items()]
    return env
