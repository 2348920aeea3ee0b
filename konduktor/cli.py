"""The `konduktor` command line: parse, call one library function, print."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from konduktor import __version__
from konduktor.errors import KonduktorError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 1, 3, 130


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("konduktor")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="konduktor")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, and tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Ship exactly the right code from your work tree to a Kubernetes GPU cluster.

    konduktor snapshots a directory as the git-tracked files plus their
    uncommitted and untracked (not ignored) changes, minus what
    .konduktorignore files exclude (git's own ignore rules), into
    deterministic zstd layers keyed by commit and content. `konduktor launch
    task.yaml` uploads only the layers the store lacks and submits a JobSet
    whose pods fetch, verify and place them before running `run:`.
    """
    ctx.obj = {"verbose": verbose}
    _setup_logging(verbose, quiet)


@cli.command("ls-files")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("-z", "nul", is_flag=True, help="Separate paths with NUL instead of newlines.")
@click.option("--commit", metavar="REV", help="List from this commit's tree, not the work tree.")
@click.option("--why", is_flag=True, help="Explain, for each PATH, whether it ships and why.")
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="With --why: the directory being synced.",
)
def ls_files(paths: tuple[Path, ...], nul: bool, commit: str | None, why: bool, root: Path) -> None:
    """Print the files that ship from PATH (default: the current directory).

    One path per line, relative to PATH. With --why, print for each PATH
    whether it ships and the rule that decided (`.konduktorignore:3:secret*`,
    `.gitignore:1:*.log`, `tracked`, `untracked`, ...).
    """
    from konduktor import selection

    end = "\0" if nul else "\n"
    if why:
        if not paths:
            raise click.UsageError("--why needs at least one PATH to explain")
        rels = [_relative(p, root) for p in paths]
        for verdict in selection.explain(root, rels):
            state = "ships" if verdict.ships else "excluded"
            click.echo(f"{verdict.path}\t{state}\t{verdict.rule}", nl=False)
            click.echo(end, nl=False)
        return
    if len(paths) > 1:
        raise click.UsageError("give one PATH to list (or use --why to explain several paths)")
    sel = selection.select(paths[0] if paths else Path("."), commit=commit)
    _warn(sel.warnings)
    out = sys.stdout.buffer
    for path in sel.paths():
        out.write(os.fsencode(path) + end.encode())
    out.flush()


def _warn(warnings: Sequence[str]) -> None:
    for message in warnings:
        logging.getLogger("konduktor").warning("%s", message)


def _relative(path: Path, root: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path(os.path.abspath(root))).as_posix()
    except ValueError:
        raise click.UsageError(f"{path} is not inside the synced directory {root}") from None


@cli.command()
@click.argument("path", required=False, type=click.Path(path_type=Path), default=Path("."))
@click.option("--commit", metavar="REV", help="Snapshot this commit's tree only (a base layer).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the layers and their manifests into this directory.",
)
@click.option(
    "--level",
    type=click.IntRange(1, 22),
    help="zstd compression level (default: sync.compression_level from the config, 3). "
    "It is part of the layer keys.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--upload", is_flag=True, help="Upload the layers the store lacks (see `konduktor store`)."
)
@click.option("--store", "store_url", metavar="URL", help="Store URL (default: from the config).")
def snapshot(
    path: Path,
    commit: str | None,
    out: Path | None,
    level: int | None,
    as_json: bool,
    upload: bool,
    store_url: str | None,
) -> None:
    """Build the layers that would ship PATH (default: the current directory).

    In a git work tree: a base layer of HEAD's files, plus an overlay with
    uncommitted and untracked changes. With --commit: the commit's base layer.
    Outside git: one full layer. Prints files, bytes, compressed size, keys,
    digests and time.
    """
    from konduktor import config
    from konduktor import snapshot as snap

    cfg = config.load()
    level = level or cfg.compression_level
    if upload:
        if out is not None:
            raise click.UsageError("--out and --upload do not go together")
        _upload(path, commit, level, as_json, _open_store(cfg, store_url))
        return
    with _progress("snapshot") as progress:
        info = snap.build(path, commit=commit, out=out, level=level, progress=progress)
    _warn(info.warnings)
    if as_json:
        click.echo(json.dumps(_snapshot_json(info), indent=2))
        return
    _print_snapshot(info)


def _open_store(cfg: Any, url: str | None) -> Any:
    from konduktor.storage import open_store

    default_url, options = cfg.store_url()
    return open_store(url or default_url, options)


def _upload(path: Path, commit: str | None, level: int, as_json: bool, store: Any) -> None:
    from konduktor import remote

    result = remote.upload(path, store, commit=commit, level=level, progress=_byte_bar)
    if result.info is not None:
        _warn(result.info.warnings)
    if as_json:
        data: dict[str, object] = {"commit": result.commit, "dirty": result.dirty}
        if result.info is not None:
            data["layers"] = _snapshot_json(result.info)["layers"]
        data.update(
            store=store.url,
            keys=list(result.keys),
            uploaded=list(result.uploaded),
            uploaded_bytes=result.uploaded_bytes,
            reused=list(result.reused),
        )
        click.echo(json.dumps(data, indent=2))
        return
    for key in result.keys:
        click.echo(f"{'uploaded' if key in result.uploaded else 'reused  '}  {store.url}/v1/{key}")
    click.echo(f"uploaded {_size(result.uploaded_bytes)}, reused {len(result.reused)} layer(s)")


def _byte_bar(label: str, total: int) -> Callable[[int], None] | None:
    """A progress bar for one transfer over a few MB, on a terminal and without --quiet."""
    ctx = click.get_current_context()
    if total < 4_000_000 or not sys.stderr.isatty() or ctx.find_root().params.get("quiet"):
        return None
    bar: Any = click.progressbar(length=total, label=label[-40:], file=sys.stderr)
    bar.__enter__()

    def update(n: int) -> None:
        bar.update(n)
        if bar.pos >= total:
            bar.__exit__(None, None, None)

    return update


@cli.group()
def store() -> None:
    """Inspect and clean the object store (jobs.bucket in ~/.konduktor/config.yaml)."""


@store.command("ls")
@click.option("--store", "store_url", metavar="URL", help="Store URL (default: from the config).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per layer, one per line.")
def store_ls(store_url: str | None, as_json: bool) -> None:
    """List stored layers with their commit, size and when they were last used."""
    from konduktor import config, remote

    target = _open_store(config.load(), store_url)
    now = _now()
    for layer in remote.layers(target):
        age = now - layer.last_used
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "key": layer.key,
                        "kind": layer.kind,
                        "commit": layer.commit,
                        "bytes": layer.size,
                        "last_used": layer.last_used.isoformat(),
                        "age_seconds": int(age.total_seconds()),
                    }
                )
            )
        else:
            commit = (layer.commit or "-")[:12]
            click.echo(
                f"{layer.kind:<8} {commit:<12} {_size(layer.size):>9}  {_age(age):>5}  {layer.key}"
            )


@store.command("gc")
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    help="Delete layers not used for this long: 30d, 12h, 2w (at least 1h).",
)
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted.")
@click.option("--store", "store_url", metavar="URL", help="Store URL (default: from the config).")
def store_gc(older_than: str, dry_run: bool, store_url: str | None) -> None:
    """Delete layers that no upload or launch used within AGE.

    Every upload and launch refreshes a last-used marker of each layer it uses
    before it submits anything, so a layer about to be used is never deleted.
    """
    from konduktor import config, remote

    target = _open_store(config.load(), store_url)
    victims = remote.gc(target, remote.parse_age(older_than), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for layer in victims:
        click.echo(
            f"{verb} {layer.key} ({_size(layer.size)}, unused for {_age(_now() - layer.last_used)})"
        )
    click.echo(f"{verb} {len(victims)} layer(s), {_size(sum(v.size for v in victims))}")


def _cluster_options(f: F) -> F:
    """--kubeconfig and --context, as kubectl has them."""
    f = click.option("--context", "kube_context", help="Kubeconfig context (default: current).")(f)
    return click.option(
        "--kubeconfig", type=click.Path(path_type=Path), help="Kubeconfig file to use."
    )(f)


@cli.command()
@click.argument("cloud", type=click.Choice(["s3", "gs", "file"]))
@click.option("--store", "store_url", metavar="URL", help="Store URL (default: from the config).")
@_cluster_options
def check(
    cloud: str, store_url: str | None, kubeconfig: Path | None, kube_context: str | None
) -> None:
    """Check that the CLOUD store works: identity, bucket, write/read/delete.

    When a Kubernetes context exists, also write your s3/gs credentials into the
    Secret konduktor-credentials-<user>-<cloud> that launched pods mount.
    """
    from konduktor import config, remote
    from konduktor.k8s import submit
    from konduktor.storage import open_store

    cfg = config.load()
    url, options = cfg.store_url(cloud)
    target = open_store(store_url or url, options)
    click.echo(f"store {target.url}")
    results = remote.check(target)
    for result in results:
        click.echo(f"  {'ok  ' if result.ok else 'FAIL'}  {result.step}: {result.detail}")
    if not all(r.ok for r in results):
        raise _Failed(f"the {cloud} store {target.url} does not work; fix what failed above")
    context = submit.current_context(kubeconfig, kube_context)
    if cloud == "file" or context is None:
        return
    import importlib.util

    if importlib.util.find_spec("kubernetes") is None:
        click.echo(
            f"kube context {context} found; pip install 'konduktor[k8s]' and check again "
            "to give its pods your credentials"
        )
        return
    from konduktor.k8s import secrets

    click.echo(secrets.write(submit.connect(kubeconfig, kube_context), cloud))


class _Failed(KonduktorError):
    pass


@cli.group()
def secret() -> None:
    """Kubernetes Secrets konduktor manages: SSH keys for --mode git."""


@secret.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["git-ssh"]), required=True, help="What it holds.")
@click.option(
    "--from-file",
    "key",
    required=True,
    type=click.Path(path_type=Path),
    help="The private key file (never printed or logged).",
)
@_cluster_options
def secret_create(
    name: str, kind: str, key: Path, kubeconfig: Path | None, kube_context: str | None
) -> None:
    """Create (or replace) the Secret NAME with an SSH private key for git mode."""
    from konduktor.k8s import secrets, submit

    click.echo(secrets.create_git_ssh(submit.connect(kubeconfig, kube_context), name, key))


@secret.command("list")
@_cluster_options
def secret_list(kubeconfig: Path | None, kube_context: str | None) -> None:
    """The Secrets konduktor manages in the namespace (names and kinds only)."""
    from konduktor.k8s import secrets, submit

    for item in secrets.listed(submit.connect(kubeconfig, kube_context)):
        kind = item["labels"].get(secrets.KIND_LABEL, "credentials")
        click.echo(f"{item['name']}  {kind}  {item['created'] or ''}")


@secret.command("delete")
@click.argument("name")
@_cluster_options
def secret_delete(name: str, kubeconfig: Path | None, kube_context: str | None) -> None:
    """Delete the Secret NAME (only one konduktor made)."""
    from konduktor.k8s import secrets, submit

    secrets.delete(submit.connect(kubeconfig, kube_context), name)
    click.echo(f"deleted Secret {name}")


@cli.command()
@click.argument("task_file", metavar="TASK", type=click.Path(path_type=Path))
@click.option(
    "--local",
    is_flag=True,
    help="Run the pod's startup script on this machine, in a sandbox HOME under "
    "~/.konduktor/local/<job>, instead of submitting; exit with the task's code.",
)
@click.option(
    "--dry-run", is_flag=True, help="Upload and submit nothing: print the plan (and -o yaml)."
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    help="With --dry-run: print the JobSet that would be submitted.",
)
@click.option(
    "--mode",
    type=click.Choice(["tarball", "git"]),
    default="tarball",
    show_default=True,
    help="How the workdir reaches the pod: a snapshot from the store, or (git) a clone of "
    "the exact commit over SSH plus an overlay of uncommitted changes.",
)
@click.option("--remote", default="origin", show_default=True, help="Git mode: the remote.")
@click.option("--branch", help="Git mode: the remote branch holding HEAD (default: current).")
@click.option("--ssh-url", is_flag=True, help="Git mode: clone an https:// remote over SSH.")
@click.option("--fetch", is_flag=True, help="Git mode: fetch before checking HEAD is pushed.")
@click.option(
    "--accept-host-key",
    is_flag=True,
    help="Git mode: pin the remote host's keys scanned now, when known_hosts lacks them.",
)
@click.option("--clean-only", is_flag=True, help="Git mode: refuse uncommitted changes.")
@click.option("--ssh-secret", metavar="NAME", help="Git mode: the key from this Secret.")
@click.option("--recurse-submodules", is_flag=True, help="Git mode: check out submodules.")
@click.option("--name", help="Override the task's name.")
@click.option("--num-nodes", type=click.IntRange(min=1), help="Override num_nodes.")
@click.option("--cpus", help="Override resources.cpus (vCPUs).")
@click.option("--memory", help="Override resources.memory (GiB).")
@click.option("--gpus", help="Override resources.accelerators, e.g. H100:8.")
@click.option("--image-id", help="Override resources.image_id.")
@click.option("--env", "envs", multiple=True, metavar="K[=V]", help="Set an env var (repeatable).")
@click.option("--env-file", type=click.Path(path_type=Path), help="Read KEY=VALUE lines.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("-d", "--detach", is_flag=True, help="Do not wait: with --local, run in background.")
@_cluster_options
@click.option("--store", "store_url", metavar="URL", help="Store URL (default: from the config).")
def launch(
    task_file: Path,
    local: bool,
    dry_run: bool,
    output: str | None,
    mode: str,
    remote: str,
    branch: str | None,
    ssh_url: bool,
    fetch: bool,
    accept_host_key: bool,
    clean_only: bool,
    ssh_secret: str | None,
    recurse_submodules: bool,
    name: str | None,
    num_nodes: int | None,
    cpus: str | None,
    memory: str | None,
    gpus: str | None,
    image_id: str | None,
    envs: tuple[str, ...],
    env_file: Path | None,
    yes: bool,
    detach: bool,
    kubeconfig: Path | None,
    kube_context: str | None,
    store_url: str | None,
) -> int:
    """Launch TASK (a Konduktor task YAML) as a JobSet on the current Kubernetes context.

    In order, stopping at the first failure: validate the task and config;
    snapshot the workdir and local file mounts (summary; hard size limit);
    upload only the layers the store lacks; write the launch plan; submit.
    The pod's startup script fetches, verifies and places the files, then
    runs `run:` in ~/konduktor_workdir.
    """
    from konduktor import config
    from konduktor import launch as launching
    from konduktor import task as tasks
    from konduktor.k8s import jobset

    if output and not dry_run:
        raise click.UsageError("-o/--output goes with --dry-run")
    if local and dry_run:
        raise click.UsageError("--local and --dry-run do not go together")
    overrides = tasks.Overrides(name, num_nodes, cpus, memory, gpus, image_id, envs, env_file)
    task = tasks.load(task_file, overrides)
    cfg = config.load()
    cluster = None
    if not (local or dry_run):
        from konduktor.k8s import submit

        cluster = submit.connect(kubeconfig, kube_context)
    checkout, git_secret = None, None
    if mode == "git":
        task, checkout, git_secret = _git_checkout(
            task,
            cfg,
            local=local,
            remote=remote,
            branch=branch,
            ssh_url=ssh_url,
            fetch=fetch,
            accept_host_key=accept_host_key,
            ssh_secret=ssh_secret,
            submodules=recurse_submodules,
        )
    store = _open_store(cfg, store_url)
    prepared = launching.prepare(task, cfg, jobset.job_name(task), checkout)
    _warn(prepared.warnings)
    if checkout is not None and prepared.dirty:
        if clean_only:
            raise _Failed(
                "the work tree has uncommitted changes and --clean-only is set: commit and "
                "push them, or drop --clean-only"
            )
        _info(f"git: uncommitted changes ship as an overlay on top of {checkout.commit[:12]}")
    _print_summary(prepared)
    if dry_run:
        return _dry_run(prepared, store, cfg, output, git_secret)
    if not yes and sys.stdin.isatty() and not click.confirm("launch?", default=True, err=True):
        raise click.Abort
    synced = launching.sync(prepared, store, cfg, progress=_byte_bar)
    sent = f"{len(synced.uploaded)} object(s), {_size(synced.uploaded_bytes)} sent"
    _info(
        f"upload: {sent if synced.uploaded else 'nothing to send'}; "
        f"{len(synced.reused)} object(s) already in {store.url}"
    )
    if cluster is None:
        _info(f"running {prepared.job} in {launching.local_home(prepared.job)}")
        quiet = bool(click.get_current_context().find_root().params.get("quiet"))
        return launching.run_local(synced.plan, task, detach=detach, quiet=quiet)
    launching.submit(cluster, task, synced.plan, git_secret)
    _info(
        f"submitted JobSet {prepared.job} (context {cluster.context}, namespace "
        f"{cluster.namespace}); follow it with: kubectl logs -f -l "
        f"jobset.sigs.k8s.io/jobset-name={prepared.job} -n {cluster.namespace}"
    )
    click.echo(prepared.job)
    return 0


def _info(message: str) -> None:
    """A progress line on stderr (stdout stays the job name, or the local run's output)."""
    if not click.get_current_context().find_root().params.get("quiet"):
        click.echo(message, err=True)


def _print_summary(prepared: Any) -> None:
    _info(f"job {prepared.job}: {prepared.files} file(s), {_size(prepared.bytes)} to ship")
    for path, size in prepared.largest()[:3]:
        _info(f"  {_size(size):>9}  {path}")
    for warning in prepared.size_warnings:
        logging.getLogger("konduktor").warning(warning)


def _git_checkout(task: Any, cfg: Any, *, local: bool, **options: Any) -> tuple[Any, Any, Any]:
    """Git mode: the SSH key, the checked remote, branch and commit, the pinned host keys."""
    from konduktor import gitmode
    from konduktor import launch as launching
    from konduktor.plan import GitCheckout

    if task.workdir is None:
        raise click.UsageError("--mode git clones the workdir: the task needs a workdir")
    task, key, secret = launching.ssh_key(task, cfg, options.pop("ssh_secret"))
    if secret and local:
        raise click.UsageError(
            "--local cannot mount the Kubernetes Secret with the SSH key; mount the key "
            "file (file_mounts) or set git.ssh_key"
        )
    submodules = options.pop("submodules")
    found, notes = gitmode.resolve(task.workdir, **options)
    for note in notes:
        _info(f"git: {note}")
    checkout = GitCheckout(
        found.url, found.branch, found.commit, found.known_hosts, key, submodules
    )
    _info(f"git: the pod clones {found.url} at {found.commit[:12]} ({found.branch})")
    return task, checkout, secret


def _dry_run(
    prepared: Any, store: Any, cfg: Any, output: str | None, git_secret: str | None
) -> int:
    from konduktor import launch as launching

    plan, missing = launching.dry_plan(prepared, store, cfg)
    if output:
        manifest = launching.manifest(prepared.task, plan, git_secret)
        if output == "json":
            click.echo(json.dumps(manifest, indent=2))
        else:
            from konduktor.k8s import jobset

            click.echo(jobset.to_yaml(manifest), nl=False)
    layers = [la for tree in plan.trees for la in tree.layers]
    for layer in layers:
        state = "to upload" if layer.key in missing else "in store "
        click.echo(f"  {state}  {layer.kind:8} {store.url}/{layer.key}", err=True)
    for f in plan.files:
        state = "to upload" if f.key in missing else "in store "
        click.echo(f"  {state}  {'file':8} {f.target} <- {f.source}", err=True)
    click.echo("dry run: nothing uploaded, nothing submitted", err=True)
    return 0


def _now() -> Any:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc)


def _age(delta: Any) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@contextlib.contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A (done, total) callback drawing a progress bar on stderr, when that is a terminal."""
    ctx = click.get_current_context()
    if not sys.stderr.isatty() or ctx.find_root().params.get("quiet"):
        yield None
        return
    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        yield update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def _snapshot_json(info: Any) -> dict[str, object]:
    return {
        "commit": info.commit,
        "dirty": info.dirty,
        "seconds": round(info.seconds, 3),
        "layers": [
            {
                "kind": layer.kind,
                "key": layer.key,
                "sha256": layer.sha256,
                "bytes": layer.bytes,
                "compressed_bytes": layer.compressed_bytes,
                "files": layer.files,
                "path": str(layer.path) if layer.path else None,
            }
            for layer in info.layers
        ],
    }


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError


def _print_snapshot(info: Any) -> None:
    rows = [("layer", "files", "bytes", "compressed", "sha256", "key")]
    for layer in info.layers:
        rows.append(
            (
                layer.kind,
                str(layer.files),
                _size(layer.bytes),
                _size(layer.compressed_bytes),
                layer.sha256[:12],
                layer.key,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < 5 else cell for i, cell in enumerate(row)]
        click.echo("  ".join(cells))
    commit = info.commit[:12] if info.commit else "no commit"
    state = "dirty" if info.dirty else "clean"
    click.echo(f"{commit} ({state}), {len(info.layers)} layer(s) in {info.seconds:.2f} s")
    for layer in info.layers:
        if layer.path:
            click.echo(f"wrote {layer.path}")


@cli.command()
@click.argument("layers", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace DEST if it exists and is not empty.")
def extract(layers: tuple[Path, ...], dest: Path, replace: bool) -> None:
    """Extract LAYER files in order (base first, then overlay) into DEST.

    Each layer's sha256 is checked against the manifest beside it
    (<name>.json) before anything is written; DEST is replaced only when
    everything succeeded.
    """
    from konduktor import extract as ex

    if dest.exists() and any(dest.iterdir()) and not replace:
        raise click.UsageError(f"{dest} is not empty; give --replace to replace it")
    refs = [ex.LayerRef(path, _expected_sha256(path)) for path in layers]
    result = ex.extract(refs, dest)
    click.echo(
        f"extracted {result.files} files and {result.symlinks} symlinks into {dest}"
        + (f", deleted {result.deleted}" if result.deleted else "")
    )


def _expected_sha256(layer: Path) -> str | None:
    if not layer.is_file():
        raise click.UsageError(f"layer {layer} does not exist")
    manifest = layer.with_name(layer.name.removesuffix(".tar.zst") + ".json")
    try:
        digest = json.loads(manifest.read_text())["sha256"]
    except FileNotFoundError:
        logging.getLogger("konduktor").warning(
            "no manifest %s beside the layer: its sha256 is not verified", manifest
        )
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.UsageError(f"cannot read the manifest {manifest}: {exc}") from exc
    return str(digest)


@cli.group()
def hooks() -> None:
    """Snapshot pushed commits from git's pre-push hook, so that launches upload nothing.

    Settings: the hooks: section of ~/.konduktor/config.yaml (strict, timeout,
    background, sync_roots).
    """


@hooks.command("install")
@click.option(
    "--force",
    is_flag=True,
    help="Rewrite konduktor's hook; chain a foreign hook even if an older one is kept.",
)
def hooks_install(force: bool) -> None:
    """Install konduktor's pre-push hook in the repository around the current directory.

    A pre-push hook already there keeps running first (renamed
    pre-push.before-konduktor) and its exit status still decides the push.
    """
    from konduktor import hooks as githooks

    done = githooks.install(Path.cwd(), force=force)
    if not done.changed:
        click.echo(f"already installed: {done.hook} (--force rewrites it)")
        return
    click.echo(f"installed {done.hook}; it runs konduktor with {sys.executable}")
    if done.chained:
        click.echo(f"the hook that was there runs first: {done.chained}")


@hooks.command("uninstall")
def hooks_uninstall() -> None:
    """Remove konduktor's pre-push hook and put back the hook it replaced."""
    from konduktor import hooks as githooks

    done = githooks.uninstall(Path.cwd())
    if not done.removed:
        click.echo(f"no konduktor hook at {done.hook}; nothing to do")
    elif done.restored:
        click.echo(f"removed {done.hook} and restored the hook it had replaced")
    else:
        click.echo(f"removed {done.hook}")


@hooks.command("status")
def hooks_status() -> None:
    """Say whether the hook is installed, what it runs, and its settings."""
    from konduktor import config
    from konduktor import hooks as githooks

    state = githooks.status(Path.cwd())
    if state.installed:
        found = "" if state.python_found else " (gone: konduktor on PATH runs instead)"
        click.echo(f"installed: {state.hook}, runs konduktor with {state.python}{found}")
    else:
        what = "is another tool's hook" if state.foreign else "does not exist"
        click.echo(f"not installed: {state.hook} {what}; run konduktor hooks install")
    if state.chained:
        click.echo(f"runs first: {state.chained}")
    cfg = config.load()
    settings = cfg.hooks
    click.echo(f"store: {cfg.store_url()[0]}")
    click.echo(f"sync roots: {' '.join(dict.fromkeys(('.', *settings.sync_roots)))}")
    click.echo(
        f"strict: {str(settings.strict).lower()}, timeout: {settings.timeout:g} s, "
        f"background: {str(settings.background).lower()}"
    )


@hooks.command("run")
@click.argument("remote", required=False)
@click.argument("url", required=False)
@click.option("--foreground", is_flag=True, hidden=True)
def hooks_run(remote: str | None, url: str | None, foreground: bool) -> None:
    """What the pre-push hook runs (git passes REMOTE and URL, and the refs on stdin).

    Uploads the base layer of each pushed commit that the store lacks. A
    failure prints one warning and the push goes on, unless hooks.strict is true.
    """
    from konduktor import hooks as githooks

    result = githooks.run(Path.cwd(), sys.stdin, foreground=foreground)
    for layer in result.layers:
        what = f"base layer of {layer.commit[:12]} ({layer.root})"
        if layer.uploaded_bytes:
            click.echo(f"konduktor: uploaded the {what}, {_size(layer.uploaded_bytes)}", err=True)
        else:
            click.echo(f"konduktor: the {what} is in the store already", err=True)
    if result.log:
        click.echo(f"konduktor: snapshotting in the background, log in {result.log}", err=True)
    if result.failure is None:
        return
    if not result.strict:
        click.echo(f"warning: konduktor pre-push: {result.failure}; the push goes on", err=True)
    message = (
        f"konduktor pre-push: {result.failure}; the push is blocked (hooks.strict: true): "
        "fix it, or push with --no-verify"
    )
    if result.timed_out:
        if result.strict:
            click.echo(f"error: {message}", err=True)
        sys.stderr.flush()
        os._exit(1 if result.strict else 0)  # the work may be stuck in the store: no waiting
    if result.strict:
        raise _Failed(message)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: one handler maps every failure to a message and an exit code."""
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="konduktor", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KonduktorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if verbose:
            raise
        click.echo(
            f"unexpected error: {type(exc).__name__}: {exc}; rerun with -v for the "
            "traceback and report it",
            err=True,
        )
        sys.exit(EXIT_UNEXPECTED)
    sys.exit(code if isinstance(code, int) else 0)
