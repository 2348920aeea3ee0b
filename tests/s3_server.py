"""A real S3 server for tests: moto's standalone server on a free loopback port."""

from __future__ import annotations

import itertools
import urllib.request
from collections.abc import Callable, Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from konduktor.storage import StoreOptions

__all__ = ["s3_server", "s3_store_factory"]

_names = itertools.count()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto server that lives for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_PROFILE", raising=False)
        yield endpoint
    server.stop()


@pytest.fixture
def s3_store_factory(s3_server: str) -> Iterator[Callable[..., tuple[str, StoreOptions]]]:
    """make(prefix, create_bucket=True) -> (s3://bucket/prefix, options); state reset after."""

    def make(prefix: str = "", *, create_bucket: bool = True) -> tuple[str, StoreOptions]:
        bucket = f"test-bucket-{next(_names)}"
        if create_bucket:
            client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
            client.create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return url, StoreOptions(endpoint_url=s3_server, max_attempts=2, connect_timeout=2)

    yield make
    # moto keeps every object in memory: drop them between tests
    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/moto-api/reset", method="POST"))
