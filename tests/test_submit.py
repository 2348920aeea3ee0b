"""Submission: the real kubernetes client against a small local API server (kube_server.py)."""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_server import TOKEN, KubeAPI

from konduktor.errors import ClusterError, KonduktorError
from konduktor.k8s import jobset, submit
from konduktor.task import load

JOBSETS = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/{ns}/jobsets"
SECRETS = "/api/v1/namespaces/{ns}/secrets"
SECRET_DATA = {"credentials": b"aws_secret_access_key = TOPSECRET\n", "blob": bytes(range(256))}


@pytest.fixture(autouse=True)
def no_kubeconfig_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)


@pytest.fixture
def manifest(tmp_path: Path) -> dict[str, Any]:
    task = tmp_path / "task.yaml"
    task.write_text(
        "name: train\nnum_nodes: 2\n"
        "resources:\n  cpus: 4\n  accelerators: H100:8\n  image_id: nvcr.io/pt:24\n"
        "envs:\n  LR: 0.1\nrun: python train.py\n"
    )
    return jobset.render(
        load(task),
        name="train-1a2b",
        command="echo start",
        secret_names=["konduktor-creds"],
        provenance={"git-commit": "0" * 40, "git-dirty": "false"},
    )


def test_create_jobset_posts_the_manifest_to_the_contexts_namespace(
    kube_api: KubeAPI, cluster: submit.Cluster, manifest: dict[str, Any]
) -> None:
    assert (cluster.context, cluster.namespace, cluster.server) == (
        "team-a",
        "team-a",
        kube_api.url,
    )
    assert TOKEN not in repr(cluster)

    created = submit.create_jobset(cluster, manifest)

    assert created["metadata"]["name"] == "train-1a2b"
    assert created["metadata"]["namespace"] == "team-a"
    (request,) = kube_api.requests
    assert (request.method, request.path) == ("POST", JOBSETS.format(ns="team-a"))
    assert request.body == manifest
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_get_jobset_reads_it_back_and_none_when_missing(
    cluster: submit.Cluster, manifest: dict[str, Any]
) -> None:
    submit.create_jobset(cluster, manifest)
    found = submit.get_jobset(cluster, "train-1a2b")
    assert found is not None
    assert found["spec"] == manifest["spec"]
    assert submit.get_jobset(cluster, "train-ffff") is None


@pytest.mark.parametrize(("context", "namespace"), [("team-b", "team-b"), ("bare", "default")])
def test_the_context_option_picks_its_namespace(
    kube_api: KubeAPI, kubeconfig: Path, manifest: dict[str, Any], context: str, namespace: str
) -> None:
    cluster = submit.connect(kubeconfig, context=context)
    submit.create_jobset(cluster, manifest)
    cluster.api_client.close()
    assert (cluster.context, cluster.namespace) == (context, namespace)
    assert kube_api.requests[-1].path == JOBSETS.format(ns=namespace)
    assert ("jobsets", namespace, "train-1a2b") in kube_api.objects


def test_kubeconfig_comes_from_the_environment(
    kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'absent'}:{kubeconfig}")
    assert submit.current_context() == "team-a"
    assert submit.current_context(context="team-b") == "team-b"
    assert submit.current_context(context="prod") is None
    cluster = submit.connect(context="team-b")
    cluster.api_client.close()
    assert cluster.namespace == "team-b"


def test_without_a_kubeconfig_there_is_no_context(tmp_path: Path) -> None:
    assert not (Path.home() / ".kube" / "config").exists()
    assert submit.current_context() is None
    assert submit.current_context(tmp_path / "absent") is None
    with pytest.raises(ClusterError) as info:
        submit.connect()
    assert "no Kubernetes context" in str(info.value)
    assert "set KUBECONFIG or pass --kubeconfig" in str(info.value)
    assert "--local" in str(info.value)


def test_an_unknown_context_lists_the_known_ones(kubeconfig: Path) -> None:
    with pytest.raises(ClusterError, match=r"'prod'.*bare, team-a, team-b"):
        submit.connect(kubeconfig, context="prod")


def test_a_broken_kubeconfig_is_named_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(f"current-context: a\nusers:\n- name: dev\n  user: {{token: {TOKEN}\n")
    assert submit.current_context(path) is None
    with pytest.raises(ClusterError) as info:
        submit.connect(path)
    _assert_one_safe_line(str(info.value), [f"cannot read the kubeconfig {path}", "line"], "")


def test_a_context_with_a_missing_cluster(kubeconfig: Path) -> None:
    config = yaml.safe_load(kubeconfig.read_text())
    config["contexts"].append({"name": "old", "context": {"cluster": "gone", "user": "dev"}})
    kubeconfig.write_text(yaml.safe_dump(config))
    with pytest.raises(ClusterError) as info:
        submit.connect(kubeconfig, context="old")
    expected = ["cannot use Kubernetes context 'old'", "gone", "kubectl config view"]
    _assert_one_safe_line(str(info.value), expected, str(kubeconfig))


def test_no_current_context_needs_the_context_option(kube_api: KubeAPI, tmp_path: Path) -> None:
    path = kube_api.write_kubeconfig(tmp_path, current=None)
    assert submit.current_context(path) is None
    assert submit.current_context(path, context="team-b") == "team-b"
    with pytest.raises(ClusterError, match="sets no current-context; pass --context"):
        submit.connect(path)


def allow_contexts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *names: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"kubernetes": {"allowed_contexts": list(names)}}))
    monkeypatch.setenv("KONDUKTOR_CONFIG", str(path))
    return path


def test_allowed_contexts_picks_the_context_unless_context_is_given(
    kube_api: KubeAPI, kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Konduktor's rule: kubernetes.allowed_contexts[0] instead of the kubeconfig's current
    context; --context overrides it."""
    allow_contexts(monkeypatch, tmp_path, "team-b")
    assert submit.current_context(kubeconfig) == "team-b"
    cluster = submit.connect(kubeconfig)
    cluster.api_client.close()
    assert (cluster.context, cluster.namespace) == ("team-b", "team-b")
    assert submit.current_context(kubeconfig, context="bare") == "bare"
    cluster = submit.connect(kubeconfig, context="bare")
    cluster.api_client.close()
    assert cluster.context == "bare"


def test_an_allowed_context_the_kubeconfig_lacks_names_the_config(
    kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = allow_contexts(monkeypatch, tmp_path, "prod")
    assert submit.current_context(kubeconfig) is None
    with pytest.raises(ClusterError) as info:
        submit.connect(kubeconfig)
    assert str(info.value) == (
        f"kubernetes.allowed_contexts in {config} names the context 'prod', which "
        f"{kubeconfig} does not have (it has: bare, team-a, team-b); fix the config, or "
        "pass --context"
    )


def test_two_allowed_contexts_are_ignored_as_konduktor_does(
    kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow_contexts(monkeypatch, tmp_path, "team-b", "bare")
    assert submit.current_context(kubeconfig) == "team-a"


def test_apply_secret_creates_then_replaces(kube_api: KubeAPI, cluster: submit.Cluster) -> None:
    labels = {"konduktor.dev/job": "train-1a2b"}
    assert submit.apply_secret(cluster, "creds", SECRET_DATA, labels) == "created"
    first = kube_api.objects[("secrets", "team-a", "creds")]
    assert first["type"] == "Opaque"
    assert first["metadata"]["labels"] == labels
    assert {k: base64.b64decode(v) for k, v in first["data"].items()} == SECRET_DATA

    assert submit.apply_secret(cluster, "creds", {"credentials": b"new"}) == "replaced"
    calls = [(r.method, r.path) for r in kube_api.requests]
    assert calls == [
        ("POST", SECRETS.format(ns="team-a")),
        ("POST", SECRETS.format(ns="team-a")),
        ("GET", SECRETS.format(ns="team-a") + "/creds"),
        ("PUT", SECRETS.format(ns="team-a") + "/creds"),
    ]
    assert (
        kube_api.requests[-1].body["metadata"]["resourceVersion"]
        == first["metadata"]["resourceVersion"]
    )
    stored = kube_api.objects[("secrets", "team-a", "creds")]
    assert base64.b64decode(stored["data"]["credentials"]) == b"new"
    assert set(stored["data"]) == {"credentials"}


def _create(cluster: submit.Cluster, manifest: dict[str, Any]) -> None:
    submit.create_jobset(cluster, manifest)


def _secret(cluster: submit.Cluster, manifest: dict[str, Any]) -> None:
    submit.apply_secret(cluster, "creds", SECRET_DATA)


def _create_twice(cluster: submit.Cluster, manifest: dict[str, Any]) -> None:
    submit.create_jobset(cluster, manifest)
    submit.create_jobset(cluster, manifest)


Action = Callable[[submit.Cluster, dict[str, Any]], None]
NOT_FOUND_NAMESPACE = {"name": "team-a", "kind": "namespaces"}


@pytest.mark.parametrize(
    ("status", "message", "details", "action", "expected"),
    [
        (
            403,
            'jobsets.jobset.x-k8s.io is forbidden: User "dev" cannot create',
            None,
            _create,
            [
                "not allowed to create jobsets.jobset.x-k8s.io in namespace team-a",
                "ask your cluster admin",
                "'create'",
            ],
        ),
        (
            403,
            "forbidden",
            None,
            _secret,
            ["not allowed to create secrets in namespace team-a", "ask your cluster admin"],
        ),
        (
            404,
            "the server could not find the requested resource",
            None,
            _create,
            ["the JobSet CRD is not installed on", "install JobSet (https://jobset.sigs.k8s.io)"],
        ),
        (
            404,
            'namespaces "team-a" not found',
            NOT_FOUND_NAMESPACE,
            _create,
            ["namespace team-a does not exist", "create it"],
        ),
        (
            422,
            'JobSet.jobset.x-k8s.io "train-1a2b" is invalid:\n spec.replicatedJobs[0].replicas: '
            "Invalid value: -1",
            None,
            _create,
            ["cannot create JobSet train-1a2b", "spec.replicatedJobs[0].replicas: Invalid value"],
        ),
        (
            500,
            "etcdserver: request timed out",
            None,
            _secret,
            ["cannot create Secret creds", "HTTP 500", "etcdserver: request timed out"],
        ),
        (
            None,
            "",
            None,
            _create_twice,
            ["a JobSet named train-1a2b already exists in namespace team-a", "kubectl delete"],
        ),
    ],
)
def test_api_errors_are_one_line_with_what_to_do(
    kube_api: KubeAPI,
    cluster: submit.Cluster,
    manifest: dict[str, Any],
    status: int | None,
    message: str,
    details: dict[str, Any] | None,
    action: Action,
    expected: list[str],
) -> None:
    if status is not None:
        kube_api.fail_next(status, message, details=details)
    with pytest.raises(ClusterError) as info:
        action(cluster, manifest)
    _assert_one_safe_line(str(info.value), expected, kube_api.url)
    assert "(context team-a)" in str(info.value)


def test_rejected_credentials(kube_api: KubeAPI, cluster: submit.Cluster) -> None:
    kube_api.token = "rotated"
    with pytest.raises(ClusterError) as info:
        submit.get_jobset(cluster, "train-1a2b")
    _assert_one_safe_line(str(info.value), ["credentials were rejected", "log in again"], "")
    assert len(kube_api.requests) == 1


@pytest.fixture
def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_connection_refused(dead_url: str, tmp_path: Path, manifest: dict[str, Any]) -> None:
    cluster = submit.connect(KubeAPI(url=dead_url).write_kubeconfig(tmp_path))
    with pytest.raises(ClusterError) as info:
        submit.create_jobset(cluster, manifest)
    expected = [f"cannot reach the Kubernetes API at {dead_url}", "Connection refused"]
    _assert_one_safe_line(str(info.value), expected, dead_url)


def test_tls_failure(kube_api: KubeAPI, tmp_path: Path, manifest: dict[str, Any]) -> None:
    https = kube_api.url.replace("http://", "https://")  # TLS to a plain-HTTP server
    cluster = submit.connect(KubeAPI(url=https).write_kubeconfig(tmp_path))
    with pytest.raises(ClusterError) as info:
        submit.create_jobset(cluster, manifest)
    _assert_one_safe_line(str(info.value), ["cannot reach the Kubernetes API", "SSL"], https)


def test_timeout(tmp_path: Path, manifest: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submit, "TIMEOUT", (2.0, 0.2))
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cluster = submit.connect(KubeAPI(url=url).write_kubeconfig(tmp_path))
        with pytest.raises(ClusterError) as info:
            submit.apply_secret(cluster, "creds", SECRET_DATA)
    _assert_one_safe_line(str(info.value), ["cannot reach the Kubernetes API", "timed out"], url)


def test_cluster_errors_are_konduktor_errors() -> None:
    assert issubclass(ClusterError, KonduktorError)


def _assert_one_safe_line(message: str, expected: list[str], server: str) -> None:
    assert "\n" not in message
    for part in [*expected, server]:
        assert part in message
    assert TOKEN not in message
    assert "TOPSECRET" not in message
    assert base64.b64encode(SECRET_DATA["credentials"]).decode() not in message
