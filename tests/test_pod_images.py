"""The pod startup script inside real root file systems (tests/rootfs.py), as root and as
an unprivileged user: the images people use, not a cut-down PATH on this machine.

The task is the pod tests' project: a dirty workdir, a directory mount and a file mount.
Stores: ``file://`` (copied into the root as /store) and S3 on the local moto server
through presigned URLs (the root shares this machine's loopback).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import rootfs
from test_pod import make_plan, make_project, tree

from konduktor import pod
from konduktor.plan import LaunchPlan


def file_plan(project: Path, root: Path) -> LaunchPlan:
    """The plan with its store copied into the root, where the pod sees it as /store."""
    return replace(make_plan(project, f"file://{root}/store"), store="file:///store")


def assert_synced(project: Path, root: Path, result: Any) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the work tree\n"
    home = root / "home" / "k"
    assert tree(home / "konduktor_workdir") == tree(project)
    assert tree(home / "data") == {"sub/table.csv": ("file", 0, "a,b\n1,2\n")}
    assert (home / ".ssh" / "id_test").read_text() == "-----BEGIN TEST KEY-----\n"
    assert (home / ".ssh" / "id_test").stat().st_mode & 0o777 == 0o600


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def assert_refused(result: Any, *words: str) -> None:
    assert result.returncode == pod.SYNC_FAILED, result.stderr
    failures = [line for line in result.stderr.splitlines() if "sync failed" in line]
    assert len(failures) == 1, result.stderr
    assert all(word in failures[0] for word in words), failures[0]
    assert "hello" not in result.stdout


def test_ubuntu_as_root_installs_zstd_and_syncs_from_a_file_store(
    project: Path, tmp_path: Path
) -> None:
    root = rootfs.fresh("minbase", tmp_path)
    result = rootfs.run(root, pod.render(file_plan(project, root)), user=False)
    assert_synced(project, root, result)
    assert "installing zstd" in result.stderr


def test_ubuntu_as_root_installs_curl_and_zstd_and_syncs_from_s3(
    project: Path, tmp_path: Path, s3_store_factory: Any
) -> None:
    root = rootfs.fresh("minbase", tmp_path)
    url, options = s3_store_factory()
    result = rootfs.run(root, pod.render(make_plan(project, url, options)), user=False)
    assert_synced(project, root, result)
    assert "installing curl ca-certificates" in result.stderr


def test_ubuntu_as_a_user_names_what_to_add_to_the_image(
    project: Path, tmp_path: Path, s3_store_factory: Any
) -> None:
    root = rootfs.fresh("minbase", tmp_path)
    result = rootfs.run(root, pod.render(file_plan(project, root)), user=True)
    assert_refused(result, "no zstd", "apt-get install zstd")
    url, options = s3_store_factory()
    result = rootfs.run(root, pod.render(make_plan(project, url, options)), user=True)
    assert_refused(result, "none of curl, wget", "not root", "apt-get install -y curl")


@pytest.mark.parametrize("user", [False, True], ids=["root", "user"])
def test_python_slim_needs_no_curl_and_no_zstd_binary(
    project: Path, tmp_path: Path, s3_store_factory: Any, user: bool
) -> None:
    root = rootfs.fresh("python", tmp_path)
    url, options = s3_store_factory()
    result = rootfs.run(root, pod.render(make_plan(project, url, options)), user=user)
    assert_synced(project, root, result)
    assert "installing" not in result.stderr
    assert not (root / "usr" / "bin" / "curl").exists()
    assert not (root / "usr" / "bin" / "zstd").exists()


@pytest.mark.parametrize("user", [False, True], ids=["root", "user"])
@pytest.mark.parametrize("store", ["file", "s3"])
def test_busybox_with_its_own_tools(
    project: Path, tmp_path: Path, s3_store_factory: Any, user: bool, store: str
) -> None:
    root = rootfs.fresh("busybox", tmp_path)
    if store == "file":
        plan = file_plan(project, root)
    else:
        url, options = s3_store_factory()
        plan = make_plan(project, url, options)
    result = rootfs.run(root, pod.render(plan), user=user)
    assert_synced(project, root, result)
