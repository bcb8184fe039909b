"""Handlers over resumable sources for the tests. Side effects go to Redis keys under the test's
prefix (``params["prefix"]``), so a test checks what really happened on the real server."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from batchflow import FileJob, ItemsJob, UserError
from batchflow.job import Job
from batchflow.sources import CallableSource, Entry, Plan, Source
from tests.handlers import HOOKS, side


class Numbers(Source):
    """The numbers 1..n, walked in order; those in the Redis set ``<prefix>:gone`` are gone
    (deleted while the job runs) and not met. Looks numbers up by id, so retry works."""

    def __init__(self, n: int, prefix: str) -> None:
        self.n, self.prefix = n, prefix

    def _gone(self) -> set[str]:
        return side.smembers(f"{self.prefix}:gone")

    def plan(self) -> Plan:
        return Plan({"n": self.n}, total=self.n)

    def read(self, state: dict[str, Any], cursor: Any, limit: int) -> list[Entry]:
        gone, entries = self._gone(), []
        number = (cursor or 0) + 1
        while number <= state["n"] and len(entries) < limit:
            if str(number) not in gone:
                entries.append(Entry(str(number), number, number))
            number += 1
        return entries

    def fetch(self, ids: Sequence[str]) -> list[Entry]:
        gone = self._gone()
        return [Entry(i, int(i), int(i)) for i in ids if int(i) <= self.n and i not in gone]


def _fails(job: Job, number: int) -> bool:
    every = int(job.params.get("every", 0))
    return (
        bool(every)
        and number % every == 0
        and not side.sismember(f"{job.params['prefix']}:fixed", str(number))
    )


class WalkArchive(ItemsJob):
    """Archives the numbers 1..n one by one; every ``every``-th fails (unless in ``:fixed``)."""

    labels = {"title": "Archiving numbers"}

    def source(self, job: Job) -> Source:
        return Numbers(int(job.params["n"]), job.params["prefix"])

    def change(self, item: int, job: Job) -> Any:
        hook = HOOKS.get(f"{job.id}:change")
        if hook is not None:
            hook(job, item)
        if _fails(job, item):
            raise UserError(f"cannot archive {item}")
        side.hincrby(f"{job.params['prefix']}:archived", str(item), 1)
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]))
        return {"square": item * item}

    def undo(self, item_id: str, job: Job) -> None:
        side.hincrby(f"{job.params['prefix']}:archived", item_id, -1)
        side.hincrby(f"{job.params['prefix']}:undone", item_id, 1)


class BatchArchive(ItemsJob):
    """Archives a step's whole slice in one pipeline; ``wrong_count`` returns one outcome short."""

    def source(self, job: Job) -> Source:
        return Numbers(int(job.params["n"]), job.params["prefix"])

    def change_batch(self, items: list[int], job: Job) -> Sequence[Any]:
        if job.params.get("raise_at") in items:
            raise UserError(f"the database refused the batch with {job.params['raise_at']}")
        outcomes: list[Any] = []
        with side.pipeline(transaction=False) as pipe:
            for item in items:
                if _fails(job, item):
                    outcomes.append(UserError(f"cannot archive {item}"))
                else:
                    pipe.hincrby(f"{job.params['prefix']}:archived", str(item), 1)
                    outcomes.append(item * 2)
            pipe.execute()
        side.rpush(f"{job.params['prefix']}:batches", len(items))
        return outcomes[:-1] if job.params.get("wrong_count") else outcomes


class CountUp(ItemsJob):
    """Walks 1..n with a CallableSource (which cannot look items up by id)."""

    def source(self, job: Job) -> Source:
        n = int(job.params["n"])
        return CallableSource(
            lambda after: ((k, k, k) for k in range((after or 0) + 1, n + 1)), total=n
        )

    def change(self, item: int, job: Job) -> Any:
        side.hincrby(f"{job.params['prefix']}:counted", str(item), 1)


class NumbersExport(FileJob):
    """A CSV of the numbers 1..n and their squares."""

    filename = "numbers.csv"
    header = ["n", "square"]

    def source(self, job: Job) -> Source:
        return Numbers(int(job.params["n"]), job.params["prefix"])

    def rows(self, items: list[int], job: Job) -> list[tuple[int, int]]:
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]) * len(items))
        return [(k, k * k) for k in items]


HANDLERS = {
    "walk-archive": WalkArchive,
    "batch-archive": BatchArchive,
    "count-up": CountUp,
    "numbers-export": NumbersExport,
}
