"""Shared fixtures: real Redis with a key prefix per test (cleaned by SCAN + UNLINK, never a
flush), Celery broker keys under the same prefix, and a real in-process worker."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import TestWorkController

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from batchflow.config import Settings  # noqa: E402
from batchflow.engine import Engine  # noqa: E402
from batchflow.store import Store  # noqa: E402
from batchflow.tasks import make_celery  # noqa: E402
from tests.handlers import REDIS_URL, make_registry  # noqa: E402
from tests.helpers import ListDispatcher, RedisServer, broker_options, make_config  # noqa: E402


def _ensure_started_within(worker: Any, seconds: float = 60.0) -> None:
    """Celery's in-process test worker waits for ever for a worker thread that died while it
    started (Celery logs "Unrecoverable error" and stops it): fail the test instead, with the
    log, rather than hang the whole run."""
    if not worker._on_started.wait(seconds):
        raise RuntimeError(f"the in-process Celery worker did not start within {seconds:g} s")


TestWorkController.ensure_started = _ensure_started_within

#: The RabbitMQ the tests use (each test process in a vhost of its own, see rabbitmq_vhost).
AMQP_URL = os.environ.get("BATCHFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    """Keep the test's own outcome on it (``item.report_call``), for fixtures that explain a
    failure at their teardown (the servers' logs of a topology)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.report_call = report


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.exit(f"Redis does not answer at {REDIS_URL}; start it (see README).", 2)
    return client


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.unlink(*keys[i : i + 500])


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    name = f"bft-{uuid.uuid4().hex[:12]}"
    yield name
    delete_prefix(redis_client, name)


@pytest.fixture
def files_dir(tmp_path: Any) -> str:
    return str(tmp_path / "files")


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this test process's own (``amqp://.../bft-<random>``), deleted with
    everything in it at the end: tests on RabbitMQ touch nothing else of the shared server."""
    import subprocess

    vhost = f"bft-{uuid.uuid4().hex[:12]}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    ctl("add_vhost", vhost)
    try:
        ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{AMQP_URL}/{vhost}"
    finally:
        ctl("delete_vhost", vhost)


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """The Celery broker URL of the test's jobs: the Redis (the default), or RabbitMQ where a
    test is parametrized with ``broker="amqp"`` (``indirect``)."""
    if getattr(request, "param", "redis") == "amqp":
        return str(request.getfixturevalue("rabbitmq_vhost"))
    return REDIS_URL


@pytest.fixture
def settings(prefix: str, files_dir: str, broker: str) -> Settings:
    return Settings.from_mapping(make_config(prefix, files_dir, BATCHFLOW_BROKER_URL=broker))


@pytest.fixture
def engine(settings: Settings) -> Engine:
    return Engine(
        settings, Store.from_url(settings.redis_url, settings.key_prefix), make_registry()
    )


@pytest.fixture
def manual(engine: Engine) -> ListDispatcher:
    dispatcher = ListDispatcher()
    engine.dispatcher = dispatcher
    return dispatcher


@pytest.fixture
def celery_app(engine: Engine, prefix: str) -> Any:
    return make_celery(engine, config=broker_options(prefix))


@pytest.fixture
def worker(celery_app: Any) -> Iterator[Any]:
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        celery_app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=20
    ) as w:
        yield w


@pytest.fixture
def web_worker(app: Any) -> Iterator[Any]:
    """A real in-process worker (threads) of the Flask ``app`` fixture of the test's module."""
    from celery.contrib.testing.worker import start_worker

    from batchflow import BatchFlow

    with start_worker(
        BatchFlow.state(app).celery,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        shutdown_timeout=20,  # as the worker fixture: a RabbitMQ worker took over 10 s to stop
    ) as w:
        yield w


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: Any) -> Any:
    """The wheel of this checkout, built once per run for the packaging tests: the first test
    process to ask builds it, under a lock in the run's shared temporary folder, and the others
    (pytest-xdist) take that one."""
    import fcntl
    import subprocess

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder every test process of this run shares
    out = shared / "wheel"
    with open(shared / "wheel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not list(out.glob("batchflow-*.whl")):
            out.mkdir(exist_ok=True)
            build = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), ROOT],
                capture_output=True,
                text=True,
                cwd=str(out),
            )
            assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = out.glob("batchflow-*.whl")
    return wheel


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: Any) -> Iterator[Any]:
    """A Redis Cluster of three masters of this test process's own, for the whole run."""
    from tests.topologies import LocalCluster

    cluster = LocalCluster(str(tmp_path_factory.mktemp("cluster")))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[Any]:
    """Start redis-servers of the test's own (``own_redis(appendonly=...)``), killed by pid at
    the end."""
    servers: list[RedisServer] = []

    def start(appendonly: bool) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        servers.append(RedisServer(str(directory), appendonly=appendonly))
        return servers[-1].start()

    try:
        yield start
    finally:
        for server in servers:
            server.kill()
