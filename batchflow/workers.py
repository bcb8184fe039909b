"""The worker's own thread, and what the broker says about the queue.

Every Celery worker runs :func:`worker_step`, a bootstep with one thread that, every
``BATCHFLOW_MAINTENANCE_INTERVAL``, announces the worker in Redis (:mod:`batchflow.fleet`: host,
pid, pool, concurrency, queues, version, the steps it runs now) and runs a round of maintenance.
:func:`queue_depth` asks the broker (Redis or RabbitMQ) how many messages wait in a queue.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

from celery import Celery, bootsteps
from celery.concurrency import ALIASES
from celery.worker import state as worker_state

from .engine import Engine
from .fleet import HeldStep, WorkerSeen

log = logging.getLogger("batchflow")


def _version() -> str:
    try:
        return importlib.metadata.version("batchflow")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


_VERSION = _version()


def announce_handlers(engine: Engine) -> None:
    """Log, when a worker starts, the handlers it can run; an error if it has none (its app
    imports no module that registers one: every job it receives would fail)."""
    names = engine.registry.names()
    if names:
        log.info("batchflow worker ready; handlers registered: %s", ", ".join(names))
        return
    log.error(
        "batchflow worker: no job handlers are registered in this worker, so every job it "
        "receives will fail. Import the modules that register them (@registry.register(...)) "
        "in the worker's app: the module `celery -A` loads, e.g. worker.py, calls create_app(), "
        "which must import them (e.g. import myapp.jobs)."
    )


def worker_step(
    engine: Engine, enter: Callable[[], AbstractContextManager[Any]], step_task: str
) -> type[bootsteps.StartStopStep]:
    """A worker bootstep that announces the worker and runs :meth:`Engine.maintain` every
    maintenance interval; ``step_task`` is the name of the task that runs steps."""

    class WorkerThread(bootsteps.StartStopStep):  # type: ignore[misc]
        label = "batchflow maintenance"

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None
            self._worker = parent
            self._name = f"{parent.hostname}:{os.getpid()}"
            self._started = time.time()

        def start(self, parent: Any) -> None:
            announce_handlers(engine)
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name="batchflow-maintenance", daemon=True
            )
            self._thread.start()

        def stop(self, parent: Any) -> None:  # a warm shutdown: the round in progress ends
            self._halt(wait=True)

        def terminate(self, parent: Any) -> None:  # a cold shutdown: nothing is waited for
            self._halt(wait=False)

        def _halt(self, *, wait: bool) -> None:
            self._stop.set()
            if wait and self._thread is not None:
                self._thread.join(timeout=5)
            try:
                engine.fleet.withdraw(self._name)
            except Exception:  # noqa: BLE001 - its record expires by itself
                log.warning("could not withdraw worker %s from the workers seen", self._name)

        def _loop(self) -> None:
            # Announced at once (the health check and the pages see a new worker within a
            # round trip); the first round of maintenance after one interval, as ever.
            self._announce()
            interval = engine.settings.maintenance_interval
            while not self._stop.wait(interval):
                self._announce()
                try:
                    with enter():
                        engine.maintain()
                except Exception:  # noqa: BLE001 - the next round tries again
                    log.warning("batchflow maintenance failed", exc_info=True)

        def _announce(self) -> None:
            if self._stop.is_set():
                return  # withdrawn, or about to be
            try:
                engine.fleet.announce(self._describe())
            except Exception:  # noqa: BLE001 - the next round tries again
                log.warning("could not announce worker %s", self._name, exc_info=True)

        def _describe(self) -> WorkerSeen:
            worker = self._worker
            return WorkerSeen(
                name=self._name,
                host=socket.gethostname(),
                pid=os.getpid(),
                concurrency=int(worker.concurrency or 1),
                pool=_pool_name(worker.pool_cls),
                queues=_queues(worker.app),
                version=_VERSION,
                started_at=self._started,
                last_seen=time.time(),
                steps=_held_steps(step_task),
            )

    return WorkerThread


def _pool_name(pool: Any) -> str:
    """``prefork``, ``threads``, ``solo``...: the worker's ``-P``, as a name or as its class."""
    if isinstance(pool, str):
        return pool
    where = f"{getattr(pool, '__module__', '')}:{getattr(pool, '__name__', '')}"
    names = [alias for alias, path in ALIASES.items() if path == where]
    return names[0] if names else where


def _queues(app: Celery) -> tuple[str, ...]:
    queues = app.amqp.queues
    return tuple(sorted(queues.consume_from or queues))


def _held_steps(step_task: str) -> tuple[HeldStep, ...]:
    """The steps this worker's pool runs now (Celery's own list of accepted requests)."""
    held = []
    for request in list(worker_state.active_requests):
        if request.name != step_task:
            continue
        args = list(request.args or ())
        try:
            job_id, seq, lane = str(args[0]), int(args[1]), int(args[2]) if len(args) > 2 else 0
        except (IndexError, TypeError, ValueError):
            continue
        held.append(HeldStep(job_id, seq, lane, getattr(request, "time_start", None)))
    return tuple(sorted(held, key=lambda s: (s.job_id, s.lane)))


class QueueDepth(NamedTuple):
    """What the broker says about a queue: messages ready for a worker, and the consumers it
    knows of (RabbitMQ counts them; Redis does not: None)."""

    messages: int
    consumers: int | None


def queue_depth(app: Celery, queue: str, timeout: float = 3.0) -> QueueDepth:
    """How many messages wait in ``queue`` (steps, cleanups and notifications not yet taken by
    a worker; a countdown's step is held by a worker, not counted). A queue the broker does not
    know yet (no worker ever declared it, or an emptied Redis queue) holds nothing.

    :raises Exception: whatever the broker's client raises when the broker cannot be reached.
    """
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        amqp = _counts_consumers(conn)
        channel = conn.channel()
        try:
            # RabbitMQ: a passive declare only asks (an active one would have to repeat the
            # queue's arguments). Kombu's Redis transport declares nothing either way, and its
            # passive check misses a queue under a global_keyprefix: it asks actively.
            _, messages, consumers = channel.queue_declare(queue=queue, passive=amqp)
        except conn.channel_errors:
            return QueueDepth(0, 0 if amqp else None)
        finally:
            _close(channel)
    return QueueDepth(int(messages), int(consumers) if amqp else None)


def _counts_consumers(conn: Any) -> bool:
    return str(conn.transport.driver_type) == "amqp"


def _close(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - a channel the broker already closed (404)
        pass
