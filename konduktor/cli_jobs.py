"""The commands that follow and manage jobs (`status`, `logs`, `down`, `stop`, `start`),
and the follower `launch` uses; :mod:`konduktor.cli` adds them to its group.

A job is a JobSet of yours on the current context's namespace (:mod:`konduktor.k8s.jobs`)
or a local run (:mod:`konduktor.local`); a name may be given by any unambiguous prefix.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

import click

from konduktor import units
from konduktor.cli_manage import cluster_options, info, output_option
from konduktor.errors import EXIT_INTERRUPTED, Interrupted, JobError

if TYPE_CHECKING:
    from konduktor.k8s.jobs import Job, State
    from konduktor.k8s.submit import Cluster
    from konduktor.local import Run

_PLAN_NOTE = "its launch plan stays in the store until `konduktor store gc` collects it by age"


@dataclass(frozen=True)
class Row:
    """One line of `status`."""

    name: str
    where: str  # the context, or "local"
    user: str
    state: str
    exit_code: int | None  # a finished job's
    created: datetime.datetime | None
    nodes: int
    accelerators: str
    commit: str
    why: str  # a failed job's termination message, or why it waits

    def to_json(self, now: datetime.datetime) -> dict[str, object]:
        age = int((now - self.created).total_seconds()) if self.created else None
        created = self.created.isoformat() if self.created else None
        return {
            "name": self.name,
            "local": self.where == "local",
            "context": None if self.where == "local" else self.where,
            "user": self.user,
            "state": self.state,
            "exit_code": self.exit_code,
            "created": created,
            "age_seconds": age,
            "nodes": self.nodes,
            "accelerators": self.accelerators or None,
            "commit": self.commit or None,
            "why": self.why or None,
        }


@contextlib.contextmanager
def _connected(kubeconfig: Path | None, context: str | None) -> Iterator[Cluster | None]:
    """The cluster, or None when no option names one and no kubeconfig has a current
    context: then only local runs are jobs."""
    from konduktor.k8s import submit

    if not (kubeconfig or context) and submit.current_context() is None:
        yield None
        return
    cluster = submit.connect(kubeconfig, context)
    try:
        yield cluster
    finally:
        cluster.api_client.close()


def _me() -> str:
    from konduktor.k8s import jobset

    return jobset.current_owner().username


def _resolve(
    name: str, cluster: Cluster | None, candidates: Sequence[Job], runs: Sequence[Run]
) -> Job | Run:
    """The job or local run *name* names, whole or by an unambiguous prefix."""
    from konduktor.k8s import jobs

    everything: list[Job | Run] = [*candidates, *runs]
    for found in everything:
        if found.name == name:
            return found
    matches = [f for f in everything if f.name.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(f.name + (" (local)" if _is_local(f) else "") for f in matches)
        raise JobError(f"{name!r} matches {len(matches)} jobs: {names}; give more of it")
    if cluster is not None:
        return jobs.resolve(cluster, name, candidates)
    known = ", ".join(run.name for run in runs[:5]) or "none"
    raise JobError(
        f"no local run named {name!r} or starting with it (local runs: {known}), and no "
        "Kubernetes context to look in: set KUBECONFIG or pass --kubeconfig"
    )


def _is_local(found: Job | Run) -> TypeGuard[Run]:
    from konduktor.local import Run

    return isinstance(found, Run)


def _job(found: Job | Run) -> Job:
    from konduktor.k8s.jobs import Job

    assert isinstance(found, Job)
    return found


def _find(
    names: Sequence[str], cluster: Cluster | None, *, all_users: bool = False
) -> list[Job | Run]:
    """What each of *names* names (all of them, or an error before anything is done)."""
    from konduktor import local
    from konduktor.k8s import jobs

    candidates = jobs.list_jobs(cluster, user=None if all_users else _me()) if cluster else []
    runs = local.runs()
    return [_resolve(name, cluster, candidates, runs) for name in names]


# -- status -----------------------------------------------------------------------------------


@click.command()
@click.argument("names", nargs=-1, metavar="[JOB]...")
@click.option("-u", "--all-users", is_flag=True, help="Every user's jobs, not only yours.")
@output_option
@cluster_options
def status(
    names: tuple[str, ...],
    all_users: bool,
    output: str,
    kubeconfig: Path | None,
    kube_context: str | None,
) -> None:
    """List your jobs (or each JOB) with their state, age, nodes, accelerators, commit,
    and why a failed one failed.

    Yours are the JobSets in the context's namespace whose trainy.ai/username label is
    your login name (as upstream Konduktor's `status` has it), newest first, then the
    local runs kept under ~/.konduktor/local. A JOB may be given by a prefix of its name.
    """
    from konduktor import local
    from konduktor.k8s import jobs

    with _connected(kubeconfig, kube_context) as cluster:
        if cluster is None:
            info("no Kubernetes context: local runs only (set KUBECONFIG or pass --kubeconfig)")
        listed: list[Job | Run] = []
        if names:
            found = _find(names, cluster, all_users=all_users)
            listed = [f for f in found if not _is_local(f)]
            runs = [f for f in found if _is_local(f)]
        else:
            listed += jobs.list_jobs(cluster, user=None if all_users else _me()) if cluster else []
            runs = local.runs()
        rows = _cluster_rows(cluster, listed) + [_local_row(run) for run in runs]
    _print_status(rows, output == "json", all_users)


def _cluster_rows(cluster: Cluster | None, listed: Sequence[Job | Run]) -> list[Row]:
    from konduktor.k8s import jobs

    if cluster is None or not listed:
        return []
    found = jobs.pods(cluster, [job.name for job in listed])
    rows = []
    for job in map(_job, listed):
        now = jobs.state(job.jobset, found.get(job.name, []))
        commit = (job.commit or "")[:12] + ("+dirty" if job.dirty and job.commit else "")
        why = now.detail if now.phase not in ("running", "succeeded") else ""
        accelerators = job.accelerators or ""
        row = Row(job.name, cluster.context, job.user or "", now.phase, now.exit_code,
                  job.created, job.nodes, accelerators, commit, why)  # fmt: skip
        rows.append(row)
    return rows


def _local_row(run: Run) -> Row:
    return Row(run.name, "local", _me(), run.phase, run.exit_code, run.created, 1, "", "",
               run.message)  # fmt: skip


_STATUS = "{:<32} {:<14} {:<12} {:>5} {:>5}  {:<10} {:<18} {}"
_STATUS_ALL = "{:<32} {:<14} {:<12} {:<12} {:>5} {:>5}  {:<10} {:<18} {}"


def _print_status(rows: Sequence[Row], as_json: bool, all_users: bool) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.to_json(now)))
        return
    if not rows:
        info("no jobs" + ("" if all_users else " of yours (--all-users lists everyone's)"))
        return
    fmt = _STATUS_ALL if all_users else _STATUS
    head = ["NAME", "WHERE", "STATE", "AGE", "NODES", "GPUS", "COMMIT", "WHY"]
    click.echo(fmt.format(*([*head[:2], "USER", *head[2:]] if all_users else head)).rstrip())
    for row in rows:
        age = units.age(now - row.created) if row.created else "-"
        state = f"{row.state} ({row.exit_code})" if row.state == "failed" else row.state
        cells = [row.name, row.where, state, age, str(row.nodes), row.accelerators or "-"]
        cells += [row.commit or "-", row.why]
        if all_users:
            cells.insert(2, row.user or "-")
        click.echo(fmt.format(*cells).rstrip())


# -- logs -------------------------------------------------------------------------------------


@click.command()
@click.argument("name", metavar="JOB")
@click.option("--rank", type=click.IntRange(min=0), default=0, show_default=True,
              help="Whose log: the pod of this rank.")  # fmt: skip
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Follow the log until the job ends (then exit with its code).")  # fmt: skip
@click.option("--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines.")
@cluster_options
def logs(
    name: str,
    rank: int,
    follow: bool,
    tail: int | None,
    kubeconfig: Path | None,
    kube_context: str | None,
) -> int:
    """Print a job's log (rank 0's unless --rank), following it until the job ends.

    Following, it waits for the job as `launch` does (queued, pending and why) and
    exits with the job's exit code; Ctrl-C stops following and leaves the job running.
    A local run's log is its run.log.
    """
    with _connected(kubeconfig, kube_context) as cluster:
        (found,) = _find([name], cluster)
        if _is_local(found):
            return _local_logs(found, rank, follow, tail)
        assert cluster is not None
        _check_rank(found, rank)
        if follow:
            return follow_job(cluster, found.name, rank=rank, tail=tail)
        return _print_log(cluster, found.name, rank, tail)


def _check_rank(found: Job | Run, rank: int) -> None:
    job = _job(found)
    if rank >= job.nodes:
        raise click.BadParameter(
            f"job {job.name} has {job.nodes} node(s): ranks 0 to {job.nodes - 1}",
            param_hint="'--rank'",
        )


def _print_log(cluster: Cluster, name: str, rank: int, tail: int | None) -> int:
    from konduktor.k8s import jobs, submit

    found = submit.get_jobset(cluster, name)
    if found is None:
        raise JobError(f"job {name} is gone (namespace {cluster.namespace})")
    now = jobs.state(found, jobs.pods(cluster, [name]).get(name, []), rank)
    if not now.started or now.pod is None:
        detail = f": {now.detail}" if now.detail else ""
        raise JobError(f"job {name} has no log of rank {rank} yet: it is {now.phase}{detail}")
    out = sys.stdout.buffer
    for chunk in jobs.read_log(cluster, now.pod, tail=tail):
        out.write(chunk)
    out.flush()
    return 0


def _local_logs(run: Run, rank: int, follow: bool, tail: int | None) -> int:
    from konduktor import local

    if rank != 0:
        raise click.BadParameter(f"{run.name} is a local run: rank 0 only", param_hint="'--rank'")
    if not run.log.exists():
        raise JobError(f"the local run {run.name} has no log ({run.log} is missing)")
    out = sys.stdout.buffer
    chunks = local.read(run.name, follow=follow)
    if tail is not None:
        lines = b"".join(local.read(run.name)).splitlines(keepends=True)
        out.write(b"".join(lines[-tail:] if tail else []))
        chunks = _after(local.read(run.name, follow=follow), sum(map(len, lines)))
    try:
        for chunk in chunks:
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt as exc:
        return _stopped(run.name, exc)
    if not follow:
        return 0
    code = local.describe(run.name).exit_code
    return _close(run.name, code if code is not None else 0, run.message)


def _after(chunks: Iterator[bytes], skip: int) -> Iterator[bytes]:
    """*chunks* without their first *skip* bytes."""
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        yield chunk[skip:]
        skip = 0


# -- following --------------------------------------------------------------------------------


def follow_job(cluster: Cluster, name: str, *, rank: int = 0, tail: int | None = None) -> int:
    """Follow *name* to its end, printing its states on stderr and rank's log on stdout;
    the job's exit code (130 after Ctrl-C, which leaves the job as it is)."""
    from konduktor.k8s import jobs

    out = sys.stdout.buffer

    def output(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()

    def seen(state: State) -> None:
        line = _describe(name, rank, state)
        if line:
            info(line)

    try:
        final = jobs.follow(cluster, name, rank=rank, on_state=seen, on_output=output, tail=tail)
    except KeyboardInterrupt as exc:
        return _stopped(name, exc)
    assert final.exit_code is not None
    return _close(name, final.exit_code, final.detail)


def _stopped(name: str, exc: KeyboardInterrupt) -> int:
    info(
        f"stopped following; job {name} keeps running: `konduktor logs {name}` follows it "
        f"again, `konduktor down {name}` deletes it"
    )
    return 128 + exc.signum if isinstance(exc, Interrupted) else EXIT_INTERRUPTED


def _close(name: str, code: int, detail: str) -> int:
    from konduktor.cli import _exited

    if code != 0 and detail and detail not in ("Error", "Completed"):
        info(detail)
    info(_exited(name, code))
    return code


def _describe(name: str, rank: int, state: State) -> str | None:
    """The line that says where a followed job is (none once it ended: the closing
    line says that)."""
    if state.phase == "running" and state.detail:
        return f"job {name}: rank {rank} has ended; {state.detail}"
    if state.phase == "running":
        return f"job {name} is running (pod {state.pod}); rank {rank}'s log follows"
    if state.phase in ("queued", "stopped"):
        return f"job {name} is {state.phase} {state.detail}"
    if state.phase in ("pending", "suspended"):
        return f"job {name} is {state.phase}: {state.detail}" if state.detail else None
    return None


# -- down, stop, start ------------------------------------------------------------------------


@click.command()
@click.argument("names", nargs=-1, metavar="[JOB]...")
@click.option("--all", "all_", is_flag=True, help="All of your jobs, and your local runs.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@cluster_options
def down(
    names: tuple[str, ...],
    all_: bool,
    yes: bool,
    kubeconfig: Path | None,
    kube_context: str | None,
) -> None:
    """Delete each JOB (its JobSet, and so its pods), or with --all all of yours.

    A local run is ended if it runs, and its sandbox HOME deleted. The job's launch plan
    stays in the store until `konduktor store gc` deletes it by age.
    """
    from konduktor import local
    from konduktor.k8s import jobs

    if bool(names) == all_:
        raise click.UsageError("give JOB names or --all (not both)")
    with _connected(kubeconfig, kube_context) as cluster:
        if all_:
            targets: list[Job | Run] = [*(jobs.list_jobs(cluster, user=_me()) if cluster else [])]
            targets += local.runs()
        else:
            targets = _find(names, cluster)
        if not targets:
            info("no jobs of yours to delete")
            return
        listed = ", ".join(t.name for t in targets)
        if not yes and sys.stdin.isatty() and not click.confirm(f"delete {listed}?", err=True):
            from konduktor.errors import AbortedError

            raise AbortedError("aborted: nothing was deleted")
        for target in targets:
            _delete(cluster, target)


def _delete(cluster: Cluster | None, target: Job | Run) -> None:
    from konduktor import local
    from konduktor.k8s import jobs

    if _is_local(target):
        local.remove(target.name)
        info(f"deleted the local run {target.name}")
        return
    assert cluster is not None
    gone = not jobs.delete(cluster, target.name)
    verb = "was already gone:" if gone else "deleted"
    info(f"{verb} JobSet {target.name} (namespace {cluster.namespace}); {_PLAN_NOTE}")


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="JOB...")
@cluster_options
def stop(names: tuple[str, ...], kubeconfig: Path | None, kube_context: str | None) -> None:
    """Suspend each JOB (spec.suspend: its pods end and give back their nodes).

    `konduktor start JOB` resumes it: its pods start again from the beginning (as with
    upstream Konduktor, through Kueue when the JobSet is queued by it).
    """
    _suspend(names, kubeconfig, kube_context, suspend=True)


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="JOB...")
@cluster_options
def start(names: tuple[str, ...], kubeconfig: Path | None, kube_context: str | None) -> None:
    """Resume each stopped JOB (spec.suspend: false)."""
    _suspend(names, kubeconfig, kube_context, suspend=False)


def _suspend(
    names: Sequence[str], kubeconfig: Path | None, context: str | None, *, suspend: bool
) -> None:
    from konduktor.k8s import jobs

    verb = "stop" if suspend else "start"
    with _connected(kubeconfig, context) as cluster:
        found = _find(names, cluster)
        for target in found:
            if _is_local(target):
                raise JobError(
                    f"{target.name} is a local run, which `konduktor {verb}` cannot "
                    f"suspend or resume; `konduktor down {target.name}` ends it"
                )
        assert cluster is not None
        for target in found:
            if suspend:
                jobs.suspend(cluster, target.name, by=_me())
            else:
                jobs.resume(cluster, target.name)
            info(f"{'stopped' if suspend else 'started'} job {target.name}")


COMMANDS = (status, logs, down, stop, start)
