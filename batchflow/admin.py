"""The admin page, ``GET <prefix>/admin/``: the workers, the queue, every owner's active jobs
(live, those that wait too long first), the jobs that failed lately, counts by handler and
outcome, and the handlers with their settings; ``POST <prefix>/admin/bulk`` stops, pauses or
resumes every active job of one handler, after a confirmation page.

Only for users the app's ``can_admin`` hook allows: everyone else, signed in or not, gets the same
404 as an unknown page. Server-rendered like the other pages (the active jobs' rows update
themselves as the jobs list's do); ``?format=json`` answers the same overview as JSON.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from flask import abort, flash, jsonify, redirect, render_template, request, url_for

from .census import Census
from .context import State, get_state, is_admin, unknown_page
from .exceptions import BatchflowError
from .history import outcome_of, summarize
from .i18n import gettext as _
from .operations import fleet_report
from .records import ActiveJob
from .registry import HandlerSpec
from .schema import Status, is_terminal
from .state import JobState
from .views import blueprint, status_json, wants_json
from .words import NO_WORKER_AFTER

#: The newest jobs the counts read (one pipelined read per thousand).
COUNTED = 5000
#: The active jobs the page lists, those that need attention first.
ACTIVE_SHOWN = 200
#: The jobs that failed lately the page lists.
FAILED_SHOWN = 10
#: What the bulk form may ask of a handler's active jobs.
BULK = ("stop", "pause", "resume")
#: The columns of the counts: active, then each way a job ends.
COUNT_COLUMNS: tuple[str, ...] = ("active", "completed", "completed_with_failures", "failed")
COUNT_COLUMNS += ("stalled", "stopped", "canceled")


def _admin() -> State:
    """The app's state if the request's user is an admin; else the 404 of an unknown page."""
    state = get_state()
    user = state.identity()
    if not user or not is_admin(str(user)):
        unknown_page()
    return state


@blueprint.app_context_processor
def admin_link() -> dict[str, Any]:
    return {"batchflow_admin_url": admin_page_url}


def admin_page_url() -> str | None:
    """The admin page's URL if the request's user is an admin, else None (for the pages' top
    bar: asked only when a page is drawn)."""
    try:
        user = get_state().identity()
    except Exception:  # noqa: BLE001 - an identity hook that needs what this request lacks
        return None
    return url_for("batchflow.admin") if user and is_admin(str(user)) else None


@blueprint.get("/admin/")
def admin() -> Any:
    state = _admin()
    data = overview(state)
    if wants_json():
        return jsonify(data)
    return render_template("batchflow/admin.html", bulk=BULK, columns=COUNT_COLUMNS, **data)


def overview(state: State, now: float | None = None) -> dict[str, Any]:
    """Everything the admin page shows, JSON-ready."""
    now = time.time() if now is None else now
    jobs = state.engine.store.active_jobs()
    report = fleet_report(state, now, jobs)
    rows, more = Census(state.engine.store.client, state.engine.store.keys).newest(COUNTED)
    return {
        "fleet": report,
        "active": _active(state, jobs, now),
        "failed": [status_json(s) for s in _failed(state, rows)],
        "counts": _counts(rows),
        "counted": len(rows),
        "counted_all": not more,
        "handlers": _handlers(state, now),
    }


def _handlers(state: State, now: float) -> list[dict[str, Any]]:
    """Each registered handler's settings and the figures of its kept runs."""
    specs = list(state.registry)
    runs = state.engine.notifier.history.last_of([s.name for s in specs], now)
    return [
        {**_settings(state, spec), "history": summarize(runs[spec.name]).as_dict()}
        for spec in specs
    ]


def _active(state: State, jobs: list[ActiveJob], now: float) -> list[dict[str, Any]]:
    """Every owner's active jobs as the status JSON, each with ``waiting_s`` (how long its
    step has waited for a worker, None when none waits) and ``attention`` (waits longer than
    :data:`NO_WORKER_AFTER`); those needing attention first, the longest wait first."""
    waited: dict[str, float | None] = {}
    for job in jobs:
        if job.status is None or is_terminal(job.status):
            continue
        since = job.waiting_since(state.settings.queue_timeout, now)
        wait = None if since is None else now - since
        old = waited.get(job.id)
        waited[job.id] = wait if old is None else max(old, wait or 0.0)  # a job's lanes: longest
    ids = sorted(waited, key=lambda i: -(waited[i] or 0.0))[:ACTIVE_SHOWN]
    shown = []
    for fields, messages in state.engine.store.snapshots(ids):
        data = status_json(JobState.from_stored(fields, messages), admin=True)
        wait = waited.get(data["id"])
        data["step_wait_s"] = None if wait is None else round(wait, 1)
        data["attention"] = wait is not None and wait >= NO_WORKER_AFTER
        shown.append(data)
    shown.sort(key=lambda d: (not d["attention"], -(waited[d["id"]] or 0), d["created_at"]))
    return shown


def _failed(state: State, rows: list[dict[str, str]]) -> list[JobState]:
    ids = [r["id"] for r in rows if r["status"] == Status.FAILED.value][:FAILED_SHOWN]
    return [JobState.from_stored(f, m) for f, m in state.engine.store.snapshots(ids)]


def _counts(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Per handler, how many of the counted jobs are active and how many ended each way."""
    per: dict[str, Counter[str]] = {}
    for row in rows:
        column = outcome_of(row) or "active"
        per.setdefault(row["handler"], Counter())[column] += 1
    return [
        {"handler": name, "total": sum(c.values()), **{k: c.get(k, 0) for k in COUNT_COLUMNS}}
        for name, c in sorted(per.items())
    ]


def _settings(state: State, spec: HandlerSpec) -> dict[str, Any]:
    """A handler's settings as the admin page lists them."""
    cls = spec.handler_class
    limit = cls.max_active_jobs
    settings: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind.value,
        "title": cls.labels.get("title") or spec.name,
        "actions": [
            a
            for a in ("stop", "cancel", "pause", "continue", "retry")
            if getattr(cls, f"can_{a}", False)
        ],
        "max_active_jobs": state.settings.max_active_jobs if limit is None else limit,
        "batch_size": cls.batch_size,
        "step_delay": cls.step_delay,
        "deduplicate": cls.deduplicate,
        "permission": spec.permission is not None,
        "recheck_permission": spec.recheck_permission,
        "lanes": getattr(cls, "lanes", None),
        "max_lanes": getattr(cls, "max_lanes", None),
        "notify_email": cls.notify_email,
        "webhook": bool(cls.webhook_url),
    }
    return settings


@blueprint.post("/admin/bulk")
def bulk() -> Any:
    """Stop, pause or resume every active job of one handler; without ``confirm=yes``, the page
    that asks first (a page without JavaScript confirms with it too)."""
    state = _admin()
    handler, action = request.form.get("handler", ""), request.form.get("action", "")
    if action not in BULK:
        abort(400, _("Unknown action %(action)r.", action=action))
    targets = [
        s
        for s in _active_states(state)
        if s.fields.get("handler") == handler and action in s.actions()
    ]
    if request.form.get("confirm") != "yes":
        return render_template(
            "batchflow/admin_confirm.html",
            handler=handler,
            action=action,
            jobs=[status_json(s, admin=True) for s in targets],
        )
    done = 0
    for target in targets:
        try:
            state.engine.signal(target.id, action)
            done += 1
        except BatchflowError:  # it ended, or its state changed, since the page was shown
            continue
    flash(
        _(
            "%(action)s asked of %(done)s of %(count)s active jobs of %(handler)s.",
            action=_(action.capitalize()),
            done=done,
            count=len(targets),
            handler=handler,
        )
    )
    return redirect(url_for("batchflow.admin"), code=303)


def _active_states(state: State) -> list[JobState]:
    ids = sorted({j.id for j in state.engine.store.active_jobs() if j.status})
    return [JobState.from_stored(f, m) for f, m in state.engine.store.snapshots(ids)]


@blueprint.get("/admin/handlers/<name>")
def handler_runs(name: str) -> Any:
    """One handler's settings and its last runs (kept after each job's own state expired)."""
    state = _admin()
    spec = state.registry.find(name)
    history = state.engine.notifier.history
    runs = history.last(name, now=time.time())
    if spec is None and not runs:
        abort(404)
    data = {
        "handler": _settings(state, spec) if spec else {"name": name},
        "summary": summarize(runs).as_dict(),
        "runs": [r.as_dict() for r in runs],
        "kept": {"runs": history.runs, "days": history.days},
    }
    if wants_json():
        return jsonify(data)
    return render_template("batchflow/admin_handler.html", **data)
