"""The step protocol, driven by hand against the real Redis: fence, exactly-once commits,
failures, cleanup once, FileJob's truncate-on-retry, signals."""

from __future__ import annotations

import csv
import io
import re
import threading
import time

import pytest

from batchflow import (
    InvalidParams,
    InvalidTransition,
    JobNotFound,
    Status,
    TooManyItems,
    Unavailable,
    UnknownHandler,
)
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.keys import valid_job_id
from batchflow.schema import ClaimCode
from batchflow.steps import GROWTH
from batchflow.store import Store
from tests.handlers import CLEANUPS, HOOKS, Crash, make_registry, row, side
from tests.helpers import ListDispatcher, make_config

GENERIC = re.compile(r"Something went wrong \(ref [0-9a-f]{8}\)\.")


def test_a_job_runs_to_completion_with_exact_counters(engine: Engine, manual: ListDispatcher):
    job_id = engine.start("count", owner="alice", params={"n": 1234})
    assert engine.state(job_id).status is Status.PENDING
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.COMPLETED
    assert state.count("processed") == 1234 and state.total == 1234
    d = state.to_dict()
    assert d["percent"] == 100.0 and d["outcome"] == "completed"
    texts = [m["text"] for m in d["messages"]]
    assert texts[-2:] == ["All counted", "Counted to 1234"]
    assert d["response"] == {"phase": "created"}
    assert d["labels"]["title"] == "Counting"


def test_the_same_step_twice_and_a_stale_step_change_nothing(engine, manual):
    job_id = engine.start("count", owner="alice", params={"n": 100})
    ((_, seq, _),) = manual.steps
    assert engine.run_step(job_id, 0).status is Status.RUNNING  # create_job
    before = engine.state(job_id).fields
    assert engine.run_step(job_id, 0).refused is ClaimCode.STALE  # a duplicate delivery
    assert engine.run_step(job_id, 0).refused is ClaimCode.STALE
    assert engine.state(job_id).fields["seq"] == before["seq"] == "1"
    manual.steps.clear()
    assert engine.run_step(job_id, 1).status in (Status.RUNNING, Status.COMPLETED)
    after = engine.state(job_id)
    assert engine.run_step(job_id, 1).refused is ClaimCode.STALE  # an old seq
    assert engine.state(job_id).count("processed") == after.count("processed")
    assert len(manual.steps) <= 1  # one successor, not a forked chain


def test_a_live_lease_blocks_a_concurrent_claim(engine, manual):
    job_id = engine.start("count", owner="alice", params={"n": 10})
    manual.drain(engine, limit=1)
    seq = manual.steps[0][1]
    results = []

    def slow(job):
        time.sleep(0.3)

    HOOKS[f"{job_id}:step"] = slow
    try:
        threads = [
            threading.Thread(target=lambda: results.append(str(engine.run_step(job_id, seq))))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        HOOKS.pop(f"{job_id}:step")
    assert sorted(results).count("busy") + sorted(results).count("stale") == 3
    assert engine.state(job_id).fields["seq"] == str(seq + 1)


def test_a_handler_error_fails_the_job_and_the_next_job_runs(engine, manual, prefix):
    failing = engine.start("boom", owner="bob", params={"why": "disk full", "prefix": prefix})
    manual.drain(engine)
    state = engine.state(failing)
    assert state.status is Status.FAILED
    # Not a UserError: everyone sees a reference; the real text is kept for admins.
    assert GENERIC.fullmatch(state.to_dict()["error"])
    assert state.fields["error_detail"].endswith("ValueError: boom: disk full")
    assert side.get(f"{prefix}:failures:{failing}") == "1"  # on_failure ran once
    ok = engine.start("count", owner="bob", params={"n": 5})
    manual.drain(engine)
    assert engine.state(ok).status is Status.COMPLETED


def test_an_error_in_create_job_fails_the_job(engine, manual, prefix):
    job_id = engine.start("boom", owner="bob", params={"in_create": 1, "why": "no table"})
    manual.drain(engine)
    d = engine.state(job_id).to_dict()
    assert d["status"] == "failed" and GENERIC.fullmatch(d["error"])
    detail = engine.state(job_id).fields["error_detail"]
    assert detail == f"ref {d['error'][-10:-2]}: RuntimeError: could not set up: no table"


def test_unknown_handler_bad_params_and_ids_leave_nothing(engine, manual, redis_client, prefix):
    with pytest.raises(UnknownHandler, match="not available") as unknown:
        engine.start("os.system", owner="x")
    assert "@registry.register('os.system')" in unknown.value.developer_message
    with pytest.raises(InvalidParams, match="JSON"):
        engine.start("count", owner="x", params={"n": object()})
    with pytest.raises(InvalidParams, match="does not take ids"):
        engine.start("count", owner="x", ids=["a"])
    with pytest.raises(InvalidParams, match="empty"):
        engine.start("archive", owner="x", ids=[], params={"prefix": prefix})
    with pytest.raises(InvalidParams, match="control"):
        engine.start("archive", owner="x", ids=["a\x00b"], params={"prefix": prefix})
    with pytest.raises(InvalidParams, match="lone surrogate"):
        engine.start("archive", owner="x", ids=["é", "a\ud800"], params={"prefix": prefix})
    with pytest.raises(TooManyItems):
        engine.start("archive", owner="x", ids=range(engine.settings.max_ids + 1))
    assert manual.steps == []
    assert list(redis_client.scan_iter(match=f"{prefix}:*")) == []


def test_a_started_jobs_keys_do_not_expire(engine, manual, redis_client, prefix):
    """A new job's keys are written to expire (CREATE_GRACE_MS) and made lasting in the round
    trip that indexes the job: so a started job's keys never expire by themselves, while a create
    cut off between the two (tests/test_stalls.py) leaves nothing behind for good."""
    job_id = engine.start("archive", owner="x", ids=["a", "b"], params={"prefix": prefix})
    keys = [k for k in redis_client.scan_iter(match=f"{prefix}:*") if job_id in k]
    assert len(keys) == 2 and all(redis_client.pttl(k) == -1 for k in keys), keys
    assert [j.id for j in engine.jobs("x")] == [job_id]


def test_redis_down_is_unavailable(prefix, files_dir):
    settings = Settings.from_mapping(
        {"BATCHFLOW_REDIS_URL": "redis://127.0.0.1:1/0", "BATCHFLOW_KEY_PREFIX": prefix}
    )
    engine = Engine(settings, Store.from_url(settings.redis_url, prefix), make_registry())
    engine.dispatcher = ListDispatcher()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="Redis does not answer") as raised:
        engine.start("count", owner="x")
    assert time.monotonic() - started < 10
    # The person's message names no address; the operator's names the setting to check.
    assert "127.0.0.1" not in str(raised.value)
    assert "BATCHFLOW_REDIS_URL" in raised.value.developer_message


def test_broker_down_is_unavailable_and_removes_the_job(engine, prefix, redis_client):
    from batchflow.tasks import make_celery

    make_celery(engine, config={"broker_url": "redis://127.0.0.1:1/0"})
    started = time.monotonic()
    with pytest.raises(Unavailable, match="job queue does not answer") as raised:
        engine.start("count", owner="x")
    assert time.monotonic() - started < 15
    assert "BATCHFLOW_BROKER_URL" in raised.value.developer_message
    assert [k for k in redis_client.scan_iter(match=f"{prefix}:*") if "index" not in k] == []
    assert engine.jobs("x") == []


def test_cleanup_runs_exactly_once_even_when_asked_concurrently(engine, manual):
    job_id = engine.start("count", owner="a", params={"n": 3})
    with pytest.raises(InvalidTransition):
        engine.request_cleanup(job_id)  # still running
    manual.drain(engine)
    results = []
    barrier = threading.Barrier(8)

    def clean():
        barrier.wait()
        results.append(engine.cleanup(job_id))

    threads = [threading.Thread(target=clean) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert CLEANUPS[job_id] == 1
    engine.request_cleanup(job_id)  # already cleaned: nothing is enqueued
    assert manual.cleanups == []


def _csv_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def expected_report(rows):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "name", "email", "note"])
    for i in range(rows):
        cells = row(i)
        writer.writerow([("'" + c) if c.startswith("=") else c for c in cells])
    return out.getvalue().encode()


def test_file_job_writes_every_row_once_and_cleanup_deletes_it(engine, manual):
    job_id = engine.start("report", owner="a", params={"rows": 777})
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.file_ready and state.fields["file_name"] == "contacts.csv"
    path = state.fields["file_path"]
    with open(path, "rb") as handle:
        assert handle.read() == expected_report(777)
    assert int(state.fields["file_size"]) == len(expected_report(777))
    assert _csv_rows(path)[8][3] == "'=SUM(A1:A2)"  # a formula is neutralised
    assert engine.cleanup(job_id)
    import os

    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    assert not engine.state(job_id).file_ready


def test_a_file_step_cut_off_after_writing_is_truncated_and_written_once(engine, manual):
    job_id = engine.start("report", owner="a", params={"rows": 500})
    manual.drain(engine, limit=2)  # create + one step
    crashes = []

    def crash_once(job):
        if not crashes:
            crashes.append(job.seq)
            raise Crash()

    HOOKS[f"{job_id}:written"] = crash_once
    try:
        job, seq, _ = manual.steps.pop(0)
        with pytest.raises(Crash):
            engine.run_step(job, seq)  # rows written, worker "dies" before the commit
        assert engine.run_step(job, seq).refused is ClaimCode.BUSY  # its lease is still live
        done = engine.maintain(time.time() + engine.settings.lease_seconds + 1, force=True)
        assert done["requeued"] == 1 and done["lost"] == 1
        manual.drain(engine)
    finally:
        HOOKS.pop(f"{job_id}:written")
    state = engine.state(job_id)
    assert state.status is Status.COMPLETED and state.count("processed") == 500
    with open(state.fields["file_path"], "rb") as handle:
        assert handle.read() == expected_report(500)
    assert state.to_dict()["restarted"] is False


def test_a_step_that_keeps_killing_its_worker_stalls_the_job(engine, manual):
    job_id = engine.start("count", owner="a", params={"n": 50})
    manual.drain(engine, limit=1)

    def die(job):
        raise Crash()

    HOOKS[f"{job_id}:step"] = die
    now = time.time()
    try:
        for _ in range(engine.settings.max_attempts):
            job, seq, _ = manual.steps.pop(0)
            with pytest.raises(Crash):
                engine.run_step(job, seq)
            now += engine.settings.lease_seconds + 1
            engine.maintain(now, force=True)
        manual.drain(engine)
    finally:
        HOOKS.pop(f"{job_id}:step")
    d = engine.state(job_id).to_dict()
    assert d["status"] == "failed" and d["outcome"] == "stalled"
    assert "lost 3 times" in d["error"]


def test_batch_size_adapts_toward_the_step_target(engine, manual):
    job_id = engine.start("count", owner="a", params={"n": 100000})
    manual.drain(engine, limit=6)
    grown = int(engine.state(job_id).fields["batch_size"])
    assert grown > engine.settings.batch_initial  # fast steps grow the batch (at most x4 a step)
    assert grown <= engine.settings.batch_initial * GROWTH**5
    slow = engine.start("count", owner="a", params={"n": 1000, "sleep": 0.05})
    manual.steps = [s for s in manual.steps if s[0] == slow]
    manual.drain(engine, limit=3)
    assert int(engine.state(slow).fields["batch_size"]) < engine.settings.batch_initial


def test_stop_pause_resume_and_signals_on_a_finished_job(engine, manual):
    job_id = engine.start("count", owner="a", params={"n": 1000})
    manual.drain(engine, limit=2)
    engine.signal(job_id, "pause")
    assert engine.state(job_id).actions() == ["stop", "cancel", "resume"]
    manual.drain(engine, limit=1)
    assert engine.state(job_id).status is Status.PAUSED
    assert manual.steps == []  # nothing runs while paused
    engine.signal(job_id, "pause")  # idempotent
    engine.signal(job_id, "resume")
    assert engine.state(job_id).status is Status.RUNNING and len(manual.steps) == 1
    engine.signal(job_id, "stop")
    engine.signal(job_id, "stop")  # idempotent
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.STOPPED
    assert state.count("skipped") == 1000 - state.count("processed") > 0
    with pytest.raises(InvalidTransition, match="already ended"):
        engine.signal(job_id, "stop")
    with pytest.raises(JobNotFound):
        engine.signal("nope" * 5, "stop")


def test_keys_share_one_hash_tag_and_bad_ids_are_unknown(engine):
    keys = engine.store.keys
    job_id = "abcdefghijklmnopqrstuv"
    for key in keys.all_of(job_id):
        assert f"{{{job_id}}}" in key and key.startswith(keys.prefix + ":")
    for bad in (
        "",
        "short",
        "a" * 65,
        "x" * 20 + "*",
        "{" + "x" * 20 + "}",
        "x" * 20 + ":a",
        "../" * 8,
    ):
        # Ids are checked once, where they enter the engine; the key builder trusts them.
        assert not valid_job_id(bad)
        for entry in (
            engine.state,
            engine.request_cleanup,
            lambda job_id: engine.signal(job_id, "stop"),
            lambda job_id: engine.results(job_id, "errors"),
            lambda job_id: list(engine.report_rows(job_id)),
            lambda job_id: next(engine.follow(job_id)),
        ):
            with pytest.raises(JobNotFound):
                entry(bad)
        assert engine.run_step(bad, 0).refused is ClaimCode.MISSING
        assert engine.cleanup(bad) is False


def test_a_file_job_on_an_unusable_files_dir_fails_naming_the_setting(settings, tmp_path, manual):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    config = make_config(settings.key_prefix, str(blocker))
    engine = Engine(
        Settings.from_mapping(config),
        Store.from_url(settings.redis_url, settings.key_prefix),
        make_registry(),
    )
    engine.dispatcher = manual
    job_id = engine.start("report", owner="a", params={"rows": 10})
    manual.drain(engine)
    state = engine.state(job_id)
    d = state.to_dict()
    assert d["status"] == "failed" and GENERIC.fullmatch(d["error"])  # no server path shown
    detail = state.fields["error_detail"]
    assert f"Could not write the job's file in BATCHFLOW_FILES_DIR ({blocker}): " in detail
    assert "Not a directory" in detail  # the system's own words are kept


def test_a_beat_that_comes_after_its_step_left_the_watch_sends_nothing(engine, manual):
    """The heartbeat thread lists the steps it watches, then beats each: a step may leave the
    watch (and commit) in between. A beat then must not send a checkpoint of what the commit
    carries too: applied first, it would count those units twice."""
    from batchflow.heartbeat import Heartbeat
    from batchflow.job import Job

    job_id = engine.start("count", owner="a", params={"n": 10})
    manual.drain(engine, limit=1)  # create_job: the step to claim is 1
    now = time.time()
    claim = engine.store.claim(job_id, 1, "w1", int(now * 1000), 30_000)
    job = Job(claim.fields)
    heartbeat = Heartbeat(engine.store, lease_seconds=30, worker_ttl=2)
    with heartbeat.watch(job, "w1", interval=3600, live=False):
        (entry,) = heartbeat._watched.values()  # what the thread listed
        job.mark_processed(5)
        job.checkpoint()
    payload = job.buffer.payload(job.data, {})  # what the step commits
    heartbeat._beat(entry)  # ... and the thread beats after the step left
    assert engine.state(job_id).fields["checkpoints"] == "0"
    deadline = int((time.time() + 60) * 1000)
    assert engine.store.commit(job_id, 1, "w1", time.time(), payload, deadline, 3600)
    assert engine.state(job_id).count("processed") == 5  # once
