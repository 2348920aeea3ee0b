"""`konduktor secret create|list|delete` against the local Kubernetes API server."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from kube_server import KubeAPI
from test_cli import run

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-material\n-----END OPENSSH PRIVATE KEY-----\n"


def test_create_list_delete(tmp_path: Path, kube_api: KubeAPI, kubeconfig: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text(KEY)
    args = ("--kubeconfig", kubeconfig)
    code, out, err = run(
        "secret", "create", "--kind", "git-ssh", "repo-key", "--from-file", key, *args
    )
    assert code == 0, err
    assert "created Secret repo-key" in out
    assert "--ssh-secret repo-key" in out
    stored = kube_api.objects[("secrets", "team-a", "repo-key")]
    assert base64.b64decode(stored["data"]["ssh-privatekey"]).decode() == KEY
    assert stored["metadata"]["labels"]["konduktor.dev/kind"] == "git-ssh"
    code, out, _ = run("secret", "list", *args)
    assert code == 0
    assert out.split()[:2] == ["repo-key", "git-ssh"]
    assert "key-material" not in out
    code, out, _ = run("secret", "delete", "repo-key", *args)
    assert code == 0
    assert ("secrets", "team-a", "repo-key") not in kube_api.objects
    code, out, _ = run("secret", "list", *args)
    assert out == ""
    assert all("key-material" not in str(r.headers) for r in kube_api.requests)


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("Bad_Name", KEY, ["not a valid Secret name"]),
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


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("create", "Bad_Name", "--kind", "git-ssh", "--from-file", "{key}"), "Secret name"),
        (("create", "ok-name", "--kind", "git-ssh", "--from-file", "{tmp}/absent"), "cannot read"),
        (("create", "ok-name", "--kind", "rsa", "--from-file", "{key}"), "'--kind'"),
        (("create", "ok-name", "--kind", "git-ssh"), "Missing option '--from-file'"),
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
    code, out, err = run("secret", *(a.format(key=key, tmp=tmp_path) for a in args))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert words in err
