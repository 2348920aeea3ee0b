"""A real S3 server for tests: moto's standalone server on a free loopback port.

``s3_server`` starts one server for the session and points the AWS SDK at fake
credentials, away from the developer's own (no profile, no config files, no
instance metadata). ``s3_store_factory`` makes a fresh bucket per call and
empties the server after each test, since moto keeps everything in memory.
"""

from __future__ import annotations

import itertools
import urllib.request
from collections.abc import Callable, Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from konduktor.storage import StoreOptions

__all__ = ["AWS_VARIABLES", "s3_server", "s3_store_factory"]

S3StoreFactory = Callable[..., tuple[str, StoreOptions]]

_names = itertools.count()
# Variables through which a developer's AWS setup would leak into the tests.
AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_STS",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto server that lives for the whole session."""
    no_files = tmp_path_factory.mktemp("aws") / "absent"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in AWS_VARIABLES:
                mp.delenv(name, raising=False)
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_CONFIG_FILE", str(no_files))
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(no_files))
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_store_factory(s3_server: str) -> Iterator[S3StoreFactory]:
    """make(prefix="", *, create_bucket=True) -> ("s3://bucket[/prefix]", options).

    Each call names a new bucket, created unless create_bucket is False; the options
    point at the moto server. Everything on the server is dropped after the test.
    """

    def make(prefix: str = "", *, create_bucket: bool = True) -> tuple[str, StoreOptions]:
        bucket = f"test-bucket-{next(_names)}"
        if create_bucket:
            client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
            client.create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return url, StoreOptions(endpoint_url=s3_server)

    yield make
    reset = urllib.request.Request(f"{s3_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(reset) as response:
        response.read()
