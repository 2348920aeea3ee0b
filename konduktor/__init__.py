"""konduktor: get an ML engineer's code onto a Kubernetes GPU cluster fast, exactly, safely."""

from __future__ import annotations

__version__ = "0.1.0.dev0"
