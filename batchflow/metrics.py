"""``GET <prefix>/metrics``: Prometheus's text format, written by ``prometheus_client`` (the
``metrics`` extra; without it the route answers 501).

For admins (their session), or for a scraper that presents ``BATCHFLOW_METRICS_TOKEN`` as
``Authorization: Bearer <token>``; to anyone else, the 404 of a URL that does not exist. Every
figure is read from Redis at each scrape (:mod:`batchflow.meter`, the workers seen, the
broker's count), so every web process answers the same. The README's Operations section says
what each metric means.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Response, request

from .context import State, get_state, is_admin, unknown_page
from .meter import (
    DURATION,
    DURATION_BUCKETS,
    DURATION_SUM,
    STEPS,
    WAIT,
    WAIT_BUCKETS,
    WAIT_SUM,
    Figures,
)
from .views import blueprint
from .workers import queue_depth

log = logging.getLogger("batchflow")


def _may_scrape(state: State) -> bool:
    token = state.settings.metrics_token
    given = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return True
    try:
        user = state.identity()
    except Exception:  # noqa: BLE001 - an identity hook that needs what a scraper lacks
        return False
    return bool(user) and is_admin(str(user))


@blueprint.get("/metrics")
def metrics() -> Response:
    state = get_state()
    if not _may_scrape(state):
        unknown_page()
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    except ImportError:
        text = "GET /jobs/metrics needs prometheus_client: pip install 'batchflow[metrics]'\n"
        return Response(text, status=501, mimetype="text/plain")
    registry = _Registry(state)
    response = Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


class _Registry:
    """What ``generate_latest`` collects from: one read of every figure per scrape."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Any:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        state = self.state
        figures = state.engine.notifier.meter.read()
        started = CounterMetricFamily(
            "batchflow_jobs_started", "Jobs started, by handler.", labels=["handler"]
        )
        for handler, n in sorted(figures.started.items()):
            started.add_metric([handler], n)
        yield started
        ended = CounterMetricFamily(
            "batchflow_jobs_ended",
            "Jobs ended, by handler and outcome (counted as each leaves the active index).",
            labels=["handler", "outcome"],
        )
        for (handler, outcome), n in sorted(figures.ended.items()):
            ended.add_metric([handler, outcome], n)
        yield ended
        active = GaugeMetricFamily(
            "batchflow_jobs_active", "Active jobs, by status.", labels=["status"]
        )
        for status, n in sorted(figures.active.items()):
            active.add_metric([status], n)
        yield active
        yield from _steps(figures, CounterMetricFamily, HistogramMetricFamily)
        items = CounterMetricFamily(
            "batchflow_items",
            "Items done (good) and failed (bad), by handler.",
            labels=["handler", "result"],
        )
        for (handler, result), n in sorted(figures.items.items()):
            items.add_metric([handler, result], n)
        yield items
        yield from _fleet(state, GaugeMetricFamily)


def _steps(figures: Figures, counter: Any, histogram: Any) -> Any:
    committed = counter(
        "batchflow_steps_committed", "Steps committed, by handler.", labels=["handler"]
    )
    duration = histogram(
        "batchflow_step_duration_seconds",
        "Seconds from a step's claim to its commit, by handler.",
        labels=["handler"],
    )
    wait = histogram(
        "batchflow_queue_wait_seconds",
        "Seconds a step waited for a worker: its claim minus when it was due, by handler.",
        labels=["handler"],
    )
    for handler, m in sorted(figures.meters.items()):
        committed.add_metric([handler], m[STEPS])
        duration.add_metric(
            [handler],
            _cumulative(DURATION_BUCKETS, m[DURATION : DURATION + len(DURATION_BUCKETS) + 1]),
            m[DURATION_SUM] / 1e6,
        )
        wait.add_metric(
            [handler],
            _cumulative(WAIT_BUCKETS, m[WAIT : WAIT + len(WAIT_BUCKETS) + 1]),
            m[WAIT_SUM] / 1e6,
        )
    yield committed
    yield duration
    yield wait
    recovered = counter(
        "batchflow_steps_recovered",
        "Steps sent again after their worker was lost (maintenance took them over).",
    )
    recovered.add_metric([], figures.recovered)
    yield recovered


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    total, buckets = 0, []
    for bound, n in zip([*[repr(b) for b in bounds], "+Inf"], counts, strict=True):
        total += n
        buckets.append((bound, total))
    return buckets


def _fleet(state: State, gauge: Any) -> Any:
    queue = state.settings.queue
    seen = state.engine.fleet.seen()
    workers = gauge("batchflow_workers", "Workers seen (each announces itself every few seconds).")
    workers.add_metric([], len(seen))
    yield workers
    slots = gauge(
        "batchflow_worker_slots", "Steps the workers seen may run at once (their concurrency)."
    )
    slots.add_metric([], sum(w.concurrency for w in seen))
    yield slots
    running = gauge("batchflow_worker_steps_running", "Steps the workers seen run now.")
    running.add_metric([], sum(len(w.steps) for w in seen))
    yield running
    up = gauge("batchflow_broker_up", "1 when the broker answered this scrape, else 0.")
    try:
        depth = queue_depth(state.celery, queue, timeout=state.settings.redis_timeout)
    except Exception:  # noqa: BLE001 - the scrape says the broker did not answer
        log.warning("metrics: the broker did not answer", exc_info=True)
        up.add_metric([], 0)
        yield up
        return
    up.add_metric([], 1)
    yield up
    messages = gauge(
        "batchflow_queue_messages", "Messages waiting in the broker's queue.", labels=["queue"]
    )
    messages.add_metric([queue], depth.messages)
    yield messages
