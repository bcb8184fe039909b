"""The handlers the benchmarks run, in their own registry (never the global one).

Every side effect goes to a Redis key the benchmark passes in ``params["key"]``, under the run's
prefix, so a run can check that the work really happened and delete it afterwards.
"""

from __future__ import annotations

import os
import time

import redis

from batchflow import Handler, ItemsJob, Registry
from batchflow.job import Job

REDIS_URL = os.environ.get("BATCHFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

#: The handlers' own connection for their work (not the engine's): what a user's handler would do.
side = redis.Redis.from_url(REDIS_URL, decode_responses=True)

#: Batch sizes the engine handed to ``units`` steps, in order (in-process runs read it).
BATCHES: list[int] = []


class Units(Handler):
    """``params["n"]`` trivial units: each step marks ``batch_size`` of them processed.

    The step size adapts (no fixed ``batch_size``), as it would for a real handler.
    """

    labels = {"title": "Counting (benchmark)"}

    def create_job(self, job: Job) -> None:
        job.set_total(int(job.params["n"]))

    def continue_job(self, job: Job, batch_size: int) -> None:
        units = min(batch_size, (job.total or 0) - job.units_processed)
        BATCHES.append(units)
        job.mark_processed(units)
        if job.units_processed >= (job.total or 0):
            job.complete()


class Steps(Handler):
    """One unit per step (fixed ``batch_size = 1``): ``params["n"]`` steps after the create step.

    ``params["sleep"]`` seconds of pretend work per step (0 = a no-op step).
    """

    labels = {"title": "Stepping (benchmark)"}
    batch_size = 1

    def create_job(self, job: Job) -> None:
        job.set_total(int(job.params["n"]))

    def continue_job(self, job: Job, batch_size: int) -> None:
        pause = float(job.params.get("sleep") or 0)
        if pause:
            time.sleep(pause)
        job.mark_processed(1)
        if job.units_processed >= (job.total or 0):
            job.complete()


class Increment(ItemsJob):
    """One ``HINCRBY params["key"] n 1`` per id: the smallest real change an item job makes."""

    labels = {"title": "Incrementing (benchmark)"}

    def change(self, item_id: str, job: Job) -> None:
        side.hincrby(job.params["key"], "n", 1)


class SlowIncrement(ItemsJob):
    """``HINCRBY params["key"] <id> 1`` then ``params["sleep"]`` seconds of pretend work per id:
    the key counts how many times each id was changed, so repeated work is known id by id.

    Fixed steps of ``batch_size`` ids (500: about a second at 2 ms per id), so that "a step" is
    the same slice whatever the adaptive sizing would do.
    """

    labels = {"title": "Slow incrementing (benchmark)"}
    batch_size = 500

    def change(self, item_id: str, job: Job) -> None:
        side.hincrby(job.params["key"], item_id, 1)
        time.sleep(float(job.params["sleep"]))


class WaitingItems(ItemsJob):
    """Each id waits ``params["wait"]`` seconds, as a change that calls an API does; up to eight
    lanes (benchmark 13 starts it with ``lanes=1`` and ``lanes=8``)."""

    labels = {"title": "Waiting on I/O (benchmark)"}
    max_lanes = 8

    def change(self, item_id: str, job: Job) -> None:
        time.sleep(float(job.params["wait"]))


def make_registry() -> Registry:
    registry = Registry()
    registry.add("units", Units)
    registry.add("steps", Steps)
    registry.add("increment", Increment)
    registry.add("slow-increment", SlowIncrement)
    registry.add("waiting-items", WaitingItems)
    from bench.source_handlers import add_source_handlers  # imports this module's ``side``

    add_source_handlers(registry)
    return registry
