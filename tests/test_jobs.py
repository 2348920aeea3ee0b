"""Following and managing jobs: `launch` follows, `status`, `logs`, `down`, `stop`, `start`.

The real kubernetes client talks to tests/kube_server.py (no real API server runs here);
a scripted timeline (:meth:`KubeAPI.play`) moves a job through queued, pending, running
and its end, as the JobSet controller and the kubelet would, so that following, exit
codes and Ctrl-C are tested end to end, by the requests the client sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from kube_server import KubeAPI, Step
from test_cli import run

from konduktor import pod
from konduktor.errors import JobError
from konduktor.k8s import jobs, jobset, submit
from konduktor.task import load

ME = jobset.Owner("alice", "alice-0a1b")
BOB = jobset.Owner("bob", "bob-2c3d")
JOBSETS = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/team-a/jobsets"
NO_GPU = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
SYNC_FAILED = "konduktor: sync failed: layer v1/objects/ab/abab.tar.zst is corrupt (sha256 differs)"


@pytest.fixture(autouse=True)
def alice(monkeypatch: pytest.MonkeyPatch, konduktor_home_sandbox: Path) -> None:
    """Alice runs the tests; polls are fast; the file:// store is shared with the pods."""
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.setattr(jobs, "POLL_SECONDS", 0.05)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    (konduktor_home_sandbox / "sync.yaml").write_text("sync:\n  shared_store: true\n")


@pytest.fixture
def task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # launched from the task's folder: workdir: work is there
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "train.py").write_text("print('hi')\n")
    path = tmp_path / "task.yaml"
    path.write_text(
        "name: train\nnum_nodes: 2\nworkdir: work\n"
        "resources:\n  accelerators: H100:8\n  labels:\n    kueue.x-k8s.io/queue-name: q\n"
        "run: python train.py\n"
    )
    return path


def submitted(
    cluster: submit.Cluster,
    task: Path,
    name: str,
    owner: jobset.Owner = ME,
    provenance: dict[str, str] | None = None,
) -> None:
    """A JobSet as `launch` renders it, created on the server."""
    manifest = jobset.render(
        load(task),
        name=name,
        command="true",
        secret_names=[],
        provenance=provenance or {"git-commit": "c0ffee" * 6 + "abcd", "git-dirty": "true"},
        owner=owner,
    )
    submit.create_jobset(cluster, manifest)


def changes(api: KubeAPI) -> list[tuple[str, str]]:
    """The requests that changed something (their paths without the query)."""
    writes = ("PATCH", "DELETE", "PUT")
    return [(r.method, r.path.split("?")[0]) for r in api.requests if r.method in writes]


def paths(api: KubeAPI) -> list[str]:
    return [urllib.parse.unquote(r.path) for r in api.requests]


# -- the library ------------------------------------------------------------------------------


def test_follow_shows_the_wait_streams_the_log_in_order_and_ends_with_the_code(
    kube_api: KubeAPI, cluster: submit.Cluster, task: Path
) -> None:
    kube_api.play(
        [
            Step("Queued", seen=True),
            Step("Pending", "Unschedulable", NO_GPU, seen=True),
            Step("Running", logs=["one {rank}", "two {rank}"]),
            Step("Running", logs=["three {rank}"], after=0.3),
            Step("Failed", exit_code=3, logs=["four {rank}"], message="boom"),
        ]
    )  # fmt: skip
    submitted(cluster, task, "train-00000001")
    states: list[jobs.State] = []
    out: list[bytes] = []
    final = jobs.follow(cluster, "train-00000001", on_state=states.append, on_output=out.append)
    assert b"".join(out) == b"one 0\ntwo 0\nthree 0\nfour 0\n"
    assert (final.phase, final.exit_code, final.detail) == ("failed", 3, "boom")
    seen = [(s.phase, s.detail) for s in states]
    assert ("queued", "by Kueue in queue q") in seen
    assert ("pending", f"Unschedulable: {NO_GPU}") in seen
    assert seen.index(("queued", "by Kueue in queue q")) < [p for p, _ in seen].index("running")
    logs = [
        p for p in paths(kube_api) if p.endswith("/log?container=konduktor-container&follow=true")
    ]
    (streamed,) = logs  # one stream, from the first line to the last
    assert streamed.startswith("/api/v1/namespaces/team-a/pods/train-00000001-workers-0-0-")
    assert changes(kube_api) == []


def test_follow_another_rank(kube_api: KubeAPI, cluster: submit.Cluster, task: Path) -> None:
    kube_api.play([Step("Running", logs=["rank {rank}"]), Step("Succeeded", logs=["done {rank}"])])
    submitted(cluster, task, "train-00000002")
    out: list[bytes] = []
    final = jobs.follow(
        cluster, "train-00000002", rank=1, on_state=lambda s: None, on_output=out.append
    )
    assert b"".join(out) == b"rank 1\ndone 1\n"
    assert final.exit_code == 0


def test_a_log_stream_that_goes_quiet_is_reopened_without_repeating(
    kube_api: KubeAPI, cluster: submit.Cluster, task: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's read timeout ends a silent stream; following goes on from there."""
    monkeypatch.setattr(submit, "TIMEOUT", (10.0, 0.3))
    kube_api.play(
        [
            Step("Running", logs=["before"]),
            Step("Running", logs=["after"], after=1.2),
            Step("Succeeded", after=0.2),
        ]
    )
    submitted(cluster, task, "train-0000000e")
    out: list[bytes] = []
    final = jobs.follow(cluster, "train-0000000e", on_state=lambda s: None, on_output=out.append)
    assert (b"".join(out), final.exit_code) == (b"before\nafter\n", 0)
    streams = [p for p in paths(kube_api) if "/log?" in p]
    assert len(streams) >= 2
    assert "tailLines" not in streams[0]
    assert all("tailLines=0" in p for p in streams[1:])


def _ended(code: int) -> dict[str, Any]:
    container = {"name": jobset.CONTAINER, "state": {"terminated": {"exitCode": code}}}
    return {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [container]}


def test_a_pod_the_jobset_replaced_is_streamed_from_its_start(
    kube_api: KubeAPI, cluster: submit.Cluster, task: Path
) -> None:
    submitted(cluster, task, "train-0000000f")
    first = kube_api.add_pod("train-0000000f", 0)
    kube_api.log(first, "first try\n")
    kube_api.set_pod(first, _ended(1))  # rank 1 has no pod yet: not the end
    out: list[bytes] = []

    def replace_it(chunk: bytes) -> None:
        out.append(chunk)
        if len(out) == 1:  # the JobSet restarts its jobs: a new pod of rank 0
            del kube_api.objects[("pods", "team-a", first)]
            second = kube_api.add_pod("train-0000000f", 0, suffix="y")
            kube_api.log(second, "second try\n")
            kube_api.set_pod(second, _ended(0))
            kube_api.set_jobset("train-0000000f", status={"terminalState": "Completed"})

    final = jobs.follow(cluster, "train-0000000f", on_state=lambda s: None, on_output=replace_it)
    assert b"".join(out) == b"first try\nsecond try\n"
    assert final.exit_code == 0


def test_a_job_deleted_while_followed_is_a_job_error(
    kube_api: KubeAPI, cluster: submit.Cluster, task: Path
) -> None:
    kube_api.play([Step("Pending", "ErrImagePull", "no such image", seen=True)])
    submitted(cluster, task, "train-00000003")

    def delete_when_pending(state: jobs.State) -> None:
        if state.detail.startswith("ErrImagePull"):
            jobs.delete(cluster, "train-00000003")

    with pytest.raises(JobError, match="train-00000003 was deleted while it was followed"):
        jobs.follow(cluster, "train-00000003", on_state=delete_when_pending, on_output=print)


def _pod(state: dict[str, Any], phase: str = "Pending", rank: int = 0) -> dict[str, Any]:
    container = {"name": jobset.CONTAINER, "state": state}
    return {
        "metadata": {"name": f"j-workers-0-{rank}-a", "labels": {jobs.COMPLETION_INDEX: str(rank)}},
        "status": {"phase": phase, "containerStatuses": [container]},
    }


ONE_NODE = {"metadata": {}, "spec": {"replicatedJobs": [{"template": {"spec": {}}}]}}


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([], ("pending", "waiting for the pod of rank 0", None)),
        ([_pod({"waiting": {"reason": "ContainerCreating"}})], ("pending", "starting", None)),
        (
            [_pod({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling x"}})],
            ("pending", "ImagePullBackOff: Back-off pulling x", None),
        ),
        ([_pod({"running": {}}, "Running")], ("running", "", None)),
        ([_pod({"terminated": {"exitCode": 0}}, "Succeeded")], ("succeeded", "", 0)),
        (
            [_pod({"terminated": {"exitCode": 97, "message": SYNC_FAILED + "\n"}}, "Failed")],
            ("failed", SYNC_FAILED, pod.SYNC_FAILED),
        ),
        (
            [_pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, "Failed")],
            ("failed", "OOMKilled", 137),
        ),
        (  # the return-value envelope is not a reason
            [
                _pod(
                    {"terminated": {"exitCode": 3, "reason": "Error", "message": '{"exit":3}'}},
                    "Failed",
                )
            ],
            ("failed", "Error", 3),
        ),
    ],
    ids=[
        "no-pod",
        "creating",
        "image-pull",
        "running",
        "succeeded",
        "sync-failed",
        "oom",
        "result-envelope",
    ],
)
def test_the_state_of_a_job(
    pods: list[dict[str, Any]], expected: tuple[str, str, int | None]
) -> None:
    now = jobs.state(ONE_NODE, pods)
    assert (now.phase, now.detail, now.exit_code) == expected


def test_a_stopped_job_says_who_stopped_it() -> None:
    stopped = {"metadata": {"labels": {jobs.STOPPED_BY: "alice", jobs.QUEUE_LABEL: "q"}}}
    now = jobs.state({**stopped, "spec": {"suspend": True}}, [])
    assert (now.phase, now.detail) == ("stopped", "by alice; konduktor start resumes it")


def test_my_jobs_are_those_of_my_username_label(
    kube_api: KubeAPI, cluster: submit.Cluster, task: Path
) -> None:
    submitted(cluster, task, "train-0000000a")
    submitted(cluster, task, "train-0000000b", owner=BOB)
    kube_api.jobset("hand-made")
    assert [j.name for j in jobs.list_jobs(cluster, user="alice")] == ["train-0000000a"]
    everyone = {j.name: j.user for j in jobs.list_jobs(cluster, user=None)}
    assert everyone == {"train-0000000a": "alice", "train-0000000b": "bob"}
    lists = [p for p in paths(kube_api) if p.startswith(JOBSETS + "?")]
    assert lists == [
        f"{JOBSETS}?labelSelector=trainy.ai/username=alice",
        f"{JOBSETS}?labelSelector=trainy.ai/username",
    ]


def test_prefixes_resolve_when_unambiguous(
    kube_api: KubeAPI, cluster: submit.Cluster, task: Path
) -> None:
    for name in ("train-aa000001", "train-aa000002", "train-bb000003"):
        submitted(cluster, task, name)
    kube_api.jobset("hand-made")
    mine = jobs.list_jobs(cluster, user="alice")
    assert jobs.resolve(cluster, "train-b", mine).name == "train-bb000003"
    assert jobs.resolve(cluster, "train-aa000002", mine).name == "train-aa000002"
    with pytest.raises(
        JobError, match=r"'train-a' matches 2 jobs .*: train-aa000001, train-aa000002"
    ):
        jobs.resolve(cluster, "train-a", mine)
    with pytest.raises(JobError, match=r"no job named 'nope' or starting with it .*yours: train-"):
        jobs.resolve(cluster, "nope", mine)
    with pytest.raises(JobError, match=r"JobSet hand-made .* was not made by konduktor"):
        jobs.resolve(cluster, "hand-made", mine)


def test_stop_and_start_patch_suspend(
    kube_api: KubeAPI, cluster: submit.Cluster, task: Path
) -> None:
    submitted(cluster, task, "train-0000000c")
    jobs.suspend(cluster, "train-0000000c", by="alice")
    stored = kube_api.objects[("jobsets", "team-a", "train-0000000c")]
    assert stored["spec"]["suspend"] is True
    assert stored["metadata"]["labels"][jobs.STOPPED_BY] == "alice"
    jobs.resume(cluster, "train-0000000c")
    assert stored["spec"]["suspend"] is False
    assert jobs.STOPPED_BY not in stored["metadata"]["labels"]
    patches = [r for r in kube_api.requests if r.method == "PATCH"]
    assert [r.body["spec"] for r in patches] == [{"suspend": True}, {"suspend": False}]
    assert {r.headers["content-type"] for r in patches} == {"application/merge-patch+json"}


# -- launch follows the job -------------------------------------------------------------------


def test_launch_follows_the_job_and_exits_with_its_code(
    kube_api: KubeAPI, kubeconfig: Path, task: Path
) -> None:
    kube_api.play(
        [
            Step("Pending", "Unschedulable", NO_GPU, seen=True),
            Step("Running", logs=["epoch 1", "epoch 2"]),
            Step("Failed", exit_code=3, logs=["epoch 3"]),
        ]
    )  # fmt: skip
    code, out, err = run("launch", "-y", "--kubeconfig", kubeconfig, task)
    assert code == 3, err
    assert out == "epoch 1\nepoch 2\nepoch 3\n"
    assert f"is pending: Unschedulable: {NO_GPU}" in err
    assert err.splitlines()[-1].endswith(
        "exited with code 3 (the task's own code; konduktor exits with it)"
    )
    assert "Traceback" not in err
    first, *rest = [r.method for r in kube_api.submitted]
    assert (first, set(rest)) == ("POST", {"GET"})  # following touches nothing
    streams = [p for p in paths(kube_api) if "/log?" in p]
    assert len(streams) == 1
    assert "follow=true" in streams[0]


def test_a_job_deleted_while_it_is_followed_ends_the_launch_with_one_line(
    kube_api: KubeAPI, kubeconfig: Path, task: Path
) -> None:
    kube_api.play(
        [Step("Pending", "ErrImagePull", "pull access denied", seen=True), Step("Deleted")]
    )
    code, _, err = run("launch", "-y", "--kubeconfig", kubeconfig, task)
    assert code == 1, err
    assert "is pending: ErrImagePull: pull access denied" in err
    last = err.splitlines()[-1]
    assert last.startswith("error: job train-")
    assert "was deleted while it was followed" in last


def test_launch_of_a_job_that_succeeds_exits_0(
    kube_api: KubeAPI, kubeconfig: Path, task: Path
) -> None:
    kube_api.play([Step("Running", logs=["hello"]), Step("Succeeded", logs=["bye"])])
    code, out, err = run("launch", "-y", "--kubeconfig", kubeconfig, task)
    assert (code, out) == (0, "hello\nbye\n"), err
    assert err.splitlines()[-1].endswith("exited with code 0")


def test_a_sync_failure_shows_the_pods_reason_and_exits_97(
    kube_api: KubeAPI, kubeconfig: Path, task: Path
) -> None:
    kube_api.play([Step("Running"), Step("Failed", exit_code=97, message=SYNC_FAILED)])
    code, _, err = run("launch", "-y", "--kubeconfig", kubeconfig, task)
    assert code == pod.SYNC_FAILED, err
    lines = err.splitlines()
    assert lines[-2] == SYNC_FAILED
    assert "exited with code 97 (its files did not sync" in lines[-1]


def test_launch_detached_submits_and_prints_the_name(
    kube_api: KubeAPI, kubeconfig: Path, task: Path
) -> None:
    code, out, err = run("launch", "-y", "-d", "--kubeconfig", kubeconfig, task)
    assert code == 0, err
    assert f"konduktor logs {out.strip()}" in err
    assert [r.method for r in kube_api.submitted] == ["POST"]


def test_ctrl_c_while_following_leaves_the_job_alone(
    kube_api: KubeAPI, kubeconfig: Path, task: Path
) -> None:
    kube_api.play([Step("Running", logs=["step 1"])])  # and it runs on
    cmd = [sys.executable, "-m", "konduktor", "launch", "-y", "--kubeconfig", str(kubeconfig)]
    with subprocess.Popen(
        [*cmd, str(task)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"step 1\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.decode().splitlines()[-1]
    assert last.startswith("stopped following; job train-")
    assert "keeps running: `konduktor logs train-" in last
    assert changes(kube_api) == []
    assert [key for key in kube_api.objects if key[0] == "jobsets"]


# -- status, logs, down, stop, start ----------------------------------------------------------


def test_status_lists_exactly_my_jobs(
    kube_api: KubeAPI, cluster: submit.Cluster, kubeconfig: Path, task: Path
) -> None:
    submitted(cluster, task, "train-mine0001")
    submitted(cluster, task, "train-bobs0001", owner=BOB)
    kube_api.jobset("hand-made")
    kube_api.play([Step("Failed", exit_code=97, message=SYNC_FAILED)], job="train-mine0001")
    kube_api.wait_played()
    code, out, err = run("status", "--kubeconfig", kubeconfig)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["NAME", "WHERE", "STATE"]
    assert len(rows) == 1
    assert rows[0].split()[:7] == [
        "train-mine0001", "team-a", "failed", "(97)", rows[0].split()[4], "2", "H100:8",
    ]  # fmt: skip
    assert "c0ffeec0ffee+dirty" in rows[0]
    assert rows[0].endswith(SYNC_FAILED)
    code, out, _ = run("status", "--all-users", "--kubeconfig", kubeconfig)
    assert sorted(line.split()[0] for line in out.splitlines()[1:]) == [
        "train-bobs0001",
        "train-mine0001",
    ]


def test_status_as_json(
    kube_api: KubeAPI, cluster: submit.Cluster, kubeconfig: Path, task: Path
) -> None:
    submitted(cluster, task, "train-json0001")
    code, out, err = run("status", "-o", "json", "--kubeconfig", kubeconfig, "train-js")
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["name"] == "train-json0001"
    assert (row["state"], row["why"]) == ("pending", "waiting for the pod of rank 0")
    assert (row["nodes"], row["accelerators"], row["user"]) == (2, "H100:8", "alice")
    assert (row["commit"], row["local"], row["context"]) == ("c0ffeec0ffee+dirty", False, "team-a")


def test_down_deletes_only_what_it_names(
    kube_api: KubeAPI, cluster: submit.Cluster, kubeconfig: Path, task: Path
) -> None:
    for name in ("train-down0001", "train-keep0001"):
        submitted(cluster, task, name)
    kube_api.play([Step("Running")], job="train-down0001")
    kube_api.wait_played()
    code, _, err = run("down", "-y", "--kubeconfig", kubeconfig, "train-d")
    assert code == 0, err
    assert "deleted JobSet train-down0001" in err
    assert "launch plan stays in the store until `konduktor store gc`" in err
    assert changes(kube_api) == [("DELETE", f"{JOBSETS}/train-down0001")]
    assert sorted(k[2] for k in kube_api.objects) == ["train-keep0001"]  # its pods went too


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("down", "-y", "nope"), ["no job named 'nope'"]),
        (("down", "-y", "train-"), ["'train-' matches 2 jobs", "train-amb00001", "train-amb00002"]),
        (("down", "-y", "hand-made"), ["hand-made", "not made by konduktor"]),
        (("stop", "nope"), ["no job named 'nope'"]),
        (("logs", "hand-made"), ["not made by konduktor"]),
        (("status", "train-"), ["matches 2 jobs"]),
    ],
    ids=[
        "unknown",
        "ambiguous",
        "not-konduktors",
        "stop-unknown",
        "logs-foreign",
        "status-ambiguous",
    ],
)
def test_bad_job_names_are_one_line_and_exit_1(
    kube_api: KubeAPI,
    cluster: submit.Cluster,
    kubeconfig: Path,
    task: Path,
    args: tuple[str, ...],
    words: list[str],
) -> None:
    submitted(cluster, task, "train-amb00001")
    submitted(cluster, task, "train-amb00002")
    kube_api.jobset("hand-made")
    code, _, err = run(*args, "--kubeconfig", kubeconfig)
    assert code == 1, err
    (line,) = err.splitlines()
    assert line.startswith("error: ")
    for word in words:
        assert word in line
    assert changes(kube_api) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("status",), ["not allowed to list jobsets.jobset.x-k8s.io", "RBAC verb 'list'"]),
        (("down", "-y", "train-"), ["not allowed to list jobsets", "in namespace team-a"]),
    ],
    ids=["status", "down"],
)
def test_a_refused_request_is_one_line(
    kube_api: KubeAPI, kubeconfig: Path, args: tuple[str, ...], words: list[str]
) -> None:
    kube_api.fail_next(403, "jobsets is forbidden")
    code, _, err = run(*args, "--kubeconfig", kubeconfig)
    assert code == 1, err
    (line,) = err.splitlines()
    assert line.startswith("error: ")
    for word in words:
        assert word in line


def test_stop_and_start_from_the_command_line(
    kube_api: KubeAPI, cluster: submit.Cluster, kubeconfig: Path, task: Path
) -> None:
    submitted(cluster, task, "train-stop0001")
    code, _, err = run("stop", "--kubeconfig", kubeconfig, "train-st")
    assert (code, err) == (0, "stopped job train-stop0001\n")
    code, out, _ = run("status", "--kubeconfig", kubeconfig)
    assert "stopped" in out
    assert "by alice" in out
    code, _, err = run("start", "--kubeconfig", kubeconfig, "train-stop0001")
    assert (code, err) == (0, "started job train-stop0001\n")
    assert [r.body["spec"]["suspend"] for r in kube_api.requests if r.method == "PATCH"] == [
        True,
        False,
    ]


def test_logs_without_following_and_a_bad_rank(
    kube_api: KubeAPI, cluster: submit.Cluster, kubeconfig: Path, task: Path
) -> None:
    submitted(cluster, task, "train-logs0001")
    kube_api.play([Step("Running", logs=["a", "b", "c"])], job="train-logs0001")
    kube_api.wait_played()
    code, out, err = run(
        "logs", "--no-follow", "--tail", "2", "--kubeconfig", kubeconfig, "train-l"
    )
    assert (code, out) == (0, "b\nc\n"), err
    assert any("tailLines=2" in p and "follow=false" in p for p in paths(kube_api))
    code, _, err = run("logs", "--rank", "2", "--kubeconfig", kubeconfig, "train-l")
    assert code == 2
    assert "job train-logs0001 has 2 node(s): ranks 0 to 1" in err


def test_logs_follows_to_the_end(
    kube_api: KubeAPI, cluster: submit.Cluster, kubeconfig: Path, task: Path
) -> None:
    submitted(cluster, task, "train-logs0002")
    kube_api.play(
        [Step("Running", logs=["x"]), Step("Failed", exit_code=2, logs=["y"], after=0.3)],
        job="train-logs0002",
    )
    code, out, err = run("logs", "--kubeconfig", kubeconfig, "train-logs0002")
    assert (code, out) == (2, "x\ny\n"), err


# -- local runs are jobs too ------------------------------------------------------------------


def test_a_local_run_is_listed_and_its_log_read(tmp_path: Path) -> None:
    task = tmp_path / "task.yaml"
    task.write_text("name: here\nrun: echo out; echo err >&2; exit 4\n")
    cmd = [sys.executable, "-m", "konduktor", "launch", "--local", "-y", str(task)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 4, done.stderr
    assert done.stdout == "out\n"  # the terminal still gets each stream
    code, out, err = run("status", "-o", "json")
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["name"].startswith("here-")
    assert (row["local"], row["state"], row["exit_code"]) == (True, "failed", 4)
    code, out, err = run("logs", row["name"][:7])
    assert code == 4, err
    assert set(out.splitlines()) == {"out", "err"}
    code, _, err = run("down", "-y", row["name"])
    assert code == 0, err
    code, out, _ = run("status", "-o", "json")
    assert out == ""


def test_a_detached_local_run_is_running_then_done(tmp_path: Path) -> None:
    task = tmp_path / "task.yaml"
    task.write_text("name: bg\nrun: echo started; sleep 1; echo finished\n")
    cmd = [sys.executable, "-m", "konduktor", "launch", "--local", "-d", "-y", str(task)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    code, out, _ = run("status", "-o", "json")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["state"] == "running"
    code, out, err = run("logs", row["name"])  # follows it to its end
    assert code == 0, err
    assert out.splitlines()[-1] == "finished"
    deadline = time.monotonic() + 30
    while json.loads(run("status", "-o", "json")[1])["state"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert os.environ.get("KUBECONFIG") is None
