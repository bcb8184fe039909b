"""Jobs in lanes (batchflow.lanes) on real workers: one job's ids walked by several chains of
steps at once, counted in the one job, ended once; stop, cancel, pause, Continue and retry reach
every lane; the bounds a start and a handler class are held to. (The engine's contract runs on a
job in lanes too, step by step: tests/test_contract.py; a worker killed mid-lane:
tests/test_faults.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from batchflow import (
    BatchFlow,
    ConfigurationError,
    InvalidParams,
    ItemsJob,
    Registry,
    Status,
    UserError,
)
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.job import Job
from batchflow.schema import F
from batchflow.sources import CallableSource
from batchflow.store import Store
from batchflow.tasks import make_celery
from tests.handlers import side
from tests.helpers import broker_options, wait_for, wait_terminal, web_start
from tests.webapp import create_app

IDS = 240
#: (job id, id) -> something that happens once, as that id's change begins.
AT_ID: dict[tuple[str, str], Any] = {}


class Lanes(ItemsJob):
    """Marks each id changed (``{prefix}:changed``), ``params["sleep"]`` seconds per id; counts
    how many changes run at once (``{prefix}:most``); ids starting "slow" take 50 ms, ids
    containing "bad" fail, an id "fatal" fails the job; callbacks count themselves."""

    lanes = 4
    max_lanes = 6
    batch_size = 5
    can_cancel = True

    def before_step(self, job: Job) -> None:
        if "fatal" in job.items:
            raise RuntimeError("the database went away")

    def change(self, item_id: str, job: Job) -> Any:
        prefix = job.params["prefix"]
        AT_ID.pop((job.id, item_id), lambda: None)()
        running = side.incr(f"{prefix}:running")
        side.zadd(f"{prefix}:most", {"most": running}, gt=True)
        try:
            if "bad" in item_id:
                raise UserError(f"cannot change {item_id}")
            side.hincrby(f"{prefix}:changed", item_id, 1)
            time.sleep(0.05 if item_id.startswith("slow") else float(job.params.get("sleep", 0)))
        finally:
            side.decr(f"{prefix}:running")
        return {"lane": job.lane}

    def undo(self, item_id: str, job: Job) -> None:
        side.hincrby(f"{job.params['prefix']}:changed", item_id, -1)

    def on_complete(self, job: Job) -> None:
        side.hincrby(f"{job.params['prefix']}:callbacks", "complete", 1)

    def on_failure(self, job: Job) -> None:
        side.hincrby(f"{job.params['prefix']}:callbacks", "failure", 1)

    def on_finish(self, job: Job) -> None:
        side.hincrby(f"{job.params['prefix']}:callbacks", "finish", 1)


class PreviewLanes(Lanes):
    """A preview first (in the job's own chain), then the run in lanes."""

    preview = True


@pytest.fixture
def engine(settings: Settings) -> Engine:
    registry = Registry()
    registry.add("lanes", Lanes)
    registry.add("preview-lanes", PreviewLanes)
    return Engine(settings, Store.from_url(settings.redis_url, settings.key_prefix), registry)


@pytest.fixture
def workers(engine: Engine, prefix: str) -> Iterator[Any]:
    """Four steps at once in one worker: room for every lane."""
    app = make_celery(engine, config=broker_options(prefix))
    with start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=20
    ) as worker:
        yield worker


def ids(n: int = IDS) -> list[str]:
    return [f"i{k:04d}" for k in range(n)]


def changed(prefix: str) -> dict[str, int]:
    return {k: int(v) for k, v in side.hgetall(f"{prefix}:changed").items()}


def callbacks(prefix: str) -> dict[str, int]:
    return {k: int(v) for k, v in side.hgetall(f"{prefix}:callbacks").items()}


def start(engine: Engine, prefix: str, work: list[str], **kwargs: Any) -> str:
    params = {"prefix": prefix, "sleep": kwargs.pop("sleep", 0.004)}
    return engine.start("lanes", owner="o", params=params, ids=work, **kwargs)


def under_way(engine: Engine, prefix: str, done: int) -> str:
    """A job of IDS ids of 10 ms, once ``done`` of them are committed."""
    job_id = start(engine, prefix, ids(), sleep=0.01)
    wait_for(lambda: engine.state(job_id).count("processed") >= done)
    return job_id


def test_a_job_in_lanes_changes_each_id_once_in_parallel_and_ends_once(engine, workers, prefix):
    work = ids()
    work[17], work[200] = "bad-17", "bad-200"
    job_id = start(engine, prefix, work)
    state = wait_terminal(engine, job_id, timeout=60)
    assert state.status is Status.COMPLETED
    assert (state.count("processed"), state.count("good"), state.count("bad")) == (IDS, 238, 2)
    assert changed(prefix) == {item: 1 for item in work if "bad" not in item}
    results = dict(engine.store.iter_hash(job_id, "results"))
    errors = dict(engine.store.iter_hash(job_id, "errors"))
    assert set(results) == {item for item in work if "bad" not in item}
    assert set(errors) == {"bad-17", "bad-200"}
    # Each lane walked its own quarter of the ids, and they ran at the same time.
    assert {results[work[k]] for k in (0, 60, 120, 180)} == {
        f'{{"lane": {n}}}' for n in range(1, 5)
    }
    assert int(side.zscore(f"{prefix}:most", "most") or 0) >= 2
    assert callbacks(prefix) == {"complete": 1, "finish": 1}  # the job ended once
    lanes = engine.store.lanes(job_id)
    assert sorted(lanes) == [1, 2, 3, 4]
    assert {r[F.LANE_STATE] for r in lanes.values()} == {"completed"}
    assert sum(int(r[F.PROCESSED]) for r in lanes.values()) == IDS


def test_a_start_chooses_its_lanes_within_the_handlers_bound(engine, workers, prefix):
    job_id = start(engine, prefix, ids(40), lanes=2)
    assert wait_terminal(engine, job_id).status is Status.COMPLETED
    assert engine.state(job_id).fields[F.LANES] == "2"
    assert sorted(engine.store.lanes(job_id)) == [1, 2]
    for wrong in (0, 7, True, "3", 2.5):
        with pytest.raises(InvalidParams, match="from 1 to 6"):
            start(engine, prefix, ids(40), lanes=wrong)
    few = start(engine, prefix, ids(3), lanes=6)  # no lane without ids: three lanes of one
    assert wait_terminal(engine, few).count("processed") == 3
    assert sorted(engine.store.lanes(few)) == [1, 2, 3]


def test_the_handler_class_is_checked_when_it_is_registered():
    for attributes, message in (
        ({"lanes": 0}, "whole numbers >= 1"),
        ({"lanes": 3, "max_lanes": 2}, "less than its lanes"),
        ({"lanes": 2, "source": lambda self, job: CallableSource(lambda *a: [])}, "one chain"),
    ):
        cls = type("Wrong", (Lanes,), attributes)
        with pytest.raises(ConfigurationError, match=message):
            Registry().add("wrong", cls)


def test_pause_holds_every_lane_and_resume_finishes_exactly(engine, workers, prefix):
    job_id = under_way(engine, prefix, 20)
    engine.signal(job_id, "pause")
    wait_for(lambda: engine.state(job_id).status is Status.PAUSED, timeout=20)
    # The steps in flight when the pause was seen commit; then no lane holds a worker.
    lanes = engine.store.lanes
    wait_for(lambda: not any(r[F.LEASE_OWNER] for r in lanes(job_id).values()), timeout=20)
    held = engine.state(job_id).count("processed")
    time.sleep(0.5)
    assert engine.state(job_id).count("processed") == held < IDS  # no lane went on
    engine.signal(job_id, "resume")
    state = wait_terminal(engine, job_id, timeout=60)
    assert (state.status, state.count("processed")) == (Status.COMPLETED, IDS)
    assert changed(prefix) == dict.fromkeys(ids(), 1)


def test_cancel_undoes_every_lanes_changes(engine, workers, prefix):
    job_id = under_way(engine, prefix, 40)
    engine.signal(job_id, "cancel")
    state = wait_terminal(engine, job_id, timeout=60)
    assert state.status is Status.CANCELED
    assert set(changed(prefix).values()) <= {0}  # every change undone
    assert state.count("undone") == state.count("processed") > 0
    assert callbacks(prefix) == {"finish": 1}


def test_a_cancel_after_some_lanes_ended_undoes_theirs_too(engine, workers, prefix):
    """Lane 1's ids are slow (a second in all): the other lanes end first, then the cancel
    comes; the ended lanes are opened again to undo their ranges."""
    work = [f"slow{k}" for k in range(20)] + ids(60)
    job_id = start(engine, prefix, work, sleep=0.001, lanes=4)
    ended = lambda: [n for n, r in engine.store.lanes(job_id).items() if r[F.LANE_STATE]]  # noqa: E731
    assert wait_for(lambda: len(ended()) == 3, timeout=20) and ended() == [2, 3, 4]
    engine.signal(job_id, "cancel")
    state = wait_terminal(engine, job_id, timeout=60)
    assert state.status is Status.CANCELED
    assert set(changed(prefix).values()) <= {0}
    assert state.count("undone") == state.count("processed")


def test_stop_then_continue_finishes_each_id_once(engine, workers, prefix):
    job_id = under_way(engine, prefix, 40)
    engine.signal(job_id, "stop")
    stopped = wait_terminal(engine, job_id, timeout=60)
    assert stopped.status is Status.STOPPED
    done = stopped.count("processed")
    assert 0 < done < IDS and stopped.count("skipped") == IDS - done
    assert sum(changed(prefix).values()) == done
    assert callbacks(prefix) == {"finish": 1}
    engine.signal(job_id, "continue")
    state = wait_terminal(engine, job_id, timeout=60)
    assert (state.status, state.count("processed")) == (Status.COMPLETED, IDS)
    assert changed(prefix) == dict.fromkeys(ids(), 1)
    assert callbacks(prefix) == {"finish": 2, "complete": 1}


def test_a_lane_that_fails_fails_the_job_once(engine, workers, prefix):
    work = ids(120)
    work[100] = "fatal"
    job_id = start(engine, prefix, work)
    state = wait_terminal(engine, job_id, timeout=60)
    assert state.status is Status.FAILED
    time.sleep(0.3)  # the other lanes' steps in flight commit what they did, and no more
    assert callbacks(prefix) == {"failure": 1, "finish": 1}
    final = engine.state(job_id)
    assert final.status is Status.FAILED
    assert final.count("processed") == sum(changed(prefix).values())


def test_retry_of_a_job_in_lanes_runs_its_failed_ids(engine, workers, prefix):
    work = ids(60)
    work[5], work[45] = "bad-5", "bad-45"
    first = start(engine, prefix, work)
    assert wait_terminal(engine, first).count("bad") == 2
    again = engine.retry_failed(first, "o")
    state = wait_terminal(engine, again)
    assert (state.status, state.total, state.count("bad")) == (Status.COMPLETED, 2, 2)
    assert sorted(engine.store.lanes(again)) == [1, 2]  # one id each


def test_a_start_request_and_the_command_line_choose_lanes(prefix, files_dir):
    """``"lanes": 3`` in a start request's JSON, a ``lanes`` form field, ``--lanes`` on the
    command line: within the handler's bound (archive-lanes: 2, at most 4), else refused."""
    app = create_app(prefix, files_dir)
    engine = BatchFlow.state(app).engine
    client = app.test_client()
    reply = web_start(client, "archive-lanes", {"ids": ["a", "b", "c"], "lanes": 3})
    assert reply.status_code == 202, reply.text
    assert engine.state(reply.json["id"]).fields[F.LANES] == "3"
    default = web_start(client, "archive-lanes", {"ids": ["a", "b", "c"]})
    assert engine.state(default.json["id"]).fields[F.LANES] == "2"
    for wrong, message in ((9, "from 1 to 4"), ("3", "whole number"), (True, "whole number")):
        refused = web_start(client, "archive-lanes", {"ids": ["a"], "lanes": wrong})
        assert refused.status_code == 400 and message in refused.text, refused.text
    result = app.test_cli_runner().invoke(
        args=["batchflow", "start", "archive-lanes", "--id", "a", "--id", "b", "--lanes", "4"]
    )
    assert result.exit_code == 0, result.output
    assert engine.state(result.stdout.strip()).fields[F.LANES] == "4"


def test_a_preview_runs_in_the_jobs_own_chain_and_the_confirmed_run_in_lanes(
    engine, workers, prefix
):
    work = ids(100)
    job_id = engine.start("preview-lanes", owner="o", params={"prefix": prefix}, ids=work)
    wait_for(lambda: engine.state(job_id).status is Status.AWAITING, timeout=30)
    assert changed(prefix) == {} and engine.store.lanes(job_id) == {}  # nothing changed yet
    engine.signal(job_id, "confirm")
    state = wait_terminal(engine, job_id, timeout=60)
    assert (state.status, state.count("processed"), state.count("good")) == (
        Status.COMPLETED,
        100,
        100,
    )
    assert changed(prefix) == dict.fromkeys(work, 1)
    assert sorted(engine.store.lanes(job_id)) == [1, 2, 3, 4]


def test_a_cancel_during_a_lanes_last_step_sends_that_lane_on_to_undo(engine, manual, prefix):
    """Each lane's range fits in one step; the cancel comes while lane 1's step runs. Its commit
    does not end the lane (a cancel wins over an ending): the lane's next step is sent at once,
    and undoes its range."""
    job_id = start(engine, prefix, ids(8), lanes=2, sleep=0)
    AT_ID[(job_id, "i0002")] = lambda: engine.signal(job_id, "cancel")
    assert manual.drain(engine, limit=3) == 3  # create, the lanes made, lane 1's one step
    assert [(step[0], step.lane) for step in manual.steps] == [(job_id, 2), (job_id, 1)]
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.CANCELED and set(changed(prefix).values()) == {0}
    assert state.count("undone") == state.count("processed") == 4  # lane 1's; lane 2 never ran
