"""The figures behind ``GET /jobs/metrics``, kept in Redis so that every web process tells the
same, and cheap on the step path.

Each step's commit adds to its job's own meter, a string of 64-bit counters in the job's slot
(``prefix:{job}:meter``), with one BITFIELD inside COMMIT: steps, the step's duration and its
wait in the queue (each a bucket of a histogram, a sum and a count). No other command and no
round trip is added to a step.

When an ended job leaves the active index (the notifier or maintenance moves it), :meth:`fold`
adds its meter, its good and bad items and its outcome to the totals of its handler, in one
script that also takes the job out of the index: the totals live in the index's own slot
(``{prefix:index:active}:meter``), so a scrape, which reads the index and the totals in one
transaction and then the meters of the jobs still in the index, counts every job exactly once.
A scrape costs one transaction, one pipelined read of the active jobs and the broker's count.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, cast

import redis

from .keys import Keys
from .schema import F, as_int, is_terminal

#: Upper bounds (seconds) of the step duration histogram's buckets; the last is +Inf.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Upper bounds (seconds) of the queue wait histogram's buckets; the last is +Inf.
WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
_N = len(DURATION_BUCKETS) + 1  # buckets of each histogram, +Inf included
# The meter's counters, in order: steps, the duration's buckets, its sum (µs), how many waits
# were measured, the wait's buckets, its sum (µs).
STEPS, DURATION = 0, 1
DURATION_SUM = DURATION + _N
WAITS = DURATION_SUM + 1
WAIT = WAITS + 1
WAIT_SUM = WAIT + _N
SLOTS = WAIT_SUM + 1
#: The BITFIELD type of every counter (an argument of COMMIT: not a word of the Lua).
COUNTER = "i64"

# Take an ended job out of the active index and, if it was there, add its figures to the
# totals: the one place a job's counts move, so nothing is counted twice.
FOLD = """
-- KEYS[1] = the active index, KEYS[2] = the totals (a hash, in the index's slot)
-- ARGV[1] = job id, ARGV[2..] = field, amount, field, amount...
-- Returns 1 when the job was in the index (its figures were added), else 0.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""


def bucket(bounds: tuple[float, ...], seconds: float) -> int:
    """The index of the first bucket whose bound holds ``seconds`` (``len(bounds)``: +Inf)."""
    for i, bound in enumerate(bounds):
        if seconds <= bound:
            return i
    return len(bounds)


def step_figures(duration: float, wait: float | None) -> list[int]:
    """What one step adds to its job's meter: ``[slot, amount, ...]`` for COMMIT's BITFIELD."""
    figures = [STEPS, 1, DURATION + bucket(DURATION_BUCKETS, duration), 1]
    figures += [DURATION_SUM, round(max(0.0, duration) * 1e6)]
    if wait is not None:
        wait = max(0.0, wait)
        figures += [WAITS, 1, WAIT + bucket(WAIT_BUCKETS, wait), 1, WAIT_SUM, round(wait * 1e6)]
    return figures


def read_command(key: str) -> list[Any]:
    """The BITFIELD that reads a meter's counters (zeros for a job that committed no step)."""
    command: list[Any] = ["BITFIELD", key]
    for slot in range(SLOTS):
        command += ["GET", COUNTER, f"#{slot}"]
    return command


@dataclasses.dataclass
class Figures:
    """Counters by handler (and outcome, and status), as a scrape reads them."""

    started: Counter[str] = dataclasses.field(default_factory=Counter)
    ended: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    active: Counter[str] = dataclasses.field(default_factory=Counter)  # by status
    items: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)  # good / bad
    meters: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # by handler
    recovered: int = 0

    def add_meter(self, handler: str, counters: Iterable[int]) -> None:
        mine = self.meters.setdefault(handler, [0] * SLOTS)
        for i, n in enumerate(counters):
            mine[i] += n


class Meter:
    """The job meters and the totals, in Redis.

    :param client: the store's Redis client.
    :param keys: the key builder.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._fold = client.register_script(FOLD)

    def fold(self, fields: Mapping[str, str], outcome: str) -> bool:
        """Take the ended job whose hash is ``fields`` out of the active index and add its
        figures to its handler's totals; False if it had left the index already."""
        job_id, handler = fields.get(F.ID, ""), fields.get(F.HANDLER, "")
        command = read_command(self.keys.meter(job_id))
        counters = cast(list[int], self.client.execute_command(*command))  # type: ignore[no-untyped-call]
        args: list[Any] = [job_id, f"jobs|{handler}", 1, f"ended|{handler}|{outcome}", 1]
        args += [f"good|{handler}", as_int(fields.get(F.GOOD))]
        args += [f"bad|{handler}", as_int(fields.get(F.BAD))]
        args += [x for i, n in enumerate(counters) if n for x in (f"m{i}|{handler}", n)]
        totals = self.keys.meter_totals
        return bool(self._fold(keys=[self.keys.active, totals], args=args))

    def count_recovered(self, steps: int = 1) -> None:
        """Steps sent again after their worker was lost (maintenance)."""
        self.client.hincrby(self.keys.meter_totals, "recovered", steps)

    def read(self) -> Figures:
        """Every figure: the totals of the jobs that left the active index, plus the active
        jobs' own, read so that no job is counted twice or missed."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrange(self.keys.active, 0, -1)
            pipe.hgetall(self.keys.meter_totals)
            ids, totals = pipe.execute()
        figures = Figures(recovered=as_int(totals.get("recovered")))
        for field, value in totals.items():
            kind, _, rest = field.partition("|")
            if kind == "jobs":
                figures.started[rest] += int(value)
            elif kind == "ended":
                handler, _, outcome = rest.rpartition("|")
                figures.ended[(handler, outcome)] += int(value)
            elif kind in ("good", "bad"):
                figures.items[(rest, kind)] += int(value)
            elif kind.startswith("m") and kind[1:].isdigit():
                figures.add_meter(rest, [0] * int(kind[1:]) + [int(value)])
        self._read_active(cast(list[str], ids), figures)
        return figures

    def _read_active(self, ids: list[str], figures: Figures, page: int = 1000) -> None:
        for start in range(0, len(ids), page):
            chunk = ids[start : start + page]
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hmget(self.keys.job(job_id), F.HANDLER, F.STATUS, F.GOOD, F.BAD)
                    pipe.execute_command(*read_command(self.keys.meter(job_id)))  # type: ignore[no-untyped-call]
                replies = pipe.execute()
            for (handler, status, good, bad), raw in zip(replies[::2], replies[1::2], strict=True):
                if handler is None:
                    continue  # its state is gone
                figures.started[handler] += 1
                if not is_terminal(status):  # an ended job stays in the index until it is told
                    figures.active[status or ""] += 1
                figures.items[(handler, "good")] += as_int(good)
                figures.items[(handler, "bad")] += as_int(bad)
                figures.add_meter(handler, raw)
