"""Submission to a Kubernetes cluster through the official client (``konduktor[k8s]``).

Every API or connection failure becomes one :class:`ClusterError` line naming the
step, the server, context and namespace, and what to do. Messages never carry
tokens, certificates or Secret data: they are built from the status code and the
API's own ``Status.message`` only, never from the client's exception text.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from konduktor.errors import ClusterError

GROUP, VERSION, PLURAL = "jobset.x-k8s.io", "v1alpha2", "jobsets"
TIMEOUT = (10.0, 60.0)  # (connect, read) seconds: the client has no timeout by default
_NO_CONTEXT = "set KUBECONFIG or pass --kubeconfig; to try without a cluster use --local"
_RESOURCES = {"JobSet": f"{PLURAL}.{GROUP}", "Secret": "secrets"}
_RBAC_VERBS = {"create": "create", "read": "get", "replace": "update"}


@dataclass(frozen=True)
class Cluster:
    """A kubeconfig context, resolved: where submissions go and the client that sends them."""

    context: str
    namespace: str
    server: str
    api_client: Any = field(repr=False)


def _kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise ClusterError(
            "submitting to Kubernetes needs the kubernetes package; "
            "run pip install 'konduktor[k8s]'"
        ) from None
    return kubernetes


def _config_path(kubeconfig: Path | None) -> str:
    if kubeconfig is not None:
        return str(kubeconfig)
    return os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")


def _contexts(path: str) -> tuple[dict[str, Any], str | None]:
    """Contexts by name and the current one, merged like kubectl (the first file wins)."""
    contexts: dict[str, Any] = {}
    current = None
    for part in filter(None, path.split(os.pathsep)):
        file = Path(part).expanduser()
        doc = yaml.safe_load(file.read_text()) if file.is_file() else None
        if not isinstance(doc, dict):
            continue
        for item in doc.get("contexts") or []:
            contexts.setdefault(str(item.get("name")), item.get("context") or {})
        current = current or doc.get("current-context") or None
    return contexts, current


def current_context(kubeconfig: Path | None = None, context: str | None = None) -> str | None:
    """The context that :func:`connect` would use, or None without a usable kubeconfig."""
    try:
        contexts, current = _contexts(_config_path(kubeconfig))
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    name = context or current
    return name if name in contexts else None


def connect(kubeconfig: Path | None = None, context: str | None = None) -> Cluster:
    """A client for *context* (default: the current one) of the kubeconfig.

    The kubeconfig is *kubeconfig*, else ``$KUBECONFIG``, else ``~/.kube/config``;
    the namespace is the context's (``default`` when it names none).
    """
    kubernetes = _kubernetes()
    path = _config_path(kubeconfig)
    try:
        contexts, current = _contexts(path)
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ClusterError(f"cannot read the kubeconfig {path}: {exc}; fix or replace it") from None
    name = context or current
    if not contexts or name is None:
        raise ClusterError(f"no Kubernetes context in {path}: {_NO_CONTEXT}")
    if name not in contexts:
        known = ", ".join(sorted(contexts))
        raise ClusterError(f"no Kubernetes context {name!r} in {path} (it has: {known}); {_NO_CONTEXT}")
    try:
        api = kubernetes.config.new_client_from_config(
            config_file=path, context=name, persist_config=False
        )
    except (kubernetes.config.ConfigException, OSError, KeyError, ValueError) as exc:
        # The client's messages can embed whole kubeconfig entries, tokens included.
        detail = re.sub(r"\{.*\}", "{...}", " ".join(str(exc).split()))
        raise ClusterError(
            f"cannot use Kubernetes context {name!r} from {path}: {detail}; "
            "check it with kubectl config view"
        ) from None
    namespace = contexts[name].get("namespace") or "default"
    return Cluster(name, namespace, api.configuration.host, api)


def create_jobset(cluster: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create *manifest* in the cluster's namespace; the created object as the API returns it."""
    api = _kubernetes().client.CustomObjectsApi(cluster.api_client)
    name = str(manifest.get("metadata", {}).get("name", "?"))
    created = _call(
        cluster, "create", "JobSet", name, api.create_namespaced_custom_object,
        GROUP, VERSION, cluster.namespace, PLURAL, manifest,
    )  # fmt: skip
    return dict(created)


def get_jobset(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The JobSet *name* in the cluster's namespace, or None when there is none."""
    api = _kubernetes().client.CustomObjectsApi(cluster.api_client)
    get = api.get_namespaced_custom_object
    try:
        found = _call(cluster, "read", "JobSet", name, get, GROUP, VERSION, cluster.namespace, PLURAL, name)
    except _NotFound:
        return None
    return dict(found)


def apply_secret(
    cluster: Cluster, name: str, data: Mapping[str, bytes], labels: Mapping[str, str] | None = None
) -> str:
    """Create the Opaque Secret *name*, or replace the one there; "created" or "replaced"."""
    core = _kubernetes().client.CoreV1Api(cluster.api_client)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }
    ns = cluster.namespace
    try:
        _call(cluster, "create", "Secret", name, core.create_namespaced_secret, ns, body)
        return "created"
    except _AlreadyExists:
        pass
    existing = _call(cluster, "read", "Secret", name, core.read_namespaced_secret, name, ns)
    body["metadata"]["resourceVersion"] = existing.metadata.resource_version
    _call(cluster, "replace", "Secret", name, core.replace_namespaced_secret, name, ns, body)
    return "replaced"


class _NotFound(ClusterError):
    pass


class _AlreadyExists(ClusterError):
    pass


def _call(cluster: Cluster, verb: str, kind: str, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, with every failure raised as one ClusterError line."""
    import urllib3

    kubernetes = _kubernetes()
    try:
        return fn(*args, _request_timeout=TIMEOUT)
    except kubernetes.client.ApiException as exc:
        raise _api_error(cluster, verb, kind, name, exc) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ClusterError(
            f"cannot reach the Kubernetes API at {cluster.server} (context {cluster.context}) "
            f"to {verb} {kind} {name}: {reason}; check your network or VPN and the server "
            "address in the kubeconfig"
        ) from None


def _api_error(cluster: Cluster, verb: str, kind: str, name: str, exc: Any) -> ClusterError:
    status, (message, details) = exc.status, _status(exc.body)
    ns, where = cluster.namespace, f"{cluster.server} (context {cluster.context})"
    step = f"cannot {verb} {kind} {name} in namespace {ns} on {where}"
    resource = _RESOURCES[kind]
    if status == 401:
        return ClusterError(f"{step}: the credentials were rejected (401); log in again or refresh the kubeconfig")
    if status == 403:
        return ClusterError(
            f"not allowed to {verb} {resource} in namespace {ns} on {where}: ask your cluster "
            f"admin for the RBAC verb {_RBAC_VERBS[verb]!r} on {resource} in {ns}"
        )
    if status == 404 and details.get("kind") == "namespaces":
        return ClusterError(f"{step}: namespace {ns} does not exist; create it or set the context's namespace")
    if status == 404 and kind == "JobSet" and verb == "create":
        return ClusterError(
            f"the JobSet CRD is not installed on {where}: install JobSet "
            "(https://jobset.sigs.k8s.io) or pick a cluster that has it with --context"
        )
    if status == 404:
        return _NotFound(f"{step}: not found ({message})")
    if status == 409 and verb == "create":
        return _AlreadyExists(
            f"a {kind} named {name} already exists in namespace {ns} on {where}; "
            f"delete it (kubectl delete {kind.lower()} {name} -n {ns}) or launch with another name"
        )
    if status == 422:
        return ClusterError(f"{step}: the API rejected it as invalid: {message}; fix the task or report a konduktor bug")
    return ClusterError(f"{step}: HTTP {status} {exc.reason}: {message}; retry, and if it persists check the cluster")


def _status(body: Any) -> tuple[str, dict[str, Any]]:
    """The message and details of a Kubernetes ``Status`` body, on one line."""
    try:
        status = json.loads(body)
    except (TypeError, ValueError):
        status = {"message": body}
    if not isinstance(status, dict):
        status = {}
    message = " ".join(str(status.get("message") or "no message").split())[:500]
    details = status.get("details")
    return message, details if isinstance(details, dict) else {}
