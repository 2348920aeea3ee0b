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
from config_files import write_config
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
        write_config(project.parent / "khome" / "config.yaml", text)

    return write


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
    "not a repository": _not_a_repository,
    "two nodes": _task(TASK.replace("workdir: .", "workdir: .\nnum_nodes: 2")),
    "exits 3": _task(TASK.replace("python train.py", "exit 3")),
    "underscore name": _task(TASK.replace("first-hour", "my_train")),
    "soft limit 0.5 MB": _config("sync:\n  soft_limit_mb: 0.5\n"),
    # extract/ls-files
    "layers": _named_layers,
    "plain directory": _plain_directory,
    # store/check
    "stored": lambda project: _stored(project),
}
_LOCAL = ("launch", "--local", "-y", "task.yaml")
_SANDBOX = r"^khome($|/(local|store|cache)(/|$))"  # what a local run writes: its HOME and store

# Rows per area: each area appends to its own list (the merge of parallel work stays clean).

ROWS_LAUNCH: list[Row] = [
    Row(
        "cluster launch with the default file:// store is refused before anything is sent",
        ("launch", "-y", "-d", "--kubeconfig", "{kubeconfig}", "task.yaml"),
        1,
        r"^error: the store file://.*khome/store is a directory on this machine, which the "
        r"cluster's pods cannot read: set jobs\.bucket to an s3:// or gs:// URL in "
        r".*khome/config\.yaml .*set sync\.shared_store: true in .*khome/sync\.yaml$",
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
        r"^error: --name: 'Bad_Name' is not valid; a name is a DNS-1035 label: lowercase "
        r"letters, digits and -, starting with a letter",
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
        r"task\.yaml: name: 'my_train' is not valid; a name is a DNS-1035 label: lowercase "
        r"letters, digits and -, starting with a letter, ending with a letter or digit, at most "
        r"40 characters .*MASTER_ADDR.*no _ or \.",
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
        r"/run\.log \(konduktor logs first-hour-[0-9a-f]{8} follows it\)$",
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
        r"^no allowed_clouds in \S+config\.yaml: checking the configured store; set "
        r"allowed_clouds: \[s3\] \(or \[gs\]\) there",
        last=rf"^error: the store {_STORE} does not work; fix what failed above$",
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
    Row("bare konduktor prints its help", (), 0, r"^Usage: konduktor ", stream="out"),
    Row("bare konduktor store prints its help", ("store",), 0, r"^Usage: konduktor store ", "out"),
    Row(
        "-o json is the JSON spelling (snapshot)",
        ("snapshot", "-o", "json"),
        0,
        r"^\{$",
        stream="out",
        may_change=(_SANDBOX,),
    ),
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


def test_help_lists_every_command_with_its_whole_first_sentence() -> None:
    from konduktor.cli import cli

    code, out, _ = run("--help")
    assert code == 0
    listed = out.split("Commands:\n", 1)[1]
    for name, command in cli.commands.items():
        sentence = " ".join(command.get_short_help_str(limit=10**6).split())
        assert sentence.endswith("."), name
        assert not sentence.endswith("..."), name
        assert sentence in " ".join(listed.split()), name
