"""The operators' routes: the health check, on both brokers, with real workers."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.helpers import WorkerProcess, make_config, wait_for
from tests.webapp import create_app

ON_BOTH_BROKERS = pytest.mark.parametrize(
    "broker", ["redis", pytest.param("amqp", marks=pytest.mark.slow)], indirect=True
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def app(prefix: str, files_dir: str, broker: str) -> Any:
    return create_app(prefix, files_dir, BATCHFLOW_BROKER_URL=broker)


@ON_BOTH_BROKERS
def test_health_fails_on_workers_until_one_runs_then_passes(
    app: Any, prefix: str, files_dir: str, broker: str
):
    client = app.test_client()
    answer = client.get("/jobs/health")  # no session, no identity: a load balancer asks
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["status"] == "failing"
    assert body["checks"]["redis"]["ok"] and body["checks"]["broker"]["ok"]
    assert body["checks"]["broker"]["waiting"] == 0
    workers = body["checks"]["workers"]
    assert workers["ok"] is False and workers["seen"] == 0
    assert "no worker consuming queue" in workers["error"] and prefix in workers["error"]

    own = client.get("/jobs/health?check=redis,broker")  # a web process's own dependencies
    assert own.status_code == 200 and set(own.get_json()["checks"]) == {"redis", "broker"}

    config = make_config(prefix, files_dir, BATCHFLOW_BROKER_URL=broker)
    proc = WorkerProcess(config, pool="threads", concurrency=2, name="health")
    try:
        wait_for(lambda: client.get("/jobs/health").status_code == 200, timeout=30)
        body = client.get("/jobs/health").get_json()
        assert body["status"] == "ok" and body["checks"]["workers"]["seen"] == 1
        assert all(isinstance(c["ms"], float) for c in body["checks"].values())
    finally:
        proc.stop()
    # A worker that stops withdraws itself: the next check fails on workers again.
    assert client.get("/jobs/health").get_json()["checks"]["workers"]["ok"] is False


def test_health_names_the_broker_when_it_does_not_answer(prefix: str, files_dir: str):
    app = create_app(prefix, files_dir, BATCHFLOW_BROKER_URL=f"redis://127.0.0.1:{_free_port()}/0")
    answer = app.test_client().get("/jobs/health?check=redis,broker")
    assert answer.status_code == 503
    checks = answer.get_json()["checks"]
    assert checks["redis"]["ok"] is True
    assert checks["broker"]["ok"] is False
    assert checks["broker"]["error"].startswith("broker did not answer (")
    assert "127.0.0.1" not in answer.text  # nothing a stranger could use


def test_health_names_redis_when_it_does_not_answer(prefix: str, files_dir: str):
    app = create_app(
        prefix,
        files_dir,
        BATCHFLOW_REDIS_URL=f"redis://127.0.0.1:{_free_port()}/0",
        BATCHFLOW_BROKER_URL="redis://127.0.0.1:6379/0",
    )
    answer = app.test_client().get("/jobs/health?check=redis")
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["redis"] == {
        "ok": False,
        "error": "redis did not answer (Unavailable)",
        "ms": answer.get_json()["checks"]["redis"]["ms"],
    }


def test_health_refuses_an_unknown_check(app: Any):
    answer = app.test_client().get(
        "/jobs/health?check=redis,disk", headers={"Accept": "application/json"}
    )
    assert answer.status_code == 400
    assert "disk" in answer.get_json()["error"]
