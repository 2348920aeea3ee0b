"""The first hour of a new user, as one table: each row is a command on a small realistic
project, with its exit code, the first line it prints, and what it may leave behind.

After every row the test also checks that nothing was created or changed anywhere under
the test's directory (the store, the project, KONDUKTOR_HOME) unless the row says what
may change, and that nothing reached the Kubernetes API server unless the row allows it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from gitrepo_helpers import commit_all, git, write_files
from kube_server import KubeAPI
from test_cli import run

from konduktor import snapshot

MB = 1 << 20
TASK = """\
name: first-hour
workdir: .
resources:
  cpus: 1
run: |
  python train.py
"""


@dataclass(frozen=True)
class Row:
    """One command: ``argv`` may name ``{project}``, ``{kubeconfig}`` and ``{tmp}``."""

    id: str
    argv: tuple[str, ...]
    code: int
    first: str  # a regex the first line must match (re.search)
    stream: str = "err"  # where that first line is: "err" or "out"
    setup: str | None = None  # a name in SETUPS, run before the command
    may_change: tuple[str, ...] = ()  # regexes of paths (relative to tmp) that may change
    kube_requests: bool = False  # whether the command may talk to the API server


def _project(tmp: Path) -> Path:
    """A git repo with code, a config folder, a gitignored log, a konduktor-ignored folder
    and a 1 MB data file (the issue's is 30 MB; size does not change the paths taken)."""
    project = tmp / "project"
    write_files(
        project,
        {
            "train.py": "print('training')\n",
            "model/net.py": "LAYERS = 2\n",
            "configs/train.yaml": TASK.replace("workdir: .", "workdir: .."),
            "task.yaml": TASK,
            ".gitignore": "*.log\n__pycache__/\n",
            ".konduktorignore": "secrets/\n",
            "secrets/token": "hunter2\n",
            "data/big.bin": os.urandom(MB),
        },
    )
    git(project, "init", "-q")
    commit_all(project)
    (project / "train.log").write_text("epoch 1\n")
    (project / "train.py").write_text("print('training, edited')\n")
    return project


def _uncommitted_project(project: Path) -> None:
    git(project, "checkout", "-q", "--orphan", "fresh")
    git(project, "rm", "-q", "-r", "--cached", ".")


# extract/ls-files
def _named_layers(project: Path) -> None:
    """`snapshot --out {tmp}/layers`, renamed base.tar.zst and overlay.tar.zst (manifests
    beside: base.json, overlay.json), so that rows can name them."""
    out = project.parent / "layers"
    for layer in snapshot.build(project, out=out).layers:
        assert layer.path is not None
        stem = layer.path.name.removesuffix(".tar.zst")
        for suffix in (".tar.zst", ".json"):
            (out / f"{stem}{suffix}").rename(out / f"{layer.kind}{suffix}")


def _plain_directory(project: Path) -> None:
    write_files(project.parent / "plain", {"train.py": "print('plain')\n"})


SETUPS: dict[str, Callable[[Path], None]] = {
    "no commits": _uncommitted_project,
    # extract/ls-files
    "layers": _named_layers,
    "plain directory": _plain_directory,
}

# Rows per area: each area appends to its own list (the merge of parallel work stays clean).

ROWS_LAUNCH: list[Row] = []

_LAYERS = "{tmp}/layers"
_KHOME = r"^khome(/|$)"  # hash and key caches
# `git status` refreshes the stat data in the index of a work tree with edits (git's own
# write; `git --no-optional-locks status` would not write it)
_INDEX = r"^project/\.git(/index)?$"
ROWS_EXTRACT_LS: list[Row] = [
    Row(
        "extract-overlay-before-base",
        ("extract", f"{_LAYERS}/overlay.tar.zst", f"{_LAYERS}/base.tar.zst", "{tmp}/dest"),
        2,
        r"^error: layers in the wrong order: base\.tar\.zst is the base of overlay\.tar\.zst and "
        r"comes right before it: konduktor extract \S+/base\.tar\.zst \S+/overlay\.tar\.zst ",
        setup="layers",
    ),
    Row(
        "extract-overlay-without-base",
        ("extract", f"{_LAYERS}/overlay.tar.zst", "{tmp}/dest"),
        2,
        r"^error: overlay\.tar\.zst is an overlay and needs its base layer "
        r"base-[0-9a-f]{12}-[0-9a-f]{8}\.tar\.zst right before it: konduktor extract ",
        setup="layers",
    ),
    Row(
        "extract-base-then-overlay",
        ("extract", f"{_LAYERS}/base.tar.zst", f"{_LAYERS}/overlay.tar.zst", "{tmp}/dest"),
        0,
        r"^extracted \d+ files and 0 symlinks into ",
        stream="out",
        setup="layers",
        may_change=(r"^dest(/|$)",),
    ),
    Row(
        "snapshot-out-names",
        ("snapshot", "--out", "{tmp}/out"),
        0,
        r"^layer\s+files\s",
        stream="out",
        # only these names may appear: they say which layer is which
        may_change=(
            r"^out$",
            r"^out/(base-[0-9a-f]{12}-[0-9a-f]{8}|overlay-[0-9a-f]{12})\.(tar\.zst|json)$",
            _KHOME,
            _INDEX,
        ),
    ),
    Row(
        "ls-files-why-missing",
        ("ls-files", "--why", "train.py", "nonexistent.txt"),
        1,
        r"^error: nonexistent\.txt does not exist in \S+/project; check the path$",
        may_change=(_INDEX,),
    ),
    Row(
        "snapshot-outside-git",
        ("snapshot", "{tmp}/plain"),
        0,
        r"^layer\s+files\s",  # its last line: "not a git work tree: one full layer in ..."
        stream="out",
        setup="plain directory",
        may_change=(_KHOME,),
    ),
    Row(
        "ls-files-a-file",
        ("ls-files", "train.py"),
        0,
        r"^train\.py$",
        stream="out",
        may_change=(_INDEX,),
    ),
    Row(
        "ls-files-several-paths",
        ("ls-files", "train.py", "model", "secrets", "train.log"),
        0,
        r"^model/net\.py$",
        stream="out",
        may_change=(_INDEX,),
    ),
    Row(
        "ls-files-why-outside-root",
        ("ls-files", "--why", "--root", "{project}/model", "model/net.py", "train.log"),
        1,
        r"^error: \S+/project/train\.log is outside the synced directory \S+/project/model; "
        r"give --root a directory that holds it$",
        may_change=(_INDEX,),
    ),
]

ROWS_STORE_CHECK: list[Row] = []

ROWS_HELP: list[Row] = [
    Row("version", ("--version",), 0, r"^konduktor, version ", stream="out"),
]

ROWS = ROWS_LAUNCH + ROWS_EXTRACT_LS + ROWS_STORE_CHECK + ROWS_HELP


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under *root* with its size and mtime."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            found[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_first_hour(
    row: Row, tmp_path: Path, kube_api: KubeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KONDUKTOR_HOME", str(tmp_path / "khome"))
    monkeypatch.delenv("KONDUKTOR_CONFIG", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    project = _project(tmp_path)
    kubeconfig = kube_api.write_kubeconfig(tmp_path)
    if row.setup:
        SETUPS[row.setup](project)
    monkeypatch.chdir(project)
    before = _tree(tmp_path)
    names = {"project": str(project), "kubeconfig": str(kubeconfig), "tmp": str(tmp_path)}
    code, out, err = run(*(arg.format(**names) for arg in row.argv))
    text = err if row.stream == "err" else out
    first = text.splitlines()[0] if text.strip() else ""
    assert (code, bool(re.search(row.first, first))) == (row.code, True), (out, err)
    assert "Traceback" not in out + err
    after = _tree(tmp_path)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    allowed = [re.compile(pattern) for pattern in row.may_change]
    assert {p for p in changed if not any(a.search(p) for a in allowed)} == set()
    if not row.kube_requests:
        assert kube_api.requests == []
