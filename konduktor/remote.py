"""Snapshots in an object store: upload what is missing, list layers, collect garbage.

Keys follow :mod:`konduktor.layout`. Garbage collection rule: every upload (and
every launch, before it submits) refreshes the last-used marker of each layer it
uses, whether it uploaded it or found it. ``gc --older-than D`` deletes a layer
only when its marker (or, without one, the layer itself) is older than D, and
refuses a D shorter than one hour, so a layer that a launch is about to use always
has a fresh marker and is spared.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from konduktor import layout, scratch, snapshot
from konduktor.cache import Built, Vouched
from konduktor.errors import (
    ConflictError,
    KonduktorError,
    NotFoundError,
    StorageError,
    UsageError,
)
from konduktor.plan import TO_UPLOAD, Layer
from konduktor.storage import ObjectInfo, Progress, Store
from konduktor.storage.base import Pending

log = logging.getLogger(__name__)

MIN_GC_AGE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class UploadResult:
    info: snapshot.SnapshotInfo | None  # the layers built, None when nothing was missing
    keys: tuple[layout.Name, ...]  # every layer of the snapshot, base first
    layers: tuple[Layer, ...]  # the same layers as stored: store key, digest and size
    uploaded: tuple[layout.Name, ...]  # (with dry_run: would be)
    reused: tuple[layout.Name, ...]
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
    p: snapshot.SnapshotPlan,
    store: Store,
    *,
    progress: Callable[[str, int], Progress | None] | None = None,
    build_progress: snapshot.Progress | None = None,
    dry_run: bool = False,
) -> UploadResult:
    """:func:`upload` for a snapshot plan made already; *dry_run* only looks. *progress*
    is called with (what, bytes) before each upload, *build_progress* as the missing
    layers are built.

    The digests in the result are this machine's own (:func:`_verified`), never the
    store's metadata: a pod is only handed bytes this machine vouches for.
    """
    names = p.names()
    found = {name: store.stat(name.key) for name in names}
    vouched = Vouched()
    digests = _verified(p, [n for n in names if found[n] is not None], found, store, vouched)
    missing = [name for name in names if found[name] is None]
    info, sent = None, 0
    if missing and dry_run:
        digests.update({name: (TO_UPLOAD, 0, 0, 0) for name in missing})
    elif missing:
        layers = _layers(p, missing)
        info, sent = _put_layers(p, layers, store, progress, digests, build_progress)
        for name in missing:
            vouched.put(name, digests[name])
    vouched.save()
    if not dry_run:
        for name in names:
            store.mark(name.used)
    return UploadResult(
        info,
        names,
        tuple(Layer(n.key, la.kind, *digests[n]) for la, n in zip(p.layers, names, strict=True)),
        tuple(n for n in names if found[n] is None),
        tuple(n for n in names if found[n] is not None),
        sent,
        p.commit,
        p.dirty,
    )


def _verified(
    p: snapshot.SnapshotPlan,
    names: list[layout.Name],
    found: dict[layout.Name, ObjectInfo | None],
    store: Store,
    vouched: Vouched,
) -> dict[layout.Name, Built]:
    """This machine's digest of each stored layer in *names*, checked against the store's
    metadata; layers it never built are built (in memory, not written) to learn it."""
    unknown = [name for name in names if vouched.get(name) is None]
    for built in snapshot.build_layers(p, _layers(p, unknown)) if unknown else ():
        vouched.put(built.key, _built(built))
    digests = {}
    for name in names:
        ours, info = vouched.get(name), found[name]
        assert ours is not None
        assert info is not None
        if (info.sha256, info.size) != ours[:2]:
            raise ConflictError(
                f"{store.url}/{name.key} is not the layer this machine builds for it (the "
                f"store says sha256 {info.sha256 or 'missing'}, {info.size} bytes; built: "
                f"{ours[0]}, {ours[1]} bytes): someone replaced it, or it was built by another "
                "konduktor or zstd version; delete that object and launch again"
            )
        digests[name] = ours
    return digests


def _built(layer: snapshot.BuiltLayer) -> Built:
    return layer.sha256, layer.compressed_bytes, layer.members, layer.tar_bytes


def _layers(p: snapshot.SnapshotPlan, names: list[layout.Name]) -> list[snapshot.LayerPlan]:
    wanted = set(names)
    return [layer for layer in p.layers if layer.key in wanted]


def _put_layers(
    p: snapshot.SnapshotPlan,
    missing: list[snapshot.LayerPlan],
    store: Store,
    progress: Callable[[str, int], Progress | None] | None,
    stored: dict[layout.Name, Built],
    build_progress: snapshot.Progress | None = None,
) -> tuple[snapshot.SnapshotInfo, int]:
    """Build the *missing* layers and put them; record each digest in *stored*."""
    sent = 0
    with scratch.directory("upload") as tmp:
        built = snapshot.build_layers(p, missing, out=tmp, progress=build_progress)
        for layer in built:
            assert layer.path is not None
            bar = progress(f"{layer.kind} layer", layer.compressed_bytes) if progress else None
            result = store.put(
                layer.key.key,
                layer.path,
                sha256=layer.sha256,
                metadata=_metadata(p, layer),
                progress=bar,
                lock=layer.key.lock,
            )
            sent += layer.compressed_bytes if result.uploaded else 0
            stored[layer.key] = _built(layer)
    return snapshot.SnapshotInfo(p.root, p.commit, p.dirty, built, p.warnings, 0.0), sent


def _metadata(p: snapshot.SnapshotPlan, layer: snapshot.BuiltLayer) -> dict[str, str]:
    meta = {"kind": layer.kind, "files": str(layer.files), "bytes": str(layer.bytes)}
    if p.commit:
        meta["commit"] = p.commit
    return meta


@dataclass(frozen=True)
class StoredLayer:
    """A layer in the store, or a launch plan (kind ``plan``: last used = written)."""

    key: layout.Name
    kind: str
    commit: str | None
    size: int
    last_used: datetime.datetime

    def to_json(self, age: datetime.timedelta) -> dict[str, object]:
        """As ``store ls --json`` prints it, *age* after its last use."""
        return {
            "key": self.key,
            "kind": self.kind,
            "commit": self.commit,
            "bytes": self.size,
            "last_used": self.last_used.isoformat(),
            "age_seconds": int(age.total_seconds()),
        }


def layers(store: Store) -> Iterator[StoredLayer]:
    """The layers in the store, with when each was last used."""
    used = {layout.parse_used(i.key): i.modified for i in store.list(layout.USED)}
    for prefix in layout.LAYER_PREFIXES:
        for listed in store.list(prefix):
            # Some stores list no metadata: ask for it (one request per layer).
            info = listed if listed.metadata else store.stat(listed.key) or listed
            name = layout.parse(info.key)
            kind = "base" if name.is_base else info.metadata.get("kind", "layer")
            commit = name.commit or info.metadata.get("commit")
            last = max(info.modified, used.get(name, info.modified))
            yield StoredLayer(name, kind, commit, info.size, last)


def plans(store: Store) -> Iterator[StoredLayer]:
    """The launch plans in the store, as :class:`StoredLayer` of kind ``plan`` whose last
    use is when it was written (what :func:`gc_plans` compares with its cutoff)."""
    for info in store.list(layout.PLANS):
        yield StoredLayer(layout.parse(info.key), "plan", None, info.size, info.modified)


def gc(store: Store, older_than: datetime.timedelta, *, dry_run: bool = False) -> list[StoredLayer]:
    """Delete layers not used within *older_than*; return them."""
    cutoff = _cutoff(older_than)
    victims = [layer for layer in layers(store) if layer.last_used < cutoff]
    if not dry_run:
        for layer in victims:
            store.delete(layer.key.key)
            store.delete(layer.key.used)
            log.debug("deleted %s", layer.key)
    return victims


def gc_plans(
    store: Store, older_than: datetime.timedelta, *, dry_run: bool = False
) -> list[ObjectInfo]:
    """Delete launch plans written before *older_than* ago; return them. A plan is a
    record of a launch (the pod never reads it), so no running job needs it."""
    cutoff = _cutoff(older_than)
    victims = [info for info in store.list(layout.PLANS) if info.modified < cutoff]
    if not dry_run:
        for info in victims:
            store.delete(info.key)
    return victims


PENDING_AGE = datetime.timedelta(days=1)  # an upload pending this long was interrupted


def gc_pending(store: Store, *, dry_run: bool = False) -> list[Pending]:
    """Abort the uploads left pending for more than PENDING_AGE (an interrupted multipart
    upload, a partial file of the ``file://`` store); return them. Younger ones may still
    be in progress."""
    return store.sweep(PENDING_AGE, dry_run=dry_run)


def _cutoff(older_than: datetime.timedelta) -> datetime.datetime:
    if older_than < MIN_GC_AGE:
        raise UsageError("--older-than must be at least 1h, so layers in use are never deleted")
    return _utcnow() - older_than


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


def check(store: Store, *, when_missing: str = "") -> list[Check]:
    """Identity, reachability and a write/read/delete probe; stops at the first failure.
    Creates no bucket or directory: a missing one fails (*when_missing* added to the fix)."""
    results: list[Check] = []
    probe = layout.probe(f"{datetime.datetime.now().timestamp():.0f}")
    with scratch.directory("check") as tmp:
        source = tmp / "probe"
        source.write_bytes(b"konduktor check\n")
        steps: list[tuple[str, Callable[[], str]]] = [
            ("identity", store.identity),
            ("bucket reachable", lambda: _reachable(store, when_missing)),
            ("write", lambda: _write_probe(store, probe, source)),
            ("read", lambda: str(store.get(probe, tmp / "back").size) + " bytes"),
            ("delete", lambda: _delete_probe(store, probe)),
        ]
        for step, action in steps:
            try:
                results.append(Check(step, True, action()))
            except KonduktorError as exc:
                results.append(Check(step, False, str(exc)))
                break
    return results


def _reachable(store: Store, when_missing: str) -> str:
    try:
        store.require_root()  # before the probe, which would create it
    except NotFoundError as exc:
        if not when_missing:
            raise
        raise NotFoundError(f"{exc}; {when_missing}") from exc
    return f"{sum(1 for _ in store.list(layout.USED))} last-used markers"


def _write_probe(store: Store, key: str, source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    store.put(key, source, sha256=digest)
    return key


def _delete_probe(store: Store, key: str) -> str:
    store.delete(key)
    if store.stat(key) is not None:
        raise StorageError(f"{store.url}/{key} is still there after delete")
    return "ok"


@dataclass(frozen=True)
class CloudCheck:
    store: str  # the store's URL
    steps: tuple[Check, ...]
    secret: str | None = None  # what happened to the cluster's credentials Secret, if anything

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)


def check_cloud(
    cloud: str | None = None,
    *,
    store_url: str | None = None,
    kubeconfig: Path | None = None,
    kube_context: str | None = None,
) -> CloudCheck:
    """:func:`check` the *cloud*'s store (default: *store_url*'s kind, else the configured
    store's), or *store_url*; when it works and a Kubernetes context exists, write the
    user's credentials into the Secret that launched pods mount.

    Nothing is created: a missing bucket or directory fails the check and says how to
    make it, even the per-user default bucket that a first upload creates.
    """
    from konduktor import config
    from konduktor.k8s import submit
    from konduktor.storage import open_store, parse_url

    cfg = config.load()
    if cloud is None:
        cloud = parse_url(cfg.store_url()[0] if store_url is None else store_url)[0]
    url, options = cfg.store_url(cloud)
    url = url if store_url is None else store_url
    target = open_store(url, replace(options, create_bucket=False))
    first_use = options.create_bucket and store_url is None  # the per-user default bucket
    hint = "or let the first upload create it (konduktor snapshot --upload, or a launch)"
    result = CloudCheck(target.url, tuple(check(target, when_missing=hint if first_use else "")))
    context = submit.current_context(kubeconfig, kube_context)
    if not result.ok or cloud == "file" or context is None:
        return result
    if importlib.util.find_spec("kubernetes") is None:
        note = (
            f"kube context {context} found; to give its pods your credentials, install the "
            "kubernetes client (pip install 'konduktor[k8s]') and check again"
        )
        return replace(result, secret=note)
    from konduktor.k8s import secrets

    return replace(result, secret=secrets.write(submit.connect(kubeconfig, kube_context), cloud))
