"""Item and file jobs over resumable sources, batch changes, and continuing a stopped job: real
Redis, steps run by hand or by a real worker."""

from __future__ import annotations

import csv
import dataclasses
import time

import pytest

from batchflow import InvalidTransition, LimitReached, Status
from batchflow.engine import Engine
from tests.handlers import HOOKS, Crash, side
from tests.helpers import ListDispatcher, wait_for, wait_terminal


def counts(prefix: str, name: str = "archived") -> dict[str, int]:
    return {k: int(v) for k, v in side.hgetall(f"{prefix}:{name}").items()}


def tally(engine: Engine, job_id: str) -> tuple[int, int, int, int | None]:
    state = engine.state(job_id)
    return state.count("processed"), state.count("good"), state.count("bad"), state.total


def test_a_walk_meets_each_item_once_without_copying_the_source_into_redis(engine, manual, prefix):
    n = 3000
    job_id = engine.start("walk-archive", owner="a", params={"n": n, "every": 7, "prefix": prefix})
    manual.drain(engine, limit=3)
    assert 0 < engine.state(job_id).count("processed") < n
    manual.drain(engine)
    bad = {str(k) for k in range(7, n + 1, 7)}
    assert tally(engine, job_id) == (n, n - len(bad), len(bad), n)
    assert counts(prefix) == {str(k): 1 for k in range(1, n + 1) if str(k) not in bad}
    errors = dict(engine.store.iter_hash(job_id, "errors"))
    assert errors == {k: f"cannot archive {k}" for k in bad}
    results = dict(engine.store.iter_hash(job_id, "results"))
    assert len(results) == n - len(bad) and results["12"] == '{"square": 144}'
    assert engine.state(job_id).status is Status.COMPLETED


def test_a_walk_without_undo_keeps_no_ids_at_all(engine, manual, prefix):
    job_id = engine.start("count-up", owner="a", params={"n": 5000, "prefix": prefix})
    items = engine.store.keys.items(job_id)
    while manual.steps:
        manual.drain(engine, limit=1)
        assert not engine.store.client.exists(items)
    assert tally(engine, job_id) == (5000, 5000, 0, 5000)
    assert counts(prefix, "counted") == {str(k): 1 for k in range(1, 5001)}


def test_items_gone_before_they_are_reached_are_not_met_and_the_total_settles(
    engine, manual, prefix
):
    side.sadd(f"{prefix}:gone", *[str(k) for k in range(50, 60)])
    job_id = engine.start("walk-archive", owner="a", params={"n": 100, "prefix": prefix})
    manual.drain(engine)
    state = engine.state(job_id)
    assert tally(engine, job_id) == (90, 90, 0, 90) and state.status is Status.COMPLETED
    assert "50" not in counts(prefix) and len(counts(prefix)) == 90
    texts = [m["text"] for m in state.to_dict()["messages"]]
    assert "10 of the 100 counted at the start were gone when reached." in texts


def test_a_lost_step_resumes_from_the_committed_cursor(engine, manual, prefix):
    n = 400
    job_id = engine.start("walk-archive", owner="a", params={"n": n, "prefix": prefix})
    manual.drain(engine, limit=2)  # create, then a first slice
    before = engine.state(job_id).count("processed")

    def die(job, item):
        if item == before + 3:
            raise Crash()

    HOOKS[f"{job_id}:change"] = die
    try:
        job, seq, _ = manual.steps.pop(0)
        with pytest.raises(Crash):
            engine.run_step(job, seq)
    finally:
        HOOKS.pop(f"{job_id}:change")
    engine.maintain(time.time() + engine.settings.lease_seconds + 1, force=True)
    manual.drain(engine)
    assert tally(engine, job_id) == (n, n, 0, n)
    archived = counts(prefix)
    assert set(archived) == {str(k) for k in range(1, n + 1)}
    # Only the items the lost step changed before it died may have been changed twice.
    twice = {k for k, v in archived.items() if v > 1}
    assert twice <= {str(before + 1), str(before + 2)}


def test_a_batch_change_reports_per_item_outcomes(engine, manual, prefix):
    n = 1000
    job_id = engine.start("batch-archive", owner="a", params={"n": n, "every": 9, "prefix": prefix})
    manual.drain(engine)
    bad = {str(k) for k in range(9, n + 1, 9)}
    assert tally(engine, job_id) == (n, n - len(bad), len(bad), n)
    assert dict(engine.store.iter_hash(job_id, "errors")) == {k: f"cannot archive {k}" for k in bad}
    results = dict(engine.store.iter_hash(job_id, "results"))
    assert results["10"] == "20" and len(results) == n - len(bad)
    batches = [int(b) for b in side.lrange(f"{prefix}:batches", 0, -1)]
    assert sum(batches) == n and len(batches) < n / 10  # whole slices, not one call per item
    assert counts(prefix) == {str(k): 1 for k in range(1, n + 1) if str(k) not in bad}


def test_a_batch_that_raises_counts_its_whole_slice_bad_and_the_job_goes_on(engine, manual, prefix):
    params = {"n": 200, "prefix": prefix, "raise_at": 150}
    job_id = engine.start("batch-archive", owner="a", params=params)
    manual.drain(engine)
    processed, good, bad, _ = tally(engine, job_id)
    errors = dict(engine.store.iter_hash(job_id, "errors"))
    assert processed == 200 and good + bad == 200 and bad >= 1 and "150" in errors
    assert set(errors.values()) == {"the database refused the batch with 150"}
    assert set(counts(prefix)) == {str(k) for k in range(1, 201)} - set(errors)


def test_a_batch_change_returning_the_wrong_number_of_outcomes_fails_the_job(
    engine, manual, prefix
):
    params = {"n": 50, "prefix": prefix, "wrong_count": True}
    job_id = engine.start("batch-archive", owner="a", params=params)
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.FAILED
    assert "must return one per item" in state.fields["error_detail"]


def test_a_file_job_writes_each_row_of_its_source_once(engine, manual, prefix):
    job_id = engine.start("numbers-export", owner="a", params={"n": 5000, "prefix": prefix})
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.COMPLETED and state.total == 5000
    with open(state.fields["file_path"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["n", "square"]] + [[str(k), str(k * k)] for k in range(1, 5001)]


def test_retry_looks_the_failed_items_up_in_the_source(engine, manual, prefix):
    params = {"n": 100, "every": 10, "prefix": prefix}
    job_id = engine.start("walk-archive", owner="a", params=params)
    manual.drain(engine)
    side.sadd(f"{prefix}:fixed", *[str(k) for k in range(10, 101, 10)])
    side.sadd(f"{prefix}:gone", "20")
    retry = engine.retry(job_id, "a").job_id
    manual.drain(engine)
    assert tally(engine, retry) == (10, 9, 1, 10)
    assert dict(engine.store.iter_hash(retry, "errors")) == {"20": "This item no longer exists."}
    assert counts(prefix) == {str(k): 1 for k in range(1, 101) if k != 20}


@pytest.mark.slow
def test_stop_then_continue_runs_the_rest_exactly_once(engine, worker, prefix):
    n = 1500
    params = {"n": n, "every": 50, "prefix": prefix, "sleep": 0.002}
    job_id = engine.start("walk-archive", owner="a", params=params)
    wait_for(lambda: engine.state(job_id).count("processed") >= 100)
    engine.signal(job_id, "stop")
    stopped = wait_terminal(engine, job_id)
    processed = stopped.count("processed")
    assert stopped.status is Status.STOPPED and stopped.count("skipped") == n - processed
    assert "continue" in stopped.actions()
    assert engine.signal(job_id, "continue").status is Status.RUNNING
    done = wait_terminal(engine, job_id, timeout=60)
    assert done.status is Status.COMPLETED and "continue" not in done.actions()
    assert (done.count("processed"), done.count("bad"), done.count("skipped")) == (n, n // 50, 0)
    assert counts(prefix) == {str(k): 1 for k in range(1, n + 1) if k % 50}
    texts = [m["text"] for m in done.to_dict()["messages"]]
    assert "Continued from where it stopped" in texts


def test_a_stopped_id_job_and_a_stopped_export_continue_too(engine, manual, prefix):
    ids = [f"i{k:04d}" for k in range(600)]
    items = engine.start("archive", owner="a", ids=ids, params={"prefix": prefix})
    export = engine.start("numbers-export", owner="a", params={"n": 3000, "prefix": prefix})
    manual.drain(engine, limit=4)
    for job_id in (items, export):
        engine.signal(job_id, "stop")
    manual.drain(engine)
    assert {engine.state(j).status for j in (items, export)} == {Status.STOPPED}
    for job_id in (items, export):
        engine.signal(job_id, "continue")
    manual.drain(engine)
    assert tally(engine, items) == (600, 600, 0, 600)
    assert counts(prefix) == {i: 1 for i in ids}
    state = engine.state(export)
    assert state.status is Status.COMPLETED
    with open(state.fields["file_path"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["n", "square"]] + [[str(k), str(k * k)] for k in range(1, 3001)]


def test_cancel_after_continue_undoes_every_change_once(engine, manual, prefix):
    job_id = engine.start("walk-archive", owner="a", params={"n": 20_000, "prefix": prefix})
    manual.drain(engine, limit=3)
    engine.signal(job_id, "stop")
    manual.drain(engine)
    engine.signal(job_id, "continue")
    manual.drain(engine, limit=1)
    assert engine.state(job_id).count("processed") < 20_000
    engine.signal(job_id, "cancel")
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.CANCELED and state.count("undo_failed") == 0
    changed = counts(prefix)
    assert set(changed.values()) == {0} and len(changed) == state.count("good")
    assert counts(prefix, "undone") == {k: 1 for k in changed}


def test_continue_is_refused_with_a_reason(engine: Engine, manual: ListDispatcher, prefix):
    running = engine.start("walk-archive", owner="a", params={"n": 100, "prefix": prefix})
    with pytest.raises(InvalidTransition, match="Only a stopped job can continue; this one is"):
        engine.signal(running, "continue")
    manual.drain(engine)
    with pytest.raises(InvalidTransition, match="this one is completed"):
        engine.signal(running, "continue")
    task = engine.start("rebuild", owner="a", params={"n": 5})
    with pytest.raises(InvalidTransition, match="does not support continue"):
        engine.signal(task, "continue")


def test_continue_takes_a_place_among_the_owners_active_jobs(engine, manual, prefix):
    engine.settings = dataclasses.replace(engine.settings, max_active_jobs=1)
    first = engine.start("walk-archive", owner="a", params={"n": 500, "prefix": prefix})
    manual.drain(engine, limit=2)
    engine.signal(first, "stop")
    manual.drain(engine)
    second = engine.start("walk-archive", owner="a", params={"n": 500, "prefix": prefix})
    with pytest.raises(LimitReached):
        engine.signal(first, "continue")
    assert engine.state(first).status is Status.STOPPED
    manual.drain(engine)
    assert engine.state(second).status is Status.COMPLETED
    engine.signal(first, "continue")
    manual.drain(engine)
    assert engine.state(first).status is Status.COMPLETED
