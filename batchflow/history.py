"""Run history: a compact record of every job that ended, kept per handler after the job's own
state expires, for the admin page (durations and failure rates over time, each handler's last
runs).

A job's record is written as the ended job leaves the active index (by the notifier once its
notifications are out, or by maintenance: :func:`batchflow.notify.retire`); a record is
deterministic, so writing it twice keeps one. Each handler keeps its newest
``BATCHFLOW_HISTORY_RUNS`` records, none older than ``BATCHFLOW_HISTORY_DAYS``: a sorted set
per handler scored by the end, about 250 bytes a record. Every history key shares one hash
tag, so one transaction writes a record, trims it and lists the handler.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Mapping
from typing import Any, cast

import redis

from .keys import Keys
from .schema import F, Status, as_float, as_int

#: The job fields a record keeps.
FIELDS = (
    F.ID,
    F.HANDLER,
    F.OWNER,
    F.STATUS,
    F.STALLED,
    F.TOTAL,
    F.PROCESSED,
    F.GOOD,
    F.BAD,
    F.CREATED_AT,
    F.STARTED_AT,
    F.FINISHED_AT,
)


def outcome_of(fields: Mapping[str, str]) -> str | None:
    """How the job whose hash is ``fields`` ended (its status, or ``completed_with_failures``,
    ``stalled``); None if it has not."""
    status = fields.get(F.STATUS, "")
    if status not in {s.value for s in Status if s.terminal}:
        return None
    if status == Status.COMPLETED.value and as_int(fields.get(F.BAD)):
        return "completed_with_failures"
    if status == Status.FAILED.value and fields.get(F.STALLED) == "1":
        return "stalled"
    return status


@dataclasses.dataclass(frozen=True)
class Run:
    """One ended job, as its handler's history keeps it."""

    id: str
    handler: str
    owner: str
    outcome: str  # completed, completed_with_failures, failed, stalled, stopped, canceled
    processed: int
    good: int
    bad: int
    total: int | None
    created_at: float
    started_at: float | None
    finished_at: float

    @property
    def duration(self) -> float | None:
        """Seconds from its first step to its end (None if no step ever ran)."""
        return None if self.started_at is None else max(0.0, self.finished_at - self.started_at)

    @property
    def failed(self) -> bool:
        return self.outcome in ("failed", "stalled")

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "duration": self.duration}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Run | None:
        """The record of a job from its hash's fields; None unless it has ended."""
        outcome = outcome_of(fields)
        if outcome is None:
            return None
        bad = as_int(fields.get(F.BAD))
        total = fields.get(F.TOTAL)
        finished = as_float(fields.get(F.FINISHED_AT)) or as_float(fields.get(F.CREATED_AT))
        return cls(
            id=fields.get(F.ID, ""),
            handler=fields.get(F.HANDLER, ""),
            owner=fields.get(F.OWNER, ""),
            outcome=outcome,
            processed=as_int(fields.get(F.PROCESSED)),
            good=as_int(fields.get(F.GOOD)),
            bad=bad,
            total=as_int(total) if total not in (None, "") else None,
            created_at=as_float(fields.get(F.CREATED_AT)) or 0.0,
            started_at=as_float(fields.get(F.STARTED_AT)),
            finished_at=finished or 0.0,
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Run | None:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return None  # written by another version: left out rather than shown wrong


@dataclasses.dataclass(frozen=True)
class Summary:
    """A handler's kept runs in figures: how many, how many failed (failed or stalled), and the
    median and 90th percentile of their durations in seconds (None without a duration)."""

    runs: int
    failed: int
    p50: float | None
    p90: float | None
    last_at: float | None

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.runs if self.runs else None

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "failure_rate": self.failure_rate}


def summarize(runs: list[Run]) -> Summary:
    durations = sorted(d for r in runs if (d := r.duration) is not None)
    p50 = p90 = None
    if durations:
        p50 = statistics.median(durations)
        p90 = durations[min(len(durations) - 1, int(round(0.9 * (len(durations) - 1))))]
    last = max((r.finished_at for r in runs), default=None)
    return Summary(len(runs), sum(r.failed for r in runs), p50, p90, last)


class History:
    """Each handler's last runs, in Redis.

    :param client: the store's Redis client.
    :param keys: the key builder.
    :param runs: records kept per handler (``BATCHFLOW_HISTORY_RUNS``; 0 keeps none).
    :param days: the oldest record kept, in days (``BATCHFLOW_HISTORY_DAYS``).
    """

    def __init__(self, client: redis.Redis, keys: Keys, runs: int, days: float) -> None:
        self.client = client
        self.keys = keys
        self.runs = runs
        self.days = days

    def fields_of(self, job_id: str) -> dict[str, str]:
        """The fields of a job's hash that its record keeps (empty if its state is gone)."""
        values = cast(list[Any], self.client.hmget(self.keys.job(job_id), *FIELDS))
        return {k: v for k, v in zip(FIELDS, values, strict=True) if v is not None}

    def keep(self, fields: Mapping[str, str], now: float) -> Run | None:
        """Keep the record of the ended job whose hash is ``fields``: one transaction."""
        run = Run.from_fields(fields)
        if self.runs <= 0 or run is None or not run.handler:
            return None
        key = self.keys.history(run.handler)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {run.to_json(): run.finished_at})
            pipe.zremrangebyrank(key, 0, -(self.runs + 1))
            pipe.zremrangebyscore(key, "-inf", f"({now - self.days * 86400}")
            pipe.zadd(self.keys.history_handlers, {run.handler: run.finished_at})
            pipe.execute()
        return run

    def last(self, handler: str, limit: int | None = None, now: float | None = None) -> list[Run]:
        """The handler's kept runs, newest first (at most ``limit``); those past
        ``BATCHFLOW_HISTORY_DAYS`` are left out even before a new record trims them."""
        oldest = "-inf" if now is None else now - self.days * 86400
        raw = cast(
            list[str],
            self.client.zrevrangebyscore(
                self.keys.history(handler),
                "+inf",
                oldest,
                start=0 if limit else None,
                num=limit,
            ),
        )
        return [r for r in (Run.from_json(x) for x in raw) if r is not None]

    def last_of(self, handlers: list[str], now: float) -> dict[str, list[Run]]:
        """Each handler's kept runs, newest first, in one round trip."""
        oldest = now - self.days * 86400
        with self.client.pipeline(transaction=False) as pipe:
            for handler in handlers:
                pipe.zrevrangebyscore(self.keys.history(handler), "+inf", oldest)
            replies = cast(list[list[str]], pipe.execute())
        return {
            handler: [r for r in (Run.from_json(x) for x in raw) if r is not None]
            for handler, raw in zip(handlers, replies, strict=True)
        }

    def handlers(self) -> list[str]:
        """The handlers that have a history, the most recently ended first."""
        return cast(list[str], self.client.zrevrange(self.keys.history_handlers, 0, -1))
