"""Writing a test's config: Konduktor's keys into config.yaml, konduktor's own sections
(sync:, hooks:, git:) into sync.yaml, where the README puts them."""

from __future__ import annotations

import re
from pathlib import Path

from konduktor import config, inputs
from konduktor.errors import ConfigError


def write_config(path: Path, text: str, sync_path: Path | None = None) -> Path:
    """Write *text* as the config at *path*, its own sections moved into *sync_path*
    (default: sync.yaml beside it), block by block as written; returns *sync_path*.

    Text that the config reader refuses before looking at any key (bad YAML, an alias, a
    key given twice, ...) stays whole in *path*: it tests that file's reading."""
    sync_path = sync_path or path.with_name("sync.yaml")
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    try:
        inputs.load_yaml(path, ConfigError, "config file")
    except ConfigError:
        return sync_path
    shared, own = [], []
    for block in re.split(r"(?m)^(?=\S)", text):
        key = block.split(":", 1)[0].strip()
        (own if key in config.OWN_SECTIONS else shared).append(block)
    path.write_bytes("".join(shared).encode("utf-8", "surrogateescape"))
    if own:
        sync_path.write_text("".join(own))
    return sync_path
