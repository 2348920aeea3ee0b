"""The first hour of a new user, as one table: each row is a command on a small realistic
project, with its exit code, the first line it prints, and what it may leave behind.

After every row the test also checks that nothing was created or changed anywhere under
the test's directory (the store, the project, KONDUKTOR_HOME) unless the row says what
may change, and that nothing reached the Kubernetes API server unless the row allows it.
"""

from __future__ import annotations

import os
import re
import shutil
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
    last: str | None = None  # a regex the last line of stderr must match
    line: str | None = None  # a regex some line of stderr must match
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
    shutil.rmtree(project / ".git")
    git(project, "init", "-q")


def _not_a_repository(project: Path) -> None:
    shutil.rmtree(project / ".git")


def _task(text: str) -> Callable[[Path], None]:
    return lambda project: (project / "task.yaml").write_text(text)


def _config(text: str) -> Callable[[Path], None]:
    def write(project: Path) -> None:
        (project.parent / "khome").mkdir(exist_ok=True)
        (project.parent / "khome" / "config.yaml").write_text(text)

    return write


SETUPS: dict[str, Callable[[Path], None]] = {
    "no commits": _uncommitted_project,
    "not a repository": _not_a_repository,
    "two nodes": _task(TASK.replace("workdir: .", "workdir: .\nnum_nodes: 2")),
    "exits 3": _task(TASK.replace("python train.py", "exit 3")),
    "underscore name": _task(TASK.replace("first-hour", "my_train")),
    "soft limit 0.5 MB": _config("sync:\n  soft_limit_mb: 0.5\n"),
}
_LOCAL = ("launch", "--local", "-y", "task.yaml")
_SANDBOX = r"^khome($|/(local|store|cache)(/|$))"  # what a local run writes: its HOME and store

# Rows per area: each area appends to its own list (the merge of parallel work stays clean).

ROWS_LAUNCH: list[Row] = [
    Row(
        "cluster launch with the default file:// store is refused before anything is sent",
        ("launch", "-y", "--kubeconfig", "{kubeconfig}", "task.yaml"),
        1,
        r"^error: the store file://.*khome/store is a directory on this machine, which the "
        r"cluster's pods cannot read: set jobs\.bucket to an s3:// or gs:// URL",
    ),
    Row(
        "git mode outside a repository says so first, in konduktor's words",
        ("launch", "--mode", "git", "--local", "-y", "task.yaml"),
        1,
        r"^error: --mode git clones the workdir's repository, but .* is not in a git "
        r"repository: make it one",
        setup="not a repository",
    ),
    Row(
        "git mode without a commit says so before asking for a remote or a key",
        ("launch", "--mode", "git", "--local", "-y", "task.yaml"),
        1,
        r"^error: --mode git clones a commit, but the repository at .* has none yet",
        setup="no commits",
    ),
    Row(
        "--name blames the flag, with the rule",
        ("launch", "--local", "-y", "--name", "Bad_Name", "task.yaml"),
        2,
        r"^error: --name: 'Bad_Name' is not valid; use lowercase letters, digits and -, "
        r"starting with a letter",
    ),
    Row(
        "--cpus blames the flag",
        ("launch", "--local", "-y", "--cpus", "abc", "task.yaml"),
        2,
        r"^error: --cpus: 'abc' is not valid; write a number of vCPUs",
    ),
    Row(
        "--env with an empty name is refused",
        ("launch", "--local", "-y", "--env", "=x", "task.yaml"),
        2,
        r"^error: --env '': not a variable name",
    ),
    Row(
        "name: my_train is refused with the rule",
        ("launch", "--local", "-y", "task.yaml"),
        1,
        r"task\.yaml: name: 'my_train' is not valid; use lowercase letters, digits and -",
        setup="underscore name",
    ),
    Row(
        "--local with two nodes says it runs rank 0 only",
        _LOCAL,
        0,
        r"^--local runs one node: rank 0 of the task's 2",
        setup="two nodes",
        may_change=(_SANDBOX,),
        last=r"^job first-hour-[0-9a-f]{8} exited with code 0$",
    ),
    Row(
        "--local closes with the task's exit code, said to be the task's",
        _LOCAL,
        3,
        r"^job first-hour-[0-9a-f]{8}: \d+ file\(s\), [\d.]+ (kB|MB) to ship$",
        setup="exits 3",
        may_change=(_SANDBOX,),
        last=r"^job first-hour-[0-9a-f]{8} exited with code 3 \(the task's own code; "
        r"konduktor exits with it\)$",
    ),
    Row(
        "--local -d says where the output goes",
        ("launch", "--local", "-y", "-d", "task.yaml"),
        0,
        r"^job first-hour-",
        may_change=(_SANDBOX,),
        last=r"runs in the background; its output goes to .*khome/local/first-hour-[0-9a-f]{8}"
        r"/run\.log$",
    ),
    Row(
        "the summary and the limit warning use the same MB",
        ("launch", "--local", "-y", "task.yaml"),
        0,
        r"^job first-hour-[0-9a-f]{8}: 7 file\(s\), 1\.0 MB to ship$",
        setup="soft limit 0.5 MB",
        line=r"^warning: the launch ships 1\.0 MB, above sync\.soft_limit_mb \(0\.5 MB\)",
        may_change=(_SANDBOX,),
    ),
]

ROWS_EXTRACT_LS: list[Row] = []

ROWS_STORE_CHECK: list[Row] = []

ROWS_HELP: list[Row] = [
    Row("version", ("--version",), 0, r"^konduktor, version ", stream="out"),
]

ROWS = ROWS_LAUNCH + ROWS_EXTRACT_LS + ROWS_STORE_CHECK + ROWS_HELP


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under *root* with its size and mtime (a directory's change is in what
    it holds, which is listed too)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[Path(dirpath, name).relative_to(root).as_posix()] = (0, 0)
        for name in filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            found[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.parametrize("row", ROWS, ids=[re.sub(r"\W+", "_", row.id) for row in ROWS])
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
    if row.last is not None:
        assert re.search(row.last, err.splitlines()[-1]), err
    if row.line is not None:
        assert any(re.search(row.line, line) for line in err.splitlines()), err
    after = _tree(tmp_path)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    allowed = [re.compile(pattern) for pattern in row.may_change]
    assert {p for p in changed if not any(a.search(p) for a in allowed)} == set()
    if not row.kube_requests:
        assert kube_api.requests == []
