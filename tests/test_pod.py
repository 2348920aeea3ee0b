"""The pod startup script, run for real by `sh` (dash) in sandbox HOMEs.

PATH is cut down to a directory of chosen tools, to mimic images: coreutils and
tar only; plus curl and zstd; python3 with zstandard but no zstd; wget instead of
curl; the aws CLI with credentials from the mounted Secret. Layers come from a
real store: a local directory, the local S3 server, the GCS emulator.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard
from gitrepo_helpers import commit_all, git

from konduktor import launch, pod, units
from konduktor.config import Config
from konduktor.extract import sha256_file
from konduktor.plan import Bucket, LaunchPlan, Layer, Tree
from konduktor.storage import StoreOptions, open_store
from konduktor.task import load

RUN = 'echo "run started in $PWD" >>"$HOME/runs.log"\ncat greeting.txt\n'


def _coreutils() -> list[Path]:
    """Every program of Debian's coreutils package (what any image has)."""
    listed = subprocess.run(["dpkg", "-L", "coreutils"], capture_output=True, text=True)
    paths = [Path(line) for line in listed.stdout.splitlines() if "/bin/" in line]
    return [p for p in paths if p.is_file() and os.access(p, os.X_OK)]


def toolbox(tmp_path: Path, *tools: str) -> str:
    """A PATH holding coreutils, tar, grep, awk and sh, plus *tools* (python3 and aws are wrapped so
    that their own installation, with its packages, is what runs)."""
    bin_dir = tmp_path / ("bin-" + "-".join(tools or ("bare",)))
    bin_dir.mkdir()
    # coreutils, tar, grep and awk: what every Debian or Ubuntu image has (essential and
    # required packages)
    for program in [*_coreutils(), *(Path(shutil.which(p) or p) for p in ("tar", "grep"))]:
        (bin_dir / program.name).symlink_to(program)
    (bin_dir / "awk").symlink_to(os.path.realpath(shutil.which("awk") or "awk"))
    (bin_dir / "sh").symlink_to("/bin/sh")
    for tool in tools:
        if tool == "python3":
            _wrapper(bin_dir / "python3", sys.executable)
        elif tool == "aws":
            _wrapper(bin_dir / "aws", _which("aws"))
        else:
            (bin_dir / tool).symlink_to(_which(tool))
    return str(bin_dir)


def _which(name: str) -> str:
    """*name* from this Python's environment (tox, a venv), else from PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} is needed for this test; install it (see .ci/run)")
    return found


def _wrapper(path: Path, target: str) -> None:
    path.write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
    path.chmod(0o755)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def make_project(tmp_path: Path) -> Path:
    """A repository with a base commit and dirty changes (modified, added, deleted), a
    plain directory and a private key to mount, and a task file using them."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "greeting.txt").write_text("hello from the base\n")
    (repo / "src" / "train.py").write_text("print('train')\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "old.txt").write_text("deleted in the work tree\n")
    (repo / "link").symlink_to("src/train.py")
    git(repo, "init", "-q")
    commit_all(repo)
    (repo / "greeting.txt").write_text("hello from the work tree\n")
    (repo / "old.txt").unlink()
    (repo / "new.txt").write_text("untracked and shipped\n")
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "table.csv").write_text("a,b\n1,2\n")
    key = tmp_path / "id_test"
    key.write_text("-----BEGIN TEST KEY-----\n")
    key.chmod(0o600)
    (repo / "task.yaml").write_text(
        "name: pod-test\nworkdir: .\nfile_mounts:\n"
        f"  ~/data: {data}\n  ~/.ssh/id_test: {key}\n"
        f"run: |\n" + "".join(f"  {line}\n" for line in RUN.splitlines())
    )
    return repo


@contextlib.contextmanager
def launched_from(directory: Path) -> Iterator[None]:
    """The current directory for a while: a task file's relative paths start there."""
    before = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def make_plan(project: Path, url: str, options: StoreOptions | None = None) -> LaunchPlan:
    """*project*'s task, launched from *project*, synced to the store at *url*."""
    with launched_from(project):
        task = load(project / "task.yaml")
    cfg = Config(path=None, store=options or StoreOptions())
    store = open_store(url, options)
    return launch.sync(launch.prepare(task, cfg, "pod-test-0000"), store, cfg).plan


def unsigned(plan: LaunchPlan) -> LaunchPlan:
    """*plan* without presigned URLs: the pod must fetch with credentials."""
    trees = tuple(
        replace(t, layers=tuple(replace(la, https=None) for la in t.layers)) for t in plan.trees
    )
    return replace(plan, trees=trees, files=tuple(replace(f, https=None) for f in plan.files))


def aws_secret(tmp_path: Path) -> Path:
    """The files the credentials Secret holds for S3, as mounted in a pod."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "aws-credentials").write_text(
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    (secret / "aws-config").write_text("[default]\nregion = us-east-1\n")
    return secret


def run_script(
    plan: LaunchPlan,
    home: Path,
    path: str,
    credentials: Path | None = None,
    shell: str = "/bin/sh",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    home.mkdir(exist_ok=True)
    script = home.parent / f"{home.name}-startup.sh"
    script.write_text(pod.render(plan))
    env = {
        "HOME": str(home),
        "PATH": path,
        "KONDUKTOR_CREDENTIALS_DIR": str(credentials or home.parent / "no-secret"),
        "KONDUKTOR_TERMINATION_LOG": str(home / ".konduktor" / "termination-log"),
        **(env or {}),
    }
    return subprocess.run(
        [shell, str(script)], env=env, capture_output=True, text=True, timeout=120
    )


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, exec bits, content or link target), for comparing directories."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.split("/")[0] == ".git":
            continue
        if path.is_symlink():
            out[rel] = ("link", 0, os.readlink(path))
        elif path.is_file():
            out[rel] = ("file", path.stat().st_mode & 0o111, path.read_text())
    return out


def assert_placed(project: Path, home: Path, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the work tree\n"
    expected = tree(project)
    assert tree(home / "konduktor_workdir") == expected
    assert "old.txt" not in expected
    assert tree(home / "data") == {"sub/table.csv": ("file", 0, "a,b\n1,2\n")}
    key = home / ".ssh" / "id_test"
    assert key.read_text() == "-----BEGIN TEST KEY-----\n"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (home / "runs.log").read_text() == f"run started in {home}/konduktor_workdir\n"


def assert_sync_failed(result: subprocess.CompletedProcess[str], home: Path, *words: str) -> None:
    assert result.returncode == pod.SYNC_FAILED, result.stderr
    failures = [line for line in result.stderr.splitlines() if "sync failed" in line]
    assert len(failures) == 1, result.stderr
    for word in words:
        assert word in failures[0]
    assert not (home / "runs.log").exists(), "run: started after a failed sync"
    assert not list(home.glob(".konduktor-stage.*")), "a staging directory was left behind"


# -- file:// -----------------------------------------------------------------------------------


def test_file_store_with_zstd(project: Path, tmp_path: Path) -> None:
    plan = make_plan(project, f"file://{tmp_path}/store")
    home = tmp_path / "home"
    assert_placed(project, home, run_script(plan, home, toolbox(tmp_path, "zstd")))


def test_coreutils_and_tar_only_names_what_is_missing(project: Path, tmp_path: Path) -> None:
    plan = make_plan(project, f"file://{tmp_path}/store")
    home = tmp_path / "home"
    result = run_script(plan, home, toolbox(tmp_path))
    assert_sync_failed(result, home, "no zstd", "python3", "apt-get install zstd")
    assert not (home / "konduktor_workdir").exists()


def test_a_restarted_container_applies_nothing_twice(project: Path, tmp_path: Path) -> None:
    plan = make_plan(project, f"file://{tmp_path}/store")
    home = tmp_path / "home"
    path = toolbox(tmp_path, "zstd")
    assert run_script(plan, home, path).returncode == 0
    (home / "konduktor_workdir" / "written-by-run.txt").write_text("kept\n")
    again = run_script(plan, home, path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already in place") == 2  # the workdir and ~/data
    assert (home / "konduktor_workdir" / "written-by-run.txt").read_text() == "kept\n"
    assert (home / "runs.log").read_text().count("run started") == 2


def test_a_corrupted_object_is_refused_by_name(project: Path, tmp_path: Path) -> None:
    plan = make_plan(project, f"file://{tmp_path}/store")
    layer = plan.trees[0].layers[0]
    stored = tmp_path / "store" / layer.key
    stored.chmod(0o644)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    home = tmp_path / "home"
    result = run_script(plan, home, toolbox(tmp_path, "zstd"))
    assert_sync_failed(result, home, "corrupt", layer.key, layer.sha256)
    assert not (home / "konduktor_workdir").exists()


def test_the_task_exit_code_is_the_scripts(project: Path, tmp_path: Path) -> None:
    plan = replace(make_plan(project, f"file://{tmp_path}/store"), run="exit 7\n")
    result = run_script(plan, tmp_path / "home", toolbox(tmp_path, "zstd"))
    assert result.returncode == 7


def test_run_uses_bash_when_the_image_has_it(project: Path, tmp_path: Path) -> None:
    plan = replace(make_plan(project, f"file://{tmp_path}/store"), run='echo "[${BASH_VERSION:-}]"')
    with_bash = run_script(plan, tmp_path / "home", toolbox(tmp_path, "zstd", "bash"))
    without = run_script(plan, tmp_path / "home2", toolbox(tmp_path, "zstd"))
    assert with_bash.stdout.strip() not in ("", "[]")
    assert without.stdout.strip() == "[]"


def test_provenance_is_exported(project: Path, tmp_path: Path) -> None:
    plan = make_plan(project, f"file://{tmp_path}/store")
    plan = replace(
        plan, run='echo "$KONDUKTOR_GIT_COMMIT $KONDUKTOR_GIT_DIRTY $KONDUKTOR_SNAPSHOT"'
    )
    result = run_script(plan, tmp_path / "home", toolbox(tmp_path, "zstd"))
    commit = git(project, "rev-parse", "HEAD").decode().strip()
    assert result.stdout.split() == [commit, "true", plan.trees[0].id]


# -- hostile layers ------------------------------------------------------------------------------


def _layer(store: Path, name: str, members: list[tuple[str, bytes | None, str | None]]) -> Layer:
    """A layer of (name, content, symlink target) members, written into a file:// store."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, content, target in members:
            info = tarfile.TarInfo(member)
            if target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            else:
                info.size = len(content or b"")
                tar.addfile(info, io.BytesIO(content or b""))
    path = store / "v1" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    size, tar_bytes = path.stat().st_size, len(raw.getvalue())
    return Layer(f"v1/{name}", "full", sha256_file(path), size, len(members), tar_bytes)


@pytest.mark.parametrize(
    ("layers", "words"),
    [
        ([[("../escaped", b"x", None)]], ["../escaped", "leave the destination"]),
        ([[("/abs/escaped", b"x", None)]], ["/abs/escaped", "leave the destination"]),
        (
            [[("d", None, "{outside}")], [("d/escaped", b"x", None)]],
            ["d is a symlink", "write through"],
        ),
    ],
    ids=["dotdot", "absolute", "through-symlink"],
)
def test_hostile_layers_write_nothing_outside(
    tmp_path: Path, layers: list[list[tuple[str, bytes | None, str | None]]], words: list[str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = tmp_path / "store"
    refs = tuple(
        _layer(
            store,
            f"objects/{i}.tar.zst",
            [(m, c, t.format(outside=outside) if t else None) for m, c, t in members],
        )
        for i, members in enumerate(layers)
    )
    plan = LaunchPlan(
        job="hostile",
        store=f"file://{store}",
        run="echo ran",
        trees=(Tree("~/konduktor_workdir", "/src", None, False, refs),),
    )
    home = tmp_path / "home"
    result = run_script(plan, home, toolbox(tmp_path, "zstd"))
    assert_sync_failed(result, home, *words)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escaped").exists()
    assert not (home / "konduktor_workdir").exists()


def test_the_rendered_script_is_clean_under_shellcheck(project: Path, tmp_path: Path) -> None:
    plan = make_plan(project, f"file://{tmp_path}/store")
    script = tmp_path / "startup.sh"
    script.write_text(pod.render(plan))
    result = subprocess.run(
        [_which("shellcheck"), "--shell=dash", "--severity=info", str(script)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_render_is_pure(project: Path, tmp_path: Path) -> None:
    plan = make_plan(project, f"file://{tmp_path}/store")
    assert pod.render(plan) == pod.render(LaunchPlan.from_json(plan.to_json()))


# -- S3: presigned URLs and the aws CLI ---------------------------------------------------------


@pytest.mark.parametrize(
    "tools",
    [("curl", "zstd"), ("python3",), ("wget", "zstd")],
    ids=["curl-zstd", "python3-zstandard", "wget-zstd"],
)
def test_s3_presigned(
    project: Path, tmp_path: Path, s3_store_factory: Any, tools: tuple[str, ...]
) -> None:
    url, options = s3_store_factory()
    plan = make_plan(project, url, options)
    assert all(la.https and la.https.startswith("http") for t in plan.trees for la in t.layers)
    home = tmp_path / "home"
    assert_placed(project, home, run_script(plan, home, toolbox(tmp_path, *tools)))


def test_s3_coreutils_and_tar_only_names_the_fetchers(
    project: Path, tmp_path: Path, s3_store_factory: Any
) -> None:
    url, options = s3_store_factory()
    plan = make_plan(project, url, options)
    home = tmp_path / "home"
    result = run_script(plan, home, toolbox(tmp_path))
    assert_sync_failed(result, home, "curl", "wget", "python3", "aws")


def test_s3_with_the_aws_cli_and_mounted_credentials(
    project: Path, tmp_path: Path, s3_store_factory: Any
) -> None:
    url, options = s3_store_factory()
    plan = unsigned(make_plan(project, url, options))
    secret = aws_secret(tmp_path)
    home = tmp_path / "home"
    result = run_script(plan, home, toolbox(tmp_path, "aws", "zstd"), credentials=secret)
    assert_placed(project, home, result)
    for name in ("credentials", "config"):
        assert stat.S_IMODE((home / ".aws" / name).stat().st_mode) == 0o600
    assert "testing" not in result.stderr + result.stdout


def test_s3_unsigned_without_credentials_fails_clearly(
    project: Path, tmp_path: Path, s3_store_factory: Any
) -> None:
    url, options = s3_store_factory()
    plan = unsigned(make_plan(project, url, options))
    home = tmp_path / "home"
    result = run_script(plan, home, toolbox(tmp_path, "curl", "zstd"))
    assert_sync_failed(result, home, "cannot fetch", url)


# -- GCS ----------------------------------------------------------------------------------------


def test_gcs_emulator_with_python3(project: Path, tmp_path: Path, gcs_store_factory: Any) -> None:
    url, options = gcs_store_factory()
    plan = make_plan(project, url, options)
    assert plan.endpoint_url == options.endpoint_url
    home = tmp_path / "home"
    assert_placed(project, home, run_script(plan, home, toolbox(tmp_path, "python3")))


def bucket_plan(url: str, options: StoreOptions) -> LaunchPlan:
    """A plan that mounts the prefix ref/ of the bucket *url* at ~/ref, and nothing else."""
    return LaunchPlan(
        job="bucket",
        store=url,
        run="cat /dev/null\n",
        buckets=(Bucket("~/ref", f"{url}/ref"),),
        endpoint_url=options.endpoint_url,
    )


def test_a_bucket_mount_is_copied_as_is_with_the_aws_cli_or_boto3(
    tmp_path: Path, s3_store_factory: Any
) -> None:
    import boto3

    url, options = s3_store_factory()
    bucket = url.removeprefix("s3://")
    client = boto3.client("s3", endpoint_url=options.endpoint_url, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="ref/a.txt", Body=b"A")
    client.put_object(Bucket=bucket, Key="ref/sub/b.txt", Body=b"B")
    client.put_object(Bucket=bucket, Key="other/c.txt", Body=b"C")
    plan = bucket_plan(url, options)
    secret = aws_secret(tmp_path)
    home = tmp_path / "home"
    result = run_script(plan, home, toolbox(tmp_path, "aws"), credentials=secret)
    assert result.returncode == 0, result.stderr
    assert tree(home / "ref") == {"a.txt": ("file", 0, "A"), "sub/b.txt": ("file", 0, "B")}
    with_python = run_script(plan, tmp_path / "home3", toolbox(tmp_path, "python3"), secret)
    assert with_python.returncode == 0, with_python.stderr  # boto3, without the aws CLI
    assert tree(tmp_path / "home3" / "ref") == tree(home / "ref")
    bare = run_script(plan, tmp_path / "home2", toolbox(tmp_path))
    assert_sync_failed(bare, tmp_path / "home2", "aws CLI", "boto3", f"s3://{bucket}/ref")


@pytest.mark.skipif(os.geteuid() != 0, reason="the script installs packages only as root")
def test_as_root_without_a_decompressor_it_installs_zstd(project: Path, tmp_path: Path) -> None:
    """The last resort: the image's package manager (here a stand-in apt-get that 'installs'
    the real zstd into the PATH directory, and logs how it was called)."""
    plan = make_plan(project, f"file://{tmp_path}/store")
    path = toolbox(tmp_path)
    calls = tmp_path / "apt-get.log"
    apt = Path(path) / "apt-get"
    apt.write_text(
        f'#!/bin/sh\necho "$*" >>{calls}\n'
        f'case "$*" in *install*zstd*) ln -sf {_which("zstd")} {path}/zstd ;; esac\n'
    )
    apt.chmod(0o755)
    home = tmp_path / "home"
    result = run_script(plan, home, path)
    assert_placed(project, home, result)
    assert "installing zstd" in result.stderr
    assert calls.read_text().splitlines() == [
        "update -qq",
        "install -y -qq --no-install-recommends zstd",
    ]


def test_busybox_ash_and_busybox_tools(project: Path, tmp_path: Path) -> None:
    """Alpine-like images: busybox's sh, tar, cp, sha256sum ... and zstd."""
    busybox = _which("busybox")
    bin_dir = tmp_path / "busybox-bin"
    bin_dir.mkdir()
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        (bin_dir / applet).symlink_to(busybox)
    (bin_dir / "zstd").symlink_to(_which("zstd"))
    plan = make_plan(project, f"file://{tmp_path}/store")
    home = tmp_path / "home"
    result = run_script(plan, home, str(bin_dir), shell=str(bin_dir / "sh"))
    assert_placed(project, home, result)


def test_a_file_that_replaced_a_directory_reaches_the_pod(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "conf").mkdir(parents=True)
    (repo / "conf" / "a.yaml").write_text("a: 1\n")
    (repo / "conf" / "b.yaml").write_text("b: 2\n")
    (repo / "kept.txt").write_text("kept\n")
    git(repo, "init", "-q")
    commit_all(repo)
    shutil.rmtree(repo / "conf")
    (repo / "conf").write_text("now a file\n")
    (repo / "task.yaml").write_text("name: swap\nworkdir: .\nrun: cat conf\n")
    plan = make_plan(repo, f"file://{tmp_path}/store")
    home = tmp_path / "home"
    result = run_script(plan, home, toolbox(tmp_path, "zstd"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "now a file\n"
    assert tree(home / "konduktor_workdir") == tree(repo)


def test_a_gcs_bucket_mount_is_copied_with_python3(tmp_path: Path, gcs_store_factory: Any) -> None:
    from gcs_server import emulator_client

    url, options = gcs_store_factory()
    bucket = emulator_client(str(options.endpoint_url)).bucket(url.removeprefix("gs://"))
    for key, body in {"ref/a.txt": "A", "ref/sub/b.txt": "B", "other/c.txt": "C"}.items():
        bucket.blob(key).upload_from_string(body)
    plan = bucket_plan(url, options)
    home = tmp_path / "home"
    result = run_script(plan, home, toolbox(tmp_path, "python3"))
    assert result.returncode == 0, result.stderr
    assert tree(home / "ref") == {"a.txt": ("file", 0, "A"), "sub/b.txt": ("file", 0, "B")}


def test_a_single_object_is_copied_as_a_file_with_the_aws_cli_or_boto3(
    tmp_path: Path, s3_store_factory: Any
) -> None:
    """``~/x.pt: s3://b/x.pt`` places the object as a file (Konduktor and SkyPilot do so
    when the object exists); a prefix, with or without its /, stays a directory."""
    import boto3

    url, options = s3_store_factory()
    bucket = url.removeprefix("s3://")
    client = boto3.client("s3", endpoint_url=options.endpoint_url, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="weights/x.pt", Body=b"WEIGHTS")
    client.put_object(Bucket=bucket, Key="ref/a.txt", Body=b"A")
    plan = LaunchPlan(
        job="object",
        store=url,
        run="cat /dev/null\n",
        buckets=(
            Bucket("~/models/x.pt", f"{url}/weights/x.pt"),
            Bucket("~/ref", f"{url}/ref"),
            Bucket("~/ref2", f"{url}/ref/"),
        ),
        endpoint_url=options.endpoint_url,
    )
    secret = aws_secret(tmp_path)
    for tool in ("aws", "python3"):
        home = tmp_path / f"home-{tool}"
        result = run_script(plan, home, toolbox(tmp_path, tool), credentials=secret)
        assert result.returncode == 0, result.stderr
        placed = home / "models" / "x.pt"
        assert placed.is_file(), tool
        assert placed.read_bytes() == b"WEIGHTS"
        assert tree(home / "ref") == tree(home / "ref2") == {"a.txt": ("file", 0, "A")}
        assert not list((home / "models").glob("*.konduktor-part"))


def test_a_single_gcs_object_is_copied_as_a_file(tmp_path: Path, gcs_store_factory: Any) -> None:
    from gcs_server import emulator_client

    url, options = gcs_store_factory()
    bucket = emulator_client(str(options.endpoint_url)).bucket(url.removeprefix("gs://"))
    bucket.blob("weights/x.pt").upload_from_string("WEIGHTS")
    bucket.blob("ref/a.txt").upload_from_string("A")
    plan = LaunchPlan(
        job="object",
        store=url,
        run="cat /dev/null\n",
        buckets=(Bucket("~/x.pt", f"{url}/weights/x.pt"), Bucket("~/ref", f"{url}/ref")),
        endpoint_url=options.endpoint_url,
    )
    home = tmp_path / "home"
    result = run_script(plan, home, toolbox(tmp_path, "python3"))
    assert result.returncode == 0, result.stderr
    assert (home / "x.pt").read_text() == "WEIGHTS"
    assert tree(home / "ref") == {"a.txt": ("file", 0, "A")}


# -- setup: ----------------------------------------------------------------------------------


def _with_setup(project: Path, setup: str, run: str = RUN) -> Path:
    """*project*'s task file with a setup: block (and *run*)."""
    text = (project / "task.yaml").read_text().split("run: |\n")[0]
    block = "".join(f"  {line}\n" for line in setup.splitlines())
    body = "".join(f"  {line}\n" for line in run.splitlines())
    (project / "task.yaml").write_text(f"{text}setup: |\n{block}run: |\n{body}")
    return project


def _busybox_bin(tmp_path: Path) -> Path:
    busybox = _which("busybox")
    bin_dir = tmp_path / "busybox-bin"
    bin_dir.mkdir(exist_ok=True)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if not (bin_dir / applet).exists():
            (bin_dir / applet).symlink_to(busybox)
    if not (bin_dir / "zstd").exists():
        (bin_dir / "zstd").symlink_to(_which("zstd"))
    return bin_dir


@pytest.fixture(params=["dash", "busybox"])
def pod_shell(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(PATH, shell) of an image: dash with coreutils, or busybox's ash and tools."""
    if request.param == "dash":
        return toolbox(tmp_path, "zstd"), "/bin/sh"
    bin_dir = _busybox_bin(tmp_path)
    return str(bin_dir), str(bin_dir / "sh")


def test_setup_runs_in_the_workdir_before_run(
    project: Path, tmp_path: Path, pod_shell: tuple[str, str]
) -> None:
    setup = 'echo "setup in $PWD" >>"$HOME/runs.log"\necho built >built.txt\n'
    _with_setup(project, setup, run=f"{RUN}cat built.txt\nexit 3\n")
    plan = make_plan(project, f"file://{tmp_path}/store")
    assert plan.setup == setup
    home = tmp_path / "home"
    path, shell = pod_shell
    result = run_script(plan, home, path, shell=shell)
    assert result.returncode == 3, result.stderr  # run:'s code, setup having passed
    assert result.stdout == "hello from the work tree\nbuilt\n"
    workdir = home / "konduktor_workdir"
    assert (home / "runs.log").read_text() == f"setup in {workdir}\nrun started in {workdir}\n"


def test_a_failing_setup_is_the_tasks_failure_and_run_does_not_start(
    project: Path, tmp_path: Path, pod_shell: tuple[str, str]
) -> None:
    _with_setup(project, "echo preparing\nfalse || exit 7\necho never\n")
    plan = make_plan(project, f"file://{tmp_path}/store")
    home = tmp_path / "home"
    path, shell = pod_shell
    result = run_script(plan, home, path, shell=shell)
    assert result.returncode == 7, result.stderr
    assert result.stdout == "preparing\n"
    assert "konduktor: setup failed with exit code 7; run: not started" in result.stderr
    assert not (home / "runs.log").exists(), "run: started after a failed setup"
    termination = home / ".konduktor" / "termination-log"
    assert "setup failed with exit code 7" in termination.read_text()
    assert (home / "konduktor_workdir" / "greeting.txt").exists()  # the files were placed


def _secret_volume(root: Path, files: dict[str, bytes]) -> None:
    """A Secret as the kubelet mounts it: each key a link into a hidden ..data directory."""
    (root / "..2026_12_02").mkdir()
    (root / "..data").symlink_to("..2026_12_02")
    for key, value in files.items():
        (root / "..2026_12_02" / key).write_bytes(value)
        (root / key).symlink_to(f"..data/{key}")


@pytest.mark.parametrize("unzip", ["unzip", "python3"])
def test_default_secrets_are_expanded_as_konduktors_pods_do(
    project: Path, tmp_path: Path, unzip: str
) -> None:
    """`secret create --kind default --from-directory` stores a payload.zip: the pod unpacks
    it (with unzip, else python3) beside the plain ones and points KONDUKTOR_DEFAULT_SECRETS
    there, as upstream's pods do."""
    import zipfile

    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as z:
        z.writestr(".netrc", "machine example.com login me\n")
        z.writestr("sub/config.json", "{}\n")
    mounted = tmp_path / "default-secrets"
    (mounted / "netrc").mkdir(parents=True)
    _secret_volume(mounted / "netrc", {"payload.zip": payload.getvalue()})
    (mounted / "plain").mkdir()
    _secret_volume(mounted / "plain", {"TOKEN": b"t0k3n\n"})
    run = 'cat "$KONDUKTOR_DEFAULT_SECRETS/netrc/.netrc" "$KONDUKTOR_DEFAULT_SECRETS/plain/TOKEN"\n'
    run += 'ls -A "$KONDUKTOR_DEFAULT_SECRETS/plain" "$KONDUKTOR_DEFAULT_SECRETS/netrc/sub"\n'
    _with_setup(project, "true", run=run)
    plan = make_plan(project, f"file://{tmp_path}/store")
    expanded = tmp_path / "expanded"
    env = {
        "KONDUKTOR_DEFAULT_SECRETS": str(mounted),
        "KONDUKTOR_DEFAULT_SECRETS_EXPANDED": str(expanded),
    }
    path = toolbox(tmp_path, "zstd", unzip)
    result = run_script(plan, tmp_path / "home", path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"machine example.com login me\nt0k3n\n{expanded}/netrc/sub:\nconfig.json\n\n"
        f"{expanded}/plain:\nTOKEN\n"
    )


@pytest.mark.parametrize(
    ("result", "envelope"),
    [
        ('{"acc": 0.9}', '{"exit":3,"value":{"acc": 0.9}}'),
        (None, '{"exit":3}'),
        ("x" * 3501, '{"exit":3,"error":"ResultTooLarge","size":3501}'),
    ],
)
def test_the_exit_code_and_result_json_are_the_termination_message_as_konduktors(
    project: Path,
    tmp_path: Path,
    pod_shell: tuple[str, str],
    result: str | None,
    envelope: str,
) -> None:
    """In a pod (KONDUKTOR_OUTPUT_DIR set) the startup script writes Konduktor's envelope
    for its controller's return values; the task's exit code stays the pod's."""
    output = tmp_path / "output"
    output.mkdir()
    write = f"printf '%s' '{result}' >\"$KONDUKTOR_OUTPUT_DIR/result.json\"\n" if result else ""
    _with_setup(project, "true", run=f"{write}exit 3\n")
    plan = make_plan(project, f"file://{tmp_path}/store")
    home = tmp_path / "home"
    path, shell = pod_shell
    env = {"KONDUKTOR_OUTPUT_DIR": str(output)}
    done = run_script(plan, home, path, shell=shell, env=env)
    assert done.returncode == 3, done.stderr
    assert (home / ".konduktor" / "termination-log").read_text() == envelope


def test_without_an_output_dir_there_is_no_envelope(project: Path, tmp_path: Path) -> None:
    """--local (no KONDUKTOR_OUTPUT_DIR): run: is exec'd, the termination log stays empty."""
    _with_setup(project, "true", run="exit 4\n")
    home = tmp_path / "home"
    done = run_script(
        make_plan(project, f"file://{tmp_path}/store"), home, toolbox(tmp_path, "zstd")
    )
    assert done.returncode == 4, done.stderr
    assert not (home / ".konduktor" / "termination-log").exists()


def test_a_task_without_setup_renders_no_setup(project: Path, tmp_path: Path) -> None:
    script = pod.render(make_plan(project, f"file://{tmp_path}/store"))
    assert "setup.sh" not in script.split("# --- from the launch plan ---")[1]


# -- progress --------------------------------------------------------------------------------

BIG = 6_000_000  # bytes: above the script's K_BIG, so fetch and extraction show progress
HALF = 3_000_000  # what the slow cp writes before its pause


def _slow(bin_dir: Path, name: str, body: str) -> None:
    """Replace *name* in *bin_dir* by a script running *body* ({real}: the real one)."""
    real = os.path.realpath(bin_dir / name)
    if Path(real).name == "busybox":
        real = f"{real} {name}"
    (bin_dir / name).unlink()
    (bin_dir / name).write_text(f"#!/bin/sh\n{body.format(real=real)}\n")
    (bin_dir / name).chmod(0o755)


def _shell(tmp_path: Path, shell: str) -> tuple[str, str]:
    """(the shell, a PATH): dash with coreutils and GNU tar, or busybox's sh and applets;
    their cp writes HALF a file and pauses before it copies it whole, their zstd pauses
    before it reads: the script's one-second progress ticks find them at work."""
    if shell == "dash":
        bin_dir, sh = Path(toolbox(tmp_path, "zstd")), "/bin/sh"
    else:
        bin_dir = tmp_path / "busybox-bin"
        bin_dir.mkdir()
        busybox = _which("busybox")
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
        for applet in applets.stdout.split():
            (bin_dir / applet).symlink_to(busybox)
        (bin_dir / "zstd").symlink_to(_which("zstd"))
        sh = str(bin_dir / "sh")
    _slow(bin_dir, "cp", f'head -c {HALF} "$1" >"$2"; sleep 2; exec {{real}} "$@"')
    _slow(bin_dir, "zstd", 'sleep 2; exec {real} "$@"')
    return sh, str(bin_dir)


def _big_project(tmp_path: Path) -> Path:
    """A directory (no git: one full layer) of BIG random bytes, and a task mounting a file
    of BIG random bytes too."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "weights.bin").write_bytes(os.urandom(BIG))
    (tmp_path / "table.bin").write_bytes(os.urandom(BIG))
    (work / "task.yaml").write_text(
        f"name: pod-test\nworkdir: .\nfile_mounts:\n  ~/table.bin: {tmp_path}/table.bin\n"
        "run: echo ran\n"
    )
    return work


def _started(
    plan: LaunchPlan, home: Path, shell: tuple[str, str], **env: str
) -> subprocess.Popen[str]:
    """The script of *plan* started in a session of its own (see :func:`_left_behind`),
    with a progress line every second."""
    home.mkdir(exist_ok=True)
    script = home.parent / f"{home.name}-startup.sh"
    script.write_text(pod.render(plan))
    env = {
        "HOME": str(home),
        "PATH": shell[1],
        "KONDUKTOR_CREDENTIALS_DIR": str(home.parent / "no-secret"),
        "KONDUKTOR_TERMINATION_LOG": str(home / ".konduktor" / "termination-log"),
        "KONDUKTOR_PROGRESS_SECONDS": "1",
        **env,
    }
    return subprocess.Popen(
        [shell[0], str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finished(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """The exit code and stderr of *proc*, once nothing of its session is left running."""
    _, err = proc.communicate(timeout=120)
    assert _left_behind(proc.pid) == []
    return proc.returncode, err


def _left_behind(session: int) -> list[str]:
    """The command lines of the processes still in *session* (a progress watcher or its
    sleep, had they outlived the script; zombies too: here nothing reaps orphans)."""
    left = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getsid(int(proc.name)) == session:
                left.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return left


def _share(done: int, total: int) -> str:
    return f"{units.size(done)} of {units.size(total)} ({done * 100 // total}%)"


@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_big_layers_and_files_show_their_progress(tmp_path: Path, shell: str) -> None:
    plan = make_plan(_big_project(tmp_path), f"file://{tmp_path}/store")
    (layer,) = plan.trees[0].layers
    code, err = _finished(_started(plan, tmp_path / "home", _shell(tmp_path, shell)))
    assert code == 0, err
    lines = err.splitlines()
    what = "full layer of ~/konduktor_workdir"
    assert f"konduktor: fetch ~/table.bin {_share(HALF, BIG)}" in lines, err
    placed = rf"konduktor: placed {re.escape(str(tmp_path))}/home/table\.bin \(6\.0 MB in \d+ s\)"
    assert [line for line in lines if re.fullmatch(placed, line)], err
    assert f"konduktor: fetch {what} {_share(HALF, layer.size)}" in lines, err
    for step in ("check", "extract"):  # zstd has read nothing yet
        assert f"konduktor: {step} {what} 0 B of {units.size(layer.size)} (0%)" in lines, err
    closing = (
        rf"konduktor: {what}: {re.escape(units.size(layer.size))} fetched in \d+ s, "
        rf"{re.escape(units.size(layer.tar_bytes))} checked and extracted in \d+ s"
    )
    assert [line for line in lines if re.fullmatch(closing, line)], err


def test_small_layers_show_no_progress_and_quiet_none_at_all(project: Path, tmp_path: Path) -> None:
    shell = _shell(tmp_path, "dash")
    small = make_plan(project, f"file://{tmp_path}/store")
    code, err = _finished(_started(small, tmp_path / "home", shell))
    assert code == 0, err
    assert [line for line in err.splitlines() if not line.startswith("konduktor: placed ")] == []
    big = make_plan(_big_project(tmp_path), f"file://{tmp_path}/store2")
    code, err = _finished(_started(big, tmp_path / "home2", shell, KONDUKTOR_QUIET="1"))
    assert (code, err) == (0, "")


@pytest.mark.parametrize("shell", ["dash", "busybox"])
@pytest.mark.parametrize("end", ["failure", "TERM", "INT"])
def test_no_progress_watcher_outlives_the_script(tmp_path: Path, shell: str, end: str) -> None:
    """A layer that is no tar fails its check while the check's progress shows; TERM and INT
    come once a progress line showed: the script ends, and nothing of it runs on."""
    store = tmp_path / "store"
    raw = os.urandom(BIG)
    path = store / "v1" / "objects" / "nota.tar.zst"
    path.parent.mkdir(parents=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    layer = Layer("v1/objects/nota.tar.zst", "full", sha256_file(path), BIG, 1, len(raw))
    plan = LaunchPlan(
        job="watched",
        store=f"file://{store}",
        run="echo ran",
        trees=(Tree("~/konduktor_workdir", "/src", None, False, (layer,)),),
    )
    proc = _started(plan, tmp_path / "home", _shell(tmp_path, shell))
    if end != "failure":
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("konduktor: fetch full layer of ~/konduktor_workdir "), first
        proc.send_signal(getattr(signal, f"SIG{end}"))
    code, err = _finished(proc)
    assert code == {"failure": pod.SYNC_FAILED, "TERM": 143, "INT": 130}[end], err
    assert [line for line in err.splitlines() if not line.startswith("konduktor: ")] == []
    if end == "failure":
        assert "konduktor: check full layer of ~/konduktor_workdir 0 B of " in err
        assert "is not a readable tar archive" in err
    assert not list((tmp_path / "home").glob(".konduktor-stage.*"))
