"""Progress events: a process subscribes to the channels of the jobs its streams follow, through
one connection, and fans each event out to those streams."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import redis
import redis.exceptions

from .schema import F

log = logging.getLogger("batchflow")


RESYNC = object()  # put in an inbox whose events may have been missed: read the state anew
POLL = 0.05  # seconds the subscriber thread waits for an event before it looks at joins and leaves


#: A job's state as pages see it: its hash and its latest messages.
Snapshot = tuple[dict[str, str], list[str]]


class EventHub:
    """The progress events of the jobs this process streams, through one subscriber connection
    (one per shard on a Cluster), fanned out to the followers' queues: a web process serving many
    event streams holds one Redis connection for all of them, not one each, and it subscribes to
    exactly the channels its streams follow, so it receives no other job's events. The first
    stream of a job subscribes to its channel; when the last one leaves, the channel goes.

    One thread owns the subscriber connection and makes every change to it; it runs while some
    stream follows a job, and stops when none does.

    :param client: the store's client.
    :param sharded: subscribe with SSUBSCRIBE (a Cluster's sharded pub/sub), not SUBSCRIBE.
    """

    def __init__(self, client: redis.Redis, *, sharded: bool = False) -> None:
        self._client = client
        self._sharded = sharded
        self._inboxes: dict[str, set[queue.Queue[Any]]] = {}
        self._live: dict[str, threading.Event] = {}  # set once the channel's subscription is live
        self._stale: set[str] = set()  # channels whose events may have been missed: RESYNC them
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: How many events this process has received (each delivered to every follower).
        self.received = 0

    def join(self, channel: str, wait: float = 5.0) -> queue.Queue[Any]:
        """A new inbox for ``channel``'s events, once its subscription is live (or ``wait``)."""
        inbox: queue.Queue[Any] = queue.Queue()
        with self._lock:
            if self._pid != os.getpid():  # a forked child: nothing of its parent's hub is its own
                self._pid, self._thread = os.getpid(), None
                self._inboxes, self._live, self._stale = {}, {}, set()
            self._inboxes.setdefault(channel, set()).add(inbox)
            live = self._live.setdefault(channel, threading.Event())
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="batchflow-events", daemon=True
                )
                self._thread.start()
        live.wait(wait)
        return inbox

    def leave(self, channel: str, inbox: queue.Queue[Any]) -> None:
        with self._lock:
            inboxes = self._inboxes.get(channel)
            if inboxes is not None:
                inboxes.discard(inbox)
                if not inboxes:  # the thread unsubscribes
                    del self._inboxes[channel]
                    self._stale.discard(channel)

    def channels(self) -> set[str]:
        """The channels some stream of this process follows (what it subscribes to)."""
        with self._lock:
            return set(self._inboxes)

    def _deliver(self, channel: str, item: Any) -> None:
        with self._lock:
            targets = list(self._inboxes.get(channel, ()))
        for inbox in targets:
            inbox.put(item)

    def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            held: set[str] = set()
            try:
                while self._change(pubsub, held):
                    message = self._next(pubsub)
                    if message is not None:
                        self._handle(message, held)
                        backoff = 0.1
                return
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
                log.warning("the event connection to Redis broke; reconnecting", exc_info=True)
                with self._lock:  # events may be missed until each channel is subscribed again
                    for live in self._live.values():
                        live.clear()
                    self._stale.update(self._inboxes)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                pubsub.close()

    def _change(self, pubsub: Any, held: set[str]) -> bool:
        """Subscribe to the channels newly followed and unsubscribe from those left; False when
        no stream follows any job (the thread stops; the next join starts one)."""
        with self._lock:
            wanted = set(self._inboxes)
            if not wanted:
                self._thread = None
                self._live.clear()
                return False
            new, gone = sorted(wanted - held), sorted(held - wanted)
            for channel in gone:  # a join from now on waits for a new subscription
                self._live.pop(channel, None)
        if new:
            (pubsub.ssubscribe if self._sharded else pubsub.subscribe)(*new)
        if gone:
            (pubsub.sunsubscribe if self._sharded else pubsub.unsubscribe)(*gone)
        held.difference_update(gone)
        held.update(new)
        return True

    def _next(self, pubsub: Any) -> dict[str, Any] | None:
        if self._sharded:
            message = pubsub.get_sharded_message(timeout=POLL)
            if message is None and not pubsub.node_pubsub_mapping:
                time.sleep(POLL)  # no shard subscribed: nothing to wait on
            return cast("dict[str, Any] | None", message)
        return cast("dict[str, Any] | None", pubsub.get_message(timeout=POLL))

    def _handle(self, message: dict[str, Any], held: set[str]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind in ("message", "smessage"):
            self.received += 1
            self._deliver(channel, message["data"])
        elif kind in ("subscribe", "ssubscribe"):
            with self._lock:
                live, stale = self._live.get(channel), channel in self._stale
                self._stale.discard(channel)
            if live is not None:
                live.set()
            if stale:
                self._deliver(channel, RESYNC)
        elif kind == "sunsubscribe" and channel in held:
            # The server dropped a channel this process still follows (its slot moved to
            # another shard): subscribe again, where it lives now, and read the state anew.
            held.discard(channel)
            with self._lock:
                if channel in self._inboxes:
                    self._stale.add(channel)


def follow(
    hub: EventHub, channel: str, read: Callable[[], Snapshot], timeout: float, shown: int
) -> Iterator[Snapshot | None]:
    """Yield a job's state (``read()``) now and after every event on ``channel``, in order; None
    after ``timeout`` seconds of silence (then the state is read again, in case an event was lost
    while the event connection reconnected).

    An event carries what changed (:func:`apply_event`); each is numbered, so one that comes
    twice or late (already in a newer read) is dropped, and a gap (one missed) reads the state
    anew. ``shown``: how many of the latest messages a state holds.
    """
    inbox = hub.join(channel)  # subscribed before the first read: no commit is missed
    try:
        snapshot = read()
        while True:
            yield snapshot
            last = int(snapshot[0].get(F.EVENTS) or 0)
            while True:
                try:
                    raw = inbox.get(timeout=timeout)
                except queue.Empty:
                    yield None
                    snapshot = read()
                    break
                if raw is RESYNC:
                    snapshot = read()
                    break
                event = json.loads(raw)
                number = int(event["events"])
                if number <= last:  # already in what was read
                    continue
                snapshot = apply_event(snapshot, event, shown) if number == last + 1 else read()
                break
    finally:
        hub.leave(channel, inbox)


def apply_event(snapshot: Snapshot, event: dict[str, Any], shown: int) -> Snapshot:
    """``snapshot`` with ``event`` (as COMMIT, RENEW, CLAIM and SIGNAL publish it) applied: the
    fields it set, its number as ``events``, and the messages it added (the latest ``shown``)."""
    fields, messages = snapshot
    changed = event.get("set")
    added = event.get("messages")
    fields = {**fields, **(changed if isinstance(changed, dict) else {})}
    fields[F.EVENTS] = str(event["events"])
    if isinstance(added, list) and added:
        messages = [*messages, *added][-shown:]
    return fields, messages
