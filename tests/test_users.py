"""The user, inside the worker: ``job.user`` is the job's owner as the app's user object (by
default through Flask-Login's ``user_loader``), and a handler registered with
``recheck_permission=True`` stops when its owner's permission is withdrawn while it runs.

Real Redis, a real in-process Celery worker running the steps inside the app's context, real
Flask-Login; the app's users live in a dict, as a small app's might.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import flask_login
import pytest
from celery.contrib.testing.worker import start_worker
from flask import Flask, request

from batchflow import BatchFlow, ConfigurationError, ItemsJob, Registry, Status, TaskJob
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.job import Job
from batchflow.store import Store
from tests.helpers import ListDispatcher, broker_options, make_config, wait_for, wait_terminal


class User(flask_login.UserMixin):
    def __init__(self, user_id: str, email: str) -> None:
        self.id = user_id
        self.email = email
        self.allowed = True


USERS: dict[str, User] = {}


def describe(user: Any) -> str:
    if user is None:
        return "none"
    if isinstance(user, dict):
        return f"dict {user['name']}"
    if not user.is_authenticated:
        return "anonymous"
    return f"email {user.email}"


class WhoAmI(TaskJob):
    labels = {"title": "Who am I"}

    def run(self, job: Job) -> None:
        job.add_message(f"user: {describe(job.user)}")


class Slow(ItemsJob):
    """Five items a step, 20 ms each: about 40 steps for 200 ids."""

    labels = {"title": "Slowly"}
    batch_size = 5

    def change(self, item: str, job: Job) -> None:
        time.sleep(0.02)


def may_run(user: Any) -> bool:
    return bool(getattr(user, "allowed", False))


def make_registry() -> Registry:
    registry = Registry()
    registry.add("whoami", WhoAmI)
    registry.add("guarded", Slow, permission=may_run, recheck_permission=True)
    registry.add("checked-at-start", Slow, permission=may_run)
    return registry


@pytest.fixture
def app(prefix: str, files_dir: str) -> Iterator[Flask]:
    USERS.clear()
    USERS.update({"7": User("7", "ada@example.com"), "8": User("8", "bob@example.com")})
    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", BATCHFLOW_CELERY=broker_options(prefix))
    app.config.update(make_config(prefix, files_dir))
    flask_login.LoginManager(app).user_loader(USERS.get)
    BatchFlow(app, registry=make_registry())

    @app.post("/login/<user_id>")
    def log_in(user_id: str) -> str:
        flask_login.login_user(USERS[user_id])
        return "ok"

    celery = BatchFlow.state(app).celery
    with start_worker(celery, pool="threads", concurrency=2, perform_ping_check=False):
        yield app


def token(client: Any, headers: dict[str, str] | None = None) -> str:
    page = client.get("/jobs/start/whoami", headers=headers or {})
    assert page.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def start(client: Any, handler: str, **body: Any) -> str:
    response = client.post(
        f"/jobs/start/{handler}", json=body, headers={"X-CSRFToken": token(client)}
    )
    assert response.status_code == 202, response.data
    return str(response.json["id"])


def messages(state: Any) -> list[str]:
    return [m["text"] for m in state.messages]


def test_a_step_sees_its_owner_as_the_apps_user_object(app):
    client = app.test_client()
    client.post("/login/7")
    engine = BatchFlow.state(app).engine
    state = wait_terminal(engine, start(client, "whoami"))
    assert state.status is Status.COMPLETED
    assert "user: email ada@example.com" in messages(state)


def test_an_anonymous_owner_is_the_login_managers_anonymous_user(app):
    engine = BatchFlow.state(app).engine
    state = wait_terminal(engine, start(app.test_client(), "whoami"))
    assert state.owner.startswith("anon:")
    assert "user: anonymous" in messages(state)


def test_a_permission_withdrawn_while_the_job_runs_stops_it_saying_why(app):
    client = app.test_client()
    client.post("/login/7")
    engine = BatchFlow.state(app).engine
    ids = [f"i{n}" for n in range(200)]
    guarded, checked_once = (
        start(client, "guarded", ids=ids),
        start(client, "checked-at-start", ids=ids),
    )
    wait_for(lambda: engine.state(guarded).count("processed") >= 10, timeout=30)
    USERS["7"].allowed = False  # an admin takes the right away
    stopped = wait_terminal(engine, guarded, timeout=60)
    assert stopped.status is Status.STOPPED
    assert 10 <= stopped.count("processed") < 200
    assert any("no longer allowed" in text for text in messages(stopped)), messages(stopped)
    # Asked at the start only (the default), the permission does not stop a running job.
    assert wait_terminal(engine, checked_once, timeout=60).status is Status.COMPLETED
    # And the web refuses a new start, as before.
    response = client.post(
        "/jobs/start/guarded", json={"ids": ids}, headers={"X-CSRFToken": token(client)}
    )
    assert response.status_code == 403


def test_an_app_without_flask_login_gives_its_own_loader(prefix, files_dir):
    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", BATCHFLOW_CELERY=broker_options(prefix))
    app.config.update(make_config(prefix, files_dir))
    BatchFlow(
        app,
        registry=make_registry(),
        identity=lambda: request.headers.get("X-User"),
        load_user=lambda owner: {"name": owner.upper()},
    )
    client = app.test_client()
    csrf = token(client, headers={"X-User": "carol"})
    response = client.post(
        "/jobs/start/whoami", json={}, headers={"X-User": "carol", "X-CSRFToken": csrf}
    )
    assert response.status_code == 202, response.data
    with start_worker(BatchFlow.state(app).celery, pool="threads", perform_ping_check=False):
        state = wait_terminal(BatchFlow.state(app).engine, response.json["id"])
    assert "user: dict CAROL" in messages(state)


def test_an_engine_without_a_loader_gives_steps_no_user(prefix, files_dir):
    settings = Settings.from_mapping(make_config(prefix, files_dir))
    engine = Engine(settings, Store.from_url(settings.redis_url, prefix), make_registry())
    engine.dispatcher = dispatcher = ListDispatcher()
    job_id = engine.start("whoami", owner="dave")
    dispatcher.drain(engine)
    assert "user: none" in messages(engine.state(job_id))


def test_recheck_permission_needs_a_permission_hook():
    with pytest.raises(ConfigurationError, match="recheck_permission=True needs a permission"):
        Registry().add("lonely", Slow, recheck_permission=True)
