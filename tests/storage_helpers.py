"""Helpers shared by the storage tests."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from konduktor.storage import PutResult, Store


def put_concurrently(
    store: Store, key: str, path: Path, sha256: str, writers: int = 2, **kwargs: Any
) -> tuple[list[PutResult], list[BaseException]]:
    """Put one key from several threads at once; return their results and their errors."""
    results: list[PutResult] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            results.append(store.put(key, path, sha256=sha256, **kwargs))
        except Exception as exc:  # the caller asserts on them
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors
