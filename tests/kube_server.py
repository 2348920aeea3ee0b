"""A small Kubernetes API server for tests: the few endpoints konduktor calls, over real HTTP.

It speaks JSON like the real API server: objects live in memory, a create of an
existing name answers 409 and a missing one 404, errors carry a ``Status``
object, and every request needs the bearer token (401 otherwise). It records
every request for assertions, and ``fail_next`` makes the next request(s) fail
with a chosen status (403 for RBAC, 404 for a missing CRD, 500, ...).

    POST/GET  /apis/jobset.x-k8s.io/v1alpha2/namespaces/{ns}/jobsets[/{name}]
    POST      /api/v1/namespaces/{ns}/secrets
    GET/PUT   /api/v1/namespaces/{ns}/secrets/{name}
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = ["TOKEN", "KubeAPI", "Request", "kube_api"]

TOKEN = "kube-test-token-5e3c7a9b"
_ROUTE = re.compile(
    r"^/(?:apis/jobset\.x-k8s\.io/v1alpha2|api/v1)/namespaces/(?P<ns>[^/]+)"
    r"/(?P<plural>jobsets|secrets)(?:/(?P<name>[^/]+))?$"
)
_KINDS = {"jobsets": "JobSet", "secrets": "Secret"}
_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
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


@dataclass
class KubeAPI:
    """The running server: its URL, its objects and the requests it answered."""

    url: str
    token: str = TOKEN
    # (plural, namespace, name) -> object
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _failures: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

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

    def handle(self, request: Request) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for *request*; records it first."""
        with self._lock:
            self.requests.append(request)
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return _status(401, "Unauthorized")
            if self._failures:
                status, message, details = self._failures.pop(0)
                return _status(status, message, details)
            return self._route(request)

    def _route(self, request: Request) -> tuple[int, dict[str, Any]]:
        match = _ROUTE.match(request.path.split("?")[0])
        if match is None:
            return _status(404, "the server could not find the requested resource")
        ns, plural, name = match["ns"], match["plural"], match["name"]
        kind = _KINDS[plural]
        if request.method == "POST" and name is None:
            name = request.body["metadata"]["name"]
            if (plural, ns, name) in self.objects:
                return _status(409, f'{plural} "{name}" already exists', {"name": name})
            return 201, self._store(plural, ns, name, request.body)
        if name is None and request.method == "GET":
            return 200, self._list(plural, ns, request.path)
        if name is None:
            return _status(405, f"{request.method} on a collection is not implemented here")
        stored = self.objects.get((plural, ns, name))
        if stored is None:
            return _status(404, f'{plural} "{name}" not found', {"name": name, "kind": plural})
        if request.method == "GET":
            return 200, stored
        if request.method == "DELETE":
            del self.objects[(plural, ns, name)]
            return 200, _status(200, "deleted")[1]
        if request.method == "PUT" and kind == "Secret":
            version = request.body["metadata"].get("resourceVersion")
            if version not in (None, stored["metadata"]["resourceVersion"]):
                return _status(409, f'the object has been modified: {plural} "{name}"', {})
            return 200, self._store(plural, ns, name, request.body)
        return _status(405, f"{request.method} {kind} is not implemented here")

    def _list(self, plural: str, ns: str, path: str) -> dict[str, Any]:
        """The objects of a namespace matching a ``labelSelector=k=v[,k=v]`` query."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        wanted = dict(
            term.split("=", 1) for term in query.get("labelSelector", [""])[0].split(",") if term
        )
        items = [
            obj
            for (p, n, _), obj in sorted(self.objects.items())
            if p == plural
            and n == ns
            and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        return {"kind": _KINDS[plural] + "List", "apiVersion": "v1", "metadata": {}, "items": items}

    def _store(self, plural: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        stored = json.loads(json.dumps(body))
        stored["metadata"].update(namespace=ns, resourceVersion=str(next(self._versions)))
        stored["metadata"].setdefault("creationTimestamp", "2026-11-28T12:00:00Z")
        self.objects[(plural, ns, name)] = stored
        return stored


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
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

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
