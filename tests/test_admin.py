"""The admin page: who may see it, what it shows (real workers, real jobs), bulk actions."""

from __future__ import annotations

import re
from typing import Any

import pytest

from batchflow import BatchFlow, Status
from batchflow.admin import overview
from batchflow.words import NO_WORKER_AFTER
from tests.helpers import wait_for, wait_terminal
from tests.webapp import create_app

ADMIN = {"X-Test-User": "root-admin"}
ALICE = {"X-Test-User": "alice"}
JSON = {"Accept": "application/json"}


@pytest.fixture
def app(prefix: str, files_dir: str) -> Any:
    return create_app(prefix, files_dir)


@pytest.fixture
def engine(app):
    return BatchFlow.state(app).engine


def csrf(client, headers=ADMIN) -> str:
    page = client.get("/jobs/admin/", headers=headers)
    assert page.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


def test_only_an_admin_sees_it_everyone_else_gets_the_unknown_pages_404(app):
    client = app.test_client()
    unknown = client.get("/jobs/admin/nothing-here", headers=ALICE)
    assert unknown.status_code == 404
    for headers in (ALICE, {}):
        for path in ("/jobs/admin/", "/jobs/admin/?format=json"):
            answer = client.get(path, headers=headers)
            assert (answer.status_code, answer.text) == (404, unknown.text), (path, headers)
        bulk = client.post("/jobs/admin/bulk", data={"handler": "count", "action": "stop"})
        assert bulk.status_code in (400, 404)  # CSRF first (400), or the same 404
    page = client.get("/jobs/admin/", headers=ADMIN)
    assert page.status_code == 200 and "<h1" in page.text
    # The top bar links to it for an admin only.
    assert 'href="/jobs/admin/"' in client.get("/jobs/", headers=ADMIN).text
    assert 'href="/jobs/admin/"' not in client.get("/jobs/", headers=ALICE).text


def test_it_shows_workers_every_owners_active_jobs_failures_counts_and_handlers(
    app, engine, web_worker
):
    client = app.test_client()
    done = engine.start("count", owner="alice", params={"n": 3})
    failed = engine.start("boom", owner="bob", params={"why": "disk full"})
    wait_terminal(engine, done)
    wait_terminal(engine, failed)
    slow = engine.start("count", owner="carol", params={"n": 200, "sleep": 0.05})
    wait_for(lambda: engine.state(slow).status is Status.RUNNING)

    data = wait_for(
        lambda: (
            (d := client.get("/jobs/admin/?format=json", headers=ADMIN).get_json())
            and d["fleet"]["workers"]
            and d
        )
    )
    (worker,) = data["fleet"]["workers"]
    assert worker["pool"] == "threads" and worker["concurrency"] == 2
    assert [j["id"] for j in data["active"]] == [slow]
    assert data["active"][0]["owner"] == "carol" and data["active"][0]["attention"] is False
    assert [j["id"] for j in data["failed"]] == [failed]
    assert data["failed"][0]["error_detail"]  # the admin sees the real error
    counts = {row["handler"]: row for row in data["counts"]}
    assert counts["count"]["active"] == 1 and counts["count"]["completed"] == 1
    assert counts["boom"]["failed"] == 1 and counts["boom"]["total"] == 1
    assert data["counted"] == 3 and data["counted_all"] is True
    lanes = next(h for h in data["handlers"] if h["name"] == "archive-lanes")
    assert (lanes["kind"], lanes["lanes"], lanes["max_lanes"]) == ("items", 2, 4)
    guarded = next(h for h in data["handlers"] if h["name"] == "admin-only")
    assert guarded["permission"] is True

    page = client.get("/jobs/admin/", headers=ADMIN).text
    assert worker["name"] in page and "carol" in page and "disk full" not in page.split("<tbody")[0]
    assert f'data-status-url="/jobs/{slow}/status"' in page  # a live row, as in the jobs list
    engine.signal(slow, "stop")
    wait_terminal(engine, slow)


def test_a_step_that_waits_long_for_a_worker_comes_first_and_says_so(app, engine):
    first = engine.start("count", owner="alice", params={"n": 5})
    later = engine.start("count", owner="bob", params={"n": 5})
    created = engine.state(first).to_dict()["created_at"]
    with app.test_request_context("/jobs/admin/", headers=ADMIN):
        data = overview(BatchFlow.state(app), now=created + NO_WORKER_AFTER + 5)
    assert [j["id"] for j in data["active"]] == [first, later]
    assert all(j["attention"] for j in data["active"])
    assert data["active"][0]["step_wait_s"] >= NO_WORKER_AFTER + 5
    assert data["fleet"]["workers"] == [] and data["fleet"]["waiting_steps"] == 2
    page = app.test_client().get("/jobs/admin/", headers=ADMIN).text
    assert "No worker is running, so no job moves." in page


def test_bulk_pause_then_resume_of_a_handlers_jobs_asks_first(app, engine):
    client = app.test_client()
    ours = [engine.start("count", owner=o, params={"n": 5}) for o in ("alice", "bob")]
    other = engine.start("greeting", owner="alice", params={})
    token = csrf(client)

    refused = client.post(
        "/jobs/admin/bulk", data={"handler": "count", "action": "pause"}, headers=ADMIN
    )
    assert refused.status_code == 400  # no CSRF token

    form = {"csrf_token": token, "handler": "count", "action": "pause"}
    confirm = client.post("/jobs/admin/bulk", data=form, headers=ADMIN)
    assert confirm.status_code == 200
    assert all(f"/jobs/{job_id}" in confirm.text for job_id in ours)
    assert f"/jobs/{other}" not in confirm.text
    assert 'name="confirm" value="yes"' in confirm.text
    assert all(engine.state(j).status is Status.PENDING for j in ours)  # nothing asked yet

    done = client.post("/jobs/admin/bulk", data={**form, "confirm": "yes"}, headers=ADMIN)
    assert done.status_code == 303 and done.headers["Location"].endswith("/jobs/admin/")
    # No worker runs them: the pause waits for their next claim (the page says "Pausing…").
    assert all(engine.state(j).pausing for j in ours)
    assert not engine.state(other).pausing
    flashed = client.get("/jobs/admin/", headers=ADMIN).text
    assert "Pause asked of 2 of 2 active jobs of count." in flashed

    form["action"] = "resume"
    client.post("/jobs/admin/bulk", data={**form, "confirm": "yes"}, headers=ADMIN)
    assert not any(engine.state(j).pausing for j in ours)

    bad = client.post("/jobs/admin/bulk", data={**form, "action": "delete"}, headers=ADMIN)
    assert bad.status_code == 400
