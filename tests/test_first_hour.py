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


SETUPS: dict[str, Callable[[Path], None]] = {
    "no commits": _uncommitted_project,
    # store/check
    "stored": lambda project: _stored(project),
}

# Rows per area: each area appends to its own list (the merge of parallel work stays clean).

ROWS_LAUNCH: list[Row] = []

ROWS_EXTRACT_LS: list[Row] = []

_STORE = r"file://\S+/khome/store"  # the default store, under KONDUKTOR_HOME
ROWS_STORE_CHECK: list[Row] = [
    # 1. store ls: a header, plans listed, an empty store said in one line on stderr
    Row("store ls empty", ("store", "ls"), 0, rf"^no layers or launch plans in {_STORE}$"),
    Row("store ls json empty", ("store", "ls", "--json"), 0, r"^no layers or launch plans in "),
    Row("store ls pending empty", ("store", "ls", "--pending"), 0, r"^no pending uploads in "),
    Row(
        "store ls header",
        ("store", "ls"),
        0,
        r"^KIND +COMMIT +SIZE +LAST USED +KEY$",
        stream="out",
        setup="stored",
    ),
    Row(
        "store ls json rows",
        ("store", "ls", "--json"),
        0,
        r'^\{"key": "bases/.*"kind": "base"',
        stream="out",
        setup="stored",
    ),
    # 2. a bad --older-than is a usage error naming the flag
    Row(
        "store gc too short",
        ("store", "gc", "--older-than", "30m"),
        2,
        r"^error: Invalid value for '--older-than': 30m is under 1h.*"
        r"\(see: konduktor store gc --help\)$",
        setup="stored",
    ),
    Row(
        "store gc malformed",
        ("store", "gc", "--older-than", "3 days"),
        2,
        r"^error: Invalid value for '--older-than': age '3 days' is not understood; write e\.g\.",
    ),
    Row(
        "store gc dry run",
        ("store", "gc", "--older-than", "1h", "--dry-run"),
        0,
        r"^would delete 0 layer\(s\), 0 B, and 0 launch plan\(s\)",
        stream="out",
        setup="stored",
    ),
    # 3. check: a bare path refused as everywhere (naming the URL), no store created
    Row(
        "check bare path",
        ("check", "file", "--store", "{tmp}/mystore"),
        2,
        r"^error: Invalid value for '--store': store URL '\S+/mystore' has no scheme; "
        r"for that directory write file://\S+/mystore ",
    ),
    Row(
        "check missing directory",
        ("check", "file", "--store", "file://{tmp}/mystore"),
        1,
        r"^error: the store file://\S+/mystore does not work; fix what failed above$",
    ),
    Row(
        "check missing default store",
        ("check",),
        1,
        rf"^error: the store {_STORE} does not work; fix what failed above$",
    ),
    Row(
        "check default store",
        ("check", "file"),
        0,
        rf"^store {_STORE}$",
        stream="out",
        setup="stored",
        may_change=(r"^khome/store/v1(/check)?$",),  # the probe's directory stays
    ),
    Row(
        "check other kind",
        ("check", "s3", "--store", "file://{tmp}/mystore"),
        2,
        r"^error: Invalid value for '--store': file://\S+ is a file:// store, not s3; "
        r"run konduktor check file",
    ),
    # 4. usage errors exit 2 in one line, before any store or cluster is asked
    Row("check unknown cloud", ("check", "az"), 2, r"^error: Invalid value for '\[CLOUD\]': 'az'"),
    Row(
        "store ls bad url",
        ("store", "ls", "--store", "ftp://host/x"),
        2,
        r"^error: Invalid value for '--store': store URL 'ftp://host/x' has an unknown scheme",
    ),
    Row(
        "secret bad name",
        ("secret", "create", "Bad_Name", "--kind", "git-ssh", "--from-file", "{tmp}/key"),
        2,
        r"^error: 'Bad_Name' is not a valid Secret name",
    ),
    Row(
        "secret missing key file",
        ("secret", "create", "repo-key", "--kind", "git-ssh", "--from-file", "{tmp}/key"),
        2,
        r"^error: --from-file \S+/key: cannot read it",
    ),
    Row("secret delete bad name", ("secret", "delete", "A_B"), 2, r"not a valid Secret name"),
    Row("hooks run extra", ("hooks", "run", "a", "b", "c"), 2, r"unexpected extra argument"),
]


def _stored(project: Path) -> None:
    """The default store after a launch: the project's layers and one launch plan."""
    import hashlib

    from konduktor import layout
    from konduktor.storage import open_store

    code, _, err = run("snapshot", str(project), "--upload")
    assert code == 0, err
    plan = project.parent / "plan.json"
    plan.write_bytes(b"{}")
    store = open_store(f"file://{os.environ['KONDUKTOR_HOME']}/store")
    store.put(layout.plan("first-hour-0000"), plan, sha256=hashlib.sha256(b"{}").hexdigest())
    plan.unlink()


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
