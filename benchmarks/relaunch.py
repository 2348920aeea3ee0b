"""Relaunch after editing one file: `konduktor launch` vs Konduktor's `aws s3 sync` (not a test).

On a clean corpus of 3,000 tracked files made by ../shared/bench/make_corpus.py
(`--no-dirty --seed 1`, about 63 MB, generated into a temporary directory; the
task file is committed with it, so the corpus is exactly one commit), with one
local S3 server (moto, in this process) and the small Kubernetes API server of
tests/kube_server.py, measure in one run, interleaved, as medians of --reps:

a. `konduktor launch -y -d --kubeconfig K task.yaml`: the real CLI in a fresh process,
   end to end (interpreter start-up, snapshot, upload of what the store lacks,
   launch plan, JobSet creation on the API server);
b. what Konduktor does today: `aws s3 sync --no-follow-symlinks STAGING
   s3://bucket/runs/<fresh uuid>/` to the same S3 server, where STAGING is a copy
   of exactly the files konduktor ships, materialised with `konduktor ls-files -z`
   before each repetition (not timed). Konduktor uploads the workdir to a new
   random prefix on every launch, so nothing is reused.

One untimed launch first puts the base layer of the commit in the store (the
steady state: the team has launched this commit before). Each repetition then
puts back the file edited by the previous one and appends a line to another
file, so exactly one file differs from the commit; (a) and (b) run in
alternating order. Every repetition checks that the launch created exactly one
new JobSet (the one it printed, marked git-dirty) and that the sync wrote one
object per staged file.

Bytes sent are counted by the S3 server itself: every byte it reads from its
client connections (request lines, headers and bodies) while one command runs.
The payload row is what the tools mean to send: the request bodies for our
launch (layer, launch plan, last-used markers) and the sum of the staged file
sizes for the sync.

Also printed, for information: a new interpreter importing what a launch imports
(its fixed start-up cost, measured once per repetition), and the warm-up launch
(the first launch of a commit, which uploads the base layer) against the sync.
On one machine the sync is CPU-bound: the AWS CLI and moto each spend a few
milliseconds of CPU per file.

Targets (PASS/MISS is printed, the exit status is 0 either way): the sync takes
>= 20x our wall time and sends >= 100x our bytes.

Needs: pip install 'konduktor[s3,k8s]' 'moto[server]' awscli
Usage: python benchmarks/relaunch.py [--reps 5] [--files 3000] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from common import BenchError, Traffic, konduktor_cmd, log, run, s3_server

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the local S3 and Kubernetes API servers
from s3_server import AWS_VARIABLES  # type: ignore[import-not-found]  # noqa: E402

CORPUS_TOOL = HERE.parents[1] / "shared/bench/make_corpus.py"
SEED = 1
BUCKET = "bench"
STORE_PREFIX = "code"
SPEED_TARGET = 20.0  # sync wall time / launch wall time
BYTES_TARGET = 100.0  # sync bytes / launch bytes
TASK_YAML = """\
name: relaunch
num_nodes: 1
workdir: .
resources: {cpus: 1, memory: 1, image_id: ubuntu}
run: |
  python -c 'print("hello")'
"""
# Pinned identity and no user or system config, as the corpus generator does.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "corpus",
    "GIT_AUTHOR_EMAIL": "corpus@example.invalid",
    "GIT_COMMITTER_NAME": "corpus",
    "GIT_COMMITTER_EMAIL": "corpus@example.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}
SYNC_FLAGS = ("--no-follow-symlinks", "--only-show-errors")
# What `konduktor launch` imports before it does anything (its fixed start-up cost).
IMPORTS = (
    "import boto3, kubernetes, konduktor.cli, konduktor.launch, konduktor.k8s.submit, "
    "konduktor.storage.s3"
)
UPLOAD_LINE = re.compile(r"^upload: .*$", re.MULTILINE)


def aws_cmd() -> str | None:
    """The AWS CLI beside this interpreter (a venv need not be on PATH), else on PATH."""
    script = Path(sys.executable).parent / "aws"
    return str(script) if script.is_file() else shutil.which("aws")


# -- the Kubernetes API server ---------------------------------------------------------------


@contextlib.contextmanager
def kube_server() -> Iterator[Any]:
    """tests/kube_server.py's API server; yields its KubeAPI (url, objects, write_kubeconfig)."""
    import kube_server as ks  # type: ignore[import-not-found]

    with ks.serve() as api:
        yield api


def jobsets(api: Any) -> dict[str, dict[str, Any]]:
    """The JobSets on the API server, by name."""
    objects = dict(api.objects)
    return {name: obj for (plural, _, name), obj in objects.items() if plural == "jobsets"}


def jobset_posts(api: Any) -> int:
    """How many JobSet creations the API server has been asked for."""
    return sum(1 for r in list(api.requests) if r.method == "POST" and "/jobsets" in r.path)


# -- the corpus, the environment, the edits --------------------------------------------------


def git(root: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return run(["git", "-C", str(root), *args], env=env)[1]


def make_corpus(root: Path, files: int, tool: Path) -> Path:
    """A clean corpus of *files* tracked files plus task.yaml, all committed; the task path."""
    if not tool.is_file():
        raise BenchError(f"corpus generator not found: {tool} (pass --corpus-tool)")
    log(f"generating a {files}-file corpus in {root} (seed {SEED}, clean) ...")
    cmd = [sys.executable, str(tool), str(root), "--files", str(files), "--seed", str(SEED)]
    seconds, _, _ = run([*cmd, "--no-dirty"])
    task = root / "task.yaml"
    task.write_text(TASK_YAML)
    git(root, "add", "task.yaml")
    git(root, "commit", "-q", "-m", "task")
    log(f"generated in {seconds:.0f} s; HEAD {git(root, 'rev-parse', 'HEAD').strip()[:12]}")
    return task


def environment(tmp: Path, endpoint: str) -> dict[str, str]:
    """Fake AWS credentials for the local server, nothing of the developer's own AWS
    setup, and a konduktor home and config whose store is the local server."""
    absent = tmp / "absent"
    config = tmp / "config.yaml"
    config.write_text(
        "allowed_clouds: [s3]\n"
        f"jobs:\n  bucket: s3://{BUCKET}/{STORE_PREFIX}\n"
        f"sync:\n  store:\n    endpoint_url: {endpoint}\n    region: us-east-1\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARIABLES}
    # As on a user's machine, Python caches compiled modules (pip precompiled the AWS
    # CLI's at install time; an editable konduktor gets its cache on the warm-up launch).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(absent),
        AWS_SHARED_CREDENTIALS_FILE=str(absent),
        AWS_EC2_METADATA_DISABLED="true",
        KONDUKTOR_HOME=str(tmp / "home"),
        KONDUKTOR_CONFIG=str(config),
    )
    return env


class Editor:
    """Keeps exactly one tracked file edited: puts back the last one, appends to the next."""

    def __init__(self, root: Path) -> None:
        tracked = git(root, "ls-files", "-z").split("\0")
        candidates = sorted(p for p in tracked if p.endswith(".py") and (root / p).is_file())
        self.root = root
        self.order = random.Random(SEED).sample(candidates, len(candidates))
        self.previous: tuple[Path, bytes] | None = None

    def edit(self, rep: int) -> str:
        if self.previous is not None:
            self.previous[0].write_bytes(self.previous[1])
        rel = self.order[rep % len(self.order)]
        path = self.root / rel
        self.previous = (path, path.read_bytes())
        with path.open("ab") as f:
            f.write(f"# relaunch edit {rep}\n".encode())
        return rel


def stage(root: Path, dest: Path, konduktor: list[str], env: Mapping[str, str]) -> tuple[int, int]:
    """Copy exactly the files `konduktor ls-files` ships into *dest*: (files, bytes)."""
    shutil.rmtree(dest, ignore_errors=True)
    _, out, _ = run([*konduktor, "ls-files", "-z", str(root)], env=env)
    paths = [p for p in out.split("\0") if p]
    size = 0
    for rel in paths:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target, follow_symlinks=False)
        size += target.lstat().st_size
    return len(paths), size


# -- one measurement each --------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    seconds: float
    wire: int = 0
    bodies: int = 0
    requests: int = 0
    note: str = ""


@dataclass(frozen=True)
class Rig:
    """Everything a measurement needs: the corpus, the servers, the commands, the env."""

    task: Path
    kubeconfig: Path
    konduktor: list[str]
    aws: str
    endpoint: str
    env: dict[str, str]
    traffic: Traffic
    api: Any  # kube_server.KubeAPI
    s3: Any  # a boto3 client, for what is not measured
    staging: Path

    def measured(self, cmd: Sequence[str], **kwargs: Any) -> tuple[Sample, str, str]:
        wire, bodies, requests = self.traffic.snapshot()
        seconds, out, err = run(cmd, env=self.env, **kwargs)
        now = self.traffic.snapshot()
        return Sample(seconds, now[0] - wire, now[1] - bodies, now[2] - requests), out, err

    def launch(self, *, dirty: bool = True) -> Sample:
        """One `konduktor launch`; checks it POSTed exactly one JobSet, the one it printed,
        with the expected git-dirty annotation."""
        before, posts = set(jobsets(self.api)), jobset_posts(self.api)
        cmd = [*self.konduktor, "launch", "-y", "-d", "--kubeconfig", str(self.kubeconfig)]
        sample, out, err = self.measured([*cmd, str(self.task)], cwd=self.task.parent)
        after = jobsets(self.api)
        new = sorted(set(after) - before)
        if new != [out.strip()] or jobset_posts(self.api) != posts + 1:
            raise BenchError(f"expected one new JobSet named {out.strip()!r}, the API has {new}")
        annotations = after[new[0]]["metadata"]["annotations"]
        if annotations.get("konduktor.dev/git-dirty") != str(dirty).lower():
            raise BenchError(f"JobSet {new[0]} should have git-dirty {dirty}: {annotations}")
        found = UPLOAD_LINE.search(err)
        return replace(sample, note=found.group(0) if found else "")

    def sync(self, files: int) -> Sample:
        """One `aws s3 sync` of the staging copy to a fresh prefix, as Konduktor uploads a
        workdir; checks (untimed) that it wrote *files* objects, then deletes them."""
        prefix = f"runs/{uuid.uuid4()}"
        target = f"s3://{BUCKET}/{prefix}/"
        cmd = [self.aws, "--endpoint-url", self.endpoint, "s3", "sync", *SYNC_FLAGS]
        sample, _, _ = self.measured([*cmd, str(self.staging), target])
        written = drop_prefix(self.s3, prefix + "/")
        if written != files:
            raise BenchError(f"aws s3 sync wrote {written} objects, not {files}")
        return replace(sample, note=prefix)

    def imports(self) -> Sample:
        """A new interpreter importing what a launch imports: its fixed start-up cost."""
        return Sample(run([sys.executable, "-c", IMPORTS], env=self.env)[0])


def drop_prefix(client: Any, prefix: str) -> int:
    """Delete everything under *prefix* (moto keeps it all in memory); the count deleted."""
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})
            count += len(keys)
    return count


# -- the run ---------------------------------------------------------------------------------


@contextlib.contextmanager
def rig(args: argparse.Namespace, tmp: Path, task: Path) -> Iterator[Rig]:
    """Both servers up, the bucket made, the config and kubeconfig written."""
    import boto3

    with s3_server() as (endpoint, traffic), kube_server() as api:
        env = environment(tmp, endpoint)
        keys = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
        s3.create_bucket(Bucket=BUCKET)
        kubeconfig = api.write_kubeconfig(tmp)
        konduktor = konduktor_cmd()
        staging = tmp / "staging"
        yield Rig(task, kubeconfig, konduktor, args.aws, endpoint, env, traffic, api, s3, staging)


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    task = make_corpus(tmp / "corpus", args.files, args.corpus_tool)
    samples: dict[str, list[Sample]] = {"ours": [], "sync": [], "imports": []}
    staged: list[tuple[int, int]] = []
    with rig(args, tmp, task) as r:
        log("warm-up: one launch of the clean commit puts its base layer in the store")
        cold = r.launch(dirty=False)
        log(f"  {cold.seconds:.2f} s, {cold.wire / 1e6:.1f} MB sent; {cold.note}")
        editor = Editor(task.parent)
        for rep in range(args.reps):
            staged.append(repetition(r, editor, rep, samples))
        if len(jobsets(r.api)) != args.reps + 1:
            raise BenchError(
                f"the API server holds {len(jobsets(r.api))} JobSets, not {args.reps + 1}"
            )
    return summarise(samples, staged, cold)


def repetition(
    r: Rig, editor: Editor, rep: int, samples: dict[str, list[Sample]]
) -> tuple[int, int]:
    """Edit one file, stage the selection, then launch and sync (in alternating order)."""
    edited = editor.edit(rep)
    files, size = stage(r.task.parent, r.staging, r.konduktor, r.env)
    order = ["ours", "sync"] if rep % 2 == 0 else ["sync", "ours"]
    for name in order:
        samples[name].append(r.launch() if name == "ours" else r.sync(files))
    samples["imports"].append(r.imports())
    ours, sync = samples["ours"][-1], samples["sync"][-1]
    log(
        f"rep {rep + 1} (edited {edited}): launch {ours.seconds:.2f} s, {ours.wire / 1e3:.1f} kB "
        f"({ours.note}); sync {sync.seconds:.2f} s, {sync.wire / 1e6:.1f} MB"
    )
    return files, size


def summarise(
    samples: dict[str, list[Sample]], staged: list[tuple[int, int]], cold: Sample
) -> dict[str, Any]:
    ours, sync = samples["ours"], samples["sync"]

    def med(values: list[Sample], name: str) -> float:
        return float(statistics.median(getattr(s, name) for s in values))

    result: dict[str, Any] = {
        "files": statistics.median(n for n, _ in staged),
        "cold_launch": asdict(cold),
        "imports_s": med(samples["imports"], "seconds"),
        "samples": {name: [asdict(s) for s in values] for name, values in samples.items()},
    }
    for name in ("seconds", "wire", "requests"):
        result[name] = {"ours": med(ours, name), "sync": med(sync, name)}
    result["payload"] = {
        "ours": med(ours, "bodies"),
        "sync": statistics.median(b for _, b in staged),
    }
    result["ratios"] = {
        name: result[name]["sync"] / result[name]["ours"]
        for name in ("seconds", "wire", "payload", "requests")
    }
    result["targets"] = {
        "seconds": "PASS" if result["ratios"]["seconds"] >= SPEED_TARGET else "MISS",
        "wire": "PASS" if result["ratios"]["wire"] >= BYTES_TARGET else "MISS",
    }
    return result


# -- output ----------------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def table(r: dict[str, Any], reps: int) -> str:
    ratios, targets, cold = r["ratios"], r["targets"], r["cold_launch"]
    rows = [("measurement", "konduktor launch", "aws s3 sync", "sync/ours", "target", "result")]
    sync_s, sync_b = r["seconds"]["sync"], r["wire"]["sync"]
    rows += [
        (
            "wall time, end to end",
            fmt_s(r["seconds"]["ours"]),
            fmt_s(sync_s),
            f"{ratios['seconds']:.1f}x",
            f">= {SPEED_TARGET:.0f}x",
            targets["seconds"],
        ),
        ("  start-up + imports alone", fmt_s(r["imports_s"]), "", "", "", "info"),
        (
            "bytes sent to S3 (wire)",
            fmt_bytes(r["wire"]["ours"]),
            fmt_bytes(sync_b),
            f"{ratios['wire']:.0f}x",
            f">= {BYTES_TARGET:.0f}x",
            targets["wire"],
        ),
        (
            "  payload (bodies / file sizes)",
            fmt_bytes(r["payload"]["ours"]),
            fmt_bytes(r["payload"]["sync"]),
            f"{ratios['payload']:.0f}x",
            "",
            "info",
        ),
        (
            "  S3 requests",
            f"{r['requests']['ours']:.0f}",
            f"{r['requests']['sync']:.0f}",
            f"{ratios['requests']:.0f}x",
            "",
            "info",
        ),
        (
            "first launch of the commit: time",
            fmt_s(cold["seconds"]),
            fmt_s(sync_s),
            f"{sync_s / cold['seconds']:.1f}x",
            "",
            "info",
        ),
        (
            "  bytes sent (wire)",
            fmt_bytes(cold["wire"]),
            fmt_bytes(sync_b),
            f"{sync_b / cold['wire']:.1f}x",
            "",
            "info",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"relaunch after a one-file edit, {r['files']:.0f} files shipped, "
        f"medians of {reps} (fresh processes, interleaved):"
    ]
    lines += ["  " + "  ".join(map(str.ljust, row, widths)).rstrip() for row in rows]
    lines += [
        f"{targets['seconds']}: the sync takes {ratios['seconds']:.1f}x our time "
        f"(target >= {SPEED_TARGET:.0f}x)",
        f"{targets['wire']}: the sync sends {ratios['wire']:.0f}x our bytes "
        f"(target >= {BYTES_TARGET:.0f}x)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--files", type=int, default=3000, help="tracked files (default 3000)")
    parser.add_argument("--corpus-tool", type=Path, default=CORPUS_TOOL)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    args.aws = aws_cmd()
    if args.aws is None:
        sys.exit("the AWS CLI is not installed: pip install awscli")
    try:
        with tempfile.TemporaryDirectory(prefix="konduktor-relaunch-") as tmp:
            result = measure(args, Path(tmp))
    except BenchError as exc:
        sys.exit(f"error: {exc}")
    print(table(result, args.reps))
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
