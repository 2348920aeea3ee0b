"""The sshd fixture serves git the way git mode needs: strict host keys, key-only login."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from gitrepo_helpers import GitFailed, commit_all, git, make_repo
from ssh_server import SSHServer, SSHServerFactory

HOST_KEY_REFUSED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")


def known_hosts(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text("".join(lines))
    return path


def use_ssh(monkeypatch: pytest.MonkeyPatch, server: SSHServer, hosts: Path) -> None:
    monkeypatch.setenv("GIT_SSH_COMMAND", server.git_ssh_command(hosts))


def rev(repo: Path, name: str = "HEAD") -> str:
    return git(repo, "rev-parse", "--verify", name).decode().strip()


def ssh(server: SSHServer, hosts: Path, command: str) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(server.git_ssh_command(hosts))
    argv += ["-p", str(server.port), f"{server.user}@{server.host}", command]
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def test_push_then_clone_round_trips_the_commit(
    sshd: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path, {"train.py": "print('hi')\n"})
    bare = sshd.bare_repo("round-trip.git")
    use_ssh(monkeypatch, sshd, known_hosts(tmp_path, sshd.known_hosts_line))

    git(repo, "push", "-q", sshd.url("round-trip.git"), "HEAD:refs/heads/main")
    git(tmp_path, "clone", "-q", sshd.url("round-trip.git"), "clone")

    head = rev(repo)
    assert rev(bare, "refs/heads/main") == head
    assert rev(tmp_path / "clone") == head
    assert (tmp_path / "clone" / "train.py").read_text() == "print('hi')\n"
    listed = git(tmp_path, "ls-remote", sshd.url("round-trip.git"), "refs/heads/main").decode()
    assert listed.split() == [head, "refs/heads/main"]
    assert f"Accepted publickey for {sshd.user} from 127.0.0.1" in sshd.log.read_text()


def test_a_new_host_key_on_the_same_port_is_refused(
    sshd_factory: SSHServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = sshd_factory()
    first.bare_repo("x.git")
    pinned = known_hosts(tmp_path, first.known_hosts_line)
    use_ssh(monkeypatch, first, pinned)
    git(tmp_path, "ls-remote", first.url("x.git"))  # the pinned key is accepted

    first.stop()
    second = sshd_factory(port=first.port)
    second.bare_repo("x.git")
    assert second.host_key_pub != first.host_key_pub
    use_ssh(monkeypatch, second, pinned)
    with pytest.raises(GitFailed) as refused:
        git(tmp_path, "ls-remote", second.url("x.git"))

    assert any(words in str(refused.value) for words in HOST_KEY_REFUSED), refused.value
    assert pinned.read_text() == first.known_hosts_line
    # the same request succeeds once the new key is the one pinned
    use_ssh(monkeypatch, second, known_hosts(tmp_path, second.known_hosts_line))
    git(tmp_path, "ls-remote", second.url("x.git"))


def test_an_unknown_host_is_refused_and_not_learnt(sshd: SSHServer, tmp_path: Path) -> None:
    empty = known_hosts(tmp_path)

    result = ssh(sshd, empty, "true")

    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
    assert empty.read_text() == ""


def test_a_client_key_not_authorised_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    stranger = tmp_path / "id_stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.fspath(stranger)], check=True
    )
    impostor = dataclasses.replace(sshd, client_key=stranger)
    hosts = known_hosts(tmp_path, sshd.known_hosts_line)

    refused = ssh(impostor, hosts, "true")

    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr
    assert ssh(sshd, hosts, "true").returncode == 0  # the authorised key still gets in


def test_server_side_git_reads_no_machine_config(sshd: SSHServer, tmp_path: Path) -> None:
    result = ssh(sshd, known_hosts(tmp_path, sshd.known_hosts_line), "git config --list")

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@pytest.fixture
def two_commits(sshd: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Push a repository of two commits to ``two.git``; return the first (not a tip)."""
    repo = make_repo(tmp_path, {"a.txt": "one\n"}, name="two")
    first = rev(repo)
    (repo / "a.txt").write_text("two\n")
    commit_all(repo, "second")
    sshd.bare_repo("two.git")
    use_ssh(monkeypatch, sshd, known_hosts(tmp_path, sshd.known_hosts_line))
    git(repo, "push", "-q", sshd.url("two.git"), "HEAD:refs/heads/main")
    return first


def test_shallow_fetch_of_a_non_tip_commit_by_sha_over_protocol_v2(
    sshd: SSHServer, tmp_path: Path, two_commits: str
) -> None:
    clone = tmp_path / "by-sha"
    git(tmp_path, "init", "-q", os.fspath(clone))
    git(clone, "remote", "add", "origin", sshd.url("two.git"))

    git(clone, "-c", "protocol.version=2", "fetch", "-q", "--depth", "1", "origin", two_commits)

    assert rev(clone, "FETCH_HEAD") == two_commits
    assert (clone / ".git" / "shallow").read_text().split() == [two_commits]
    git(clone, "checkout", "-q", "--detach", "FETCH_HEAD")
    assert (clone / "a.txt").read_text() == "one\n"


def test_protocol_v0_refuses_a_non_tip_commit_by_sha(
    sshd: SSHServer, tmp_path: Path, two_commits: str
) -> None:
    # Shows that the v2 test above really speaks v2 over SSH (GIT_PROTOCOL reaches
    # the server): v0 only serves advertised tips unless the server is configured to.
    clone = tmp_path / "by-sha-v0"
    git(tmp_path, "init", "-q", os.fspath(clone))
    git(clone, "remote", "add", "origin", sshd.url("two.git"))

    with pytest.raises(GitFailed, match=r"not our ref|unadvertised object"):
        git(clone, "-c", "protocol.version=0", "fetch", "--depth", "1", "origin", two_commits)
