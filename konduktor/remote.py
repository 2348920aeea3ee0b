"""Snapshots in an object store: upload what is missing, list layers, collect garbage.

Store layout (DESIGN §5), under the store URL::

    v1/bases/<repo-id>/<commit>/<root-id>.tar.zst   base layers, keyed by commit
    v1/objects/<xx>/<sha256>.tar.zst                overlays and full layers
    v1/used/<layer key>                             last-used markers

Garbage collection rule: every upload (and, later, every launch, before it
submits) refreshes the last-used marker of each layer it uses, whether it
uploaded it or found it. ``gc --older-than D`` deletes a layer only when its
marker (or, without one, the layer itself) is older than D, and refuses a D
shorter than one hour, so a layer that a launch is about to use always has a
fresh marker and is spared.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from konduktor import snapshot
from konduktor.errors import KonduktorError, StorageError, UsageError
from konduktor.storage import Progress, Store

log = logging.getLogger(__name__)

VERSION_PREFIX = "v1/"
USED_PREFIX = VERSION_PREFIX + "used/"
_LAYER_PREFIXES = (VERSION_PREFIX + "bases/", VERSION_PREFIX + "objects/")
MIN_GC_AGE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class LayerObject:
    key: str  # without the v1/ prefix
    kind: str
    sha256: str
    size: int


@dataclass(frozen=True)
class UploadResult:
    info: snapshot.SnapshotInfo | None  # the layers built, None when nothing was missing
    keys: tuple[str, ...]  # every layer key of the snapshot, base first
    objects: tuple[LayerObject, ...]  # the same layers as stored: digest and size
    uploaded: tuple[str, ...]
    reused: tuple[str, ...]
    uploaded_bytes: int
    commit: str | None
    dirty: bool


def upload(
    root: Path,
    store: Store,
    *,
    commit: str | None = None,
    level: int = snapshot.DEFAULT_LEVEL,
    progress: Callable[[str, int], Progress | None] | None = None,
) -> UploadResult:
    """Put the layers of *root* that *store* lacks; build only those; mark all as used."""
    return upload_plan(snapshot.plan(root, commit=commit, level=level), store, progress=progress)


def upload_plan(
    p: snapshot.Plan,
    store: Store,
    *,
    progress: Callable[[str, int], Progress | None] | None = None,
) -> UploadResult:
    """:func:`upload` for a snapshot plan made already."""
    found = {layer.key: store.stat(_key(layer.key)) for layer in p.layers}
    missing = [layer for layer in p.layers if found[layer.key] is None]
    objects = {
        key: (info.sha256 or "", info.size) for key, info in found.items() if info is not None
    }
    uploaded_bytes = 0
    info = None
    if missing:
        with tempfile.TemporaryDirectory(prefix="konduktor-upload-") as tmp:
            built = snapshot.build_layers(p, missing, out=Path(tmp))
            for layer in built:
                assert layer.path is not None
                bar = progress(layer.key, layer.compressed_bytes) if progress else None
                result = store.put(
                    _key(layer.key),
                    layer.path,
                    sha256=layer.sha256,
                    metadata=_metadata(p, layer),
                    progress=bar,
                )
                uploaded_bytes += layer.compressed_bytes if result.uploaded else 0
                objects[layer.key] = (layer.sha256, layer.compressed_bytes)
            info = snapshot.SnapshotInfo(p.root, p.commit, p.dirty, built, p.warnings, 0.0)
    keys = tuple(str(layer.key) for layer in p.layers)
    for key in keys:
        store.mark(USED_PREFIX + key)
    built_keys = {layer.key for layer in missing}
    return UploadResult(
        info,
        keys,
        tuple(LayerObject(str(la.key), la.kind, *objects[la.key]) for la in p.layers),
        tuple(k for k in keys if k in built_keys),
        tuple(k for k in keys if k not in built_keys),
        uploaded_bytes,
        p.commit,
        p.dirty,
    )


def _key(layer_key: str | None) -> str:
    assert layer_key is not None
    return VERSION_PREFIX + layer_key


def _metadata(p: snapshot.Plan, layer: snapshot.LayerInfo) -> dict[str, str]:
    meta = {"kind": layer.kind, "files": str(layer.files), "bytes": str(layer.bytes)}
    if p.commit:
        meta["commit"] = p.commit
    return meta


@dataclass(frozen=True)
class StoredLayer:
    key: str  # without the v1/ prefix
    kind: str
    commit: str | None
    size: int
    last_used: datetime.datetime


def layers(store: Store) -> Iterator[StoredLayer]:
    """The layers in the store, with when each was last used."""
    used = {i.key[len(USED_PREFIX) :]: i.modified for i in store.list(USED_PREFIX)}
    for prefix in _LAYER_PREFIXES:
        for listed in store.list(prefix):
            # Some stores list no metadata: ask for it (one request per layer).
            info = listed if listed.metadata else store.stat(listed.key) or listed
            key = info.key[len(VERSION_PREFIX) :]
            kind = "base" if key.startswith("bases/") else info.metadata.get("kind", "layer")
            commit = key.split("/")[2] if kind == "base" else info.metadata.get("commit")
            last = max(info.modified, used.get(key, info.modified))
            yield StoredLayer(key, kind, commit, info.size, last)


def gc(store: Store, older_than: datetime.timedelta, *, dry_run: bool = False) -> list[StoredLayer]:
    """Delete layers not used within *older_than*; return them."""
    if older_than < MIN_GC_AGE:
        raise UsageError("--older-than must be at least 1h, so layers in use are never deleted")
    cutoff = _utcnow() - older_than
    victims = [layer for layer in layers(store) if layer.last_used < cutoff]
    if not dry_run:
        for layer in victims:
            store.delete(VERSION_PREFIX + layer.key)
            store.delete(USED_PREFIX + layer.key)
            log.debug("deleted %s", layer.key)
    return victims


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def parse_age(text: str) -> datetime.timedelta:
    """`30d`, `12h`, `90m`, `2w` -> timedelta; UsageError otherwise."""
    match = re.fullmatch(r"(\d+)([mhdw])", text.strip())
    if not match:
        raise UsageError(f"age {text!r} is not understood; write e.g. 30d, 12h, 90m or 2w")
    number, unit = int(match.group(1)), match.group(2)
    return datetime.timedelta(minutes=number * {"m": 1, "h": 60, "d": 1440, "w": 10080}[unit])


@dataclass(frozen=True)
class Check:
    step: str
    ok: bool
    detail: str


def check(store: Store) -> list[Check]:
    """Identity, reachability and a write/read/delete probe; stops at the first failure."""
    results: list[Check] = []
    probe = f"{VERSION_PREFIX}check/probe-{datetime.datetime.now().timestamp():.0f}"
    with tempfile.TemporaryDirectory(prefix="konduktor-check-") as tmp:
        source = Path(tmp) / "probe"
        source.write_bytes(b"konduktor check\n")
        steps: list[tuple[str, Callable[[], str]]] = [
            ("identity", lambda: _identity(store)),
            ("bucket reachable", lambda: f"{sum(1 for _ in store.list(USED_PREFIX))} markers"),
            ("write", lambda: _write_probe(store, probe, source)),
            ("read", lambda: str(store.get(probe, Path(tmp) / "back").size) + " bytes"),
            ("delete", lambda: _delete_probe(store, probe)),
        ]
        for step, action in steps:
            try:
                results.append(Check(step, True, action()))
            except KonduktorError as exc:
                results.append(Check(step, False, str(exc)))
                break
    return results


def _identity(store: Store) -> str:
    describe = getattr(store, "identity", None)
    return str(describe()) if describe else "not applicable"


def _write_probe(store: Store, key: str, source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    store.put(key, source, sha256=digest)
    return key


def _delete_probe(store: Store, key: str) -> str:
    store.delete(key)
    if store.stat(key) is not None:
        raise StorageError(f"{store.url}/{key} is still there after delete")
    return "ok"
