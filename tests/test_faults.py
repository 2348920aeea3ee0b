"""The launcher under faults: a proxy that resets connections in front of the S3 server,
and signals at several points of a multipart upload and of the pre-push hook.

What must hold whatever happens: no traceback, no hang, no corrupt object, nothing
submitted after a failed upload, no pending multipart upload once ``store gc`` ran,
and no scratch file left behind (a SIGKILLed run's are swept by the next run).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from fault_proxy import FaultProxy, fault_proxy
from gitrepo_helpers import commit_all, git
from kube_server import KubeAPI

LAUNCHES = 30
RESET_RATE = 0.2
BIG = 65 << 20  # above the multipart threshold (64 MiB)
HANG = 180  # seconds after which a launch counts as hung


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """KONDUKTOR_HOME and TMPDIR of the launches, both inside the test's directory."""
    home, tmp = tmp_path / "khome", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("KONDUKTOR_HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.delenv("KONDUKTOR_CONFIG", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return dict(os.environ)


@pytest.fixture
def bucket(s3_store_factory: Any) -> str:
    url, _ = s3_store_factory()
    return str(url).removeprefix("s3://")


@pytest.fixture
def s3(s3_server: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with a large file, whose task also mounts a file; tests that change
    it take a copy (:func:`own_project`)."""
    tmp_path = tmp_path_factory.mktemp("faults")
    repo = tmp_path / "project"
    repo.mkdir()
    (repo / "train.py").write_text("print('training')\n")
    (repo / "weights.bin").write_bytes(os.urandom(BIG))
    (repo / "task.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "faults",
                "workdir": ".",
                "file_mounts": {"~/data.bin": str(tmp_path / "data.bin")},
                "run": "python train.py",
            }
        )
    )
    (tmp_path / "data.bin").write_bytes(b"small to start with\n")
    git(repo, "init", "-q")
    commit_all(repo)
    return repo


@pytest.fixture
def own_project(project: Path, tmp_path: Path) -> Path:
    shutil.copytree(project.parent, tmp_path / "own")
    repo = tmp_path / "own" / "project"
    task = repo / "task.yaml"
    task.write_text(task.read_text().replace(str(project.parent), str(repo.parent)))
    return repo


def configure(env: dict[str, str], bucket: str, endpoint: str) -> None:
    home = Path(env["KONDUKTOR_HOME"])
    (home / "config.yaml").write_text(yaml.safe_dump({"jobs": {"bucket": f"s3://{bucket}"}}))
    (home / "sync.yaml").write_text(yaml.safe_dump({"sync": {"store": {"endpoint_url": endpoint}}}))


def konduktor(*args: str | Path, cwd: Path | None = None) -> subprocess.Popen[str]:
    """The command, run from *cwd* (a task's relative paths start there)."""
    cmd = [sys.executable, "-m", "konduktor", *[str(a) for a in args]]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def finish(process: subprocess.Popen[str], timeout: float = HANG) -> tuple[int | None, str]:
    """(exit code, stderr); exit code None when it hung and had to be killed."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        return None, err
    return process.returncode, err


def pending(s3: Any, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def keys(s3: Any, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def corrupt(s3: Any, bucket: str) -> list[str]:
    """Objects whose bytes are not what their metadata (and, for a mounted file, its
    content-addressed key) says."""
    bad = []
    for key in keys(s3, bucket):
        got = s3.get_object(Bucket=bucket, Key=key)
        digest = hashlib.sha256(got["Body"].read()).hexdigest()
        claimed = got["Metadata"].get("sha256")
        leaf = key.rsplit("/", 1)[-1]
        if (claimed is not None and digest != claimed) or (
            key.startswith("v1/objects/") and "." not in leaf and leaf != digest
        ):
            bad.append(key)
    return bad


def scratch_left(env: dict[str, str]) -> list[str]:
    tmp = Path(env["TMPDIR"])
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())


def one_error_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.startswith(("error:", "unexpected"))]
    return len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err


def gc(env: dict[str, str]) -> None:
    process = konduktor("store", "gc", "--older-than", "1h")
    code, err = finish(process)
    assert code == 0, err


# -- resets ------------------------------------------------------------------------------


def test_launches_through_a_proxy_that_resets_connections(
    own_project: Path,
    env: dict[str, str],
    bucket: str,
    s3: Any,
    s3_server: str,
    kube_api: KubeAPI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = own_project
    data = project.parent / "data.bin"
    kubeconfig = kube_api.write_kubeconfig(tmp_path)
    outcomes: Counter[str] = Counter()
    with fault_proxy(s3_server, RESET_RATE, seed=1) as proxy:
        configure(env, bucket, proxy.url)
        for i in range(LAUNCHES):
            (project / "train.py").write_text(f"print('training, round {i}')\n" + "#" * 4096 * i)
            data.write_bytes(os.urandom(1 << 20))
            if i % 6 == 5:
                (project / "weights.bin").write_bytes(os.urandom(BIG))
            submitted = len(kube_api.submitted)
            launch = konduktor(
                "launch", "-y", "-d", "--kubeconfig", kubeconfig, project / "task.yaml", cwd=project
            )
            code, err = finish(launch)
            outcomes[_outcome(code, err)] += 1
            if code != 0:  # nothing is submitted after a failed upload
                assert len(kube_api.submitted) == submitted, err
        resets = {k: proxy.counts[k] for k in ("connections", "connect", "request", "response")}
    configure(env, bucket, s3_server)
    gc(env)
    figures = {
        **outcomes,
        "corrupt objects": len(corrupt(s3, bucket)),
        "pending uploads after gc": len(pending(s3, bucket)),
        "scratch files left": len(scratch_left(env)),
        **resets,
    }
    with capsys.disabled():
        print(f"\n{LAUNCHES} launches at {RESET_RATE:.0%} resets: {figures}")
    assert outcomes["traceback"] == outcomes["hang"] == outcomes["other"] == 0, figures
    assert outcomes["success"] + outcomes["clean failure"] == LAUNCHES
    assert figures["corrupt objects"] == figures["pending uploads after gc"] == 0, figures
    assert figures["scratch files left"] == 0, figures
    assert all(resets[kind] for kind in ("connect", "request", "response")), resets


def _outcome(code: int | None, err: str) -> str:
    if code is None:
        return "hang"
    if "Traceback" in err or code == 3:
        return "traceback"
    if code == 0:
        return "success"
    return "clean failure" if code == 1 and one_error_line(err) else "other"


# -- signals -----------------------------------------------------------------------------


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


@pytest.fixture
def slow_store(env: dict[str, str], bucket: str, s3_server: str) -> Iterator[FaultProxy]:
    """The store behind a proxy that carries 16 MiB/s and resets nothing."""
    with fault_proxy(s3_server, 0.0) as proxy:
        proxy.bandwidth = 16 << 20
        configure(env, bucket, proxy.url)
        yield proxy


def parts_sent(s3: Any, bucket: str, env: dict[str, str]) -> bool:
    for upload in pending(s3, bucket):
        parts = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        if parts.get("Parts"):
            return True
    return False


POINTS: dict[str, Callable[[Any, str, dict[str, str]], bool]] = {
    "while the layers are built": lambda s3, bucket, env: bool(scratch_left(env)),
    "once the multipart upload started": lambda s3, bucket, env: bool(pending(s3, bucket)),
    "after parts were sent": parts_sent,
}


@pytest.mark.parametrize(
    ("signum", "point"),
    [
        *[(s, p) for s in (signal.SIGTERM, signal.SIGINT) for p in POINTS],
        (signal.SIGHUP, "after parts were sent"),
    ],
    ids=lambda value: value.name if isinstance(value, signal.Signals) else value,
)
def test_a_signal_mid_upload_leaves_nothing_behind(
    project: Path,
    env: dict[str, str],
    bucket: str,
    s3: Any,
    slow_store: FaultProxy,
    tmp_path: Path,
    point: str,
    signum: int,
) -> None:
    launch = konduktor(
        "launch", "--dry-run", project / "task.yaml", cwd=project
    )  # warms the hash cache
    assert finish(launch)[0] == 0
    launch = konduktor("launch", "-y", "--local", "-d", project / "task.yaml", cwd=project)
    wait_for(lambda: POINTS[point](s3, bucket, env), point)
    launch.send_signal(signum)
    code, err = finish(launch, timeout=60)
    assert code == 128 + signum if signum != signal.SIGINT else code == 130, err
    assert err.rstrip().splitlines()[-1].startswith("interrupted"), err
    assert "Traceback" not in err
    assert pending(s3, bucket) == []
    assert scratch_left(env) == []
    assert not any(key.startswith("v1/plans/") for key in keys(s3, bucket))


@pytest.mark.parametrize("point", list(POINTS)[1:])
def test_after_a_sigkill_the_next_run_and_gc_clean_up(
    project: Path,
    env: dict[str, str],
    bucket: str,
    s3: Any,
    slow_store: FaultProxy,
    s3_server: str,
    tmp_path: Path,
    point: str,
) -> None:
    launch = konduktor("launch", "-y", "--local", "-d", project / "task.yaml", cwd=project)
    wait_for(lambda: POINTS[point](s3, bucket, env), point)
    launch.kill()
    finish(launch)
    assert scratch_left(env)  # killed: it could not clean up
    configure(env, bucket, s3_server)
    again = konduktor("launch", "-y", "--local", "-d", project / "task.yaml", cwd=project)
    code, err = finish(again)
    assert code == 0, err
    gc(env)
    assert pending(s3, bucket) == []
    assert scratch_left(env) == []
    assert corrupt(s3, bucket) == []


def test_the_hooks_timeout_aborts_the_upload_and_cleans_up(
    env: dict[str, str], bucket: str, s3: Any, slow_store: FaultProxy, tmp_path: Path
) -> None:
    """The pre-push hook gives up mid-upload: the multipart upload is aborted and the
    layer built for it removed before the hook exits."""
    repo = tmp_path / "pushed"
    repo.mkdir()
    (repo / "weights.bin").write_bytes(os.urandom(BIG))
    git(repo, "init", "-q")
    commit_all(repo)
    config = Path(env["KONDUKTOR_HOME"]) / "sync.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["hooks"] = {"timeout": 2}
    config.write_text(yaml.safe_dump(settings))
    sha = git(repo, "rev-parse", "HEAD").decode().strip()
    hook = subprocess.run(
        [sys.executable, "-m", "konduktor", "hooks", "run", "origin", "url"],
        cwd=repo,
        input=f"refs/heads/main {sha} refs/heads/main {'0' * 40}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert hook.returncode == 0, hook.stderr
    assert "gave up after 2 s (hooks.timeout)" in hook.stderr
    assert pending(s3, bucket) == []
    assert scratch_left(env) == []


# -- racing launches ---------------------------------------------------------------------

RACERS = 8


def test_racing_launches_of_one_commit_send_its_base_once(
    env: dict[str, str],
    bucket: str,
    s3_server: str,
    kube_api: KubeAPI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """8 launches of one commit at once: all succeed, and the base layer's bytes reach
    the server once (counted by a proxy in front of it), not 8 times."""
    repo = tmp_path / "racers"
    repo.mkdir()
    (repo / "weights.bin").write_bytes(os.urandom(16 << 20))
    (repo / "task.yaml").write_text("name: racers\nworkdir: .\nrun: ls\n")
    git(repo, "init", "-q")
    commit_all(repo)
    kubeconfig = kube_api.write_kubeconfig(tmp_path)
    with fault_proxy(s3_server, 0.0) as proxy:
        configure(env, bucket, proxy.url)
        racers = [
            konduktor(
                "launch", "-y", "-d", "--kubeconfig", kubeconfig, repo / "task.yaml", cwd=repo
            )
            for _ in range(RACERS)
        ]
        results = [finish(racer) for racer in racers]
        sent = proxy.counts["request bytes"]
    base = 16 << 20
    with capsys.disabled():
        print(f"\n{RACERS} racing launches: {sent / base:.2f} times the base's bytes went up")
    assert [code for code, _ in results] == [0] * RACERS, results
    assert len(kube_api.submitted) == RACERS
    assert base <= sent < 1.5 * base, f"{sent / base:.2f} times the base layer went up"
