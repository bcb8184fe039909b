"""GET /jobs/metrics: real workers on both brokers, parsed back with prometheus_client; the same
figures from any web process; who may scrape."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchflow import BatchFlow, Status
from tests.helpers import make_config, wait_for, wait_terminal
from tests.webapp import create_app

ADMIN = {"X-Test-User": "root-admin"}
TOKEN = "a-scrapers-token-0123456789"
ON_BOTH_BROKERS = pytest.mark.parametrize(
    "broker", ["redis", pytest.param("amqp", marks=pytest.mark.slow)], indirect=True
)


@pytest.fixture
def app(prefix: str, files_dir: str, broker: str) -> Any:
    return create_app(prefix, files_dir, BATCHFLOW_BROKER_URL=broker, BATCHFLOW_METRICS_TOKEN=TOKEN)


@pytest.fixture
def engine(app):
    return BatchFlow.state(app).engine


def scrape(app: Any, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    answer = app.test_client().get("/jobs/metrics", headers=headers or ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        assert family.name.startswith("batchflow_"), family.name
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@ON_BOTH_BROKERS
def test_the_figures_of_real_jobs_on_real_workers(app, engine, web_worker, prefix, broker):
    done = engine.start("count", owner="alice", params={"n": 30, "sleep": 0.01})
    mixed = engine.start(
        "archive", owner="bob", ids=["a1", "bad2", "a3", "bad4", "a5"], params={"prefix": prefix}
    )
    failed = engine.start("boom", owner="bob", params={"why": "no disk"})
    for job_id in (done, mixed, failed):
        wait_terminal(engine, job_id)
    steps = {j: int(engine.state(j).fields["seq"]) for j in (done, mixed, failed)}
    wait_for(lambda: not engine.store.active_jobs())  # each left the index, counted
    slow = engine.start("count", owner="carol", params={"n": 500, "sleep": 0.02})
    wait_for(lambda: engine.state(slow).count("processed") > 0)

    m = scrape(app)
    assert value(m, "batchflow_jobs_started_total", handler="count") == 2
    assert value(m, "batchflow_jobs_started_total", handler="archive") == 1
    assert value(m, "batchflow_jobs_ended_total", handler="count", outcome="completed") == 1
    assert (
        value(m, "batchflow_jobs_ended_total", handler="archive", outcome="completed_with_failures")
        == 1
    )
    assert value(m, "batchflow_jobs_ended_total", handler="boom", outcome="failed") == 1
    assert value(m, "batchflow_jobs_active", status="running") == 1
    assert value(m, "batchflow_items_total", handler="archive", result="good") == 3
    assert value(m, "batchflow_items_total", handler="archive", result="bad") == 2
    # Every commit was one step; the running job's too (at least the ones before the scrape).
    assert value(m, "batchflow_steps_committed_total", handler="archive") == steps[mixed]
    assert value(m, "batchflow_steps_committed_total", handler="boom") == steps[failed]
    count_steps = value(m, "batchflow_steps_committed_total", handler="count")
    assert count_steps >= steps[done] + 1
    count = value(m, "batchflow_step_duration_seconds_count", handler="count")
    assert count == count_steps
    assert value(m, "batchflow_step_duration_seconds_bucket", handler="count", le="+Inf") == count
    assert value(m, "batchflow_step_duration_seconds_sum", handler="count") > 0.25  # 30 × 10 ms
    # The queue wait is measured from each step's due time (its message's header).
    waits = value(m, "batchflow_queue_wait_seconds_count", handler="count")
    assert waits == count_steps
    assert value(m, "batchflow_queue_wait_seconds_bucket", handler="count", le="60.0") == waits
    assert value(m, "batchflow_workers") == 1 and value(m, "batchflow_worker_slots") == 2
    assert value(m, "batchflow_broker_up") == 1
    assert ("batchflow_queue_messages", (("queue", prefix),)) in m

    # Another web process (another app on the same Redis) tells the same.
    other = create_app(prefix, files_dir_of(app), BATCHFLOW_BROKER_URL=broker)
    again = scrape(other)
    for name in ("batchflow_jobs_ended_total", "batchflow_items_total"):
        assert {k: v for k, v in again.items() if k[0] == name} == {
            k: v for k, v in m.items() if k[0] == name
        }
    engine.signal(slow, "stop")
    wait_terminal(engine, slow)
    wait_for(lambda: not engine.store.active_jobs())
    after = scrape(app)
    assert value(after, "batchflow_jobs_started_total", handler="count") == 2  # not twice
    assert value(after, "batchflow_jobs_ended_total", handler="count", outcome="stopped") == 1
    assert value(after, "batchflow_jobs_active", status="running") == 0
    assert value(after, "batchflow_steps_committed_total", handler="count") >= count_steps


def files_dir_of(app: Any) -> str:
    return str(BatchFlow.state(app).settings.files_dir)


def test_a_step_taken_over_after_its_worker_was_lost_is_counted(app, engine, manual):
    job_id = engine.start("count", owner="alice", params={"n": 5})
    manual.steps.clear()
    claim = engine.store.claim(job_id, 0, "gone:1:x", int(time.time() * 1000), 1000)
    assert claim.code.value == "ok"  # a worker took the step, then died
    engine.maintain(now=time.time() + 60, force=True)
    assert value(scrape(app), "batchflow_steps_recovered_total") == 1
    manual.drain(engine)
    assert engine.state(job_id).status is Status.COMPLETED


def test_only_admins_and_the_token_may_scrape(app, prefix, files_dir):
    client = app.test_client()
    unknown = client.get("/jobs/metrics/nothing-here")
    for headers in ({}, {"X-Test-User": "alice"}, {"Authorization": "Bearer wrong-token-xxxxxxxx"}):
        answer = client.get("/jobs/metrics", headers=headers)
        assert (answer.status_code, answer.text) == (404, unknown.text), headers
    assert scrape(app, {"Authorization": f"Bearer {TOKEN}"})
    assert scrape(app, ADMIN)


def test_a_short_token_is_refused_at_start(prefix, files_dir):
    from batchflow.config import Settings
    from batchflow.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="at least 16 characters"):
        Settings.from_mapping(make_config(prefix, files_dir, BATCHFLOW_METRICS_TOKEN="short"))


def test_without_prometheus_client_the_route_says_what_to_install(app, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    answer = app.test_client().get("/jobs/metrics", headers=ADMIN)
    assert answer.status_code == 501
    assert "pip install 'batchflow[metrics]'" in answer.text
