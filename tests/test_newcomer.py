"""Mistakes a newcomer makes, and what batchflow tells them: a worker that does not import a
handler's module, a Redis URL without its scheme, the 503 page when Redis is down, the compose
file's advice. Real Redis and real Celery workers."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from batchflow import BatchFlow, ConfigurationError, Status
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.registry import Registry
from batchflow.store import Store
from batchflow.tasks import make_celery
from tests.handlers import Count, make_registry
from tests.helpers import ROOT, broker_options, make_config, wait_for, wait_terminal

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: "Redis does not answer"


@pytest.fixture
def web_engine(settings: Settings, prefix: str) -> Engine:
    """The web app's side: it registers a handler ("onlyweb") that the worker's app does not."""
    registry = make_registry()
    registry.add("onlyweb", Count)
    engine = Engine(settings, Store.from_url(settings.redis_url, settings.key_prefix), registry)
    make_celery(engine, config=broker_options(prefix))
    return engine


def _worker(engine: Engine, prefix: str) -> Any:
    from celery.contrib.testing.worker import start_worker

    celery = make_celery(engine, config=broker_options(prefix))
    return start_worker(
        celery, pool="threads", concurrency=1, perform_ping_check=False, shutdown_timeout=20
    )


def _logged(caplog: Any, level: int, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "batchflow" and r.levelno == level and text in r.getMessage()
    ]


# -- 1. the worker that does not import the handler's module ------------------------------------


def test_a_worker_without_the_handler_logs_the_fix(web_engine, engine, prefix, caplog):
    with _worker(engine, prefix):  # `engine`: make_registry(), without "onlyweb"
        job_id = web_engine.start("onlyweb", owner="a", params={"n": 3})
        assert wait_terminal(web_engine, job_id).status is Status.FAILED
        fix = (
            "no handler named 'onlyweb' is registered in this worker; "
            "import the module that registers it in the worker's app"
        )
        (record,) = wait_for(lambda: _logged(caplog, logging.ERROR, fix))
    message = record.getMessage()
    assert message.startswith(f"job {job_id} raised (ref ")  # the reference the page shows
    assert record.exc_info is None  # no traceback line that says "This job is not available."
    assert "create_app must import myapp.jobs" in message
    assert "@registry.register('onlyweb')" in message
    knows = "This worker knows: " + ", ".join(engine.registry.names()) + "."
    assert message.endswith(f"{knows} [job={job_id} handler=onlyweb step=0]")  # logs.py


def test_a_failure_of_a_known_handler_is_not_blamed_on_imports(engine, prefix, caplog):
    with _worker(engine, prefix):
        job_id = engine.start("boom", owner="a", params={"why": "no disk", "prefix": prefix})
        assert wait_terminal(engine, job_id).status is Status.FAILED
        # The step task reads the state after the step: another job that went round proves it did.
        probe = engine.start("count", owner="a", params={"n": 1})
        assert wait_terminal(engine, probe).status is Status.COMPLETED
    assert not _logged(caplog, logging.ERROR, "is registered in this worker")


def test_a_worker_with_no_handlers_says_so_when_it_starts(settings, prefix, caplog):
    empty = Engine(settings, Store.from_url(settings.redis_url, settings.key_prefix), Registry())
    with _worker(empty, prefix):
        wait_for(lambda: _logged(caplog, logging.ERROR, "no job handlers are registered"))
    (record,) = _logged(caplog, logging.ERROR, "no job handlers are registered")
    assert "every job it receives will fail" in record.getMessage()
    assert "import myapp.jobs" in record.getMessage()


def test_a_worker_lists_its_handlers_when_it_starts(engine, prefix, caplog):
    caplog.set_level(logging.INFO, logger="batchflow")
    with _worker(engine, prefix):
        wait_for(lambda: _logged(caplog, logging.INFO, "handlers registered: "))
    (record,) = _logged(caplog, logging.INFO, "handlers registered: ")
    assert record.getMessage().endswith(", ".join(engine.registry.names()))


# -- 2. Redis URLs -------------------------------------------------------------------------------


def _flask(prefix: str, files_dir: str, **config: Any) -> Flask:
    app = Flask("newcomer_test")
    app.config.update(
        make_config(prefix, files_dir, **config),
        BATCHFLOW_CELERY=broker_options(prefix),
        SECRET_KEY="test",
        TESTING=True,
    )
    return app


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("localhost:6379", "(It has no scheme: did you mean 'redis://localhost:6379'?)"),
        ("127.0.0.1:6379/0", "(It has no scheme: did you mean 'redis://127.0.0.1:6379/0'?)"),
        ("http://localhost:6379/0", "(http:// is not a Redis scheme.)"),
        ("redis://localhost:port/0", "(The port must be a number from 0 to 65535.)"),
        ("redis://localhost:6379/zero", "(The database after the / must be a number.)"),
        ("unix://", "(A unix:// URL needs the socket's path.)"),
        (
            "redis+sentinel://h1,h2",
            "(A Sentinel URL names the master after the hosts: .../mymaster/0.)",
        ),
        ("redis+sentinel://h1:x/m", "('h1:x' is not host or host:port.)"),
        ("redis+sentinel://h1/m/one", "(The database after the / must be a number.)"),
        ("redis+cluster://h1:7000/3", "(A Cluster has only database 0: leave the path empty.)"),
        ("redis+cluster://h1:70000", "(The port must be a number from 1 to 65535.)"),
        (
            "redis+cluster://h1?max_connections=0",
            "(max_connections must be a whole number of at least 1.)",
        ),
    ],
)
def test_a_bad_redis_url_names_the_setting_and_the_forms(prefix, files_dir, url, why):
    app = _flask(prefix, files_dir, BATCHFLOW_REDIS_URL=url)
    with pytest.raises(ConfigurationError) as raised:
        BatchFlow(app, registry=make_registry())
    message = str(raised.value)
    assert message.startswith("BATCHFLOW_REDIS_URL must be a Redis URL: redis://host:port/db ")
    assert "rediss://host:port/db (TLS), unix:///path/to/redis.sock?db=0, " in message
    assert "redis+sentinel://host:26379,host:26379/mymaster/0 (Sentinel), " in message
    assert "or redis+cluster://host:7000,host:7001 (Cluster); " in message
    assert message.endswith(f"; not {url!r}. {why}")


def test_a_redis_url_that_redis_py_refuses_is_a_configuration_error(prefix, files_dir):
    url = "redis://127.0.0.1:6379/0?max_connections=many"
    with pytest.raises(ConfigurationError, match=r"^BATCHFLOW_REDIS_URL '.*' is not usable: "):
        BatchFlow(_flask(prefix, files_dir, BATCHFLOW_REDIS_URL=url), registry=make_registry())


def test_a_redis_url_error_hides_the_password(prefix, files_dir):
    app = _flask(prefix, files_dir, BATCHFLOW_REDIS_URL="redis://:s3cret@localhost:port/0")
    with pytest.raises(ConfigurationError) as raised:
        BatchFlow(app, registry=make_registry())
    assert "s3cret" not in str(raised.value) and "'redis://:***@localhost:port/0'" in str(
        raised.value
    )


def test_a_broker_url_without_a_scheme_names_its_setting(prefix, files_dir):
    app = _flask(prefix, files_dir, BATCHFLOW_BROKER_URL="localhost:5672")
    with pytest.raises(ConfigurationError, match=r"^BATCHFLOW_BROKER_URL must be a Celery broker"):
        BatchFlow(app, registry=make_registry())
    bad_redis_broker = _flask(prefix, files_dir, BATCHFLOW_BROKER_URL="redis://h:6379/x")
    with pytest.raises(ConfigurationError, match=r"^BATCHFLOW_BROKER_URL must be a Redis URL"):
        BatchFlow(bad_redis_broker, registry=make_registry())


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1",
        "rediss://user:pw@example.com:6380/2?max_connections=8",
        "unix:///run/redis/redis.sock?db=1",
    ],
)
def test_the_documented_redis_url_forms_are_accepted(prefix, files_dir, url):
    app = _flask(prefix, files_dir, BATCHFLOW_REDIS_URL=url, BATCHFLOW_BROKER_URL="memory://")
    BatchFlow(app, registry=make_registry())
    assert BatchFlow.state(app).settings.redis_url == url


# -- 2. the 503 page ----------------------------------------------------------------------------


@pytest.fixture
def redis_down(prefix: str, files_dir: str) -> Iterator[Any]:
    app = _flask(prefix, files_dir, BATCHFLOW_REDIS_URL=DEAD_REDIS, BATCHFLOW_REDIS_TIMEOUT=0.5)
    BatchFlow(app, registry=make_registry(), csrf=False)
    yield app.test_client()


def test_the_503_page_offers_no_link_that_503s(redis_down):
    page = redis_down.get("/jobs/")
    assert page.status_code == 503
    html = page.get_data(as_text=True)
    assert "Jobs are unavailable right now" in html
    links = {
        re.sub(r"<[^>]+>", "", text): href
        for href, text in re.findall(r'<a[^>]*href="([^"]*)"[^>]*>(.*?)</a>', html)
    }
    # "": this page again. The header's brand leads to the site, and "My jobs" is not offered.
    assert links == {
        "Skip to content": "#bf-main",
        "Background jobs": "/",
        "Try again": "",
        "Go to the home page": "/",
    }


def test_the_503_page_after_a_post_offers_the_site_not_a_repost(redis_down):
    page = redis_down.post("/jobs/start/count", data={"n": "3"})
    assert page.status_code == 503
    html = page.get_data(as_text=True)
    assert "Try again" not in html
    assert [h for h in re.findall(r'<a[^>]*href="([^"]*)"', html) if h.startswith("/jobs")] == []
    assert re.search(r'<a class="bf-button" href="/">Go to the home page</a>', html)


def test_the_503_answer_names_no_server_address_and_the_log_has_it(redis_down, caplog):
    """The person learns what is down; the server's address and the setting to check go to the
    log (and the CLI), never to a visitor."""
    caplog.set_level(logging.WARNING, logger="batchflow")
    for answer in (redis_down.get("/jobs/"), redis_down.get("/jobs/?format=json")):
        assert answer.status_code == 503
        text = answer.get_data(as_text=True)
        assert "Redis does not answer" in text
        assert "127.0.0.1" not in text and "BATCHFLOW_REDIS_URL" not in text
    logged = _logged(caplog, logging.WARNING, "Redis does not answer (")
    assert logged and "127.0.0.1:1" in logged[0].getMessage()
    assert "BATCHFLOW_REDIS_URL" in logged[0].getMessage()


def test_the_503_page_in_debug_mode_shows_the_cause(prefix, files_dir):
    app = _flask(prefix, files_dir, BATCHFLOW_REDIS_URL=DEAD_REDIS, BATCHFLOW_REDIS_TIMEOUT=0.5)
    app.debug = True
    BatchFlow(app, registry=make_registry(), csrf=False)
    answer = app.test_client().get("/jobs/?format=json")
    assert answer.status_code == 503 and "127.0.0.1:1" in answer.json["error"]


# -- 4. the compose file and the README agree ----------------------------------------------------


def test_the_compose_file_scales_workers_as_the_readme_says():
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        compose = f.read()
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    scale = re.compile(r"docker[ -]compose up --scale worker=(\d+)")
    assert set(scale.findall(compose)) == set(scale.findall(readme)) == {"4"}


def test_other_error_pages_still_lead_back_to_the_jobs(prefix, files_dir):
    app = _flask(prefix, files_dir)
    BatchFlow(app, registry=make_registry())
    page = app.test_client().get("/jobs/" + "A" * 22)
    assert page.status_code == 404
    html = page.get_data(as_text=True)
    assert '<a class="bf-button" href="/jobs/">Back to my jobs</a>' in html
    assert '<a href="/jobs/">My jobs</a>' in html and "Try again" not in html


def test_state_on_a_cluster_or_through_sentinel_needs_a_broker_of_its_own(prefix, files_dir):
    for url in ("redis+cluster://127.0.0.1:7000", "redis+sentinel://127.0.0.1:26379/mymaster/0"):
        with pytest.raises(ConfigurationError, match="set BATCHFLOW_BROKER_URL"):
            BatchFlow(_flask(prefix, files_dir, BATCHFLOW_REDIS_URL=url), registry=make_registry())
    broker = "redis+cluster://127.0.0.1:7000"
    with pytest.raises(
        ConfigurationError, match="Celery's Redis broker cannot use a Redis Cluster"
    ):
        BatchFlow(_flask(prefix, files_dir, BATCHFLOW_BROKER_URL=broker), registry=make_registry())


def test_the_wait_for_replicas_must_fit_in_one_redis_command(prefix, files_dir):
    app = _flask(
        prefix,
        files_dir,
        BATCHFLOW_REDIS_WAIT_REPLICAS=1,
        BATCHFLOW_REDIS_WAIT_TIMEOUT=2,
        BATCHFLOW_REDIS_TIMEOUT=2,
    )
    with pytest.raises(ConfigurationError, match="WAIT_TIMEOUT must be shorter"):
        BatchFlow(app, registry=make_registry())


def test_cluster_and_sentinel_urls_are_read_as_documented():
    from batchflow.redisurl import parse_redis_url

    sentinel = parse_redis_url(
        "rediss+sentinel://:s%40cret@a:26380,[::1],b/main/3?sentinel_password=x&max_connections=8"
    )
    assert (sentinel.kind, sentinel.master, sentinel.db, sentinel.tls) == (
        "sentinel",
        "main",
        3,
        True,
    )
    assert sentinel.nodes == (("a", 26380), ("::1", 26379), ("b", 26379))
    assert (sentinel.password, sentinel.sentinel_password) == ("s@cret", "x")
    assert sentinel.max_connections == 8
    cluster = parse_redis_url("redis+cluster://user:pw@n1:7000,n2")
    assert (cluster.kind, cluster.nodes) == ("cluster", (("n1", 7000), ("n2", 6379)))
    assert (cluster.username, cluster.password, cluster.tls) == ("user", "pw", False)
    assert parse_redis_url("redis://127.0.0.1:6379/0").kind == "server"
