"""The workers seen: each worker process announces itself in Redis, so that operators (the admin
page, ``flask batchflow workers``, the health check) and a job's owner (its progress page) can
tell whether anyone works, and on what.

A worker's maintenance thread announces it every maintenance interval: one transaction of three
commands (its record with an expiry, its score in the index, the lapsed scores dropped), nothing
on the step path. A worker that stops gracefully withdraws its record; one that dies stops
announcing, and its record expires after :attr:`Fleet.ttl` seconds: a dead worker disappears by
itself. Both keys share one hash tag, so the transaction and the reads stay in one slot of a
Redis Cluster.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from typing import Any, cast

import redis

from .keys import Keys
from .schema import ms

#: Seconds an announcement lasts at least: a worker whose maintenance round is slow (a big
#: recovery) is not taken for gone.
MIN_TTL = 10.0


@dataclasses.dataclass(frozen=True)
class HeldStep:
    """A step a worker runs now: the job, the step's number, its lane, since when."""

    job_id: str
    seq: int
    lane: int
    since: float | None


@dataclasses.dataclass(frozen=True)
class WorkerSeen:
    """One worker process as it last announced itself.

    ``name`` is Celery's node name with the pid (unique even when two workers share a node
    name); ``concurrency`` the steps it may run at once (its pool's size); ``queues`` the queues
    it consumes; ``steps`` what it runs now; ``last_seen`` when it last announced itself.
    """

    name: str
    host: str
    pid: int
    concurrency: int
    pool: str
    queues: tuple[str, ...]
    version: str
    started_at: float
    last_seen: float
    steps: tuple[HeldStep, ...] = ()

    def serves(self, queue: str) -> bool:
        return queue in self.queues

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        data = self.as_dict()
        data["steps"] = [[s.job_id, s.seq, s.lane, s.since] for s in self.steps]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerSeen | None:
        try:
            data = json.loads(raw)
            steps = tuple(HeldStep(str(j), int(q), int(ln), s) for j, q, ln, s in data["steps"])
            return cls(**{**data, "queues": tuple(data["queues"]), "steps": steps})
        except (ValueError, TypeError, KeyError):
            return None  # written by another version of batchflow: not shown rather than wrong


class Fleet:
    """The workers seen, in Redis.

    :param client: the store's Redis client.
    :param keys: the key builder.
    :param ttl: seconds an announcement lasts (at least :data:`MIN_TTL`).
    """

    def __init__(self, client: redis.Redis, keys: Keys, ttl: float) -> None:
        self.client = client
        self.keys = keys
        self.ttl = max(MIN_TTL, ttl)
        self._served: dict[str, tuple[float, bool]] = {}
        self._reading = threading.Lock()  # one background read at a time

    def announce(self, worker: WorkerSeen) -> None:
        """Record ``worker`` as seen now, for :attr:`ttl` seconds."""
        now = ms(worker.last_seen)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.fleet_worker(worker.name), worker.to_json(), px=ms(self.ttl))
            pipe.zadd(self.keys.fleet, {worker.name: now})
            pipe.zremrangebyscore(self.keys.fleet, "-inf", now - ms(self.ttl))
            pipe.execute()

    def withdraw(self, name: str) -> None:
        """Forget a worker that stops (it runs nothing more)."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.fleet_worker(name))
            pipe.zrem(self.keys.fleet, name)
            pipe.execute()

    def seen(self, now: float | None = None) -> list[WorkerSeen]:
        """Every worker that announced itself within :attr:`ttl`, by name: one ZRANGEBYSCORE
        and one MGET."""
        now = time.time() if now is None else now
        names = cast(
            list[str], self.client.zrangebyscore(self.keys.fleet, ms(now - self.ttl), "+inf")
        )
        if not names:
            return []
        raw = cast(list[Any], self.client.mget([self.keys.fleet_worker(n) for n in names]))
        found = (WorkerSeen.from_json(r) for r in raw if r is not None)
        return sorted((w for w in found if w is not None), key=lambda w: w.name)

    def serving(self, queue: str, now: float | None = None) -> list[WorkerSeen]:
        """The workers seen that consume ``queue``."""
        return [w for w in self.seen(now) if w.serves(queue)]

    def anyone_serves(self, queue: str, *, wait: bool = False, max_age: float = 2.0) -> bool:
        """Whether a worker consuming ``queue`` was seen, as this process read it at most
        ``max_age`` seconds ago (every status a page asks for wants to know; one read serves
        them all).

        With ``wait``, an answer older than that is read again now. Without, the answer on hand
        is given at once (True if this process never read one: no news is not bad news) and a
        thread reads a fresh one for the next caller: a status poll stays one round trip.
        """
        read_at, served = self._served.get(queue, (-math.inf, True))
        if time.monotonic() - read_at <= max_age:
            return served
        if wait:
            return self._read(queue)
        if self._reading.acquire(blocking=False):
            threading.Thread(target=self._read_in_background, args=(queue,), daemon=True).start()
        return served

    def _read(self, queue: str) -> bool:
        served = bool(self.serving(queue))
        self._served[queue] = (time.monotonic(), served)
        return served

    def _read_in_background(self, queue: str) -> None:
        try:
            self._read(queue)
        except Exception:  # noqa: BLE001 - Redis is away: the next caller tries again
            pass
        finally:
            self._reading.release()
