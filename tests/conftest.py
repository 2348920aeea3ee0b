"""Shared fixtures: a git configuration sandbox for the whole session, a KONDUKTOR_HOME per test.

git must never read the developer's ``~/.gitconfig``, the system config or
``core.excludesFile`` while tests run, or the oracle (git itself) and the code
under test would see different ignore rules depending on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from gcs_server import gcs_server, gcs_store_factory  # noqa: F401  (fixtures)
from kube_server import cluster, kube_api, kubeconfig  # noqa: F401  (fixtures)
from s3_server import s3_server, s3_store_factory  # noqa: F401  (fixtures)
from ssh_server import sshd, sshd_factory  # noqa: F401  (fixtures)

GLOBAL_CONFIG = """\
[user]
\tname = Konduktor Test
\temail = test@konduktor.invalid
[protocol "file"]
\tallow = always
[init]
\tdefaultBranch = main
[advice]
\tdetachedHead = false
"""

_saved_environ: dict[str, str] | None = None
_sandbox: Path | None = None


def _isolate_git(sandbox: Path) -> None:
    home = sandbox / "home"
    xdg = sandbox / "xdg"
    home.mkdir()
    xdg.mkdir()
    config = sandbox / "gitconfig"
    config.write_text(GLOBAL_CONFIG)
    # libgit2 (pygit2) ignores GIT_CONFIG_GLOBAL and reads $HOME/.gitconfig.
    (home / ".gitconfig").write_text(GLOBAL_CONFIG)
    # Drop what a surrounding git (a hook, a CI step) may have exported: GIT_DIR,
    # GIT_INDEX_FILE, GIT_CONFIG_PARAMETERS, ... TLS settings are harmless.
    for name in [n for n in os.environ if n.startswith("GIT_") and not n.startswith("GIT_SSL_")]:
        del os.environ[name]
    os.environ.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(config),
        HOME=str(home),
        XDG_CONFIG_HOME=str(xdg),
    )


def pytest_configure(config: pytest.Config) -> None:
    # Done here rather than only in a fixture: libgit2 caches HOME and the XDG
    # directories when pygit2 is imported, which happens while test modules are
    # collected, before any fixture runs.
    global _saved_environ, _sandbox
    _saved_environ = dict(os.environ)
    _sandbox = Path(tempfile.mkdtemp(prefix="konduktor-git-sandbox-"))
    _isolate_git(_sandbox)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _saved_environ is not None:
        os.environ.clear()
        os.environ.update(_saved_environ)
    if _sandbox is not None:
        shutil.rmtree(_sandbox, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def git_sandbox() -> Iterator[Path]:
    """The isolated git configuration: no system config, a throwaway global one and HOME."""
    assert _sandbox is not None
    with pytest.MonkeyPatch.context() as mp:
        # Re-assert per session in case a plugin touched the environment.
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        mp.setenv("GIT_CONFIG_GLOBAL", str(_sandbox / "gitconfig"))
        mp.setenv("HOME", str(_sandbox / "home"))
        mp.setenv("XDG_CONFIG_HOME", str(_sandbox / "xdg"))
        seen = subprocess.run(
            ["git", "config", "--global", "--get", "protocol.file.allow"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout.strip()
        assert seen == "always", "git is not reading the sandboxed global config"
        yield _sandbox


@pytest.fixture(autouse=True)
def konduktor_home_sandbox(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own, empty KONDUKTOR_HOME (caches, logs, local runs, config).

    Outside ``tmp_path`` so that tests asserting on their ``tmp_path`` see nothing extra; a
    module's own fixture that sets KONDUKTOR_HOME (or KONDUKTOR_CONFIG) runs after this one
    and wins. A KONDUKTOR_CONFIG from the developer's shell is dropped: the config file is
    the one in this home unless a test names another (so are KONDUKTOR_SYNC_CONFIG and
    Konduktor's KONDUKTOR_USER_ID).
    """
    home = tmp_path_factory.mktemp("konduktor-home")
    monkeypatch.setenv("KONDUKTOR_HOME", str(home))
    for name in ("KONDUKTOR_CONFIG", "KONDUKTOR_SYNC_CONFIG", "KONDUKTOR_USER_ID"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The repository's ``fixtures/`` directory (data only)."""
    return Path(__file__).resolve().parent.parent / "fixtures"


def missing_on_this_machine(message: str) -> None:
    """Skip a test whose prerequisite this machine lacks; on CI (which installs them all)
    fail instead, so that a missing install step never passes as a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set: these tests fail rather than skip", pytrace=False)
    pytest.skip(message)
