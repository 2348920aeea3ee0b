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
_RESOURCES = {"JobSet": f"{PLURAL}.{GROUP}", "Secret": "secrets", "Pod": "pods", "log": "pods/log"}
_RBAC_VERBS = {"create": "create", "read": "get", "replace": "update", "list": "list"}
_RBAC_VERBS |= {"patch": "patch", "delete": "delete"}


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
    name = context or _allowed_context() or current
    return name if name in contexts else None


def _allowed_context() -> str | None:
    """``kubernetes.allowed_contexts[0]`` from the config, if set."""
    from konduktor import config

    allowed = config.load().allowed_contexts
    return allowed[0] if allowed else None


def connect(kubeconfig: Path | None = None, context: str | None = None) -> Cluster:
    """A client for *context*, else for the config's ``kubernetes.allowed_contexts[0]``,
    else for the kubeconfig's current context (Konduktor's rule: ``--context`` overrides
    the config).

    The kubeconfig is *kubeconfig*, else ``$KUBECONFIG``, else ``~/.kube/config``;
    the namespace is the context's (``default`` when it names none).
    """
    kubernetes = _kubernetes()
    path = _config_path(kubeconfig)
    try:
        contexts, current = _contexts(path)
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        # Not str(exc): a YAML error quotes the offending line, which may hold a token.
        mark = getattr(exc, "problem_mark", None)
        detail = f"bad YAML at line {mark.line + 1}" if mark else type(exc).__name__
        raise ClusterError(f"cannot read the kubeconfig {path} ({detail}); fix it") from None
    allowed = None if context else _allowed_context()
    name, known = context or allowed or current, ", ".join(sorted(contexts))
    if not contexts:
        raise ClusterError(f"no Kubernetes context in {path}: {_NO_CONTEXT}")
    if name is None:
        raise ClusterError(f"{path} sets no current-context; pass --context (one of: {known})")
    if allowed is not None and name not in contexts:
        from konduktor import config

        raise ClusterError(
            f"kubernetes.allowed_contexts in {config.load().where('kubernetes')} names the "
            f"context {name!r}, which {path} does not have (it has: {known}); fix the "
            "config, or pass --context"
        )
    if name not in contexts:
        raise ClusterError(
            f"no Kubernetes context {name!r} in {path} (it has: {known}); {_NO_CONTEXT}"
        )
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
    name = str(manifest.get("metadata", {}).get("name"))
    args = (GROUP, VERSION, cluster.namespace, PLURAL, manifest)
    return dict(_call(cluster, "create JobSet", name, api.create_namespaced_custom_object, *args))


def get_jobset(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The JobSet *name* in the cluster's namespace, or None when there is none."""
    api = _kubernetes().client.CustomObjectsApi(cluster.api_client)
    args = (GROUP, VERSION, cluster.namespace, PLURAL, name)
    found = _call(cluster, "read JobSet", name, api.get_namespaced_custom_object, *args, allow=404)
    return None if found is None else dict(found)


def apply_secret(
    cluster: Cluster, name: str, data: Mapping[str, bytes], labels: Mapping[str, str] | None = None
) -> str:
    """Create the Opaque Secret *name*, or replace the one there; "created" or "replaced"."""
    core, ns = _kubernetes().client.CoreV1Api(cluster.api_client), cluster.namespace
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }
    if _call(cluster, "create Secret", name, core.create_namespaced_secret, ns, body, allow=409):
        return "created"
    existing = _call(cluster, "read Secret", name, core.read_namespaced_secret, name, ns)
    body["metadata"]["resourceVersion"] = existing.metadata.resource_version
    _call(cluster, "replace Secret", name, core.replace_namespaced_secret, name, ns, body)
    return "replaced"


def list_secrets(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    """The Secrets matching the label *selector*: name, labels, creation time and the names
    of the keys (never their values)."""
    core = _kubernetes().client.CoreV1Api(cluster.api_client)
    found = _call(
        cluster,
        "list Secrets",
        selector,
        core.list_namespaced_secret,
        cluster.namespace,
        label_selector=selector,
    )
    return [
        {
            "name": item.metadata.name,
            "labels": dict(item.metadata.labels or {}),
            "created": item.metadata.creation_timestamp,
            "keys": sorted(item.data or {}),
        }
        for item in found.items
    ]


def delete_secret(cluster: Cluster, name: str) -> bool:
    """Delete the Secret *name*; False when there was none."""
    core = _kubernetes().client.CoreV1Api(cluster.api_client)
    done = _call(
        cluster,
        "delete Secret",
        name,
        core.delete_namespaced_secret,
        name,
        cluster.namespace,
        allow=404,
    )
    return done is not None


def _call(
    cluster: Cluster,
    step: str,
    name: str,
    fn: Callable[..., Any],
    *args: Any,
    allow: int = 0,
    **kwargs: Any,
) -> Any:
    """``fn(*args, **kwargs)``; None when the API answers *allow*, other failures ClusterError."""
    import urllib3

    try:
        return fn(*args, **kwargs, _request_timeout=TIMEOUT)
    except _kubernetes().client.ApiException as exc:
        if exc.status == allow:
            return None
        if not exc.status:  # the client's wrapping of TLS failures
            raise _unreachable(cluster, step, name, exc.reason) from None
        raise _api_error(cluster, step, name, exc.status, exc.reason, exc.body) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _unreachable(cluster, step, name, getattr(exc, "reason", None) or exc) from None


def _unreachable(cluster: Cluster, step: str, name: str, reason: object) -> ClusterError:
    return ClusterError(
        f"cannot reach the Kubernetes API at {cluster.server} (context {cluster.context}) to "
        f"{step} {name}: {' '.join(str(reason).split())}; check your network or VPN and the "
        "server address and certificates in the kubeconfig"
    )


def _api_error(
    cluster: Cluster, step: str, name: str, status: int, reason: str, body: str | None
) -> ClusterError:
    verb, kind = step.split()
    message, details = _status(body)
    ns, where = cluster.namespace, f"{cluster.server} (context {cluster.context})"
    failed = f"cannot {step} {name} in namespace {ns} on {where}"
    if status == 401:
        fix = "the credentials were rejected (401); log in again or refresh the kubeconfig"
    elif status == 403:
        resource = _RESOURCES[kind.removesuffix("s")]  # "list JobSets": the kind JobSet
        return ClusterError(
            f"not allowed to {verb} {resource} in namespace {ns} on {where}: ask your cluster "
            f"admin for the RBAC verb {_RBAC_VERBS[verb]!r} on {resource} in {ns}"
        )
    elif status == 404 and details.get("kind") == "namespaces":
        fix = f"namespace {ns} does not exist; create it or set the context's namespace"
    elif status == 404 and step in ("create JobSet", "list JobSets"):
        return ClusterError(
            f"the JobSet CRD is not installed on {where}: install JobSet "
            "(https://jobset.sigs.k8s.io) or pick a cluster that has it with --context"
        )
    elif status == 409 and verb == "create":
        return ClusterError(
            f"a {kind} named {name} already exists in namespace {ns} on {where}; delete it "
            f"(kubectl delete {kind.lower()} {name} -n {ns}) or launch again for a new name"
        )
    elif status == 422:
        fix = f"the API rejected it as invalid: {message}; fix the task or report a konduktor bug"
    else:
        fix = f"HTTP {status} {reason}: {message}; retry, and if it persists check the cluster"
    return ClusterError(f"{failed}: {fix}")


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
