"""A real ``sshd`` for tests: OpenSSH on a free loopback port, serving bare git repositories.

``sshd_factory`` starts a new server per call, each with a freshly generated ed25519
host key, and stops them all at the end of the session; ``sshd`` is one such server
shared by the session. Every server authorises the same client key, made once per
session, so a test can stop a server and start another on the same port to present a
different host key to a client that pinned the first one.

Clients are meant to check host keys strictly and read nothing of the machine's
``~/.ssh``: :meth:`SSHServer.git_ssh_command` names the key, the known_hosts file
and ``StrictHostKeyChecking=yes`` explicitly. On the server side, git runs as the
current user with a sandboxed configuration (no system or global config files),
and ``GIT_PROTOCOL`` is accepted from the client, so protocol v2 is spoken over SSH
as it is by GitHub and GitLab.

Needs Debian's openssh-server (``/usr/sbin/sshd``; ``.ci/run`` installs it). Run as
root it needs the privilege separation directory ``/run/sshd``, which is created if
missing.
"""

from __future__ import annotations

import os
import pwd
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

__all__ = ["SSHD", "SSHServer", "SSHServerFactory", "sshd", "sshd_factory"]

SSHD = Path("/usr/sbin/sshd")  # sshd refuses to start unless run by its absolute path
PRIVSEP_DIR = Path("/run/sshd")
LOOPBACK = "127.0.0.1"
_STARTUP_SECONDS = 10.0
_STOP_SECONDS = 10.0
_LOG_TAIL_LINES = 30

_CONFIG = """\
Port {port}
ListenAddress {host}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
AllowUsers {user}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
# pytest's temporary directories are not root-owned and 0755 all the way up
StrictModes no
UsePAM no
UseDNS no
LogLevel VERBOSE
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTunnel no
PermitUserRC no
PrintMotd no
# git sends the protocol version it wants (v2) through this variable
AcceptEnv GIT_PROTOCOL
# git on the server must not read the machine's /etc/gitconfig or ~/.gitconfig
SetEnv GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
"""


@dataclass(frozen=True)
class SSHServer:
    """One running sshd: where it listens, how to reach it, what it serves.

    ``host_key_pub`` is the public host key as ``"ssh-ed25519 AAAA..."`` (no comment);
    ``client_key`` is the session's private client key (ed25519, no passphrase, mode
    0600), authorised on every server; repositories live under ``root``; ``log`` is
    the server's log (LogLevel VERBOSE).
    """

    host: str
    port: int
    user: str
    host_key_pub: str
    client_key: Path
    root: Path
    log: Path
    _process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    @property
    def known_hosts_line(self) -> str:
        """This server's entry for a known_hosts file, newline included."""
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {self.host_key_pub}\n"

    def url(self, repo_name: str) -> str:
        """The ``ssh://`` URL of ``root/repo_name`` (the scp form cannot carry a port)."""
        return f"ssh://{self.user}@{self.host}:{self.port}{self.root}/{repo_name}"

    def bare_repo(self, name: str) -> Path:
        """``git init --bare`` a repository at ``root/name`` and return its path."""
        path = self.root / name
        subprocess.run(["git", "init", "-q", "--bare", os.fspath(path)], check=True)
        return path

    def git_ssh_command(self, known_hosts: Path) -> str:
        """A GIT_SSH_COMMAND logging in with ``client_key`` and trusting only ``known_hosts``."""
        argv = [
            *("ssh", "-i", os.fspath(self.client_key)),
            *("-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes"),
            *("-o", f"UserKnownHostsFile={os.fspath(known_hosts)}", "-o", "BatchMode=yes"),
        ]
        # git runs the value through the shell
        return shlex.join(argv)

    def log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    def stop(self) -> None:
        """Stop the server and wait until the port is released; a no-op once stopped.

        Do not stop the shared ``sshd``: start your own from ``sshd_factory``.
        """
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


class SSHServerFactory(Protocol):
    def __call__(self, *, port: int | None = None) -> SSHServer: ...


@pytest.fixture(scope="session")
def sshd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServerFactory]:
    """start(*, port=None) -> SSHServer: a new sshd with a new host key.

    ``port`` defaults to a free one; pass a stopped server's port to take its place.
    Every server started is stopped at the end of the session.
    """
    _require_sshd()
    client_key = tmp_path_factory.mktemp("ssh-client") / "id_ed25519"
    _keygen(client_key, comment="konduktor-test-client")
    started: list[SSHServer] = []

    def start(*, port: int | None = None) -> SSHServer:
        workdir = tmp_path_factory.mktemp("sshd")
        server = _start(workdir, client_key, port=port or _free_port())
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def sshd(sshd_factory: SSHServerFactory) -> SSHServer:
    """One sshd for the whole session (do not stop it)."""
    return sshd_factory()


def _require_sshd() -> None:
    if not os.access(SSHD, os.X_OK):
        pytest.fail(f"{SSHD} not found: install openssh-server (see .ci/run)", pytrace=False)
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        # sshd running as root chroots its unprivileged child here; the Debian
        # package leaves it to systemd to create, which containers do not run.
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True)


def _keygen(path: Path, *, comment: str) -> None:
    cmd = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", os.fspath(path)]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    path.chmod(0o600)


def _free_port() -> int:
    # The port is free when this returns; sshd binds it a moment later. Another
    # process taking it in between makes startup fail loudly, not silently.
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
    return port


def _start(workdir: Path, client_key: Path, *, port: int) -> SSHServer:
    host_key = workdir / "ssh_host_ed25519_key"
    _keygen(host_key, comment="konduktor-test-host")
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.write_text(client_key.with_suffix(".pub").read_text())
    root = workdir / "srv"
    root.mkdir()
    user = pwd.getpwuid(os.geteuid()).pw_name
    config = workdir / "sshd_config"
    config.write_text(
        _CONFIG.format(
            port=port,
            host=LOOPBACK,
            host_key=host_key,
            pid_file=workdir / "sshd.pid",
            authorized_keys=authorized_keys,
            user=user,
        )
    )
    log = workdir / "sshd.log"
    # the log goes to a file: a pipe nobody reads would fill up and stall the server
    with log.open("wb") as out:
        process = subprocess.Popen(
            [os.fspath(SSHD), "-D", "-e", "-f", os.fspath(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    public = host_key.with_suffix(".pub").read_text().split()
    server = SSHServer(
        host=LOOPBACK,
        port=port,
        user=user,
        host_key_pub=" ".join(public[:2]),
        client_key=client_key,
        root=root,
        log=log,
        _process=process,
    )
    _wait_until_ready(server)
    return server


def _wait_until_ready(server: SSHServer) -> None:
    # Both the log line and the banner: the banner alone could come from another
    # server already on a port passed in by the caller.
    listening = f"Server listening on {server.host} port {server.port}"
    deadline = time.monotonic() + _STARTUP_SECONDS
    while time.monotonic() < deadline:
        code = server._process.poll()
        if code is not None:
            pytest.fail(f"sshd exited with {code}; log:\n{server.log_tail()}", pytrace=False)
        if listening in server.log.read_text(errors="replace") and _reads_banner(server):
            return
        time.sleep(0.05)
    server.stop()
    pytest.fail(
        f"sshd did not answer on port {server.port} within {_STARTUP_SECONDS} s; "
        f"log:\n{server.log_tail()}",
        pytrace=False,
    )


def _reads_banner(server: SSHServer) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=1) as conn:
            return conn.recv(256).startswith(b"SSH-2.0-")
    except OSError:
        return False
