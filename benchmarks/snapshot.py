"""Side-by-side snapshot benchmark (not part of the test run).

For each corpus made by ../shared/bench/make_corpus.py (dirty ML work trees of
3k and 20k tracked files), measure in one run, as medians of --repeat runs:

1. cold `konduktor snapshot` (fresh KONDUKTOR_HOME: no hash or key cache) vs
   `git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | zstd -T0 -3`,
   and vs the same pipeline over exactly konduktor's selection ("same files"),
   since the first also compresses what .konduktorignore drops;
2. the nothing-changed key computation (`konduktor.snapshot.keys`, in process,
   after a warm-up) vs `git status --porcelain`; also the same through a new
   interpreter, which adds start-up and imports;
3. peak RSS of `konduktor snapshot`.

Usage: python benchmarks/snapshot.py [--sizes 3000,20000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS_TOOL = HERE.parents[1] / "shared" / "bench" / "make_corpus.py"
KONDUKTOR = [sys.executable, "-m", "konduktor"]
PIPELINE = (
    "git ls-files -z --cached --others --exclude-standard"
    " | tar --null -T - -cf - | zstd -q -T0 -3 | wc -c"
)
SAME_FILES = (
    f"{sys.executable} -m konduktor -q ls-files -z | tar --null -T - -cf - | zstd -q -T0 -3 | wc -c"
)


def corpus(files: int, tool: Path) -> Path:
    root = HERE / "corpora" / f"synth-{files}"
    if not (root / ".git").exists():
        print(f"generating {root} ...", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
        cmd = [sys.executable, str(tool), str(root), "--files", str(files), "--seed", "1"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return root


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def shell(cmd: str, cwd: Path) -> int:
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, check=True, capture_output=True, text=True
    )
    return int(done.stdout.split()[-1])


def cold_snapshot(root: Path) -> int:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "KONDUKTOR_HOME": home}
        out = subprocess.run(
            [*KONDUKTOR, "-q", "snapshot", str(root), "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return sum(layer["compressed_bytes"] for layer in json.loads(out)["layers"])


_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True,"
    " stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss_mb(root: Path) -> float:
    """Peak RSS of one cold snapshot, read by a fresh parent whose only child it is."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "KONDUKTOR_HOME": home}
        cmd = [sys.executable, "-c", _RSS, *KONDUKTOR, "-q", "snapshot", str(root)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return int(out) / 1024


def keys_in_process(root: Path, repeat: int) -> float:
    from konduktor.snapshot import keys

    with tempfile.TemporaryDirectory() as home:
        os.environ["KONDUKTOR_HOME"] = home
        keys(root)  # warm-up fills the key cache, as the previous launch would have
        seconds, _ = timed(lambda: keys(root), repeat)
    del os.environ["KONDUKTOR_HOME"]
    return seconds


def keys_new_process(root: Path, repeat: int) -> float:
    code = "from pathlib import Path; from konduktor.snapshot import keys; keys(Path('.'))"
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "KONDUKTOR_HOME": home}

        def run() -> None:
            subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True)

        run()
        seconds, _ = timed(run, repeat)
    return seconds


def measure(root: Path, repeat: int) -> dict[str, float]:
    def status() -> None:
        subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, check=True, stdout=subprocess.DEVNULL
        )

    ours, our_bytes = timed(lambda: cold_snapshot(root), repeat)
    pipe, pipe_bytes = timed(lambda: shell(PIPELINE, root), repeat)
    same, same_bytes = timed(lambda: shell(SAME_FILES, root), repeat)
    git_status, _ = timed(status, max(repeat, 5))
    return {
        "snapshot_s": ours,
        "snapshot_bytes": float(our_bytes),  # type: ignore[arg-type]
        "pipeline_s": pipe,
        "pipeline_bytes": float(pipe_bytes),  # type: ignore[arg-type]
        "same_files_s": same,
        "same_files_bytes": float(same_bytes),  # type: ignore[arg-type]
        "keys_s": keys_in_process(root, max(repeat, 5)),
        "keys_cli_s": keys_new_process(root, repeat),
        "git_status_s": git_status,
        "peak_rss_mb": peak_rss_mb(root),
    }


def report(name: str, m: dict[str, float]) -> None:
    def row(label: str, ours: float, base: float, target: float | None) -> None:
        verdict = "" if target is None else ("PASS" if ours / base <= target else "MISS")
        goal = "" if target is None else f"target <= {target:.1f}x"
        print(
            f"  {label:<44} {ours:8.3f} s vs {base:8.3f} s  = {ours / base:5.2f}x  {goal} {verdict}"
        )

    print(f"{name}:")
    row("cold snapshot vs ls-files|tar|zstd pipeline", m["snapshot_s"], m["pipeline_s"], 1.0)
    row("cold snapshot vs same-files pipeline", m["snapshot_s"], m["same_files_s"], None)
    row("nothing-changed keys (in process) vs git status", m["keys_s"], m["git_status_s"], 1.5)
    row("nothing-changed keys (new python) vs git status", m["keys_cli_s"], m["git_status_s"], None)
    mb = 1e6
    print(
        f"  compressed: ours {m['snapshot_bytes'] / mb:.1f} MB, pipeline "
        f"{m['pipeline_bytes'] / mb:.1f} MB, "
        f"same-files pipeline {m['same_files_bytes'] / mb:.1f} MB"
    )
    rss = m["peak_rss_mb"]
    print(
        f"  peak RSS of konduktor snapshot: {rss:.0f} MB (target <= 200 MB: "
        f"{'PASS' if rss <= 200 else 'MISS'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3000,20000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--corpus-tool", type=Path, default=CORPUS_TOOL)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for tool in ("git", "tar", "zstd"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed; the baseline needs it")
    results = {}
    for size in (int(s) for s in args.sizes.split(",")):
        root = corpus(size, args.corpus_tool)
        results[root.name] = measure(root, args.repeat)
        if not args.json:
            report(root.name, results[root.name])
    if args.json:
        print(json.dumps(results, indent=2))
    print(f"({os.cpu_count()} cores; medians of {args.repeat} runs)", file=sys.stderr)


if __name__ == "__main__":
    main()
