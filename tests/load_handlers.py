"""The load tests' handler and worker app: ``celery -A tests.load_handlers worker``.

The registry is the test suite's (tests/handlers.py) plus ``light``, an item job that keeps no
per-id result, so a finished job's Redis footprint is only its own state and its failures.
"""

from __future__ import annotations

from typing import Any

from batchflow import ItemsJob, Registry, UserError
from batchflow.handlers import StepResult
from batchflow.job import Job
from tests.handlers import make_registry, side

#: Ids that start with this fail in ``light``.
FAILING = "x-"


class Light(ItemsJob):
    """Keeps no per-id result; ids starting with ``x-`` fail. With ``params["mark"]`` each good
    id is also counted in ``<prefix>:marked:<mark>`` (a side effect per id, written in one round
    trip per step so that a thousand jobs stay cheap)."""

    labels = {"title": "Light work", "good": "done", "bad": "failed"}

    def __init__(self) -> None:
        self.changed: list[str] = []  # a handler lives for one step

    def change(self, item_id: str, job: Job) -> None:
        if item_id.startswith(FAILING):
            raise UserError(f"cannot process {item_id}")
        self.changed.append(item_id)

    def continue_job(self, job: Job, batch_size: int) -> StepResult:
        response = super().continue_job(job, batch_size)
        if job.params.get("mark") and self.changed:
            key = f"{job.params['prefix']}:marked:{job.params['mark']}"
            with side.pipeline(transaction=False) as pipe:
                for item_id in self.changed:
                    pipe.hincrby(key, item_id, 1)
                pipe.execute()
        return response


def make_load_registry() -> Registry:
    registry = make_registry()
    registry.add("light", Light)
    return registry


_app: Any = None


def __getattr__(name: str) -> Any:
    # Built on first use, so the test process can import the registry without building a worker
    # app from its own environment; `celery -A tests.load_handlers` asks for `celery`.
    global _app
    if name != "celery":
        raise AttributeError(name)
    if _app is None:
        from batchflow.config import Settings
        from batchflow.engine import Engine
        from batchflow.store import Store
        from batchflow.tasks import make_celery
        from tests.helpers import broker_options

        settings = Settings.from_mapping()
        engine = Engine(
            settings, Store.from_url(settings.redis_url, settings.key_prefix), make_load_registry()
        )
        _app = make_celery(
            engine,
            main="batchflow-load",
            config={**broker_options(settings.key_prefix), "worker_send_task_events": False},
        )
    return _app
