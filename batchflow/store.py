"""All Redis access: key names, Lua scripts, atomic transitions, events.

Nothing else in batchflow talks to Redis. Every key of one job carries the job id as a hash tag
(``prefix:{job_id}:job``), so every multi-key script below touches one Cluster slot. Global
indexes are sorted sets outside any job's slot and are only ever written by plain commands.

The scripts implement the step protocol's fence: a step carries ``(job_id, seq)``; CLAIM takes a
lease only if ``seq`` matches and no live lease is held; COMMIT applies a step's whole buffer only
if ``seq`` and the lease still match, then bumps ``seq``. A duplicate or stale delivery changes
nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

import redis
import redis.exceptions

from .exceptions import JobNotFound, Unavailable
from .scripts import CLAIM, COMMIT, MARK_CLEANED, RECOVER, REPORT, SIGNAL

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
TERMINAL = ("completed", "failed", "stopped", "canceled")
MESSAGES_KEPT = 100
MESSAGES_SHOWN = 20
ITEM_CHUNK = 5000

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("batchflow")


def valid_job_id(job_id: str) -> bool:
    """Whether ``job_id`` has the shape of an id batchflow issues; anything else is unknown."""
    return bool(JOB_ID_RE.match(job_id))


class Keys:
    """Builds every Redis key batchflow uses; no other code formats a key.

    :param prefix: the configured ``BATCHFLOW_KEY_PREFIX``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _job_key(self, job_id: str, part: str) -> str:
        if not valid_job_id(job_id):
            raise JobNotFound(job_id)
        return f"{self.prefix}:{{{job_id}}}:{part}"

    def job(self, job_id: str) -> str:
        return self._job_key(job_id, "job")

    def items(self, job_id: str) -> str:
        return self._job_key(job_id, "items")

    def results(self, job_id: str) -> str:
        return self._job_key(job_id, "results")

    def errors(self, job_id: str) -> str:
        return self._job_key(job_id, "errors")

    def undo_errors(self, job_id: str) -> str:
        return self._job_key(job_id, "undo_errors")

    def messages(self, job_id: str) -> str:
        return self._job_key(job_id, "messages")

    def channel(self, job_id: str) -> str:
        return self._job_key(job_id, "events")

    def all_of(self, job_id: str) -> list[str]:
        """Every key one job may own (the channel is not a key)."""
        return [
            self.job(job_id),
            self.items(job_id),
            self.results(job_id),
            self.errors(job_id),
            self.undo_errors(job_id),
            self.messages(job_id),
        ]

    @property
    def active(self) -> str:
        """Jobs not yet terminal, scored by creation time: what maintenance watches."""
        return f"{self.prefix}:index:active"

    @property
    def expiring(self) -> str:
        """Terminal jobs, scored by the time their state and output should be cleaned."""
        return f"{self.prefix}:index:expiring"

    @property
    def all_jobs(self) -> str:
        return f"{self.prefix}:index:all"

    def owner(self, owner: str) -> str:
        # Owners are arbitrary strings (emails, ids); a digest keeps the key's alphabet fixed.
        digest = hashlib.sha256(owner.encode()).hexdigest()[:32]
        return f"{self.prefix}:index:owner:{digest}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"


def _translating(method: F) -> F:
    """Turn redis-py's connection errors into :class:`Unavailable` with a message to act on."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if "No connection available" in str(exc) or "Too many connections" in str(exc):
                raise Unavailable(
                    "Every Redis connection of this process is busy. Raise the pool size with "
                    "?max_connections=N in BATCHFLOW_REDIS_URL."
                ) from exc
            raise Unavailable(
                f"Redis does not answer ({exc}). Check that it runs and that "
                "BATCHFLOW_REDIS_URL points at it."
            ) from exc

    return cast(F, wrapper)


@dataclasses.dataclass
class Claim:
    """What CLAIM returned: ``code`` and, when it is ``ok``, the job and this step's ids."""

    code: str
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    ids: list[str] = dataclasses.field(default_factory=list)
    bad_flags: list[bool] = dataclasses.field(default_factory=list)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class Store:
    """Job state in Redis.

    :param client: a redis-py client created with ``decode_responses=True``.
    :param prefix: the key prefix.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self._claim = client.register_script(CLAIM)
        self._commit = client.register_script(COMMIT)
        self._report = client.register_script(REPORT)
        self._signal = client.register_script(SIGNAL)
        self._recover = client.register_script(RECOVER)
        self._mark_cleaned = client.register_script(MARK_CLEANED)
        self.events = EventHub(client, f"{prefix}:*:events")

    @classmethod
    def from_url(cls, url: str, prefix: str) -> Store:
        """A store on a new connection pool; short timeouts so a dead Redis fails fast.

        The pool blocks (up to 10 s) rather than failing when all its connections are busy, so a
        burst of requests waits its turn; ``?max_connections=N`` in the URL sizes it (default 64).
        """
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=10,
            decode_responses=True,
            socket_connect_timeout=3,
            socket_timeout=10,
            health_check_interval=15,
        )
        return cls(redis.Redis(connection_pool=pool), prefix)

    # -- creating and reading ---------------------------------------------------------------

    @_translating
    def create(
        self, job_id: str, fields: dict[str, Any], ids: Iterable[str] | None, created_ms: int
    ) -> None:
        """Write a new job, its ids and its index entries, all or nothing for the job's keys.

        Ids go to Redis in chunks inside one MULTI, so a half-written id list is never seen.
        """
        keys = self.keys
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(*keys.all_of(job_id))
            if ids is not None:
                chunk: list[str] = []
                for item in ids:
                    chunk.append(item)
                    if len(chunk) == ITEM_CHUNK:
                        pipe.rpush(keys.items(job_id), *chunk)
                        chunk = []
                if chunk:
                    pipe.rpush(keys.items(job_id), *chunk)
            pipe.hset(keys.job(job_id), mapping={k: _text(v) for k, v in fields.items()})
            pipe.execute()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.active, {job_id: created_ms})
            pipe.zadd(keys.all_jobs, {job_id: created_ms})
            pipe.zadd(keys.owner(str(fields["owner"])), {job_id: created_ms})
            pipe.execute()

    @_translating
    def snapshot(self, job_id: str) -> tuple[dict[str, str], list[str]]:
        """The job hash and its latest messages, in one round trip.

        :raises JobNotFound: no such job (or a malformed id).
        """
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            pipe.lrange(self.keys.messages(job_id), -MESSAGES_SHOWN, -1)
            fields, messages = pipe.execute()
        if not fields:
            raise JobNotFound(job_id)
        return fields, messages

    @_translating
    def snapshots(self, job_ids: list[str]) -> list[tuple[dict[str, str], list[str]]]:
        """Snapshots of many jobs in one round trip; jobs that are gone are left out."""
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
                pipe.lrange(self.keys.messages(job_id), -MESSAGES_SHOWN, -1)
            replies = pipe.execute()
        return [(f, m) for f, m in zip(replies[::2], replies[1::2], strict=True) if f]

    @_translating
    def job_ids(self, owner: str | None, offset: int, limit: int) -> list[str]:
        """Newest first: one owner's jobs, or everyone's when ``owner`` is None."""
        key = self.keys.all_jobs if owner is None else self.keys.owner(owner)
        return cast(list[str], self.client.zrevrange(key, offset, offset + limit - 1))

    @_translating
    def results_page(
        self, job_id: str, which: str, cursor: int, count: int
    ) -> tuple[int, dict[str, str]]:
        """A page of per-id results (``which="results"``) or errors (``"errors"``)."""
        key = self.keys.results(job_id) if which == "results" else self.keys.errors(job_id)
        next_cursor, page = self.client.hscan(key, cursor=cursor, count=count)
        return int(next_cursor), cast(dict[str, str], page)

    @_translating
    def iter_hash(self, job_id: str, which: str) -> Iterator[tuple[str, str]]:
        """Every (id, value) of a job's results, errors or undo errors, in pages."""
        key = {
            "results": self.keys.results,
            "errors": self.keys.errors,
            "undo_errors": self.keys.undo_errors,
        }[which](job_id)
        yield from self.client.hscan_iter(key, count=1000)

    @_translating
    def push_items(self, job_id: str, ids: Iterable[str]) -> int:
        """Append ids a handler produced server-side (ItemsJob.items); returns the list length."""
        key, length, chunk = self.keys.items(job_id), 0, []
        for item in ids:
            chunk.append(item)
            if len(chunk) == ITEM_CHUNK:
                length = self.client.rpush(key, *chunk)
                chunk = []
        if chunk:
            length = self.client.rpush(key, *chunk)
        return length or int(self.client.llen(key))

    def reset_items(self, job_id: str) -> None:
        self.client.delete(self.keys.items(job_id))

    @_translating
    def follow(
        self, job_id: str, timeout: float
    ) -> Iterator[tuple[dict[str, str], list[str]] | None]:
        """Yield the job's state now and after every commit, in commit order; None after
        ``timeout`` seconds of silence (then the state is read again, in case an event was lost
        while the event connection reconnected). Never yields a state older than one it yielded.
        """
        channel = self.keys.channel(job_id)
        inbox = self.events.join(channel)  # subscribed before the first read: no commit is missed
        try:
            last = (-1, -1.0)
            snapshot: tuple[dict[str, str], list[str]] | None = self.snapshot(job_id)
            while True:
                if snapshot is not None:
                    fields = snapshot[0]
                    mark = (int(fields.get("seq") or 0), float(fields.get("updated_at") or 0))
                    if mark >= last:  # an event queued before a newer read is old news: drop it
                        last = mark
                        yield snapshot
                try:
                    raw = inbox.get(timeout=timeout)
                except queue.Empty:
                    yield None
                    snapshot = self.snapshot(job_id)
                    continue
                snapshot = self.snapshot(job_id) if raw is _RESYNC else _event(raw)
        finally:
            self.events.leave(channel, inbox)

    # -- the step protocol ------------------------------------------------------------------

    def claim(self, job_id: str, seq: int, worker: str, now_ms: int, lease_ms: int) -> Claim:
        k = self.keys
        reply = self._claim(
            keys=[k.job(job_id), k.items(job_id), k.errors(job_id)],
            args=[seq, worker, now_ms, lease_ms],
        )
        if reply[0] != "ok":
            return Claim(reply[0])
        ids = json.loads(reply[2])  # cjson writes an empty table as {}
        return Claim("ok", _pairs(json.loads(reply[1])), ids or [], [bool(x) for x in reply[3]])

    def commit(
        self,
        job_id: str,
        seq: int,
        worker: str,
        now: float,
        payload: dict[str, Any],
        deadline_ms: int,
        ttl: int,
    ) -> tuple[int, str] | None:
        """Apply one step's buffer; returns ``(new seq, status)``, or None if the fence broke."""
        k = self.keys
        reply = self._commit(
            keys=[
                k.job(job_id),
                k.items(job_id),
                k.results(job_id),
                k.errors(job_id),
                k.undo_errors(job_id),
                k.messages(job_id),
            ],
            args=[
                seq,
                worker,
                repr(now),
                json.dumps(payload),
                deadline_ms,
                ttl,
                k.channel(job_id),
                MESSAGES_KEPT,
                MESSAGES_SHOWN,
            ],
        )
        if reply[0] != "ok":
            return None
        return int(reply[1]), reply[2]

    def report(
        self,
        job_id: str,
        seq: int,
        worker: str,
        now: float,
        payload: dict[str, Any] | None,
        lease_until_ms: int,
    ) -> tuple[str, str] | None:
        """Renew a step's lease and apply live progress; ``(status, signal)`` or None if lost."""
        k = self.keys
        reply = self._report(
            keys=[k.job(job_id), k.messages(job_id)],
            args=[
                seq,
                worker,
                repr(now),
                json.dumps(payload) if payload else "",
                lease_until_ms,
                k.channel(job_id),
                MESSAGES_KEPT,
                MESSAGES_SHOWN,
            ],
        )
        if reply[0] != "ok":
            return None
        return reply[1], reply[2]

    @_translating
    def signal(self, job_id: str, what: str, now: float, deadline_ms: int) -> tuple[str, str, int]:
        """Record a stop/cancel/pause/resume request; see SIGNAL for the codes."""
        k = self.keys
        code, status, seq = self._signal(
            keys=[k.job(job_id), k.messages(job_id)],
            args=[what, repr(now), deadline_ms, k.channel(job_id), MESSAGES_KEPT, MESSAGES_SHOWN],
        )
        return code, status, int(seq or 0)

    def recover(self, job_id: str, now_ms: int, deadline_ms: int) -> tuple[int, bool] | None:
        """Give an overdue job a fresh deadline: ``(seq to enqueue, a claimed step was lost)``."""
        reply = self._recover(keys=[self.keys.job(job_id)], args=[now_ms, deadline_ms])
        if reply[0] != "requeue":
            return None
        return int(reply[1]), bool(reply[2])

    def mark_cleaned(self, job_id: str) -> dict[str, str] | None:
        """Take the one right to run a job's cleanup; the job hash, or None if already taken."""
        reply = self._mark_cleaned(keys=[self.keys.job(job_id)])
        return _pairs(reply) if reply else None

    # -- indexes and maintenance --------------------------------------------------------------

    def finish(self, job_id: str, clean_at: float) -> None:
        """Move a terminal job from the active index to the expiring one."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.active, job_id)
            pipe.zadd(self.keys.expiring, {job_id: clean_at})
            pipe.execute()

    def active_jobs(self, page: int = 1000) -> list[tuple[str, str | None, int]]:
        """Every job not yet seen terminal, as ``(id, status or None if gone, step deadline in
        ms)``: one ZRANGE and one pipelined HMGET per ``page`` jobs, however many there are."""
        ids = cast(list[str], self.client.zrange(self.keys.active, 0, -1))
        found: list[tuple[str, str | None, int]] = []
        for start in range(0, len(ids), page):
            chunk = ids[start : start + page]
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hmget(self.keys.job(job_id), "status", "lease_until")
                replies = pipe.execute()
            for job_id, (status, lease_until) in zip(chunk, replies, strict=True):
                found.append((job_id, status, int(float(lease_until or 0))))
        return found

    def due_for_cleaning(self, now: float, limit: int = 500) -> list[str]:
        return cast(
            list[str], self.client.zrangebyscore(self.keys.expiring, 0, now, start=0, num=limit)
        )

    @_translating
    def delete_job(self, job_id: str, owner: str | None = None) -> None:
        """Remove every key and index entry of a job."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.unlink(*self.keys.all_of(job_id))
            pipe.zrem(self.keys.active, job_id)
            pipe.zrem(self.keys.expiring, job_id)
            pipe.zrem(self.keys.all_jobs, job_id)
            if owner is not None:
                pipe.zrem(self.keys.owner(owner), job_id)
            pipe.execute()

    def try_lock(self, name: str, seconds: float) -> bool:
        """A lock that expires by itself: the first caller in each period gets True."""
        return bool(self.client.set(self.keys.lock(name), "1", nx=True, px=int(seconds * 1000)))

    @_translating
    def ping(self) -> bool:
        return bool(self.client.ping())


_RESYNC = object()  # put in every inbox after the event connection came back: read the state anew


def _event(raw: str) -> tuple[dict[str, str], list[str]]:
    """A progress event as COMMIT, REPORT and SIGNAL publish it: the job hash and messages."""
    event = json.loads(raw)
    messages = event.get("messages")
    return _pairs(event["job"]), messages if isinstance(messages, list) else []


class EventHub:
    """Every job's progress events through one pattern subscription per process, fanned out to
    the followers' queues: a web process serving many event streams holds one Redis connection
    for all of them, not one each.

    :param client: the store's client.
    :param pattern: the pattern of every job's event channel under the store's prefix.
    """

    def __init__(self, client: redis.Redis, pattern: str) -> None:
        self._client = client
        self._pattern = pattern
        self._inboxes: dict[str, set[queue.Queue[Any]]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def join(self, channel: str, wait: float = 5.0) -> queue.Queue[Any]:
        """A new inbox for ``channel``'s events, once the subscription is live (or ``wait``)."""
        inbox: queue.Queue[Any] = queue.Queue()
        with self._lock:
            self._inboxes.setdefault(channel, set()).add(inbox)
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._ready.clear()
                self._thread = threading.Thread(
                    target=self._run, name="batchflow-events", daemon=True
                )
                self._thread.start()
        self._ready.wait(wait)
        return inbox

    def leave(self, channel: str, inbox: queue.Queue[Any]) -> None:
        with self._lock:
            inboxes = self._inboxes.get(channel)
            if inboxes is not None:
                inboxes.discard(inbox)
                if not inboxes:
                    del self._inboxes[channel]

    def _deliver(self, channel: str | None, item: Any) -> None:
        with self._lock:
            targets = [
                inbox
                for name, inboxes in self._inboxes.items()
                if channel is None or name == channel
                for inbox in inboxes
            ]
        for inbox in targets:
            inbox.put(item)

    def _run(self) -> None:
        backoff, reconnecting = 0.1, False
        while True:
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.psubscribe(self._pattern)
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        with self._lock:
                            if not self._inboxes:  # nobody follows: stop; the next join restarts
                                self._thread = None
                                return
                        continue
                    if message["type"] == "psubscribe":
                        self._ready.set()
                        backoff = 0.1
                        if reconnecting:  # events may have been lost meanwhile
                            self._deliver(None, _RESYNC)
                            reconnecting = False
                    elif message["type"] == "pmessage":
                        self._deliver(message["channel"], message["data"])
            except redis.exceptions.RedisError:
                log.warning("the event connection to Redis broke; reconnecting", exc_info=True)
                self._ready.clear()
                reconnecting = True
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                pubsub.close()


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
