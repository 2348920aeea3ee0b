"""`konduktor secret create|list|delete` against the local Kubernetes API server, Secrets
named and labelled as Konduktor makes them, and the pod fragment that hands them to pods."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from kube_server import KubeAPI
from test_cli import run
from test_jobset import K8S_VERSION

from konduktor.k8s import secrets, submit

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-material\n-----END OPENSSH PRIVATE KEY-----\n"
HASH = "0badcafe"  # the user hash (Konduktor's KONDUKTOR_USER_ID)


@pytest.fixture(autouse=True)
def user_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONDUKTOR_USER_ID", HASH)


def konduktor_secret(
    kube_api: KubeAPI, basename: str, kind: str, data: dict[str, bytes], owner: str = HASH
) -> str:
    """A Secret as Konduktor's own `konduktor secret create` stores it."""
    name = f"{basename}-{owner}"
    labels = {
        "parent": "konduktor",
        "trainy.ai/secret-owner": owner,
        "trainy.ai/secret-basename": basename,
        "trainy.ai/secret-kind": kind,
    }
    kube_api.objects[("secrets", "team-a", name)] = {
        "metadata": {"name": name, "labels": labels, "resourceVersion": "1"},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    return name


def stored(kube_api: KubeAPI, name: str) -> tuple[dict[str, str], dict[str, bytes]]:
    obj = kube_api.objects[("secrets", "team-a", name)]
    data = {k: base64.b64decode(v) for k, v in obj["data"].items()}
    return obj["metadata"]["labels"], data


def test_create_list_delete(tmp_path: Path, kube_api: KubeAPI, kubeconfig: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text(KEY)
    args = ("--kubeconfig", kubeconfig)
    code, out, err = run(
        "secret", "create", "--kind", "git-ssh", "repo-key", "--from-file", key, *args
    )
    assert code == 0, err
    assert out == (
        f"created Secret repo-key (repo-key-{HASH}) in namespace team-a; launch --mode git "
        "uses it\n"
    )
    labels, data = stored(kube_api, f"repo-key-{HASH}")
    assert data == {"gitkey": KEY.encode()}  # Konduktor's key name
    assert labels == {
        "parent": "konduktor",
        "trainy.ai/secret-owner": HASH,
        "trainy.ai/secret-basename": "repo-key",
        "trainy.ai/secret-kind": "git-ssh",
    }
    code, out, _ = run("secret", "list", *args)
    assert code == 0
    assert out.split()[:3] == ["repo-key", "git-ssh", "gitkey"]
    assert "key-material" not in out
    code, out, _ = run("secret", "delete", "repo-key", *args)
    assert (code, out) == (0, f"deleted Secret repo-key-{HASH}\n")
    assert kube_api.objects == {}
    code, out, _ = run("secret", "list", *args)
    assert out == ""
    assert all("key-material" not in str(r.headers) for r in kube_api.requests)


def test_env_default_and_directory_secrets(
    tmp_path: Path, kube_api: KubeAPI, kubeconfig: Path
) -> None:
    args = ("--kubeconfig", kubeconfig)
    code, out, err = run(
        "secret", "create", "hf", "--kind", "env", "--inline", "HF_TOKEN=hf_x=y", *args
    )
    assert code == 0, err
    assert "every launched pod gets HF_TOKEN from it" in out
    assert stored(kube_api, f"hf-{HASH}") == (
        {
            "parent": "konduktor",
            "trainy.ai/secret-owner": HASH,
            "trainy.ai/secret-basename": "hf",
            "trainy.ai/secret-kind": "env",
        },
        {"HF_TOKEN": b"hf_x=y"},
    )
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine x\n")
    code, out, err = run("secret", "create", "netrc", "--from-file", netrc, *args)
    assert code == 0, err  # --kind default is the default, as in Konduktor
    assert "/konduktor/default-secrets/netrc" in out
    assert stored(kube_api, f"netrc-{HASH}")[1] == {".netrc": b"machine x\n"}
    tree = tmp_path / "creds"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.json").write_text("{}")
    (tree / "sub" / "b").write_text("b")
    code, _, err = run("secret", "create", "creds", "--from-directory", tree, *args)
    assert code == 0, err
    labels, data = stored(kube_api, f"creds-{HASH}")
    assert labels["trainy.ai/secret-kind"] == "default"
    with zipfile.ZipFile(io.BytesIO(data["payload.zip"])) as archive:
        assert sorted(archive.namelist()) == ["creds/a.json", "creds/sub/b"]  # Konduktor's layout
        assert archive.read("creds/sub/b") == b"b"
    code, out, _ = run("secret", "list", *args)
    rows = sorted(line.split()[:3] for line in out.splitlines())
    assert rows == [
        ["creds", "default", "payload.zip"],
        ["hf", "env", "HF_TOKEN"],
        ["netrc", "default", ".netrc"],
    ]
    assert "hf_x" not in out


def test_a_second_git_ssh_secret_replaces_the_first_as_in_konduktor(
    tmp_path: Path, kube_api: KubeAPI, kubeconfig: Path
) -> None:
    konduktor_secret(kube_api, "old-key", "git-ssh", {"gitkey": KEY.encode()})
    key = tmp_path / "key"
    key.write_text(KEY)
    code, out, err = run(
        "secret", "create", "new-key", "--kind", "git-ssh", "--from-file", key,
        "--kubeconfig", kubeconfig,
    )  # fmt: skip
    assert code == 0, err
    assert "it replaces the git-ssh Secret old-key" in out
    assert [name for _, _, name in kube_api.objects] == [f"new-key-{HASH}"]


def test_both_tools_see_each_others_secrets(kube_api: KubeAPI, kubeconfig: Path) -> None:
    konduktor_secret(kube_api, "wandb", "env", {"WANDB_API_KEY": b"w"})
    konduktor_secret(kube_api, "theirs", "env", {"X": b"x"}, owner="12345678")
    code, out, _ = run("secret", "list", "--kubeconfig", kubeconfig)
    assert out.split()[:3] == ["wandb", "env", "WANDB_API_KEY"]
    assert "theirs" not in out  # another user's
    code, out, _ = run("secret", "delete", "wandb", "--kubeconfig", kubeconfig)
    assert code == 0
    assert [name for _, _, name in kube_api.objects] == ["theirs-12345678"]


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("Bad_Name", KEY, ["not a valid Secret name"]),
        ("a" * 49, KEY, ["at most 48 characters"]),
        ("ok-name", "not a key\n", ["not a private key file"]),
        ("ok-name", None, ["cannot read it"]),
    ],
)
def test_bad_create_input(
    tmp_path: Path,
    kube_api: KubeAPI,
    kubeconfig: Path,
    name: str,
    content: str | None,
    words: list[str],
) -> None:
    key = tmp_path / "key"
    if content is not None:
        key.write_text(content)
    code, _, err = run(
        "secret",
        "create",
        "--kind",
        "git-ssh",
        name,
        "--from-file",
        key,
        "--kubeconfig",
        kubeconfig,
    )
    assert code == 2  # a bad argument: a usage error
    assert len(err.splitlines()) == 1
    for word in words:
        assert word in err
    assert [r.method for r in kube_api.requests] == []


def test_delete_refuses_secrets_konduktor_did_not_make(kube_api: KubeAPI, kubeconfig: Path) -> None:
    kube_api.objects[("secrets", "team-a", "theirs")] = {
        "metadata": {"name": "theirs", "labels": {}}
    }
    code, _, err = run("secret", "delete", "theirs", "--kubeconfig", kubeconfig)
    assert code == 2  # not a Secret konduktor made: a usage error
    assert "no Secret theirs made by konduktor" in err
    assert ("secrets", "team-a", "theirs") in kube_api.objects


def test_secrets_made_before_konduktors_labels_are_listed_and_deleted(
    kube_api: KubeAPI, kubeconfig: Path
) -> None:
    labels = {"app.kubernetes.io/managed-by": "konduktor", "konduktor.dev/kind": "git-ssh"}
    kube_api.objects[("secrets", "team-a", "repo-key")] = {
        "metadata": {"name": "repo-key", "labels": labels},
        "data": {"ssh-privatekey": "eA=="},
    }
    code, out, _ = run("secret", "list", "--kubeconfig", kubeconfig)
    assert out.split()[:3] == ["repo-key", "git-ssh", "ssh-privatekey"]
    code, out, _ = run("secret", "delete", "repo-key", "--kubeconfig", kubeconfig)
    assert (code, kube_api.objects) == (0, {})


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("create", "Bad_Name", "--kind", "git-ssh", "--from-file", "{key}"), "Secret name"),
        (("create", "ok-name", "--kind", "git-ssh", "--from-file", "{tmp}/absent"), "cannot read"),
        (("create", "ok-name", "--kind", "rsa", "--from-file", "{key}"), "'--kind'"),
        (("create", "ok-name", "--kind", "git-ssh"), "give one of --from-file, --from-directory"),
        (("create", "ok-name", "--from-file", "{key}", "--inline", "A=b"), "only one of"),
        (("create", "ok-name", "--kind", "env", "--from-file", "{key}"), "env takes --inline"),
        (("create", "ok-name", "--kind", "git-ssh", "--inline", "A=b"), "takes --from-file"),
        (("create", "ok-name", "--kind", "env", "--inline", "1A=b"), "environment variable"),
        (("create", "ok-name", "--kind", "env", "--inline", "NOVALUE"), "KEY=VALUE"),
        (("create", "ok-name", "--inline", "A=1", "--inline", "A=2"), "A is given twice"),
        (("create", "ok-name", "--from-directory", "{tmp}/empty"), "holds no file"),
        (("create", "ok-name", "--from-directory", "{key}"), "is not a directory"),
        (("delete", "Bad_Name"), "Secret name"),
        (("delete",), "Missing argument 'NAME'"),
    ],
)
def test_bad_arguments_exit_2_before_any_cluster_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], words: str
) -> None:
    """No kubeconfig at all: a bad argument is still a usage error, not "no context"."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    key = tmp_path / "key"
    key.write_text(KEY)
    (tmp_path / "empty").mkdir()
    code, out, err = run("secret", *(a.format(key=key, tmp=tmp_path) for a in args))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert words in err


def test_a_secret_over_the_apis_limit_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (secrets.MAX_BYTES + 1))
    with pytest.raises(Exception, match="over the 1048576 a Kubernetes Secret can hold"):
        secrets.read_data("default", from_file=big)


# -- handing them to pods -------------------------------------------------------------------------


def test_pod_config_injects_env_secrets_and_mounts_default_ones(
    kube_api: KubeAPI, cluster: submit.Cluster
) -> None:
    hf = konduktor_secret(kube_api, "hf", "env", {"HF_TOKEN": b"t", "HF_HOME": b"/h"})
    netrc = konduktor_secret(kube_api, "netrc", "default", {".netrc": b"m"})
    konduktor_secret(kube_api, "key", "git-ssh", {"gitkey": KEY.encode()})
    konduktor_secret(kube_api, "other", "env", {"X": b"x"}, owner="12345678")
    before = len(kube_api.requests)
    found = secrets.user_secrets(cluster)
    assert len(kube_api.requests) == before + 1  # one request
    assert "labelSelector=trainy.ai/secret-owner%3D0badcafe" in kube_api.requests[-1].path
    fragment = secrets.pod_config(found)
    ref = {"secretKeyRef": {"name": hf, "key": "HF_HOME"}}
    env = [
        {"name": "HF_HOME", "valueFrom": ref},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hf, "key": "HF_TOKEN"}}},
        {"name": "KONDUKTOR_DEFAULT_SECRETS", "value": "/konduktor/default-secrets"},
        {
            "name": "KONDUKTOR_DEFAULT_SECRETS_EXPANDED",
            "value": "/run/konduktor/expanded-default-secrets",
        },
    ]
    mounts = [
        {"name": "default-secret-netrc", "mountPath": "/konduktor/default-secrets/netrc"},
        {
            "name": "default-secrets-expanded",
            "mountPath": "/run/konduktor/expanded-default-secrets",
        },
    ]
    assert fragment == {
        "spec": {
            "containers": [{"env": env, "volumeMounts": mounts}],
            "volumes": [
                {"name": "default-secret-netrc", "secret": {"secretName": netrc}},
                {"name": "default-secrets-expanded", "emptyDir": {}},
            ],
        }
    }
    assert "t" not in str([e.get("value") for e in fragment["spec"]["containers"][0]["env"][:2]])
    assert secrets.git_ssh(found) == (f"key-{HASH}", "gitkey")


def test_pod_config_is_a_valid_pod(kube_api: KubeAPI, cluster: submit.Cluster) -> None:
    """The fragment, completed into a Pod, passes Kubernetes' own schema."""
    import kubernetes_validate

    konduktor_secret(kube_api, "hf", "env", {"HF_TOKEN": b"t"})
    konduktor_secret(kube_api, "netrc", "default", {".netrc": b"m"})
    fragment = secrets.pod_config(secrets.user_secrets(cluster))
    container: dict[str, Any] = {
        "name": "main",
        "image": "busybox",
        **fragment["spec"]["containers"][0],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {**fragment["spec"], "containers": [container]},
    }  # fmt: skip
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_no_secrets_no_fragment(cluster: submit.Cluster) -> None:
    assert secrets.pod_config(secrets.user_secrets(cluster)) == {}
    assert secrets.git_ssh([]) is None
