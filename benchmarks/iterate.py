"""An iteration session, step by step: bytes sent to the store vs what was new (not a test).

A scripted session of an ML engineer iterating on a dirty work tree, each step
followed by one "launch", measured as the bytes the store's server received.
The corpus is ../shared/bench/make_corpus.py's dirty diffusers-sized tree
(`--files 3000 --seed 1`, its default dirty state: 20 modified and 30 untracked
files, a 50 MB untracked JSONL file, ignored junk), made fresh under --root
(default /tmp/iterate-bench) and removed afterwards unless --keep.

A launch is `konduktor snapshot --upload -o json WORKDIR` against moto's S3
server (run in this process, counting every byte its clients send: request
lines, headers and bodies). It uploads what a `konduktor launch` uploads for
the workdir, less the launch plan and last-used markers (a few kB per launch),
and it reports konduktor's own `uploaded_bytes`; no Kubernetes API is needed.

The steps:
 1. first launch;
 2. relaunch, nothing changed;
 3. edit one file (a line appended to a tracked .py file);
 4. commit it (`git commit -- FILE`; the rest stays dirty);
 5. add a 400 MB untracked data file (`experiments/data/train.jsonl`; see below);
 6. edit one file;
 7. switch to a branch with 30 changed files (a teammate's branch from HEAD,
    made in a separate worktree: one line appended to each of 30 tracked files
    that are clean here, so `git switch` carries the dirty state over);
 8. switch back;
 9. a second clone at the same commit (`git clone`, with its own KONDUKTOR_HOME:
    a teammate's machine) with other dirty edits (make_corpus.py --dirty-only
    --seed 2: 10 modified and 10 untracked files, no data file) launches to the
    same store;
10. five new commits pulled: the teammate commits five times in the second
    clone (each appends a line to 4 tracked files and adds one new .py file),
    the first work tree runs `git pull --ff-only` from it and launches.

The data file is JSONL made by a seeded generator, as compressible as real
text data (zstd -3 to about a quarter): records of an id, a prompt cut from a
Zipf-distributed word stream at a random offset, a label and a score.

The lower bound of a step is the zstd level-3 size (the `zstandard` module,
one thread, one frame) of the contents that are new to the store: the files
`konduktor ls-files` selects for that launch whose content (sha256) no earlier
launch selected, each content once, concatenated in path order (no tar
headers, no paths, no metadata). It assumes a store that keeps every content
it was ever sent, across commits, branches and clones. It does not depend on the
format, so it is the same for v1 and v2. The session's total bound is a floor
(cross-file compression aside); a step's bound is not, for a format that sends
more than the work tree holds: v1's base layer has HEAD's version of every
modified file, so when the second clone ships those clean versions (step 9)
they are new by this bound but already in v1's store.

Targets (issue 15; PASS/MISS is printed, the exit status is 0 either way):
every step after the first sends <= 1 MiB + 1.1x its lower bound, and the
whole session <= 1.25x the total lower bound + 1 MiB per step.

--label names the format in the table and the JSON (today's format is v1; the
same script measures v2 later). --konduktor runs another konduktor, e.g. an
older release installed in its own venv. --small runs the same session on a
300-file corpus with a 40 MB data file, in about half a minute.

v1 baseline, measured 2026-12-02 (`python benchmarks/iterate.py --label v1
--json v1.json`, 2 shared cores; two runs gave the same bytes to +-50 per
step; MB = 10^6 bytes):

  step                                  sent (v1)  req  lower bound  sent/bound  target
   1 first launch                        23.72 MB   18     23.60 MB       1.01x
   2 relaunch, nothing changed             3.5 kB    4          0 B           -  ok
   3 edit one file                       15.50 MB   11      0.02 MB        839x  MISS
   4 commit it                            8.23 MB   11          0 B           -  MISS
   5 add a 400 MB untracked data file   122.33 MB   27    106.63 MB       1.15x  MISS
   6 edit one file                      122.35 MB   27      0.01 MB      9,061x  MISS
   7 switch to a branch, 30 files         8.23 MB   11      0.07 MB        119x  MISS
   8 switch back                           3.5 kB    4          0 B           -  ok
   9 second clone, other dirty edits      0.07 MB    7      0.13 MB       0.52x  ok
  10 5 new commits pulled                 8.24 MB   11      0.06 MB        139x  MISS
  total                                 308.68 MB         130.52 MB       2.36x  MISS

konduktor's own uploaded_bytes is the sent figure less the requests' lines and
headers (308.55 MB in all); the store held 308.55 MB at the end. v1 sends a new
base layer (8.2 MB) for every new commit (4, 7, 10) and the whole overlay (15.5
MB; 122 MB once the data file is in it) for every change to the dirty state
(3, 5, 6); at step 5 that includes the corpus's 50 MB JSONL file again. The
total target is 173.64 MB (1.25x the bound + 1 MiB per step).

Needs: pip install 'konduktor[s3]' 'moto[server]' zstandard
Usage: python benchmarks/iterate.py [--label v1] [--small] [--json out.json]
                                    [--root DIR] [--keep] [--konduktor PATH]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import BenchError, Traffic, konduktor_cmd, log, run, s3_server

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the local S3 server's AWS variables
from s3_server import AWS_VARIABLES  # type: ignore[import-not-found]  # noqa: E402

CORPUS_TOOL = HERE.parents[1] / "shared/bench/make_corpus.py"
SEED = 1
BUCKET = "bench"
STORE = f"s3://{BUCKET}/code"
MIB = 1 << 20
LEVEL = 3
STEP_SLACK, STEP_FACTOR = MIB, 1.1  # a step may send 1 MiB + 1.1x its lower bound
TOTAL_FACTOR = 1.25  # the session may send 1.25x its lower bound + 1 MiB per step
TEXT_EXTS = (".py", ".md", ".txt", ".yml")
# Pinned identity, dates and no user or system config, as the corpus generator has.
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


@dataclass(frozen=True)
class Size:
    """How big the session is: the corpus's arguments and the data file of step 5."""

    name: str
    corpus_args: tuple[str, ...]
    data_mb: int
    branch_files: int = 30
    pulled_commits: int = 5


FULL = Size("diffusers-sized", ("--files", "3000"), 400)
SMALL = Size(
    "small",
    ("--files", "300", "--data-mb", "5", "--checkpoint-mb", "10", "--venv-files", "200"),
    40,
)
# The second clone's own dirty state (no data file, no ignored junk).
CLONE_DIRTY = ("--seed", "2", "--modified", "10", "--untracked", "10", "--data-mb", "0")
CLONE_DIRTY += ("--checkpoint-mb", "0", "--venv-files", "0")


# -- git, edits, the data file ---------------------------------------------------------------


def git(root: Path, *args: str) -> str:
    return run(["git", "-C", str(root), *args], env={**os.environ, **GIT_ENV})[1]


def dirty_paths(root: Path) -> set[str]:
    """Every path `git status` names (modified, untracked, renamed: both sides)."""
    entries = iter(git(root, "status", "--porcelain", "-z", "--untracked-files=all").split("\0"))
    paths = set()
    for entry in entries:
        if entry:
            paths.add(entry[3:])
            if entry[0] in "RC":  # a rename or copy: its source path comes next
                paths.add(next(entries))
    return paths


def clean_text_files(*roots: Path) -> list[str]:
    """Tracked text files, sorted, that no work tree in *roots* has changed."""
    tracked = git(roots[0], "ls-files", "-z").split("\0")
    dirty = set().union(*(dirty_paths(r) for r in roots))
    return sorted(p for p in tracked if p.endswith(TEXT_EXTS) and p not in dirty)


def append_line(path: Path, tag: str) -> None:
    with path.open("ab") as f:
        f.write(f"# {tag}\n".encode())


def write_data(path: Path, size: int, seed: int) -> None:
    """*size* bytes of JSONL from a seeded generator: compressible like real text data."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(8192)})
    weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocab))))
    stream = " ".join(rng.choices(vocab, cum_weights=weights, k=1 << 20))
    labels = vocab[:64]
    path.parent.mkdir(parents=True, exist_ok=True)
    written, record = 0, 0
    with path.open("wb") as f:
        while written < size:
            lines = []
            for _ in range(4096):
                start = rng.randrange(len(stream) - 600)
                prompt = stream[start : start + rng.randint(40, 600)]
                label = labels[rng.randrange(len(labels))]
                lines.append(
                    f'{{"id": {record}, "prompt": "{prompt}", "label": "{label}", '
                    f'"score": {rng.random():.4f}}}\n'
                )
                record += 1
            chunk = "".join(lines).encode()[: size - written]
            f.write(chunk)
            written += len(chunk)


# -- the lower bound -------------------------------------------------------------------------


@dataclass
class Contents:
    """What the store has been sent so far, as content digests, and a hash cache."""

    seen: set[str] = field(default_factory=set)
    _cache: dict[tuple[str, int, int, int, int], str] = field(default_factory=dict)

    def digest(self, path: Path) -> str:
        st = path.lstat()
        stamp = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stamp not in self._cache:
            h = hashlib.sha256()
            if path.is_symlink():
                h.update(b"symlink\0" + os.fsencode(os.readlink(path)))
            else:
                with path.open("rb") as f:
                    while block := f.read(MIB):
                        h.update(block)
            self._cache[stamp] = h.hexdigest()
        return self._cache[stamp]

    def new_since(self, root: Path, selected: list[str]) -> dict[str, Any]:
        """The lower bound of a launch of *selected* (paths under *root*): the zstd -3 size
        of the contents the store lacks, concatenated in path order; then marks them seen."""
        import zstandard

        new: dict[str, str] = {}  # digest -> first path with it, in path order
        for rel in sorted(selected, key=os.fsencode):
            digest = self.digest(root / rel)
            if digest not in self.seen and digest not in new:
                new[digest] = rel
        raw = 0
        compressed = _Counter()
        cctx = zstandard.ZstdCompressor(level=LEVEL, threads=0)
        with cctx.stream_writer(compressed, closefd=False) as writer:
            for rel in new.values():
                path = root / rel
                if path.is_symlink():
                    data = os.fsencode(os.readlink(path))
                    writer.write(data)
                    raw += len(data)
                    continue
                with path.open("rb") as f:
                    while block := f.read(MIB):
                        writer.write(block)
                        raw += len(block)
        self.seen.update(new)
        return {"new_files": len(new), "new_bytes": raw, "lower_bound": compressed.n if new else 0}


class _Counter:
    """A write-only sink that counts the bytes written to it."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


# -- the session -----------------------------------------------------------------------------


@dataclass
class Step:
    number: int
    name: str
    workdir: str
    seconds: float
    sent: int  # bytes the server read off its connections
    bodies: int  # request bodies alone
    requests: int
    uploaded_bytes: int  # what konduktor says it sent
    new_files: int
    new_bytes: int
    lower_bound: int
    store_bytes: int  # everything in the bucket afterwards

    @property
    def ratio(self) -> float | None:
        return self.sent / self.lower_bound if self.lower_bound else None

    @property
    def allowed(self) -> float:
        return STEP_SLACK + STEP_FACTOR * self.lower_bound


@dataclass
class Session:
    args: argparse.Namespace
    size: Size
    tmp: Path
    traffic: Traffic
    s3: Any  # a boto3 client, for what is not measured
    envs: dict[str, dict[str, str]]  # per machine
    contents: Contents = field(default_factory=Contents)
    steps: list[Step] = field(default_factory=list)

    def launch(self, name: str, workdir: Path, machine: str = "a") -> Step:
        env = self.envs[machine]
        konduktor = self.args.konduktor
        before = self.traffic.snapshot()
        cmd = [*konduktor, "snapshot", "--upload", "-o", "json", str(workdir)]
        seconds, out, _ = run(cmd, env=env)
        after = self.traffic.snapshot()
        result = json.loads(out)
        _, listing, _ = run([*konduktor, "ls-files", "-z", str(workdir)], env=env)
        bound = self.contents.new_since(workdir, [p for p in listing.split("\0") if p])
        step = Step(
            number=len(self.steps) + 1,
            name=name,
            workdir=workdir.name,
            seconds=seconds,
            sent=after[0] - before[0],
            bodies=after[1] - before[1],
            requests=after[2] - before[2],
            uploaded_bytes=int(result["uploaded_bytes"]),
            store_bytes=bucket_bytes(self.s3),
            **bound,
        )
        self.steps.append(step)
        ratio = f"{step.ratio:.2f}x" if step.ratio is not None else "-"
        log(
            f"step {step.number:2d} {name}: sent {mb(step.sent)}, konduktor "
            f"{mb(step.uploaded_bytes)}, lower bound {mb(step.lower_bound)} ({ratio}), "
            f"{seconds:.1f} s"
        )
        return step


def bucket_bytes(client: Any) -> int:
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        total += sum(obj["Size"] for obj in page.get("Contents", []))
    return total


def environment(tmp: Path, endpoint: str, machine: str) -> dict[str, str]:
    """Fake AWS credentials for the local server and nothing of the developer's own AWS
    setup; a config whose store is the local server; a KONDUKTOR_HOME per machine."""
    absent = tmp / "absent"
    config, sync = tmp / "config.yaml", tmp / "sync.yaml"
    config.write_text(f"allowed_clouds: [s3]\njobs:\n  bucket: {STORE}\n")
    sync.write_text(f"sync:\n  store:\n    endpoint_url: {endpoint}\n    region: us-east-1\n")
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARIABLES}
    env.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(absent),
        AWS_SHARED_CREDENTIALS_FILE=str(absent),
        AWS_EC2_METADATA_DISABLED="true",
        KONDUKTOR_HOME=str(tmp / f"home-{machine}"),
        KONDUKTOR_CONFIG=str(config),
        KONDUKTOR_SYNC_CONFIG=str(sync),
    )
    return env


def session(s: Session, tool: Path) -> None:
    """The ten steps (see the module docstring)."""
    work, clone = s.tmp / "work", s.tmp / "clone"
    log(f"generating the {s.size.name} corpus in {work} ...")
    seconds, out, _ = run(
        [sys.executable, str(tool), str(work), "--seed", str(SEED), *s.size.corpus_args]
    )
    log(f"  {seconds:.0f} s: {out.strip()}")
    rng = random.Random(SEED)
    pool = clean_text_files(work)
    rng.shuffle(pool)
    py_files = iter([p for p in pool if p.endswith(".py")])
    edited: set[str] = set()

    def pick() -> str:
        rel = next(py_files)
        edited.add(rel)
        return rel

    s.launch("first launch", work)
    s.launch("relaunch, nothing changed", work)

    one = pick()
    append_line(work / one, "edit 3")
    s.launch("edit one file", work)

    git(work, "commit", "-q", "-m", "edit 3", "--", one)
    s.launch("commit it", work)

    log(f"writing a {s.size.data_mb} MB data file ...")
    start = time.perf_counter()
    write_data(work / "experiments/data/train.jsonl", s.size.data_mb * 10**6, SEED)
    log(f"  {time.perf_counter() - start:.1f} s")
    s.launch(f"add a {s.size.data_mb} MB untracked data file", work)

    append_line(work / pick(), "edit 6")
    s.launch("edit one file", work)

    branch = s.tmp / "feature"
    git(work, "worktree", "add", "-q", "-b", "feature", str(branch), "HEAD")
    changed = [p for p in clean_text_files(work) if p not in edited][: s.size.branch_files]
    if len(changed) < s.size.branch_files:
        raise BenchError(f"only {len(changed)} clean files for the branch")
    for rel in changed:
        append_line(branch / rel, "feature branch")
    git(branch, "commit", "-q", "-a", "-m", f"feature: {len(changed)} files")
    git(work, "worktree", "remove", str(branch))
    git(work, "switch", "-q", "feature")
    s.launch(f"switch to a branch with {len(changed)} changed files", work)

    git(work, "switch", "-q", "main")
    s.launch("switch back", work)

    git(work.parent, "clone", "-q", str(work), str(clone))
    run([sys.executable, str(tool), "--dirty-only", str(clone), *CLONE_DIRTY])
    s.launch("second clone, same commit, other dirty edits", clone, machine="b")

    candidates = [p for p in clean_text_files(work, clone) if p not in edited and p not in changed]
    for n in range(s.size.pulled_commits):
        files = candidates[4 * n : 4 * n + 4]
        for rel in files:
            append_line(clone / rel, f"upstream commit {n + 1}")
        new = f"src/upstream_{n + 1}.py"
        (clone / new).parent.mkdir(parents=True, exist_ok=True)
        (clone / new).write_text(f'"""Upstream module {n + 1}."""\n\nVALUE = {n + 1}\n')
        git(clone, "add", "--", new)
        git(clone, "commit", "-q", "-m", f"upstream {n + 1}", "--", *files, new)
    git(work, "pull", "-q", "--ff-only", str(clone), "main")
    s.launch(f"{s.size.pulled_commits} new commits pulled", work)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import boto3

    size = SMALL if args.small else FULL
    tmp = args.root / size.name
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with s3_server() as (endpoint, traffic):
            keys = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
            s3.create_bucket(Bucket=BUCKET)
            envs = {m: environment(tmp, endpoint, m) for m in ("a", "b")}
            s = Session(args, size, tmp, traffic, s3, envs)
            session(s, args.corpus_tool)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return summarise(args, size, s.steps)


def summarise(args: argparse.Namespace, size: Size, steps: list[Step]) -> dict[str, Any]:
    sent = sum(s.sent for s in steps)
    bound = sum(s.lower_bound for s in steps)
    total_allowed = TOTAL_FACTOR * bound + MIB * len(steps)
    misses = [s.number for s in steps[1:] if s.sent > s.allowed]
    return {
        "label": args.label,
        "date": datetime.date.today().isoformat(),
        "corpus": {"size": size.name, "args": list(size.corpus_args), "seed": SEED},
        "data_mb": size.data_mb,
        "konduktor": args.konduktor,
        "steps": [
            {**asdict(s), "ratio": s.ratio, "allowed": s.allowed, "ok": s.sent <= s.allowed}
            for s in steps
        ],
        "total": {
            "sent": sent,
            "uploaded_bytes": sum(s.uploaded_bytes for s in steps),
            "lower_bound": bound,
            "ratio": sent / bound if bound else None,
            "allowed": total_allowed,
        },
        "targets": {
            "steps": "PASS" if not misses else "MISS",
            "steps_missed": misses,
            "total": "PASS" if sent <= total_allowed else "MISS",
        },
    }


# -- output ----------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n / 1e3:.1f} kB"


def table(r: dict[str, Any]) -> str:
    label = r["label"]
    rows = [
        (
            "step",
            f"sent ({label})",
            "requests",
            "uploaded_bytes",
            "lower bound",
            "sent/bound",
            "target",
            "store after",
            "time",
        )
    ]
    for s in r["steps"]:
        rows.append(
            (
                f"{s['number']:2d} {s['name']}",
                mb(s["sent"]),
                str(s["requests"]),
                mb(s["uploaded_bytes"]),
                mb(s["lower_bound"]),
                f"{s['ratio']:.2f}x" if s["ratio"] is not None else "-",
                "" if s["number"] == 1 else ("ok" if s["ok"] else "MISS"),
                mb(s["store_bytes"]),
                f"{s['seconds']:.1f} s",
            )
        )
    t = r["total"]
    total_ratio = f"{t['ratio']:.2f}x" if t["ratio"] is not None else "-"
    rows.append(
        ("total", mb(t["sent"]), "", mb(t["uploaded_bytes"]), mb(t["lower_bound"]), total_ratio)
    )
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    right = {1, 2, 3, 4, 5, 7, 8}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        return "  " + "  ".join(cells).rstrip()

    targets = r["targets"]
    missed = ", ".join(map(str, targets["steps_missed"])) or "none"
    lines = [
        f"iteration session, {r['corpus']['size']} corpus, {r['data_mb']} MB data file, "
        f"format {label}, {r['date']} (bytes the S3 server received per launch):",
        *map(line, rows),
        f"{targets['steps']}: every step after the first sends <= 1 MiB + "
        f"{STEP_FACTOR}x its lower bound (missed: {missed})",
        f"{targets['total']}: the session sends {mb(t['sent'])} <= {TOTAL_FACTOR}x the "
        f"lower bound + 1 MiB per step = {mb(t['allowed'])}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="v1", help="the format measured (default v1)")
    parser.add_argument("--small", action="store_true", help="a 300-file corpus, 40 MB data")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    parser.add_argument("--root", type=Path, default=Path("/tmp/iterate-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the work trees")
    parser.add_argument("--konduktor", type=Path, help="the konduktor executable to run")
    parser.add_argument("--corpus-tool", type=Path, default=CORPUS_TOOL)
    args = parser.parse_args()
    args.konduktor = [str(args.konduktor)] if args.konduktor else konduktor_cmd()
    if not args.corpus_tool.is_file():
        sys.exit(f"error: corpus generator not found: {args.corpus_tool} (pass --corpus-tool)")
    try:
        result = measure(args)
    except BenchError as exc:
        sys.exit(f"error: {exc}")
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
