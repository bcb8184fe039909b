"""Item jobs, one-shot jobs, stop versus cancel-with-undo, pause, retry, throttling, callbacks:
real Redis, real workers."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from batchflow import InvalidTransition, Status
from batchflow.engine import Engine
from tests.handlers import side
from tests.helpers import ROOT, make_config, wait_for, wait_terminal, worker_went_round


def archived(prefix):
    return {k: int(v) for k, v in side.hgetall(f"{prefix}:archived").items()}


def all_errors(engine, job_id):
    return dict(engine.store.iter_hash(job_id, "errors"))


def test_five_thousand_ids_every_seventh_fails(engine: Engine, worker, prefix):
    ids = [str(i) for i in range(1, 5001)]
    job_id = engine.start("archive", owner="a", ids=ids, params={"prefix": prefix, "every": 7})
    state = wait_terminal(engine, job_id, timeout=60)
    bad = {i for i in ids if int(i) % 7 == 0}
    d = state.to_dict()
    assert (d["good"], d["bad"], d["skipped"], d["processed"]) == (
        5000 - len(bad),
        len(bad),
        0,
        5000,
    )
    assert d["outcome"] == "completed_with_failures"
    assert all_errors(engine, job_id) == {i: f"cannot archive {i}" for i in bad}
    assert archived(prefix) == {i: 1 for i in ids if i not in bad}
    rows = list(engine.report_rows(job_id))
    assert len(rows) == 5000 and sum(1 for r in rows if r[1] == "bad") == len(bad)
    # Memory: the id list is gone once the job ended; what stays is per result and per failure.
    assert not engine.store.client.exists(engine.store.keys.items(job_id))


def test_ids_produced_by_the_handler(engine, worker):
    job_id = engine.start("generated", owner="a", params={"n": 12345})
    state = wait_terminal(engine, job_id, timeout=60)
    assert (state.total, state.count("good"), state.status) == (12345, 12345, Status.COMPLETED)


def test_stop_keeps_the_work_and_changes_nothing_after_the_stop_point(engine, worker, prefix):
    ids = [f"i{n:05d}" for n in range(3000)]
    job_id = engine.start("archive", owner="a", ids=ids, params={"prefix": prefix, "sleep": 0.002})
    wait_for(lambda: engine.state(job_id).count("processed") >= 100)
    asked = engine.signal(job_id, "stop")
    assert asked.status in (Status.STOPPING, Status.STOPPED)
    state = wait_terminal(engine, job_id)
    processed = state.count("processed")
    assert state.status is Status.STOPPED and 100 <= processed < 3000
    assert state.count("skipped") == 3000 - processed
    assert archived(prefix) == {i: 1 for i in ids[:processed]}  # exactly the ids before the stop
    worker_went_round(engine)
    assert len(archived(prefix)) == processed  # nothing ran after the stop


def test_cancel_undoes_every_changed_id_exactly_once(engine, worker, prefix):
    ids = [f"c{n:05d}" for n in range(2000)] + ["bad-x"]
    job_id = engine.start("archive", owner="a", ids=ids, params={"prefix": prefix, "sleep": 0.002})
    wait_for(lambda: engine.state(job_id).count("processed") >= 300)
    engine.signal(job_id, "cancel")
    engine.signal(job_id, "cancel")  # idempotent
    state = wait_terminal(engine, job_id, timeout=60)
    d = state.to_dict()
    assert d["status"] == "canceled" and d["undo_failed"] == 0
    changed = {k for k, v in side.hgetall(f"{prefix}:undone").items()}
    assert set(archived(prefix).values()) == {0}  # the data is back as it was
    assert changed == set(archived(prefix)) and d["undone"] == len(changed) == d["good"]
    assert set(side.hgetall(f"{prefix}:undone").values()) == {"1"}  # each undone once


def test_pause_then_resume(engine, worker, prefix):
    ids = [str(n) for n in range(600)]
    job_id = engine.start("archive", owner="a", ids=ids, params={"prefix": prefix, "sleep": 0.001})
    wait_for(lambda: engine.state(job_id).count("processed") >= 50)
    engine.signal(job_id, "pause")
    paused = wait_for(lambda: (s := engine.state(job_id)).status is Status.PAUSED and s)
    assert paused.actions() == ["stop", "cancel", "resume"]
    # Maintenance past every deadline leaves a paused job alone, and the worker went round.
    later = time.time() + engine.settings.queue_timeout + engine.settings.lease_seconds
    assert engine.maintain(later, force=True)["requeued"] == 0
    worker_went_round(engine)
    assert engine.state(job_id).count("processed") == paused.count("processed")  # no step ran
    assert len(archived(prefix)) == paused.count("processed")
    engine.signal(job_id, "resume")
    state = wait_terminal(engine, job_id, timeout=60)
    assert state.status is Status.COMPLETED and state.count("good") == 600
    assert archived(prefix) == {i: 1 for i in ids}


def test_a_stop_from_another_process_is_obeyed(engine, worker, prefix, files_dir):
    job_id = engine.start("count", owner="a", params={"n": 100000, "sleep": 0.0005})
    wait_for(lambda: engine.state(job_id).count("processed") > 0)
    config = make_config(prefix, files_dir)
    code = (
        "from batchflow.config import Settings\n"
        "from batchflow.engine import Engine\n"
        "from batchflow.store import Store\n"
        "from tests.handlers import make_registry\n"
        "s = Settings.from_mapping()\n"
        "e = Engine(s, Store.from_url(s.redis_url, s.key_prefix), make_registry())\n"
        f"print(e.signal({job_id!r}, 'stop').status.value)\n"
    )
    env = {**__import__("os").environ, **{k: str(v) for k, v in config.items()}, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stopping"
    state = wait_terminal(engine, job_id)
    assert state.status is Status.STOPPED and state.count("processed") < 100000


def test_a_one_shot_job_is_live_and_stops_mid_run(engine, worker):
    job_id = engine.start("rebuild", owner="a", params={"n": 2000, "sleep": 0.005})
    seen = set()
    wait_for(lambda: seen.add(engine.state(job_id).count("processed")) or len(seen - {0}) >= 3)
    engine.signal(job_id, "stop")
    state = wait_terminal(engine, job_id)
    d = state.to_dict()
    assert d["status"] == "stopped" and 0 < d["processed"] < 2000
    assert d["skipped"] == 2000 - d["processed"] and d["results"] is None


def test_retry_failed_runs_over_exactly_the_failed_ids(engine, worker, prefix):
    ids = [str(i) for i in range(1, 301)]
    first = engine.start("archive", owner="a", ids=ids, params={"prefix": prefix, "every": 10})
    wait_terminal(engine, first)
    failed = set(all_errors(engine, first))
    assert len(failed) == 30
    retry = engine.retry_failed(first, owner="a")
    assert engine.state(retry).fields["retry_of"] == first
    state = wait_terminal(engine, retry)
    assert state.total == 30 and set(all_errors(engine, retry)) == failed
    clean = engine.start("archive", owner="a", ids=["ok"], params={"prefix": prefix})
    wait_terminal(engine, clean)
    with pytest.raises(InvalidTransition, match="no failed ids"):
        engine.retry_failed(clean, owner="a")


def test_callbacks_run_once_and_steps_are_throttled(engine, worker, prefix):
    ok = engine.start("hooked", owner="a", params={"prefix": prefix})
    bad = engine.start("hooked", owner="a", params={"prefix": prefix, "fail": 1})
    assert wait_terminal(engine, ok).status is Status.COMPLETED
    assert wait_terminal(engine, bad).status is Status.FAILED
    assert side.hgetall(f"{prefix}:hooks:{ok}") == {"complete": "1", "finish": "1"}
    assert side.hgetall(f"{prefix}:hooks:{bad}") == {"failure": "1", "finish": "1"}
    times = [float(t) for t in side.lrange(f"{prefix}:step-times:{ok}", 0, -1)]
    assert len(times) == 3 and min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.2


def test_labels_have_defaults_and_handler_overrides(engine, manual, prefix):
    job_id = engine.start("archive", owner="a", ids=["1"], params={"prefix": prefix})
    labels = engine.state(job_id).to_dict()["labels"]
    assert labels["title"] == "Archiving" and labels["good"] == "archived"
    assert labels["stopped"].startswith("Stopped") and labels["canceled"].startswith("Canceled")
