"""`konduktor launch --mode git`, over a real sshd serving bare repositories.

The launcher checks the remote and pins the host keys from ~/.ssh/known_hosts; the
startup script, run for real by `sh` in a sandbox HOME (--local), clones the exact
commit with StrictHostKeyChecking=yes, then applies the dirty overlay.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from gitrepo_helpers import commit_all, git
from kube_server import KubeAPI
from ssh_server import SSHServer
from test_cli import run
from test_jobset import CRD, K8S_VERSION, job_and_pod, require_crd, strict
from test_launch import stored
from test_pod import launched_from

from konduktor import gitmode, pod
from konduktor.errors import TaskError

RUN = 'git rev-parse HEAD\ncat greeting.txt\necho "$KONDUKTOR_GIT_COMMIT $KONDUKTOR_GIT_DIRTY"\n'


@dataclass
class Project:
    work: Path  # the developer's clone
    upstream: Path  # the bare repository the sshd serves
    task: Path
    khome: Path
    server: SSHServer

    def head(self) -> str:
        return git(self.work, "rev-parse", "HEAD").decode().strip()

    def launch(
        self, *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "konduktor", "launch", "--mode", "git", *map(str, args)]
        return subprocess.run(
            [*cmd, self.task],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, **(env or {})},
            cwd=self.work,  # launched from the clone: workdir: . is the clone
        )

    def home_of(self, result: subprocess.CompletedProcess[str]) -> Path:
        job = result.stderr.split("job ", 1)[1].split(":", 1)[0]
        return self.khome / "local" / job


SHARED_STORE = "sync:\n  shared_store: true\n"  # the default file:// store, as if on NFS


def _task(key: Path | None, run_text: str = RUN) -> str:
    mounts = f"file_mounts:\n  ~/.ssh/test-ssh-key: {key}\n" if key else ""
    body = "".join(f"  {line}\n" for line in run_text.splitlines())
    return f"name: gitjob\nworkdir: .\n{mounts}run: |\n{body}"


def make_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: SSHServer, name: str = "proj.git"
) -> Project:
    """A clone with one pushed commit, the launcher's known_hosts holding the server's key,
    and a task file (committed) mounting the client key as in Konduktor's docs."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    known = home / ".ssh" / "known_hosts"
    known.write_text(server.known_hosts_line)
    khome = tmp_path / "khome"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KONDUKTOR_HOME", str(khome))
    monkeypatch.setenv("GIT_SSH_COMMAND", server.git_ssh_command(known))
    monkeypatch.delenv("KONDUKTOR_CONFIG", raising=False)
    khome.mkdir()
    (khome / "sync.yaml").write_text(SHARED_STORE)
    upstream = server.bare_repo(name)
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "greeting.txt").write_text("hello from the commit\n")
    (work / "old.txt").write_text("tracked, deleted later\n")
    (work / "train.py").write_text("print('train')\n")
    task = work / "task.yaml"
    task.write_text(_task(server.client_key))
    commit_all(work)
    git(work, "remote", "add", "origin", server.url(name))
    git(work, "push", "-q", "origin", "main")
    monkeypatch.chdir(work)  # launched from the clone: the task's workdir: . is the clone
    return Project(work, upstream, task, khome, server)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd: SSHServer) -> Project:
    return make_project(tmp_path, monkeypatch, sshd, f"proj-{tmp_path.name}.git")


def behind_the_tip(project: Project) -> str:
    """Push a second commit, then check out the first (detached); return the first."""
    first = project.head()
    (project.work / "greeting.txt").write_text("second\n")
    commit_all(project.work, "second")
    git(project.work, "push", "-q", "origin", "main")
    git(project.work, "checkout", "-q", "--detach", first)
    return first


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# -- over real SSH ---------------------------------------------------------------------------


def test_a_clean_commit_is_cloned_exactly(project: Project) -> None:
    result = project.launch("--local", "-y")
    head = project.head()
    assert lines(result) == [head, "hello from the commit", f"{head} false"]
    workdir = project.home_of(result) / "konduktor_workdir"
    assert (workdir / ".git").is_dir()
    assert git(workdir, "status", "--porcelain") == b""
    assert not [k for k in stored(project.khome) if k.startswith("v1/bases/")]
    assert "checked out" in result.stderr


def test_a_dirty_tree_ships_its_overlay_on_top(project: Project) -> None:
    (project.work / "greeting.txt").write_text("hello from the work tree\n")
    (project.work / "new.txt").write_text("untracked\n")
    (project.work / "old.txt").unlink()
    result = project.launch("--local", "-y")
    head = project.head()
    assert lines(result) == [head, "hello from the work tree", f"{head} true"]
    assert "uncommitted changes ship as an overlay" in result.stderr
    workdir = project.home_of(result) / "konduktor_workdir"
    assert (workdir / "new.txt").read_text() == "untracked\n"
    assert not (workdir / "old.txt").exists()
    assert not [k for k in stored(project.khome) if k.startswith("v1/bases/")]


def test_clean_only_refuses_a_dirty_tree(project: Project) -> None:
    (project.work / "greeting.txt").write_text("edited\n")
    result = project.launch("--local", "-y", "--clean-only")
    assert result.returncode == 1
    assert "--clean-only" in result.stderr
    assert stored(project.khome) == []


def test_an_unpushed_commit_is_refused_at_launch(project: Project) -> None:
    (project.work / "greeting.txt").write_text("not pushed\n")
    commit_all(project.work, "local only")
    result = project.launch("--local", "-y")
    assert result.returncode == 1
    assert f"HEAD {project.head()[:7]} is not on origin/main: push it" in result.stderr
    assert stored(project.khome) == []


def test_a_commit_behind_the_tip_is_fetched_by_sha(project: Project) -> None:
    first = behind_the_tip(project)
    result = project.launch("--local", "-y", "--branch", "main")
    assert lines(result)[:2] == [first, "hello from the commit"]
    assert "does not serve single commits" not in result.stderr  # fetched shallow, by sha
    workdir = project.home_of(result) / "konduktor_workdir"
    assert (workdir / ".git" / "shallow").read_text().split() == [first]


def test_a_server_that_serves_no_single_commits_gets_a_branch_fetch(project: Project) -> None:
    """Protocol v0 servers refuse `fetch <sha>` of a non-tip commit: the pod falls back."""
    first = behind_the_tip(project)
    v0 = {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "protocol.version",
        "GIT_CONFIG_VALUE_0": "0",
    }
    result = project.launch("--local", "-y", "--branch", "main", env=v0)
    assert lines(result)[:2] == [first, "hello from the commit"]
    assert "does not serve single commits" in result.stderr


def test_a_detached_head_needs_branch(project: Project) -> None:
    git(project.work, "checkout", "-q", "--detach")
    result = project.launch("--local", "-y")
    assert result.returncode == 1
    assert "HEAD is detached: pass --branch" in result.stderr


def test_a_loose_key_file_is_used_at_0600(project: Project) -> None:
    project.server.client_key.chmod(0o644)
    try:
        result = project.launch("--local", "-y")
        assert lines(result)[0] == project.head()
        home = project.home_of(result)
        assert stat.S_IMODE((home / ".konduktor/pod/ssh/key").stat().st_mode) == 0o600
        assert stat.S_IMODE((home / ".ssh/test-ssh-key").stat().st_mode) == 0o600
    finally:
        project.server.client_key.chmod(0o600)


def test_a_restarted_container_does_not_clone_twice(project: Project) -> None:
    result = project.launch("--local", "-y")
    home = project.home_of(result)
    (home / "konduktor_workdir" / "made-by-run.txt").write_text("kept\n")
    env = {**os.environ, "HOME": str(home)}
    again = subprocess.run(
        ["sh", str(home / ".konduktor" / "startup.sh")], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "already in place" in again.stderr
    assert "checked out" not in again.stderr
    assert (home / "konduktor_workdir" / "made-by-run.txt").read_text() == "kept\n"


def test_a_submodule_is_checked_out(project: Project, tmp_path: Path) -> None:
    server = project.server
    sub_upstream = server.bare_repo(f"sub-{tmp_path.name}.git")
    sub = tmp_path / "sub"
    sub.mkdir()
    git(sub, "init", "-q", "-b", "main")
    (sub / "lib.txt").write_text("from the submodule\n")
    commit_all(sub)
    git(sub, "remote", "add", "origin", server.url(sub_upstream.name))
    git(sub, "push", "-q", "origin", "main")
    git(project.work, "-c", "protocol.file.allow=always", "submodule", "add", "-q",
        server.url(sub_upstream.name), "lib")  # fmt: skip
    commit_all(project.work, "add submodule")
    git(project.work, "push", "-q", "origin", "main")
    result = project.launch("--local", "-y", "--recurse-submodules")
    assert result.returncode == 0, result.stderr
    home = project.home_of(result)
    assert (home / "konduktor_workdir" / "lib" / "lib.txt").read_text() == "from the submodule\n"


def test_a_changed_host_key_is_refused_in_the_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd_factory: Any
) -> None:
    server = sshd_factory()
    project = make_project(tmp_path, monkeypatch, server)
    server.stop()
    impostor = sshd_factory(port=server.port)  # same address, another host key
    try:
        assert impostor.host_key_pub != server.host_key_pub
        result = project.launch("--local", "-y")
        assert result.returncode == pod.SYNC_FAILED
        failure = [line for line in result.stderr.splitlines() if "sync failed" in line]
        assert len(failure) == 1
        assert "host key" in failure[0]
        assert "does not match the one pinned" in failure[0]
        assert "hello" not in result.stdout
    finally:
        impostor.stop()


def test_a_missing_key_fails_before_anything_is_uploaded(project: Project) -> None:
    project.task.write_text(_task(None))
    result = project.launch("--local", "-y")
    assert result.returncode == 1
    assert "needs an SSH key" in result.stderr
    assert stored(project.khome) == []


def test_accept_host_key_scans_and_pins(project: Project) -> None:
    (Path(os.environ["HOME"]) / ".ssh" / "known_hosts").write_text("")
    refused = project.launch("--local", "-y")
    assert refused.returncode == 1
    assert "--accept-host-key" in refused.stderr
    result = project.launch("--local", "-y", "--accept-host-key")
    assert "accepted the host keys" in result.stderr
    assert lines(result)[0] == project.head()


# -- the cluster path ---------------------------------------------------------------------------


def test_the_git_jobset_is_valid_and_carries_no_key(
    project: Project, kube_api: KubeAPI, tmp_path: Path
) -> None:
    kubeconfig = kube_api.write_kubeconfig(tmp_path)
    key_material = project.server.client_key.read_text()
    project.task.write_text(_task(None))
    commit_all(project.work, "task without a key mount")
    git(project.work, "push", "-q", "origin", "main")
    code, out, err = run(
        "launch", "--mode", "git", "-y", "-d", "--ssh-secret", "repo-key",
        "--kubeconfig", kubeconfig, project.task,
    )  # fmt: skip
    assert code == 0, err
    (request,) = kube_api.submitted
    manifest = request.body
    annotations = manifest["metadata"]["annotations"]
    assert annotations["konduktor.dev/git-commit"] == project.head()
    assert annotations["konduktor.dev/git-branch"] == "main"
    assert annotations["konduktor.dev/git-remote"] == project.server.url(project.upstream.name)
    require_crd(CRD)
    crd = yaml.safe_load(CRD.read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2")
    validator = jsonschema.Draft7Validator(strict(schema["schema"]["openAPIV3Schema"]))
    assert sorted(validator.iter_errors(manifest), key=str) == []
    for obj in job_and_pod(manifest):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    volumes = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert {"secretName": "repo-key", "defaultMode": 0o400} in [
        v.get("secret") for v in volumes["volumes"]
    ]
    body = str(manifest)
    for secret in (key_material, key_material.splitlines()[1]):
        assert secret not in body + out + err
    plan = next(p for p in stored(project.khome) if p.startswith("v1/plans/"))
    assert key_material.splitlines()[1] not in (project.khome / "store" / plan).read_text()


def test_the_rendered_git_script_is_clean_under_shellcheck(project: Project) -> None:
    code, out, err = run("launch", "--mode", "git", "--dry-run", "-o", "json", project.task)
    assert code == 0, err
    import json

    script = json.loads(out)["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"
    ][0]["command"][2]
    assert "k_git " in script
    path = project.work.parent / "git-startup.sh"
    path.write_text(script)
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run(
        [str(shellcheck) if shellcheck.exists() else "shellcheck", "--shell=dash", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


# -- bad input: one line, exit 1, nothing uploaded or submitted ------------------------------------


def _bad(project: Project, kube_api: KubeAPI, tmp_path: Path, *args: str) -> str:
    kubeconfig = kube_api.write_kubeconfig(tmp_path)
    with launched_from(project.work):
        code, _, err = run(
            "launch", "--mode", "git", "-y", "-d", "--kubeconfig", kubeconfig, *args, project.task
        )
    assert code == 1, err
    assert len(err.splitlines()) == 1, err
    assert stored(project.khome) == []
    assert kube_api.requests == []
    return err


def test_no_remote(project: Project, kube_api: KubeAPI, tmp_path: Path) -> None:
    git(project.work, "remote", "remove", "origin")
    assert "has no remote 'origin'" in _bad(project, kube_api, tmp_path)


def test_an_unreachable_remote(project: Project, kube_api: KubeAPI, tmp_path: Path) -> None:
    git(project.work, "remote", "set-url", "origin", "ssh://git@127.0.0.1:9/nowhere.git")
    assert "cannot fetch main from origin" in _bad(project, kube_api, tmp_path, "--fetch")


def test_an_https_remote_needs_ssh_url(project: Project, kube_api: KubeAPI, tmp_path: Path) -> None:
    git(project.work, "remote", "set-url", "origin", "https://user:tok3n@example.com/org/repo.git")
    err = _bad(project, kube_api, tmp_path)
    assert "--ssh-url" in err
    assert "tok3n" not in err


def test_a_shallow_clone(project: Project, kube_api: KubeAPI, tmp_path: Path) -> None:
    shallow = tmp_path / "shallow"
    git(
        tmp_path,
        "clone",
        "-q",
        "--depth",
        "1",
        project.server.url(project.upstream.name),
        str(shallow),
    )
    project.work = shallow
    project.task = shallow / "task.yaml"
    assert "shallow clone" in _bad(project, kube_api, tmp_path)


def test_a_missing_key_file_in_the_config(
    project: Project, kube_api: KubeAPI, tmp_path: Path
) -> None:
    project.task.write_text(_task(None))
    config = f"{SHARED_STORE}git:\n  ssh_key: {tmp_path}/absent_key\n"
    (project.khome / "sync.yaml").write_text(config)
    assert "git.ssh_key" in _bad(project, kube_api, tmp_path)


def test_https_urls_map_to_ssh_when_asked() -> None:
    assert gitmode._ssh("https://github.com/org/repo", "origin", True) == (
        "git@github.com:org/repo.git"
    )
    assert gitmode._ssh("git@github.com:org/repo.git", "origin", False) == (
        "git@github.com:org/repo.git"
    )
    assert gitmode.host_and_port("ssh://git@host:2222/x.git") == ("host", 2222)


# -- the key from a git-ssh Secret found by Konduktor's labels ------------------------------------


def _upstream_git_secret(kube_api: KubeAPI, basename: str, owner: str) -> str:
    """A git-ssh Secret as Konduktor's `konduktor secret create --kind git-ssh` stores it."""
    name = f"{basename}-{owner}"
    labels = {
        "parent": "konduktor",
        "trainy.ai/secret-owner": owner,
        "trainy.ai/secret-basename": basename,
        "trainy.ai/secret-kind": "git-ssh",
    }
    kube_api.objects[("secrets", "team-a", name)] = {
        "metadata": {"name": name, "labels": labels},
        "data": {"gitkey": "a2V5"},
    }
    return name


def test_an_existing_git_ssh_secret_is_used_without_flags(
    project: Project, kube_api: KubeAPI, cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from konduktor import config
    from konduktor.k8s import jobset, secrets
    from konduktor.task import load

    monkeypatch.setenv("KONDUKTOR_USER_ID", "0badcafe")
    monkeypatch.chdir(project.work)
    project.task.write_text(_task(None))
    task, cfg = load(project.task), config.load()
    with pytest.raises(TaskError, match="needs an SSH key"):  # nothing names a key
        gitmode.checkout(task, cfg, gitmode.Options(), local=False, user_secrets=list)
    _upstream_git_secret(kube_api, "theirs", "12345678")  # another user's: never used
    found = secrets.user_secrets(cluster)
    with pytest.raises(TaskError, match="needs an SSH key"):
        gitmode.checkout(task, cfg, gitmode.Options(), local=False, user_secrets=lambda: found)
    name = _upstream_git_secret(kube_api, "gh-key", "0badcafe")
    found = secrets.user_secrets(cluster)
    _, checkout, secret, notes = gitmode.checkout(
        task, cfg, gitmode.Options(), local=False, user_secrets=lambda: found
    )
    assert (secret, checkout.key) == (name, f"{jobset.GIT_SSH_PATH}/gitkey")
    assert f"the pod clones with the key in your git-ssh Secret {name}" in notes
    by_name = gitmode.Options(ssh_secret="gh-key")  # the name given at creation
    _, checkout, secret, _ = gitmode.checkout(
        task, cfg, by_name, local=False, user_secrets=lambda: found
    )
    assert (secret, checkout.key) == (name, f"{jobset.GIT_SSH_PATH}/gitkey")


def test_a_named_secret_konduktor_made_before_keeps_its_key_file(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ssh-secret naming a Secret not among the user's labelled ones (made by an earlier
    konduktor, or not looked up): its name as given and the key file those held."""
    from konduktor import config
    from konduktor.k8s import jobset
    from konduktor.task import load

    monkeypatch.chdir(project.work)
    project.task.write_text(_task(None))
    options = gitmode.Options(ssh_secret="repo-key")
    _, checkout, secret, _ = gitmode.checkout(
        load(project.task), config.load(), options, local=False
    )
    assert (secret, checkout.key) == ("repo-key", f"{jobset.GIT_SSH_PATH}/ssh-privatekey")
