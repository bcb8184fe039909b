"""Redis stalled (its process paused with SIGSTOP, then resumed) for longer than the client's
timeout, in the middle of an item job, at the default ``BATCHFLOW_REDIS_TIMEOUT`` (2 s).

A stall is not an outage: every connection stays open, and what was sent during the stall is
carried out when Redis wakes, after the client has given up on it. What is proved: the web answers
503 within the timeout (not the old 10 s), a start during the stall is refused and leaves nothing
behind for good, an event stream ends or goes on (never hangs), and after the stall the job ends
exactly: every counter and outcome exact, each id's side effect done once or, for the ids of a
step cut off by the stall, twice at most, and every worker still running.

A second test stalls Redis just before a step's commit, for longer than the lease, and proves the
job goes on as soon as Redis wakes (the runner was still sending the commit, and sends the next
step), not only when maintenance re-enqueues it.

In a file of its own, as its tests mostly wait: the suite's other process goes on meanwhile.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis

from batchflow import ItemsJob
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.job import Job
from batchflow.schema import Status
from batchflow.store import CREATE_GRACE_MS, Store
from tests.handlers import make_registry, side
from tests.helpers import (
    ALICE,
    ListDispatcher,
    WorkerProcess,
    make_config,
    wait_for,
    web_start,
    web_status,
)
from tests.webapp import create_app

TIMEOUT = 2.0  # the default BATCHFLOW_REDIS_TIMEOUT
IDS = [f"r{n:05d}" for n in range(2500)]  # 2 ms each: about 5 s of work on one worker


def follow_events(client: Any, job_id: str, log: list[tuple[float, str]]) -> threading.Thread:
    """Read ``/jobs/<id>/events`` on a thread, logging (time, what) until the stream ends."""

    def read() -> None:
        response = client.get(f"/jobs/{job_id}/events", headers=ALICE, buffered=False)
        try:
            for chunk in response.response:
                text = chunk.decode() if isinstance(chunk, bytes) else chunk
                if '"terminal": true' in text:
                    log.append((time.monotonic(), "terminal"))
                elif text.startswith("data:"):
                    log.append((time.monotonic(), "event"))
            log.append((time.monotonic(), "ended"))
        except Exception as exc:  # noqa: BLE001 - how the stream broke is what the test reads
            log.append((time.monotonic(), f"broke: {type(exc).__name__}"))
        finally:
            response.close()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.parametrize("stall", [15, 30])
def test_a_redis_stall_longer_than_the_timeout_loses_nothing_and_hangs_nothing(
    own_redis, prefix, files_dir, stall
):
    server = own_redis(appendonly=False)
    config = make_config(
        prefix, files_dir, BATCHFLOW_REDIS_URL=server.url, BATCHFLOW_LEASE_SECONDS=30
    )
    for key in ("MAINTENANCE_INTERVAL", "STEP_TARGET", "QUEUE_TIMEOUT"):
        del config[f"BATCHFLOW_{key}"]  # the defaults: maintenance every 1 s, 1 s steps, 300 s
    workers = [WorkerProcess(config, pool="prefork", name="stall-a")]
    workers.append(WorkerProcess(config, name="stall-b"))
    try:
        client = create_app(prefix, files_dir, **config).test_client()
        r = web_start(client, "archive", {"ids": IDS, "params": {"prefix": prefix, "sleep": 0.002}})
        assert r.status_code == 202, r.data
        job_id = r.json["id"]
        wait_for(lambda: web_status(client, job_id).json["processed"] >= 500, timeout=60)
        events: list[tuple[float, str]] = []
        follower = follow_events(client, job_id, events)
        wait_for(lambda: events, timeout=10)

        server.proc.send_signal(signal.SIGSTOP)
        stalled_at = time.monotonic()
        began = time.monotonic()
        refused = web_start(client, "archive", {"ids": ["late-1", "late-2"], "params": {}})
        assert refused.status_code == 503 and "Redis" in refused.json["error"]
        answers = [time.monotonic() - began]
        while time.monotonic() - stalled_at < stall - TIMEOUT:
            began = time.monotonic()
            r = web_status(client, job_id)
            assert r.status_code == 503 and "Redis does not answer" in r.json["error"]
            answers.append(time.monotonic() - began)
        time.sleep(max(0.0, stall - (time.monotonic() - stalled_at)))
        server.proc.send_signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        print(f"[stall {stall}s] 503s answered in {min(answers):.2f}-{max(answers):.2f} s")
        assert max(answers) < TIMEOUT + 1.0, answers  # the timeout, not the old 10 s

        assert web_status(client, job_id).status_code == 200  # the web is back at once
        try:
            done = wait_for(
                lambda: (s := web_status(client, job_id).json)["terminal"] and s, timeout=90
            )
        except AssertionError:  # say where the job stands and what the broker holds
            raw = redis.Redis.from_url(server.url, decode_responses=True)
            state = raw.hgetall(f"{prefix}:{{{job_id}}}:job")
            broker = {k: raw.type(k) for k in raw.scan_iter(match=f"{prefix}:broker:*")}
            raise AssertionError(f"the job did not end: {state}; broker keys {broker}") from None
        finished = time.monotonic() - resumed_at
        counts = {k: done[k] for k in ("status", "processed", "good", "bad", "skipped")}
        assert counts == {
            "status": "completed",
            "processed": 2500,
            "good": 2500,
            "bad": 0,
            "skipped": 0,
        }
        archived = {k: int(v) for k, v in side.hgetall(f"{prefix}:archived").items()}
        assert set(archived) == set(IDS) and max(archived.values()) <= 2, Counter(archived.values())
        twice = sum(n == 2 for n in archived.values())
        print(f"[stall {stall}s] job ended {finished:.1f} s after; {twice} ids changed twice")
        follower.join(timeout=30)
        assert not follower.is_alive(), f"the event stream hangs: {events[-3:]}"
        assert all(w.proc.poll() is None for w in workers), "a worker died of the stall"

        # The start refused during the stall was carried out by Redis when it woke; its keys
        # expire, as nothing indexes them, and no step was ever sent for it.
        fresh = redis.Redis.from_url(server.url, decode_responses=True)
        jobs = {k.split(":")[1] for k in fresh.scan_iter(match=f"{prefix}:{{*}}:job")}
        orphans = jobs - {f"{{{job_id}}}"}
        assert len(orphans) <= 1, orphans  # the refused start, if Redis carried it out on waking
        for orphan in orphans:
            ttl = fresh.pttl(f"{prefix}:{orphan}:job")
            assert 0 < ttl <= CREATE_GRACE_MS, (orphan, ttl)
        settings = Settings.from_mapping(config)
        engine = Engine(settings, Store.from_url(server.url, prefix), make_registry())
        assert [j.id for j in engine.jobs("alice")] == [job_id]  # no trace of the refused start
        disconnect(fresh, engine)
    finally:
        for worker in workers:
            worker.kill()


def disconnect(*owners: Any) -> None:
    """Close the connections of clients and engines to the test's own Redis, which is killed
    at the end: their sockets are not left for the garbage collector to find open."""
    for owner in owners:
        client = owner.store.client if isinstance(owner, Engine) else owner
        client.connection_pool.disconnect()


class StallsItsRedis(ItemsJob):
    """Changes nothing; the item ``"stall"`` pauses the job's Redis (its pid in ``params``), so
    that step's commit is sent into the stall."""

    def change(self, item: str, job: Job) -> None:
        if item == "stall":
            os.kill(job.params["pid"], signal.SIGSTOP)


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.slow
def test_a_commit_redis_carries_out_after_the_lease_ran_out_is_followed_by_its_next_step(
    own_redis, prefix, files_dir
):
    """Redis stalls after a step's work, longer than the lease: the runner's commit times out,
    and Redis carries it out when it wakes. The runner, still sending it again, learns that it
    was applied and sends the next step, instead of giving up when the lease ran out and leaving
    the job idle until maintenance re-enqueues at BATCHFLOW_QUEUE_TIMEOUT."""
    server = own_redis(appendonly=False)
    lease = 1.0
    config = make_config(
        prefix,
        files_dir,
        BATCHFLOW_REDIS_URL=server.url,
        BATCHFLOW_LEASE_SECONDS=lease,
        BATCHFLOW_QUEUE_TIMEOUT=60,
        BATCHFLOW_REDIS_TIMEOUT=0.5,
    )
    registry = make_registry()
    registry.add("stalls-its-redis", StallsItsRedis)
    engine = Engine(Settings.from_mapping(config), Store.from_url(server.url, prefix), registry)
    engine.dispatcher = dispatcher = ListDispatcher()
    job_id = engine.start(
        "stalls-its-redis",
        owner="alice",
        ids=IDS[:5] + ["stall"] + IDS[5:40],
        params={"pid": server.proc.pid},
    )
    stall: list[float] = []

    def wake() -> None:
        wait_for(lambda: stopped(server.proc.pid), timeout=30, interval=0.01)
        began = time.monotonic()
        time.sleep(lease * 6)
        server.proc.send_signal(signal.SIGCONT)
        stall.append(time.monotonic() - began)

    waker = threading.Thread(target=wake, daemon=True)
    waker.start()
    try:
        # Raised Unavailable when the commit gave up with the lease (it then landed on waking).
        ran = dispatcher.drain(engine)
    finally:
        waker.join(timeout=30)
        server.proc.send_signal(signal.SIGCONT)
    assert stall and stall[0] > lease * 5, stall
    state = engine.state(job_id)
    assert state.status is Status.COMPLETED, state.fields
    assert (state.count("processed"), state.count("good")) == (41, 41)
    assert ran >= 3  # the first step, the stalled one, and the one it sent
    disconnect(engine)
