"""Progress events: every job's events reach a process through one Redis subscription, fanned
out to the streams that follow a job."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from typing import Any

import redis
import redis.exceptions

from .schema import flat_pairs

log = logging.getLogger("batchflow")


RESYNC = object()  # put in every inbox after the event connection came back: read the state anew


def decode_event(raw: str) -> tuple[dict[str, str], list[str]]:
    """A progress event as COMMIT, RENEW and SIGNAL publish it: the job hash and messages."""
    event = json.loads(raw)
    messages = event.get("messages")
    return flat_pairs(event["job"]), messages if isinstance(messages, list) else []


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
                            self._deliver(None, RESYNC)
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
