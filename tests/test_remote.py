"""Snapshots in a store: upload only what is missing, list, and the garbage-collection rule."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from config_files import write_config
from gitrepo_helpers import make_repo
from test_cli import run

from konduktor import layout, remote, snapshot
from konduktor.errors import ConflictError, NotFoundError, SelectionError, UsageError
from konduktor.storage import Store, StoreOptions, open_store

BACKENDS = ["file", "s3", "gcs"]


@pytest.fixture(autouse=True)
def konduktor_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONDUKTOR_HOME", str(tmp_path / "khome"))
    monkeypatch.setenv("KONDUKTOR_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("KONDUKTOR_SYNC_CONFIG", str(tmp_path / "no-sync.yaml"))


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, StoreOptions]:
    if request.param == "file":
        return f"file://{tmp_path}/store", StoreOptions()
    make = request.getfixturevalue(f"{request.param}_store_factory")
    url, options = make("code")
    return str(url), options


@pytest.fixture
def store(store_url: tuple[str, StoreOptions]) -> Store:
    return open_store(*store_url)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path, {"train.py": "print(1)\n", "data/x.csv": "a,b\n" * 1000})


def objects(store: Store) -> dict[str, int]:
    return {i.key: i.size for i in store.list("v1/") if not i.key.startswith("v1/used/")}


def test_second_upload_uploads_nothing(repo: Path, store: Store) -> None:
    first = remote.upload(repo, store)
    assert first.uploaded == first.keys
    assert first.uploaded_bytes > 0
    before = objects(store)
    second = remote.upload(repo, store)
    assert second.uploaded == ()
    assert second.uploaded_bytes == 0
    assert second.reused == first.keys
    assert second.info is None  # nothing was even built
    assert objects(store) == before


def test_after_an_edit_only_the_overlay_is_uploaded(repo: Path, store: Store) -> None:
    first = remote.upload(repo, store)
    (repo / "train.py").write_text("print(2)\n")
    second = remote.upload(repo, store)
    assert len(second.keys) == 2
    assert second.reused == first.keys
    assert second.uploaded == second.keys[1:]
    assert second.keys[1].startswith("objects/")
    stored = {k: v for k, v in objects(store).items() if k == "v1/" + second.keys[1]}
    assert stored == {"v1/" + second.keys[1]: second.uploaded_bytes}


def test_uploaded_layer_carries_sha256_and_provenance(repo: Path, store: Store) -> None:
    result = remote.upload(repo, store)
    assert result.info is not None
    layer = result.info.layers[0]
    info = store.stat("v1/" + layer.key)
    assert info is not None
    assert info.sha256 == layer.sha256
    assert info.size == layer.compressed_bytes
    assert info.metadata["kind"] == "base"
    assert info.metadata["commit"] == result.commit


def test_store_ls_lists_layers_with_commit_and_last_use(repo: Path, store: Store) -> None:
    (repo / "new.py").write_text("x\n")
    # last_used is the store's clock at the upload, to its resolution (whole seconds on S3).
    slack = datetime.timedelta(seconds=2)
    before = datetime.datetime.now(datetime.timezone.utc) - slack
    result = remote.upload(repo, store)
    found = {layer.key: layer for layer in remote.layers(store)}
    after = datetime.datetime.now(datetime.timezone.utc) + slack
    assert set(found) == set(result.keys)
    base, overlay = (found[k] for k in result.keys)
    assert (base.kind, base.commit) == ("base", result.commit)
    assert (overlay.kind, overlay.commit) == ("overlay", result.commit)
    assert before <= base.last_used <= after
    assert before <= overlay.last_used <= after


def test_gc_spares_recently_used_layers_and_deletes_stale_ones(
    repo: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = remote.upload(repo, store)
    assert remote.gc(store, datetime.timedelta(days=30)) == []
    assert set(objects(store)) == {"v1/" + k for k in result.keys}
    # Thirty-one days later, nobody has used these layers:
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=31)
    monkeypatch.setattr(remote, "_utcnow", lambda: later)
    doomed = remote.gc(store, datetime.timedelta(days=30), dry_run=True)
    assert {layer.key for layer in doomed} == set(result.keys)
    assert set(objects(store)) == {"v1/" + k for k in result.keys}  # dry run deleted nothing
    remote.gc(store, datetime.timedelta(days=30))
    assert objects(store) == {}
    assert list(store.list(layout.USED)) == []


def test_a_fresh_marker_spares_an_old_layer(repo: Path, tmp_path: Path) -> None:
    """The rule: a launch refreshes each layer's marker before it submits; gc goes by it."""
    store = open_store(f"file://{tmp_path}/s")
    result = remote.upload(repo, store)
    old = (datetime.datetime.now() - datetime.timedelta(days=90)).timestamp()
    for path in (tmp_path / "s").rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))  # everything, markers included, is 90 days old
    assert {layer.key for layer in remote.gc(store, remote.parse_age("30d"), dry_run=True)} == set(
        result.keys
    )
    remote.upload(repo, store)  # what a launch does before it submits: refresh the markers
    assert remote.gc(store, remote.parse_age("30d")) == []
    assert set(objects(store)) == {"v1/" + k for k in result.keys}


def test_gc_refuses_a_cutoff_shorter_than_an_hour(store: Store) -> None:
    with pytest.raises(UsageError, match="at least 1h"):
        remote.gc(store, datetime.timedelta(minutes=59))


@pytest.mark.parametrize(
    ("text", "minutes"), [("30d", 43200), ("12h", 720), ("90m", 90), ("2w", 20160)]
)
def test_parse_age(text: str, minutes: int) -> None:
    assert remote.parse_age(text) == datetime.timedelta(minutes=minutes)


def test_parse_age_rejects_nonsense() -> None:
    with pytest.raises(UsageError, match="30d"):
        remote.parse_age("a month")


def test_cli_upload_twice_reports_bytes_and_reuse(
    repo: Path, store_url: tuple[str, StoreOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = store_url
    if options.endpoint_url:
        config = Path(str(repo) + "-sync.yaml")
        config.write_text(f"sync:\n  store:\n    endpoint_url: {options.endpoint_url}\n")
        monkeypatch.setenv("KONDUKTOR_SYNC_CONFIG", str(config))
    code, out, err = run("snapshot", repo, "--upload", "--store", url, "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["uploaded_bytes"] > 0
    assert first["reused"] == []
    code, out, err = run("snapshot", repo, "--upload", "--store", url)
    assert code == 0, err
    assert "uploaded 0 B, reused 1 layer(s)" in out


def test_cli_check_file_store(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    code, out, _ = run("check", "file", "--store", f"file://{tmp_path}/s")
    assert code == 0
    for step in ("identity", "bucket reachable", "write", "read", "delete"):
        assert f"ok    {step}" in out


def test_cli_check_reports_failure_with_exit_1(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file, not a directory")
    code, out, err = run("check", "file", "--store", f"file://{tmp_path}/f")
    assert code == 1
    assert "FAIL  bucket reachable" in out
    assert f"{tmp_path}/f is not a directory" in out
    assert err.startswith("error: ")


def test_cli_check_of_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    code, out, err = run("check", "file", "--store", f"file://{tmp_path}/new/s")
    assert code == 1
    assert f"FAIL  bucket reachable: file://{tmp_path}/new/s: the directory" in out
    assert f"mkdir -m 700 {tmp_path}/new/s" in out
    assert "write" not in out  # stopped before the probe, which would create it
    assert err.count("\n") == 1
    assert not (tmp_path / "new").exists()


def test_cli_check_of_a_missing_bucket_creates_nothing(
    s3_store_factory: Any, tmp_path: Path
) -> None:
    url, options = s3_store_factory(create_bucket=False)
    _endpoint_config(tmp_path, options)
    code, out, err = run("check", "s3", "--store", url)
    assert code == 1, err
    assert "FAIL  bucket reachable" in out
    assert f"aws s3 mb {url}" in out
    assert "first upload" not in out  # a bucket named by --store is not created by konduktor
    s3 = boto3.client("s3", endpoint_url=options.endpoint_url, region_name="us-east-1")
    assert url.removeprefix("s3://") not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_cli_check_does_not_create_the_per_user_default_bucket(
    s3_store_factory: Any, tmp_path: Path
) -> None:
    _, options = s3_store_factory(create_bucket=False)
    _endpoint_config(tmp_path, options, "allowed_clouds: [s3]\n")
    code, out, err = run("check")  # CLOUD from the configured store
    assert code == 1, err
    assert out.startswith("store s3://konduktor-filemounts-")
    assert "does not exist" in out
    assert "let the first upload create it" in out
    s3 = boto3.client("s3", endpoint_url=options.endpoint_url, region_name="us-east-1")
    assert not [b for b in s3.list_buckets()["Buckets"] if "filemounts" in b["Name"]]


def _endpoint_config(tmp_path: Path, options: StoreOptions, extra: str = "") -> None:
    """The config the autouse fixture points at, with the test server's endpoint."""
    text = f"{extra}sync:\n  store:\n    endpoint_url: {options.endpoint_url}\n"
    write_config(tmp_path / "no-config.yaml", text, tmp_path / "no-sync.yaml")


def test_cli_check_refuses_a_bare_path_as_every_command_does(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "store"
    code, out, err = run("check", "file", "--store", path)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert f"write file://{path} " in err
    assert err.endswith("(see: konduktor check --help)\n")
    _, _, elsewhere = run("snapshot", repo, "--upload", "--store", path)
    assert elsewhere.split(" (see:")[0] == err.split(" (see:")[0]
    (tmp_path / "no-config.yaml").write_text(f"jobs:\n  bucket: {path}\n")
    code, _, configured = run("check", "file")
    assert code == 1  # the config's mistake, not the command line's
    reason = err.split(": ", 2)[2].split(" (see:")[0]
    assert configured.endswith(f"jobs.bucket: {reason}\n")
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("check", "s3", "--store", "gs://some-bucket"), "is a gs:// store, not s3"),
        (("check", "az"), "Invalid value for '[CLOUD]'"),
        (("check", "file", "--store", ""), "the store URL is empty"),
        (("store", "ls", "--store", "ftp://x/y"), "unknown scheme"),
        (("store", "gc", "--older-than", "30m"), "'--older-than': 30m is under 1h"),
        (("store", "gc", "--older-than", "3x"), "'--older-than': age '3x' is not understood"),
        (("store", "gc", "--older-than", "1.5h"), "'--older-than'"),
        (("store", "gc"), "Missing option '--older-than'"),
        (("store", "ls", "--pending", "extra"), "unexpected extra argument"),
    ],
)
def test_bad_arguments_of_store_and_check_exit_2_in_one_line(
    args: tuple[str, ...], words: str, tmp_path: Path
) -> None:
    code, out, err = run(*args, *(() if "--store" in args else ("--store", f"file://{tmp_path}/s")))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert words in err
    assert f"(see: konduktor {args[0]}" in err
    assert not (tmp_path / "s").exists()


def test_cli_store_ls_has_a_header_and_lists_plans(
    repo: Path, store_url: tuple[str, StoreOptions], tmp_path: Path
) -> None:
    url, options = store_url
    if options.endpoint_url:
        _endpoint_config(tmp_path, options)
    store = open_store(url, options)
    result = remote.upload(repo, store)
    plan = tmp_path / "plan.json"
    plan.write_bytes(b"{}")
    store.put(layout.plan("job-0000"), plan, sha256=hashlib.sha256(b"{}").hexdigest())
    code, out, err = run("store", "ls", "--store", url)
    assert (code, err) == (0, "")
    header, base, planned = out.splitlines()
    assert header.split() == ["KIND", "COMMIT", "SIZE", "LAST", "USED", "KEY"]
    kind, commit, _, unit, _, ago, key = base.split()
    assert (kind, commit, unit, ago) == ("base", (result.commit or "")[:12], "B", "ago")
    assert key == result.keys[0]
    kind, commit, size, unit, _, ago, key = planned.split()
    assert (kind, commit, size, unit, ago, key) == (
        "plan",
        "-",
        "2",
        "B",
        "ago",
        "plans/job-0000.json",
    )
    assert header.index("KEY") == base.index(result.keys[0]) == planned.index("plans/")
    code, out, _ = run("store", "ls", "--json", "--store", url)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["kind"] for row in rows] == ["base", "plan"]
    assert rows[1]["key"] == "plans/job-0000.json"
    assert rows[1]["bytes"] == 2
    assert (
        set(rows[0])
        == set(rows[1])
        == {"key", "kind", "commit", "bytes", "last_used", "age_seconds"}
    )


@pytest.mark.parametrize("flags", [(), ("--json",), ("--pending",), ("--pending", "--json")])
def test_cli_store_ls_of_an_empty_store_says_so_on_stderr(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    url = f"file://{tmp_path}/s"
    code, out, err = run("store", "ls", *flags, "--store", url)
    assert (code, out) == (0, "")
    what = "pending uploads" if "--pending" in flags else "layers or launch plans"
    assert err == f"no {what} in {url}\n"
    assert run("-q", "store", "ls", *flags, "--store", url) == (0, "", "")
    assert not (tmp_path / "s").exists()


def test_cli_store_ls_and_gc(repo: Path, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/s"
    run("snapshot", repo, "--upload", "--store", url)
    code, out, _ = run("store", "ls", "--store", url, "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["kind"] for row in rows] == ["base"]
    code, out, _ = run("store", "gc", "--older-than", "30d", "--dry-run", "--store", url)
    assert code == 0
    assert "would delete 0 layer(s), 0 B, and 0 launch plan(s)" in out
    code, _, err = run("store", "gc", "--older-than", "5m", "--store", url)
    assert code == 2  # a bad argument: a usage error
    assert "under 1h" in err


@pytest.mark.parametrize(
    ("url", "message"),
    [("ftp://x/y", "unknown scheme"), ("s3://Bad_Bucket", "malformed")],
)
def test_cli_bad_store_url_is_one_line(repo: Path, url: str, message: str) -> None:
    code, _, err = run("snapshot", repo, "--upload", "--store", url)
    assert code == 2  # a bad argument: a usage error
    assert message in err
    assert err.count("\n") == 1


# -- trust: the digests a pod gets are this machine's own ----------------------------------


def _replace(store: Store, key: str, data: bytes, tmp_path: Path) -> None:
    """What anyone who can write the bucket can do: other bytes under a key, with their
    own (consistent) sha256 and size metadata."""
    store.delete(key)
    evil = tmp_path / "evil"
    evil.write_bytes(data)
    store.put(key, evil, sha256=hashlib.sha256(data).hexdigest())


def test_a_replaced_layer_is_refused_here_and_on_a_machine_that_never_built_it(
    repo: Path, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = remote.upload(repo, store)
    _replace(store, first.keys[0].key, b"injected", tmp_path)
    for home in ("khome", "machine-b"):
        monkeypatch.setenv("KONDUKTOR_HOME", str(tmp_path / home))
        with pytest.raises(ConflictError, match="is not the layer this machine builds") as err:
            remote.upload(repo, store)
        assert first.keys[0].key in str(err.value)
        assert hashlib.sha256(b"injected").hexdigest() in str(err.value)


def test_a_layer_without_sha256_metadata_is_refused_in_one_line(
    repo: Path, store: Store, tmp_path: Path
) -> None:
    first = remote.upload(repo, store)
    key = first.keys[0].key
    store.get(key, tmp_path / "layer")
    store.delete(key)
    store._backend.create(  # a foreign writer: no konduktor metadata at all
        key, tmp_path / "layer", (tmp_path / "layer").stat().st_size, {}, None
    )
    with pytest.raises(ConflictError, match="sha256 missing"):
        remote.upload(repo, store)


def test_a_stored_layer_this_machine_did_not_build_is_verified_once(
    repo: Path, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = remote.upload(repo, store)  # another machine, or the pre-push hook elsewhere
    monkeypatch.setenv("KONDUKTOR_HOME", str(tmp_path / "machine-b"))
    built: list[int] = []
    build_layers = snapshot.build_layers

    def counting(p: snapshot.SnapshotPlan, layers: list[snapshot.LayerPlan], **kw: Path) -> object:
        built.append(len(layers))
        return build_layers(p, layers, **kw)

    monkeypatch.setattr(snapshot, "build_layers", counting)
    second = remote.upload(repo, store)
    assert second.uploaded == ()
    assert built == [len(first.keys)]  # built in memory, to learn its digest
    assert [la.sha256 for la in second.layers] == [la.sha256 for la in first.layers]
    assert [la.size for la in second.layers] == [la.size for la in first.layers]
    remote.upload(repo, store)
    assert built == [len(first.keys)]  # remembered: not built again


@pytest.mark.parametrize("garbage", ["[1, 2]", '{"x": 3}', "{not json"])
def test_an_unreadable_record_of_built_layers_only_costs_a_rebuild(
    repo: Path, store: Store, tmp_path: Path, garbage: str
) -> None:
    first = remote.upload(repo, store)
    vouched = tmp_path / "khome" / "cache" / "vouched.json"
    vouched.write_text(garbage.replace("x", first.keys[0]))
    again = remote.upload(repo, store)
    assert [la.sha256 for la in again.layers] == [la.sha256 for la in first.layers]


def test_a_file_changed_after_hashing_never_lands_under_the_planned_key(
    repo: Path, store: Store
) -> None:
    """The overlay's key is planned from hashes; a file that changes (same size) before it
    is archived would put other bytes under that content-addressed key for good."""
    (repo / "train.py").write_text("print(2)\n")
    p = snapshot.plan(repo)
    planned = p.names()[-1]
    (repo / "train.py").write_text("print(3)\n")
    with pytest.raises(SelectionError, match=r"train\.py changed between hashing and archiving"):
        remote.upload_plan(p, store)
    assert store.stat(planned.key) is None
    again = remote.upload(repo, store)
    assert again.keys[-1] != planned
    assert store.stat(again.keys[-1].key) is not None


def test_gc_deletes_plans_older_than_the_cutoff(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(b"{}")
    digest = hashlib.sha256(b"{}").hexdigest()
    store.put(layout.plan("old-0000"), plan, sha256=digest)
    assert remote.gc_plans(store, datetime.timedelta(days=1)) == []  # young: kept
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)
    monkeypatch.setattr(remote, "_utcnow", lambda: later)
    [doomed] = remote.gc_plans(store, datetime.timedelta(days=1), dry_run=True)
    assert doomed.key == layout.plan("old-0000")
    assert store.stat(doomed.key) is not None
    remote.gc_plans(store, datetime.timedelta(days=1))
    assert store.stat(doomed.key) is None


def test_cli_lists_pending_uploads_and_gc_aborts_the_old_ones(
    s3_store_factory: Any, tmp_path: Path
) -> None:
    """An interrupted multipart upload is invisible in the bucket but billed until aborted:
    `store ls --pending` shows it and `store gc` aborts it (moto dates uploads in 2010)."""
    url, options = s3_store_factory()
    (tmp_path / "no-sync.yaml").write_text(
        f"sync:\n  store:\n    endpoint_url: {options.endpoint_url}\n"
    )
    bucket = url.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=options.endpoint_url, region_name="us-east-1")
    s3.create_multipart_upload(Bucket=bucket, Key="v1/objects/00/left")
    code, out, err = run("store", "ls", "--pending", "--store", url)
    assert code == 0, err
    header, line = out.splitlines()
    assert header.split() == ["STARTED", "WHAT", "KEY"]
    assert "multipart upload" in line
    assert line.endswith("v1/objects/00/left")
    code, out, err = run("store", "gc", "--older-than", "30d", "--store", url)
    assert code == 0, err
    assert "aborted multipart upload" in out
    assert "1 upload(s) pending for over a day" in out
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert run("store", "ls", "--pending", "--store", url)[1:] == (
        "",
        f"no pending uploads in {url}\n",
    )


def test_gc_dry_run_lists_old_pending_uploads_and_aborts_none(s3_store_factory: Any) -> None:
    url, options = s3_store_factory()
    store = open_store(url, options)
    s3 = boto3.client("s3", endpoint_url=options.endpoint_url, region_name="us-east-1")
    bucket = url.removeprefix("s3://")
    s3.create_multipart_upload(Bucket=bucket, Key="v1/objects/00/left")
    [listed] = remote.gc_pending(store, dry_run=True)
    assert listed.key == "v1/objects/00/left"
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    assert remote.gc_pending(store) == [listed]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("cloud", ["s3", "gs"])
@pytest.mark.parametrize("args", [("store", "ls"), ("store", "gc", "--older-than", "1d")])
def test_store_commands_never_create_a_missing_bucket(
    cloud: str, args: tuple[str, ...], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Even with a cloud allowed (whose per-user default bucket a first upload creates),
    listing or collecting a bucket that does not exist says so and creates nothing."""
    make = request.getfixturevalue(f"{'s3' if cloud == 's3' else 'gcs'}_store_factory")
    url, options = make(create_bucket=False)
    _endpoint_config(tmp_path, options, f"allowed_clouds: [{cloud}]\n")
    code, out, err = run(*args, "--store", url)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "does not exist" in err
    with pytest.raises(NotFoundError):
        open_store(url, options).require_root()


def test_cli_check_without_cloud_checks_every_allowed_cloud(
    s3_store_factory: Any, tmp_path: Path
) -> None:
    """As Konduktor's `check`: each cloud of allowed_clouds, in order, all reported, the
    exit status failing when one fails (here gs, whose default bucket does not exist)."""
    url, options = s3_store_factory()
    _endpoint_config(tmp_path, options, f"allowed_clouds: [s3, gs]\njobs:\n  bucket: {url}\n")
    code, out, err = run("check")
    assert code == 1, err
    stores = [line.split()[1] for line in out.splitlines() if line.startswith("store ")]
    assert stores[0] == url
    assert stores[1].startswith("gs://konduktor-filemounts-")
    assert len(stores) == 2
    assert err == f"error: the store {stores[1]} does not work; fix what failed above\n"
    code, out, err = run("check", "s3")  # a CLOUD: only that one
    assert (code, out.splitlines()[0]) == (0, f"store {url}"), err


def test_cli_check_without_cloud_or_allowed_clouds_says_what_it_checked(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (tmp_path / "no-config.yaml").write_text(f"jobs:\n  bucket: file://{store}\n")
    code, out, err = run("check")
    assert code == 0, err
    assert out.splitlines()[0] == f"store file://{store}"
    assert err == (
        f"no allowed_clouds in {tmp_path / 'no-config.yaml'}: checking the configured store; "
        "set allowed_clouds: [s3] (or [gs]) there to check those clouds\n"
    )
