"""Notifications of a job's ending: the owner's inbox (the toast's JSON, seen on opening the page
or on dismissing), email over a real SMTP server (aiosmtpd), a signed webhook to a real local HTTP
server, the ``on_notify`` hook; retries with backoff, and the settings that must go together.

Real Redis, real in-process Celery workers running steps and ``notify`` tasks inside the app's
context, real Flask-Login; the servers are subprocesses on free ports (tests/receivers.py).
Maintenance is driven by hand (``engine.maintain(force=True)``) where a test waits for a retry.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import flask_login
import pytest
from celery.contrib.testing.worker import start_worker
from flask import Flask, render_template_string

from batchflow import BatchFlow, ConfigurationError, FileJob, ItemsJob, Notice, Registry, TaskJob
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.job import Job
from batchflow.store import Store
from batchflow.tasks import make_celery
from batchflow.webhooks import KEY_HEADER, SIGNATURE_HEADER, verify
from tests.handlers import side
from tests.helpers import WorkerProcess, broker_options, make_config, wait_for, wait_terminal
from tests.notify_workerapp import make_mail_registry, user_of
from tests.receivers import HttpReceiver, SmtpServer, free_port

SECRET = "a-webhook-secret-of-some-length"
BASE = "http://app.test"


class User(flask_login.UserMixin):
    def __init__(self, user_id: str, email: str | None) -> None:
        self.id = user_id
        self.email = email


USERS = {"7": User("7", "ada@example.com"), "8": User("8", "bob@example.com")}


class Hello(TaskJob):
    labels = {"title": "Say hello"}

    def run(self, job: Job) -> None:
        job.add_message("hello")


class Always(Hello):
    notify_email = True


class Never(Hello):
    notify_email = False


class Archive(ItemsJob):
    labels = {"title": "Archiving posts", "good": "archived"}

    def change(self, item: str, job: Job) -> None:
        if item.startswith("bad"):
            raise ValueError("locked")


class Export(FileJob):
    labels = {"title": "Your export"}
    filename = "export.csv"

    def create_job(self, job: Job) -> None:
        job.set_total(1)

    def continue_job(self, job: Job, batch_size: int) -> None:
        self.write_rows(job, [["a", "b"]])
        job.mark_processed(1)
        job.complete()


def make_registry() -> Registry:
    registry = Registry()
    registry.add("hello", Hello)
    registry.add("archive", Archive)
    registry.add("export", Export)
    return registry


def make_app(
    prefix: str,
    files_dir: str,
    registry: Registry | None = None,
    hook: Any = None,
    **config: Any,
) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", BATCHFLOW_CELERY=broker_options(prefix))
    app.config.update(make_config(prefix, files_dir, BATCHFLOW_NOTIFY_BACKOFF=0.2, **config))
    flask_login.LoginManager(app).user_loader(USERS.get)
    BatchFlow(app, registry=registry or make_registry(), on_notify=hook)

    @app.post("/login/<user_id>")
    def log_in(user_id: str) -> str:
        flask_login.login_user(USERS[user_id])
        return "ok"

    @app.get("/count")
    def count() -> str:
        return render_template_string("{{ batchflow_unseen_count() }}")

    return app


@pytest.fixture
def running() -> Iterator[Any]:
    """Runs an app's in-process worker: ``with running(app): ...``."""

    def run(app: Flask) -> Any:
        return start_worker(
            BatchFlow.state(app).celery, pool="threads", concurrency=2, perform_ping_check=False
        )

    return run  # type: ignore[return-value]


def token(client: Any) -> str:
    page = client.get("/jobs/catalogue")
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def start(client: Any, handler: str, **body: Any) -> str:
    response = client.post(
        f"/jobs/start/{handler}", json=body, headers={"X-CSRFToken": token(client)}
    )
    assert response.status_code == 202, response.data
    return str(response.json["id"])


def record_of(engine: Any, job_id: str) -> dict[str, Any]:
    """The job's delivery record as it is now."""
    return json.loads(engine.state(job_id).fields.get("notified") or "{}")  # type: ignore[no-any-return]


def told(engine: Any, job_id: str) -> dict[str, Any]:
    """The job's delivery record, once nothing is pending any more."""
    wait_for(lambda: "notify_due" not in engine.state(job_id).fields, timeout=30)
    return record_of(engine, job_id)


# -- in the app ------------------------------------------------------------------------------


def test_an_ending_waits_in_its_owners_inbox_until_the_page_is_opened_or_dismissed(
    prefix, files_dir, running
):
    app = make_app(prefix, files_dir)
    ada, bob = app.test_client(), app.test_client()
    ada.post("/login/7")
    bob.post("/login/8")
    engine = BatchFlow.state(app).engine
    with running(app):
        archived = start(ada, "archive", ids=["p1", "bad1", "p2"])
        exported = start(ada, "export")
        hello = start(ada, "hello")
        for job_id in (archived, exported, hello):
            wait_terminal(engine, job_id)
            told(engine, job_id)
    listed = ada.get("/jobs/notifications").json
    assert listed["unseen"] == 3
    by_id = {n["job_id"]: n for n in listed["notifications"]}
    assert by_id[archived]["title"] == "Archiving posts"
    assert by_id[archived]["headline"] == "Completed with failures"
    assert by_id[archived]["summary"] == "2 archived, 1 failed."
    assert by_id[archived]["action"] == "See why"
    assert by_id[archived]["action_url"] == f"/jobs/{archived}/results"
    assert by_id[exported]["action"] == "Download"
    assert by_id[exported]["action_url"] == f"/jobs/{exported}/download"
    assert by_id[hello]["action"] == "Open"
    assert by_id[hello]["url"] == f"/jobs/{hello}"
    assert ada.get("/count").text == "3"
    # Owner-only: another person's inbox is their own, and they cannot mark ada's jobs seen.
    assert bob.get("/jobs/notifications").json["unseen"] == 0
    assert bob.get("/count").text == "0"
    bob.post("/jobs/notifications/seen", json={"ids": [hello]}, headers={"X-CSRFToken": token(bob)})
    assert ada.get("/jobs/notifications").json["unseen"] == 3
    # A change needs the CSRF token.
    assert ada.post("/jobs/notifications/seen", json={"ids": [hello]}).status_code == 400
    seen = ada.post(
        "/jobs/notifications/seen", json={"ids": [hello]}, headers={"X-CSRFToken": token(ada)}
    )
    assert seen.status_code == 200 and seen.json == {"unseen": 2}
    assert ada.get(f"/jobs/{exported}").status_code == 200  # opening the page: seen
    assert [n["job_id"] for n in ada.get("/jobs/notifications").json["notifications"]] == [archived]
    bad = ada.post(
        "/jobs/notifications/seen", json={"ids": "all"}, headers={"X-CSRFToken": token(ada)}
    )
    assert bad.status_code == 400 and "ids must be a list" in bad.json["error"]
    everything = ada.post(
        "/jobs/notifications/seen", json={"all": True}, headers={"X-CSRFToken": token(ada)}
    )
    assert everything.json == {"unseen": 0}
    assert ada.get("/count").text == "0"
    # A visitor with no identity yet gets an empty list, and no session cookie from asking.
    visitor = app.test_client().get("/jobs/notifications")
    assert visitor.status_code == 200 and visitor.json["unseen"] == 0
    assert "Set-Cookie" not in visitor.headers


def test_a_page_that_saw_the_ending_before_the_inbox_got_it_leaves_nothing_unseen(
    prefix, files_dir, running
):
    app = make_app(prefix, files_dir)
    engine = BatchFlow.state(app).engine
    ada = app.test_client()
    ada.post("/login/7")
    with running(app):
        job_id = start(ada, "hello")
        wait_terminal(engine, job_id)
        told(engine, job_id)
    inbox = engine.notifier.inbox
    inbox.mark_seen("user:7", [job_id])
    inbox.add("user:7", job_id, time.time(), 60)  # the notifier, later than the page
    assert inbox.unseen("user:7") == []
    assert engine.store.client.zcard(engine.store.keys.unseen("user:7")) == 0


# -- by email --------------------------------------------------------------------------------


@pytest.fixture
def smtp(tmp_path: Any) -> Iterator[SmtpServer]:
    server = SmtpServer(str(tmp_path / "maildir")).start()
    yield server
    server.stop()


def email_config(port: int) -> dict[str, Any]:
    return {
        "BATCHFLOW_NOTIFY_EMAIL": True,
        "BATCHFLOW_BASE_URL": BASE,
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": port,
        "MAIL_DEFAULT_SENDER": ("Reports", "reports@app.test"),
    }


def test_an_email_goes_to_the_owner_who_asked_once_with_a_link_and_a_stable_id(
    prefix, files_dir, running, smtp
):
    registry = make_registry()
    registry.add("always", Always)
    registry.add("never", Never)
    app = make_app(prefix, files_dir, registry, **email_config(smtp.port))
    engine = BatchFlow.state(app).engine
    ada, anonymous = app.test_client(), app.test_client()
    ada.post("/login/7")
    form = ada.get("/jobs/start/hello").text
    assert 'name="notify_email"' in form  # the start form offers it
    assert 'name="notify_email"' not in ada.get("/jobs/start/always").text
    assert 'name="notify_email"' not in ada.get("/jobs/start/never").text
    with running(app):
        asked = start(ada, "hello", notify_email=True)
        not_asked = start(ada, "hello")
        always = start(ada, "always")
        never = start(ada, "never", notify_email=True)
        nobody = start(anonymous, "hello", notify_email=True)
        for job_id in (asked, not_asked, always, never, nobody):
            wait_terminal(engine, job_id)
            told(engine, job_id)
    wait_for(lambda: len(smtp.messages()) >= 2)
    time.sleep(0.3)
    messages = {m["X-Batchflow-Job"]: m for m in smtp.messages()}
    assert sorted(messages) == sorted([asked, always])
    mail = messages[asked]
    seq = engine.state(asked).fields["seq"]
    assert mail["To"] == "ada@example.com"
    assert mail["From"] == "Reports <reports@app.test>"
    assert mail["Subject"] == "Say hello: Completed"
    assert mail["Message-ID"] == f"<batchflow.{asked}.{seq}@app.test>"
    assert mail["Auto-Submitted"] == "auto-generated"
    body = mail.get_payload(decode=True).decode()
    assert f"See the job: {BASE}/jobs/{asked}" in body
    assert told(engine, asked)["email"]["done"] == "sent"
    assert told(engine, nobody)["email"]["done"] == "skipped: no address for the owner"
    assert "email" not in told(engine, not_asked)
    assert "email" not in told(engine, never)


def test_an_smtp_server_that_is_down_is_tried_again_and_the_job_keeps_its_outcome(
    prefix, files_dir, running, tmp_path
):
    port = free_port()
    app = make_app(prefix, files_dir, **email_config(port))
    engine = BatchFlow.state(app).engine
    ada = app.test_client()
    ada.post("/login/7")
    server = SmtpServer(str(tmp_path / "maildir"), port)
    try:
        with running(app):
            job_id = start(ada, "hello", notify_email=True)
            state = wait_terminal(engine, job_id)
            assert state.status.value == "completed"
            wait_for(lambda: "email" in record_of(engine, job_id))
            record = record_of(engine, job_id)
            assert record["email"]["n"] == 1 and "at" in record["email"]
            assert engine.store.client.zscore(engine.store.keys.active, job_id) is not None
            server.start()

            def delivered() -> bool:
                engine.maintain(force=True)
                return bool(server.messages())

            wait_for(delivered, timeout=30, interval=0.2)
            record = told(engine, job_id)
        assert record["email"]["done"] == "sent" and record["email"]["n"] >= 2
        assert len(server.messages()) == 1
        assert engine.state(job_id).status.value == "completed"
        assert engine.store.client.zscore(engine.store.keys.active, job_id) is None
    finally:
        server.stop()


def test_a_notification_that_keeps_failing_is_given_up_and_the_job_leaves_the_active_index(
    prefix, files_dir, running
):
    app = make_app(prefix, files_dir, BATCHFLOW_NOTIFY_ATTEMPTS=2, **email_config(free_port()))
    engine = BatchFlow.state(app).engine
    ada = app.test_client()
    ada.post("/login/7")
    with running(app):
        job_id = start(ada, "hello", notify_email=True)
        wait_terminal(engine, job_id)

        def settled() -> bool:
            engine.maintain(force=True)
            return "notify_due" not in engine.state(job_id).fields

        wait_for(settled, timeout=30, interval=0.2)
    record = told(engine, job_id)
    assert record["email"]["done"] == "given up" and record["email"]["n"] == 2
    assert record["app"]["done"] == "kept"
    assert engine.state(job_id).status.value == "completed"
    assert engine.store.client.zscore(engine.store.keys.active, job_id) is None


# -- by webhook, and the hook ----------------------------------------------------------------


def test_the_webhook_is_signed_carries_an_idempotency_key_and_is_retried(
    prefix, files_dir, running, tmp_path
):
    receiver = HttpReceiver(str(tmp_path / "hooks"), fail=2, status=503).start()
    try:
        config = {"BATCHFLOW_WEBHOOK_URL": receiver.url, "BATCHFLOW_WEBHOOK_SECRET": SECRET}
        app = make_app(prefix, files_dir, BATCHFLOW_BASE_URL=BASE, **config)
        engine = BatchFlow.state(app).engine
        ada = app.test_client()
        ada.post("/login/7")
        with running(app):
            job_id = start(ada, "archive", ids=["p1", "bad1"])
            wait_terminal(engine, job_id)

            def delivered() -> bool:
                engine.maintain(force=True)
                return len(receiver.requests()) >= 3

            wait_for(delivered, timeout=30, interval=0.2)
            record = told(engine, job_id)
        requests = receiver.requests()
    finally:
        receiver.stop()
    assert [r["answered"] for r in requests] == [503, 503, 204]
    assert record["webhook"] == {"done": "sent (204)", "n": 3}
    seq = engine.state(job_id).fields["seq"]
    for request in requests:
        body = request["body"].encode()
        assert verify(SECRET, body, request["headers"][SIGNATURE_HEADER])
        assert not verify(
            "another-secret-of-some-length", body, request["headers"][SIGNATURE_HEADER]
        )
        assert request["headers"][KEY_HEADER] == f"{job_id}.{seq}"
        assert request["headers"]["Content-Type"] == "application/json"
    assert len({r["body"] for r in requests}) == 1  # the same delivery, each time
    sent = json.loads(requests[0]["body"])
    assert sent["event"] == "job.ended" and sent["idempotency_key"] == f"{job_id}.{seq}"
    assert (sent["id"], sent["status"], sent["outcome"]) == (
        job_id,
        "completed",
        "completed_with_failures",
    )
    assert (sent["good"], sent["bad"]) == (1, 1)
    assert sent["url"] == f"{BASE}/jobs/{job_id}"
    assert "error_detail" not in sent


def test_a_webhook_refused_for_good_is_not_retried(prefix, files_dir, running, tmp_path):
    receiver = HttpReceiver(str(tmp_path / "hooks"), fail=100, status=400).start()
    try:
        config = {"BATCHFLOW_WEBHOOK_URL": receiver.url, "BATCHFLOW_WEBHOOK_SECRET": SECRET}
        app = make_app(prefix, files_dir, **config)
        engine = BatchFlow.state(app).engine
        with running(app):
            job_id = engine.start("hello", owner="user:7")
            wait_terminal(engine, job_id)
            record = told(engine, job_id)
        assert record["webhook"]["done"] == "given up" and record["webhook"]["n"] == 1
        assert len(receiver.requests()) == 1
    finally:
        receiver.stop()


def test_on_notify_gets_each_ending_and_its_errors_are_retried(prefix, files_dir, running):
    calls: list[Notice] = []

    def on_notify(notice: Notice) -> None:
        calls.append(notice)
        if len(calls) == 1:
            raise RuntimeError("the chat server is down")

    app = make_app(prefix, files_dir, hook=on_notify)
    engine = BatchFlow.state(app).engine
    with running(app):
        job_id = engine.start("hello", owner="user:8")
        wait_terminal(engine, job_id)

        def delivered() -> bool:
            engine.maintain(force=True)
            return len(calls) >= 2

        wait_for(delivered, timeout=30, interval=0.2)
        record = told(engine, job_id)
    assert record["hook"] == {"done": "sent", "n": 2}
    assert len(calls) == 2 and calls[0].key == calls[1].key
    notice = calls[1]
    assert (notice.job_id, notice.owner, notice.title) == (job_id, "user:8", "Say hello")
    assert notice.headline == "Completed" and notice.status["status"] == "completed"


# -- settings that go together ---------------------------------------------------------------


def test_email_and_webhooks_refuse_settings_that_cannot_work(prefix, files_dir):
    with pytest.raises(ConfigurationError, match="set BATCHFLOW_BASE_URL"):
        Settings.from_mapping({"BATCHFLOW_NOTIFY_EMAIL": "true"})
    with pytest.raises(ConfigurationError, match="set MAIL_DEFAULT_SENDER"):
        Settings.from_mapping({"BATCHFLOW_NOTIFY_EMAIL": "1", "BATCHFLOW_BASE_URL": BASE})
    with pytest.raises(ConfigurationError, match="BATCHFLOW_WEBHOOK_SECRET"):
        Settings.from_mapping({"BATCHFLOW_WEBHOOK_URL": "https://hooks.example.com/x"})
    with pytest.raises(ConfigurationError, match="BATCHFLOW_BASE_URL must be an absolute"):
        Settings.from_mapping({"BATCHFLOW_BASE_URL": "app.example.com"})
    with pytest.raises(ConfigurationError, match="not both"):
        Settings.from_mapping({"MAIL_USE_TLS": "1", "MAIL_USE_SSL": "1"})
    registry = make_registry()
    registry.add("always", Always)
    with pytest.raises(ConfigurationError, match="'always' emails its owner"):
        make_app(prefix, files_dir, registry)
    # With email off, the start form offers no email.
    app = make_app(prefix, files_dir)
    client = app.test_client()
    client.post("/login/7")
    assert 'name="notify_email"' not in client.get("/jobs/start/hello").text


# -- at least once, and once without a crash: worker subprocesses, killed ----------------------


def kill_config(prefix: str, files_dir: str, port: int) -> dict[str, Any]:
    config = make_config(prefix, files_dir, BATCHFLOW_WORKER_TTL=1, **email_config(port))
    config.update(BATCHFLOW_NOTIFY_TIMEOUT=1, MAIL_DEFAULT_SENDER="reports@app.test")
    return config


def mail_engine(config: dict[str, Any]) -> Any:
    settings = Settings.from_mapping(config)
    store = Store.from_url(settings.redis_url, settings.key_prefix)
    engine = Engine(settings, store, make_mail_registry(), load_user=user_of)
    make_celery(engine, config=broker_options(settings.key_prefix))
    return engine


def worker(config: dict[str, Any], name: str) -> Any:
    process = WorkerProcess(
        config, app="tests.notify_workerapp", name=name, extra_env={"BFT_NOTIFY_WORKER": "1"}
    )
    prefix = config["BATCHFLOW_KEY_PREFIX"]
    wait_for(lambda: process.name in side.lrange(f"{prefix}:ready", 0, -1), timeout=30)
    return process


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before_send", "after_send"])
def test_a_worker_killed_between_the_last_commit_and_the_send_still_tells_once_or_twice_the_same(
    prefix, files_dir, smtp, point
):
    config = kill_config(prefix, files_dir, smtp.port)
    engine = mail_engine(config)
    side.hset(f"{prefix}:fault:{point}", mapping={"action": "kill", "left": "1"})
    victim = worker(config, "victim")
    rescuer = None
    try:
        job_id = engine.start("mailed", owner="user:ada")
        wait_for(lambda: side.llen(f"{prefix}:fired:{point}"), timeout=30)
        victim.proc.wait(10)  # killed itself at the fault point, after the job's last commit
        state = engine.state(job_id)
        assert state.status.value == "completed"
        assert "notify_due" in state.fields  # pending, with the ending, atomically
        assert len(smtp.messages()) == (1 if point == "after_send" else 0)
        rescuer = worker(config, "rescuer")  # its maintenance takes over once notify_due passed
        wait_for(lambda: "notify_due" not in engine.state(job_id).fields, timeout=60)
        record = json.loads(engine.state(job_id).fields["notified"])
    finally:
        victim.kill()
        if rescuer is not None:
            rescuer.stop()
    assert record["email"]["done"] == "sent"
    messages = smtp.messages()
    # Killed before the send: told once. Killed after it, before its record: told again, as the
    # same message (receivers and mail clients drop the duplicate by its Message-ID).
    assert len(messages) == (2 if point == "after_send" else 1)
    assert len({m["Message-ID"] for m in messages}) == 1
    assert messages[0]["To"] == "ada@example.com"
    assert engine.store.client.zscore(engine.store.keys.active, job_id) is None


@pytest.mark.slow
def test_many_endings_on_two_workers_send_each_email_exactly_once(prefix, files_dir, smtp):
    config = kill_config(prefix, files_dir, smtp.port)
    engine = mail_engine(config)
    workers = [worker(config, "a"), worker(config, "b")]
    try:
        job_ids = [engine.start("mailed", owner=f"user:u{n}") for n in range(30)]
        for job_id in job_ids:
            wait_terminal(engine, job_id, timeout=60)
            wait_for(lambda j=job_id: "notify_due" not in engine.state(j).fields, timeout=60)
        time.sleep(2 * config["BATCHFLOW_MAINTENANCE_INTERVAL"] + 1)  # maintenance went round
    finally:
        for process in workers:
            process.stop()
    messages = smtp.messages()
    assert sorted(m["X-Batchflow-Job"] for m in messages) == sorted(job_ids)
