"""The pre-push hook: real `git push` to a bare repository runs the hook that was installed."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
import zstandard
from gitrepo_helpers import PINNED_IDENTITY, commit_all, git, write_files
from test_cli import run

from konduktor import config, hooks
from konduktor.errors import UsageError
from konduktor.storage import Store, open_store

FILES = {
    "train.py": "print('train')\n",
    "tools/launch.sh": "#!/bin/sh\necho go\n",
    "model.ckpt": "weights\n",
    ".konduktorignore": "*.ckpt\n",
}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONDUKTOR_HOME", str(tmp_path / "khome"))
    monkeypatch.setenv("KONDUKTOR_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("KONDUKTOR_SYNC_CONFIG", str(tmp_path / "sync.yaml"))


def configure(
    tmp_path: Path, *, bucket: str | None = None, store: dict[str, Any] | None = None, **hook: Any
) -> Store:
    """Write the config file the hook reads; return the store it names."""
    data = {"sync": {"bucket": bucket or f"file://{tmp_path}/store", "store": store or {}}}
    (tmp_path / "sync.yaml").write_text(yaml.safe_dump({**data, "hooks": hook}))
    return open_store(*config.load().store_url())


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    path = tmp_path / "upstream.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(path))
    return path


@pytest.fixture
def clone(tmp_path: Path, upstream: Path) -> Path:
    git(tmp_path, "clone", "-q", str(upstream), "clone")
    path = tmp_path / "clone"
    write_files(path, FILES)
    commit_all(path, "first")
    return path


def push(
    repo: Path, *refspecs: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), "push", "origin", *refspecs],
        capture_output=True,
        text=True,
        env={**(env or os.environ), **PINNED_IDENTITY},
        timeout=120,
        check=False,
    )


def head(repo: Path, rev: str = "HEAD") -> str:
    return git(repo, "rev-parse", rev).decode().strip()


def new_commit(repo: Path, name: str) -> str:
    write_files(repo, {f"{name}.py": f"# {name}\n"})
    commit_all(repo, name)
    return head(repo)


def bases(store: Store) -> list[str]:
    return sorted(info.key for info in store.list("v1/bases/"))


def bases_of(store: Store, commit: str) -> list[str]:
    return [key for key in bases(store) if key.split("/")[3] == commit]


def upstream_has(upstream: Path, commit: str) -> bool:
    found = subprocess.run(
        ["git", "-C", str(upstream), "cat-file", "-e", f"{commit}^{{commit}}"], check=False
    )
    return found.returncode == 0


def layer_files(store: Store, key: str, tmp_path: Path) -> dict[str, bytes]:
    dest = tmp_path / "layer.tar.zst"
    store.get(key, dest)
    data = zstandard.ZstdDecompressor().decompressobj().decompress(dest.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "konduktor pre-push" in line]


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_pushed_commit_is_in_the_store_and_a_launch_uploads_nothing(
    backend: str, clone: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "s3":
        url, options = request.getfixturevalue("s3_store_factory")("code")
        store = configure(tmp_path, bucket=url, store={"endpoint_url": options.endpoint_url})
    else:
        store = configure(tmp_path)
    hooks.install(clone)
    pushed = push(clone, "HEAD:main")
    assert pushed.returncode == 0, pushed.stderr
    assert f"konduktor: uploaded the base layer of {head(clone)[:12]} (.), " in pushed.stderr
    [key] = bases_of(store, head(clone))
    code, out, err = run("snapshot", clone, "--upload", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["uploaded_bytes"] == 0
    assert ["v1/" + k for k in report["keys"]] == [key]


def test_base_layer_is_the_commit_not_the_work_tree(clone: Path, tmp_path: Path) -> None:
    store = configure(tmp_path)
    hooks.install(clone)
    write_files(clone, {"train.py": "print('edited, not committed')\n", "new.py": "untracked\n"})
    assert push(clone, "HEAD:main").returncode == 0
    [key] = bases_of(store, head(clone))
    files = layer_files(store, key, tmp_path)
    assert files == {
        ".konduktorignore": b"*.ckpt\n",
        "tools/launch.sh": b"#!/bin/sh\necho go\n",
        "train.py": b"print('train')\n",
    }


def test_commit_already_in_the_store_costs_only_a_stat(clone: Path, tmp_path: Path) -> None:
    configure(tmp_path, strict=True)
    hooks.install(clone)
    assert push(clone, "HEAD:main").returncode == 0
    # Selecting the files again (.konduktorignore) or building the layer would read blobs:
    # with all of them gone that fails, and strict mode would block the push.
    for blob in git(clone, "ls-tree", "-r", "--object-only", "HEAD").decode().split():
        (clone / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
    again = push(clone, "HEAD:copy")
    assert again.returncode == 0, again.stderr
    assert f"the base layer of {head(clone)[:12]} (.) is in the store already" in again.stderr
    assert "uploaded" not in again.stderr


def test_tip_commits_of_several_refs_pushed_at_once(clone: Path, tmp_path: Path) -> None:
    store = configure(tmp_path)
    hooks.install(clone)
    first = head(clone)
    git(clone, "checkout", "-q", "-b", "feature")
    middle = new_commit(clone, "middle")
    feature = new_commit(clone, "feature")
    git(clone, "branch", "same-as-main", first)
    pushed = push(clone, "main", "feature", "same-as-main")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stderr.count("konduktor: uploaded the base layer") == 2
    assert len(bases_of(store, first)) == len(bases_of(store, feature)) == 1
    assert bases_of(store, middle) == []  # only the tip of each pushed ref


def test_tag_push_snapshots_the_tagged_commit_and_deletions_do_nothing(
    clone: Path, upstream: Path, tmp_path: Path
) -> None:
    store = configure(tmp_path)
    hooks.install(clone)
    tagged = new_commit(clone, "release")
    git(clone, "tag", "-a", "v1", "-m", "release 1")
    assert push(clone, "v1").returncode == 0
    assert len(bases_of(store, tagged)) == 1
    before = bases(store)
    deleted = push(clone, ":refs/tags/v1")
    assert deleted.returncode == 0, deleted.stderr
    assert "konduktor" not in deleted.stderr
    assert bases(store) == before
    assert not git(upstream, "tag", "--list", "v1").strip()


def test_sync_roots_from_config(clone: Path, tmp_path: Path) -> None:
    store = configure(tmp_path, sync_roots=["tools/", "./tools", "absent/"])
    hooks.install(clone)
    pushed = push(clone, "HEAD:main")
    assert pushed.returncode == 0, pushed.stderr
    assert len(bases_of(store, head(clone))) == 2  # the root and tools/; absent/ is skipped
    assert f"uploaded the base layer of {head(clone)[:12]} (tools), " in pushed.stderr
    code, out, err = run("snapshot", clone / "tools", "--upload", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["uploaded_bytes"] == 0
    assert "v1/" + report["keys"][0] in bases(store)


def test_pre_commit_framework_entry(clone: Path, tmp_path: Path) -> None:
    """The hook in .pre-commit-hooks.yaml, run as pre-commit runs it at the pre-push stage."""
    store = configure(tmp_path)
    manifest = Path(__file__).resolve().parents[1] / ".pre-commit-hooks.yaml"
    [entry] = [h for h in yaml.safe_load(manifest.read_text()) if h["id"] == "konduktor-snapshot"]
    assert entry["stages"] == ["pre-push"]
    command = shlex.split(entry["entry"])
    assert command[0] == "konduktor"
    done = subprocess.run(
        [sys.executable, "-m", "konduktor", *command[1:]],
        cwd=clone,
        env={**os.environ, "PRE_COMMIT_TO_REF": head(clone)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(bases_of(store, head(clone))) == 1


# -- never blocking, time bound, background ------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.usefixtures("s3_server")  # for its fake AWS credentials
def test_unreachable_store_warns_unless_strict(
    strict: bool, clone: Path, upstream: Path, tmp_path: Path, closed_port: int
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port}"
    configure(
        tmp_path,
        bucket="s3://unreachable",
        store={"endpoint_url": endpoint, "max_attempts": 1},
        strict=strict,
    )
    hooks.install(clone)
    pushed = push(clone, "HEAD:main")
    [line] = warnings_in(pushed.stderr)
    assert f"cannot reach {endpoint}" in line
    assert "Traceback" not in pushed.stderr
    if strict:
        assert pushed.returncode != 0
        assert line.startswith("error: ")
        assert "blocked" in line
        assert not upstream_has(upstream, head(clone))
    else:
        assert pushed.returncode == 0, pushed.stderr
        assert line.startswith("warning: ")
        assert line.endswith("the push goes on")
        assert upstream_has(upstream, head(clone))


class StallingServer:
    """An HTTP server that never finishes an answer: after each request it sends a status
    line, then one byte of a header every 0.2 s, so no read timeout ever fires and a
    request to it ends only when the client drops the connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[str] = []  # request lines received, none of them ever answered
        self.open = 0  # connections the client has not dropped yet
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acceptor = threading.Thread(target=self.accept, daemon=True)
        self.acceptor.start()

    def accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with self.lock:
                self.open += 1
            threading.Thread(target=self.stall, args=(conn,), daemon=True).start()

    def stall(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                with self.lock:
                    self.requests.append(head.split(b"\r\n", 1)[0].decode())
                conn.sendall(b"HTTP/1.1 200 OK\r\nx-stall: ")
                while not self.stop.wait(0.2):
                    conn.sendall(b"z")  # fails once the client is gone
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1

    def wait_until_dropped(self) -> bool:
        """True once the client dropped every connection (a poll, not a timing check)."""
        deadline = time.monotonic() + 30
        while self.open and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.open == 0


@pytest.fixture
def stalling_server() -> Iterator[StallingServer]:
    server = StallingServer()
    yield server
    server.stop.set()
    server.acceptor.join()
    server.sock.close()


@pytest.mark.usefixtures("s3_server")  # for its fake AWS credentials
def test_store_that_hangs_does_not_hold_the_push(
    clone: Path, upstream: Path, tmp_path: Path, stalling_server: StallingServer
) -> None:
    """The store never answers, so the work can never end: were the hook to wait for it,
    the push would not return (push() gives up after 120 s and the test fails)."""
    bound = 2
    store = {"endpoint_url": stalling_server.url, "max_attempts": 1}
    configure(tmp_path, bucket="s3://hangs", store=store, timeout=bound)
    hooks.install(clone)
    pushed = push(clone, "HEAD:main")
    assert pushed.returncode == 0, pushed.stderr
    [line] = warnings_in(pushed.stderr)
    assert f"gave up after {bound} s (hooks.timeout)" in line
    assert upstream_has(upstream, head(clone))
    # Nothing was left behind holding a request to the store: the hook's process is gone.
    assert stalling_server.wait_until_dropped()
    assert all(request.startswith("HEAD ") for request in stalling_server.requests)


def test_background_mode_returns_at_once_and_logs(clone: Path, tmp_path: Path) -> None:
    store = configure(tmp_path, background=True)
    hooks.install(clone)
    pushed = push(clone, "HEAD:main")
    assert pushed.returncode == 0, pushed.stderr
    log = tmp_path / "khome" / "logs" / hooks.LOG_NAME
    assert f"log in {log}" in pushed.stderr
    deadline = time.monotonic() + 60
    while "konduktor:" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"konduktor: uploaded the base layer of {head(clone)[:12]} (.), " in log.read_text()
    assert len(bases_of(store, head(clone))) == 1


def test_bad_input_warns_and_strict_blocks(clone: Path, tmp_path: Path) -> None:
    for strict, code, prefix in ((False, 0, "warning: "), (True, 1, "error: ")):
        configure(tmp_path, strict=strict)
        done = subprocess.run(
            [sys.executable, "-m", "konduktor", "hooks", "run", "origin", "url"],
            cwd=clone,
            input="refs/heads/main only-two-fields\n",
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == code
        [line] = done.stderr.splitlines()
        assert line.startswith(prefix)
        assert "line 1 of the pre-push input" in line


def test_invalid_config_does_not_block_the_push(
    clone: Path, upstream: Path, tmp_path: Path
) -> None:
    hooks.install(clone)
    (tmp_path / "sync.yaml").write_text("hooks:\n  stirct: true\n")
    pushed = push(clone, "HEAD:main")
    assert pushed.returncode == 0
    [line] = warnings_in(pushed.stderr)
    assert "did you mean hooks.strict?" in line
    assert upstream_has(upstream, head(clone))


# -- chaining, core.hooksPath, worktrees, install and uninstall --------------------------------

FOREIGN = """#!/bin/sh
echo "$@" > "{record}"
cat >> "{record}"
exit $(cat "{status}")
"""


def test_foreign_hook_runs_first_and_its_failure_blocks_the_push(
    clone: Path, upstream: Path, tmp_path: Path
) -> None:
    store = configure(tmp_path)
    record, status = tmp_path / "foreign-saw", tmp_path / "foreign-status"
    status.write_text("0")
    foreign = clone / ".git" / "hooks" / "pre-push"
    foreign.write_text(FOREIGN.format(record=record, status=status))
    foreign.chmod(0o755)
    installed = hooks.install(clone)
    assert installed.chained == foreign.with_name(hooks.CHAINED)
    first = head(clone)
    assert push(clone, "HEAD:main").returncode == 0
    assert record.read_text() == f"origin {upstream}\nHEAD {first} refs/heads/main {'0' * 40}\n"
    assert len(bases_of(store, first)) == 1
    status.write_text("3")
    second = new_commit(clone, "second")
    refused = push(clone, "HEAD:main")
    assert refused.returncode != 0
    assert not upstream_has(upstream, second)
    assert bases_of(store, second) == []


def test_install_is_idempotent_and_uninstall_restores_the_foreign_hook(clone: Path) -> None:
    foreign = clone / ".git" / "hooks" / "pre-push"
    foreign.write_text("#!/bin/sh\nexit 0\n")
    foreign.chmod(0o750)
    first = hooks.install(clone)
    ours = foreign.read_text()
    second = hooks.install(clone)
    assert (first.changed, second.changed) == (True, False)
    assert foreign.read_text() == ours
    assert hooks.is_ours(foreign)
    assert foreign.with_name(hooks.CHAINED).read_text() == "#!/bin/sh\nexit 0\n"
    assert hooks.uninstall(clone).restored
    assert foreign.read_text() == "#!/bin/sh\nexit 0\n"
    assert foreign.stat().st_mode & 0o777 == 0o750
    assert not foreign.with_name(hooks.CHAINED).exists()
    assert not hooks.uninstall(clone).removed
    assert foreign.read_text() == "#!/bin/sh\nexit 0\n"


def test_uninstall_without_a_chained_hook_removes_ours(clone: Path) -> None:
    hook = hooks.install(clone).hook
    gone = hooks.uninstall(clone)
    assert (gone.removed, gone.restored) == (True, False)
    assert not os.path.lexists(hook)


def test_install_keeps_an_older_chained_hook_unless_forced(clone: Path) -> None:
    hook = clone / ".git" / "hooks" / "pre-push"
    hook.write_text("#!/bin/sh\n# first tool\n")
    hooks.install(clone)
    hook.write_text("#!/bin/sh\n# second tool\n")  # another tool replaced ours
    with pytest.raises(UsageError, match="--force"):
        hooks.install(clone)
    assert hook.read_text() == "#!/bin/sh\n# second tool\n"
    hooks.install(clone, force=True)
    assert hooks.is_ours(hook)
    assert hook.with_name(hooks.CHAINED).read_text() == "#!/bin/sh\n# second tool\n"


def test_core_hooks_path_is_honoured(clone: Path, tmp_path: Path) -> None:
    store = configure(tmp_path)
    git(clone, "config", "core.hooksPath", "shared-hooks")
    installed = hooks.install(clone / "tools")
    assert installed.hook == clone / "shared-hooks" / "pre-push"
    assert not (clone / ".git" / "hooks" / "pre-push").exists()
    assert push(clone, "HEAD:main").returncode == 0
    assert len(bases_of(store, head(clone))) == 1


def test_hook_installed_from_a_linked_worktree(clone: Path, tmp_path: Path) -> None:
    store = configure(tmp_path)
    worktree = tmp_path / "worktree"
    git(clone, "worktree", "add", "-q", "-b", "side", str(worktree))
    assert hooks.install(worktree).hook == clone / ".git" / "hooks" / "pre-push"
    side = new_commit(worktree, "side")
    assert push(worktree, "side").returncode == 0
    assert len(bases_of(store, side)) == 1


# -- how the hook finds konduktor ------------------------------------------------------------


def minimal_path() -> str:
    """PATH with git and the shell's tools, but no konduktor."""
    git_dir = os.path.dirname(shutil.which("git") or "/usr/bin/git")
    path = os.pathsep.join(dict.fromkeys([git_dir, "/usr/bin", "/bin"]))
    assert shutil.which("konduktor", path=path) is None
    return path


def test_falls_back_to_konduktor_on_path_when_the_interpreter_is_gone(
    clone: Path, tmp_path: Path
) -> None:
    store = configure(tmp_path)
    hooks.install(clone, python=str(tmp_path / "deleted-venv" / "bin" / "python"))
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([venv_bin, minimal_path()])}
    assert push(clone, "HEAD:main", env=env).returncode == 0
    assert len(bases_of(store, head(clone))) == 1


def test_no_konduktor_at_all_warns_and_pushes(clone: Path, upstream: Path, tmp_path: Path) -> None:
    configure(tmp_path, strict=True)  # cannot be read without konduktor: never blocks
    hooks.install(clone, python=str(tmp_path / "deleted-venv" / "bin" / "python"))
    pushed = push(clone, "HEAD:main", env={**os.environ, "PATH": minimal_path()})
    assert pushed.returncode == 0
    [line] = warnings_in(pushed.stderr)
    assert "konduktor is not on PATH" in line
    assert upstream_has(upstream, head(clone))


def test_interpreter_without_konduktor_warns_and_pushes(clone: Path, tmp_path: Path) -> None:
    python = tmp_path / "python-without-site"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')
    python.chmod(0o755)
    hooks.install(clone, python=str(python))
    pushed = push(clone, "HEAD:main")
    assert pushed.returncode == 0
    [line] = warnings_in(pushed.stderr)
    assert "No module named 'konduktor'" in line


def test_a_konduktor_directory_in_the_pushed_repository_is_not_imported(
    clone: Path, tmp_path: Path
) -> None:
    store = configure(tmp_path)
    write_files(
        clone, {"konduktor/__init__.py": "raise SystemExit('imported from the work tree')\n"}
    )
    commit_all(clone, "a package of the same name")
    hooks.install(clone)
    pushed = push(clone, "HEAD:main")
    assert pushed.returncode == 0
    assert "imported from the work tree" not in pushed.stderr
    assert len(bases_of(store, head(clone))) == 1


# -- input parsing and the command line ----------------------------------------------------------


def test_pushed_commits_skip_deletions_and_repeats() -> None:
    a, b, zero = "a" * 40, "b" * 40, "0" * 40
    lines = [
        f"refs/heads/x {a} refs/heads/x {zero}",
        "",
        f"(delete) {zero} refs/heads/gone {b}",
        f"refs/tags/t {b} refs/tags/t {zero}",
        f"refs/heads/y {a} refs/heads/y {b}",
    ]
    assert hooks.pushed_commits(lines) == [a, b]
    with pytest.raises(UsageError, match="line 2"):
        hooks.pushed_commits([*lines[:1], "refs/heads/x"])


def test_cli_install_status_uninstall(
    clone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(tmp_path, sync_roots=["tools"], timeout=5)
    monkeypatch.chdir(clone)
    code, out, _ = run("hooks", "status")
    assert code == 0
    assert out.startswith("not installed:")
    code, out, _ = run("hooks", "install")
    assert (code, out.split()[0]) == (0, "installed")
    code, out, _ = run("hooks", "install")
    assert (code, out.split()[0]) == (0, "already")
    code, out, _ = run("hooks", "status")
    assert f"runs konduktor with {sys.executable}\n" in out
    assert "sync roots: . tools\n" in out
    assert "strict: false, timeout: 5 s, background: false" in out
    code, out, _ = run("hooks", "uninstall")
    assert (code, out.split()[0]) == (0, "removed")


def test_cli_outside_a_repository_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run("hooks", "install")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "not a git repository" in err


def test_push_with_git_dir_and_work_tree_options(clone: Path, tmp_path: Path) -> None:
    """git exports GIT_DIR and GIT_WORK_TREE to the hook; konduktor's git commands drop them."""
    store = configure(tmp_path)
    hooks.install(clone)
    pushed = subprocess.run(
        ["git", f"--git-dir={clone / '.git'}", f"--work-tree={clone}", "push", "origin", "main"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "konduktor: uploaded the base layer" in pushed.stderr
    assert len(bases_of(store, head(clone))) == 1
