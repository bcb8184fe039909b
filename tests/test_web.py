"""The blueprint's routes with Flask's test client, against the real Redis and a real worker."""

from __future__ import annotations

import json
import re

import pytest

from batchflow import BatchFlow, ConfigurationError, Status
from tests.helpers import wait_for, web_status
from tests.webapp import create_app

JOB_ROUTES = [
    ("get", ""),
    ("get", "/status"),
    ("get", "/events"),
    ("get", "/download"),
    ("get", "/results"),
    ("post", "/stop"),
    ("post", "/cancel"),
    ("post", "/pause"),
    ("post", "/resume"),
    ("post", "/cleanup"),
    ("post", "/retry"),
]
ALICE = {"X-Test-User": "alice"}
BOB = {"X-Test-User": "bob"}


@pytest.fixture
def app(prefix, files_dir):
    return create_app(prefix, files_dir)


@pytest.fixture
def engine(app):
    return BatchFlow.state(app).engine


@pytest.fixture
def client(app):
    return app.test_client()


def token(client, headers=ALICE) -> str:
    page = client.get("/jobs/start/count", headers=headers)
    assert page.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


def start(client, handler="count", headers=ALICE, **body):
    headers = {**headers, "X-CSRFToken": token(client, headers)}
    return client.post(f"/jobs/start/{handler}", json=body, headers=headers)


def finish(client, job_id, headers=ALICE, timeout=30):
    return wait_for(
        lambda: (r := client.get(f"/jobs/{job_id}/status", headers=headers).json)["terminal"] and r,
        timeout=timeout,
    )


def test_start_with_json_and_follow_to_the_end(client, web_worker):
    r = start(client, params={"n": 500})
    assert r.status_code == 202
    body = r.json
    assert set(body) == {"id", "url", "status_url", "events_url"}
    assert body["url"] == f"/jobs/{body['id']}" and r.headers["Location"] == body["url"]
    status = finish(client, body["id"])
    assert (status["status"], status["processed"], status["total"]) == ("completed", 500, 500)
    assert status["percent"] == 100.0 and status["actions"] == [] and status["owner"] == "alice"
    for key in ("rate", "eta_s", "messages", "labels", "action_urls", "created_at", "updated_at"):
        assert key in status
    page = client.get(body["url"], headers=ALICE)
    assert page.status_code == 200 and "Counting" in page.text


def test_start_with_a_form_redirects_to_the_progress_page(client, web_worker):
    r = client.post(
        "/jobs/start/count",
        data={"n": "20", "csrf_token": token(client)},
        headers=ALICE,
    )
    assert r.status_code == 303
    job_id = r.headers["Location"].rsplit("/", 1)[1]
    assert finish(client, job_id)["processed"] == 20


def test_state_never_changes_on_get_and_csrf_is_required(client, redis_client, prefix):
    assert client.get("/jobs/start/count", headers=ALICE).status_code == 200
    assert client.post("/jobs/start/count", json={}, headers=ALICE).status_code == 400
    bad = {**ALICE, "X-CSRFToken": "not-a-token"}
    assert client.post("/jobs/start/count", json={}, headers=bad).status_code == 400
    assert "CSRF" in client.post("/jobs/start/count", json={}, headers=ALICE).json["error"]
    assert [k for k in redis_client.scan_iter(match=f"{prefix}:*") if ":broker:" not in k] == []


def test_unknown_handler_404_and_permission_403(client):
    assert start(client, handler="os.path").status_code == 404
    assert start(client, handler="nope").json["error"] == "This job is not available."
    denied = start(client, handler="admin-only")
    assert denied.status_code == 403 and "not allowed" in denied.json["error"]
    admin = {"X-Test-User": "root-admin"}
    assert start(client, handler="admin-only", headers=admin, params={"n": 1}).status_code == 202


def test_another_users_job_is_the_same_404_as_an_unknown_one(client, web_worker):
    job_id = start(client, params={"n": 5}).json["id"]
    finish(client, job_id)
    unknown = "A" * 22
    csrf = token(client, BOB)
    for method, path in JOB_ROUTES:
        call = getattr(client, method)
        headers = {**BOB, "X-CSRFToken": csrf, "Accept": "application/json"}
        theirs = call(f"/jobs/{job_id}{path}", headers=headers)
        missing = call(f"/jobs/{unknown}{path}", headers=headers)
        assert theirs.status_code == missing.status_code == 404, path
        assert theirs.json == missing.json, path
    admin = {"X-Test-User": "root-admin"}
    assert client.get(f"/jobs/{job_id}/status", headers=admin).status_code == 200


def test_redirect_url_must_stay_on_the_site(client, web_worker):
    for bad in ("https://evil.example/x", "//evil.example/x", "/\\evil", "javascript:alert(1)"):
        r = start(client, params={"n": 1}, redirect_url=bad)
        assert r.status_code == 400 and "this site" in r.json["error"], bad
    ok = start(client, params={"n": 1}, redirect_url="/reports?x=1")
    assert finish(client, ok.json["id"])["redirect_url"] == "/reports?x=1"


def test_messages_are_text_on_the_page(client, web_worker):
    job_id = start(client, params={"n": 3, "note": "<script>alert(1)</script>"}).json["id"]
    finish(client, job_id)
    page = client.get(f"/jobs/{job_id}", headers=ALICE).text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page or "\\u003cscript\\u003e" in page


def test_a_parameters_form_rejects_with_field_errors_and_keeps_typed_values(client, web_worker):
    page = client.get("/jobs/start/greeting", headers=ALICE)
    assert page.status_code == 200 and 'name="times"' in page.text
    bad = start(client, handler="greeting", params={"name": "", "times": "lots", "api_key": "s3"})
    assert bad.status_code == 400
    assert set(bad.json["errors"]) == {"name", "times"}
    html = client.post(
        "/jobs/start/greeting",
        data={"name": "", "times": "0", "api_key": "s3", "csrf_token": token(client)},
        headers=ALICE,
    )
    assert html.status_code == 400 and "Number must be between" in html.text
    good = start(
        client, handler="greeting", params={"name": "Ada", "times": "3", "api_key": "s3cr3t"}
    )
    assert good.status_code == 202
    status = finish(client, good.json["id"])
    assert status["params"] == {"name": "Ada", "times": 3, "api_key": "••••••"}
    assert status["messages"][-1]["text"] == "Greeted Ada 3 times"
    page = client.get(f"/jobs/{good.json['id']}", headers=ALICE).text
    assert "s3cr3t" not in page and "s3cr3t" not in json.dumps(status)


def test_download_then_cleanup(client, web_worker, engine):
    from tests.test_engine import expected_report

    job_id = start(client, handler="report", params={"rows": 300}).json["id"]
    status = finish(client, job_id)
    assert (
        status["download_url"] == f"/jobs/{job_id}/download"
        and status["file_name"] == "contacts.csv"
    )
    assert client.get(status["download_url"], headers=BOB).status_code == 404
    r = client.get(status["download_url"], headers=ALICE)
    assert r.status_code == 200 and r.data == expected_report(300)
    assert r.mimetype == "text/csv" and "filename=contacts.csv" in r.headers["Content-Disposition"]
    r.close()
    csrf = {**ALICE, "X-CSRFToken": token(client), "Accept": "application/json"}
    assert client.post(f"/jobs/{job_id}/cleanup", headers=csrf).status_code == 202
    wait_for(
        lambda: client.get(f"/jobs/{job_id}/status", headers=ALICE).json["download_url"] is None
    )
    assert client.get(f"/jobs/{job_id}/download", headers=ALICE).status_code == 404


def test_events_stream_until_the_end(client, web_worker):
    job_id = start(client, params={"n": 2000}).json["id"]
    r = client.get(f"/jobs/{job_id}/events", headers=ALICE, buffered=False)
    assert r.mimetype == "text/event-stream"
    events = []
    for chunk in r.response:
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        for line in text.splitlines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    r.close()
    assert events[-1]["status"] == "completed" and events[-1]["processed"] == 2000
    processed = [e["processed"] for e in events]
    assert processed == sorted(processed) and len(events) >= 3
    assert all(e["id"] == job_id and "action_urls" in e for e in events)


def test_signals_over_http(client, web_worker):
    job_id = start(client, params={"n": 100000, "sleep": 0.001}).json["id"]
    headers = {**ALICE, "X-CSRFToken": token(client), "Accept": "application/json"}
    wait_for(lambda: client.get(f"/jobs/{job_id}/status", headers=ALICE).json["processed"] > 0)
    r = client.post(f"/jobs/{job_id}/stop", headers=headers)
    assert r.status_code == 202 and r.json["status"] in ("stopping", "stopped")
    # Asked again: the same answer while the step in flight has not ended the job, and "already
    # ended" once it has (on a loaded machine it may have; test_faults asks twice with the step
    # held, where the answer must be the same).
    twice = client.post(f"/jobs/{job_id}/stop", headers=headers)
    assert twice.status_code == 202 or (
        twice.status_code == 409 and "already ended" in twice.json["error"]
    ), twice.json
    status = finish(client, job_id)
    assert status["status"] == "stopped" and status["skipped"] == 100000 - status["processed"]
    again = client.post(f"/jobs/{job_id}/stop", headers=headers)
    assert again.status_code == 409 and "already ended" in again.json["error"]
    assert client.get(f"/jobs/{job_id}/stop", headers=ALICE).status_code == 405
    # A stopped job continues as the same job, for its owner only, from where it stopped.
    assert "continue" in status["actions"] and status["action_urls"]["continue"]
    bob = {**BOB, "X-CSRFToken": token(client, BOB), "Accept": "application/json"}
    assert client.post(f"/jobs/{job_id}/continue", headers=bob).status_code == 404
    went_on = client.post(f"/jobs/{job_id}/continue", headers=headers)
    assert went_on.status_code == 202 and went_on.json["status"] == "running"
    assert went_on.json["skipped"] == 0 and "continue" not in went_on.json["actions"]
    wait_for(lambda: web_status(client, job_id).json["processed"] > status["processed"])
    client.post(f"/jobs/{job_id}/stop", headers=headers)
    assert finish(client, job_id)["status"] == "stopped"
    assert client.post(f"/jobs/{job_id}/explode", headers=headers).status_code == 404


def test_items_results_json_csv_and_retry(client, web_worker, prefix):
    ids = ["a1", "bad-1", "a2", "=cmd", "bad-2"]
    job_id = start(client, handler="archive", ids=ids, params={"prefix": prefix}).json["id"]
    status = finish(client, job_id)
    assert (status["good"], status["bad"], status["outcome"]) == (3, 2, "completed_with_failures")
    assert status["actions"] == ["retry"] and status["results_url"]
    errors = client.get(f"/jobs/{job_id}/results?which=errors", headers=ALICE).json
    assert errors["items"] == {"bad-1": "cannot archive bad-1", "bad-2": "cannot archive bad-2"}
    results = client.get(f"/jobs/{job_id}/results", headers=ALICE).json["items"]
    assert results["a1"] == {"archived": "a1"}
    report = client.get(f"/jobs/{job_id}/results?format=csv", headers=ALICE)
    lines = report.text.splitlines()
    assert lines[0] == "id,outcome,detail" and len(lines) == 6
    assert any(line.startswith("'=cmd,good") for line in lines)  # formula neutralised
    headers = {**ALICE, "X-CSRFToken": token(client), "Accept": "application/json"}
    retry = client.post(f"/jobs/{job_id}/retry", headers=headers)
    assert retry.status_code == 202
    again = finish(client, retry.json["id"])
    assert (again["total"], again["bad"]) == (2, 2)


def test_my_jobs_lists_only_mine_and_admins_see_all(client, web_worker):
    mine = start(client, params={"n": 1}).json["id"]
    theirs = start(client, headers=BOB, params={"n": 1}).json["id"]
    listed = client.get("/jobs/?format=json", headers=ALICE).json["jobs"]
    assert [j["id"] for j in listed] == [mine]
    everyone = client.get("/jobs/?format=json", headers={"X-Test-User": "root-admin"}).json["jobs"]
    assert {j["id"] for j in everyone} == {mine, theirs}
    html = client.get("/jobs/", headers=ALICE)
    assert html.status_code == 200 and mine in html.text and theirs not in html.text
    assert client.get("/jobs/?status=nonsense", headers=ALICE).status_code == 400


def test_init_app_twice_says_how_to_fix(app):
    with pytest.raises(ConfigurationError, match="once"):
        BatchFlow().init_app(app)


def test_the_host_apps_own_routes_are_untouched(client):
    assert client.get("/").text == "<h1>The host app</h1>"
    with client.get("/jobs/static/batchflow/batchflow.js") as script:
        assert script.status_code == 200


def test_status_is_indeterminate_until_a_total_is_known(engine, client):
    from batchflow.tasks import make_celery  # noqa: F401 - the app's dispatcher is already set

    job_id = engine.start("rebuild", owner="alice", params={"n": 5})
    status = client.get(f"/jobs/{job_id}/status", headers=ALICE).json
    assert status["total"] is None and status["percent"] is None
    assert status["status"] == Status.PENDING.value


def test_default_identity_uses_flask_login_and_permission_hooks_get_its_user(prefix, files_dir):
    import flask_login
    from flask import Flask

    from tests.handlers import make_registry
    from tests.helpers import broker_options, make_config

    class User(flask_login.UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id
            self.is_admin = user_id == "7"

    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", BATCHFLOW_CELERY=broker_options(prefix))
    app.config.update(make_config(prefix, files_dir))
    login = flask_login.LoginManager(app)
    login.user_loader(User)
    registry = make_registry()
    registry.add(
        "admins-only",
        registry.get("count").handler_class,
        permission=lambda user: getattr(user, "is_admin", False),
    )
    BatchFlow(app, registry=registry)

    @app.post("/login/<user_id>")
    def log_in(user_id):
        flask_login.login_user(User(user_id))
        return "ok"

    client = app.test_client()
    csrf = token(client, headers={})
    anonymous = client.post(
        "/jobs/start/count", json={"params": {"n": 1}}, headers={"X-CSRFToken": csrf}
    )
    assert anonymous.status_code == 202
    engine = BatchFlow.state(app).engine
    assert engine.state(anonymous.json["id"]).owner.startswith("anon:")
    assert (
        client.post("/jobs/start/admins-only", json={}, headers={"X-CSRFToken": csrf}).status_code
        == 403
    )
    client.post("/login/7")
    csrf = token(client, headers={})
    mine = client.post(
        "/jobs/start/admins-only", json={"params": {"n": 1}}, headers={"X-CSRFToken": csrf}
    )
    assert mine.status_code == 202
    assert engine.state(mine.json["id"]).owner == "user:7"
    # The anonymous job is not this user's: 404, like an unknown id.
    assert client.get(f"/jobs/{anonymous.json['id']}/status").status_code == 404


def test_the_app_can_override_batchflow_templates(prefix, files_dir):
    import os

    from flask import Flask

    from tests.handlers import make_registry
    from tests.helpers import make_config

    here = os.path.dirname(os.path.abspath(__file__))
    app = Flask(__name__, template_folder=os.path.join(here, "override"))
    app.config.update(SECRET_KEY="k", **make_config(prefix, files_dir))
    BatchFlow(app, registry=make_registry())
    page = app.test_client().get("/jobs/start/count")
    assert page.status_code == 200
    assert "The host app's own layout" in page.text and "Start" in page.text


def test_one_blueprint_serves_several_apps_each_with_its_prefix_and_options(prefix, files_dir):
    from flask import Flask

    from tests.handlers import make_registry
    from tests.helpers import make_config

    def app_with(**options):
        app = Flask(__name__)
        app.config.update(SECRET_KEY="k", **make_config(prefix, files_dir))
        BatchFlow(app, registry=make_registry(), **options)
        return app

    alice = app_with(identity=lambda: "alice")
    nobody = app_with(url_prefix="/tasks", identity=lambda: None)
    assert alice.test_client().get("/jobs/start/count").status_code == 200
    refused = nobody.test_client().get("/tasks/start/count", headers={"Accept": "application/json"})
    assert refused.status_code == 403 and refused.json["error"] == "Sign in to use jobs."
    assert nobody.test_client().get("/jobs/start/count").status_code == 404
    with nobody.test_request_context():
        from flask import url_for

        assert url_for("batchflow.progress", job_id="x") == "/tasks/x"
    assert BatchFlow.state(alice).engine is not BatchFlow.state(nobody).engine


def test_make_celery_is_the_deprecated_name_of_celery(app):
    extension = BatchFlow()
    with pytest.warns(DeprecationWarning, match=r"renamed BatchFlow\.celery"):
        celery = extension.make_celery(app)
    assert celery is extension.celery(app) is BatchFlow.state(app).celery
