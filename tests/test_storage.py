"""One conformance suite, run on every backend: file://, S3 (moto server), GCS (fake-gcs-server)."""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import put_concurrently

from konduktor import layout, remote
from konduktor.errors import (
    ConflictError,
    KeyTakenError,
    NotFoundError,
    SourceChangedError,
    StorageError,
    TransientError,
    UsageError,
)
from konduktor.storage import Store, StoreOptions, core, lock, open_store, parse_url
from konduktor.storage import s3 as s3_module
from konduktor.storage.base import Source
from konduktor.storage.local import LocalBackend

BACKENDS = ["file", "s3", "gcs"]
StoreFactory = Callable[..., tuple[str, StoreOptions]]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return open_store(f"file://{tmp_path}/store")
    make: StoreFactory = request.getfixturevalue(f"{request.param}_store_factory")
    url, options = make("team/prefix")
    return open_store(url, options)


def write(path: Path, data: bytes) -> tuple[Path, str]:
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def big_file(path: Path, mib: int) -> tuple[Path, str]:
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(mib):
            chunk = i.to_bytes(4, "big") + block[4:]
            f.write(chunk)
            digest.update(chunk)
    return path, digest.hexdigest()


def test_round_trip_carries_sha256_and_size(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"hello layer\n")
    result = store.put("v1/objects/ab/abc.tar.zst", src, sha256=digest)
    assert result.uploaded
    assert result.size == 12
    info = store.stat("v1/objects/ab/abc.tar.zst")
    assert info is not None
    assert (info.size, info.sha256) == (12, digest)
    assert info.metadata["size"] == "12"
    assert info.modified.tzinfo is not None
    got = store.get("v1/objects/ab/abc.tar.zst", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"hello layer\n"
    assert got.sha256 == digest


def test_missing_key_stat_is_none_and_get_is_not_found(store: Store, tmp_path: Path) -> None:
    assert store.stat("v1/nope") is None
    with pytest.raises(NotFoundError):
        store.get("v1/nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_put_same_content_again_uploads_nothing(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"same")
    assert store.put("k", src, sha256=digest).uploaded
    again = store.put("k", src, sha256=digest)
    assert not again.uploaded
    assert again.size == 4


def test_create_only_refuses_different_content(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"one")
    store.put("k", src, sha256=digest)
    other, other_digest = write(tmp_path / "b", b"two")
    with pytest.raises(ConflictError):
        store.put("k", other, sha256=other_digest)
    store.get("k", tmp_path / "c")
    assert (tmp_path / "c").read_bytes() == b"one"


def test_two_threads_putting_one_key_both_succeed(store: Store, tmp_path: Path) -> None:
    src, digest = big_file(tmp_path / "a", 3)
    results, errors = put_concurrently(store, "race/key", src, digest)
    assert errors == []
    assert len(results) == 2
    store.get("race/key", tmp_path / "out")
    assert hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest() == digest


def test_list_by_prefix_is_sorted_and_relative(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    for key in ("v1/b/2", "v1/a/1", "v1/a/3", "v2/z"):
        store.put(key, src, sha256=digest)
    assert [i.key for i in store.list("v1/a/")] == ["v1/a/1", "v1/a/3"]
    assert [i.key for i in store.list("v1/")] == ["v1/a/1", "v1/a/3", "v1/b/2"]
    assert [i.key for i in store.list("nothing/")] == []
    assert all(i.size == 1 for i in store.list(""))


def test_delete_removes_and_is_idempotent(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    store.put("d/k", src, sha256=digest)
    store.delete("d/k")
    assert store.stat("d/k") is None
    store.delete("d/k")
    assert list(store.list("d/")) == []


def test_extra_metadata_is_kept(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    store.put("m", src, sha256=digest, metadata={"commit": "abc123", "kind": "base"})
    info = store.stat("m")
    assert info is not None
    assert info.metadata["commit"] == "abc123"
    assert info.metadata["kind"] == "base"


def test_empty_object_round_trip(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"")
    store.put("empty", src, sha256=digest)
    store.get("empty", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b""


def test_progress_reports_every_byte(store: Store, tmp_path: Path) -> None:
    src, digest = big_file(tmp_path / "a", 9)
    sent: list[int] = []
    store.put("p", src, sha256=digest, progress=sent.append)
    assert sum(sent) == 9 << 20
    got: list[int] = []
    store.get("p", tmp_path / "b", progress=got.append)
    assert sum(got) == 9 << 20


def test_large_object_round_trip(store: Store, tmp_path: Path) -> None:
    src, digest = big_file(tmp_path / "big", 64)
    assert store.put("big/layer.tar.zst", src, sha256=digest).uploaded
    info = store.stat("big/layer.tar.zst")
    assert info is not None
    assert (info.size, info.sha256) == (64 << 20, digest)
    store.get("big/layer.tar.zst", tmp_path / "back")
    assert (tmp_path / "back").stat().st_size == 64 << 20
    src.unlink()
    assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("mib", [1, 20], ids=["small", "chunked"])
def test_interrupted_upload_leaves_nothing_visible(store: Store, tmp_path: Path, mib: int) -> None:
    src, digest = big_file(tmp_path / "a", mib)
    seen = {"bytes": 0}

    def interrupt(n: int) -> None:
        seen["bytes"] += n
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put("half/key", src, sha256=digest, progress=interrupt)
    assert store.stat("half/key") is None
    assert [i.key for i in store.list("half/")] == []
    assert store.put("half/key", src, sha256=digest).uploaded  # and it can be retried


# -- a source that changes: the key stays free ------------------------------------------------


def leftovers(store: Store, tmp_path: Path) -> list[str]:
    """What an aborted put may have left: unfinished writes, and hidden files (file://)."""
    found = [p.key for p in store.pending()]
    if store.url.startswith("file://"):
        found += [p.name for p in (tmp_path / "store").rglob(".*")]
    return found


def rewrite_tail(path: Path, how: str) -> None:
    """Change the last MiB of *path* in place ("rewrite"), or add to its end ("append")."""
    with path.open("r+b") as f:
        f.seek(0, os.SEEK_END) if how == "append" else f.seek(-(1 << 20), os.SEEK_END)
        f.write(os.urandom(1 << 20))


@pytest.mark.parametrize("mib", [1, 20], ids=["small", "chunked"])
def test_a_stale_sha256_is_source_changed_and_leaves_the_key_free(
    store: Store, tmp_path: Path, mib: int
) -> None:
    """The caller hashed the file earlier (a stat-keyed cache); it changed since."""
    src, stale = big_file(tmp_path / "a", mib)
    rewrite_tail(src, "rewrite")
    with pytest.raises(SourceChangedError) as raised:
        store.put("v1/objects/ab/stale", src, sha256=stale)
    assert str(raised.value) == (
        f"{src} changed while it was being uploaded (its sha256 is no longer {stale[:12]}); "
        "wait until it stops changing and launch again"
    )
    assert store.stat("v1/objects/ab/stale") is None
    assert leftovers(store, tmp_path) == []
    settled = hashlib.sha256(src.read_bytes()).hexdigest()
    assert store.put("v1/objects/ab/stale", src, sha256=settled).uploaded


@pytest.fixture
def read_as_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 streams what it reads from 8 MiB on, one part in flight: a change after the
    first part's progress is read into the next. (Below the multipart threshold it reads
    the whole file before sending: test_storage_s3 shows a late change does not matter.)"""
    monkeypatch.setattr(s3_module, "MULTIPART_THRESHOLD", 8 << 20)
    monkeypatch.setattr(s3_module, "PART_SIZE", 5 << 20)
    monkeypatch.setattr(s3_module, "PARALLEL_PARTS", 1)


@pytest.mark.usefixtures("read_as_sent")
@pytest.mark.parametrize("how", ["rewrite", "append"])
def test_a_file_changed_while_it_is_sent_never_lands_under_its_key(
    store: Store, tmp_path: Path, how: str
) -> None:
    src, digest = big_file(tmp_path / "a", 20)
    changes = []

    def change_after_the_first_chunk(n: int) -> None:
        if not changes:
            changes.append(n)
            rewrite_tail(src, how)

    with pytest.raises(SourceChangedError, match=f"{src} changed while it was being uploaded"):
        store.put("v1/objects/cd/moving", src, sha256=digest, progress=change_after_the_first_chunk)
    assert changes
    assert store.stat("v1/objects/cd/moving") is None
    assert leftovers(store, tmp_path) == []
    settled = hashlib.sha256(src.read_bytes()).hexdigest()
    assert store.put("v1/objects/cd/moving", src, sha256=settled).uploaded
    store.get("v1/objects/cd/moving", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


# -- concurrent puts of one key: one sends the bytes ------------------------------------------

KEY = layout.layer("ab" * 32)
LOCK = KEY.lock


@pytest.fixture
def quick_locks(monkeypatch: pytest.MonkeyPatch) -> float:
    """Heartbeats every second (S3 dates have whole seconds); the stale period, 3 s; every
    object locked, however small."""
    monkeypatch.setattr(lock, "MIN_BYTES", 0)
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 1.0)
    monkeypatch.setattr(lock, "STALE_HEARTBEATS", 3)
    monkeypatch.setattr(lock, "POLL_SECONDS", 0.05)
    return lock.HEARTBEAT_SECONDS * lock.STALE_HEARTBEATS


def test_concurrent_puts_of_one_key_send_its_bytes_once(
    store: Store, tmp_path: Path, quick_locks: float
) -> None:
    """The holder is slower than the stale period, yet alive (it heartbeats): the others
    wait for it instead of taking over, then find its object."""
    src, digest = big_file(tmp_path / "a", 3)
    sent: list[int] = []
    counting = threading.Lock()

    def slow_holder(n: int) -> None:
        with counting:
            sent.append(n)
            first = len(sent) == 1
        if first:
            time.sleep(quick_locks + 1)

    results, errors = put_concurrently(
        store, KEY.key, src, digest, writers=8, progress=slow_holder, lock=LOCK
    )
    assert errors == []
    assert sorted(r.uploaded for r in results) == [False] * 7 + [True]
    assert sum(sent) == 3 << 20  # the bytes went up once
    assert store.stat(LOCK) is None  # released


def test_a_dead_holder_delays_a_put_by_the_stale_period_only(
    store: Store, tmp_path: Path, quick_locks: float, caplog: pytest.LogCaptureFixture
) -> None:
    store.mark(LOCK)  # left by a launcher that died: never refreshed
    src, digest = write(tmp_path / "a", b"layer")
    started = time.monotonic()
    results, errors = put_concurrently(store, KEY.key, src, digest, writers=1, lock=LOCK)
    assert time.monotonic() - started >= quick_locks  # it did wait for the holder
    assert errors == []
    assert [r.uploaded for r in results] == [True]
    assert f"upload lock {LOCK} was not refreshed" in caplog.text
    assert store.stat(LOCK) is None


def test_a_small_object_goes_without_the_lock(store: Store, tmp_path: Path) -> None:
    """Below lock.MIN_BYTES the lock costs more requests than a duplicate upload costs: a
    dead holder's marker neither delays the put nor is taken over."""
    store.mark(LOCK)
    src, digest = write(tmp_path / "a", b"layer")
    assert store.put(KEY.key, src, sha256=digest, lock=LOCK).uploaded
    assert store.stat(LOCK) is not None


def test_a_failed_put_releases_its_lock(store: Store, tmp_path: Path, quick_locks: float) -> None:
    src, stale = write(tmp_path / "a", b"before")
    src.write_bytes(b"after!")
    with pytest.raises(SourceChangedError):
        store.put(KEY.key, src, sha256=stale, lock=LOCK)
    assert store.stat(LOCK) is None
    assert store.stat(KEY.key) is None


def test_upload_locks_are_not_layers(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/s")
    store.mark(LOCK)
    assert not LOCK.startswith(layout.LAYER_PREFIXES)
    assert list(remote.layers(store)) == []


def test_mark_creates_and_refreshes(store: Store) -> None:
    store.mark("used/x")
    first = store.stat("used/x")
    assert first is not None
    time.sleep(1.1)
    store.mark("used/x")
    second = store.stat("used/x")
    assert second is not None
    assert second.modified > first.modified


def test_nested_keys_do_not_clash_with_prefixes(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    store.put("a/b", src, sha256=digest)
    store.put("a/bc", src, sha256=digest)
    assert [i.key for i in store.list("a/b")] == ["a/b", "a/bc"]
    assert [i.key for i in store.list("a/b/")] == []


def test_get_overwrites_destination_atomically(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"new")
    store.put("k", src, sha256=digest)
    dest = tmp_path / "dest"
    dest.write_bytes(b"old content")
    store.get("k", dest)
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".dest")) == []


def test_signed_url_is_none_or_https_like(store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    store.put("s", src, sha256=digest)
    url = store.signed_url("s", 600)
    if store.url.startswith("file://"):
        assert url is None
    elif url is not None:
        assert url.startswith("http")


def test_store_url_is_canonical(store: Store) -> None:
    assert "://" in store.url
    assert not store.url.endswith("/")


@pytest.mark.parametrize(
    "url",
    ["ftp://host/x", "s3://", "s3://Bad_Bucket/x", "gs://a/b?x=1", "file://host/path", "nope"],
)
def test_bad_store_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError, match="store URL"):
        parse_url(url)


@pytest.mark.parametrize("path", ["/srv/store", "./store", "~/store"])
def test_a_bare_path_is_refused_with_the_url_to_write(path: str) -> None:
    absolute = os.path.abspath(os.path.expanduser(path))
    with pytest.raises(
        UsageError, match=f"has no scheme; for that directory write file://{absolute} "
    ):
        parse_url(path)


@pytest.mark.parametrize(
    ("url", "module", "package", "extra"),
    [
        ("s3://some-bucket", "boto3", "boto3", "s3"),
        ("gs://some-bucket", "google.cloud", "google-cloud-storage", "gcs"),
    ],
)
def test_a_missing_sdk_names_its_package_and_the_extra(
    url: str, module: str, package: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, f"konduktor.storage.{extra}", raising=False)  # afresh
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError for it
    with pytest.raises(StorageError) as raised:
        open_store(url)
    assert f"needs the Python package {package}," in str(raised.value)
    assert str(raised.value).endswith(f"run pip install 'konduktor[{extra}]'")


def test_require_root_passes_for_a_store_that_exists(store: Store) -> None:
    store.mark("v1/used/x")  # file://: the first write creates the directory
    store.require_root()


@pytest.mark.parametrize("backend", BACKENDS)
def test_require_root_says_how_to_create_a_missing_one_and_creates_nothing(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "file":
        url, options = f"file://{tmp_path}/absent", StoreOptions()
    else:
        make: StoreFactory = request.getfixturevalue(f"{backend}_store_factory")
        url, options = make(create_bucket=False)
    store = open_store(url, options)
    fix = {"file": "mkdir -m 700", "s3": "aws s3 mb", "gcs": "gcloud storage buckets create"}
    for _ in range(2):  # the first call created nothing
        with pytest.raises(NotFoundError, match="does not exist") as raised:
            store.require_root()
        assert fix[backend] in str(raised.value)
    assert not (tmp_path / "absent").exists()


def test_local_interrupted_upload_leaves_no_metadata(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/s")
    src, digest = write(tmp_path / "a", b"x" * 10)

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put("k/v", src, sha256=digest, progress=interrupt)
    assert [p.name for p in (tmp_path / "s" / "k").iterdir()] == []


def test_get_verifies_content_against_its_sha256(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = write(tmp_path / "a", b"real content")
    with monkeypatch.context() as unchecked:  # a writer that does not check what it sends
        unchecked.setattr(Source, "check", lambda self: None)
        store.put("lying", src, sha256="0" * 64)  # metadata that does not match the bytes
    with pytest.raises(StorageError, match="sha256"):
        store.get("lying", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(params=BACKENDS)
def missing_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A store whose bucket (or directory) cannot exist."""
    if request.param == "file":
        (tmp_path / "file").write_text("not a directory")
        return open_store(f"file://{tmp_path}/file/store")
    make: StoreFactory = request.getfixturevalue(f"{request.param}_store_factory")
    url, options = make("x", create_bucket=False)
    return open_store(url, options)


def test_missing_bucket_names_the_store(missing_store: Store, tmp_path: Path) -> None:
    src, digest = write(tmp_path / "a", b"x")
    with pytest.raises(StorageError) as raised:
        missing_store.put("k", src, sha256=digest)
    assert missing_store.url in str(raised.value)


# -- the core's rules, on a local backend made to misbehave ----------------------------------


class LossyBackend(LocalBackend):
    """Stores one byte less than it was given, after checking what it read: an upload
    that does not land intact."""

    def create(self, key: str, *args: Any) -> str | None:
        version = super().create(key, *args)
        object_path = self.root / key
        object_path.write_bytes(object_path.read_bytes()[:-1])
        return version


def test_upload_that_does_not_land_intact_is_refused_and_removed(tmp_path: Path) -> None:
    store = Store(LossyBackend(f"file://{tmp_path}/s"))
    src, digest = write(tmp_path / "a", b"twelve bytes")
    with pytest.raises(StorageError, match=r"/k did not land intact .*upload again"):
        store.put("k", src, sha256=digest)
    assert store.stat("k") is None  # this writer's own damaged object was discarded
    assert list(store.list()) == []


class CrowdedBackend(LocalBackend):
    """Another writer always creates the key first, and it is gone again by the next look."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.attempts = 0

    def create(self, key: str, *args: Any) -> str | None:
        self.attempts += 1
        raise KeyTakenError(f"{self.url}: another writer created the key first")


def test_writers_that_keep_colliding_give_up_after_race_attempts(tmp_path: Path) -> None:
    backend = CrowdedBackend(f"file://{tmp_path}/s")
    src, digest = write(tmp_path / "a", b"x")
    with pytest.raises(TransientError, match="other writers kept colliding"):
        Store(backend).put("k", src, sha256=digest)
    assert backend.attempts == core.RACE_ATTEMPTS


def test_identity_of_a_local_store_is_the_user(tmp_path: Path) -> None:
    assert f"(uid {os.getuid()})" in open_store(f"file://{tmp_path}/s").identity()


# -- the file:// store is private ------------------------------------------------------------


def modes(root: Path) -> dict[str, int]:
    """The permission bits of everything under *root*, and of *root* itself ("")."""
    found = {"": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_a_local_store_is_0700_with_0600_objects(tmp_path: Path) -> None:
    """A file mount may be an SSH key: nobody else may read it in the store."""
    store = open_store(f"file://{tmp_path}/home/store")
    src, digest = write(tmp_path / "key", b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    src.chmod(0o600)
    store.put("v1/objects/ab/key", src, sha256=digest)
    store.mark("v1/used/objects/ab/key")
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700  # made by the store
    assert modes(tmp_path / "home" / "store") == {
        "": 0o700,
        "v1": 0o700,
        "v1/objects": 0o700,
        "v1/objects/ab": 0o700,
        "v1/objects/ab/key": 0o600,
        "v1/objects/ab/key.meta.json": 0o600,
        "v1/used": 0o700,
        "v1/used/objects": 0o700,
        "v1/used/objects/ab": 0o700,
        "v1/used/objects/ab/key": 0o600,
    }


def test_an_open_local_store_root_is_made_0700_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "store"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    store = open_store(f"file://{root}")
    src, digest = write(tmp_path / "a", b"x")
    store.put("k", src, sha256=digest)
    store.put("k2", src, sha256=digest)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"{root} was readable by other users; made it 0700 (objects may be private files)"
    ]


def test_a_shared_sticky_root_like_tmp_keeps_its_mode_and_the_store_inside_is_private(
    tmp_path: Path,
) -> None:
    """`--store file:///tmp` made /tmp 0700 (as root): a sticky directory is shared on
    purpose; the store's own top directory under it is what becomes private."""
    root = tmp_path / "tmp"
    root.mkdir()
    root.chmod(0o1777)
    (root / "v1").mkdir(mode=0o755)  # left open by an older konduktor
    (root / "v1").chmod(0o755)
    store = open_store(f"file://{root}")
    src, digest = write(tmp_path / "a", b"x")
    store.put("k", src, sha256=digest)
    assert stat.S_IMODE(root.stat().st_mode) == 0o1777
    assert stat.S_IMODE((root / "v1").stat().st_mode) == 0o700


# -- unfinished writes in a file:// store ----------------------------------------------------


def test_local_partial_files_and_orphan_metadata_older_than_the_cutoff_are_swept(
    tmp_path: Path,
) -> None:
    """create() writes the metadata just before it links the object: a young orphan may
    be a write in progress, so only what is older than the cutoff goes."""
    store = open_store(f"file://{tmp_path}/s")
    src, digest = write(tmp_path / "a", b"x")
    store.put("v1/objects/ab/done", src, sha256=digest)
    ab = tmp_path / "s" / "v1" / "objects" / "ab"
    old = time.time() - 7200
    for name in (".big.tar.zst.k2j4_x9q", "lost.meta.json", ".young.a1b2c3d4", "new.meta.json"):
        (ab / name).write_bytes(b"{}")
    for name in (".big.tar.zst.k2j4_x9q", "lost.meta.json"):
        os.utime(ab / name, (old, old))
    listed = [(p.key, p.what) for p in store.pending()]
    assert listed == [
        ("v1/objects/ab/big.tar.zst", "partial file"),
        ("v1/objects/ab/lost", "orphan metadata"),
        ("v1/objects/ab/new", "orphan metadata"),
        ("v1/objects/ab/young", "partial file"),
    ]
    assert [p.key for p in store.pending("v1/objects/ab/n")] == ["v1/objects/ab/new"]
    swept = store.sweep(datetime.timedelta(hours=1))
    assert [p.key for p in swept] == ["v1/objects/ab/big.tar.zst", "v1/objects/ab/lost"]
    assert sorted(p.name for p in ab.iterdir()) == [
        ".young.a1b2c3d4",
        "done",
        "done.meta.json",
        "new.meta.json",
    ]
    assert [i.key for i in store.list()] == ["v1/objects/ab/done"]
