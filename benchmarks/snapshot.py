"""Side-by-side snapshot benchmark: konduktor vs git/tar/zstd (not part of the test run).

For each corpus made by ../shared/bench/make_corpus.py (dirty ML work trees of
3k and 20k tracked files, `--seed 1`, kept under benchmarks/corpora/ and reused),
measure in one run, interleaved, as medians of --repeat runs:

1. cold `konduktor snapshot PATH --json` (a fresh KONDUKTOR_HOME per run: no hash
   or key cache) vs the shell pipeline
   `git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | zstd -T0 -3`,
   and vs the "same-files pipeline" `konduktor ls-files -z | tar ... | zstd ...`,
   which tars exactly konduktor's selection (the first pipeline also compresses
   the checkpoints that .konduktorignore drops); output sizes of all three;
2. the nothing-changed key computation, `konduktor.snapshot.keys(PATH)` in process
   after one warm-up call that fills the key cache, vs `git status --porcelain`;
   also the same through a new interpreter (start-up and imports included);
3. peak RSS of `konduktor snapshot PATH` (cold), via `/usr/bin/time -f %M` when
   available, else `getrusage(RUSAGE_CHILDREN)`.

Targets (PASS/MISS is printed, the exit status is 0 either way): cold snapshot
<= 1.0x the pipeline, nothing-changed keys <= 1.5x git status, peak RSS <= 200 MB
on the 20k corpus.

Usage: python benchmarks/snapshot.py [--sizes 3000,20000] [--repeat 3] [--json]
                                     [--corpus-tool PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import BenchError, konduktor_cmd, log, run

HERE = Path(__file__).resolve().parent
CORPORA = HERE / "corpora"
CORPUS_TOOL = Path(__file__).resolve().parents[2] / "shared/bench/make_corpus.py"
SEED = 1

SNAPSHOT_TARGET = 1.0  # cold snapshot / pipeline
KEYS_TARGET = 1.5  # nothing-changed keys / git status
RSS_TARGET_MB = 200.0
RSS_TARGET_FILES = 20_000  # the RSS target applies to corpora this large

COMPRESS = "tar --null -T - -cf - | zstd -T0 -3"
PIPELINE = f"git ls-files -z --cached --others --exclude-standard | {COMPRESS}"
KEYS_CODE = "from pathlib import Path; from konduktor.snapshot import keys; keys(Path('.'))"
IMPORT_CODE = "import konduktor.snapshot"
# A fresh parent whose only child is the measured command: RUSAGE_CHILDREN is the
# largest RSS of any child ever waited for, so it cannot be read in this process.
RSS_PARENT = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def shell(pipeline: str, cwd: Path, env: Mapping[str, str]) -> tuple[float, int]:
    """Wall seconds of `bash -c PIPELINE` in *cwd*, and the bytes it writes (via wc -c)."""
    seconds, out, _ = run(["bash", "-c", f"set -o pipefail; {pipeline} | wc -c"], cwd=cwd, env=env)
    return seconds, int(out.split()[-1])


@contextmanager
def fresh_home() -> Iterator[dict[str, str]]:
    """An environment whose KONDUKTOR_HOME is a new, empty directory: no caches."""
    with tempfile.TemporaryDirectory(prefix="konduktor-bench-home-") as home:
        yield {**os.environ, "KONDUKTOR_HOME": home}


@contextmanager
def environ(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(ours: float | None, base: float | None) -> float | None:
    return None if ours is None or not base else ours / base


def verdict(value: float | None, target: float) -> str:
    return "n/a" if value is None else ("PASS" if value <= target else "MISS")


# -- corpora ---------------------------------------------------------------------------------


def ensure_corpus(files: int, tool: Path) -> Path:
    """benchmarks/corpora/synth-FILES, generated once (dirty, --seed 1) and reused."""
    root = CORPORA / f"synth-{files}"
    if (root / ".git").is_dir():
        log(f"reusing corpus {root}" + (f" -> {root.resolve()}" if root.is_symlink() else ""))
        return root
    if root.exists() or root.is_symlink():
        raise BenchError(f"{root} exists but is not a git work tree; move it away first")
    if not tool.is_file():
        raise BenchError(f"corpus generator not found: {tool} (pass --corpus-tool)")
    partial = CORPORA / f".synth-{files}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    CORPORA.mkdir(parents=True, exist_ok=True)
    log(f"generating {root} ({files} files, seed {SEED}) with {tool} ...")
    cmd = [sys.executable, str(tool), str(partial), "--files", str(files), "--seed", str(SEED)]
    seconds, summary, _ = run(cmd)
    partial.rename(root)  # only a complete corpus ever gets the real name
    try:  # the generator's summary, for provenance, naming the final directory
        info = {**json.loads(summary), "root": str(root)}
    except ValueError:
        info = {"generator_output": summary}
    (CORPORA / f"synth-{files}.json").write_text(json.dumps(info) + "\n")
    log(f"generated {root} in {seconds:.0f} s")
    return root


# -- measurements ----------------------------------------------------------------------------


def cold_snapshot(root: Path, konduktor: list[str]) -> tuple[float, dict[str, Any]]:
    with fresh_home() as env:
        seconds, out, _ = run([*konduktor, "snapshot", str(root), "--json"], env=env)
    return seconds, json.loads(out)


def measure_snapshots(
    root: Path, konduktor: list[str], repeat: int, pipelines: bool
) -> dict[str, Any]:
    """Cold snapshot vs both pipelines, interleaved so that load drifts hit all alike."""
    same_files = f"{shlex.join(konduktor)} ls-files -z | {COMPRESS}"
    samples: dict[str, list[float]] = {"snapshot": [], "pipeline": [], "same_files": []}
    sizes: dict[str, int] = {}
    report: dict[str, Any] = {}
    # One untimed round first, so that every command finds the same warm page cache.
    for i in range(repeat + 1):
        seconds, report = cold_snapshot(root, konduktor)
        if i:
            samples["snapshot"].append(seconds)
        if not pipelines:
            continue
        with fresh_home() as env:
            for name, cmd in (("pipeline", PIPELINE), ("same_files", same_files)):
                seconds, sizes[name] = shell(cmd, root, env)
                if i:
                    samples[name].append(seconds)
    layers = report["layers"]
    return {
        "snapshot_s": median(samples["snapshot"]),
        "pipeline_s": median(samples["pipeline"]) if pipelines else None,
        "same_files_s": median(samples["same_files"]) if pipelines else None,
        "snapshot_reported_s": report.get("seconds"),
        "snapshot_bytes": sum(layer["compressed_bytes"] for layer in layers),
        "snapshot_raw_bytes": sum(layer["bytes"] for layer in layers),
        "snapshot_files": sum(layer["files"] for layer in layers),
        "pipeline_bytes": sizes.get("pipeline"),
        "same_files_bytes": sizes.get("same_files"),
        "samples": samples,
    }


def measure_keys(root: Path, repeat: int) -> dict[str, Any]:
    """Nothing-changed keys (in process, then in a new interpreter) vs `git status`."""
    from konduktor.cache import root_digest
    from konduktor.snapshot import keys

    samples: dict[str, list[float]] = {"keys": [], "git_status": [], "keys_cli": [], "import": []}
    status = ["git", "status", "--porcelain"]
    with tempfile.TemporaryDirectory(prefix="konduktor-bench-home-") as home:
        with environ("KONDUKTOR_HOME", home):
            keys(root)  # warm-up: fills the key cache, as the previous launch would have
            run(status, cwd=root)  # warm-up: git may refresh its index once
            for _ in range(repeat):
                start = time.perf_counter()
                keys(root)
                samples["keys"].append(time.perf_counter() - start)
                samples["git_status"].append(run(status, cwd=root)[0])
        cached = (Path(home) / "cache" / "keys" / f"{root_digest(root)}.json").is_file()
        env = {**os.environ, "KONDUKTOR_HOME": home}
        cli = [sys.executable, "-c", KEYS_CODE]
        bare = [sys.executable, "-c", IMPORT_CODE]
        run(cli, cwd=root, env=env)  # warm-up: the interpreter and modules into the page cache
        for _ in range(repeat):
            samples["keys_cli"].append(run(cli, cwd=root, env=env)[0])
            samples["import"].append(run(bare, cwd=root, env=env)[0])
    return {
        "keys_s": median(samples["keys"]),
        "git_status_s": median(samples["git_status"]),
        "keys_cli_s": median(samples["keys_cli"]),
        "import_s": median(samples["import"]),
        "key_cache_written": cached,
        "samples": samples,
    }


def peak_rss_kb(root: Path, konduktor: list[str], time_bin: str | None) -> tuple[int, str]:
    """Peak RSS (KB) of one cold `konduktor snapshot ROOT`, and how it was measured."""
    cmd = [*konduktor, "snapshot", str(root)]
    with fresh_home() as env:
        if time_bin:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "rss"
                run([time_bin, "-f", "%M", "-o", str(out), *cmd], env=env)
                return int(out.read_text().split()[-1]), f"{time_bin} -f %M"
        _, out_text, _ = run([sys.executable, "-c", RSS_PARENT, *cmd], env=env)
        return int(out_text.split()[-1]), "getrusage(RUSAGE_CHILDREN).ru_maxrss"


def measure_rss(
    root: Path, konduktor: list[str], repeat: int, time_bin: str | None
) -> dict[str, Any]:
    kb: list[int] = []
    method = ""
    for _ in range(repeat):
        value, method = peak_rss_kb(root, konduktor, time_bin)
        kb.append(value)
    mb = [k * 1024 / 1e6 for k in kb]
    return {"rss_mb": median(mb), "rss_max_mb": max(mb), "rss_method": method, "rss_samples": mb}


def measure(
    files: int, root: Path, args: argparse.Namespace, tools: dict[str, str | None]
) -> dict[str, Any]:
    konduktor = konduktor_cmd()
    pipelines = bool(tools["tar"] and tools["zstd"])
    result: dict[str, Any] = {"corpus": str(root), "resolved": str(root.resolve()), "files": files}
    # One spelling of the path for every tool and for konduktor's per-root caches.
    name, root = root.name, root.resolve()
    log(f"[{name}] cold snapshot vs pipelines ({args.repeat}x, after one warm-up round)")
    snap = measure_snapshots(root, konduktor, args.repeat, pipelines)
    log(f"[{name}] nothing-changed keys vs git status ({args.repeat}x)")
    key = measure_keys(root, args.repeat)
    log(f"[{name}] peak RSS of konduktor snapshot ({args.repeat}x)")
    rss = measure_rss(root, konduktor, args.repeat, tools["time"])
    result["samples"] = {**snap.pop("samples"), **key.pop("samples"), "rss_mb": rss["rss_samples"]}
    result.update(snap)
    result.update(key)
    result.update({k: v for k, v in rss.items() if k != "rss_samples"})
    result["ratios"] = {
        "snapshot_vs_pipeline": ratio(result["snapshot_s"], result["pipeline_s"]),
        "snapshot_vs_same_files": ratio(result["snapshot_s"], result["same_files_s"]),
        "bytes_vs_pipeline": ratio(result["snapshot_bytes"], result["pipeline_bytes"]),
        "bytes_vs_same_files": ratio(result["snapshot_bytes"], result["same_files_bytes"]),
        "keys_vs_git_status": ratio(result["keys_s"], result["git_status_s"]),
        "keys_cli_vs_git_status": ratio(result["keys_cli_s"], result["git_status_s"]),
    }
    targets = {
        "snapshot_vs_pipeline": verdict(result["ratios"]["snapshot_vs_pipeline"], SNAPSHOT_TARGET),
        "keys_vs_git_status": verdict(result["ratios"]["keys_vs_git_status"], KEYS_TARGET),
    }
    if files >= RSS_TARGET_FILES:
        targets["peak_rss"] = verdict(result["rss_max_mb"], RSS_TARGET_MB)
    result["targets"] = targets
    return result


# -- output ----------------------------------------------------------------------------------


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.3f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def fmt_mb(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 1e6:.1f} MB"


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(r: dict[str, Any], repeat: int) -> str:
    ratios, targets = r["ratios"], r["targets"]
    rows = [("measurement", "ours", "baseline", "ours/base", "target", "result")]

    def add(label: str, ours: str, base: str, x: float | None, target: str, result: str) -> None:
        rows.append((label, ours, base, fmt_x(x), target, result))

    snap, snap_x = fmt_s(r["snapshot_s"]), ratios["snapshot_vs_pipeline"]
    add(
        "cold snapshot vs ls-files|tar|zstd pipeline",
        snap,
        fmt_s(r["pipeline_s"]),
        snap_x,
        f"<= {SNAPSHOT_TARGET:.1f}x",
        targets["snapshot_vs_pipeline"],
    )
    add(
        "cold snapshot vs same-files pipeline",
        snap,
        fmt_s(r["same_files_s"]),
        ratios["snapshot_vs_same_files"],
        "",
        "info",
    )
    ours_mb = fmt_mb(r["snapshot_bytes"])
    add(
        "  compressed output vs pipeline",
        ours_mb,
        fmt_mb(r["pipeline_bytes"]),
        ratios["bytes_vs_pipeline"],
        "",
        "info",
    )
    add(
        "  compressed output vs same-files pipeline",
        ours_mb,
        fmt_mb(r["same_files_bytes"]),
        ratios["bytes_vs_same_files"],
        "",
        "info",
    )
    add(
        "nothing-changed keys (in process) vs git status",
        fmt_s(r["keys_s"]),
        fmt_s(r["git_status_s"]),
        ratios["keys_vs_git_status"],
        f"<= {KEYS_TARGET:.1f}x",
        targets["keys_vs_git_status"],
    )
    add(
        "nothing-changed keys (new python *) vs git status",
        fmt_s(r["keys_cli_s"]),
        fmt_s(r["git_status_s"]),
        ratios["keys_cli_vs_git_status"],
        "",
        "info",
    )
    rss = f"{r['rss_mb']:.0f} MB"
    if "peak_rss" in targets:
        add(
            "peak RSS of konduktor snapshot (max of runs)",
            f"{r['rss_max_mb']:.0f} MB",
            "",
            None,
            f"<= {RSS_TARGET_MB:.0f} MB",
            targets["peak_rss"],
        )
    else:
        add("peak RSS of konduktor snapshot", rss, "", None, "", "info")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"== {Path(r['corpus']).name} ({r['files']} tracked files, dirty, seed {SEED}), "
        f"medians of {repeat} ==",
        f"   {r['corpus']}" + (f" -> {r['resolved']}" if r["resolved"] != r["corpus"] else ""),
    ]
    for n, row in enumerate(rows):
        label, *values = row
        cells = [label.ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(values, widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * len(lines[-1]))
    lines += [
        f"  ours: {r['snapshot_files']} files, {fmt_mb(r['snapshot_raw_bytes'])} raw -> {ours_mb}"
        f" in layers; konduktor's own JSON 'seconds': {fmt_s(r['snapshot_reported_s'])}",
        "  pipelines: run by `bash -c` in the corpus, output counted by `| wc -c`",
        "  * new python: `python -c \"...keys(Path('.'))\"` as a subprocess, so it INCLUDES"
        " interpreter",
        "    start-up and imports (there is no CLI flag for keys yet);"
        f" `python -c '{IMPORT_CODE}'` alone: {fmt_s(r['import_s'])}",
        f"  peak RSS: median {rss}, max {r['rss_max_mb']:.0f} MB"
        f" (cold snapshot, by {r['rss_method']})",
    ]
    if not r["key_cache_written"]:
        lines.append("  WARNING: keys() wrote no key cache: every call recomputed the keys")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def tool_report(tools: dict[str, str | None]) -> dict[str, str]:
    versions = {}
    for name, cmd in (
        ("git", ["git", "--version"]),
        ("tar", ["tar", "--version"]),
        ("zstd", ["zstd", "--version"]),
    ):
        if tools[name]:
            versions[name] = run(cmd)[1].splitlines()[0].strip(" *")
    return versions


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="3000,20000", help="corpus sizes in tracked files")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--corpus-tool", type=Path, default=CORPUS_TOOL, help="make_corpus.py")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) <= 0 or args.repeat < 1:
        parser.error("--sizes needs positive integers and --repeat at least 1")

    tools = {name: shutil.which(name) for name in ("git", "bash", "tar", "zstd", "time")}
    if not (tools["git"] and tools["bash"]):
        log("ERROR: this benchmark needs git and bash on PATH")
        return 2
    missing = [name for name in ("tar", "zstd") if not tools[name]]
    notes = []
    if missing:
        notes.append(
            f"NOT FOUND on PATH: {', '.join(missing)} -- the pipeline baselines are skipped "
            f"(apt-get install {' '.join(missing)})"
        )
    if not tools["time"]:
        notes.append("/usr/bin/time not found (apt package `time`): peak RSS via getrusage")

    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    try:
        versions = tool_report(tools)
        for note in notes:
            log(note)
        for files in sizes:
            root = ensure_corpus(files, args.corpus_tool)
            results.append(measure(files, root, args, tools))
            if not args.json:
                print(table(results[-1], args.repeat) + "\n", flush=True)
    except BenchError as exc:
        log(f"ERROR: {exc}")
        return 1
    machine = {
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "konduktor": shlex.join(konduktor_cmd()),
        "tools": versions,
    }
    if args.json:
        out = {"repeat": args.repeat, "machine": machine, "notes": notes, "corpora": results}
        print(json.dumps(out, indent=2))
        return 0
    for note in notes:
        print(note)
    print(
        f"machine: {machine['cpus']} CPUs, load average {machine['loadavg_before'][0]:.2f} before"
        f" / {machine['loadavg_after'][0]:.2f} after (other processes may share the CPUs); "
        f"python {machine['python']}; {'; '.join(versions.values())}"
    )
    print(
        f"targets: cold snapshot <= {SNAPSHOT_TARGET:.1f}x the ls-files|tar|zstd pipeline; "
        f"nothing-changed keys <= {KEYS_TARGET:.1f}x git status; peak RSS <= "
        f"{RSS_TARGET_MB:.0f} MB on the {RSS_TARGET_FILES // 1000}k corpus. "
        "PASS/MISS is informational: the exit status is 0."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
