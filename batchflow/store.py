"""A job's state in Redis: the Lua scripts' calls, atomic transitions, indexes. (The store layer's
other modules keep their own keys: events, admission, streams, fleet, history, meter.) Every key
of a job has its id as hash tag (``prefix:{job_id}:job``): each script touches one Cluster slot.

The scripts implement the step protocol's fence: a step carries ``(job_id, seq)``; CLAIM takes a
lease only if ``seq`` matches and no live lease is held; COMMIT applies a step's whole buffer only
if ``seq`` and the lease still match, then bumps ``seq``. A duplicate or stale delivery changes
nothing.

Errors: every public method raises :class:`~batchflow.exceptions.Unavailable` when Redis does not
answer (never a raw redis-py error), so callers handle one exception. Job ids reach this module
already validated (:meth:`Engine <batchflow.engine.Engine>` checks them once, at its boundary).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

import redis

from .config import DEFAULTS
from .events import EventHub, Snapshot, follow
from .exceptions import InvalidParams, JobNotFound, Unavailable
from .keys import Keys
from .meter import COUNTER
from .paging import read_page
from .records import ActiveJob, Claim, Committed, Seen
from .redisconn import DOWN, connect, wait_for_replicas
from .redisurl import CLUSTER, SERVER
from .schema import (
    ClaimCode,
    F,
    Signal,
    SignalCode,
    Status,
    as_int,
    flat_pairs,
    is_terminal,
    lane_records,
)
from .scripts import CLAIM, COMMIT, MARK_CLEANED, RECOVER, RENEW, REOPEN, SIGNAL, sharded

MESSAGES_KEPT = 100
MESSAGES_SHOWN = 20
ITEM_CHUNK = 5000
#: A new job's keys expire this long after they are written unless its index entries follow (see
#: :meth:`Store.create`).
CREATE_GRACE_MS = 60_000

Fn = TypeVar("Fn", bound=Callable[..., Any])


def translating(method: Fn) -> Fn:
    """Turn redis-py's connection errors into :class:`Unavailable`, for plain methods and for
    generators alike (a generator's errors happen while it is iterated)."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                yield from method(self, *args, **kwargs)
            except DOWN as exc:
                raise Unavailable.redis(exc) from exc

        return cast(Fn, generator)

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except DOWN as exc:
            raise Unavailable.redis(exc) from exc

    return cast(Fn, wrapper)


class Store:
    """Job state in Redis.

    :param client: a redis-py client created with ``decode_responses=True``.
    :param prefix: the key prefix.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        kind: str = SERVER,
        replicas: int = 0,
        replica_timeout: float = DEFAULTS["BATCHFLOW_REDIS_WAIT_TIMEOUT"],
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.kind = kind
        self.replicas = replicas
        self._replica_timeout_ms = max(1, int(replica_timeout * 1000))
        # A Cluster's events go through sharded pub/sub: each reaches only its job's shard.
        script = sharded if kind == CLUSTER else str
        scripts = (CLAIM, COMMIT, RENEW, SIGNAL, RECOVER, MARK_CLEANED, REOPEN)
        (
            self._claim,
            self._commit,
            self._renew,
            self._signal,
            self._recover,
            self._mark_cleaned,
            self._reopen,
        ) = (client.register_script(script(text)) for text in scripts)
        self.events = EventHub(client, sharded=kind == CLUSTER)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        timeout: float = DEFAULTS["BATCHFLOW_REDIS_TIMEOUT"],
        *,
        replicas: int = 0,
        replica_timeout: float = DEFAULTS["BATCHFLOW_REDIS_WAIT_TIMEOUT"],
    ) -> Store:
        """A store on a new connection to ``url``: one server, a master found through Sentinel,
        or a Cluster (see :mod:`batchflow.redisurl`), where a Redis that does not answer fails
        fast.

        :param timeout: seconds a connection or command may take before :class:`Unavailable`
            (``BATCHFLOW_REDIS_TIMEOUT``): a stalled Redis costs a request this, not a thread.
        :param replicas: replicas that must acknowledge each step's commit before its next step
            is sent (``BATCHFLOW_REDIS_WAIT_REPLICAS``); they get ``replica_timeout`` seconds.
        """
        client, kind = connect(url, timeout)
        return cls(client, prefix, kind=kind, replicas=replicas, replica_timeout=replica_timeout)

    # -- creating and reading ---------------------------------------------------------------

    @translating
    def create(
        self, job_id: str, fields: dict[str, Any], ids: Iterable[str] | None, created_ms: int
    ) -> None:
        """Write a new job, its ids and its index entries, all or nothing for the job's keys.

        Ids go to Redis in chunks inside one MULTI, so a half-written id list is never seen. The
        job's keys expire (:data:`CREATE_GRACE_MS`) until its index entries are written in the
        next round trip: a create that timed out on a stalled Redis, which Redis then carries out
        once it answers again, leaves nothing behind for good (the starter was told it failed, and
        no step was sent).
        """
        keys = self.keys
        created = [keys.job(job_id)] + ([keys.items(job_id)] if ids is not None else [])
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(*keys.all_of(job_id))
            if ids is not None:
                for chunk in _chunks(ids):
                    pipe.rpush(keys.items(job_id), *chunk)
            pipe.hset(keys.job(job_id), mapping={k: _text(v) for k, v in fields.items()})
            for key in created:
                pipe.pexpire(key, CREATE_GRACE_MS)
            pipe.execute()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.active, {job_id: created_ms})
            pipe.zadd(keys.all_jobs, {job_id: created_ms})
            pipe.zadd(keys.owner(str(fields[F.OWNER])), {job_id: created_ms})
            for key in created:
                pipe.persist(key)
            pipe.execute()

    @translating
    def snapshot(self, job_id: str) -> Snapshot:
        """The job hash and its latest messages, in one round trip.

        :raises JobNotFound: no such job.
        """
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            pipe.lrange(self.keys.messages(job_id), -MESSAGES_SHOWN, -1)
            fields, messages = pipe.execute()
        if not fields:
            raise JobNotFound(job_id)
        return fields, messages

    @translating
    def snapshots(self, job_ids: list[str]) -> list[Snapshot]:
        """Snapshots of many jobs in one round trip; jobs that are gone are left out."""
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
                pipe.lrange(self.keys.messages(job_id), -MESSAGES_SHOWN, -1)
            replies = pipe.execute()
        return [(f, m) for f, m in zip(replies[::2], replies[1::2], strict=True) if f]

    @translating
    def job_ids(self, owner: str | None, offset: int, limit: int) -> list[str]:
        """Newest first: one owner's jobs, or everyone's when ``owner`` is None."""
        key = self.keys.all_jobs if owner is None else self.keys.owner(owner)
        return cast(list[str], self.client.zrevrange(key, offset, offset + limit - 1))

    def _outcomes(self, job_id: str) -> list[str]:
        """The keys of a job's per-id ``results``, ``errors`` and ``undo_errors``, in this order."""
        return [self.keys.results(job_id), self.keys.errors(job_id), self.keys.undo_errors(job_id)]

    def _outcomes_key(self, job_id: str, which: str) -> str:
        return self._outcomes(job_id)[("results", "errors", "undo_errors").index(which)]

    @translating
    def results_page(
        self, job_id: str, which: str, cursor: int, count: int
    ) -> tuple[int, dict[str, str]]:
        """At most ``count`` of a job's per-id ``results``, ``errors`` or ``undo_errors``, and the
        cursor of the next page (0: no more; start with 0). Once the job has ended, its pages hold
        every entry exactly once, whatever ``count`` each asks for; while it runs, an entry
        written meanwhile may move another across a page boundary (missed or seen twice).

        :raises InvalidParams: a ``cursor`` this method did not give, or ``count`` out of range.
        """
        if not 0 <= cursor < 2**64 or not 0 < count <= 1000:
            raise InvalidParams("cursor must be a cursor this route gave, and count 1 to 1000.")
        return read_page(self.client, self._outcomes_key(job_id, which), cursor, count)

    @translating
    def iter_hash(self, job_id: str, which: str) -> Iterator[tuple[str, str]]:
        """Every (id, value) of a job's ``results``, ``errors`` or ``undo_errors``, in pages."""
        yield from self.client.hscan_iter(self._outcomes_key(job_id, which), count=1000)

    @translating
    def replace_items(self, job_id: str, ids: Iterable[str]) -> int:
        """Store the ids a handler produced server-side (``ItemsJob.items``) in place of any
        stored before (a create step run again); returns how many there are."""
        key = self.keys.items(job_id)
        self.client.delete(key)
        length = 0
        for chunk in _chunks(ids):
            length = self.client.rpush(key, *chunk)
        return length

    @translating
    def follow(self, job_id: str, timeout: float) -> Iterator[Snapshot | None]:
        """Yield the job's state now and after every commit, in commit order; None after
        ``timeout`` seconds of silence (see :func:`batchflow.events.follow`)."""
        read = functools.partial(self.snapshot, job_id)
        yield from follow(self.events, self.keys.channel(job_id), read, timeout, MESSAGES_SHOWN)

    # -- the step protocol ------------------------------------------------------------------

    def _argv(self, job_id: str, *head: str | int) -> list[str | int]:
        """The ARGV of a script that adds messages: ``head``, the channel, messages kept."""
        return [*head, self.keys.channel(job_id), MESSAGES_KEPT]

    @translating
    def claim(
        self, job_id: str, seq: int, worker: str, now_ms: int, lease_ms: int, lane: int = 0
    ) -> Claim:
        """Take step ``seq``'s lease (of ``lane``) for ``worker`` if the step is due (see CLAIM)."""
        k = self.keys
        reply = self._claim(
            keys=[k.job(job_id), k.items(job_id), k.errors(job_id), k.lanes(job_id)],
            args=[seq, worker, now_ms, lease_ms, k.channel(job_id), lane],
        )
        code = ClaimCode(reply[0])
        if code is not ClaimCode.OK:
            return Claim(code)
        ids = json.loads(reply[2])  # cjson writes an empty table as {}
        return Claim(code, flat_pairs(json.loads(reply[1])), ids or [], [bool(x) for x in reply[3]])

    @translating
    def commit(
        self,
        job_id: str,
        seq: int,
        worker: str,
        now: float,
        payload: dict[str, Any],
        deadline_ms: int,
        ttl: int,
        lane: int = 0,
    ) -> Committed | None:
        """Apply one step's buffer; what it committed, or None if the fence broke.

        With ``replicas``, then waits (WAIT) until that many replicas hold the commit, for at
        most the replica timeout; :attr:`Committed.replicated` says whether they all did.
        """
        k = self.keys
        job_keys = [k.job(job_id), k.items(job_id), *self._outcomes(job_id), k.messages(job_id)]
        reply = self._commit(
            keys=[*job_keys, k.lanes(job_id), k.meter(job_id)],
            args=[
                *self._argv(job_id, seq, worker, repr(now), json.dumps(payload), deadline_ms, ttl),
                lane,
                COUNTER,
            ],
        )
        if reply[0] != "ok":
            return None
        main = int(reply[3]) if reply[3] != "" else None
        return Committed(int(reply[1]), reply[2], self._replicated(k.job(job_id)), main)

    def _replicated(self, key: str) -> bool:
        """Whether ``replicas`` replicas of the server holding ``key`` have all its writes."""
        if not self.replicas:
            return True
        return wait_for_replicas(self.client, key, self.replicas, self._replica_timeout_ms)

    @translating
    def renew(
        self,
        job_id: str,
        seq: int,
        worker: str,
        now: float,
        lease_until_ms: int,
        payload: dict[str, Any] | None = None,
        lane: int = 0,
    ) -> Seen | None:
        """Renew a running step's lease, applying ``payload`` (live progress, or the mark that
        this step ends the job) with it; what it saw of the job, or None if the lease is lost."""
        k, update = self.keys, json.dumps(payload) if payload else ""
        job_keys = [k.job(job_id), k.messages(job_id), *self._outcomes(job_id), k.items(job_id)]
        reply = self._renew(
            keys=[*job_keys, k.lanes(job_id)],
            args=[*self._argv(job_id, seq, worker, repr(now), update, lease_until_ms), lane],
        )
        if reply[0] != "ok":
            return None
        return Seen(reply[1], reply[2])

    @translating
    def signal(
        self, job_id: str, what: Signal, now: float, deadline_ms: int
    ) -> tuple[SignalCode, str, int]:
        """Record a stop/cancel/pause/resume request: ``(code, status, seq)`` (see SIGNAL)."""
        k = self.keys
        code, status, seq = self._signal(
            keys=[k.job(job_id), k.messages(job_id)],
            args=self._argv(job_id, what.value, repr(now), deadline_ms),
        )
        return SignalCode(code), status, int(seq or 0)

    @translating
    def reopen(
        self, job_id: str, now: float, deadline_ms: int, *, was: Status, message: str
    ) -> tuple[SignalCode, str, int]:
        """Put a job that is ``was`` (stopped: Continue; awaiting confirmation: Confirm) back to
        running: ``(code, status, seq)`` (see REOPEN); on ``enqueue`` it is among the active jobs
        again and the caller enqueues step ``seq``."""
        k = self.keys
        others = [k.items(job_id), *self._outcomes(job_id), k.lanes(job_id)]
        code, status, seq = self._reopen(
            keys=[k.job(job_id), k.messages(job_id), *others],
            args=[
                *self._argv(job_id, repr(now), deadline_ms),
                was.value,
                message,
            ],
        )
        if code == SignalCode.ENQUEUE:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(k.expiring, job_id)
                pipe.zadd(k.active, {job_id: int(now * 1000)})
                pipe.execute()
        return SignalCode(code), status, int(seq or 0)

    @translating
    def recover(
        self, job_id: str, now_ms: int, deadline_ms: int, dead_worker: str = "", lane: int = 0
    ) -> tuple[int, bool] | None:
        """Give an overdue job or lane (or one whose lease ``dead_worker`` holds) a fresh
        deadline: ``(seq to enqueue, a claimed step was lost)``, or None if it is not overdue."""
        k = self.keys
        reply = self._recover(
            keys=[k.job(job_id), k.lanes(job_id)], args=[now_ms, deadline_ms, dead_worker, lane]
        )
        if reply[0] != "requeue":
            return None
        return int(reply[1]), bool(reply[2])

    @translating
    def mark_cleaned(self, job_id: str) -> dict[str, str] | None:
        """Take the one right to run a job's cleanup; the job hash, or None if already taken."""
        reply = self._mark_cleaned(keys=[self.keys.job(job_id)])
        return flat_pairs(reply) if reply else None

    # -- indexes and maintenance --------------------------------------------------------------

    @translating
    def finish(self, job_id: str, clean_at: float) -> None:
        """Move a terminal job from the active index to the expiring one."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.active, job_id)
            pipe.zadd(self.keys.expiring, {job_id: clean_at})
            pipe.execute()

    @translating
    def active_jobs(self, page: int = 1000) -> list[ActiveJob]:
        """Every job not yet seen terminal: one ZRANGE and one pipelined HMGET per ``page`` jobs,
        however many there are."""
        ids = cast(list[str], self.client.zrange(self.keys.active, 0, -1))
        found: list[ActiveJob] = []
        for start in range(0, len(ids), page):
            chunk = ids[start : start + page]
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    fields = (F.STATUS, F.LEASE_UNTIL, F.LEASE_OWNER, F.NOTIFY_DUE, F.LANES_OPEN)
                    pipe.hmget(self.keys.job(job_id), *fields)
                replies = pipe.execute()
            laned = []
            for job_id, (status, until, owner, due, lanes) in zip(chunk, replies, strict=True):
                deadline, due_ms = int(float(until or 0)), int(float(due or 0))
                found.append(ActiveJob(job_id, status, deadline, owner or "", due_ms))
                if as_int(lanes) > 0 and not is_terminal(status):
                    laned.append(found[-1])
            found += self._open_lanes(laned)
        return found

    def _open_lanes(self, jobs: list[ActiveJob]) -> list[ActiveJob]:
        """The lanes of these jobs in lanes that have not ended, each as maintenance sees a job."""
        with self.client.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hgetall(self.keys.lanes(job.id))
            replies = pipe.execute() if jobs else []
        found = []
        for job, fields in zip(jobs, replies, strict=True):
            for lane, record in sorted(lane_records(fields).items()):
                if not record.get(F.LANE_STATE):
                    until, owner = as_int(record.get(F.LEASE_UNTIL)), record.get(F.LEASE_OWNER)
                    found.append(ActiveJob(job.id, job.status, until, owner or "", 0, lane))
        return found

    @translating
    def lanes(self, job_id: str) -> dict[int, dict[str, str]]:
        """Each lane's fields (``{lane: {field: value}}``), empty for a job in one chain."""
        return lane_records(cast(dict[str, str], self.client.hgetall(self.keys.lanes(job_id))))

    @translating
    def mark_alive(self, worker: str, ttl: float) -> None:
        """Say that ``worker`` (a process running steps) is alive for ``ttl`` seconds more."""
        self.client.set(self.keys.worker(worker), "1", px=max(1, int(ttl * 1000)))

    @translating
    def living(self, workers: Iterable[str]) -> set[str]:
        """Which of ``workers`` said they are alive within their time to live."""
        names = sorted(set(workers))
        if not names:
            return set()
        with self.client.pipeline(transaction=False) as pipe:
            for worker in names:
                pipe.exists(self.keys.worker(worker))
            replies = pipe.execute()
        return {worker for worker, found in zip(names, replies, strict=True) if found}

    @translating
    def due_for_cleaning(self, now: float, limit: int = 500) -> list[str]:
        """Terminal jobs whose time to be cleaned has come."""
        return cast(
            list[str], self.client.zrangebyscore(self.keys.expiring, 0, now, start=0, num=limit)
        )

    @translating
    def delete_job(self, job_id: str, owner: str | None = None) -> None:
        """Remove every key and index entry of a job."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.unlink(*self.keys.all_of(job_id))
            pipe.zrem(self.keys.active, job_id)
            pipe.zrem(self.keys.expiring, job_id)
            pipe.zrem(self.keys.all_jobs, job_id)
            if owner is not None:
                pipe.zrem(self.keys.owner(owner), job_id)
                pipe.zrem(self.keys.unseen(owner), job_id)
            pipe.execute()

    @translating
    def try_lock(self, name: str, seconds: float) -> bool:
        """A lock that expires by itself: the first caller in each period gets True."""
        return bool(self.client.set(self.keys.lock(name), "1", nx=True, px=int(seconds * 1000)))

    @translating
    def ping(self) -> bool:
        return bool(self.client.ping())


def _chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    rest = iter(ids)
    while chunk := list(itertools.islice(rest, ITEM_CHUNK)):
        yield chunk


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)
