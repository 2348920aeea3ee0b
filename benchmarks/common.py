"""What the benchmarks share: running commands, timing them, and failing clearly."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class BenchError(Exception):
    """A command the benchmark depends on failed, or a check did not hold."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def konduktor_cmd() -> list[str]:
    """The installed `konduktor` script beside this Python, else `python -m konduktor`."""
    script = Path(sys.executable).parent / "konduktor"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "konduktor"]


def run(
    cmd: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> tuple[float, str, str]:
    """Run *cmd*: (wall seconds, stdout, stderr); raise BenchError on failure."""
    start = time.perf_counter()
    done = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        where = f" in {cwd}" if cwd else ""
        raise BenchError(
            f"`{shlex.join(cmd)}`{where} exited {done.returncode}:\n{done.stderr.strip()}"
        )
    return seconds, done.stdout, done.stderr
