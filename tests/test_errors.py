"""Safe error messages: a handler's exception reaches the page as a generic sentence with a
reference, unless it is a UserError; its text and traceback go to the log under that reference,
and admins see the text. Real Redis, real in-process Celery workers."""

from __future__ import annotations

import csv
import io
import json
import logging
import re

import pytest

from batchflow import Status
from batchflow.engine import Engine
from batchflow.registry import Registry
from batchflow.store import Store
from tests.handlers import LEAK, Count
from tests.helpers import wait_for, wait_terminal
from tests.webapp import create_app

ALICE = {"X-Test-User": "alice"}
ADMIN = {"X-Test-User": "root-admin"}
REF = re.compile(r"Something went wrong \(ref ([0-9a-f]{8})\)\.")
DEVELOPER_TEXT = "@registry.register('nope')"


@pytest.fixture
def app(prefix, files_dir):
    return create_app(prefix, files_dir)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="batchflow")
    return caplog


def start(client, handler, headers=ALICE, accept="application/json", **body):
    page = client.get(f"/jobs/start/{handler}", headers=headers)
    assert page.status_code == 200
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    return client.post(
        f"/jobs/start/{handler}",
        json=body,
        headers={**headers, "X-CSRFToken": csrf, "Accept": accept},
    )


def finish(client, job_id, headers=ALICE):
    url = f"/jobs/{job_id}/status"
    return wait_for(lambda: (r := client.get(url, headers=headers).json)["terminal"] and r)


def sse(client, job_id, headers):
    """The whole event stream of a job that has ended (it closes after the terminal state)."""
    return client.get(f"/jobs/{job_id}/events", headers=headers).get_data(as_text=True)


def logged(logs, ref):
    """The log record that carries ``ref``: exactly one."""
    (record,) = [r for r in logs.records if f"ref {ref}" in r.getMessage()]
    return record


def every_view(client, job_id, headers):
    """Everything a viewer can read about a job: page, status, events, list, results, report."""
    return {
        "page": client.get(f"/jobs/{job_id}", headers=headers).get_data(as_text=True),
        "status": json.dumps(client.get(f"/jobs/{job_id}/status", headers=headers).json),
        "events": sse(client, job_id, headers),
        "list": json.dumps(client.get("/jobs/?format=json", headers=headers).json),
        "list page": client.get("/jobs/", headers=headers).get_data(as_text=True),
    }


@pytest.mark.parametrize("where", ["create", "continue", "on_complete"])
def test_a_handler_error_shows_a_reference_the_log_and_admins_get_the_text(
    client, web_worker, logs, where
):
    job_id = start(client, "leaky", params={"where": where}).json["id"]
    status = finish(client, job_id)
    if where == "on_complete":  # the job completed; the callback's failure is a message
        assert status["status"] == "completed" and status["error"] is None
        shown = status["messages"][-1]["text"]
        assert shown.startswith("on_complete failed: Something went wrong (ref ")
    else:
        assert status["status"] == "failed"
        shown = status["error"]
    ref = REF.search(shown)[1]
    assert "error_detail" not in status
    for name, text in every_view(client, job_id, ALICE).items():
        assert "secret" not in text and "postgresql" not in text, name
        if name != "list page":  # the list shows no errors, only their jobs
            assert f"ref {ref}" in text, name
    # The worker's log has the reference, the real text and the traceback.
    record = logged(logs, ref)
    assert LEAK in record.getMessage() and record.levelno == logging.ERROR
    assert record.exc_info and record.exc_info[0] is ConnectionError
    # An admin sees the real text beside the reference: status JSON, page, events, jobs list.
    admin = client.get(f"/jobs/{job_id}/status", headers=ADMIN).json
    assert admin["error_detail"] == f"ref {ref}: ConnectionError: {LEAK}"
    for name, text in every_view(client, job_id, ADMIN).items():
        if name != "list page":
            assert "postgresql://u:secret@db/x" in text, name


def test_a_user_error_is_shown_as_written(client, web_worker, logs):
    job_id = start(client, "leaky", params={"where": "user"}).json["id"]
    status = finish(client, job_id)
    text = "The export is too large for your plan: pick fewer months."
    assert (status["status"], status["error"]) == ("failed", text)
    assert text in client.get(f"/jobs/{job_id}", headers=ALICE).get_data(as_text=True)
    assert client.get(f"/jobs/{job_id}/status", headers=ADMIN).json["error_detail"] is None
    assert not [r for r in logs.records if r.levelno >= logging.ERROR]


def test_per_id_errors_show_a_reference_unless_a_user_error(client, web_worker, logs):
    ids = ["1", "leak-2", "user-3"]
    job_id = start(client, "leaky-items", ids=ids).json["id"]
    status = finish(client, job_id)
    assert (status["good"], status["bad"]) == (1, 2)
    for headers in (ALICE, ADMIN):  # per-id real texts are in the log only, for admins too
        url = f"/jobs/{job_id}/results?which=errors"
        errors = client.get(url, headers=headers).json["items"]
        assert errors["user-3"] == "user-3 is archived already."
        ref = REF.fullmatch(errors["leak-2"])[1]
        report = client.get(f"/jobs/{job_id}/results?format=csv", headers=headers)
        rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(report.get_data(as_text=True)))}
        assert rows["leak-2"] == ["bad", errors["leak-2"]]
        assert rows["user-3"] == ["bad", "user-3 is archived already."]
        assert "secret" not in report.get_data(as_text=True)
    record = logged(logs, ref)
    assert "change('leak-2')" in record.getMessage() and LEAK in record.getMessage()
    assert record.levelno == logging.WARNING and record.exc_info[0] is ConnectionError


def test_undo_errors_show_a_reference(engine, manual, logs):
    job_id = engine.start("leaky-items", owner="a", ids=["a", "b"])
    manual.drain(engine, limit=2)  # create, then the first id
    engine.signal(job_id, "cancel")
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.CANCELED and state.count("undo_failed") == 1
    (row,) = [r for r in engine.report_rows(job_id) if r[1] == "undo failed"]
    ref = REF.fullmatch(row[2])[1]
    assert row[0] == "a" and LEAK in logged(logs, ref).getMessage()


def test_a_failing_cleanup_job_logs_its_text_under_a_reference(engine, manual, logs):
    job_id = engine.start("leaky", owner="a", params={"where": "cleanup"})
    manual.drain(engine)
    assert engine.cleanup(job_id)
    (record,) = [r for r in logs.records if "cleanup_job of job" in r.getMessage()]
    assert re.search(r"\(ref [0-9a-f]{8}\)", record.getMessage())
    assert LEAK in record.getMessage() and record.exc_info[0] is ConnectionError
    assert "secret" not in json.dumps(engine.state(job_id).to_dict())


def test_a_worker_without_the_handler_fails_the_job_with_a_reference(
    engine, manual, settings, logs
):
    job_id = engine.start("leaky", owner="a", params={})
    other = Registry()
    other.add("count", Count)
    elsewhere = Engine(settings, Store.from_url(settings.redis_url, settings.key_prefix), other)
    elsewhere.dispatcher = manual
    manual.drain(elsewhere)
    state = wait_terminal(engine, job_id)
    ref = REF.fullmatch(state.to_dict()["error"])[1]
    assert "registry.register" not in state.to_dict()["error"]
    assert "@registry.register('leaky')" in state.fields["error_detail"]
    assert "@registry.register('leaky')" in logged(logs, ref).getMessage()


def test_an_unknown_handler_is_not_available_to_users(app, client, logs):
    as_json = client.get("/jobs/start/nope?format=json", headers=ALICE)
    as_html = client.get("/jobs/start/nope", headers=ALICE)
    assert as_json.status_code == as_html.status_code == 404
    assert as_json.json == {"error": "This job is not available."}
    assert "This job is not available." in as_html.get_data(as_text=True)
    for response in (as_json, as_html):
        assert "registry" not in response.get_data(as_text=True)
    assert any(
        DEVELOPER_TEXT in r.getMessage() and r.levelno == logging.WARNING for r in logs.records
    )
    app.debug = True  # the developer's own machine: the page says how to fix it
    assert DEVELOPER_TEXT in client.get("/jobs/start/nope?format=json", headers=ALICE).json["error"]
    page = client.get("/jobs/start/nope", headers=ALICE).get_data(as_text=True)
    assert "@registry.register(&#39;nope&#39;)" in page
