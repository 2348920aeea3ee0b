"""Git mode vs tarball mode (not part of the test run): time from `konduktor launch --local`
to `run:` starting, on a generated dirty 3k-file corpus, side by side in one run.

The corpus (../shared/bench/make_corpus.py) is pushed to a bare repository served by a
real sshd on loopback (tests/ssh_server.py). `run:` prints the time it starts; each
launch is timed from just before the process starts. Modes, interleaved per repetition:

  git            --mode git: the pod clones the commit over SSH, then applies the overlay
  tarball-cold   --mode tarball into a fresh store: the base layer is built and uploaded
  tarball-warm   --mode tarball with the base already in the store (a relaunch)

Needs openssh-server (/usr/sbin/sshd). Usage: python benchmarks/gitmode.py [--files 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
CORPUS_TOOL = ROOT.parent / "shared" / "bench" / "make_corpus.py"

import ssh_server  # noqa: E402  (test helpers: a real sshd)


def sh(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{done.stderr}")
    return done.stdout


def launch(task: Path, env: dict[str, str], *args: str) -> float:
    """Seconds from starting `konduktor launch --local` to `run:` printing its start time."""
    start = time.time()
    out = sh(sys.executable, "-m", "konduktor", "launch", "--local", "-y", *args, task, env=env)
    return float(out.strip().splitlines()[-1]) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    ssh_server._require_sshd()
    with tempfile.TemporaryDirectory(prefix="konduktor-bench-git-") as tmp:
        base = Path(tmp)
        client_key = base / "id_ed25519"
        ssh_server._keygen(client_key, comment="bench")
        (base / "sshd").mkdir()
        server = ssh_server._start(base / "sshd", client_key, port=ssh_server._free_port())
        try:
            run_benchmark(base, server, args.files, args.reps)
        finally:
            server.stop()


def run_benchmark(base: Path, server: ssh_server.SSHServer, files: int, reps: int) -> None:
    work = base / "corpus"
    sh(sys.executable, CORPUS_TOOL, work, "--files", files, "--seed", "1",
       "--data-mb", "1", "--checkpoint-mb", "1", "--venv-files", "50")  # fmt: skip
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    known = home / ".ssh" / "known_hosts"
    known.write_text(server.known_hosts_line)
    env = {**os.environ, "HOME": str(home), "GIT_SSH_COMMAND": server.git_ssh_command(known)}
    server.bare_repo("corpus.git")
    sh("git", "remote", "add", "origin", server.url("corpus.git"), cwd=work, env=env)
    sh("git", "push", "-q", "origin", "HEAD:refs/heads/main", cwd=work, env=env)
    sh("git", "branch", "-q", "-u", "origin/main", cwd=work, env=env)
    task = base / "task.yaml"
    task.write_text(
        f"name: bench\nworkdir: {work}\nfile_mounts:\n  ~/.ssh/bench-key: {server.client_key}\n"
        "run: python3 -c 'import time; print(time.time())'\n"
    )
    times: dict[str, list[float]] = {"git": [], "tarball-cold": [], "tarball-warm": []}
    branch = sh("git", "rev-parse", "--abbrev-ref", "HEAD", cwd=work).strip()
    for rep in range(reps):
        cold = {**env, "KONDUKTOR_HOME": str(base / f"cold-{rep}")}
        warm = {**env, "KONDUKTOR_HOME": str(base / "warm")}
        times["git"].append(launch(task, cold, "--mode", "git", "--branch", "main"))
        times["tarball-cold"].append(
            launch(task, {**cold, "KONDUKTOR_HOME": cold["KONDUKTOR_HOME"] + "t"})
        )
        if rep == 0:
            launch(task, warm)  # the base goes into the warm store once
        times["tarball-warm"].append(launch(task, warm))
    print(f"{files} tracked files (dirty work tree, branch {branch}), medians of {reps}:")
    git = statistics.median(times["git"])
    for mode, values in times.items():
        median = statistics.median(values)
        print(f"  {mode:13} {median:6.2f} s   (git / this: {git / median:4.2f}x)")


if __name__ == "__main__":
    main()
