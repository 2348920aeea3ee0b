"""Sizes and ages as people read them."""

from __future__ import annotations

import datetime

MB = 1_000_000  # the one MB: sizes printed, and the config's *_limit_mb, are in these


def size(n: float) -> str:
    """``512 B``, ``1.5 kB``, ``23.0 MB``, ``1.2 GB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def age(delta: datetime.timedelta) -> str:
    """The largest whole unit: ``3d``, ``5h``, ``12m``, ``40s``."""
    seconds = int(delta.total_seconds())
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"
