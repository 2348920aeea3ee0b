"""A small Kubernetes API server for tests: the few endpoints konduktor calls, over real HTTP.

It speaks JSON like the real API server: objects live in memory, a create of an
existing name answers 409 and a missing one 404, errors carry a ``Status``
object, and every request needs the bearer token (401 otherwise). It records
every request for assertions, and ``fail_next`` makes the next request(s) fail
with a chosen status (403 for RBAC, 404 for a missing CRD, 500, ...).

    POST/GET  /apis/jobset.x-k8s.io/v1alpha2/namespaces/{ns}/jobsets[/{name}]
    PATCH/DELETE  .../jobsets/{name}   (a JSON merge patch; a delete takes the pods along)
    POST      /api/v1/namespaces/{ns}/secrets
    GET/PUT   /api/v1/namespaces/{ns}/secrets/{name}
    GET       /api/v1/namespaces/{ns}/pods[/{name}]
    GET       /api/v1/namespaces/{ns}/pods/{name}/log   (follow=true streams it, chunked)

A list takes a ``labelSelector`` of ``k=v``, ``k!=v``, ``k``, ``!k`` and ``k in (a,b)``
terms. Nothing moves on
its own: JobSets never get pods or a status unless a test adds them, with
:meth:`KubeAPI.add_pod`, :meth:`KubeAPI.set_pod` and :meth:`KubeAPI.log`, or plays a
scripted timeline with :meth:`KubeAPI.play` (pending, running, finished), as the JobSet
controller and the kubelet would.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = ["TOKEN", "KubeAPI", "Request", "Step", "cluster", "kube_api", "kubeconfig"]

TOKEN = "kube-test-token-5e3c7a9b"
_ROUTE = re.compile(
    r"^/(?:apis/jobset\.x-k8s\.io/v1alpha2|api/v1)/namespaces/(?P<ns>[^/]+)"
    r"/(?P<plural>jobsets|secrets|pods)(?:/(?P<name>[^/]+))?(?P<log>/log)?$"
)
_KINDS = {"jobsets": "JobSet", "secrets": "Secret", "pods": "Pod"}
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
CONTAINER = "konduktor-container"
_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    415: "UnsupportedMediaType",
    409: "AlreadyExists",
    422: "Invalid",
    500: "InternalError",
}


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # the parsed JSON body, or None


@dataclass(frozen=True)
class Step:
    """One moment of a job's scripted timeline, as the JobSet controller, Kueue, the
    scheduler and the kubelet would show it; :meth:`KubeAPI.play` applies them in turn.

    *phase*: ``Queued`` (Kueue holds the JobSet suspended), ``Pending`` (pods exist,
    not started: *reason* ``Unschedulable`` is the scheduler's, any other a container's
    waiting reason such as ``ErrImagePull``; *message* says why), ``Running``,
    ``Succeeded`` or ``Failed`` (every container ended with *exit_code*, *message* its
    termination message), or ``Deleted`` (someone deleted the JobSet, its pods with it).
    *logs*: lines every pod writes in this step (``{rank}`` is replaced by the pod's
    rank), before its state changes. *after*: seconds to wait first.
    *seen*: hold the state until a client has looked at the job's pods (a follower saw
    it), so that a test does not depend on how fast the client polls.
    """

    phase: str
    reason: str = ""
    message: str = ""
    logs: Sequence[str] = ()
    exit_code: int = 0
    after: float = 0.1
    seen: bool = False


class LogStream:
    """A pod's log as the response body: all of it, or (follow) until the container ends."""

    def __init__(self, api: KubeAPI, key: tuple[str, str, str], follow: bool, tail: int | None):
        self.api, self.key, self.follow, self.tail = api, key, follow, tail

    def __iter__(self) -> Iterator[bytes]:
        api, (_, ns, name) = self.api, self.key
        with api._changed:
            text = bytes(api.logs.get((ns, name), b""))
        sent = len(text)
        if self.tail is not None:
            text = b"".join(text.splitlines(keepends=True)[-self.tail :] if self.tail else [])
        if text:
            yield text
        while self.follow:
            with api._changed:
                data = bytes(api.logs.get((ns, name), b""))[sent:]
                pod = api.objects.get(self.key)
                if not data and pod is not None and not _terminated(pod):
                    api._changed.wait(0.5)
                    continue
            if data:
                sent += len(data)
                yield data
            elif pod is None or _terminated(pod):
                return


def _terminated(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return any("terminated" in (c.get("state") or {}) for c in statuses)


@dataclass
class KubeAPI:
    """The running server: its URL, its objects and the requests it answered."""

    url: str
    token: str = TOKEN
    # (plural, namespace, name) -> object
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    logs: dict[tuple[str, str], bytearray] = field(default_factory=dict)  # (ns, pod) -> log
    created: list[tuple[str, str]] = field(default_factory=list)  # (ns, name) of JobSets
    _failures: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)
    _players: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    @property
    def submitted(self) -> list[Request]:
        """The requests but the look a launch takes at the user's Secrets (a list of the
        namespace's Secrets by their owner label, as upstream Konduktor's launch)."""
        return [r for r in self.requests if not is_secrets_lookup(r)]

    def jobset(
        self, name: str, *, ns: str = "team-a", labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Put a bare JobSet *name* there directly (someone else's, or not konduktor's)."""
        body = {
            "apiVersion": "jobset.x-k8s.io/v1alpha2",
            "kind": "JobSet",
            "metadata": {"name": name, "labels": dict(labels or {}), "annotations": {}},
            "spec": {"replicatedJobs": [{"name": "workers", "template": {"spec": {}}}]},
        }
        with self._changed:
            return self._store("jobsets", ns, name, body)

    def add_pod(self, job: str, rank: int, *, ns: str = "team-a", suffix: str = "x") -> str:
        """The pod of *rank* that the JobSet controller makes for *job* (pending); its name."""
        with self._changed:
            jobset = self.objects[("jobsets", ns, job)]
            template = jobset["spec"]["replicatedJobs"][0]["template"]["spec"].get("template", {})
            labels = dict(template.get("metadata", {}).get("labels", {}))
            labels.update({JOBSET_NAME: job, COMPLETION_INDEX: str(rank)})
            name = f"{job}-workers-0-{rank}-{suffix}{rank:04d}"
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "annotations": {COMPLETION_INDEX: str(rank)},
                },
                "spec": {"containers": [{"name": CONTAINER}]},
                "status": {"phase": "Pending"},
            }
            self._store("pods", ns, name, pod)
            self._changed.notify_all()
        return name

    def set_pod(self, name: str, status: dict[str, Any], *, ns: str = "team-a") -> None:
        with self._changed:
            self.objects[("pods", ns, name)]["status"] = status
            self._changed.notify_all()

    def log(self, pod: str, text: str, *, ns: str = "team-a") -> None:
        """Append *text* to the pod's log (its container writes it)."""
        with self._changed:
            self.logs.setdefault((ns, pod), bytearray()).extend(text.encode())
            self._changed.notify_all()

    def set_jobset(self, name: str, *, ns: str = "team-a", **fields: Any) -> None:
        """Merge *fields* (``status=...``, ``spec=...``) into the JobSet, as its controller."""
        with self._changed:
            _merge(self.objects[("jobsets", ns, name)], fields)
            self._changed.notify_all()

    def play(self, steps: Sequence[Step], *, job: str | None = None, ns: str = "team-a") -> None:
        """Drive *job* (default: the next JobSet created) through *steps* in a thread."""
        start = len(self.created)

        def run() -> None:
            name = job or self._next_created(start, ns)
            if name is None:
                return
            pods: list[str] = []
            for step in steps:
                time.sleep(step.after)
                if ("jobsets", ns, name) not in self.objects:
                    return  # deleted
                if step.phase != "Queued":  # Kueue holds the pods back
                    pods = pods or self._pods_of(name, ns)
                looked = len(self.requests)
                self._apply(name, ns, pods, step)
                if step.seen:
                    self._wait_for_look(looked, name)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._players.append(thread)

    def wait_played(self, timeout: float = 30) -> None:
        for thread in self._players:
            thread.join(timeout)

    def _next_created(self, start: int, ns: str) -> str | None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with self._lock:
                new = [n for space, n in self.created[start:] if space == ns]
            if new:
                return new[0]
            time.sleep(0.02)
        return None

    def _wait_for_look(self, after: int, job: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with self._lock:
                paths = [urllib.parse.unquote(r.path) for r in self.requests[after:]]
            # a look that began after the change: the JobSet read, then its pods listed
            read = next((i for i, p in enumerate(paths) if p.endswith(f"/jobsets/{job}")), None)
            if read is not None and any("/pods?" in p and job in p for p in paths[read:]):
                return
            time.sleep(0.02)

    def _pods_of(self, job: str, ns: str) -> list[str]:
        with self._lock:
            spec = self.objects[("jobsets", ns, job)]["spec"]["replicatedJobs"][0]["template"]
        count = int(spec["spec"].get("parallelism") or 1)
        return [self.add_pod(job, rank, ns=ns) for rank in range(count)]

    def _apply(self, job: str, ns: str, pods: list[str], step: Step) -> None:
        for rank, pod in enumerate(pods):
            for line in step.logs:
                self.log(pod, line.replace("{rank}", str(rank)) + "\n", ns=ns)
        if step.phase == "Deleted":
            with self._changed:
                self.objects.pop(("jobsets", ns, job), None)
                for key in [k for k, o in self.objects.items() if _owned(k, o, ns, job)]:
                    del self.objects[key]
                self._changed.notify_all()
            return
        if step.phase == "Queued":
            conditions = [{"type": "Suspended", "status": "True", "reason": "SuspendedJobs"}]
            self.set_jobset(job, ns=ns, spec={"suspend": True}, status={"conditions": conditions})
            return
        if step.phase == "Pending":
            self.set_jobset(job, ns=ns, spec={"suspend": False}, status={"conditions": []})
        for pod in pods:
            self.set_pod(pod, _pod_status(step), ns=ns)
        if step.phase in ("Succeeded", "Failed"):
            terminal = "Completed" if step.phase == "Succeeded" else "Failed"
            condition = {"type": terminal, "status": "True", "reason": f"AllJobs{terminal}"}
            status = {"terminalState": terminal, "conditions": [condition]}
            self.set_jobset(job, ns=ns, status=status)

    def fail_next(
        self,
        status: int,
        message: str = "",
        *,
        times: int = 1,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next *times* requests with *status* and a Status carrying *message*."""
        message = message or f"injected failure {status}"
        self._failures += [(status, message, details or {})] * times

    def write_kubeconfig(self, directory: Path, *, current: str | None = "team-a") -> Path:
        """A kubeconfig for this server with contexts team-a, team-b (their namespaces) and bare.

        ``bare`` names no namespace. The user authenticates with the server's token.
        """
        contexts = [
            {
                "name": "team-a",
                "context": {"cluster": "kind", "user": "dev", "namespace": "team-a"},
            },
            {
                "name": "team-b",
                "context": {"cluster": "kind", "user": "dev", "namespace": "team-b"},
            },
            {"name": "bare", "context": {"cluster": "kind", "user": "dev"}},
        ]
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kind", "cluster": {"server": self.url}}],
            "users": [{"name": "dev", "user": {"token": self.token}}],
            "contexts": contexts,
        }
        if current is not None:
            config["current-context"] = current
        path = directory / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    def handle(self, request: Request) -> tuple[int, Any]:
        """(status, JSON body) for *request*; records it first."""
        with self._lock:
            self.requests.append(request)
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return _status(401, "Unauthorized")
            if self._failures:
                status, message, details = self._failures.pop(0)
                return _status(status, message, details)
            return self._route(request)

    def _route(self, request: Request) -> tuple[int, Any]:
        match = _ROUTE.match(request.path.split("?")[0])
        if match is None or (match["log"] and match["plural"] != "pods"):
            return _status(404, "the server could not find the requested resource")
        ns, plural, name = match["ns"], match["plural"], match["name"]
        kind = _KINDS[plural]
        if request.method == "POST" and name is None:
            name = request.body["metadata"]["name"]
            if (plural, ns, name) in self.objects:
                return _status(409, f'{plural} "{name}" already exists', {"name": name})
            if plural == "jobsets":
                self.created.append((ns, name))
            return 201, self._store(plural, ns, name, request.body)
        if name is None and request.method == "GET":
            return 200, self._list(plural, ns, request.path)
        if name is None:
            return _status(405, f"{request.method} on a collection is not implemented here")
        stored = self.objects.get((plural, ns, name))
        if stored is None:
            return _status(404, f'{plural} "{name}" not found', {"name": name, "kind": plural})
        if match["log"] and request.method == "GET":
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
            tail = query.get("tailLines")
            follow = query.get("follow") == ["true"]
            return 200, LogStream(self, (plural, ns, name), follow, int(tail[0]) if tail else None)
        if request.method == "GET":
            return 200, stored
        if request.method == "DELETE":
            del self.objects[(plural, ns, name)]
            if plural == "jobsets":  # the garbage collector takes its pods along
                for key in [k for k, o in self.objects.items() if _owned(k, o, ns, name)]:
                    del self.objects[key]
            self._changed.notify_all()
            return 200, _status(200, "deleted")[1]
        if request.method == "PATCH" and kind == "JobSet":
            if request.headers.get("content-type") != "application/merge-patch+json":
                return _status(415, f"{request.headers.get('content-type')} is not served here")
            _merge(stored, request.body)
            stored["metadata"]["resourceVersion"] = str(next(self._versions))
            self._changed.notify_all()
            return 200, stored
        if request.method == "PUT" and kind == "Secret":
            version = request.body["metadata"].get("resourceVersion")
            if version not in (None, stored["metadata"]["resourceVersion"]):
                return _status(409, f'the object has been modified: {plural} "{name}"', {})
            return 200, self._store(plural, ns, name, request.body)
        return _status(405, f"{request.method} {kind} is not implemented here")

    def _list(self, plural: str, ns: str, path: str) -> dict[str, Any]:
        """The objects of a namespace matching a ``labelSelector=k=v[,k=v]`` query."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        selector = query.get("labelSelector", [""])[0]
        terms = [t.strip() for t in re.findall(r"[^,(]+(?:\([^)]*\))?", selector) if t.strip()]
        items = [
            obj
            for (p, n, _), obj in sorted(self.objects.items())
            if p == plural
            and n == ns
            and all(_selects(term, obj["metadata"].get("labels") or {}) for term in terms)
        ]
        return {"kind": _KINDS[plural] + "List", "apiVersion": "v1", "metadata": {}, "items": items}

    def _store(self, plural: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        stored = json.loads(json.dumps(body))
        stored["metadata"].update(namespace=ns, resourceVersion=str(next(self._versions)))
        stored["metadata"].setdefault("creationTimestamp", "2026-11-28T12:00:00Z")
        self.objects[(plural, ns, name)] = stored
        return stored


def is_secrets_lookup(request: Request) -> bool:
    """*request* lists Secrets by Konduktor's owner label."""
    path = urllib.parse.unquote(request.path)
    return request.method == "GET" and "/secrets?" in path and "trainy.ai/secret-owner=" in path


def _selects(term: str, labels: dict[str, str]) -> bool:
    """One term of a label selector: ``k=v`` (or ``k==v``), ``k!=v``, ``k``, ``!k``,
    ``k in (a,b)``."""
    if " in (" in term:
        key, values = term.split(" in (", 1)
        return labels.get(key.strip()) in values.rstrip(")").replace(" ", "").split(",")
    if "!=" in term:
        key, value = term.split("!=", 1)
        return labels.get(key) != value
    if "=" in term:
        key, value = term.replace("==", "=").split("=", 1)
        return labels.get(key) == value
    return term[1:] not in labels if term.startswith("!") else term in labels


def _owned(key: tuple[str, str, str], obj: dict[str, Any], ns: str, job: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return key[0] == "pods" and key[1] == ns and labels.get(JOBSET_NAME) == job


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """A JSON merge patch (RFC 7386): null deletes, objects merge, the rest replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = json.loads(json.dumps(value))


def _pod_status(step: Step) -> dict[str, Any]:
    """A pod's status at *step*, as the kubelet (or the scheduler) reports it."""
    container: dict[str, Any] = {"name": CONTAINER, "ready": step.phase == "Running"}
    status: dict[str, Any] = {"phase": step.phase, "containerStatuses": [container]}
    if step.phase == "Pending" and step.reason == "Unschedulable":
        scheduled = {"type": "PodScheduled", "status": "False"}
        status["conditions"] = [{**scheduled, "reason": step.reason, "message": step.message}]
        del status["containerStatuses"]
    elif step.phase == "Pending":
        waiting = {"reason": step.reason or "ContainerCreating", "message": step.message}
        container["state"] = {"waiting": waiting}
    elif step.phase == "Running":
        container["state"] = {"running": {"startedAt": "2026-11-28T12:00:05Z"}}
    else:
        ended: dict[str, Any] = {"exitCode": step.exit_code, "reason": "Completed"}
        if step.phase == "Failed":
            ended["reason"] = "Error"
        if step.message:
            ended["message"] = step.message
        container["state"] = {"terminated": ended}
    return status


def _status(code: int, message: str, details: dict[str, Any] | None = None) -> tuple[int, Any]:
    reason = _REASONS.get(code, "Unknown")
    if code == 409 and "modified" in message:
        reason = "Conflict"
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def _handler(api: KubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Request(self.command, self.path, headers, body)
            status, answer = api.handle(request)
            if isinstance(answer, LogStream):
                return self._stream(answer)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, log: LogStream) -> None:
            """The log in chunks as it grows (HTTP/1.1 chunked), as the kubelet sends it."""
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for chunk in log:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped following
            self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler


@contextlib.contextmanager
def serve() -> Iterator[KubeAPI]:
    """An API server on a free loopback port, for as long as the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    api = KubeAPI(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(api)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def kube_api() -> Iterator[KubeAPI]:
    """A fresh API server on a free loopback port for one test."""
    with serve() as api:
        yield api


@pytest.fixture
def kubeconfig(kube_api: KubeAPI, tmp_path: Path) -> Path:
    """A kubeconfig for *kube_api*, current context team-a."""
    return kube_api.write_kubeconfig(tmp_path)


@pytest.fixture
def cluster(kubeconfig: Path) -> Iterator[Any]:
    """A konduktor.k8s.submit.Cluster connected to *kube_api* (the real client)."""
    from konduktor.k8s import submit

    connected = submit.connect(kubeconfig)
    yield connected
    connected.api_client.close()
