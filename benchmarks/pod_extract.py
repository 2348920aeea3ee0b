"""The pod's layer sync against plain `zstd -d -c LAYER | tar -x` of the same layer (not a test).

For clean corpora of --files tracked files made by ../shared/bench/make_corpus.py
(default: 3,000, about diffusers' size, and 20,000), builds the base layer with
konduktor, then measures in one run, interleaved, as medians of --reps, on disk
(a directory under --disk, default /var/tmp) and on tmpfs (/dev/shm):

a. the rendered pod startup script for a plan holding just that layer (file://
   store, `run: true`), under sh: copy, sha256, the listing check, whiteouts,
   streaming extraction, placing the tree;
b. `zstd -q -d -c LAYER | tar -xmo -f - -C DIR` (no fetch, no check).

Prints a table of seconds and the ratio a/b. Target: a/b <= 1.1.
Usage: python benchmarks/pod_extract.py [--files 3000,20000] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import log, run

from konduktor import pod, snapshot
from konduktor.plan import LaunchPlan, Layer, Tree

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "make_corpus.py"


def layer_for(files: int, work: Path) -> tuple[Path, Layer]:
    corpus = work / f"corpus-{files}"
    run([sys.executable, str(CORPUS), str(corpus), "--files", str(files), "--no-dirty"])
    out = work / f"out-{files}"
    info = snapshot.build(corpus, commit="HEAD", out=out)
    (built,) = info.layers
    assert built.path is not None
    store = work / f"store-{files}"
    key = f"v1/{built.key}"
    (store / key).parent.mkdir(parents=True)
    shutil.copy(built.path, store / key)
    layer = Layer(key, "base", built.sha256, built.compressed_bytes, built.members, built.tar_bytes)
    log(f"{files} files: {built.members} members, {built.tar_bytes / 1e6:.0f} MB of tar")
    return store, layer


def pod_sync(store: Path, layer: Layer, where: Path) -> float:
    plan = LaunchPlan(
        job="bench",
        store=f"file://{store}",
        run="true\n",
        trees=(Tree("~/konduktor_workdir", "/src", None, False, (layer,)),),
    )
    home = where / "home"
    home.mkdir()
    script = where / "startup.sh"
    script.write_text(pod.render(plan))
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "KONDUKTOR_QUIET": "1"}
    env["KONDUKTOR_TERMINATION_LOG"] = str(where / "termination-log")
    seconds, _, _ = run(["sh", str(script)], env=env)
    return seconds


def plain(store: Path, layer: Layer, where: Path) -> float:
    dest = where / "plain"
    dest.mkdir()
    command = f"zstd -q -d -c '{store / layer.key}' | tar -xmo -f - -C '{dest}'"
    seconds, _, _ = run(["sh", "-c", command])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="3000,20000")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--disk", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="konduktor-bench-", dir=args.disk) as tmp:
        work = Path(tmp)
        for files in (int(n) for n in args.files.split(",")):
            store, layer = layer_for(files, work)
            for medium, parent in (("disk", work), ("tmpfs", Path("/dev/shm"))):
                times: dict[str, list[float]] = {"pod": [], "plain": []}
                for rep in range(args.reps):
                    order = [("pod", pod_sync), ("plain", plain)]
                    for name, measure in order if rep % 2 == 0 else order[::-1]:
                        where = Path(tempfile.mkdtemp(prefix="rep-", dir=parent))
                        try:
                            times[name].append(measure(store, layer, where))
                        finally:
                            shutil.rmtree(where)
                a, b = statistics.median(times["pod"]), statistics.median(times["plain"])
                rows.append((files, medium, a, b))
    print("| files | medium | pod sync (s) | zstd -d \\| tar -x (s) | ratio |")
    print("|---|---|---|---|---|")
    for files, medium, a, b in rows:
        print(f"| {files:,} | {medium} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
