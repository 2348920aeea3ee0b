"""Object stores behind one protocol, chosen by URL scheme; SDKs are imported lazily.

file://PATH           a local directory (the embedded default, ~/.konduktor/store)
s3://bucket[/prefix]  Amazon S3 or an S3-compatible store (pip install 'konduktor[s3]')
gs://bucket[/prefix]  Google Cloud Storage (pip install 'konduktor[gcs]')
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from konduktor.errors import StorageError, UsageError
from konduktor.storage.base import ObjectInfo, Progress, PutResult, Store

__all__ = ["ObjectInfo", "Progress", "PutResult", "Store", "StoreOptions", "open_store"]

# scheme -> (module, class, pip extra)
_BACKENDS = {
    "file": ("konduktor.storage.local", "LocalStore", None),
    "s3": ("konduktor.storage.s3", "S3Store", "s3"),
    "gs": ("konduktor.storage.gcs", "GCSStore", "gcs"),
}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StoreOptions:
    """Settings from the `sync:` section of the config; every field is optional."""

    endpoint_url: str | None = None  # an S3-compatible endpoint, or a GCS emulator
    region: str | None = None
    profile: str | None = None  # AWS profile
    create_bucket: bool = False  # create the bucket on first use (per-user default bucket)
    retry_mode: str = "standard"  # botocore: standard or adaptive
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


def parse_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket or path, prefix) of a store URL, or UsageError saying what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise UsageError(f"store URL {url!r} has an unknown scheme; use one of {known}")
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise UsageError(f"store URL {url!r} is malformed; write file:///absolute/path")
        return scheme, parts.path, ""
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not _BUCKET.match(bucket) or parts.query or parts.fragment:
        raise UsageError(
            f"store URL {url!r} is malformed; write {scheme}://bucket-name/optional/prefix "
            "(bucket names: 3-63 lowercase letters, digits, dots and dashes)"
        )
    return scheme, bucket, prefix


def open_store(url: str, options: StoreOptions | None = None) -> Store:
    """The store at *url*; tells which extra to install when its SDK is missing."""
    scheme, _, _ = parse_url(url)
    module_name, class_name, extra = _BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StorageError(
            f"{url}: the {scheme}:// store needs {exc.name}; run pip install 'konduktor[{extra}]'"
        ) from exc
    store: Store = getattr(module, class_name)(url, options or StoreOptions())
    return store
