"""A task rendered as a JobSet (``jobset.x-k8s.io/v1alpha2``) in Konduktor's shape.

Pure: task and launch facts in, a manifest dict out. One replicated job
``workers`` runs ``num_nodes`` indexed pods; requests equal limits; the
task's ``resources.labels`` go onto the JobSet (Kueue reads its queue there);
provenance (commit, dirty flag, layer digests, tool version) rides in
annotations and env vars.
"""

from __future__ import annotations

import copy
import hashlib
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from konduktor import __version__
from konduktor.task import AMD_ACCELERATORS, Task

API_VERSION = "jobset.x-k8s.io/v1alpha2"
CONTAINER = "konduktor-container"
CREDENTIALS_VOLUME = "konduktor-credentials"
CREDENTIALS_PATH = "/run/konduktor/credentials"
GIT_SSH_VOLUME = "konduktor-git-ssh"
GIT_SSH_PATH = "/run/konduktor/git-ssh"  # git mode's key Secret (secrets.GIT_SSH_KEY in it)
STORE_VOLUME = "konduktor-store"  # a shared file:// store, from the node at the same path
MAX_RUN_ANNOTATION = "kueue.x-k8s.io/maxRunDurationSeconds"
MAX_RUN_LABEL = "maxRunDurationSeconds"  # the task's label that sets it, as upstream's
MAX_EXEC_LABEL = "kueue.x-k8s.io/max-exec-time-seconds"  # the one Kueue enforces
DEFAULT_MAX_RUN_SECONDS = 604800
TTL_SECONDS = 604800  # finished JobSets and their Jobs are kept 7 days, as upstream's
# A memory-backed /dev/shm (the container default is 64 MiB); pod_config can resize it by
# naming this volume, as with upstream's.
SHM_VOLUME = "shared-memory"
SHM_SIZE = "4Gi"
OUTPUT_VOLUME = "konduktor-output"
OUTPUT_PATH = "/konduktor/output"  # KONDUKTOR_OUTPUT_DIR
PROFILE_LABEL = "trainy.ai/accelerator-profile"  # taint key of upstream's GPU pools
DEBUG_LABEL = "konduktor.ai/debug"  # upstream's pod labels, always "false" here
TAILSCALE_LABEL = "konduktor.ai/tailscale"
# Upstream refuses a task without cpus or memory; these are what a pod without them
# requests (and is limited to), so that Kueue's quota counts it.
DEFAULT_CPUS = "1"
DEFAULT_MEMORY = "2Gi"
_RESTART_ATTEMPT = "metadata.labels['jobset.sigs.k8s.io/restart-attempt']"
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
    pod_config: Mapping[str, Any] | None = None,
    secrets_config: Mapping[str, Any] | None = None,
    jobset_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JobSet manifest; *command* is the pod's startup script, run by ``sh -c``;
    the Secrets *secret_names* (each optional) are mounted read-only together, and a
    shared ``file://`` store's directory *store_path* read-only from the node; *owner*
    (default: :func:`current_owner`) goes into upstream Konduktor's labels.

    As upstream's: the config's ``kubernetes.pod_config`` is merged into the pod template
    (:func:`merge_pod_config`), then *secrets_config* (the user's env and default
    Secrets, :func:`konduktor.k8s.secrets.pod_config`), then the task's envs, each
    variable taking the place of one of the same name; ``jobset_config``'s labels and
    annotations go onto the JobSet, under the task's."""
    owner = owner or current_owner()
    meta = (jobset_config or {}).get("metadata") or {}
    config_annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    labels.update(task.resources.labels)
    max_run = task.resources.labels.get(MAX_RUN_LABEL) or config_annotations.get(MAX_RUN_ANNOTATION)
    labels.update(_labels(task, name, owner))
    if max_run is not None:
        labels[MAX_EXEC_LABEL] = max_run  # the one Kueue enforces
    annotations = {
        **config_annotations,
        MAX_RUN_ANNOTATION: max_run or str(DEFAULT_MAX_RUN_SECONDS),
        "konduktor.dev/version": __version__,
    }
    annotations.update({f"konduktor.dev/{k}": v for k, v in provenance.items()})
    template = _pod(task, name, command, secret_names, provenance, git_secret, store_path, owner)
    for fragment in (pod_config, secrets_config):
        if fragment:
            merge_pod_config(template, copy.deepcopy(dict(fragment)))
            _dedupe_env(template["spec"]["containers"][0])
    container = template["spec"]["containers"][0]
    container["env"] += [{"name": k, "value": v} for k, v in task.envs.items()]
    _dedupe_env(container)
    spec: dict[str, Any] = {"ttlSecondsAfterFinished": TTL_SECONDS}
    if task.resources.max_restarts is not None:
        spec["failurePolicy"] = {"maxRestarts": task.resources.max_restarts}
    return {
        "apiVersion": API_VERSION,
        "kind": "JobSet",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            **spec,
            "network": {"enableDNSHostnames": True},
            "replicatedJobs": [
                {"name": "workers", "replicas": 1, "template": _job(task, template)}
            ],
        },
    }


def merge_pod_config(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    """Merge *override* (a pod template fragment, as ``kubernetes.pod_config``) into *base*
    the way upstream Konduktor does: mappings merge key by key, a value replaces a value;
    the first of ``containers`` and of ``imagePullSecrets`` merges into base's first;
    ``volumes`` and ``volumeMounts`` merge by name (a mount taking over another's
    ``mountPath`` drops that one); other lists are appended to."""
    for key, value in override.items():
        if key not in base:
            base[key] = value
        elif isinstance(value, Mapping) and isinstance(base[key], dict):
            merge_pod_config(base[key], value)
        elif isinstance(value, list) and isinstance(base[key], list):
            if key in ("containers", "imagePullSecrets") and value and base[key]:
                merge_pod_config(base[key][0], value[0])
                base[key] += value[1:]
            elif key in ("volumes", "volumeMounts"):
                _merge_named(base[key], value, by_path=key == "volumeMounts")
            else:
                base[key] += value
        else:
            base[key] = value


def _merge_named(items: list[dict[str, Any]], new: list[Any], *, by_path: bool) -> None:
    for item in new:
        same = next((i for i in items if i.get("name") == item.get("name")), None)
        if same is None:
            items.append(item)
            same = item
        else:
            merge_pod_config(same, item)
        if by_path:
            items[:] = [
                i for i in items if i is same or i.get("mountPath") != same.get("mountPath")
            ]


def _dedupe_env(container: dict[str, Any]) -> None:
    """One variable per name: the last one given, in the first one's place."""
    env: dict[str, dict[str, Any]] = {}
    for var in container.get("env") or []:
        env[var["name"]] = var
    container["env"] = list(env.values())


def _labels(task: Task, name: str, owner: Owner) -> dict[str, str]:
    """Upstream's JobSet labels; they win over a task label of the same key, which would
    otherwise hide the job from its owner's `status`."""
    kind, count = gpus(task)
    return {
        JOB_NAME_LABEL: name,
        USER_ID_LABEL: owner.user_id,
        USERNAME_LABEL: owner.username,
        ACCELERATOR_LABEL: kind or "None",
        NUM_ACCELERATORS_LABEL: str(count),
        MANAGED_LABEL: "true",
        "parent": "trainy",
    }


def gpus(task: Task) -> tuple[str, int]:
    """The accelerator type ("" without one) and the GPUs per node."""
    kind, _, count = (task.resources.accelerators or "").partition(":")
    return kind, (int(count or "1") if kind else 0)


def gpu_resource(kind: str) -> str:
    """The device plugin's resource for GPUs of type *kind*, as upstream's."""
    return "amd.com/gpu" if kind in AMD_ACCELERATORS else "nvidia.com/gpu"


def accelerator_profile(kind: str, count: int) -> str:
    """Upstream's accelerator profile (``H100:8``: ``h100-8``), the value of the taint
    on its GPU pools and of the pod's ``trainy.ai/accelerator-profile`` label."""
    return f"{re.sub(r'[^a-z0-9-]+', '-', kind.lower()).strip('-')}-{count}"


def _pod(
    task: Task,
    name: str,
    command: str,
    secret_names: Sequence[str],
    provenance: Mapping[str, str],
    git_secret: str | None,
    store_path: str | None,
    owner: Owner,
) -> dict[str, Any]:
    """The pod template, upstream's fields first, then ours."""
    volumes: list[dict[str, Any]] = [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
        {"name": OUTPUT_VOLUME, "emptyDir": {}},
        {
            "name": CREDENTIALS_VOLUME,
            "projected": {
                "sources": [{"secret": {"name": n, "optional": True}} for n in secret_names]
            },
        },
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
    kind, count = gpus(task)
    labels = {"parent": "trainy", USERNAME_LABEL: owner.username}
    spec: dict[str, Any] = {"restartPolicy": "Never"}
    if count:
        profile = accelerator_profile(kind, count)
        labels.update(
            {ACCELERATOR_LABEL: kind, NUM_ACCELERATORS_LABEL: str(count), PROFILE_LABEL: profile}
        )
        spec["tolerations"] = [
            {"key": gpu_resource(kind), "operator": "Exists"},
            {"key": PROFILE_LABEL, "operator": "Equal", "value": profile, "effect": "NoSchedule"},
        ]
    labels.update({DEBUG_LABEL: "false", TAILSCALE_LABEL: "false"})
    labels.update({POD_JOB_LABEL: name, JOB_NAME_LABEL: name})
    spec.update({"containers": [container], "volumes": volumes})
    return {"metadata": {"labels": labels}, "spec": spec}


def _job(task: Task, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "spec": {
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "parallelism": task.num_nodes,
            "completions": task.resources.completions or task.num_nodes,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onPodConditions": [{"type": "ConfigIssue", "status": "True"}],
                    }
                ]
            },
            "template": template,
        }
    }


def _container(
    task: Task, name: str, command: str, provenance: Mapping[str, str], git_secret: str | None
) -> dict[str, Any]:
    resources = _resources(task)
    mounts = [
        {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
        {"name": OUTPUT_VOLUME, "mountPath": OUTPUT_PATH},
        {"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_PATH, "readOnly": True},
    ]
    if git_secret:
        mounts.append({"name": GIT_SSH_VOLUME, "mountPath": GIT_SSH_PATH, "readOnly": True})
    return {
        "name": CONTAINER,
        "image": task.resources.image_id,
        "command": ["/bin/sh", "-c", command],
        "env": _env(task, name, provenance),
        "resources": {"requests": resources, "limits": dict(resources)},
        "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": mounts,
    }


def _resources(task: Task) -> dict[str, str]:
    cpus, memory = task.resources.cpus, task.resources.memory
    out = {
        "cpu": DEFAULT_CPUS if cpus is None else f"{cpus:g}",
        "memory": DEFAULT_MEMORY if memory is None else f"{memory:g}Gi",
    }
    kind, count = gpus(task)
    if count:
        out[gpu_resource(kind)] = str(count)
    return out


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _env(task: Task, name: str, provenance: Mapping[str, str]) -> list[dict[str, Any]]:
    """Upstream's variables with its values (SkyPilot's names too), then provenance."""
    hosts = ",".join(f"{name}-workers-0-{i}.{name}" for i in range(task.num_nodes))
    kind, count = gpus(task)
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "0"},
        _field("KONDUKTOR_NODENAME", "spec.nodeName"),
        {"name": "KONDUKTOR_JOB_NAME", "value": name},
        {"name": "NODE_HOST_IPS", "value": hosts},
        {"name": "MASTER_ADDR", "value": f"{name}-workers-0-0.{name}"},
        _field("RANK", _COMPLETION_INDEX),
        _field("LOCAL_ADDR", "status.podIP"),
        {"name": "NUM_NODES", "value": str(task.num_nodes)},
        {"name": "NUM_GPUS_PER_NODE", "value": str(count)},
    ]
    if kind:
        env.append({"name": "KONDUKTOR_ACCELERATOR_TYPE", "value": kind})
    env += [
        _field("KONDUKTOR_NAMESPACE", "metadata.namespace"),
        {"name": "KONDUKTOR_OUTPUT_DIR", "value": OUTPUT_PATH},
        {"name": "PLUTO_RUN_ID", "value": name},
        {"name": "SKYPILOT_NODE_IPS", "value": hosts},
        _field("SKYPILOT_NODE_RANK", _COMPLETION_INDEX),
        {"name": "SKYPILOT_NUM_NODES", "value": str(task.num_nodes)},
        {"name": "SKYPILOT_NUM_GPUS_PER_NODE", "value": str(count)},
        _field("RESTART_ATTEMPT", _RESTART_ATTEMPT),
    ]
    env += [
        {"name": "KONDUKTOR_" + k.upper().replace("-", "_"), "value": v}
        for k, v in provenance.items()
    ]
    return env
