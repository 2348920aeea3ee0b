"""Git mode (DESIGN §8): the pod clones the exact commit over SSH instead of fetching a base.

:func:`checkout` has :func:`resolve` check, on the launcher, everything the pod will
rely on, in the order a user fixes things, failing fast with what to do: the workdir
is a repository's root; it has a commit; it has a remote with an SSH URL; HEAD is on
the remote branch; the remote host's keys are known (from ``~/.ssh/known_hosts``, or
scanned once with ``--accept-host-key``). Then it finds the SSH key the pod will use
(:func:`ssh_key`).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from konduktor.config import Config
from konduktor.errors import ConfigError, GitError, TaskError, UsageError
from konduktor.gitrepo import run_git
from konduktor.plan import GitCheckout
from konduktor.task import FileMount, Task

if TYPE_CHECKING:
    from konduktor.k8s.secrets import UserSecret

_SCP = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>[^:/]+):(?P<path>[^/].*|/.*)$")
_SSH = re.compile(r"^ssh://(?:(?P<user>[^@/]+)@)?(?P<host>[^:/]+)(?::(?P<port>\d+))?(?P<path>/.*)$")
_HTTPS = re.compile(r"^https?://(?:[^@/]+@)?(?P<host>[^:/]+)(?::\d+)?/(?P<path>.+?)/?$")


@dataclass(frozen=True)
class Options:
    """Git mode's command-line options."""

    remote: str = "origin"
    branch: str | None = None  # the remote branch holding HEAD (default: the current one)
    ssh_url: bool = False  # clone an https:// remote over SSH
    fetch: bool = False  # fetch before checking that HEAD is pushed
    accept_host_key: bool = False  # pin host keys scanned now when known_hosts lacks them
    clean_only: bool = False  # refuse uncommitted changes
    ssh_secret: str | None = None  # the key from this Kubernetes Secret
    recurse_submodules: bool = False


def checkout(
    task: Task,
    cfg: Config,
    options: Options,
    *,
    local: bool,
    user_secrets: Callable[[], Sequence[UserSecret]] = tuple,
) -> tuple[Task, GitCheckout, str | None, list[str]]:
    """What the pod clones, for *task*'s workdir: (the task, with a file mount added for
    ``git.ssh_key``; the checkout; the Secret holding the key, if any; notes to show).
    *user_secrets* lists the user's Secrets in the cluster
    (:func:`konduktor.k8s.secrets.user_secrets`), where a git-ssh one is found when nothing
    else names a key; it is called only then, after the repository's checks."""
    workdir = task.workdir
    if workdir is None:
        raise TaskError(f"{task.path}: --mode git clones the workdir: the task needs a workdir")
    found, notes = resolve(workdir, options)
    task, key, secret = ssh_key(task, cfg, options.ssh_secret, user_secrets)
    if secret and local:
        raise UsageError(
            "--local cannot mount the Kubernetes Secret with the SSH key; mount the key "
            "file (file_mounts) or set git.ssh_key"
        )
    if secret and not (options.ssh_secret or cfg.git_ssh_secret):
        notes.append(f"the pod clones with the key in your git-ssh Secret {secret}")
    notes.append(f"the pod clones {found.url} at {found.commit[:12]} ({found.branch})")
    return task, replace(found, key=key), secret, notes


def resolve(root: Path, options: Options) -> tuple[GitCheckout, list[str]]:
    """The checkout of the repository at *root* (its key still to be chosen), and notes to
    show the user. The checks run in the order a user fixes things: the repository, its
    commits, the remote, the pushed commit, the remote host's keys."""
    remote, branch = options.remote, options.branch
    top = Path(_toplevel(root)).resolve()
    if top != root.resolve():
        raise GitError(
            f"--mode git clones the whole repository, so the workdir must be its root "
            f"({top}), not {root}; set workdir: to the root or use --mode tarball"
        )
    if _git(root, "rev-parse", "--is-shallow-repository") == "true":
        raise GitError(
            f"{root} is a shallow clone: konduktor cannot check which commits the remote has; "
            "run git fetch --unshallow, or use --mode tarball"
        )
    commit = _head(root)
    url = _ssh(_remote_url(root, remote), remote, options.ssh_url)
    branch = branch or _branch(root)
    notes = []
    if options.fetch or not _on_remote(root, remote, branch, commit):
        _fetch(root, remote, branch, url)
        notes.append(f"fetched {remote}/{branch}")
        if not _on_remote(root, remote, branch, commit):
            raise GitError(
                f"HEAD {commit[:7]} is not on {remote}/{branch}: push it, or use --mode tarball"
            )
    hosts, scanned = known_hosts(url, accept=options.accept_host_key)
    if scanned:
        notes.append(scanned)
    return GitCheckout(url, branch, commit, hosts, "", options.recurse_submodules), notes


def _git(root: Path, *args: str) -> str:
    return run_git(list(args), root).decode().strip()


def _toplevel(root: Path) -> str:
    try:
        return _git(root, "rev-parse", "--show-toplevel")
    except GitError:
        raise GitError(
            f"--mode git clones the workdir's repository, but {root} is not in a git "
            "repository: make it one (git init, commit, push), or use --mode tarball"
        ) from None


def _head(root: Path) -> str:
    try:
        return _git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    except GitError:
        raise GitError(
            f"--mode git clones a commit, but the repository at {root} has none yet: commit "
            "and push your files (git add -A && git commit && git push), or use --mode tarball"
        ) from None


def _remote_url(root: Path, remote: str) -> str:
    try:
        return _git(root, "remote", "get-url", remote)
    except GitError:
        raise GitError(
            f"--mode git needs a remote: {root} has no remote {remote!r}; add one "
            f"(git remote add {remote} git@host:org/repo.git), pass --remote NAME, "
            "or use --mode tarball"
        ) from None


def _ssh(url: str, remote: str, map_https: bool) -> str:
    if _SSH.match(url) or (_SCP.match(url) and "://" not in url):
        return url
    https = _HTTPS.match(url)
    if https and map_https:
        path = https.group("path")
        return f"git@{https.group('host')}:{path if path.endswith('.git') else path + '.git'}"
    if https:
        raise GitError(
            f"{remote} is {_redact(url)}, but pods clone over SSH with a key; pass --ssh-url "
            f"to use git@{https.group('host')}:{https.group('path')}, or use --mode tarball"
        )
    raise GitError(
        f"{remote} is {_redact(url)}: pods can only clone ssh:// or user@host:path URLs; "
        "use --mode tarball for this repository"
    )


def _redact(url: str) -> str:
    """*url* without a password or token in it."""
    return re.sub(r"//[^@/]+@", "//***@", url)


def _branch(root: Path) -> str:
    try:
        return _git(root, "symbolic-ref", "--short", "-q", "HEAD")
    except GitError:
        raise GitError(
            "HEAD is detached: pass --branch NAME, the branch on the remote that holds the commit"
        ) from None


def _on_remote(root: Path, remote: str, branch: str, commit: str) -> bool:
    ref = f"refs/remotes/{remote}/{branch}"
    try:
        run_git(["merge-base", "--is-ancestor", commit, ref], root)
    except GitError:
        return False
    return True


def _fetch(root: Path, remote: str, branch: str, url: str) -> None:
    try:
        run_git(
            ["fetch", "--quiet", remote, f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}"],
            root,
        )
    except GitError as exc:
        reason = str(exc).rsplit("):", 1)[-1].strip().splitlines()
        raise GitError(
            f"cannot fetch {branch} from {remote} ({_redact(url)}) to check that HEAD is "
            f"there: {reason[0] if reason else 'git fetch failed'}; check the network and "
            "your SSH access, or use --mode tarball"
        ) from None


def host_and_port(url: str) -> tuple[str, int | None]:
    ssh = _SSH.match(url)
    if ssh:
        return ssh.group("host"), int(ssh.group("port")) if ssh.group("port") else None
    scp = _SCP.match(url)
    assert scp is not None
    return scp.group("host"), None


def known_hosts(url: str, *, accept: bool) -> tuple[str, str | None]:
    """The remote host's lines from ``~/.ssh/known_hosts``, or (with *accept*) scanned
    once with ssh-keyscan; and a note saying what was accepted."""
    host, port = host_and_port(url)
    name = host if port in (None, 22) else f"[{host}]:{port}"
    file = Path.home() / ".ssh" / "known_hosts"
    found = ""
    if file.is_file():
        done = _run(["ssh-keygen", "-F", name, "-f", str(file)])
        found = "".join(line + "\n" for line in done.splitlines() if line and line[0] != "#")
    if found:
        return found, None
    if not accept:
        raise GitError(
            f"the host key of {name} is not in {file}: connect once (ssh -p {port or 22} "
            f"{host}, or git fetch) to check and record it, or pass --accept-host-key"
        )
    scanned = _run(["ssh-keyscan", "-T", "10", "-p", str(port or 22), host])
    lines = [line for line in scanned.splitlines() if line and line[0] != "#"]
    if not lines:
        raise GitError(f"ssh-keyscan found no host key at {name}; is the SSH server up?")
    pinned = [f"{name} {line.split(None, 1)[1]}\n" for line in lines]
    types = ", ".join(sorted({line.split()[1] for line in lines}))
    return "".join(pinned), f"accepted the host keys of {name} ({types}) without checking them"


def _run(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise GitError(f"{cmd[0]} is not installed; install the OpenSSH client") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"`{' '.join(cmd)}` took more than 30 s; is the host reachable?") from None
    return done.stdout


# -- the SSH key -------------------------------------------------------------------------------

_CONFIG_KEY_TARGET = "~/.ssh/konduktor-git-key"


def ssh_key(
    task: Task,
    cfg: Config,
    secret: str | None,
    user_secrets: Callable[[], Sequence[UserSecret]] = tuple,
) -> tuple[Task, str, str | None]:
    """Where the pod finds the SSH key for git mode: (the task, with a file mount added
    for ``git.ssh_key``; the key's path in the pod; the Secret to mount, if any).

    In order: a file mount under ``~/.ssh/`` holding a private key (as in Konduktor's
    docs), ``--ssh-secret`` or ``git.ssh_secret`` (the name given at creation or the
    Secret's own), ``git.ssh_key``, and last the user's git-ssh Secret among
    *user_secrets* (labelled as Konduktor labels it, so one made by Konduktor works too).
    """
    from konduktor.k8s import jobset, secrets

    for mount in task.file_mounts:
        if mount.kind == "file" and mount.target.startswith("~/.ssh/") and _is_key(mount.source):
            return task, mount.target, None
    secret = secret or cfg.git_ssh_secret
    if secret:
        # not among the listed: one made before konduktor labelled them as Konduktor does
        name, key = secrets.git_ssh(user_secrets(), secret) or (secret, secrets.LEGACY_GIT_SSH_KEY)
        return task, f"{jobset.GIT_SSH_PATH}/{key}", name
    if cfg.git_ssh_key is not None:
        path = cfg.git_ssh_key
        if not path.is_file():
            raise ConfigError(
                f"{cfg.where('git')}: git.ssh_key: {path} does not exist; fix the path"
            )
        mount = FileMount(_CONFIG_KEY_TARGET, str(path.resolve()), "file")
        return replace(task, file_mounts=(*task.file_mounts, mount)), _CONFIG_KEY_TARGET, None
    discovered = secrets.git_ssh(user_secrets())
    if discovered is not None:
        return task, f"{jobset.GIT_SSH_PATH}/{discovered[1]}", discovered[0]
    raise TaskError(
        f"{task.path}: --mode git needs an SSH key for the pod: mount one "
        "(file_mounts: ~/.ssh/id_ed25519: ~/.ssh/id_ed25519), set git.ssh_key in the config, "
        "or make a git-ssh Secret (konduktor secret create --kind git-ssh NAME --from-file KEY)"
    )


def _is_key(path: str) -> bool:
    from konduktor.k8s import secrets

    try:
        with open(path, "rb") as f:
            return secrets.is_private_key(f.read(100))
    except OSError:
        return False
