"""Job state beyond one Redis server, on real servers of the tests' own (tests/topologies.py):
a Cluster of three masters (jobs' keys moved between masters while they run, events through
sharded pub/sub, admission, a web app), Sentinel (the master killed mid-run), and the wait for
a replica's acknowledgement of each commit. The broker is the shared Redis, under the test's
prefix: Celery's Redis broker cannot use a Cluster, which is the topology the README documents.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from batchflow import BatchFlow, ConfigurationError, LimitReached, Unavailable
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.schema import F, Status
from batchflow.store import Store
from batchflow.tasks import make_celery
from tests.handlers import REDIS_URL, make_registry, side
from tests.helpers import (
    ALICE,
    ListDispatcher,
    broker_options,
    make_config,
    wait_for,
    wait_terminal,
    web_start,
    web_status,
)
from tests.topologies import LocalSentinel
from tests.webapp import create_app

pytestmark = pytest.mark.slow

IDS = 40


def _engine(prefix: str, files_dir: str, url: str, **config: Any) -> Engine:
    settings = Settings.from_mapping(
        make_config(
            prefix, files_dir, BATCHFLOW_REDIS_URL=url, BATCHFLOW_BROKER_URL=REDIS_URL, **config
        )
    )
    store = Store.from_url(
        settings.redis_url,
        prefix,
        replicas=settings.redis_wait_replicas,
        replica_timeout=settings.redis_wait_timeout,
    )
    return Engine(settings, store, make_registry())


def _worker(engine: Engine, prefix: str) -> Any:
    app = make_celery(engine, config=broker_options(prefix))
    return start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=20
    )


def _start_archives(engine: Engine, prefix: str, jobs: int, sleep: float) -> list[str]:
    return [
        engine.start(
            "archive",
            owner=f"owner-{n}",
            params={"prefix": f"{prefix}:{n}", "sleep": sleep},
            ids=[str(i) for i in range(IDS)],
        )
        for n in range(jobs)
    ]


def _ended(engine: Engine, job_id: str) -> Any:
    """The job's state once it has ended; None while it runs or while Redis does not answer (a
    failover under way)."""
    try:
        state = engine.state(job_id)
    except Unavailable:
        return None
    return state if state.status.terminal else None


def _assert_exact(engine: Engine, prefix: str, job_ids: list[str]) -> None:
    """Each job completed with every id counted once, its results one per id; each id's change
    ran at least once (twice only where a step was lost with its commit)."""
    for n, job_id in enumerate(job_ids):
        state = wait_for(lambda: _ended(engine, job_id), timeout=90)  # noqa: B023
        assert state.status is Status.COMPLETED, (job_id, state.fields)
        assert state.count("good") == state.count("processed") == IDS
        assert state.count("bad") == 0
        results = dict(engine.store.iter_hash(job_id, "results"))
        assert sorted(results, key=int) == [str(i) for i in range(IDS)]
        runs = {k: int(v) for k, v in side.hgetall(f"{prefix}:{n}:archived").items()}
        assert set(runs) == set(results) and set(runs.values()) <= {1, 2}, runs


def _processing(engine: Engine, job_ids: list[str]) -> bool:
    return all(engine.state(j).count("processed") > 0 for j in job_ids)


# -- Cluster ------------------------------------------------------------------------------------


def test_jobs_finish_exactly_while_their_keys_move_between_masters(
    redis_cluster, prefix, files_dir
):
    """Every running job's hash slot is moved to another master, its keys a few at a time, while
    a worker runs it and a stream follows it (sharded pub/sub: the server drops the channel when
    its slot moves, and the stream subscribes again where it lives now)."""
    engine = _engine(prefix, files_dir, redis_cluster.url)
    jobs = 6
    with _worker(engine, prefix):
        job_ids = _start_archives(engine, prefix, jobs, sleep=0.03)
        seen: dict[str, list[str]] = {job_id: [] for job_id in job_ids}

        def follow(job_id: str) -> None:
            # No timeout re-reads during the test: what the stream sees came as events.
            for snapshot in engine.store.follow(job_id, timeout=60):
                status = snapshot[0][F.STATUS] if snapshot else "silence"
                seen[job_id].append(status)
                if status in ("completed", "failed", "silence"):
                    return

        followers = [threading.Thread(target=follow, args=(j,)) for j in job_ids]
        for thread in followers:
            thread.start()
        wait_for(lambda: _processing(engine, job_ids), timeout=30)
        cluster = engine.store.client
        moved = 0
        for job_id in job_ids:
            slot = cluster.keyslot(engine.store.keys.job(job_id))  # type: ignore[attr-defined]
            owner = redis_cluster.owner(slot)
            target = next(n for n in redis_cluster.nodes if n is not owner)
            redis_cluster.move_slot(slot, target)
            assert redis_cluster.owner(slot) is target
            moved += 1
        assert moved == jobs
        assert any(engine.state(j).status is Status.RUNNING for j in job_ids)
        _assert_exact(engine, prefix, job_ids)
        for thread in followers:
            thread.join(30)
        for job_id in job_ids:
            assert seen[job_id][-1] == "completed", seen[job_id]
        assert engine.store.events.channels() == set()  # the last stream left: unsubscribed


def test_a_cluster_keeps_each_owners_limit_and_frees_a_place_when_a_job_ends(
    redis_cluster, prefix, files_dir
):
    """Admission reads the owner's jobs with plain commands (each job in its own slot) and
    decides in one script on the owner's hash."""
    engine = _engine(prefix, files_dir, redis_cluster.url, BATCHFLOW_MAX_ACTIVE_JOBS=2)
    steps = engine.dispatcher = ListDispatcher()
    first = engine.start("count", owner="alice", params={"n": 1})
    engine.start("count", owner="alice", params={"n": 1})
    with pytest.raises(LimitReached):
        engine.start("count", owner="alice", params={"n": 1})
    engine.start("count", owner="bob", params={"n": 1})
    steps.drain(engine)
    assert engine.state(first).status is Status.COMPLETED
    assert engine.start("count", owner="alice", params={"n": 1})


def test_a_web_app_on_a_cluster_needs_a_broker_of_its_own_and_then_runs_jobs(
    redis_cluster, prefix, files_dir
):
    with pytest.raises(ConfigurationError, match="Celery's Redis broker"):
        create_app(prefix, files_dir, BATCHFLOW_REDIS_URL=redis_cluster.url)
    app = create_app(
        prefix, files_dir, BATCHFLOW_REDIS_URL=redis_cluster.url, BATCHFLOW_BROKER_URL=REDIS_URL
    )
    state = BatchFlow.state(app)
    assert state.engine.store.kind == "cluster"
    client = app.test_client()
    with start_worker(state.celery, pool="threads", concurrency=1, perform_ping_check=False):
        started = web_start(client, "count", {"params": {"n": 5}})
        assert started.status_code == 202, started.text
        job_id = started.json["id"]
        wait_terminal(state.engine, job_id)
    assert web_status(client, job_id).json["status"] == "completed"
    events = client.get(f"/jobs/{job_id}/events", headers=ALICE)
    assert b'"status": "completed"' in events.data or b'"status":"completed"' in events.data


# -- Sentinel -----------------------------------------------------------------------------------


@pytest.fixture
def sentinel(request, tmp_path: Any) -> Iterator[LocalSentinel]:
    topology = LocalSentinel(str(tmp_path / "sentinel"))
    try:
        yield topology
    finally:
        topology.stop()
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            print(topology.logs())  # shown with the failure, as the teardown's output


def test_jobs_finish_exactly_when_the_master_dies_and_sentinel_promotes_the_replica(
    sentinel, prefix, files_dir
):
    """Replication is asynchronous: a commit the old master acknowledged may not have reached
    the replica; its step then runs again (each change at most twice), and the counters equal
    the committed work, nothing counted twice."""
    engine = _engine(prefix, files_dir, sentinel.url)
    jobs = 4
    with _worker(engine, prefix):
        job_ids = _start_archives(engine, prefix, jobs, sleep=0.03)
        wait_for(lambda: _processing(engine, job_ids), timeout=30)
        assert sentinel.master_port() == sentinel.master.port  # no failover before the kill
        sentinel.kill(sentinel.master)
        sentinel.wait_failover()
        _assert_exact(engine, prefix, job_ids)


def test_waiting_for_a_replica_holds_the_next_step_until_the_commit_is_on_it(
    sentinel, prefix, files_dir, caplog
):
    """With BATCHFLOW_REDIS_WAIT_REPLICAS = 1, a commit no replica acknowledged is not followed
    by its next step: the job waits (maintenance sends the step after the deadline), and goes on
    once a replica has the commit."""
    engine = _engine(
        prefix,
        files_dir,
        sentinel.url,
        BATCHFLOW_REDIS_WAIT_REPLICAS=1,
        BATCHFLOW_REDIS_WAIT_TIMEOUT=0.3,
        BATCHFLOW_QUEUE_TIMEOUT=2,
    )
    with _worker(engine, prefix), caplog.at_level(logging.WARNING, logger="batchflow"):
        done = engine.start("count", owner="o", params={"n": 3})
        assert wait_terminal(engine, done).status is Status.COMPLETED
        unacknowledged = [r for r in caplog.records if "acknowledgement" in r.getMessage()]
        assert unacknowledged == []  # the replica acknowledged every commit
        replica, key = sentinel.client(sentinel.replica), engine.store.keys.job(done)
        # (Notifications are written after the ending commit, without waiting: let them arrive.)
        wait_for(lambda: replica.hgetall(key) == engine.state(done).fields, timeout=10)
        sentinel.kill(sentinel.replica)
        held = engine.start("count", owner="o", params={"n": 3})
        wait_for(lambda: engine.state(held).status is Status.RUNNING, timeout=10)
        time.sleep(1.0)  # no replica: the create step committed, and nothing followed it
        state = engine.state(held)
        assert state.count("processed") == 0 and state.fields[F.SEQ] == "1", state.fields
        sentinel.start_replica(sentinel.master.port)
        assert wait_terminal(engine, held, timeout=60).status is Status.COMPLETED
        assert any("acknowledgement" in r.getMessage() for r in caplog.records)
