"""Command line: ``flask batchflow ...`` inside an app (``batchflow demo`` is the demo's own).

Exit codes: 0 success; 1 the job ended badly (``watch``: failed/stalled); 2 usage errors and
unknown jobs (Click's convention); 3 the request is not allowed now (stop a finished job, retry
while the job's owner has as many active jobs as their limit allows...).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from flask.cli import with_appcontext

from .context import get_state
from .engine import Engine
from .exceptions import BatchflowError, InvalidTransition, JobNotFound, LimitReached
from .schema import Status
from .state import JobState


def _engine() -> Engine:
    return get_state().engine


def _fail(exc: BatchflowError) -> None:
    click.echo(f"Error: {exc}", err=True)
    sys.exit(3 if isinstance(exc, (InvalidTransition, LimitReached)) else 2)


def _line(state: JobState) -> str:
    d = state.to_dict()
    total = "?" if d["total"] is None else d["total"]
    percent = "" if d["percent"] is None else f" {d['percent']:.0f}%"
    return (
        f"{d['id']}  {d['handler']:<20} {d['text']['badge']:<10}{percent:>5}  "
        f"{d['processed']}/{total}  good {d['good']}  bad {d['bad']}"
    )


def _bar(d: dict[str, Any], width: int = 30) -> str:
    if d["percent"] is None:
        return "[" + "." * width + "]"
    filled = int(width * d["percent"] / 100)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {d['percent']:5.1f}%"


@click.group("batchflow")
def cli() -> None:
    """Inspect and steer batchflow jobs."""


@cli.command("list")
@click.option("--owner", default=None, help="Only this owner's jobs (default: everyone's).")
@click.option(
    "--status",
    default=None,
    type=click.Choice([s.value for s in Status]),
    help="Only jobs in this status.",
)
@click.option("--limit", default=20, show_default=True)
@with_appcontext
def list_jobs(owner: str | None, status: str | None, limit: int) -> None:
    """List recent jobs, newest first."""
    states = _engine().jobs(owner, limit=limit, status=status)
    if not states:
        click.echo("No jobs.")
    for state in states:
        click.echo(_line(state))


@cli.command()
@click.argument("job_id")
@with_appcontext
def show(job_id: str) -> None:
    """Show one job in full."""
    try:
        state = _engine().state(job_id)
    except JobNotFound as exc:
        _fail(exc)
        return
    d = state.to_dict()
    for key in (
        "id",
        "handler",
        "owner",
        "status",
        "outcome",
        "total",
        "processed",
        "good",
        "bad",
        "skipped",
        "percent",
        "rate",
        "eta_s",
        "error",
        "file_name",
    ):
        click.echo(f"{key:>10}: {'' if d[key] is None else d[key]}")
    if state.fields.get("error_detail"):  # what admins see behind the references
        click.echo(f"    detail: {state.fields['error_detail']}")
    for message in d["messages"][-10:]:
        click.echo(f"   message: {message['text']}")


@cli.command()
@click.argument("job_id")
@with_appcontext
def watch(job_id: str) -> None:
    """Follow a job with a live progress bar until it ends."""
    try:
        last = None
        for state in _engine().follow(job_id, keepalive=2.0):
            if state is None:
                continue
            d = state.to_dict()
            line = f"\r{_bar(d)}  {d['processed']}/{d['total'] or '?'}  {d['text']['badge']:<10}"
            if line != last:
                click.echo(line, nl=False)
                last = line
            if state.status.terminal:
                click.echo(f"\n{d['text']['outcome_title']}")
                if d["error"]:
                    click.echo(f"Error: {d['error']}", err=True)
                if state.fields.get("error_detail"):  # the operator sees what admins see
                    click.echo(f"Detail: {state.fields['error_detail']}", err=True)
                sys.exit(1 if d["outcome"] in ("failed", "stalled") else 0)
    except BatchflowError as exc:
        _fail(exc)


def _signal(job_id: str, what: str) -> None:
    try:
        state = _engine().signal(job_id, what)
    except BatchflowError as exc:
        _fail(exc)
        return
    click.echo(f"{what} requested: {_line(state)}")


@cli.command()
@click.argument("job_id")
@with_appcontext
def stop(job_id: str) -> None:
    """Stop a job after its current step, keeping the work done."""
    _signal(job_id, "stop")


@cli.command()
@click.argument("job_id")
@with_appcontext
def cancel(job_id: str) -> None:
    """Cancel a job: stop it and undo the work done."""
    _signal(job_id, "cancel")


@cli.command()
@click.argument("job_id")
@with_appcontext
def pause(job_id: str) -> None:
    """Pause a job between steps."""
    _signal(job_id, "pause")


@cli.command()
@click.argument("job_id")
@with_appcontext
def resume(job_id: str) -> None:
    """Resume a paused job."""
    _signal(job_id, "resume")


@cli.command()
@click.argument("job_id")
@with_appcontext
def retry(job_id: str) -> None:
    """Start a new job over the ids that failed in JOB_ID."""
    engine = _engine()
    try:
        owner = engine.state(job_id).owner
        new_id = engine.retry_failed(job_id, owner=owner)
    except BatchflowError as exc:
        _fail(exc)
        return
    click.echo(new_id)


@cli.command()
@with_appcontext
def maintain() -> None:
    """Recover overdue steps and clean expired jobs now (what workers do every few seconds)."""
    _maintain()


@cli.command("prune", hidden=True)
@with_appcontext
def prune() -> None:
    """The old name of ``maintain``."""
    _maintain()


def _maintain() -> None:
    done = _engine().maintain(time.time(), force=True)
    click.echo(
        f"requeued {done['requeued']} overdue steps, cleaned {done['cleaned']} expired jobs, "
        f"tidied {done['finished']} index entries"
    )
