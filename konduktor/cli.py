"""The `konduktor` command line: parse, call one library function, print.

Library code never prints or exits; every command here maps its options onto one
call, prints what comes back, and :func:`main` maps errors to one line and an exit
code (the table is in :mod:`konduktor.errors`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from konduktor import __version__, progress, units
from konduktor.cli_jobs import COMMANDS as JOB_COMMANDS
from konduktor.cli_manage import (
    HelpGroup,
    check,
    cluster_options,
    hooks,
    info,
    open_store,
    output_option,
    quiet,
    secret,
    store,
    store_option,
    warn,
)
from konduktor.errors import EXIT_INTERRUPTED, Interrupted, KonduktorError

if TYPE_CHECKING:
    from konduktor.launch import LaunchResult, Prepared, Request, Target
    from konduktor.snapshot import SnapshotInfo

EXIT_UNEXPECTED = 3
# launch's options that make up a gitmode.Options and a task.Overrides
_GIT_OPTIONS: tuple[str, ...] = ("remote", "branch", "ssh_url", "fetch", "accept_host_key")
_GIT_OPTIONS += ("clean_only", "ssh_secret", "recurse_submodules")
_OVERRIDES: tuple[str, ...] = (
    "name",
    "num_nodes",
    "cpus",
    "memory",
    "gpus",
    "image_id",
    "max_restarts",
    "completions",
)
_OVERRIDES += ("envs", "env_file", "workdir")
log = logging.getLogger("konduktor")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


@click.group(cls=HelpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="konduktor")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, and tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path),
    help="Kubeconfig file, for every command that talks to the cluster.",
)
@click.option("--context", "kube_context", help="Kubeconfig context, likewise.")
def cli(verbose: bool, quiet: bool, kubeconfig: Path | None, kube_context: str | None) -> None:
    """Ship exactly the right code from your work tree to a Kubernetes GPU cluster.

    konduktor snapshots a directory as the git-tracked files plus their
    uncommitted and untracked (not ignored) changes, minus what
    .konduktorignore files exclude (git's own ignore rules), into
    deterministic zstd layers keyed by commit and content. `konduktor launch
    task.yaml` uploads only the layers the store lacks and submits a JobSet
    whose pods fetch, verify and place them before running `run:`.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)


@cli.command("ls-files")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("-z", "nul", is_flag=True, help="Separate paths with NUL instead of newlines.")
@click.option("--commit", metavar="REV", help="List from this commit's tree, not the work tree.")
@click.option("--why", is_flag=True, help="Explain, for each PATH, whether it ships and why.")
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    help="With --why or PATHs inside it: the directory being synced (default: the current one).",
)
def ls_files(
    paths: tuple[Path, ...], nul: bool, commit: str | None, why: bool, root: Path | None
) -> int:
    """Print the files that ship, one per line.

    With no PATH or one directory PATH (and no --root): what ships when that
    directory (default: the current one) is synced, as `workdir: PATH` does,
    relative to it. Otherwise each PATH is a file or directory inside --root,
    and the files that ship from them print as `git ls-files PATH...` prints
    them, relative to the current directory (a file that does not ship
    prints nothing). With --why, print for each PATH whether it ships and the
    rule that decided (`.konduktorignore:3:secret*`, `.gitignore:1:*.log`,
    `tracked`, `untracked`, ...). A PATH that does not exist or is outside the
    synced directory gets one error line once the others are answered, and
    the exit code is 1.
    """
    from konduktor import selection

    end = b"\0" if nul else b"\n"
    out = sys.stdout.buffer
    if why:
        if not paths:
            raise click.UsageError("--why needs at least one PATH to explain")
        base = root or Path(".")
        verdicts = selection.explain(base, [_relative(p, base) for p in paths], commit=commit)
        for verdict in verdicts:
            state = "ships" if verdict.ships else "excluded"
            out.write(os.fsencode(f"{verdict.path}\t{state}\t{verdict.rule}") + end)
        return _path_errors([v.error for v in verdicts if v.error is not None])
    if not paths or (root is None and len(paths) == 1 and paths[0].is_dir()):
        sel = selection.select(
            paths[0] if paths else root or Path("."), commit=commit, kept_out=True
        )
        told = sel.kept_out.warning() if sel.kept_out else None  # what .gitignore keeps out
        warn([*sel.warnings, *([told] if told else [])])
        out.writelines(os.fsencode(path) + end for path in sel.paths())
        out.flush()
        return 0
    base = root or Path(".")
    listing = selection.pick(base, [_relative(p, base) for p in paths], commit=commit)
    warn(listing.warnings)
    top = os.path.abspath(base)  # printed as git prints them: relative to the cwd
    shown = listing.paths if top == os.getcwd() else (_from_cwd(top, p) for p in listing.paths)
    out.writelines(os.fsencode(path) + end for path in shown)
    return _path_errors(listing.errors)


def _relative(path: Path, root: Path) -> str:
    """*path* relative to *root*; absolute when it is outside (the library reports it)."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute, os.path.abspath(root))
    return absolute if relative == ".." or relative.startswith("../") else relative


def _from_cwd(top: str, path: str) -> str:
    return os.path.relpath(os.path.join(top, path))


def _path_errors(errors: Sequence[str]) -> int:
    """After what was printed: one line per PATH that could not be answered, exit 1 if any."""
    sys.stdout.buffer.flush()
    for error in errors:
        click.echo(f"error: {error}", err=True)
    return 1 if errors else 0


@cli.command()
@click.argument("path", required=False, type=click.Path(path_type=Path), default=Path("."))
@click.option("--commit", metavar="REV", help="Snapshot this commit's tree only (a base layer).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the layers and their manifests into this directory: "
    "base-<commit>-<root>.tar.zst, overlay-<sha256>.tar.zst (or full-...), each with a .json.",
)
@click.option(
    "--level",
    type=click.IntRange(1, 22),
    help="zstd compression level (default: sync.compression_level from the config, 3). "
    "It is part of the layer keys.",
)
@output_option
@click.option(
    "--upload", is_flag=True, help="Upload the layers the store lacks (see `konduktor store`)."
)
@store_option
def snapshot(
    path: Path,
    commit: str | None,
    out: Path | None,
    level: int | None,
    output: str,
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
    as_json = output == "json"
    if upload:
        return _upload(path, commit, level, as_json, out, store_url, cfg.hard_limit_mb)
    with progress.counting("snapshot", quiet=quiet()) as counter:
        info = snap.build(path, commit=commit, out=out, level=level, progress=counter)
    warn(info.warnings)
    if as_json:
        click.echo(json.dumps(_snapshot_json(info), indent=2))
    else:
        _print_snapshot(info)


def _upload(
    path: Path,
    commit: str | None,
    level: int,
    as_json: bool,
    out: Path | None,
    url: str | None,
    hard_limit_mb: float,
) -> None:
    from konduktor import remote
    from konduktor import snapshot as snap

    if out is not None:
        raise click.UsageError("--out and --upload do not go together")
    store = open_store(url)
    p = snap.plan(path, commit=commit, level=level, hash_files=False)
    snap.check_size(str(path), snap.shipped_sizes(p), hard_limit_mb)  # before hashing
    result = remote.upload_plan(
        snap.with_keys(p),
        store,
        progress=progress.transfers("upload", quiet=quiet()),
        build_progress=progress.counts("build", quiet=quiet()),
    )
    if result.info is not None:
        warn(result.info.warnings)
    if as_json:
        data: dict[str, object] = {"commit": result.commit, "dirty": result.dirty}
        if result.info is not None:
            data["layers"] = _snapshot_json(result.info)["layers"]
        data.update(store=store.url, keys=list(result.keys), uploaded=list(result.uploaded))
        data.update(uploaded_bytes=result.uploaded_bytes, reused=list(result.reused))
        click.echo(json.dumps(data, indent=2))
        return
    for key in result.keys:
        click.echo(f"{'uploaded' if key in result.uploaded else 'reused  '}  {store.url}/{key.key}")
    click.echo(
        f"uploaded {units.size(result.uploaded_bytes)}, reused {len(result.reused)} layer(s)"
    )


def _snapshot_json(info: SnapshotInfo) -> dict[str, object]:
    layers = [
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
    ]
    seconds = round(info.seconds, 3)
    return {"commit": info.commit, "dirty": info.dirty, "seconds": seconds, "layers": layers}


def _print_snapshot(info: SnapshotInfo) -> None:
    rows = [("layer", "files", "bytes", "compressed", "sha256", "key")]
    for la in info.layers:
        sizes = (units.size(la.bytes), units.size(la.compressed_bytes))
        rows.append((la.kind, str(la.files), *sizes, la.sha256[:12], la.key))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)]
        click.echo("  ".join([*cells, row[5]]))
    took = f"in {info.seconds:.2f} s"
    if info.commit:
        state = "dirty" if info.dirty else "clean"
        click.echo(f"{info.commit[:12]} ({state}), {len(info.layers)} layer(s) {took}")
    else:  # one full layer; snapshot.plan calls it dirty inside a repository
        where = "git repository without commits" if info.dirty else "not a git work tree"
        click.echo(f"{where}: one full layer {took}")
    for layer in info.layers:
        if layer.path:
            click.echo(f"wrote {layer.path}")


@cli.command()
@click.argument("task_file", metavar="TASK", type=click.Path(path_type=Path))
@click.option(
    "--local",
    is_flag=True,
    help="Run the pod's startup script on this machine, in a sandbox HOME under "
    "~/.konduktor/local/<job>, instead of submitting; exit with the task's code.",
)
@click.option(
    "--dry-run",
    "--dryrun",
    "dry_run",
    is_flag=True,
    help="Upload and submit nothing: print the plan (and -o yaml).",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    help="With --dry-run: print the JobSet that would be submitted.",
)
@click.option("--json", "output", flag_value="json", hidden=True)
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
@click.option("-n", "--name", help="Override the task's name.")
@click.option(
    "--workdir", type=click.Path(path_type=Path), help="Override workdir (relative to here)."
)
@click.option("--num-nodes", type=click.IntRange(min=1), help="Override num_nodes.")
@click.option("--cpus", help="Override resources.cpus (vCPUs).")
@click.option("--memory", help="Override resources.memory (GiB).")
@click.option("--gpus", help="Override resources.accelerators, e.g. H100:8.")
@click.option("--image-id", help="Override resources.image_id.")
@click.option(
    "--max-restarts",
    type=int,
    help="Override resources.job_config.max_restarts: restart the whole job up to N times.",
)
@click.option(
    "--completions", type=int, help="Override resources.job_config.completions (pods to finish)."
)
@click.option("--env", "envs", multiple=True, metavar="K[=V]", help="Set an env var (repeatable).")
@click.option("--env-file", type=click.Path(path_type=Path), help="Read KEY=VALUE lines.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "-d",
    "--detach",
    "--detach-run",
    "detach",
    is_flag=True,
    help="Do not follow the job: submit it and exit (with --local, run it in the "
    "background; it says where the output goes). `konduktor logs JOB` follows it later.",
)
@click.option(
    "--rank",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Following a cluster job: stream the log of this rank's pod.",
)
@cluster_options
@store_option
@click.pass_context
def launch(ctx: click.Context, /, task_file: Path, **_: object) -> int:
    """Launch TASK (a Konduktor task YAML) as a JobSet on the current Kubernetes context.

    In order, stopping at the first failure: validate the task and config;
    snapshot the workdir and local file mounts (summary; hard size limit);
    upload only the layers the store lacks; write the launch plan; submit.
    The pod's startup script fetches, verifies and places the files, then
    runs `run:` in ~/konduktor_workdir.

    Unless -d, it then follows the job: its state while it is queued or
    pending (and why), then rank 0's log (--rank N: rank N's) on stdout until
    the job ends, and exits with the job's exit code (97: its files did not
    sync, and the pod's reason). Ctrl-C stops following and leaves the job
    running; `konduktor logs JOB` follows it again.
    """
    from konduktor import launch as launching

    opts = ctx.params
    if opts["rank"] and (opts["local"] or opts["detach"] or opts["dry_run"]):
        raise click.UsageError("--rank goes with following a cluster job (not -d, --local)")
    confirm = None if opts["yes"] else _confirm
    result = launching.launch(
        _request(ctx),
        confirm=confirm,
        report=info,
        progress=progress.transfers("upload", quiet=quiet()),
        build_progress=progress.counts("build", quiet=quiet()),
    )
    code = _print_launch(result, opts["output"], detach=opts["detach"])
    if result.target == "cluster" and not opts["detach"]:
        return _follow(result, opts["kubeconfig"], opts["rank"])
    return code


def _follow(result: LaunchResult, kubeconfig: Path | None, rank: int) -> int:
    from konduktor.cli_jobs import follow_job
    from konduktor.k8s import submit

    cluster = submit.connect(kubeconfig, result.context)
    try:
        return follow_job(cluster, result.job, rank=rank)
    finally:
        cluster.api_client.close()


def _request(ctx: click.Context) -> Request:
    """launch's options as a launch.Request (and the combinations that make no sense)."""
    from konduktor import gitmode
    from konduktor.launch import Request
    from konduktor.task import Overrides

    opts = ctx.params
    if opts["output"] and not opts["dry_run"]:
        raise click.UsageError("-o/--output goes with --dry-run")
    if opts["local"] and opts["dry_run"]:
        raise click.UsageError("--local and --dry-run do not go together")
    target: Target = "local" if opts["local"] else "dry-run" if opts["dry_run"] else "cluster"
    return Request(
        opts["task_file"],
        target,
        Overrides(**{k: opts[k] for k in _OVERRIDES}),
        gitmode.Options(**{k: opts[k] for k in _GIT_OPTIONS}) if opts["mode"] == "git" else None,
        **{k: opts[k] for k in ("store_url", "kubeconfig", "kube_context", "detach")},
        manifest=opts["output"] is not None,
        quiet=quiet(),
    )


def _confirm(prepared: Prepared) -> bool:
    return not sys.stdin.isatty() or click.confirm("launch?", default=True, err=True)


def _print_launch(result: LaunchResult, output: str | None, *, detach: bool = False) -> int:
    """What the launch did; a followed job's log (not its name) is the output then."""
    where = f"context {result.context}, namespace {result.namespace}"
    if result.target == "dry-run":
        _print_dry_run(result, output)
    elif result.target == "cluster" and detach:
        info(
            f"submitted JobSet {result.job} ({where}); follow it with: konduktor logs {result.job}"
        )
        click.echo(result.job)
    elif result.target == "cluster":
        info(f"submitted JobSet {result.job} ({where}); Ctrl-C stops following, not the job")
    elif result.log is not None:
        info(
            f"{result.job} runs in the background; its output goes to {result.log} "
            f"(konduktor logs {result.job} follows it)"
        )
    else:
        info(_exited(result.job, result.exit_code))
    return result.exit_code


def _exited(job: str, code: int) -> str:
    """The closing line of a local run: its code is the task's, whatever konduktor's mean."""
    if code == 0:
        return f"job {job} exited with code 0"
    from konduktor import pod

    why = "its files did not sync, see above" if code == pod.SYNC_FAILED else "the task's own code"
    return f"job {job} exited with code {code} ({why}; konduktor exits with it)"


def _print_dry_run(result: LaunchResult, output: str | None) -> None:
    from konduktor.k8s import jobset

    if output == "json":
        click.echo(json.dumps(result.manifest, indent=2))
    elif output == "yaml" and result.manifest is not None:
        click.echo(jobset.to_yaml(result.manifest), nl=False)
    plan, missing = result.synced.plan, set(result.synced.uploaded)
    rows = [(la.key, la.kind, f"{result.store}/{la.key}") for t in plan.trees for la in t.layers]
    rows += [(f.key, "file", f"{f.target} <- {f.source}") for f in plan.files]
    for key, kind, where in rows:
        state = "to upload" if key in missing else "in store "
        click.echo(f"  {state}  {kind:8} {where}", err=True)
    click.echo("dry run: nothing uploaded, nothing submitted", err=True)


@cli.command()
@click.argument("layers", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace DEST if it exists and is not empty.")
def extract(layers: tuple[Path, ...], dest: Path, replace: bool) -> None:
    """Extract LAYER files in order (base first, then overlay) into DEST.

    The manifest beside each layer (<name>.json, as `snapshot --out` writes
    them) gives its sha256, checked before anything is written, and its place:
    an overlay must come right after its base. DEST is replaced only when
    everything succeeded.
    """
    from konduktor import extract as ex

    if dest.exists() and any(dest.iterdir()) and not replace:
        raise click.UsageError(f"{dest} is not empty; give --replace to replace it")
    refs = [ex.LayerRef.beside_manifest(path) for path in layers]
    start = progress.transfers("extract", quiet=quiet())
    total = sum(ref.path.stat().st_size for ref in refs)
    result = ex.extract(refs, dest, progress=start("", total) if start else None)
    deleted = f", deleted {result.deleted}" if result.deleted else ""
    click.echo(
        f"extracted {result.files} files and {result.symlinks} symlinks into {dest}{deleted}"
    )


for _command in (store, check, secret, hooks, *JOB_COMMANDS):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: one handler maps every failure to a message and an exit code."""
    verbose = False
    _end_on_signals()
    try:
        with cli.make_context("konduktor", list(sys.argv[1:] if argv is None else argv)) as ctx:
            verbose = bool(ctx.params["verbose"])
            code = cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _fail(f"error: {exc.format_message()}{_see_help(exc)}", exc.exit_code)
    except KonduktorError as exc:  # several mistakes (a task file's): a line each
        lines = str(exc).splitlines() or [""]
        _fail("\n".join(f"error: {line}" for line in lines), exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        _interrupted(exc)
    except Exception as exc:
        if verbose:
            raise
        reason = f"{type(exc).__name__}: {exc}"
        _fail(f"unexpected error: {reason}; rerun with -v for the traceback and report it", 3)
    sys.exit(code if isinstance(code, int) else 0)


def _see_help(exc: click.ClickException) -> str:
    """Where a usage error's command explains itself: click's own report is a usage
    block and a blank line before the error; ours is the one line every error is."""
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        return f" (see: {exc.ctx.command_path} --help)"
    return ""


def _end_on_signals() -> None:
    """SIGTERM and SIGHUP end a command as Ctrl-C does: uploads in flight are aborted and
    scratch files removed. A second one ends it at once (the cleanup itself may hang)."""

    def handler(signum: int, frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise Interrupted(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def _interrupted(exc: BaseException) -> NoReturn:
    """Exit 130 after Ctrl-C, 128 + N after signal N (click turns a KeyboardInterrupt at a
    prompt into Abort: the signal is then its context)."""
    cause = exc if isinstance(exc, Interrupted) else exc.__context__
    if isinstance(cause, Interrupted):
        _fail(f"interrupted ({signal.Signals(cause.signum).name})", 128 + cause.signum)
    _fail("interrupted", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)
