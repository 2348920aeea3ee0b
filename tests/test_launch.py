"""`konduktor launch`: end to end with --local and against a local Kubernetes API server,
fast-fail order, and bad input (one clear line, exit 1, nothing uploaded or submitted)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gitrepo_helpers import commit_all, git
from kube_server import KubeAPI
from test_cli import run
from test_pod import toolbox

from konduktor import layout, pod
from konduktor.extract import sha256_file
from konduktor.storage import StoreOptions, base, open_store

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Launch from the folder of the tests' task files: their relative paths start at the
    current directory (the quickstart fixture moves into its repository)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def khome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "khome"
    monkeypatch.setenv("KONDUKTOR_HOME", str(home))
    monkeypatch.delenv("KONDUKTOR_CONFIG", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return home


@pytest.fixture
def shared(khome: Path) -> Path:
    """The default file:// store, declared shared with the pods (as an NFS path would be)."""
    khome.mkdir(exist_ok=True)
    (khome / "config.yaml").write_text("sync:\n  shared_store: true\n")
    return khome


@pytest.fixture
def quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The README's example, as its own repository, and the current directory (the
    README launches it from there)."""
    repo = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, repo)
    git(repo, "init", "-q")
    commit_all(repo)
    monkeypatch.chdir(repo)
    return repo


def launch_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess: the local target's output goes to its stdout."""
    cmd = [sys.executable, "-m", "konduktor", "launch", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def stored(khome: Path) -> list[str]:
    store = khome / "store"
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())


def uploaded_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("upload:"))


# -- the local target --------------------------------------------------------------------------


def test_quickstart_launches_locally_and_relaunches_without_uploading(
    quickstart: Path, khome: Path
) -> None:
    first = launch_cli("--local", quickstart / "task.yaml")
    assert first.returncode == 0, first.stderr
    job = first.stderr.split("job ", 1)[1].split(":", 1)[0]
    home = khome / "local" / job
    assert (home / "test_dir" / "hello.txt").exists()
    assert (home / "static_path.txt").read_text() == (quickstart / "static_path.txt").read_text()
    assert "train.py" in first.stdout  # ls -lah in the workdir
    assert "static_path.txt" in first.stdout
    assert "test_dir" in first.stdout
    assert "checkpoints" not in first.stdout  # .konduktorignore
    assert "nothing to send" not in uploaded_line(first.stderr)

    again = launch_cli("--local", "-y", quickstart / "task.yaml")
    assert again.returncode == 0, again.stderr
    assert uploaded_line(again.stderr).startswith("upload: nothing to send")

    (quickstart / "train.py").write_text("print('edited')\n")
    edited = launch_cli("--local", "-y", quickstart / "task.yaml")
    assert edited.returncode == 0, edited.stderr
    assert uploaded_line(edited.stderr).startswith("upload: 1 object(s)")  # the overlay


def test_private_key_mount_keeps_its_mode(tmp_path: Path, khome: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("PRIVATE\n")
    key.chmod(0o600)
    task = tmp_path / "task.yaml"
    task.write_text(f"name: keyed\nfile_mounts:\n  ~/.ssh/id_ed25519: {key}\nrun: ls ~/.ssh\n")
    result = launch_cli("--local", task)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "id_ed25519\n"
    (placed,) = (khome / "local").glob("keyed-*/.ssh/id_ed25519")
    assert stat.S_IMODE(placed.stat().st_mode) == 0o600
    assert "PRIVATE" not in result.stderr + result.stdout


def test_local_runs_have_a_pods_variables_for_one_node(tmp_path: Path, khome: Path) -> None:
    names = "RANK NUM_NODES MASTER_ADDR LOCAL_ADDR SKYPILOT_NODE_RANK SKYPILOT_NUM_NODES"
    task = tmp_path / "task.yaml"
    task.write_text(
        "name: vars\nnum_nodes: 2\nrun: |\n"
        f"  for v in {names} RESTART_ATTEMPT; do eval echo $v=\\${{$v}}; done\n"
        '  echo "job=$KONDUKTOR_JOB_NAME"\n'
    )
    result = launch_cli("--local", task)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:7] == [
        "RANK=0",
        "NUM_NODES=1",
        "MASTER_ADDR=127.0.0.1",
        "LOCAL_ADDR=127.0.0.1",
        "SKYPILOT_NODE_RANK=0",
        "SKYPILOT_NUM_NODES=1",
        "RESTART_ATTEMPT=0",
    ]
    (home,) = (khome / "local").glob("vars-*")
    assert lines[7] == f"job={home.name}"


def test_the_exit_code_is_the_tasks(tmp_path: Path, khome: Path) -> None:
    task = tmp_path / "task.yaml"
    task.write_text("run: echo out; echo err >&2; exit 5\n")
    result = launch_cli("--local", task)
    assert result.returncode == 5
    assert result.stdout == "out\n"
    assert "err" in result.stderr


def test_local_setup_runs_first_in_the_workdir_and_its_failure_is_the_tasks(
    tmp_path: Path, khome: Path
) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f").write_text("x")
    task = tmp_path / "task.yaml"
    task.write_text("name: prep\nworkdir: w\nsetup: echo made > made.txt\nrun: cat made.txt f\n")
    ok = launch_cli("--local", task)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "made\nx"
    task.write_text("name: prep\nworkdir: w\nsetup: echo preparing; exit 4\nrun: echo ran\n")
    failed = launch_cli("--local", "-y", task)
    assert failed.returncode == 4, failed.stderr
    assert failed.stdout == "preparing\n"
    assert "konduktor: setup failed with exit code 4; run: not started" in failed.stderr
    assert re.search(r"job prep-[0-9a-f]{8} exited with code 4", failed.stderr)


def test_a_task_file_in_a_subfolder_ships_the_folder_it_is_launched_from(
    tmp_path: Path, khome: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with Konduktor: from the repository's root, configs/train.yaml with workdir: .
    ships the root (train.py beside configs/), not configs/ alone."""
    root = tmp_path / "repo"
    (root / "configs").mkdir(parents=True)
    (root / "train.py").write_text("print('train')\n")
    (root / "configs" / "train.yaml").write_text("name: sub\nworkdir: .\nrun: ls\n")
    monkeypatch.chdir(root)
    result = launch_cli("--local", "configs/train.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["configs", "train.py"]


def test_a_sync_failure_exits_with_the_scripts_code(tmp_path: Path, khome: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f").write_text("x")
    task = tmp_path / "task.yaml"
    task.write_text("workdir: w\nrun: echo ran\n")
    assert launch_cli("--local", task).returncode == 0
    for layer in (khome / "store" / "v1" / "objects").rglob("*.tar.zst"):
        layer.chmod(0o644)
        layer.write_bytes(b"g" * layer.stat().st_size)  # the size (which stat sees) unchanged
    (tmp_path / "w" / "f").write_text("x")  # same content: the same layer key
    result = launch_cli("--local", task)
    assert result.returncode == pod.SYNC_FAILED
    assert "corrupt" in result.stderr
    assert "ran" not in result.stdout


def test_detach_runs_in_the_background(tmp_path: Path, khome: Path) -> None:
    task = tmp_path / "task.yaml"
    task.write_text("name: bg\nrun: echo background\n")
    result = launch_cli("--local", "-d", task)
    assert result.returncode == 0, result.stderr
    (log,) = (khome / "local").glob("bg-*/run.log")
    for _ in range(100):
        if "background" in log.read_text():
            break
        subprocess.run(["sleep", "0.1"], check=True)
    assert "background" in log.read_text()


# -- dry run and limits -----------------------------------------------------------------------


def test_dry_run_uploads_and_submits_nothing(quickstart: Path, khome: Path) -> None:
    code, out, err = run("launch", "--dry-run", "-o", "yaml", quickstart / "task.yaml")
    assert code == 0, err
    manifest = yaml.safe_load(out)
    assert manifest["kind"] == "JobSet"
    assert "to upload" in err
    assert "nothing uploaded, nothing submitted" in err
    assert stored(khome) == []


def test_above_the_hard_limit_nothing_is_uploaded(quickstart: Path, khome: Path) -> None:
    khome.mkdir()
    (khome / "config.yaml").write_text("sync:\n  hard_limit_mb: 0.0001\n")
    code, _, err = run("launch", "--local", quickstart / "task.yaml")
    assert code == 1
    assert "hard limit" in err
    assert "sync.hard_limit_mb" in err
    assert "largest" in err
    assert stored(khome) == []


def test_above_the_soft_limit_it_warns(quickstart: Path, khome: Path) -> None:
    khome.mkdir()
    (khome / "config.yaml").write_text("sync:\n  soft_limit_mb: 0.0001\n")
    code, _, err = run("launch", "--dry-run", quickstart / "task.yaml")
    assert code == 0
    assert "warning: the launch ships" in err
    assert "sync.soft_limit_mb" in err


# -- a cluster ---------------------------------------------------------------------------------


def test_launch_submits_the_jobset(
    quickstart: Path, khome: Path, shared: Path, kube_api: KubeAPI
) -> None:
    kubeconfig = kube_api.write_kubeconfig(quickstart.parent)
    code, out, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, quickstart / "task.yaml")
    assert code == 0, err
    job = out.strip()
    lookup, request = kube_api.requests  # the user's Secrets, then the JobSet
    assert lookup.method == "GET"
    owner = r"/api/v1/namespaces/team-a/secrets\?labelSelector=trainy.ai/secret-owner=[0-9a-f]{8}"
    assert re.fullmatch(owner, urllib.parse.unquote(lookup.path))
    assert request.method == "POST"
    assert request.path == "/apis/jobset.x-k8s.io/v1alpha2/namespaces/team-a/jobsets"
    body = request.body
    assert body["metadata"]["name"] == job
    annotations = body["metadata"]["annotations"]
    commit = git(quickstart, "rev-parse", "HEAD").decode().strip()
    assert annotations["konduktor.dev/git-commit"] == commit
    assert annotations["konduktor.dev/git-dirty"] == "false"
    pod_spec = body["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    script = container["command"][2]
    layers = annotations["konduktor.dev/layers"].split(",")
    assert all(digest in script for digest in layers)
    assert f"v1/plans/{job}.json" in stored(khome)
    store = str(khome / "store")  # shared with the pods: mounted from the node, read-only
    host = {"path": store, "type": "Directory"}
    assert {"name": "konduktor-store", "hostPath": host} in pod_spec["volumes"]
    mount = {"name": "konduktor-store", "mountPath": store, "readOnly": True}
    assert mount in container["volumeMounts"]

    code, out, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, quickstart / "task.yaml")
    assert code == 0, err
    assert uploaded_line(err).startswith("upload: nothing to send")
    assert len(kube_api.submitted) == 2


def test_nothing_is_submitted_when_the_upload_fails(
    quickstart: Path, khome: Path, kube_api: KubeAPI, s3_server: str
) -> None:
    khome.mkdir()
    (khome / "config.yaml").write_text(
        "jobs:\n  bucket: s3://nowhere-bucket\nsync:\n  store:\n"
        "    endpoint_url: http://127.0.0.1:9\n    max_attempts: 1\n"
    )
    kubeconfig = kube_api.write_kubeconfig(quickstart.parent)
    code, _, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, quickstart / "task.yaml")
    assert code == 1
    assert "cannot reach" in err
    assert kube_api.submitted == []


def test_no_kube_context_fails_before_uploading(quickstart: Path, khome: Path) -> None:
    code, _, err = run(
        "launch", "-y", "-d", "--kubeconfig", khome / "absent", quickstart / "task.yaml"
    )
    assert code == 1
    assert "--local" in err
    assert stored(khome) == []


# -- bad input ---------------------------------------------------------------------------------

BAD_TASKS = [
    ("name: [unclosed\nrun: ls\n", (), ["not valid YAML", "line"]),
    ("- a list\n", (), ["a task file is a mapping"]),
    ("fille_mounts: {}\nrun: ls\n", (), ["fille_mounts", "did you mean `file_mounts`"]),
    ("resources: {gpus: 1}\nrun: ls\n", (), ["resources.gpus"]),
    ("name: x\n", (), ["`run` is missing"]),
    ("run: ''\n", (), ["run"]),
    ("run: '   '\n", (), ["run"]),
    ("name: My_Job\nrun: ls\n", (), ["name", "lowercase"]),
    (f"name: {'a' * 70}\nrun: ls\n", (), ["name"]),
    ("num_nodes: 0\nrun: ls\n", (), ["num_nodes", "at least 1"]),
    ("num_nodes: two\nrun: ls\n", (), ["num_nodes"]),
    ("resources: {memory: 16G}\nrun: ls\n", (), ["resources.memory", "GiB"]),
    ("resources: {cpus: many}\nrun: ls\n", (), ["resources.cpus"]),
    ("resources: {cpus: -1}\nrun: ls\n", (), ["resources.cpus"]),
    ("resources: {memory: 0}\nrun: ls\n", (), ["resources.memory"]),
    ("resources: {accelerators: 'H100:0'}\nrun: ls\n", (), ["resources.accelerators"]),
    ("resources: {labels: [a]}\nrun: ls\n", (), ["resources.labels"]),
    ("envs: [A]\nrun: ls\n", (), ["envs"]),
    ("envs: {TOKEN: null}\nrun: ls\n", (), ["envs.TOKEN", "--env TOKEN="]),
    ("workdir: ./missing\nrun: ls\n", (), ["workdir", "missing", "not a directory"]),
    ("workdir: ./afile\nrun: ls\n", (), ["workdir", "not a directory"]),
    ("workdir: ./${WHERE}\nrun: ls\n", (), ["workdir", "${WHERE}", "envs"]),
    ("file_mounts: [a]\nrun: ls\n", (), ["file_mounts"]),
    ("file_mounts:\n  ~/x: ./nope\nrun: ls\n", (), ["file_mounts.~/x", "does not exist"]),
    ("file_mounts:\n  ~/konduktor_workdir: ./d\nrun: ls\n", (), ["collides", "workdir"]),
    ("file_mounts:\n  ~/konduktor_workdir/sub: ./d\nrun: ls\n", (), ["collides"]),
    ("file_mounts:\n  s3://bucket/x: ./d\nrun: ls\n", (), ["file_mounts.s3://bucket/x", "URL"]),
    ("file_mounts:\n  data: ./d\nrun: ls\n", (), ["file_mounts.data", "absolute"]),
    ("file_mounts:\n  '~': ./d\nrun: ls\n", (), ["file_mounts.~", "home directory"]),
    ("file_mounts:\n  /: ./d\nrun: ls\n", (), ["file_mounts./", "whole /"]),
    ("file_mounts:\n  ~/a/../..: ./d\nrun: ls\n", (), ["file_mounts.~/a/../..", ".."]),
    ("file_mounts:\n  /data: http://host/x\nrun: ls\n", (), ["file_mounts./data", "s3://"]),
    ("run: ls\n", ("--memory", "16G"), ["--memory: '16G'", "GiB"]),
    ("run: ls\n", ("--gpus", "H100:x"), ["--gpus: 'H100:x'"]),
    ("run: ls\n", ("--env", "KONDUKTOR_TEST_UNSET_VAR"), ["--env KONDUKTOR_TEST_UNSET_VAR"]),
    ("run: ls\n", ("--env-file", "absent.env"), ["--env-file", "absent.env"]),
    ("run: ls\n", ("--name", "Bad Name"), ["--name: 'Bad Name'", "lowercase"]),
]


@pytest.mark.parametrize(("text", "args", "words"), BAD_TASKS)
def test_bad_input_is_one_clear_line_and_nothing_happens(
    tmp_path: Path,
    khome: Path,
    kube_api: KubeAPI,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    args: tuple[str, ...],
    words: list[str],
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "afile").write_text("x")
    task = tmp_path / "task.yaml"
    task.write_text(text)
    monkeypatch.chdir(tmp_path)
    kubeconfig = kube_api.write_kubeconfig(tmp_path)
    code, out, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, *args, task)
    flag_only = bool(args) and args[0] != "--env-file"  # the file is fine: a usage error
    assert code == (2 if flag_only else 1), err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]
    assert out == ""
    assert stored(khome) == []
    assert kube_api.submitted == []


def test_a_missing_task_file(khome: Path, tmp_path: Path) -> None:
    code, _, err = run("launch", "--local", tmp_path / "absent.yaml")
    assert code == 1
    assert "does not exist" in err


def test_the_bad_input_table_is_big_enough() -> None:
    assert len(BAD_TASKS) >= 25
    assert not os.environ.get("KONDUKTOR_TEST_UNSET_VAR")


def test_check_writes_the_credentials_secret(
    khome: Path, tmp_path: Path, kube_api: KubeAPI, s3_store_factory: Any
) -> None:
    url, options = s3_store_factory()
    khome.mkdir()
    (khome / "config.yaml").write_text(
        f"jobs:\n  bucket: {url}\nsync:\n  store:\n    endpoint_url: {options.endpoint_url}\n"
    )
    kubeconfig = kube_api.write_kubeconfig(tmp_path)
    code, out, err = run("check", "s3", "--kubeconfig", kubeconfig)
    assert code == 0, err
    assert "created Secret konduktor-credentials-" in out
    (request,) = kube_api.submitted
    assert (request.method, request.path) == ("POST", "/api/v1/namespaces/team-a/secrets")
    sent = base64.b64decode(request.body["data"]["aws-credentials"]).decode()
    assert "aws_secret_access_key = testing" in sent
    assert "testing" not in out + err
    code, out, _ = run("check", "s3", "--kubeconfig", kubeconfig)
    assert code == 0
    assert "replaced Secret" in out
    assert kube_api.submitted[-1].method == "PUT"


def test_check_without_a_cluster_writes_no_secret(khome: Path, s3_store_factory: Any) -> None:
    url, options = s3_store_factory()
    khome.mkdir()
    (khome / "config.yaml").write_text(
        f"jobs:\n  bucket: {url}\nsync:\n  store:\n    endpoint_url: {options.endpoint_url}\n"
    )
    code, out, err = run("check", "s3", "--kubeconfig", khome / "absent")
    assert code == 0, err
    assert "Secret" not in out


def test_the_local_target_needs_no_zstd_on_path(
    quickstart: Path, khome: Path, tmp_path: Path
) -> None:
    """The sandbox runs with konduktor's own Python (which has zstandard) as its fallback."""
    path = toolbox(tmp_path, "git")
    cmd = [sys.executable, "-m", "konduktor", "launch", "--local", quickstart / "task.yaml"]
    env = {**os.environ, "PATH": path}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train.py" in result.stdout


def test_a_private_key_mount_reaches_the_cluster_only_by_reference(
    tmp_path: Path, khome: Path, shared: Path, kube_api: KubeAPI
) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY----- secret-material\n")
    key.chmod(0o600)
    task = tmp_path / "task.yaml"
    task.write_text(f"name: keyed\nfile_mounts:\n  ~/.ssh/id_ed25519: {key}\nrun: ssh -V\n")
    kubeconfig = kube_api.write_kubeconfig(tmp_path)
    code, _, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, task)
    assert code == 0, err
    (request,) = kube_api.submitted
    body = str(request.body)
    assert "secret-material" not in body + err
    digest = sha256_file(key)
    assert f'k_file "$HOME"/.ssh/id_ed25519 file://{khome}/store/v1/objects/' in body
    assert f"{digest} 600" in body
    code, _, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, task)
    assert code == 0, err
    assert uploaded_line(err).startswith("upload: nothing to send")


def test_a_context_the_client_cannot_load_fails_before_uploading(
    quickstart: Path, khome: Path, tmp_path: Path
) -> None:
    """The client loads the context in a worker process, while the launch snapshots; its
    failure still stops the launch before anything is uploaded."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: broken\nclusters: []\nusers: []\n"
        "contexts:\n- name: broken\n  context: {cluster: missing, user: nobody}\n"
    )
    code, _, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, quickstart / "task.yaml")
    assert code == 1
    assert "cannot use Kubernetes context 'broken'" in err
    assert stored(khome) == []


def test_quiet_leaves_only_the_tasks_own_output(tmp_path: Path, khome: Path) -> None:
    task = tmp_path / "task.yaml"
    task.write_text("run: echo out; echo err >&2\n")
    cmd = [sys.executable, "-m", "konduktor", "-q", "launch", "--local", str(task)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_only_the_newest_local_homes_are_kept(
    tmp_path: Path, khome: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from konduktor import local

    old = [khome / "local" / f"old-{i}" for i in range(local.LOCAL_KEEP + 2)]
    for i, home in enumerate(old):
        home.mkdir(parents=True)
        os.utime(home, (1000 + i, 1000 + i))
    task = tmp_path / "task.yaml"
    task.write_text("name: fresh\nrun: 'true'\n")
    assert launch_cli("--local", task).returncode == 0
    kept = sorted(p.name for p in (khome / "local").iterdir())
    assert len(kept) == local.LOCAL_KEEP
    assert [k for k in kept if k.startswith("fresh-")]
    assert "old-0" not in kept
    assert f"old-{len(old) - 1}" in kept


def test_an_edited_file_mount_is_hashed_and_sent_again(tmp_path: Path, khome: Path) -> None:
    """Mounted files are hashed only when their stat changes (the hash cache)."""
    data = tmp_path / "weights.txt"
    data.write_text("v1\n")
    os.utime(data, (1000, 1000))  # old enough for the cache to trust its stat
    task = tmp_path / "task.yaml"
    task.write_text(
        f"name: mounted\nfile_mounts:\n  ~/weights.txt: {data}\nrun: cat ~/weights.txt\n"
    )
    first = launch_cli("--local", task)
    assert first.stdout == "v1\n"
    assert uploaded_line(launch_cli("--local", task).stderr).startswith("upload: nothing to send")
    data.write_text("version 2\n")
    os.utime(data, (2000, 2000))
    edited = launch_cli("--local", task)
    assert edited.stdout == "version 2\n"
    assert uploaded_line(edited.stderr).startswith("upload: 1 object(s)")


def test_no_at_the_prompt_aborts_with_exit_1_and_sends_nothing(
    quickstart: Path, khome: Path
) -> None:
    """On a terminal, launch asks; "n" stops it before anything is uploaded."""
    import pty

    leader, follower = pty.openpty()
    cmd = [sys.executable, "-m", "konduktor", "launch", "--local", str(quickstart / "task.yaml")]
    with subprocess.Popen(cmd, stdin=follower, stdout=subprocess.PIPE, stderr=follower) as proc:
        os.close(follower)
        seen = b""
        while b"launch?" not in seen:
            seen += os.read(leader, 1024)
        os.write(leader, b"n\n")
        code = proc.wait(timeout=60)
        seen += _drain(leader)
    os.close(leader)
    assert code == 1, seen
    assert b"error: aborted: nothing was uploaded or submitted" in seen
    assert b"interrupted" not in seen
    assert not (khome / "store").exists()


def _drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child closed its end
            return out
        if not chunk:
            return out
        out += chunk


def test_launch_is_one_library_call(quickstart: Path, khome: Path) -> None:
    from konduktor import launch
    from konduktor.errors import AbortedError

    notes: list[str] = []
    request = launch.Request(quickstart / "task.yaml", "dry-run", manifest=True)
    result = launch.launch(request, report=notes.append)
    assert result.target == "dry-run"
    assert result.manifest is not None
    assert result.manifest["metadata"]["name"] == result.job
    assert result.synced.uploaded  # an empty store lacks everything
    assert result.synced.reused == ()
    assert notes[0].startswith(f"job {result.job}: ")
    assert not (khome / "store").exists()  # a dry run only looks
    with pytest.raises(AbortedError, match="aborted"):
        launch.launch(
            launch.Request(quickstart / "task.yaml", "local"), confirm=lambda prepared: False
        )
    assert not (khome / "store").exists()


def test_a_replaced_layer_stops_the_launch_before_it_submits(
    quickstart: Path, khome: Path, shared: Path, kube_api: KubeAPI
) -> None:
    """A bucket writer swaps the base layer and its metadata: nothing is submitted."""
    kubeconfig = kube_api.write_kubeconfig(quickstart.parent)
    code, _, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, quickstart / "task.yaml")
    assert code == 0, err
    for layer in (khome / "store" / "v1" / "bases").rglob("*.tar.zst"):
        meta = layer.with_name(layer.name + ".meta.json")
        for path in (layer, meta):
            path.chmod(0o644)
        layer.write_bytes(b"injected")
        fields = json.loads(meta.read_text())
        fields.update(sha256=hashlib.sha256(b"injected").hexdigest(), size="8")
        meta.write_text(json.dumps(fields))
    code, _, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, quickstart / "task.yaml")
    assert code == 1
    last = err.splitlines()[-1]
    assert last.startswith("error: ")
    assert "is not the layer this machine builds for it" in last
    assert [line for line in err.splitlines() if line.startswith("error")] == [last]
    assert len(kube_api.submitted) == 1  # the first launch's JobSet only


def test_the_plan_kept_in_the_bucket_holds_no_presigned_url(
    quickstart: Path, khome: Path, kube_api: KubeAPI, s3_store_factory: Any
) -> None:
    """Presigned URLs carry the access key id (and a session token): only the JobSet,
    which needs them while they are valid, holds them; the plan kept in the bucket not."""
    url, options = s3_store_factory()
    khome.mkdir()
    (khome / "config.yaml").write_text(
        f"jobs:\n  bucket: {url}\nsync:\n  store:\n    endpoint_url: {options.endpoint_url}\n"
    )
    kubeconfig = kube_api.write_kubeconfig(quickstart.parent)
    code, out, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, quickstart / "task.yaml")
    assert code == 0, err
    (request,) = kube_api.submitted
    assert "X-Amz-Credential=testing" in str(request.body)  # the pod fetches over HTTPS
    store = open_store(url, options)
    plan = json.loads(_read(store, layout.plan(out.strip()), khome))
    assert plan["trees"]
    assert "X-Amz" not in json.dumps(plan)
    assert all(layer["https"] is None for tree in plan["trees"] for layer in tree["layers"])


def _read(store: Any, key: str, scratch: Path) -> bytes:
    dest = scratch / "read"
    store.get(key, dest)
    return dest.read_bytes()


@pytest.mark.parametrize("backend", ["file", "s3", "gcs"])
def test_a_file_mount_that_changes_while_it_is_sent_fails_and_leaves_its_key_free(
    backend: str,
    tmp_path: Path,
    khome: Path,
    kube_api: KubeAPI,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its tail is rewritten as its upload begins: the launch says which file
    changed and submits nothing; no object holds the wrong bytes under either digest,
    and the next launch, once the file settled, succeeds."""
    khome.mkdir()
    url = f"file://{tmp_path}/store"
    (khome / "config.yaml").write_text("sync:\n  shared_store: true\n")
    if backend != "file":
        url, options = request.getfixturevalue(f"{backend}_store_factory")()
        (khome / "config.yaml").write_text(
            f"jobs:\n  bucket: {url}\nsync:\n  store:\n    endpoint_url: {options.endpoint_url}\n"
        )
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(12 << 20))
    before = sha256_file(data)
    task = tmp_path / "task.yaml"
    task.write_text(f"name: changing\nfile_mounts:\n  ~/data.bin: {data}\nrun: 'true'\n")
    kubeconfig = kube_api.write_kubeconfig(tmp_path)
    read = base.Source.read

    def change_then_read(self: base.Source, n: int) -> bytes:
        if self.path == data and self.offset == 0:  # the upload has begun
            with data.open("r+b") as f:
                f.seek(-1024, os.SEEK_END)
                f.write(os.urandom(1024))
        return read(self, n)

    with monkeypatch.context() as mp:
        mp.setattr(base.Source, "read", change_then_read)
        code, _, err = run("launch", "-y", "-d", "--store", url, "--kubeconfig", kubeconfig, task)
    assert code == 1, err
    [line] = err.strip().splitlines()[-1:]
    assert line.startswith(f"error: {data} changed while it was being uploaded"), err
    assert kube_api.submitted == []
    store = open_store(url, StoreOptions(endpoint_url=_endpoint(khome)))
    after = sha256_file(data)
    assert store.stat(layout.file(before).key) is None
    assert store.stat(layout.file(after).key) is None
    code, _, err = run("launch", "-y", "-d", "--store", url, "--kubeconfig", kubeconfig, task)
    assert code == 0, err
    assert len(kube_api.submitted) == 1
    info = store.stat(layout.file(after).key)
    assert info is not None
    assert info.sha256 == after


def _endpoint(khome: Path) -> str | None:
    config = khome / "config.yaml"
    if not config.exists():
        return None
    store = yaml.safe_load(config.read_text())["sync"].get("store")
    return str(store["endpoint_url"]) if store else None


@pytest.fixture
def small_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """TMPDIR on a 2 MiB tmpfs: room for the launch's check, not for the layer."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:  # a permission, not an install step: skipped on CI too
        pytest.skip(f"cannot mount a tmpfs (root and CAP_SYS_ADMIN needed): {mounted.stderr!r}")
    monkeypatch.setenv("TMPDIR", str(where))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_a_tmpdir_that_fills_up_while_a_layer_is_built_is_one_line(
    tmp_path: Path, khome: Path, small_tmpdir: Path
) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "weights.bin").write_bytes(os.urandom(4 << 20))
    task = tmp_path / "task.yaml"
    task.write_text(f"name: full\nworkdir: {tmp_path / 'work'}\nrun: 'true'\n")
    code, _, err = run("launch", "--local", task)
    assert code == 1, err
    [line] = err.strip().splitlines()[-1:]
    assert line.startswith(f"error: cannot use the scratch directory {small_tmpdir}/konduktor-")
    assert "No space left on device" in line
    assert "Traceback" not in err
    assert list(small_tmpdir.rglob("*.tmp")) == []  # the partial layer is gone
    assert stored(khome) == []


# -- Konduktor's spellings -----------------------------------------------------------------------


def test_konduktors_flag_spellings_work(
    quickstart: Path, khome: Path, shared: Path, kube_api: KubeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--dryrun`, `-n`, `--workdir` (relative to here), `--detach-run`, and `--kubeconfig`
    given before the command, as Konduktor users type them."""
    monkeypatch.chdir(quickstart)
    code, _, err = run(
        "launch", "--dryrun", "-y", "-n", "renamed", "--workdir", "test_dir", "task.yaml"
    )
    assert code == 0, err
    assert re.search(r"^job renamed-[0-9a-f]{8}: ", err, re.M), err
    assert "~/konduktor_workdir/hello.txt" in err  # the workdir is test_dir now
    kubeconfig = kube_api.write_kubeconfig(quickstart.parent)
    code, out, err = run("--kubeconfig", kubeconfig, "launch", "--detach-run", "-y", "task.yaml")
    assert code == 0, err
    (request,) = kube_api.submitted
    assert request.method == "POST"
    assert request.body["metadata"]["name"] == out.strip()


def test_a_launch_gives_pods_the_config_and_the_users_secrets(
    quickstart: Path, shared: Path, kube_api: KubeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a Konduktor user has set up reaches the pod: kubernetes.pod_config, the
    jobset_config's labels, an env Secret's keys and a default Secret, found by Konduktor's
    labels in one request."""
    from test_secret_cli import HASH, konduktor_secret

    monkeypatch.setenv("KONDUKTOR_USER_ID", HASH)
    hf = konduktor_secret(kube_api, "hf", "env", {"HF_TOKEN": b"t"})
    netrc = konduktor_secret(kube_api, "netrc", "default", {".netrc": b"m"})
    konduktor_secret(kube_api, "theirs", "env", {"OTHER": b"x"}, owner="12345678")
    (shared / "config.yaml").write_text(
        "kubernetes:\n"
        "  pod_config:\n"
        "    spec:\n"
        "      imagePullSecrets: [{name: regcred}]\n"
        "      containers: [{env: [{name: HF_HOME, value: /data/hf}]}]\n"
        "  jobset_config: {metadata: {labels: {team: vision}}}\n"
    )
    (shared / "sync.yaml").write_text("sync:\n  shared_store: true\n")
    kubeconfig = kube_api.write_kubeconfig(quickstart.parent)
    code, _, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, quickstart / "task.yaml")
    assert code == 0, err
    lookups = [r for r in kube_api.requests if r.method == "GET"]
    assert len(lookups) == 1
    (request,) = kube_api.submitted
    body = request.body
    assert body["metadata"]["labels"]["team"] == "vision"
    pod = body["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HF_HOME"]["value"] == "/data/hf"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": hf, "key": "HF_TOKEN"}}
    assert "OTHER" not in env  # another user's
    assert env["KONDUKTOR_DEFAULT_SECRETS"]["value"] == "/konduktor/default-secrets"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["default-secret-netrc"]["secret"] == {"secretName": netrc}


def test_a_launch_says_what_gitignore_keeps_out(quickstart: Path, khome: Path) -> None:
    """Many gitignored untracked files: the launch says so, with the largest and the fix."""
    (quickstart / ".gitignore").write_text("cache/\n")
    commit_all(quickstart)
    (quickstart / "cache").mkdir()
    for i in range(150):
        (quickstart / "cache" / f"{i}.npy").write_bytes(b"x" * 100)
    code, _, err = run("launch", "--dry-run", quickstart / "task.yaml")
    assert code == 0, err
    assert "warning: " in err
    assert ".gitignore keeps 150 untracked file(s) (15.0 kB)" in err
    assert "the largest cache/" in err
    assert "re-include them with `!pattern` lines in .konduktorignore" in err
