"""Command line: ``flask batchflow ...`` inside an app (``batchflow demo`` is the demo's own).

Exit codes (the README's "Command line" lists them too):

* 0: done (an action was recorded, a job started, a list printed);
* 1: ``watch`` only: the job ended badly (failed or stalled);
* 2: a usage error, an unknown job or handler, parameters or ids the handler refuses;
* 3: not allowed now: the action does not apply in the job's state (pause a paused job, stop a
  finished one...), the owner's limit of active jobs is reached, the handler's permission hook
  refuses the owner;
* 4: Redis or the broker does not answer: nothing was done, try again later.

``list``, ``show``, ``start`` and ``retry`` take ``--json`` for scripts: one JSON document on
stdout (errors still go to stderr as text, with the exit codes above).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

import click
from flask import current_app
from flask.cli import with_appcontext

from .context import get_state
from .engine import Engine
from .exceptions import (
    BatchflowError,
    InvalidParams,
    InvalidTransition,
    LimitReached,
    PermissionDenied,
    Unavailable,
    UnknownHandler,
)
from .intake import validate_form
from .operations import fleet_lines, fleet_report
from .schema import Signal, Status
from .state import JobState

F = TypeVar("F", bound=Callable[..., Any])

#: The outcomes ``list --status`` accepts besides the statuses, and the status each ends in.
OUTCOMES = {"completed_with_failures": Status.COMPLETED, "stalled": Status.FAILED}
#: How many jobs of one status ``list --status <outcome>`` reads at most to find its rows.
OUTCOME_SCAN = 10_000
#: Who owns a job started from the command line without ``--owner`` (admins see it on the web).
CLI_OWNER = "cli"
HEADER = ("ID", "HANDLER", "STATE", "%", "PROGRESS", "RESULT")


def _engine() -> Engine:
    return get_state().engine


def exit_code(exc: BatchflowError) -> int:
    """The exit code for ``exc`` (see the module's docstring)."""
    if isinstance(exc, Unavailable):
        return 4
    if isinstance(exc, (InvalidTransition, LimitReached, PermissionDenied)):
        return 3
    return 2


def _fail(exc: BatchflowError) -> NoReturn:
    if isinstance(exc, UnknownHandler):  # the operator needs the developer's message
        known = ", ".join(get_state().registry.names()) or "none"
        click.echo(f"Error: {exc.developer_message} Handlers this app knows: {known}.", err=True)
        sys.exit(exit_code(exc))
    detail = exc.developer_message if isinstance(exc, Unavailable) else exc
    click.echo(f"Error: {detail}", err=True)
    sys.exit(exit_code(exc))


def _reporting(command: F) -> F:
    """Run ``command`` in the app's context; a batchflow error becomes its message on stderr
    and its exit code, never a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BatchflowError as exc:
            _fail(exc)

    return with_appcontext(run)  # type: ignore[return-value]


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def _row(state: JobState) -> tuple[str, ...]:
    """One job's cells under :data:`HEADER`: jobs that count good and bad show them, others
    (a file export, a count) show how many units they processed."""
    d = state.to_dict()
    total = "?" if d["total"] is None else d["total"]
    percent = "" if d["percent"] is None else f"{d['percent']:.0f}%"
    if d["tallied"]:
        result = f"good {d['good']}  bad {d['bad']}"
    else:
        result = f"{d['processed']} processed"
    return (d["id"], d["handler"], d["text"]["badge"], percent, f"{d['processed']}/{total}", result)


def _table(rows: Iterable[tuple[str, ...]]) -> list[str]:
    """Rows under :data:`HEADER`, columns as wide as their widest cell (the % column aligned
    right, the last column not padded)."""
    rows = [HEADER, *rows]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(HEADER))]
    lines = []
    for row in rows:
        cells = [
            str(cell).rjust(width) if i == 3 else str(cell).ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        cells[-1] = str(row[-1])
        lines.append("  ".join(cells).rstrip())
    return lines


def _line(state: JobState) -> str:
    """One job on one line, for the action commands' answer."""
    return "  ".join(cell for cell in _row(state) if cell)


def _bar(d: dict[str, Any], width: int = 30) -> str:
    if d["percent"] is None:
        return "[" + "." * width + "]"
    filled = int(width * d["percent"] / 100)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {d['percent']:5.1f}%"


def _details(state: JobState) -> dict[str, Any]:
    """The job's status JSON, and what admins see behind an error's reference."""
    return {**state.to_dict(), "error_detail": state.fields.get("error_detail") or None}


@click.group("batchflow")
def cli() -> None:
    """Inspect, start and steer batchflow jobs.

    Exit codes: 0 done; 1 (watch) the job failed; 2 usage error, unknown job or handler, bad
    parameters; 3 not allowed now (the job's state, the owner's limit, permission); 4 Redis or
    the broker does not answer.
    """


def _jobs(owner: str | None, status: str | None, limit: int) -> list[JobState]:
    """The newest ``limit`` jobs, of ``status`` (a status, or an outcome of :data:`OUTCOMES`)."""
    engine = _engine()
    if status not in OUTCOMES:
        return engine.jobs(owner, limit=limit, status=status)
    base = OUTCOMES[status].value
    window = limit
    while True:
        states = engine.jobs(owner, limit=window, status=base)
        matched = [s for s in states if s.outcome == status]
        if len(matched) >= limit or len(states) < window or window >= OUTCOME_SCAN:
            return matched[:limit]
        window = min(window * 4, OUTCOME_SCAN)


@cli.command("list")
@click.option("--owner", default=None, help="Only this owner's jobs (default: everyone's).")
@click.option(
    "--status",
    default=None,
    type=click.Choice([s.value for s in Status] + list(OUTCOMES)),
    help="Only jobs in this status, or with this outcome (completed_with_failures, stalled).",
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help='Print {"jobs": [status JSON, ...]}.')
@_reporting
def list_jobs(owner: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List recent jobs, newest first."""
    states = _jobs(owner, status, limit)
    if as_json:
        _emit_json({"jobs": [s.to_dict() for s in states]})
        return
    if not states:
        click.echo("No jobs.")
        return
    for line in _table(_row(state) for state in states):
        click.echo(line)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job's status JSON.")
@_reporting
def show(job_id: str, as_json: bool) -> None:
    """Show one job in full."""
    state = _engine().state(job_id)
    if as_json:
        _emit_json(_details(state))
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
@_reporting
def watch(job_id: str) -> None:
    """Follow a job with a live progress bar until it ends (exit 1 if it failed)."""
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


def refusal(state: JobState, what: str) -> str | None:
    """Why ``what`` (stop, cancel, pause, resume, continue, confirm) does not apply to the job
    now, or None if it does. The web offers only the actions that apply; the command line says
    why not."""
    signal = Signal(what)
    status = state.status
    if signal.capability not in state.capabilities:
        return f"This job does not support {what}."
    if what in state.actions():
        return None
    if signal is Signal.CONFIRM:
        return f"Only a job awaiting confirmation can be confirmed; this one is {status.value}."
    if signal is Signal.CONTINUE:
        if status is Status.STOPPED:
            return "This job's output was already cleaned up: it cannot continue."
        return f"Only a stopped job can continue; this one is {status.value}."
    if status.terminal:
        return f"The job has already ended ({status.value}); there is nothing to {what}."
    if signal is Signal.PAUSE and (status is Status.PAUSED or state.pausing):
        when = "" if status is Status.PAUSED else " (it pauses after its current step)"
        return f"The job is {'paused' if status is Status.PAUSED else 'pausing'} already{when}."
    if signal is Signal.RESUME:
        return f"The job is not paused (it is {status.value}); there is nothing to resume."
    if status.value == {"stop": "stopping", "cancel": "canceling"}.get(what):
        return f"The job is {status.value} already."
    return f"The job cannot {what} while it is {status.value}."


def _signal(job_id: str, what: str) -> None:
    engine = _engine()
    why = refusal(engine.state(job_id), what)
    if why is not None:
        raise InvalidTransition(why)
    state = engine.signal(job_id, what)
    click.echo(f"{what} requested: {_line(state)}")


@cli.command()
@click.argument("job_id")
@_reporting
def stop(job_id: str) -> None:
    """Stop a job after its current step, keeping the work done."""
    _signal(job_id, "stop")


@cli.command()
@click.argument("job_id")
@_reporting
def cancel(job_id: str) -> None:
    """Cancel a job: stop it and undo the work done."""
    _signal(job_id, "cancel")


@cli.command()
@click.argument("job_id")
@_reporting
def pause(job_id: str) -> None:
    """Pause a job between steps (exit 3 if it is paused or pausing already)."""
    _signal(job_id, "pause")


@cli.command()
@click.argument("job_id")
@_reporting
def resume(job_id: str) -> None:
    """Resume a paused job (exit 3 if it is not paused)."""
    _signal(job_id, "resume")


@cli.command()
@click.argument("job_id")
@_reporting
def confirm(job_id: str) -> None:
    """Run a job whose preview awaits confirmation (exit 3 if it is not awaiting it)."""
    _signal(job_id, "confirm")


@cli.command("continue")
@click.argument("job_id")
@_reporting
def continue_(job_id: str) -> None:
    """Continue a stopped job from where it stopped, as the same job (exit 3 if it is not
    stopped)."""
    _signal(job_id, "continue")


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help='Print {"id": ..., "created": ...}.')
@_reporting
def retry(job_id: str, as_json: bool) -> None:
    """Start a new job over the ids that failed in JOB_ID; prints its id."""
    engine = _engine()
    owner = engine.state(job_id).owner
    started = engine.retry(job_id, owner=owner)
    _started(started.job_id, started.created, as_json)


def _started(job_id: str, created: bool, as_json: bool) -> None:
    if as_json:
        _emit_json({"id": job_id, "created": created})
        return
    click.echo(job_id)
    if not created:
        click.echo(
            "(an identical job of this owner's is under way: that is its id; nothing new "
            "was started)",
            err=True,
        )


def _start_params(pairs: tuple[str, ...], params_json: str | None) -> dict[str, Any]:
    """``--params`` (a JSON object), then each ``--param key=value`` (a string, as a web form
    sends it) over it."""
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            params = json.loads(params_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--params") from None
        if not isinstance(params, dict):
            raise click.BadParameter('must be a JSON object: {"key": value}', param_hint="--params")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--param")
        params[key] = value
    return params


def _start_ids(ids: tuple[str, ...], ids_file: Any) -> list[str] | None:
    """``--id`` values, then the lines of ``--ids-file`` (blank lines skipped); None if
    neither was given (a job that takes no ids, or makes its own)."""
    if not ids and ids_file is None:
        return None
    found = list(ids)
    if ids_file is not None:
        found += [line.strip() for line in ids_file if line.strip()]
    return found


def _check_permission(handler: str, owner: str) -> None:
    """What the web asks before creating a job: the handler's permission hook, given the
    owner's id (what the hook receives on the web in an app without Flask-Login)."""
    spec = get_state().registry.get(handler)
    try:
        allowed = spec.allows(owner)
    except Exception as exc:  # noqa: BLE001 - a hook written for Flask-Login's user object
        raise PermissionDenied(
            f"The permission hook of {handler!r} could not judge owner {owner!r} "
            f"({type(exc).__name__}: {exc}). Start it with --skip-permission if you mean to."
        ) from None
    if not allowed:
        raise PermissionDenied(f"{owner!r} is not allowed to start {handler!r}.")


@cli.command()
@click.argument("handler")
@click.option("--param", "pairs", multiple=True, metavar="KEY=VALUE", help="A parameter (text).")
@click.option("--params", "params_json", metavar="JSON", help="Parameters as a JSON object.")
@click.option("--id", "ids", multiple=True, metavar="ID", help="An id for an item job.")
@click.option(
    "--ids-file", type=click.File("r"), help="Ids for an item job, one a line ('-': stdin)."
)
@click.option("--owner", default=CLI_OWNER, show_default=True, help="Who owns the job.")
@click.option("--lanes", type=int, help="Lanes for an item job (up to its handler's max_lanes).")
@click.option("--skip-permission", is_flag=True, help="Do not ask the handler's permission hook.")
@click.option("--json", "as_json", is_flag=True, help='Print {"id": ..., "created": ...}.')
@_reporting
def start(
    handler: str,
    pairs: tuple[str, ...],
    params_json: str | None,
    ids: tuple[str, ...],
    ids_file: Any,
    owner: str,
    lanes: int | None,
    skip_permission: bool,
    as_json: bool,
) -> None:
    """Start a job of HANDLER and print its id.

    The same checks as a start on the web: the handler's permission hook (given the owner's
    id), its parameters form and validate_params, BATCHFLOW_MAX_IDS, the owner's limit of
    active jobs and de-duplication (the id printed is then the identical job's).
    """
    params = _start_params(pairs, params_json)
    id_list = _start_ids(ids, ids_file)
    if not skip_permission:
        _check_permission(handler, owner)
    form_class = get_state().registry.get(handler).handler_class.params_form
    try:
        if form_class is not None:
            with current_app.test_request_context():  # Flask-WTF forms want a request
                params = validate_form(form_class, params)
        started = _engine().submit(handler, owner=owner, params=params, ids=id_list, lanes=lanes)
    except InvalidParams as exc:
        for field, messages in exc.errors.items():
            click.echo(f"  {field}: {' '.join(messages)}", err=True)
        raise
    _started(started.job_id, started.created, as_json)


@cli.command()
@_reporting
def maintain() -> None:
    """Recover overdue steps and clean expired jobs now (what workers do every few seconds)."""
    _maintain()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the workers and the queue as JSON.")
@_reporting
def workers(as_json: bool) -> None:
    """The workers seen (each announces itself every few seconds) and the queue: messages in
    the broker, steps waiting for a worker."""
    report = fleet_report(get_state())
    if as_json:
        _emit_json(report)
        return
    for line in fleet_lines(report):
        click.echo(line)


@cli.command("prune", hidden=True)
@_reporting
def prune() -> None:
    """The old name of ``maintain``."""
    _maintain()


def _maintain() -> None:
    done = _engine().maintain(time.time(), force=True)
    click.echo(
        f"requeued {done['requeued']} overdue steps, cleaned {done['cleaned']} expired jobs, "
        f"tidied {done['finished']} index entries"
    )
