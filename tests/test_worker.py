"""Jobs through real Celery workers: an in-process worker, and worker subprocesses."""

from __future__ import annotations

import threading

import pytest

from batchflow import Status
from batchflow.engine import Engine
from tests.handlers import side
from tests.helpers import WorkerProcess, make_config, wait_for, wait_terminal

#: A test on each broker: the Redis, and RabbitMQ (in the slow lane). The tests of what does not
#: touch the broker (a handler's error, the garbage collector's freeze) run on the Redis only.
ON_BOTH_BROKERS = pytest.mark.parametrize(
    "broker", ["redis", pytest.param("amqp", marks=pytest.mark.slow)], indirect=True
)


def pool_for(broker: str) -> str:
    """The worker subprocesses' pool: solo, but threads on RabbitMQ, where Celery's solo pool
    holds a task sent from inside a task for up to about 10 s (README, Deployment)."""
    return "threads" if broker.startswith("amqp") else "solo"


@ON_BOTH_BROKERS
def test_ten_thousand_units_exact_counters_ordered_messages_and_events(
    engine: Engine, worker, broker
):
    with worker.app.connection_for_write() as connection:  # the broker this test is on
        assert connection.transport.driver_type == broker.split(":")[0]
    events: list = []
    job_id = engine.start("count", owner="alice", params={"n": 10_000})
    follower = threading.Thread(target=lambda: events.extend(s for s in engine.follow(job_id) if s))
    follower.start()
    state = wait_terminal(engine, job_id, timeout=60)
    follower.join(10)
    assert state.status is Status.COMPLETED
    assert state.count("processed") == 10_000 and state.total == 10_000
    assert state.to_dict()["messages"][-1]["text"] == "Counted to 10000"
    # Events arrive in commit order: seq and processed never go backwards, and the last is final.
    seqs = [int(e.fields["seq"]) for e in events]
    processed = [e.count("processed") for e in events]
    assert seqs == sorted(seqs) and processed == sorted(processed)
    assert events[-1].status is Status.COMPLETED and processed[-1] == 10_000
    # Messages within each event are in order too.
    counted = [
        int(m["text"].split()[-1]) for m in state.messages if m["text"].startswith("Counted")
    ]
    assert counted == sorted(counted)


def test_a_handler_error_fails_the_job_and_the_worker_goes_on(engine, worker, prefix):
    bad = engine.start("boom", owner="a", params={"why": "nope", "prefix": prefix})
    good = engine.start("count", owner="a", params={"n": 300})
    failed = wait_terminal(engine, bad)
    assert failed.to_dict()["error"].startswith("Something went wrong (ref ")
    assert failed.fields["error_detail"].endswith("ValueError: boom: nope")
    assert wait_terminal(engine, good).status is Status.COMPLETED


@ON_BOTH_BROKERS
def test_an_items_job_counts_good_and_bad_and_keeps_per_id_outcomes(engine, worker, prefix):
    ids = [str(i) for i in range(1, 2001)]
    job_id = engine.start("archive", owner="a", ids=ids, params={"prefix": prefix, "every": 7})
    state = wait_terminal(engine, job_id, timeout=60)
    bad = [i for i in ids if int(i) % 7 == 0]
    assert state.status is Status.COMPLETED and state.outcome == "completed_with_failures"
    assert state.count("good") == len(ids) - len(bad) and state.count("bad") == len(bad)
    archived = side.hgetall(f"{prefix}:archived")
    assert set(archived) == set(ids) - set(bad) and set(archived.values()) == {"1"}
    errors, cursor = {}, 0
    while True:
        page = engine.results(job_id, "errors", cursor, 100)
        errors.update(page.items)
        cursor = page.cursor
        if not cursor:
            break
    assert errors == {i: f"cannot archive {i}" for i in bad}
    assert engine.store.client.hget(engine.store.keys.results(job_id), "8") == '{"archived": "8"}'


@ON_BOTH_BROKERS
def test_a_one_shot_job_reports_live_and_ends_with_results(engine, worker):
    job_id = engine.start("rebuild", owner="a", params={"n": 60, "sleep": 0.01})
    live = wait_for(
        lambda: (
            (s := engine.state(job_id)).status is Status.RUNNING
            and 0 < s.count("processed") < 60
            and s
        )
    )
    assert live.total == 60
    state = wait_terminal(engine, job_id)
    d = state.to_dict()
    assert (d["status"], d["good"], d["bad"], d["results"]) == ("completed", 54, 6, {"rebuilt": 60})


@ON_BOTH_BROKERS
@pytest.mark.slow
def test_fifty_jobs_at_once_on_two_worker_processes(engine, prefix, files_dir, manual, broker):
    config = make_config(prefix, files_dir, BATCHFLOW_BROKER_URL=broker)
    jobs = {}
    from batchflow.tasks import make_celery
    from tests.helpers import broker_options

    make_celery(engine, config=broker_options(prefix))  # the real broker, for enqueueing
    for i in range(50):
        n = 200 + i * 10
        jobs[engine.start("count", owner=f"u{i % 5}", params={"n": n})] = n
    workers = [WorkerProcess(config, name=f"w{i}", pool=pool_for(broker)) for i in range(2)]
    try:
        for job_id, n in jobs.items():
            state = wait_terminal(engine, job_id, timeout=120)
            assert state.status is Status.COMPLETED
            assert state.count("processed") == n == state.total
    finally:
        for w in workers:
            w.stop()
    assert len(engine.jobs("u0", limit=100)) == 10


@pytest.mark.parametrize("freeze", ["true", "false"])
def test_a_worker_freezes_what_it_holds_after_a_handlers_first_step_unless_told_not_to(
    engine, prefix, files_dir, freeze, broker
):
    """A one-shot job's run (its second step) finds frozen what its worker subprocess held
    after the job's first step (Celery, the app, the handlers); with BATCHFLOW_GC_FREEZE off,
    nothing ever is."""
    from batchflow.tasks import make_celery
    from tests.helpers import broker_options

    make_celery(engine, config=broker_options(prefix))  # the real broker, for enqueueing
    worker = WorkerProcess(
        make_config(prefix, files_dir, BATCHFLOW_BROKER_URL=broker),
        extra_env={"BATCHFLOW_GC_FREEZE": freeze},
        pool=pool_for(broker),
    )
    try:
        for _ in range(2):
            job_id = engine.start("frozen-count", owner="a", params={"prefix": prefix})
            assert wait_terminal(engine, job_id, timeout=60).status is Status.COMPLETED
    finally:
        worker.stop()
    counts = [int(n) for n in side.lrange(f"{prefix}:frozen", 0, -1)]
    assert len(counts) == 2
    if freeze == "true":
        assert min(counts) > 10_000, counts
    else:
        assert counts == [0, 0]
