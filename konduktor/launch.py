"""Launch a task (DESIGN §6), failing fast, in this order:

1. the task and config are valid (the caller loads them) and, for a cluster, the
   kubeconfig context exists;
2. :func:`prepare` plans a snapshot of the workdir and of every local mount, and
   sums it up; above the hard size limit it refuses;
3. :func:`sync` uploads what the store lacks and writes the launch plan;
4. the caller submits the JobSet rendered from the plan, or :func:`run_local` runs
   the same startup script in a sandbox HOME.

If a step fails, nothing after it happens.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from konduktor import __version__, pod, remote, snapshot
from konduktor.cache import HashCache, konduktor_home
from konduktor.config import Config
from konduktor.errors import ConfigError, SelectionError, TaskError
from konduktor.extract import sha256_file
from konduktor.plan import Bucket, File, GitCheckout, LaunchPlan, Layer, Tree
from konduktor.storage import Progress, Store
from konduktor.task import WORKDIR_TARGET, FileMount, Task

_MB = 1 << 20
_LARGEST = 5


@dataclass(frozen=True)
class Source:
    """One thing to ship: a directory (snapshot plan) or a single file."""

    target: str
    path: Path
    snapshot: snapshot.Plan | None  # None for a single file
    sizes: Mapping[str, int]  # path (relative to *path*, "" for a file) -> bytes


@dataclass(frozen=True)
class Prepared:
    task: Task
    job: str
    sources: tuple[Source, ...]
    warnings: tuple[str, ...]  # from the selections
    size_warnings: tuple[str, ...] = ()  # above the soft limit
    git: GitCheckout | None = None  # git mode: the workdir ships only its overlay

    @property
    def dirty(self) -> bool:
        """The workdir has changes on top of its commit."""
        work = next((s for s in self.sources if s.target == WORKDIR_TARGET), None)
        return bool(work and work.snapshot and work.snapshot.dirty)

    @property
    def files(self) -> int:
        return sum(len(s.sizes) for s in self.sources)

    @property
    def bytes(self) -> int:
        return sum(sum(s.sizes.values()) for s in self.sources)

    def largest(self) -> list[tuple[str, int]]:
        """The biggest files, as ``target/path``."""
        sized = [
            (f"{s.target}/{p}" if p else s.target, n)
            for s in self.sources
            for p, n in s.sizes.items()
        ]
        return sorted(sized, key=lambda item: -item[1])[:_LARGEST]


@dataclass(frozen=True)
class Synced:
    plan: LaunchPlan
    uploaded: tuple[str, ...]  # keys put by this launch
    uploaded_bytes: int
    reused: tuple[str, ...]  # keys the store already had


def prepare(task: Task, cfg: Config, job: str, git: GitCheckout | None = None) -> Prepared:
    """Plan the snapshot of every local source and check the size limits; in git mode
    (*git*), the workdir's base comes from the clone and only its overlay ships."""
    sources = []
    if task.workdir is not None:
        work = _tree_source(WORKDIR_TARGET, task.workdir, cfg.compression_level, git is not None)
        sources.append(work)
    for mount in task.file_mounts:
        if mount.kind == "dir":
            sources.append(_tree_source(mount.target, Path(mount.source), cfg.compression_level))
        elif mount.kind == "file":
            path = Path(mount.source)
            sources.append(Source(mount.target, path, None, {"": path.stat().st_size}))
    warnings = tuple(w for s in sources if s.snapshot for w in s.snapshot.warnings)
    prepared = Prepared(task, job, tuple(sources), warnings, git=git)
    total = prepared.bytes / _MB
    biggest = ", ".join(f"{p} ({n / _MB:.1f} MB)" for p, n in prepared.largest()[:3])
    advice = "exclude data in .konduktorignore and mount it from a bucket instead"
    if total > cfg.hard_limit_mb:
        raise SelectionError(
            f"{task.path}: the launch would ship {total:.0f} MB, above the hard limit of "
            f"{cfg.hard_limit_mb:g} MB (sync.hard_limit_mb); largest: {biggest}; {advice}"
        )
    if total > cfg.soft_limit_mb:
        warning = (
            f"the launch ships {total:.0f} MB, above sync.soft_limit_mb "
            f"({cfg.soft_limit_mb:g} MB); largest: {biggest}; {advice}"
        )
        prepared = replace(prepared, size_warnings=(warning,))
    return prepared


def _tree_source(target: str, root: Path, level: int, overlay_only: bool = False) -> Source:
    p = snapshot.plan(root, level=level)
    if overlay_only:
        p = replace(p, layers=tuple(layer for layer in p.layers if layer.kind == "overlay"))
    paths: set[str] = set()
    for layer in p.layers:
        paths.difference_update(layer.deletions)
        paths.update(e.path for e in layer.entries)
    return Source(target, root, p, {path: _size(p.root / path) for path in sorted(paths)})


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def sync(
    prepared: Prepared,
    store: Store,
    cfg: Config,
    *,
    progress: Callable[[str, int], Progress | None] | None = None,
) -> Synced:
    """Upload what *store* lacks, write the launch plan there, and return it."""
    trees, files = [], []
    uploaded: list[str] = []
    reused: list[str] = []
    sent = 0
    for source in prepared.sources:
        if source.snapshot is not None:
            result = remote.upload_plan(source.snapshot, store, progress=progress)
            layers = tuple(
                Layer(remote.VERSION_PREFIX + o.key, o.kind, o.sha256, o.size)
                for o in result.objects
            )
            p = source.snapshot
            trees.append(Tree(source.target, str(source.path), p.commit, p.dirty, layers))
            uploaded += [remote.VERSION_PREFIX + key for key in result.uploaded]
            reused += [remote.VERSION_PREFIX + key for key in result.reused]
            sent += result.uploaded_bytes
        else:
            f, put = _put_file(source, store, progress)
            files.append(f)
            (uploaded if put else reused).append(f.key)
            sent += f.size if put else 0
    plan = _presigned(_plan(prepared, store, cfg, trees, files), store, cfg.presign_seconds)
    _write_plan(plan, store)
    return Synced(plan, tuple(uploaded), sent, tuple(reused))


def _plan(
    prepared: Prepared, store: Store, cfg: Config, trees: list[Tree], files: list[File]
) -> LaunchPlan:
    task = prepared.task
    return LaunchPlan(
        job=prepared.job,
        store=store.url,
        run=task.run,
        trees=tuple(trees),
        files=tuple(files),
        buckets=tuple(Bucket(m.target, m.source) for m in task.file_mounts if m.kind == "bucket"),
        git=prepared.git,
        endpoint_url=cfg.store.endpoint_url,
        region=cfg.store.region,
        tool=__version__,
    )


def _put_file(
    source: Source, store: Store, progress: Callable[[str, int], Progress | None] | None
) -> tuple[File, bool]:
    digest, key, mode = _file_object(source)
    size = source.sizes[""]
    put = False
    if store.stat(key) is None:
        bar = progress(key, size) if progress else None
        put = store.put(
            key, source.path, sha256=digest, metadata={"kind": "file"}, progress=bar
        ).uploaded
    store.mark(remote.USED_PREFIX + key[len(remote.VERSION_PREFIX) :])
    return File(source.target, str(source.path), key, digest, size, mode), put


def _file_object(source: Source) -> tuple[str, str, int]:
    """A mounted file's sha256 (hashed only when its stat changed), its content-addressed
    key, and its permission bits."""
    st = source.path.stat()
    cache = HashCache(source.path)
    digest = cache.get("", st)
    if digest is None:
        digest = sha256_file(source.path)
        cache.put("", st, digest)
        cache.save()
    key = f"{remote.VERSION_PREFIX}objects/{digest[:2]}/{digest}"
    return digest, key, stat.S_IMODE(st.st_mode)


def _presigned(plan: LaunchPlan, store: Store, seconds: int) -> LaunchPlan:
    """The plan with an HTTPS URL on each object, when the store can sign."""
    trees = tuple(
        replace(
            t, layers=tuple(replace(la, https=store.signed_url(la.key, seconds)) for la in t.layers)
        )
        for t in plan.trees
    )
    files = tuple(replace(f, https=store.signed_url(f.key, seconds)) for f in plan.files)
    return replace(plan, trees=trees, files=files)


def _write_plan(plan: LaunchPlan, store: Store) -> None:
    data = plan.to_json().encode()
    with tempfile.TemporaryDirectory(prefix="konduktor-plan-") as tmp:
        path = Path(tmp) / "plan.json"
        path.write_bytes(data)
        key = f"{remote.VERSION_PREFIX}plans/{plan.job}.json"
        store.put(key, path, sha256=hashlib.sha256(data).hexdigest(), metadata={"kind": "plan"})


def dry_plan(prepared: Prepared, store: Store, cfg: Config) -> tuple[LaunchPlan, set[str]]:
    """The plan a launch would write, and the keys it would upload; touches nothing.
    A layer not in the store yet has no digest: it shows as ``(to upload)``."""
    trees, files, missing = [], [], set()
    for source in prepared.sources:
        if source.snapshot is not None:
            layers = []
            for layer in source.snapshot.layers:
                key = remote.VERSION_PREFIX + str(layer.key)
                info = store.stat(key)
                if info is None:
                    missing.add(key)
                sha, size = (info.sha256 or "", info.size) if info else ("(to upload)", 0)
                layers.append(Layer(key, layer.kind, sha, size))
            p = source.snapshot
            trees.append(Tree(source.target, str(source.path), p.commit, p.dirty, tuple(layers)))
        else:
            digest, key, mode = _file_object(source)
            if store.stat(key) is None:
                missing.add(key)
            files.append(File(source.target, str(source.path), key, digest, source.sizes[""], mode))
    return _plan(prepared, store, cfg, trees, files), missing


def manifest(task: Task, plan: LaunchPlan, git_secret: str | None = None) -> dict[str, Any]:
    """The JobSet that runs *plan*'s startup script (mounting the Secret *git_secret*)."""
    from konduktor.k8s import jobset, secrets

    return jobset.render(
        task,
        name=plan.job,
        command=pod.render(plan),
        secret_names=[secrets.secret_name(cloud) for cloud in secrets.CLOUDS],
        git_secret=git_secret,
        provenance=plan.provenance(),
    )


def submit(
    cluster: Any, task: Task, plan: LaunchPlan, git_secret: str | None = None
) -> dict[str, Any]:
    """Create the JobSet on *cluster* (a :class:`konduktor.k8s.submit.Cluster`)."""
    from konduktor.k8s import submit as k8s_submit

    return k8s_submit.create_jobset(cluster, manifest(task, plan, git_secret))


# -- git mode ------------------------------------------------------------------------------------

_CONFIG_KEY_TARGET = "~/.ssh/konduktor-git-key"


def ssh_key(task: Task, cfg: Config, secret: str | None) -> tuple[Task, str, str | None]:
    """Where the pod finds the SSH key for git mode: (the task, with a file mount added
    for ``git.ssh_key``; the key's path in the pod; the Secret to mount, if any).

    In order: a file mount under ``~/.ssh/`` holding a private key (as in Konduktor's
    docs), ``--ssh-secret`` or ``git.ssh_secret``, ``git.ssh_key``.
    """
    for mount in task.file_mounts:
        if mount.kind == "file" and mount.target.startswith("~/.ssh/") and _is_key(mount.source):
            return task, mount.target, None
    secret = secret or cfg.git_ssh_secret
    if secret:
        from konduktor.k8s import jobset, secrets

        return task, f"{jobset.GIT_SSH_PATH}/{secrets.GIT_SSH_KEY}", secret
    if cfg.git_ssh_key is not None:
        path = cfg.git_ssh_key
        if not path.is_file():
            raise ConfigError(f"{cfg.path}: git.ssh_key: {path} does not exist; fix the path")
        mount = FileMount(_CONFIG_KEY_TARGET, str(path.resolve()), "file")
        return replace(task, file_mounts=(*task.file_mounts, mount)), _CONFIG_KEY_TARGET, None
    raise TaskError(
        f"{task.path}: --mode git needs an SSH key for the pod: mount one "
        "(file_mounts: ~/.ssh/id_ed25519: ~/.ssh/id_ed25519), set git.ssh_key in the config, "
        "or pass --ssh-secret NAME (konduktor secret create --kind git-ssh NAME --from-file KEY)"
    )


def _is_key(path: str) -> bool:
    from konduktor.k8s import secrets

    try:
        with open(path, "rb") as f:
            return secrets.is_private_key(f.read(100))
    except OSError:
        return False


# -- the local target ------------------------------------------------------------------------


LOCAL_KEEP = 10  # sandbox HOMEs of local runs kept; older ones are deleted


def local_home(job: str) -> Path:
    return konduktor_home() / "local" / job


def _prune_local(keep: int) -> None:
    """Delete all but the *keep* newest sandbox HOMEs: each holds a copy of its files."""
    try:
        homes = sorted((konduktor_home() / "local").iterdir(), key=lambda p: p.stat().st_mtime)
    except FileNotFoundError:
        return
    for old in homes[: max(len(homes) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def run_local(plan: LaunchPlan, task: Task, *, detach: bool = False, quiet: bool = False) -> int:
    """Run the startup script of *plan* with ``sh`` in a sandbox HOME (the last
    :data:`LOCAL_KEEP` are kept); return its exit code
    (with *detach*, start it in the background, logging to ``<HOME>/run.log``, and return 0;
    with *quiet*, the script reports only failures)."""
    _prune_local(LOCAL_KEEP - 1)
    home = local_home(plan.job)
    home.mkdir(parents=True, exist_ok=True)
    script = home / ".konduktor" / "startup.sh"
    script.parent.mkdir(exist_ok=True)
    script.write_text(pod.render(plan))
    env = _local_env(home, task)
    if quiet:
        env["KONDUKTOR_QUIET"] = "1"
    if detach:
        with (home / "run.log").open("ab") as out:
            subprocess.Popen(
                ["sh", str(script)],
                cwd=home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return 0
    sys.stdout.flush()
    return subprocess.call(["sh", str(script)], cwd=home, env=env)


def _local_env(home: Path, task: Task) -> dict[str, str]:
    """The user's environment with HOME moved, the cluster's variables for one node, and the
    user's cloud credential files named explicitly (the sandbox HOME has none)."""
    env = dict(os.environ)
    real_home = Path.home()
    files = {
        "AWS_SHARED_CREDENTIALS_FILE": real_home / ".aws" / "credentials",
        "AWS_CONFIG_FILE": real_home / ".aws" / "config",
        "GOOGLE_APPLICATION_CREDENTIALS": real_home
        / ".config/gcloud/application_default_credentials.json",
    }
    for name, path in files.items():
        if name not in env and path.exists():
            env[name] = str(path)
    env.update(
        HOME=str(home),
        KONDUKTOR_CREDENTIALS_DIR=str(home / ".konduktor-no-secret"),
        KONDUKTOR_PYTHON=sys.executable,  # has zstandard, whatever python3 on PATH lacks
        NUM_NODES="1",
        RANK="0",
        MASTER_ADDR="127.0.0.1",
        NODE_HOST_IPS="127.0.0.1",
    )
    env.update(task.envs)
    return env
