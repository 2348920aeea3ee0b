"""The local target (``launch --local``): the pod's startup script run on this machine.

Each run gets a sandbox HOME under ``~/.konduktor/local/<job>``; the newest
:data:`LOCAL_KEEP` are kept. The script is the one a pod runs, rendered from the
same launch plan, with the cluster's variables set for one node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from konduktor import pod
from konduktor.cache import konduktor_home
from konduktor.plan import LaunchPlan
from konduktor.task import Task

LOCAL_KEEP = 10  # sandbox HOMEs of local runs kept; older ones are deleted


def home(job: str) -> Path:
    return konduktor_home() / "local" / job


def log(job: str) -> Path:
    """Where a detached run's output goes."""
    return home(job) / "run.log"


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
    if detach:  # an outer sh starts it in the background and returns: nothing to wait for
        with log(plan.job).open("ab") as out:
            subprocess.run(
                ["sh", "-c", 'sh "$1" &', "sh", str(script)],
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
    return subprocess.call(["sh", str(script)], cwd=sandbox, env=env)


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
        NUM_NODES="1",
        RANK="0",
        MASTER_ADDR="127.0.0.1",
        NODE_HOST_IPS="127.0.0.1",
    )
    env.update(task.envs)
    return env
