"""The hand-written peers batchflow is measured against.

- ``bench.chain``: a Celery task that does a step's bookkeeping by hand (``HINCRBY processed`` and
  ``HSET updated_at`` on a Redis hash) and re-enqueues itself with ``self.apply_async``; optional
  pretend work (``sleep``), a progress ``PUBLISH`` and a stop flag check, for the latency peers.
- ``bench.item``: one Celery task per item, doing the item's ``HINCRBY``.
- ``rq_increment``: the same per-item job for RQ.
- ``bench.io``: one Celery task per item that waits on I/O (``time.sleep``), for benchmark 13.
- ``bench.ping``: readiness probe for a fresh worker.

They run on the same Celery app (same broker, settings, queue and worker) as batchflow's tasks.
"""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Celery

from bench.handlers import side

CHAIN_TASK = "bench.chain"
ITEM_TASK = "bench.item"
PING_TASK = "bench.ping"
IO_TASK = "bench.io"


def register_peer_tasks(app: Celery) -> None:
    @app.task(name=CHAIN_TASK, bind=True, ignore_result=True, shared=False)
    def chain(
        self: Any,
        key: str,
        remaining: int,
        sleep: float = 0.0,
        channel: str = "",
        check_stop: bool = False,
        done_key: str = "",
    ) -> None:
        """One link of a hand-written job chain; the last link records ``finished_at``."""
        if check_stop and side.hget(key, "stop"):
            side.hset(key, mapping={"status": "stopped", "finished_at": repr(time.time())})
            return
        if sleep:
            time.sleep(sleep)
        side.hincrby(key, "processed", 1)
        now = time.time()
        side.hset(key, "updated_at", repr(now))
        if channel:
            side.publish(channel, json.dumps({"t": now}))
        if remaining > 1:
            self.apply_async(args=(key, remaining - 1, sleep, channel, check_stop, done_key))
        else:
            side.hset(key, "finished_at", repr(time.time()))
            if done_key:
                side.incr(done_key)

    @app.task(name=ITEM_TASK, ignore_result=True, shared=False)
    def item(key: str) -> None:
        side.hincrby(key, "n", 1)

    @app.task(name=IO_TASK, ignore_result=True, shared=False)
    def io(key: str, wait: float) -> None:
        """One item of benchmark 13: an I/O wait of ``wait`` seconds, then count it done."""
        time.sleep(wait)
        side.incr(key)

    @app.task(name=PING_TASK, ignore_result=True, shared=False)
    def ping(key: str) -> None:
        side.set(key, "1", ex=60)


def rq_increment(key: str) -> None:
    """RQ's per-item job: the same HINCRBY."""
    side.hincrby(key, "n", 1)
