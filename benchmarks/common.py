"""What the benchmarks share: running commands, timing them, failing clearly, and a local
S3 server that counts the bytes its clients send."""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


# -- the S3 server, counting what its clients send -------------------------------------------


@dataclass
class Traffic:
    """What the S3 server has read from its clients since it started."""

    wire: int = 0  # bytes read off the connections: request lines, headers, bodies
    bodies: int = 0  # Content-Length of every request
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, wire: int = 0, bodies: int = 0, requests: int = 0) -> None:
        with self._lock:
            self.wire += wire
            self.bodies += bodies
            self.requests += requests

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.wire, self.bodies, self.requests


class CountingReader(io.RawIOBase):
    """A read-only view of a connection's buffered reader that counts the bytes read."""

    def __init__(self, inner: Any, traffic: Traffic) -> None:
        super().__init__()
        self._inner, self._traffic = inner, traffic

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._inner.read(-1 if size is None else size)
        self._traffic.add(wire=len(data))
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data: bytes = self._inner.readline(-1 if size is None else size)
        self._traffic.add(wire=len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        n: int = self._inner.readinto(buffer)
        self._traffic.add(wire=n or 0)
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


@contextlib.contextmanager
def s3_server() -> Iterator[tuple[str, Traffic]]:
    """Moto's S3 server on a free loopback port, as ThreadedMotoServer runs it, with a
    request handler that counts every byte its clients send; yields (endpoint, traffic)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
    traffic = Traffic()

    class Handler(MotoRequestHandler):
        def setup(self) -> None:
            super().setup()
            self.rfile = CountingReader(self.rfile, traffic)  # type: ignore[assignment]

    backend = DomainDispatcherApplication(create_backend_app)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        traffic.add(bodies=int(environ.get("CONTENT_LENGTH") or 0), requests=1)
        return backend(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", traffic
    finally:
        server.shutdown()
        thread.join()
