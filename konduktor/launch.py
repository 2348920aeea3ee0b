"""Launch a task (DESIGN §6): :func:`launch` is the one call, for a cluster, ``--local``
and ``--dry-run`` alike. It fails fast, in this order:

1. the task and config are valid and, for a cluster, the kubeconfig context exists;
   in git mode, the SSH key, the remote, the pushed commit and the host keys;
2. :func:`prepare` plans a snapshot of the workdir and of every local mount and sums
   up their sizes from ``stat``; above the hard size limit it refuses before hashing
   any file, as it does when TMPDIR is missing or full;
3. the caller's *confirm* may stop it (nothing was sent yet);
4. :func:`sync` uploads what the store lacks and writes the launch plan;
5. the JobSet rendered from the plan is submitted, or :func:`konduktor.local.run`
   runs the same startup script in a sandbox HOME.

If a step fails, nothing after it happens. A dry run stops after step 2 and only
looks at the store.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from konduktor import (
    __version__,
    config,
    gitmode,
    layout,
    local,
    pod,
    remote,
    scratch,
    snapshot,
    units,
)
from konduktor.cache import HashCache
from konduktor.config import Config
from konduktor.errors import AbortedError, ConfigError, GitError
from konduktor.extract import sha256_file
from konduktor.plan import Bucket, File, GitCheckout, LaunchPlan, Tree
from konduktor.storage import Progress, Store, open_store
from konduktor.task import WORKDIR_TARGET, Overrides, Task
from konduktor.task import load as load_task

log = logging.getLogger(__name__)

_LARGEST = 5

Target = Literal["cluster", "local", "dry-run"]
ProgressFactory = Callable[[str, int], Progress | None]
"""Called with (what, total bytes) before a transfer; returns a byte-count callback or None."""


def _silent(message: str) -> None:
    pass


@dataclass(frozen=True)
class Request:
    """What to launch, and where: the command line's options, parsed."""

    task_file: Path
    target: Target = "cluster"
    overrides: Overrides = field(default_factory=Overrides)
    git: gitmode.Options | None = None  # git mode; None: the workdir ships as a snapshot
    manifest: bool = False  # dry run: render the JobSet too
    store_url: str | None = None  # default: from the config
    kubeconfig: Path | None = None
    kube_context: str | None = None
    detach: bool = False  # local: run in the background
    quiet: bool = False  # local: the startup script reports only failures


@dataclass(frozen=True)
class Synced:
    """What :func:`sync` sent (a dry run: would send), and the plan it wrote."""

    plan: LaunchPlan  # presigned for the pod (the store's copy, and a dry run's, are not)
    uploaded: tuple[str, ...]  # store keys put (a dry run: to put)
    uploaded_bytes: int
    reused: tuple[str, ...]  # store keys the store already had


@dataclass(frozen=True)
class LaunchResult:
    """What a launch did: the job, what was synced, and what ran or was submitted."""

    job: str
    target: Target
    store: str  # the store's URL
    synced: Synced
    manifest: dict[str, Any] | None = None  # the JobSet (submitted, or rendered by a dry run)
    context: str | None = None  # cluster: the kubeconfig context and namespace
    namespace: str | None = None
    exit_code: int = 0  # local: the task's exit code (0 when detached)
    log: Path | None = None  # local, detached: where its output goes


def launch(
    request: Request,
    *,
    confirm: Callable[[Prepared], bool] | None = None,
    report: Callable[[str], None] = _silent,
    progress: ProgressFactory | None = None,
    build_progress: snapshot.Progress | None = None,
) -> LaunchResult:
    """Launch *request*; *report* gets one-line progress notes, *progress* and
    *build_progress* the uploads' bytes and the layers' files as they go, *confirm* (if
    given) may stop the launch after the summary and before anything is sent."""
    from konduktor.k8s import jobset, secrets

    task = load_task(request.task_file, request.overrides)
    if request.target == "local" and task.num_nodes > 1:
        report(
            f"--local runs one node: rank 0 of the task's {task.num_nodes}, with NUM_NODES=1 "
            "and MASTER_ADDR=127.0.0.1"
        )
    cfg = config.load()
    cluster = _connect(request) if request.target == "cluster" else None
    # The user's Secrets (env ones go into every pod, default ones are mounted, a git-ssh
    # one serves git mode): listed once, when first needed, after the local checks.
    user_secrets = functools.cache(lambda: secrets.user_secrets(cluster) if cluster else [])
    default_url, options = cfg.store_url()
    url = request.store_url or default_url
    if request.target != "local":
        _check_reachable(url, cfg, dry_run=request.target == "dry-run")
    task, checkout, git_secret = _git_checkout(task, cfg, request, report, user_secrets)
    store = open_store(url, options)
    prepared = prepare(task, cfg, jobset.job_name(task), checkout)
    _summarize(prepared, request.git, report)
    if request.target == "dry-run":
        return _dry_run(prepared, store, cfg, request, git_secret)
    if confirm is not None and not confirm(prepared):
        raise AbortedError("aborted: nothing was uploaded or submitted")
    found = user_secrets()  # before anything is sent: a refusal leaves nothing behind
    synced = sync(prepared, store, cfg, progress=progress, build_progress=build_progress)
    _report_upload(synced, store, report)
    result = LaunchResult(prepared.job, request.target, store.url, synced)
    if cluster is None:
        report(f"running {prepared.job} in {local.home(prepared.job)}")
        code = local.run(synced.plan, task, detach=request.detach, quiet=request.quiet)
        log_file = local.log(prepared.job) if request.detach else None
        return replace(result, exit_code=code, log=log_file)
    from konduktor.k8s import submit as k8s_submit

    manifest_ = manifest(task, synced.plan, git_secret, cfg, found)
    k8s_submit.create_jobset(cluster, manifest_)
    return replace(result, manifest=manifest_, context=cluster.context, namespace=cluster.namespace)


def _connect(request: Request) -> Any:
    from konduktor.k8s import submit as k8s_submit

    return k8s_submit.connect(request.kubeconfig, request.kube_context)


def _check_reachable(url: str, cfg: Config, *, dry_run: bool) -> None:
    """A ``file://`` store is a directory on this machine: pods can read it only where the
    config declares that every node has it at the same path (``sync.shared_store``)."""
    if not url.startswith("file://") or cfg.shared_store:
        return
    problem = (
        f"the store {url} is a directory on this machine, which the cluster's pods cannot "
        f"read: set jobs.bucket to an s3:// or gs:// URL in {cfg.where('jobs')} (or pass "
        "--store), or, if every node mounts that directory at the same path, set "
        f"sync.shared_store: true in {cfg.where('sync')}"
    )
    if not dry_run:
        raise ConfigError(problem)
    log.warning("%s", problem)


def _git_checkout(
    task: Task,
    cfg: Config,
    request: Request,
    report: Callable[[str], None],
    user_secrets: Callable[[], Sequence[Any]] = tuple,
) -> tuple[Task, GitCheckout | None, str | None]:
    """Git mode: (the task, with the key's mount if any; the checkout; the key's Secret)."""
    if request.git is None:
        return task, None, None
    local_ = request.target == "local"
    task, checkout, secret, notes = gitmode.checkout(
        task, cfg, request.git, local=local_, user_secrets=user_secrets
    )
    for note in notes:
        report(f"git: {note}")
    return task, checkout, secret


def _summarize(
    prepared: Prepared, git: gitmode.Options | None, report: Callable[[str], None]
) -> None:
    """Warnings, then what will ship: files, bytes, the largest ones."""
    for warning in prepared.warnings:
        log.warning("%s", warning)
    _check_clean(prepared, git, report)
    report(f"job {prepared.job}: {prepared.files} file(s), {units.size(prepared.bytes)} to ship")
    for path, size in prepared.largest()[:3]:
        report(f"  {units.size(size):>9}  {path}")
    for warning in prepared.size_warnings:
        log.warning("%s", warning)


def _check_clean(
    prepared: Prepared, options: gitmode.Options | None, report: Callable[[str], None]
) -> None:
    if options is None or prepared.git is None or not prepared.dirty:
        return
    if options.clean_only:
        raise GitError(
            "the work tree has uncommitted changes and --clean-only is set: commit and "
            "push them, or drop --clean-only"
        )
    report(f"git: uncommitted changes ship as an overlay on top of {prepared.git.commit[:12]}")


def _report_upload(synced: Synced, store: Store, report: Callable[[str], None]) -> None:
    sent = f"{len(synced.uploaded)} object(s), {units.size(synced.uploaded_bytes)} sent"
    report(
        f"upload: {sent if synced.uploaded else 'nothing to send'}; "
        f"{len(synced.reused)} object(s) already in {store.url}"
    )


def _dry_run(
    prepared: Prepared, store: Store, cfg: Config, request: Request, git_secret: str | None
) -> LaunchResult:
    synced = sync(prepared, store, cfg, dry_run=True)
    rendered = manifest(prepared.task, synced.plan, git_secret, cfg) if request.manifest else None
    return LaunchResult(prepared.job, "dry-run", store.url, synced, manifest=rendered)


@dataclass(frozen=True)
class Source:
    """One thing to ship: a directory (snapshot plan) or a single file."""

    target: str
    path: Path
    snapshot: snapshot.SnapshotPlan | None  # None for a single file
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

    def sized(self) -> dict[str, int]:
        """Every file that ships, as ``target/path`` -> bytes."""
        return {
            f"{s.target}/{p}" if p else s.target: n
            for s in self.sources
            for p, n in s.sizes.items()
        }

    def largest(self) -> list[tuple[str, int]]:
        """The biggest files, as ``target/path``."""
        return sorted(self.sized().items(), key=lambda item: -item[1])[:_LARGEST]


def prepare(task: Task, cfg: Config, job: str, git: GitCheckout | None = None) -> Prepared:
    """Plan the snapshot of every local source and check the size limits; in git mode
    (*git*), the workdir's base comes from the clone and only its overlay ships.

    The hard limit is checked on sizes from ``stat`` before any file is hashed, and
    TMPDIR (where layers are built) before anything is sent."""
    scratch.check()
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
    snapshot.check_size(f"{task.path}: the launch", prepared.sized(), cfg.hard_limit_mb)
    keyed = tuple(
        replace(s, snapshot=snapshot.with_keys(s.snapshot)) if s.snapshot else s for s in sources
    )
    prepared = replace(prepared, sources=keyed)
    if prepared.bytes > cfg.soft_limit_mb * units.MB:
        warning = (
            f"the launch ships {units.size(prepared.bytes)}, above sync.soft_limit_mb "
            f"({cfg.soft_limit_mb:g} MB); largest: {snapshot.largest(prepared.sized())}; "
            f"{snapshot.SIZE_ADVICE}"
        )
        prepared = replace(prepared, size_warnings=(warning,))
    return prepared


def _tree_source(target: str, root: Path, level: int, overlay_only: bool = False) -> Source:
    """A directory's plan, its files not hashed yet."""
    p = snapshot.plan(root, level=level, hash_files=False, kept_out=True)
    if overlay_only:
        p = replace(p, layers=tuple(layer for layer in p.layers if layer.kind == "overlay"))
    return Source(target, root, p, snapshot.shipped_sizes(p))


def sync(
    prepared: Prepared,
    store: Store,
    cfg: Config,
    *,
    progress: ProgressFactory | None = None,
    build_progress: snapshot.Progress | None = None,
    dry_run: bool = False,
) -> Synced:
    """Upload what *store* lacks and write the launch plan there; *dry_run* only looks."""
    trees, files = [], []
    uploaded: list[str] = []
    reused: list[str] = []
    sent = 0
    for source in prepared.sources:
        if source.snapshot is not None:
            result = remote.upload_plan(
                source.snapshot,
                store,
                progress=progress,
                build_progress=build_progress,
                dry_run=dry_run,
            )
            p = source.snapshot
            trees.append(Tree(source.target, str(source.path), p.commit, p.dirty, result.layers))
            uploaded += [name.key for name in result.uploaded]
            reused += [name.key for name in result.reused]
            sent += result.uploaded_bytes
        else:
            f, missing = _put_file(source, store, progress, dry_run=dry_run)
            files.append(f)
            (uploaded if missing else reused).append(f.key)
            sent += f.size if missing and not dry_run else 0
    plan = _plan(prepared, store, cfg, trees, files)
    if not dry_run:
        _write_plan(plan, store)  # without URLs: a plan kept in the bucket holds no credential
        plan = _presigned(plan, store, cfg.presign_seconds)
    return Synced(plan, tuple(uploaded), sent, tuple(reused))


def _plan(
    prepared: Prepared, store: Store, cfg: Config, trees: list[Tree], files: list[File]
) -> LaunchPlan:
    task = prepared.task
    return LaunchPlan(
        job=prepared.job,
        store=store.url,
        run=task.run,
        setup=task.setup,
        trees=tuple(trees),
        files=tuple(files),
        buckets=tuple(Bucket(m.target, m.source) for m in task.file_mounts if m.kind == "bucket"),
        git=prepared.git,
        endpoint_url=cfg.store.endpoint_url,
        region=cfg.store.region,
        tool=__version__,
    )


def _put_file(
    source: Source, store: Store, progress: ProgressFactory | None, *, dry_run: bool
) -> tuple[File, bool]:
    """The mounted file's plan entry, and whether the store lacked it (and got it)."""
    digest, mode = _file_digest(source)
    name, size = layout.file(digest), source.sizes[""]
    f = File(source.target, str(source.path), name.key, digest, size, mode)
    missing = store.stat(name.key) is None
    if dry_run:
        return f, missing
    if missing:
        bar = progress(f"file {source.path.name}", size) if progress else None
        done = store.put(
            name.key,
            source.path,
            sha256=f.sha256,
            metadata={"kind": "file"},
            progress=bar,
            lock=name.lock,
        )
        missing = done.uploaded
    store.mark(name.used)
    return f, missing


def _file_digest(source: Source) -> tuple[str, int]:
    """A mounted file's sha256 (hashed only when its stat changed) and permission bits."""
    st = source.path.stat()
    cache = HashCache(source.path)
    digest = cache.get("", st)
    if digest is None:
        digest = sha256_file(source.path)
        cache.put("", st, digest)
        cache.save()
    return digest, stat.S_IMODE(st.st_mode)


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
    with scratch.directory("plan") as tmp:
        path = tmp / "plan.json"
        path.write_bytes(data)
        store.put(
            layout.plan(plan.job),
            path,
            sha256=hashlib.sha256(data).hexdigest(),
            metadata={"kind": "plan"},
        )


def manifest(
    task: Task,
    plan: LaunchPlan,
    git_secret: str | None = None,
    cfg: Config | None = None,
    user_secrets: Sequence[Any] = (),
) -> dict[str, Any]:
    """The JobSet that runs *plan*'s startup script (mounting the Secret *git_secret*),
    with *cfg*'s ``kubernetes.pod_config`` and ``jobset_config`` and the user's env and
    default Secrets (*user_secrets*) in it."""
    from konduktor.k8s import jobset, secrets

    shared = plan.store.removeprefix("file://") if plan.store.startswith("file://") else None
    return jobset.render(
        task,
        name=plan.job,
        command=pod.render(plan),
        store_path=shared,
        secret_names=[secrets.secret_name(cloud) for cloud in secrets.CLOUDS],
        git_secret=git_secret,
        provenance=plan.provenance(),
        pod_config=cfg.pod_config if cfg else None,
        secrets_config=secrets.pod_config(user_secrets),
        jobset_config=cfg.jobset_config if cfg else None,
    )
