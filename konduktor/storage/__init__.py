"""Object stores behind one class, chosen by URL scheme; SDKs are imported lazily.

file://PATH           a local directory (the embedded default, ~/.konduktor/store)
s3://bucket[/prefix]  Amazon S3 or an S3-compatible store (pip install 'konduktor[s3]')
gs://bucket[/prefix]  Google Cloud Storage (pip install 'konduktor[gcs]')

:class:`Store` holds the semantics (create-only puts, verified and atomic transfers);
each backend module supplies only its SDK calls, behind :class:`base.Backend`.
"""

from __future__ import annotations

import importlib

from konduktor.errors import StorageError
from konduktor.storage.base import (
    BACKENDS,
    ObjectInfo,
    Progress,
    PutResult,
    StoreOptions,
    parse_url,
)
from konduktor.storage.core import Store

__all__ = [
    "ObjectInfo",
    "Progress",
    "PutResult",
    "Store",
    "StoreOptions",
    "open_store",
    "parse_url",
]


def open_store(url: str, options: StoreOptions | None = None) -> Store:
    """The store at *url*; tells which extra to install when its SDK is missing."""
    scheme, _, _ = parse_url(url)
    module_name, class_name, extra, package = BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        # exc.name is a module ("google"), which is not what pip installs
        raise StorageError(
            f"{url}: the {scheme}:// store needs the Python package {package}, which cannot "
            f"be imported (no module {exc.name}); run pip install 'konduktor[{extra}]'"
        ) from exc
    return Store(getattr(module, class_name)(url, options or StoreOptions()))
