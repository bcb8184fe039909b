"""The Celery side: the step, cleanup and maintenance tasks, as thin as a view.

:func:`make_celery` builds a Celery app explicitly (no default app, no ``shared_task``), JSON only,
with late acks and reject-on-worker-loss, and registers batchflow's tasks on it by name. Every
worker also announces itself and runs maintenance in a bootstep thread (:mod:`.workers`), so
no separate beat process is needed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from celery import Celery

from .engine import Engine
from .gcfreeze import freeze_after_first_step
from .logs import about_job
from .workers import worker_step

STEP_TASK = "batchflow.step"
CLEANUP_TASK = "batchflow.cleanup"
MAINTAIN_TASK = "batchflow.maintain"
NOTIFY_TASK = "batchflow.notify"
#: The step message's header that says when the step is due (seconds since the epoch).
DUE_HEADER = "batchflow_due"

# Publishing to a broker that is down fails fast instead of hanging the request that starts a job.
_PUBLISH_RETRY = {
    "max_retries": 2,
    "interval_start": 0.1,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


class CeleryDispatcher:
    """The engine's way to reach workers: sends batchflow's tasks by name."""

    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue

    def enqueue_step(self, job_id: str, seq: int, countdown: float = 0.0, lane: int = 0) -> None:
        self.app.send_task(
            STEP_TASK,
            # A job in one chain keeps the two arguments every worker version understands.
            args=(job_id, seq, lane) if lane else (job_id, seq),
            queue=self.queue,
            countdown=countdown or None,
            retry=True,
            retry_policy=_PUBLISH_RETRY,
            # When the step is due: the worker measures its wait in the queue from it.
            headers={DUE_HEADER: round(time.time() + countdown, 3)},
        )

    def enqueue_cleanup(self, job_id: str) -> None:
        self.app.send_task(
            CLEANUP_TASK, args=(job_id,), queue=self.queue, retry=True, retry_policy=_PUBLISH_RETRY
        )

    def enqueue_notify(self, job_id: str) -> None:
        self.app.send_task(
            NOTIFY_TASK, args=(job_id,), queue=self.queue, retry=True, retry_policy=_PUBLISH_RETRY
        )


def make_celery(
    engine: Engine,
    *,
    main: str = "batchflow",
    context: Callable[[], AbstractContextManager[Any]] | None = None,
    config: dict[str, Any] | None = None,
) -> Celery:
    """Build the Celery app that runs ``engine``'s jobs and connect the engine to it.

    :param engine: the engine whose steps the tasks run.
    :param main: the Celery app's name.
    :param context: a callable returning a context manager every task runs inside (the Flask
        extension passes ``app.app_context`` so handlers can use the app's database).
    :param config: extra Celery settings, applied last (``broker_transport_options`` and so on).
    """
    settings = engine.settings
    app = Celery(main, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_hijack_root_logger=False,
        broker_transport_options={"socket_connect_timeout": 3, "socket_timeout": 10},
    )
    if config:
        config = dict(config)
        transport = {
            **app.conf.broker_transport_options,
            **config.pop("broker_transport_options", {}),
        }
        app.conf.update(config, broker_transport_options=transport)
    enter = context or contextlib.nullcontext

    @app.task(name=STEP_TASK, ignore_result=True, shared=False, bind=True)  # type: ignore[untyped-decorator]
    def step(task: Any, job_id: str, seq: int, lane: int = 0) -> str:
        """Run one step of a job, or of one of its lanes (a duplicate or stale delivery does
        nothing)."""
        due = (task.request.headers or {}).get(DUE_HEADER)
        with enter():
            outcome = engine.run_step(
                job_id, int(seq), int(lane), due=due if isinstance(due, (int, float)) else None
            )
        if outcome.handler and engine.settings.gc_freeze:
            freeze_after_first_step(outcome.handler)  # the step's objects are gone by now
        return str(outcome)

    @app.task(name=CLEANUP_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def cleanup(job_id: str) -> bool:
        """Run a job's cleanup_job, once."""
        with enter(), about_job(job_id):
            return engine.cleanup(job_id)

    @app.task(name=NOTIFY_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def notify(job_id: str) -> bool:
        """Deliver an ended job's pending notifications (maintenance sends this task)."""
        with enter(), about_job(job_id):
            return engine.notify(job_id)

    @app.task(name=MAINTAIN_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def maintain() -> dict[str, int]:
        """Recover overdue steps and clean expired jobs (for apps that also run celery beat)."""
        with enter():
            return engine.maintain()

    app.steps["worker"].add(worker_step(engine, enter, STEP_TASK))
    engine.dispatcher = CeleryDispatcher(app, settings.queue)
    return app
