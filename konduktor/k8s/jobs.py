"""Jobs on a cluster: find mine, resolve a name or prefix, tell a job's state from its
JobSet and pods, suspend, resume and delete it, stream a pod's log, follow it to its end.

Nothing here prints: :func:`follow` reports through callbacks and logs are iterators of
bytes. Every API failure is one :class:`~konduktor.errors.ClusterError` line, through
:mod:`konduktor.k8s.submit`'s mapping; a name no job answers to is a
:class:`~konduktor.errors.JobError`.

A job is *mine* when its JobSet's ``trainy.ai/username`` label is my cleaned login, the
test upstream Konduktor's ``status`` applies, so both tools list the same jobs.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from konduktor.errors import JobError
from konduktor.k8s import jobset as js
from konduktor.k8s.submit import GROUP, PLURAL, VERSION, Cluster, _call, _kubernetes, get_jobset

log = logging.getLogger(__name__)

POLL_SECONDS = 1.5  # between looks at the JobSet and its pods while a job waits
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"  # the JobSet controller puts it on pods
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # a pod's rank
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
STOPPED_BY = "trainy.ai/stop-username"  # upstream's mark of a user's `stop`
_STARTING = {"ContainerCreating", "PodInitializing"}  # waiting reasons that are no problem
FINISHED = ("succeeded", "failed")


@dataclass(frozen=True)
class Job:
    """A konduktor JobSet, as `status` shows it."""

    name: str
    user: str | None
    created: datetime.datetime | None
    nodes: int
    accelerators: str | None  # "H100:8"
    commit: str | None
    dirty: bool
    jobset: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class State:
    """Where a job is. *phase*: queued, stopped, suspended, pending, running, succeeded or
    failed; *detail*: why it waits or how it failed (the scheduler's reason, an image pull
    error, a termination message); *started*: the followed rank's container has started,
    so its log can be read."""

    phase: str
    detail: str = ""
    exit_code: int | None = None  # finished: the job's code
    pod: str | None = None  # the followed rank's pod
    started: bool = False

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED


def is_konduktor(jobset: dict[str, Any]) -> bool:
    """Made by konduktor, or by upstream Konduktor (whose JobSets carry its user label)."""
    labels = jobset.get("metadata", {}).get("labels") or {}
    return labels.get(js.MANAGED_LABEL) == "true" or js.USERNAME_LABEL in labels


def to_job(jobset: dict[str, Any]) -> Job:
    meta = jobset.get("metadata", {})
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    kind, count = labels.get(js.ACCELERATOR_LABEL), labels.get(js.NUM_ACCELERATORS_LABEL)
    accelerators = f"{kind}:{count}" if kind and kind != "None" else None
    return Job(
        name=str(meta.get("name")),
        user=labels.get(js.USERNAME_LABEL),
        created=_time(meta.get("creationTimestamp")),
        nodes=_nodes(jobset),
        accelerators=accelerators,
        commit=notes.get("konduktor.dev/git-commit") or None,
        dirty=notes.get("konduktor.dev/git-dirty") == "true",
        jobset=jobset,
    )


def _time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _nodes(jobset: dict[str, Any]) -> int:
    total = 0
    for replicated in jobset.get("spec", {}).get("replicatedJobs") or []:
        spec = replicated.get("template", {}).get("spec", {})
        total += int(replicated.get("replicas") or 1) * int(spec.get("parallelism") or 1)
    return total


# -- reading ----------------------------------------------------------------------------------


def list_jobs(cluster: Cluster, *, user: str | None) -> list[Job]:
    """The konduktor jobs of *user* (None: of every user), newest first."""
    selector = f"{js.USERNAME_LABEL}={user}" if user else js.USERNAME_LABEL
    api = _kubernetes().client.CustomObjectsApi(cluster.api_client)
    found = _call(
        cluster,
        "list JobSets",
        selector,
        api.list_namespaced_custom_object,
        GROUP,
        VERSION,
        cluster.namespace,
        PLURAL,
        label_selector=selector,
    )
    jobs = [to_job(item) for item in found.get("items") or [] if is_konduktor(item)]
    oldest = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return sorted(jobs, key=lambda job: job.created or oldest, reverse=True)


def pods(cluster: Cluster, jobs: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The pods of each of *jobs* (one request), as the API's JSON."""
    if not jobs:
        return {}
    selector = f"{JOBSET_NAME} in ({','.join(sorted(set(jobs)))})"
    core = _kubernetes().client.CoreV1Api(cluster.api_client)
    response = _call(
        cluster,
        "list Pods",
        selector,
        core.list_namespaced_pod,
        cluster.namespace,
        label_selector=selector,
        _preload_content=False,  # plain JSON, as the JobSets come
    )
    items = json.loads(response.data).get("items") or []
    found: dict[str, list[dict[str, Any]]] = {job: [] for job in jobs}
    for pod in items:
        owner = (pod.get("metadata", {}).get("labels") or {}).get(JOBSET_NAME)
        found.setdefault(str(owner), []).append(pod)
    return found


def resolve(cluster: Cluster, name: str, candidates: Sequence[Job]) -> Job:
    """The job *name* names: a job's whole name (any user's, if konduktor made it), or
    the start of exactly one of *candidates*' names."""
    exact = [job for job in candidates if job.name == name]
    if exact:
        return exact[0]
    matches = [job for job in candidates if job.name.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    where = f"namespace {cluster.namespace} (context {cluster.context})"
    if matches:
        names = ", ".join(job.name for job in matches)
        raise JobError(f"{name!r} matches {len(matches)} jobs in {where}: {names}; give more of it")
    found = get_jobset(cluster, name)
    if found is not None and not is_konduktor(found):
        raise JobError(
            f"the JobSet {name} in {where} was not made by konduktor (it has no "
            f"{js.MANAGED_LABEL} label); manage it with kubectl"
        )
    if found is not None:
        return to_job(found)
    yours = ", ".join(job.name for job in candidates[:5]) or "none"
    raise JobError(
        f"no job named {name!r} or starting with it in {where} (yours: {yours}); "
        "konduktor status lists them"
    )


# -- a job's state ----------------------------------------------------------------------------


def rank_of(pod: dict[str, Any]) -> int | None:
    meta = pod.get("metadata", {})
    for where in (meta.get("labels") or {}, meta.get("annotations") or {}):
        if COMPLETION_INDEX in where:
            return int(where[COMPLETION_INDEX])
    return None


def state(jobset: dict[str, Any], job_pods: Sequence[dict[str, Any]], rank: int = 0) -> State:
    """The state of a job from its JobSet and its pods, following *rank*'s pod."""
    pod = next((p for p in job_pods if rank_of(p) == rank), None)
    name = pod["metadata"]["name"] if pod else None
    started = pod is not None and _container_state(pod).keys() & {"running", "terminated"}
    base = State("pending", pod=name, started=bool(started))
    ended = _finished(jobset, job_pods)
    if ended is not None:
        return State(ended[0], ended[2], ended[1], name, bool(started))
    if jobset.get("spec", {}).get("suspend"):
        return _suspended(jobset, base)
    if pod is None:
        waiting = next((w for p in job_pods if (w := _waiting(p))), "")
        return State("pending", waiting or f"waiting for the pod of rank {rank}")
    if "running" in _container_state(pod):
        return State("running", pod=name, started=True)
    if "terminated" in _container_state(pod):
        return State("running", "its other pods are still running", pod=name, started=True)
    return State("pending", _waiting(pod) or "starting", pod=name)


def _suspended(jobset: dict[str, Any], base: State) -> State:
    labels = jobset.get("metadata", {}).get("labels") or {}
    if labels.get(STOPPED_BY):
        return State("stopped", f"by {labels[STOPPED_BY]}; konduktor start resumes it")
    if labels.get(QUEUE_LABEL):
        return State("queued", f"by Kueue in queue {labels[QUEUE_LABEL]}")
    return State("suspended", "spec.suspend is true", pod=base.pod)


def _container_state(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    mine = [c for c in statuses if c.get("name") == js.CONTAINER] or statuses
    return dict(mine[0].get("state") or {}) if mine else {}


def _waiting(pod: dict[str, Any]) -> str:
    """Why a pod has not started: the scheduler's reason, or its container's."""
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return _reason(condition)
    waiting = _container_state(pod).get("waiting") or {}
    if waiting.get("reason") and waiting["reason"] not in _STARTING:
        return _reason(waiting)
    return ""


def _reason(part: dict[str, Any]) -> str:
    reason, message = part.get("reason") or "", " ".join(str(part.get("message") or "").split())
    return f"{reason}: {message}" if reason and message else reason or message


def _finished(
    jobset: dict[str, Any], job_pods: Sequence[dict[str, Any]]
) -> tuple[str, int, str] | None:
    """(phase, exit code, detail) once the JobSet (or every one of its pods) has ended."""
    status = jobset.get("status") or {}
    terminal = status.get("terminalState") or next(
        (
            c.get("type")
            for c in status.get("conditions") or []
            if c.get("type") in ("Completed", "Failed") and c.get("status") == "True"
        ),
        None,
    )
    ended = [p for p in job_pods if p.get("status", {}).get("phase") in ("Succeeded", "Failed")]
    if terminal is None and not (job_pods and len(ended) == len(job_pods) >= _nodes(jobset)):
        return None
    failed = sorted((p for p in ended if _exit(p)[0] != 0), key=lambda p: rank_of(p) or 0)
    if terminal == "Completed" or (terminal is None and not failed):
        return "succeeded", 0, ""
    if not failed:
        return "failed", 1, _reason(next(iter(status.get("conditions") or []), {}))
    code, message = _exit(failed[0])
    return "failed", code, message


def _exit(pod: dict[str, Any]) -> tuple[int, str]:
    """A finished pod's exit code and its termination message (or the kubelet's reason)."""
    ended = _container_state(pod).get("terminated")
    if ended is None:  # failed before its container ran: evicted, deadline, ...
        status = pod.get("status", {})
        failed = status.get("phase") == "Failed"
        return (1 if failed else 0), _reason(status)
    message = " ".join(str(ended.get("message") or "").split())
    if _is_result(message):  # the return-value envelope of a task that ran: no reason
        message = ""
    return int(ended.get("exitCode") or 0), message or str(ended.get("reason") or "")


def _is_result(message: str) -> bool:
    """*message* is the ``{"exit": N, ...}`` the startup script writes after ``run:``, as
    Konduktor's pods do for its controller's return values."""
    if not message.startswith('{"exit":'):
        return False
    try:
        return isinstance(json.loads(message), dict)
    except ValueError:
        return True  # a result.json that is not JSON: still the envelope


# -- changing ---------------------------------------------------------------------------------


def suspend(cluster: Cluster, name: str, *, by: str) -> None:
    """Suspend the JobSet (its pods go away; Kueue releases its quota), marked as *by*'s."""
    _patch(cluster, name, {"metadata": {"labels": {STOPPED_BY: by}}, "spec": {"suspend": True}})


def resume(cluster: Cluster, name: str) -> None:
    _patch(cluster, name, {"metadata": {"labels": {STOPPED_BY: None}}, "spec": {"suspend": False}})


def _patch(cluster: Cluster, name: str, patch: dict[str, Any]) -> None:
    api = _kubernetes().client.CustomObjectsApi(cluster.api_client)
    args = (GROUP, VERSION, cluster.namespace, PLURAL, name, patch)
    _call(cluster, "patch JobSet", name, api.patch_namespaced_custom_object, *args)


def delete(cluster: Cluster, name: str) -> bool:
    """Delete the JobSet (its Jobs and pods go with it); False when it was gone already."""
    api = _kubernetes().client.CustomObjectsApi(cluster.api_client)
    args = (GROUP, VERSION, cluster.namespace, PLURAL, name)
    done = _call(
        cluster,
        "delete JobSet",
        name,
        api.delete_namespaced_custom_object,
        *args,
        propagation_policy="Background",
        allow=404,
    )
    return done is not None


# -- logs -------------------------------------------------------------------------------------


def read_log(
    cluster: Cluster, pod: str, *, follow: bool = False, tail: int | None = None
) -> Iterator[bytes]:
    """The pod's log in chunks as they come; with *follow*, until its container ends.

    The stream ends early, without an error, when the connection drops or stays silent
    for the client's read timeout: a follower looks at the pod again and goes on."""
    import urllib3

    core = _kubernetes().client.CoreV1Api(cluster.api_client)
    extra: dict[str, Any] = {"tail_lines": tail} if tail is not None else {}
    response = _call(
        cluster,
        "read log",
        pod,
        core.read_namespaced_pod_log,
        pod,
        cluster.namespace,
        container=js.CONTAINER,
        follow=follow,
        _preload_content=False,
        **extra,
    )
    try:
        yield from response.stream(4096, decode_content=True)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        log.debug("the log stream of %s ended: %s", pod, exc)
    finally:  # a stream left half read cannot carry another request: close it
        response.close()
        response.release_conn()


def follow(
    cluster: Cluster,
    name: str,
    *,
    rank: int = 0,
    on_state: Callable[[State], None],
    on_output: Callable[[bytes], None],
    tail: int | None = None,
    poll: float | None = None,
) -> State:
    """Watch job *name* until it ends: *on_state* gets each new state while it waits or
    runs, *on_output* its rank's log as it comes (from its last *tail* lines, if given);
    the final state is returned (its ``exit_code`` is the job's). Raises JobError when
    the JobSet is deleted meanwhile."""
    seen: tuple[str, str] | None = None
    streamed: str | None = None  # the pod whose log was streamed from its start
    while True:
        current = _look(cluster, name, rank)
        if (current.phase, current.detail) != seen:
            seen = (current.phase, current.detail)
            on_state(current)
        pod = current.pod
        running = current.phase == "running" and not current.detail  # the rank's container
        fresh = pod != streamed  # a new pod (the JobSet restarted its jobs) starts over
        if pod and ((current.started and fresh) or (not fresh and running)):
            # A log already streamed: only what comes after its stream broke off.
            for chunk in read_log(cluster, pod, follow=True, tail=tail if fresh else 0):
                on_output(chunk)
            if fresh:
                streamed = pod
                continue
        if current.finished:
            return current
        time.sleep(POLL_SECONDS if poll is None else poll)


def _look(cluster: Cluster, name: str, rank: int) -> State:
    found = get_jobset(cluster, name)
    if found is None:
        raise JobError(
            f"job {name} was deleted while it was followed (namespace {cluster.namespace}, "
            f"context {cluster.context})"
        )
    return state(found, pods(cluster, [name]).get(name, []), rank)
