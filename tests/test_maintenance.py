"""Maintenance takes over the step of a worker that died without waiting for its lease to run out:
a worker running steps says it is alive every BATCHFLOW_WORKER_TTL / 4, and a lease whose holder
said nothing for BATCHFLOW_WORKER_TTL is recovered. Driven by hand against the real Redis, at the
default lease (30 s); the fault tests measure it with real workers killed."""

from __future__ import annotations

import time

import pytest

from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.schema import ClaimCode, F, ms
from batchflow.store import Store
from tests.handlers import HOOKS, make_registry
from tests.helpers import ListDispatcher, make_config, wait_for

LEASE = 30.0  # the default
TTL = 2.0  # the default


@pytest.fixture
def engine(prefix: str, files_dir: str) -> Engine:
    config = make_config(prefix, files_dir, BATCHFLOW_LEASE_SECONDS=LEASE)
    config.pop("BATCHFLOW_MAINTENANCE_INTERVAL")
    settings = Settings.from_mapping(config)
    assert (settings.worker_ttl, settings.maintenance_interval) == (TTL, 1.0)
    return Engine(
        settings, Store.from_url(settings.redis_url, settings.key_prefix), make_registry()
    )


def claimed_by(engine: Engine, manual: ListDispatcher, worker: str) -> tuple[str, int, float]:
    """A job whose next step ``worker`` has just claimed (and holds, with a 30 s lease)."""
    job_id = engine.start("count", owner="a", params={"n": 50})
    manual.drain(engine, limit=1)
    ((_, seq, _),) = manual.steps
    manual.steps.clear()
    now = time.time()
    assert engine.store.claim(job_id, seq, worker, ms(now), ms(LEASE)).code is ClaimCode.OK
    return job_id, seq, now


def test_a_step_whose_worker_went_silent_is_taken_over_before_its_lease_ends(engine, manual):
    job_id, seq, claimed_at = claimed_by(engine, manual, "host:1:dead")
    done = engine.maintain(claimed_at + TTL + 0.1, force=True)
    assert (done["requeued"], done["lost"]) == (1, 1)
    assert manual.steps == [(job_id, seq, 0.0)]
    assert engine.state(job_id).fields[F.LEASE_OWNER] == ""
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.count("processed") == 50 and state.fields[F.RECOVERIES] == "1"


def test_a_living_worker_keeps_its_long_step(engine, manual):
    job_id, _, claimed_at = claimed_by(engine, manual, "host:2:alive")
    engine.store.mark_alive("host:2:alive", TTL)
    done = engine.maintain(claimed_at + TTL + 0.1, force=True)
    assert done["requeued"] == 0 and manual.steps == []
    assert engine.state(job_id).fields[F.LEASE_OWNER] == "host:2:alive"


def test_a_step_claimed_moments_ago_is_not_taken_for_dead(engine, manual):
    # Its worker says it is alive within a quarter of the TTL of its claim: not yet needed.
    job_id, _, claimed_at = claimed_by(engine, manual, "host:3:new")
    assert engine.maintain(claimed_at + TTL / 2, force=True)["requeued"] == 0
    assert engine.state(job_id).fields[F.LEASE_OWNER] == "host:3:new"


def test_a_running_step_says_its_worker_is_alive(prefix, files_dir, manual):
    """The heartbeat marks the process alive while a step runs, so maintenance leaves it alone
    however long the step takes (here, longer than the worker TTL, 0.4 s for the test)."""
    ttl = 0.4
    config = make_config(prefix, files_dir, BATCHFLOW_LEASE_SECONDS=LEASE, BATCHFLOW_WORKER_TTL=ttl)
    settings = Settings.from_mapping(config)
    engine = Engine(
        settings, Store.from_url(settings.redis_url, settings.key_prefix), make_registry()
    )
    engine.dispatcher = manual
    job_id = engine.start("count", owner="a", params={"n": 50})
    manual.drain(engine, limit=1)
    seen: list[bool] = []

    def long_step(job):
        worker = job.buffer.committed(F.LEASE_OWNER)
        wait_for(lambda: engine.store.living([worker]), timeout=ttl * 5)
        time.sleep(ttl * 2)  # past the TTL: only fresh signs of life keep the step
        seen.append(bool(engine.store.living([worker])))
        seen.append(engine.maintain(time.time(), force=True)["requeued"] == 0)

    HOOKS[f"{job_id}:step"] = long_step
    try:
        manual.drain(engine, limit=1)
    finally:
        HOOKS.pop(f"{job_id}:step")
    assert seen == [True, True]
    assert engine.state(job_id).count("processed") > 0  # the long step committed
