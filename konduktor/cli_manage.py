"""The commands that look after the store, Secrets and hooks (`store`, `check`, `secret`,
`hooks`), and the helpers every command shares. :mod:`konduktor.cli` adds them to its group.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from konduktor import units
from konduktor.errors import StorageError, UsageError

if TYPE_CHECKING:
    from konduktor.storage import Store

F = TypeVar("F", bound=Callable[..., object])
log = logging.getLogger("konduktor")


class HelpGroup(click.Group):
    """A command group whose help lists each command's whole first sentence (click cuts
    them to the terminal's width), and which prints that help and exits 0 when it is run
    without a command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        rows = [
            (name, c.get_short_help_str(limit=200)) for name, c in commands if c and not c.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def quiet() -> bool:
    return bool(click.get_current_context().find_root().params.get("quiet"))


def info(message: str) -> None:
    """A progress line on stderr (stdout stays the command's result)."""
    if not quiet():
        click.echo(message, err=True)


def warn(warnings: Sequence[str]) -> None:
    for message in warnings:
        log.warning("%s", message)


def output_option(f: F) -> F:
    """``-o/--output table|json``, the one spelling of JSON output across commands
    (``--json`` stays as a hidden alias)."""
    f = click.option("--json", "output", flag_value="json", hidden=True)(f)
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="json: JSON instead of a table.",
    )(f)


def store_option(f: F) -> F:
    return click.option(
        "--store",
        "store_url",
        metavar="URL",
        callback=_store_url,
        help="Store URL: file:///path, s3://bucket/prefix or gs://bucket/prefix "
        "(default: from the config).",
    )(f)


def _store_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A malformed --store is a usage error (exit 2) before anything is read or sent."""
    from konduktor.storage import parse_url

    if value is not None:
        try:
            parse_url(value)
        except UsageError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def cluster_options(f: F) -> F:
    """--kubeconfig and --context, as kubectl has them; given before the command
    (`konduktor --context C status`), they apply to it as well."""
    f = click.option(
        "--context",
        "kube_context",
        callback=_from_root,
        help="Kubeconfig context (default: current).",
    )(f)
    return click.option(
        "--kubeconfig",
        type=click.Path(path_type=Path),
        callback=_from_root,
        help="Kubeconfig file to use.",
    )(f)


def _from_root(ctx: click.Context, param: click.Parameter, value: object) -> object:
    """The command's own value, else the one given before the command."""
    if value is None and param.name is not None:
        return ctx.find_root().params.get(param.name)
    return value


def open_store(url: str | None, *, create: bool = True) -> Store:
    """The store at *url* (default: the configured one); *create*: False for the commands
    that only look or delete, so that they never create the per-user default bucket."""
    from konduktor import config
    from konduktor.storage import open_store

    default_url, options = config.load().store_url()
    if not create:
        options = dataclasses.replace(options, create_bucket=False)
    return open_store(default_url if url is None else url, options)


@click.group(cls=HelpGroup)
def store() -> None:
    """Inspect and clean the object store (jobs.bucket in ~/.konduktor/config.yaml)."""


_LS_ROW = "{:<8} {:<12}  {:>9}  {:>9}  {}"  # kind, commit, size, last used, key
_PENDING_ROW = "{:>9}  {:<24}  {}"  # started, what, key


@store.command("ls")
@store_option
@output_option
@click.option(
    "--pending",
    is_flag=True,
    help="List unfinished uploads instead (`store gc` aborts those over a day old).",
)
def store_ls(store_url: str | None, output: str, pending: bool) -> None:
    """List the layers and launch plans in the store: kind (base, overlay, full, file or
    plan), commit, compressed size, when last used (a plan: written) and key.

    `store gc --older-than AGE` deletes the rows whose LAST USED is older than AGE. An
    empty store prints nothing on stdout and says so on stderr.
    """
    from konduktor import remote

    now = datetime.datetime.now(datetime.timezone.utc)
    as_json = output == "json"  # one JSON object per line, no header
    target = open_store(store_url, create=False)
    if pending:
        return _ls_pending(target, now, as_json)
    rows = [*remote.layers(target), *remote.plans(target)]
    if not rows:
        info(f"no layers or launch plans in {target.url}")
    elif not as_json:
        click.echo(_LS_ROW.format("KIND", "COMMIT", "SIZE", "LAST USED", "KEY"))
    for row in rows:
        age = now - row.last_used
        if as_json:
            click.echo(json.dumps(row.to_json(age)))
        else:
            commit, size = (row.commit or "-")[:12], units.size(row.size)
            click.echo(_LS_ROW.format(row.kind, commit, size, _ago(age), row.key))


def _ago(age: datetime.timedelta) -> str:
    return f"{units.age(age)} ago"


def _ls_pending(target: Store, now: datetime.datetime, as_json: bool) -> None:
    uploads = list(target.pending())
    if not uploads:
        info(f"no pending uploads in {target.url}")
    elif not as_json:
        click.echo(_PENDING_ROW.format("STARTED", "WHAT", "KEY"))
    for upload in uploads:
        age = now - upload.started
        if as_json:
            row = {"key": upload.key, "what": upload.what, "started": upload.started.isoformat()}
            click.echo(json.dumps({**row, "age_seconds": int(age.total_seconds())}))
        else:
            click.echo(_PENDING_ROW.format(_ago(age), upload.what, upload.key))


def _gc_age(ctx: click.Context, param: click.Parameter, value: str) -> datetime.timedelta:
    """--older-than as a timedelta; too short or malformed is a usage error (exit 2)."""
    from konduktor import remote

    try:
        age = remote.parse_age(value)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None
    if age < remote.MIN_GC_AGE:
        raise click.BadParameter(
            f"{value} is under 1h, which could delete a layer that a launch is about to "
            "use; give 1h or more, e.g. 30d"
        )
    return age


@store.command("gc")
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    callback=_gc_age,
    help="Delete layers not used for this long: 30d, 12h, 90m, 2w (at least 1h).",
)
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted.")
@store_option
def store_gc(older_than: datetime.timedelta, dry_run: bool, store_url: str | None) -> None:
    """Delete layers that no upload or launch used within AGE, and launch plans older;
    abort uploads left pending for over a day (interrupted ones).

    Every upload and launch refreshes a last-used marker of each layer it uses
    before it submits anything, so a layer about to be used is never deleted.
    """
    from konduktor import remote

    target, age = open_store(store_url, create=False), older_than
    victims = remote.gc(target, age, dry_run=dry_run)
    plans = remote.gc_plans(target, age, dry_run=dry_run)
    pending = remote.gc_pending(target, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    now = datetime.datetime.now(datetime.timezone.utc)
    for layer in victims:
        unused = units.age(now - layer.last_used)
        click.echo(f"{verb} {layer.key} ({units.size(layer.size)}, unused for {unused})")
    for upload in pending:
        click.echo(f"{'would abort' if dry_run else 'aborted'} {upload.what} of {upload.key}")
    size = units.size(sum(v.size for v in victims))
    click.echo(
        f"{verb} {len(victims)} layer(s), {size}, and {len(plans)} launch plan(s); "
        f"{len(pending)} upload(s) pending for over a day"
    )


@click.command()
@click.argument("clouds", nargs=-1, metavar="[CLOUD]", type=click.Choice(["s3", "gs", "file"]))
@store_option
@cluster_options
def check(
    clouds: tuple[str, ...],
    store_url: str | None,
    kubeconfig: Path | None,
    kube_context: str | None,
) -> None:
    """Check that each CLOUD's store (s3, gs or file) works: identity, bucket,
    write/read/delete.

    The store is --store, else the one of that kind the config names. Without CLOUD:
    --store's kind, else every cloud in allowed_clouds (as Konduktor's check does), else
    the configured store. Nothing is created: a missing bucket or directory fails the
    check, which says how to make it.

    When a Kubernetes context exists, also write your s3/gs credentials into the
    Secret konduktor-credentials-<user>-<cloud> that launched pods mount.
    """
    from konduktor import config, remote
    from konduktor.storage import parse_url

    scheme = None if store_url is None else parse_url(store_url)[0]
    for named in clouds:
        if scheme is not None and scheme != named:
            raise click.BadParameter(
                f"{store_url} is a {scheme}:// store, not {named}; run konduktor check "
                f"{scheme} --store {store_url} (or leave CLOUD out)",
                param_hint="'--store'",
            )
    todo: Sequence[str | None] = clouds or ([None] if scheme else config.load().allowed_clouds)
    if not todo:
        cfg = config.load()
        info(
            f"no allowed_clouds in {cfg.where('allowed_clouds')}: checking the configured "
            f"store; set allowed_clouds: [s3] (or [gs]) there to check those clouds"
        )
        todo = [None]
    failed = []
    for cloud in dict.fromkeys(todo):
        result = remote.check_cloud(
            cloud, store_url=store_url, kubeconfig=kubeconfig, kube_context=kube_context
        )
        click.echo(f"store {result.store}")
        for step in result.steps:
            click.echo(f"  {'ok  ' if step.ok else 'FAIL'}  {step.step}: {step.detail}")
        if result.secret:
            click.echo(result.secret)
        if not result.ok:
            failed.append(result.store)
    if len(failed) == 1:
        raise StorageError(f"the store {failed[0]} does not work; fix what failed above")
    if failed:
        stores = ", ".join(failed)
        raise StorageError(f"the stores {stores} do not work; fix what failed above")


@click.group(cls=HelpGroup)
def secret() -> None:
    """Your Kubernetes Secrets, made and labelled as Konduktor makes them.

    Each tool sees the other's. Kinds: env (environment variables in every pod),
    default (files mounted in every pod), git-ssh (the key --mode git clones with).
    """


def _path(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    return None if value is None else Path(os.path.expanduser(value))


@secret.command("create")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(["default", "env", "git-ssh"]),
    default="default",
    show_default=True,
    help="env: KEY=VALUE pairs set in every pod; default: files mounted in every pod at "
    "/konduktor/default-secrets/NAME; git-ssh: the private key --mode git clones with.",
)
@click.option(
    "--from-file",
    "--from_file",
    "from_file",
    metavar="FILE",
    callback=_path,
    help="A file (git-ssh: the private key; never printed or logged).",
)
@click.option(
    "--from-directory",
    "--from_directory",
    "from_directory",
    metavar="DIR",
    callback=_path,
    help="A directory, kept zipped in the Secret (payload.zip), as Konduktor does.",
)
@click.option(
    "--inline",
    multiple=True,
    metavar="KEY=VALUE",
    help="A key and its value (repeatable; --kind env: KEY is the variable's name).",
)
@cluster_options
def secret_create(
    name: str,
    kind: str,
    from_file: Path | None,
    from_directory: Path | None,
    inline: tuple[str, ...],
    kubeconfig: Path | None,
    kube_context: str | None,
) -> None:
    """Create (or replace) your Secret NAME from one of --from-file, --from-directory or
    --inline (env: --inline; git-ssh: --from-file).

    In the cluster it is NAME-<your user hash>, labelled trainy.ai/secret-owner,
    -basename and -kind, as Konduktor names and labels it. You have one git-ssh Secret:
    a new one replaces it.
    """
    from konduktor.k8s import secrets, submit

    secrets.check_name(name)  # bad arguments fail before the cluster is asked
    data = secrets.read_data(
        kind, from_file=from_file, from_directory=from_directory, inline=inline
    )
    click.echo(secrets.create(submit.connect(kubeconfig, kube_context), name, kind, data))


@secret.command("list")
@cluster_options
def secret_list(kubeconfig: Path | None, kube_context: str | None) -> None:
    """Your Secrets in the namespace: name, kind, keys (never values), when made."""
    from konduktor.k8s import secrets, submit

    for item in secrets.listed(submit.connect(kubeconfig, kube_context)):
        keys = ",".join(item.keys) or "-"
        click.echo(f"{item.basename}  {item.kind or '-'}  {keys}  {item.created or ''}")


@secret.command("delete")
@click.argument("name")
@cluster_options
def secret_delete(name: str, kubeconfig: Path | None, kube_context: str | None) -> None:
    """Delete your Secret NAME (the name given to create, or the Secret's own)."""
    from konduktor.k8s import secrets, submit

    if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name):
        secrets.check_name(name)
    deleted = secrets.delete(submit.connect(kubeconfig, kube_context), name)
    click.echo(f"deleted Secret {deleted}")


@click.group(cls=HelpGroup)
def hooks() -> None:
    """Snapshot pushed commits from git's pre-push hook, so that launches upload nothing.

    Settings: the hooks: section of ~/.konduktor/sync.yaml (strict, timeout,
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
def hooks_run(remote: str | None, url: str | None, foreground: bool) -> int:
    """What the pre-push hook runs (git passes REMOTE and URL, and the refs on stdin).

    Uploads the base layer of each pushed commit that the store lacks. A
    failure prints one warning and the push goes on, unless hooks.strict is true.
    """
    from konduktor import hooks as githooks

    result = githooks.run(Path.cwd(), sys.stdin, foreground=foreground)
    for layer in result.layers:
        what = f"base layer of {layer.commit[:12]} ({layer.root})"
        done = f"the {what} is in the store already"
        if layer.uploaded_bytes:
            done = f"uploaded the {what}, {units.size(layer.uploaded_bytes)}"
        click.echo(f"konduktor: {done}", err=True)
    if result.log:
        click.echo(f"konduktor: snapshotting in the background, log in {result.log}", err=True)
    if result.verdict:
        click.echo(result.verdict, err=True)
    if result.timed_out:
        sys.stderr.flush()
        os._exit(result.exit_code)  # cleaned up; threads stuck in the store are not waited for
    return result.exit_code
