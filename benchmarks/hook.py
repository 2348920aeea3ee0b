"""pre-push hook benchmark (not part of the test run): `git push` with and without the hook.

The committed tree of the 3k-file corpus from ../shared/bench/make_corpus.py
(benchmarks/corpora/synth-3000, `--seed 1`, shared with benchmarks/snapshot.py)
is cloned twice, each clone with a bare upstream of its own; only one clone has
`konduktor hooks install`. The store is a bucket on a local S3 server (moto's
standalone server on loopback, as in tests/s3_server.py). After one untimed round,
each repetition, interleaved and alternating which clone goes first:

1. commit one changed file and `git push origin HEAD:main` (the hook builds and
   uploads the new commit's base layer);
2. push the same commit again under a new branch name (its base layer is in the
   store already: the hook only asks for it).

Reported: medians of each, the overhead ratio (with hook / without), and the peak
RSS of one hooked push of a new commit (git and the hook, by getrusage).

Needs: pip install 'konduktor[s3]' 'moto[server]'
Usage: python benchmarks/hook.py [--files 3000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from snapshot import CORPUS_TOOL, RSS_PARENT, ensure_corpus, fmt_s, konduktor_cmd, log, median

IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def git(repo: Path, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"git {' '.join(args)} in {repo} failed:\n{done.stderr.strip()}")
    return done.stderr


def timed_push(repo: Path, refspec: str, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    stderr = git(repo, "push", "origin", refspec, env=env)
    return time.perf_counter() - start, stderr


def commit_change(repo: Path, n: int, env: dict[str, str]) -> None:
    (repo / "bench_change.txt").write_text(f"change {n}\n")
    git(repo, "add", "bench_change.txt", env=env)
    git(repo, "commit", "-q", "--no-verify", "-m", f"change {n}", env=env)


def start_store(tmp: Path) -> tuple[Any, dict[str, str]]:
    """A moto server with a bucket, and the environment that points konduktor at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        **os.environ,
        **IDENTITY,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "KONDUKTOR_HOME": str(tmp / "home"),
        "KONDUKTOR_CONFIG": str(tmp / "config.yaml"),
    }
    with_keys = {k.lower(): env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **with_keys)
    s3.create_bucket(Bucket="bench")
    (tmp / "config.yaml").write_text(
        f"jobs:\n  bucket: s3://bench/code\nsync:\n  store:\n    endpoint_url: {endpoint}\n"
    )
    return server, env


def clone_pair(corpus: Path, tmp: Path, env: dict[str, str]) -> dict[str, Path]:
    clones = {}
    for name in ("without", "with"):
        upstream = tmp / f"{name}.git"
        git(tmp, "clone", "-q", "--bare", str(corpus), str(upstream), env=env)
        git(tmp, "clone", "-q", str(upstream), str(tmp / name), env=env)
        clones[name] = tmp / name
    done = subprocess.run(
        [*konduktor_cmd(), "hooks", "install"], cwd=clones["with"], env=env, check=False
    )
    if done.returncode != 0:
        sys.exit("konduktor hooks install failed")
    return clones


def peak_rss_mb(repo: Path, n: int, env: dict[str, str]) -> float:
    commit_change(repo, n, env)
    cmd = ["git", "-C", str(repo), "push", "-q", "origin", "HEAD:main"]
    out = subprocess.run(
        [sys.executable, "-c", RSS_PARENT, *cmd], env=env, capture_output=True, text=True
    )
    return int(out.stdout.split()[-1]) * 1024 / 1e6


def measure(clones: dict[str, Path], repeat: int, env: dict[str, str]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    summary = ""
    for n in range(repeat + 1):  # round 0 is the untimed warm-up
        order = ("without", "with") if n % 2 else ("with", "without")
        for name in order:
            commit_change(clones[name], n, env)
            new, stderr = timed_push(clones[name], "HEAD:main", env)
            again, _ = timed_push(clones[name], f"HEAD:refs/heads/again-{n}", env)
            summary = stderr.strip() if name == "with" else summary
            if n:
                samples.setdefault(f"{name} new", []).append(new)
                samples.setdefault(f"{name} again", []).append(again)
    log(f"the hook said: {summary}")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    corpus = ensure_corpus(args.files, CORPUS_TOOL)
    with tempfile.TemporaryDirectory(prefix="konduktor-bench-hook-") as tmp_name:
        tmp = Path(tmp_name)
        server, env = start_store(tmp)
        try:
            clones = clone_pair(corpus, tmp, env)
            log(f"pushing: {args.repeat} interleaved rounds after one warm-up round")
            samples = measure(clones, args.repeat, env)
            rss = peak_rss_mb(clones["with"], args.repeat + 1, env)
        finally:
            server.stop()
    med = {name: median(values) for name, values in samples.items()}
    print(
        f"git push to a local bare repository, {args.files}-file corpus, medians of {args.repeat}:"
    )
    for case, label in (("new", "one new commit"), ("again", "the same commit again")):
        without, with_hook = med[f"without {case}"], med[f"with {case}"]
        print(
            f"  {label:<22} without hook {fmt_s(without):>9}   with hook {fmt_s(with_hook):>9}"
            f"   overhead {with_hook / without:.2f}x (+{fmt_s(with_hook - without)})"
        )
    print(f"  peak RSS of a hooked push of a new commit: {rss:.0f} MB")


if __name__ == "__main__":
    main()
