"""The pod startup script inside real root file systems (tests/rootfs.py), as root and as
an unprivileged user: the images people use, not a cut-down PATH on this machine.

The task is the pod tests' project: a dirty workdir, a directory mount and a file mount.
Stores: ``file://`` (copied into the root as /store) and S3 on the local moto server
through presigned URLs (the root shares this machine's loopback).
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import rootfs
from test_pod import make_plan, make_project, tree

from konduktor import pod
from konduktor.plan import LaunchPlan


def file_plan(project: Path, root: Path) -> LaunchPlan:
    """The plan with its store made inside the root, where the pod sees it as /store; the
    store is private (0700, objects 0600), so it belongs to the pod's user, as a local
    run's store belongs to the user running it."""
    plan = make_plan(project, f"file://{root}/store")
    for path in [root / "store", *(root / "store").rglob("*")]:
        os.chown(path, rootfs.USER, rootfs.USER, follow_symlinks=False)
    return replace(plan, store="file:///store")


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


def script(project: Path, root: Path, store: str, s3_store_factory: Any) -> str:
    """The startup script for the project, its store file:// (inside the root) or S3."""
    if store == "file":
        return pod.render(file_plan(project, root))
    url, options = s3_store_factory()
    return pod.render(make_plan(project, url, options))


@pytest.mark.parametrize(
    ("store", "installs"), [("file", "zstd"), ("s3", "curl ca-certificates zstd")]
)
def test_ubuntu_as_root_installs_what_it_lacks_and_syncs(
    project: Path, tmp_path: Path, s3_store_factory: Any, store: str, installs: str
) -> None:
    root = rootfs.fresh("minbase", tmp_path)
    result = rootfs.run(root, script(project, root, store, s3_store_factory), user=False)
    assert_synced(project, root, result)
    for package in installs.split():
        assert package in " ".join(re.findall(r"installing ([^\n]*) with", result.stderr))


@pytest.mark.parametrize(
    ("store", "words"),
    [
        ("file", ("no zstd", "apt-get install zstd")),
        ("s3", ("none of curl, wget", "not root", "apt-get install -y curl")),
    ],
)
def test_ubuntu_as_a_user_names_what_to_add_to_the_image(
    project: Path, tmp_path: Path, s3_store_factory: Any, store: str, words: tuple[str, ...]
) -> None:
    root = rootfs.fresh("minbase", tmp_path)
    result = rootfs.run(root, script(project, root, store, s3_store_factory), user=True)
    assert_refused(result, *words)


@pytest.mark.parametrize("user", [False, True], ids=["root", "user"])
def test_python_slim_needs_no_curl_and_no_zstd_binary(
    project: Path, tmp_path: Path, s3_store_factory: Any, user: bool
) -> None:
    root = rootfs.fresh("python", tmp_path)
    result = rootfs.run(root, script(project, root, "s3", s3_store_factory), user=user)
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
    result = rootfs.run(root, script(project, root, store, s3_store_factory), user=user)
    assert_synced(project, root, result)
