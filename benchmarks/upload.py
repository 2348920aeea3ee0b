"""Upload benchmark (not part of the test run): konduktor's S3 put vs `aws s3 cp`.

One 200 MB layer-like file (incompressible, like a zstd layer) is uploaded to the
same local S3 server (moto's standalone server on loopback), alternating between
konduktor and the AWS CLI, each in a fresh process, --repeat times; the server is
reset after every upload. Reported: median seconds and the throughput ratio
(aws time / our time; >= 0.9 is the target).

With --baseline DIR (a checkout of an older konduktor, e.g. `git worktree add DIR
REV`), that version's put runs too, in the same rounds, and the ratio to it is reported.

Needs: pip install 'konduktor[s3]' 'moto[server]' awscli
Usage: python benchmarks/upload.py [--mb 200] [--repeat 3] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

OURS = """
import sys
from pathlib import Path
from konduktor.storage import StoreOptions, open_store
url, endpoint, path, digest = sys.argv[1:]
store = open_store(url, StoreOptions(endpoint_url=endpoint))
assert store.put("v1/objects/bench.tar.zst", Path(path), sha256=digest).uploaded
"""


def make_file(path: Path, mb: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(mb):
            block = os.urandom(1 << 20)
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def reset(endpoint: str, bucket: str, env: dict[str, str]) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    aws = ["aws", "--endpoint-url", endpoint, "s3", "mb", f"s3://{bucket}"]
    subprocess.run(aws, env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="an older konduktor checkout to compare")
    args = parser.parse_args()
    if shutil.which("aws") is None:
        sys.exit("the AWS CLI is not installed: pip install awscli")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://127.0.0.1:%d" % server._server.server_port  # noqa: UP031
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    bucket = "bench"
    ours_times, aws_times, base_times = [], [], []
    base_env = {**env, "PYTHONPATH": str(args.baseline)} if args.baseline else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "layer.tar.zst"
            digest = make_file(path, args.mb)
            ours = [sys.executable, "-c", OURS, f"s3://{bucket}", endpoint, str(path), digest]
            aws = [
                "aws",
                "--endpoint-url",
                endpoint,
                "s3",
                "cp",
                "--only-show-errors",
                str(path),
                f"s3://{bucket}/v1/objects/bench.tar.zst",
            ]
            for _ in range(args.repeat):
                reset(endpoint, bucket, env)
                ours_times.append(timed(ours, env))
                reset(endpoint, bucket, env)
                aws_times.append(timed(aws, env))
                if base_env is not None:
                    reset(endpoint, bucket, env)
                    base_times.append(timed(ours, base_env))
    finally:
        server.stop()
    ours_s, aws_s = statistics.median(ours_times), statistics.median(aws_times)
    verdict = "PASS" if aws_s / ours_s >= 0.9 else "MISS"
    print(f"{args.mb} MB to a local S3 server, medians of {args.repeat} (fresh processes):")
    print(f"  konduktor put  {ours_s:6.2f} s  ({args.mb / ours_s:6.1f} MB/s)")
    print(f"  aws s3 cp      {aws_s:6.2f} s  ({args.mb / aws_s:6.1f} MB/s)")
    print(
        f"  throughput ratio (aws time / our time) {aws_s / ours_s:.2f}x  target >= 0.9x {verdict}"
    )
    if base_times:
        base_s = statistics.median(base_times)
        print(f"  baseline put   {base_s:6.2f} s  ({args.mb / base_s:6.1f} MB/s)")
        print(f"  baseline time / our time {base_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
