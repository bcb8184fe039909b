"""What the people who run batchflow ask of it: ``GET <prefix>/health``, and the fleet's report
(the workers seen, the queue) that ``flask batchflow workers`` prints.

The health check answers load balancers and orchestrators without a session: 200 with what it
checked, or 503 with which check failed. It checks that Redis answers, that the broker answers
(and how many messages wait in the queue), and that at least one worker consuming the queue was
seen within the workers' announcement time to live (:mod:`batchflow.fleet`). ``?check=redis,broker``
asks for some of them only (a web process's own dependencies, for a load balancer that should
keep serving pages while no worker runs).

It says nothing a stranger could use: no host names, no URLs, no exception messages (those go to
the log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Response, jsonify, request

from .context import State, get_state
from .exceptions import InvalidParams
from .formats import format_duration
from .i18n import gettext as _
from .records import ActiveJob
from .views import blueprint
from .workers import queue_depth

log = logging.getLogger("batchflow")

CHECKS = ("redis", "broker", "workers")


def _redis(state: State) -> dict[str, Any]:
    state.engine.store.ping()
    return {}


def _broker(state: State) -> dict[str, Any]:
    depth = queue_depth(state.celery, state.settings.queue, timeout=state.settings.redis_timeout)
    return {"waiting": depth.messages}


def _workers(state: State) -> dict[str, Any]:
    queue = state.settings.queue
    serving = state.engine.fleet.serving(queue)
    found: dict[str, Any] = {"seen": len(serving), "queue": queue}
    if not serving:
        found["ok"] = False
        found["error"] = (
            f"no worker consuming queue {queue!r} announced itself in the last "
            f"{state.engine.fleet.ttl:g} s"
        )
    return found


_RUN: dict[str, Callable[[State], dict[str, Any]]] = {
    "redis": _redis,
    "broker": _broker,
    "workers": _workers,
}


@blueprint.get("/health")
def health() -> Response:
    """200 when every check asked for passes, else 503; the body says what each found."""
    asked = _asked(request.args.get("check"))
    state = get_state()
    checks: dict[str, dict[str, Any]] = {}
    for name in asked:
        began = time.perf_counter()
        try:
            found = {"ok": True, **_RUN[name](state)}
        except Exception as exc:  # noqa: BLE001 - the answer says which part failed
            log.warning("health check: %s failed", name, exc_info=True)
            found = {"ok": False, "error": f"{name} did not answer ({type(exc).__name__})"}
        found["ms"] = round(1000 * (time.perf_counter() - began), 1)
        checks[name] = found
    healthy = all(found["ok"] for found in checks.values())
    response = jsonify({"status": "ok" if healthy else "failing", "checks": checks})
    response.status_code = 200 if healthy else 503
    return response


def _asked(check: str | None) -> tuple[str, ...]:
    if not check:
        return CHECKS
    asked = tuple(dict.fromkeys(part.strip() for part in check.split(",") if part.strip()))
    unknown = [name for name in asked if name not in CHECKS]
    if unknown or not asked:
        raise InvalidParams(
            _(
                "Unknown check %(names)s: ask for some of %(known)s.",
                names=", ".join(unknown) or repr(check),
                known=", ".join(CHECKS),
            )
        )
    return asked


def fleet_report(
    state: State, now: float | None = None, jobs: list[ActiveJob] | None = None
) -> dict[str, Any]:
    """The workers seen and the queue: what the broker holds (``broker.waiting``, or
    ``broker.error`` when it does not answer), and the steps that wait for a worker according
    to the jobs' own state (``waiting_steps``, and ``oldest_wait_s``: how long the oldest has
    waited since it was due). ``jobs``: the active jobs, if the caller read them already.
    JSON-ready."""
    now = time.time() if now is None else now
    settings, engine = state.settings, state.engine
    broker: dict[str, Any]
    try:
        depth = queue_depth(state.celery, settings.queue, timeout=settings.redis_timeout)
        broker = {"ok": True, "waiting": depth.messages, "consumers": depth.consumers}
    except Exception as exc:  # noqa: BLE001 - the report says the broker did not answer
        log.warning("the broker did not answer", exc_info=True)
        broker = {"ok": False, "error": f"broker did not answer ({type(exc).__name__})"}
    since = [
        s
        for job in (engine.store.active_jobs() if jobs is None else jobs)
        if (s := job.waiting_since(settings.queue_timeout, now)) is not None
    ]
    return {
        "queue": settings.queue,
        "workers": [w.as_dict() for w in engine.fleet.seen(now)],
        "broker": broker,
        "waiting_steps": len(since),
        "oldest_wait_s": round(now - min(since), 1) if since else None,
        "now": now,
    }


def fleet_lines(report: dict[str, Any]) -> list[str]:
    """``report`` as the lines ``flask batchflow workers`` prints."""
    now, queue = report["now"], report["queue"]
    rows = [("WORKER", "PID", "POOL", "QUEUES", "VERSION", "UP", "SEEN", "STEPS")]
    for w in report["workers"]:
        up = format_duration(now - w["started_at"])
        seen = format_duration(now - w["last_seen"])
        steps = f"{len(w['steps'])}/{w['concurrency']}"
        pool = f"{w['pool']} x{w['concurrency']}"
        rows.append(
            (w["name"], str(w["pid"]), pool, ",".join(w["queues"]), w["version"], up, seen, steps)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(n) for c, n in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if not report["workers"]:
        lines = [f"No worker seen: start one (celery -A worker worker -Q {queue})."]
    broker = report["broker"]
    held = f"{broker['waiting']} messages wait in the broker" if broker["ok"] else broker["error"]
    waiting = report["waiting_steps"]
    oldest = report["oldest_wait_s"]
    steps = f"{waiting} steps wait for a worker" + (
        f", the oldest for {format_duration(oldest)}" if oldest is not None else ""
    )
    return [*lines, f"Queue {queue}: {held}; {steps}."]
