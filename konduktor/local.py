"""The local target (``launch --local``): the pod's startup script run on this machine.

Each run gets a sandbox HOME under ``~/.konduktor/local/<job>``; the newest
:data:`LOCAL_KEEP` are kept. The script is the one a pod runs, rendered from the
same launch plan, with the cluster's variables set for one node.

A run is a job as `status`, `logs` and `down` see it: its output goes to
``<HOME>/run.log`` (a foreground run's also to the terminal, as it comes), its process
id to ``<HOME>/.konduktor/pid`` and, once it ends, its exit code to
``<HOME>/.konduktor/exit-code``; the startup script's one-line sync (or ``setup:``)
failure is in ``<HOME>/.konduktor/termination-log``, as a pod's termination message.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from konduktor import pod
from konduktor.cache import konduktor_home
from konduktor.plan import LaunchPlan
from konduktor.task import Task

LOCAL_KEEP = 10  # sandbox HOMEs of local runs kept; older ones are deleted


def home(job: str) -> Path:
    return konduktor_home() / "local" / job


def log(job: str) -> Path:
    """Where a run's output goes."""
    return home(job) / "run.log"


def _marker(job: str, name: str) -> Path:
    return home(job) / ".konduktor" / name


@dataclass(frozen=True)
class Run:
    """A local run, as `status` shows it."""

    name: str
    created: datetime.datetime
    phase: str  # running, succeeded, failed, or ended (no exit code was recorded)
    exit_code: int | None
    message: str  # the sync or setup: failure's line, if any
    log: Path


def runs() -> list[Run]:
    """The local runs kept, newest first."""
    try:
        homes = [p for p in (konduktor_home() / "local").iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
    found = [describe(p.name) for p in homes]
    return sorted(found, key=lambda run: run.created, reverse=True)


def describe(job: str) -> Run:
    script = _marker(job, "startup.sh")  # written as the run starts, never again
    started = (script if script.exists() else home(job)).stat().st_mtime
    created = datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
    code = _read_int(_marker(job, "exit-code"))
    pid = _read_int(_marker(job, "pid"))
    if code is not None:
        phase = "succeeded" if code == 0 else "failed"
    else:
        phase = "running" if pid is not None and _alive(pid) else "ended"
    termination = _marker(job, "termination-log")
    message = termination.read_text(errors="replace").strip() if termination.exists() else ""
    return Run(job, created, phase, code, " ".join(message.split()), log(job))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove(job: str) -> bool:
    """End the run *job* if it is running, and delete its sandbox HOME; False if none."""
    if not home(job).is_dir():
        return False
    pid = _read_int(_marker(job, "pid"))
    if pid is not None and _alive(pid) and _read_int(_marker(job, "exit-code")) is None:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:  # a detached run leads its own process group
                os.killpg(pid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
    shutil.rmtree(home(job), ignore_errors=True)
    return True


def read(job: str, *, follow: bool = False, poll: float = 0.5) -> Iterator[bytes]:
    """The run's log; with *follow*, what it writes until it ends."""
    import time

    with log(job).open("rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            if not follow or describe(job).phase != "running":
                return
            time.sleep(poll)


def _prune_local(keep: int) -> None:
    """Delete all but the *keep* newest sandbox HOMEs: each holds a copy of its files."""
    try:
        homes = sorted((konduktor_home() / "local").iterdir(), key=lambda p: p.stat().st_mtime)
    except FileNotFoundError:
        return
    for old in homes[: max(len(homes) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def run(plan: LaunchPlan, task: Task, *, detach: bool = False, quiet: bool = False) -> int:
    """Run the startup script of *plan* with ``sh`` in a sandbox HOME (the last
    :data:`LOCAL_KEEP` are kept); return its exit code
    (with *detach*, start it in the background, logging to ``<HOME>/run.log``, and return 0;
    with *quiet*, the script reports only failures)."""
    _prune_local(LOCAL_KEEP - 1)
    sandbox = home(plan.job)
    sandbox.mkdir(parents=True, exist_ok=True)
    script = sandbox / ".konduktor" / "startup.sh"
    script.parent.mkdir(exist_ok=True)
    script.write_text(pod.render(plan))
    env = _environment(sandbox, task)
    if quiet:
        env["KONDUKTOR_QUIET"] = "1"
    exit_file, pid_file = _marker(plan.job, "exit-code"), _marker(plan.job, "pid")
    if detach:  # an outer sh starts it in the background and returns: nothing to wait for
        background = '( sh "$1"; echo $? > "$2" ) & echo $! > "$3"'
        with log(plan.job).open("ab") as out:
            subprocess.run(
                ["sh", "-c", background, "sh", str(script), str(exit_file), str(pid_file)],
                cwd=sandbox,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                check=True,
            )
        return 0
    sys.stdout.flush()
    env.setdefault("PYTHONUNBUFFERED", "1")  # through the tee, as live as on a terminal
    code = _tee(["sh", str(script)], sandbox, env, pid_file)
    exit_file.write_text(f"{code}\n")
    return code


def _tee(cmd: list[str], cwd: Path, env: dict[str, str], pid_file: Path) -> int:
    """Run *cmd*, its stdout and stderr going where ours go and both into run.log."""
    lock = threading.Lock()
    with (cwd / "run.log").open("ab") as out:

        def copy(source: BinaryIO, dest: BinaryIO) -> None:
            for chunk in iter(lambda: os.read(source.fileno(), 65536), b""):
                with lock:
                    out.write(chunk)
                    out.flush()
                dest.write(chunk)
                dest.flush()

        with subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as proc:
            pid_file.write_text(f"{proc.pid}\n")
            assert proc.stdout is not None
            assert proc.stderr is not None
            pipes = [(proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)]
            threads = [threading.Thread(target=copy, args=pipe, daemon=True) for pipe in pipes]
            try:
                for thread in threads:
                    thread.start()
                code = proc.wait()
                for thread in threads:  # a process the task left behind may hold a pipe
                    thread.join(timeout=2)
            except BaseException:  # Ctrl-C, SIGTERM: let the script's traps clean up first
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
    return code


def _environment(home: Path, task: Task) -> dict[str, str]:
    """The user's environment with HOME moved, the cluster's variables for one node, and the
    user's cloud credential files named explicitly (the sandbox HOME has none)."""
    env = dict(os.environ)
    real_home = Path.home()
    files = {
        "AWS_SHARED_CREDENTIALS_FILE": real_home / ".aws" / "credentials",
        "AWS_CONFIG_FILE": real_home / ".aws" / "config",
        "GOOGLE_APPLICATION_CREDENTIALS": real_home
        / ".config/gcloud/application_default_credentials.json",
    }
    for name, path in files.items():
        if name not in env and path.exists():
            env[name] = str(path)
    env.update(
        HOME=str(home),
        KONDUKTOR_CREDENTIALS_DIR=str(home / ".konduktor-no-secret"),
        KONDUKTOR_TERMINATION_LOG=str(home / ".konduktor" / "termination-log"),
        KONDUKTOR_PYTHON=sys.executable,  # has zstandard, whatever python3 on PATH lacks
        # a pod's variables (Konduktor's, SkyPilot's), for the one node this is
        NUM_NODES="1",
        RANK="0",
        MASTER_ADDR="127.0.0.1",
        NODE_HOST_IPS="127.0.0.1",
        LOCAL_ADDR="127.0.0.1",
        KONDUKTOR_JOB_NAME=home.name,
        KONDUKTOR_NODENAME=socket.gethostname(),
        SKYPILOT_NODE_IPS="127.0.0.1",
        SKYPILOT_NODE_RANK="0",
        SKYPILOT_NUM_NODES="1",
        RESTART_ATTEMPT="0",
    )
    env.update(task.envs)
    return env
