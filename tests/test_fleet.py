"""The workers seen and the queue's depth, with real workers on both brokers."""

from __future__ import annotations

import os
import socket
import time

import pytest

from batchflow.engine import Engine
from batchflow.fleet import WorkerSeen
from batchflow.tasks import make_celery
from batchflow.workers import queue_depth
from tests.helpers import WorkerProcess, broker_options, make_config, wait_for, wait_terminal

ON_BOTH_BROKERS = pytest.mark.parametrize(
    "broker", ["redis", pytest.param("amqp", marks=pytest.mark.slow)], indirect=True
)


def test_an_in_process_worker_announces_itself_and_the_steps_it_runs(engine: Engine, worker):
    seen = wait_for(lambda: engine.fleet.seen(), timeout=10)
    assert len(seen) == 1
    me = seen[0]
    assert me.pid == os.getpid() and me.host == socket.gethostname()
    assert me.name.endswith(f":{os.getpid()}")
    assert me.pool == "threads" and me.concurrency == 2
    assert engine.settings.queue in me.queues and me.serves(engine.settings.queue)
    assert me.version and me.version != "unknown"
    assert time.time() - 30 < me.started_at <= me.last_seen <= time.time() + 1
    assert engine.fleet.serving("another-queue") == []

    job_id = engine.start("count", owner="alice", params={"n": 40, "sleep": 0.05})

    def holding() -> WorkerSeen | None:
        for w in engine.fleet.seen():
            if any(s.job_id == job_id for s in w.steps):
                return w
        return None

    held = wait_for(holding, timeout=15)
    step = next(s for s in held.steps if s.job_id == job_id)
    assert step.seq >= 1 and step.lane == 0 and step.since and step.since <= time.time()
    wait_terminal(engine, job_id)
    wait_for(lambda: all(not w.steps for w in engine.fleet.seen()), timeout=10)


@pytest.mark.slow  # waits for an announcement to expire (10 s)
def test_a_worker_that_stops_withdraws_and_one_that_dies_expires(
    engine: Engine, prefix: str, files_dir: str, celery_app
):
    from celery.contrib.testing.worker import start_worker

    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=20):
        wait_for(lambda: engine.fleet.seen(), timeout=10)
    assert engine.fleet.seen() == []  # withdrawn at once

    config = make_config(prefix, files_dir, BATCHFLOW_MAINTENANCE_INTERVAL=0.2)
    proc = WorkerProcess(config, concurrency=3, pool="threads", name="fleet")
    try:
        seen = wait_for(lambda: engine.fleet.seen(), timeout=30)
        assert seen[0].pid == proc.pid and seen[0].concurrency == 3
        assert seen[0].name.startswith(f"{proc.name}@")
        proc.kill()
        killed = time.time()
        # Seen until its last announcement expires (at least MIN_TTL), then gone by itself.
        assert engine.fleet.seen()
        wait_for(lambda: not engine.fleet.seen(), timeout=20, interval=0.2)
        assert time.time() - killed >= engine.fleet.ttl - 1.0
    finally:
        proc.kill()


def test_a_record_of_another_shape_is_left_out_not_shown_wrong(engine: Engine, redis_client):
    good = WorkerSeen("a@h:1", "h", 1, 2, "solo", ("q",), "1", time.time(), time.time())
    engine.fleet.announce(good)
    engine.fleet.announce(WorkerSeen("b@h:2", "h", 2, 2, "solo", ("q",), "1", 0.0, time.time()))
    redis_client.set(engine.store.keys.fleet_worker("b@h:2"), '{"name": "b@h:2"}')
    assert [w.name for w in engine.fleet.seen()] == ["a@h:1"]
    engine.fleet.withdraw("a@h:1")
    engine.fleet.withdraw("b@h:2")
    assert engine.fleet.seen() == []


@ON_BOTH_BROKERS
def test_queue_depth_counts_what_waits_for_a_worker(engine: Engine, prefix: str, broker: str):
    celery = make_celery(engine, config=broker_options(prefix))
    queue = engine.settings.queue
    before = queue_depth(celery, queue)
    assert before.messages == 0
    for n in range(5):
        engine.dispatcher.enqueue_cleanup(f"no-such-job-{n:012d}")  # nobody takes them
    depth = wait_for(lambda: (d := queue_depth(celery, queue)).messages == 5 and d, timeout=10)
    if broker.startswith("amqp"):
        assert depth.consumers == 0
    else:
        assert depth.consumers is None  # the Redis transport does not count consumers
    with celery.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)
    assert queue_depth(celery, queue).messages == 0


def test_queue_depth_raises_when_the_broker_is_down(engine: Engine):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        celery = make_celery(engine, config={"broker_url": f"redis://127.0.0.1:{port}/0"})
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever kombu raises
            queue_depth(celery, engine.settings.queue, timeout=1.0)
