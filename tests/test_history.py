"""Run history: a record per ended job, kept per handler after the job's state expires,
bounded by count and age; the admin page's figures and a handler's last runs."""

from __future__ import annotations

import time

import pytest

from batchflow import BatchFlow, Status
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.history import Run, summarize
from batchflow.store import Store
from tests.handlers import make_registry
from tests.helpers import ListDispatcher, make_config
from tests.webapp import create_app

ADMIN = {"X-Test-User": "root-admin"}


def _engine(prefix: str, files_dir: str, **config) -> tuple[Engine, ListDispatcher]:
    settings = Settings.from_mapping(make_config(prefix, files_dir, **config))
    engine = Engine(settings, Store.from_url(settings.redis_url, prefix), make_registry())
    engine.dispatcher = manual = ListDispatcher()
    return engine, manual


def test_each_ended_job_is_kept_once_with_its_outcome_and_outlives_its_state(prefix, files_dir):
    engine, manual = _engine(prefix, files_dir)
    done = engine.start("count", owner="alice", params={"n": 4})
    boom = engine.start("boom", owner="bob", params={"why": "no disk"})
    mixed = engine.start(
        "archive", owner="carol", ids=["a1", "bad2", "a3"], params={"prefix": prefix}
    )
    stopped = engine.start("count", owner="dave", params={"n": 1000})
    engine.signal(stopped, "stop")
    manual.drain(engine)
    assert engine.state(stopped).status is Status.STOPPED
    history = engine.notifier.history  # kept as each job leaves the active index, told
    engine.maintain(force=True)  # a job maintenance finishes: nothing twice
    count_runs = history.last("count")
    assert {(r.id, r.owner, r.outcome) for r in count_runs} == {
        (stopped, "dave", "stopped"),
        (done, "alice", "completed"),
    }
    assert count_runs[0].finished_at >= count_runs[1].finished_at  # newest first
    (failed,) = history.last("boom")
    assert (failed.id, failed.outcome, failed.failed) == (boom, "failed", True)
    (archived,) = history.last("archive")
    assert (archived.id, archived.outcome) == (mixed, "completed_with_failures")
    assert (archived.processed, archived.good, archived.bad, archived.total) == (3, 2, 1, 3)
    ran = next(r for r in count_runs if r.id == done)
    assert ran.duration is not None and 0 <= ran.duration < 30 and ran.processed == 4
    assert set(history.handlers()) == {"count", "boom", "archive"}

    # The jobs expire and are cleaned: their runs stay.
    engine.maintain(now=time.time() + engine.settings.job_ttl + 60, force=True)
    with pytest.raises(Exception):  # noqa: B017, PT011 - JobNotFound
        engine.state(done)
    assert {r.id for r in history.last("count")} == {done, stopped}


def test_history_keeps_the_newest_runs_and_none_older_than_its_days(prefix, files_dir):
    engine, manual = _engine(prefix, files_dir, BATCHFLOW_HISTORY_RUNS=3, BATCHFLOW_HISTORY_DAYS=1)
    ids = []
    for _ in range(5):
        ids.append(engine.start("count", owner="alice", params={"n": 1}))
        manual.drain(engine)
        engine.maintain(force=True)
    history = engine.notifier.history
    assert [r.id for r in history.last("count")] == ids[:1:-1]  # the 3 newest, newest first
    later = time.time() + 2 * 86400
    assert history.last("count", now=later) == []  # past the days, even before a new record
    assert summarize(history.last("count")).runs == 3


def test_history_off_keeps_nothing(prefix, files_dir):
    engine, manual = _engine(prefix, files_dir, BATCHFLOW_HISTORY_RUNS=0)
    engine.start("count", owner="alice", params={"n": 1})
    manual.drain(engine)
    engine.maintain(force=True)
    assert engine.notifier.history.handlers() == []


def test_summary_figures():
    def run(outcome: str, seconds: float) -> Run:
        return Run("j", "h", "o", outcome, 1, 1, 0, 1, 0.0, 100.0, 100.0 + seconds)

    runs = [run("completed", s) for s in (1, 2, 3, 4)] + [run("stalled", 10), run("failed", 20)]
    summary = summarize(runs)
    assert (summary.runs, summary.failed, summary.p50, summary.p90) == (6, 2, 3.5, 10)
    assert summary.failure_rate == pytest.approx(1 / 3)
    assert summarize([]).as_dict()["failure_rate"] is None


def test_the_admin_page_shows_a_handlers_figures_and_its_last_runs(prefix, files_dir):
    app = create_app(prefix, files_dir)
    engine = BatchFlow.state(app).engine
    engine.dispatcher = manual = ListDispatcher()
    ok = engine.start("count", owner="alice", params={"n": 2})
    bad = engine.start("count", owner="bob", params={"n": 3})
    manual.drain(engine)
    engine.maintain(force=True)
    client = app.test_client()
    data = client.get("/jobs/admin/?format=json", headers=ADMIN).get_json()
    count = next(h for h in data["handlers"] if h["name"] == "count")
    assert count["history"]["runs"] == 2
    page = client.get("/jobs/admin/handlers/count", headers=ADMIN)
    assert page.status_code == 200
    assert f'data-run="{ok}"' in page.text and f'data-run="{bad}"' in page.text
    runs = client.get("/jobs/admin/handlers/count?format=json", headers=ADMIN).get_json()
    assert {r["id"] for r in runs["runs"]} == {ok, bad}
    assert runs["kept"] == {"runs": 100, "days": 30.0}
    assert (
        client.get("/jobs/admin/handlers/count", headers={"X-Test-User": "alice"}).status_code
        == 404
    )
    assert client.get("/jobs/admin/handlers/no-such", headers=ADMIN).status_code == 404
