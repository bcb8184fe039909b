"""Preview, then confirm: an assessment that changes nothing, a job that waits holding no worker,
Confirm running exactly the assessed set, Cancel and expiry discarding it. Real Redis; steps run
by hand, or by a real worker through the web routes."""

from __future__ import annotations

import io
import os
import re
import time

import pytest

from batchflow import BatchFlow, InvalidTransition, Status
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.imports import upload_path
from batchflow.keys import new_job_id
from tests.handlers import HOOKS, Crash, make_registry, side
from tests.helpers import make_config, wait_for
from tests.test_sources import counts
from tests.webapp import create_app

ALICE = {"X-Test-User": "alice"}


def start_preview(engine, prefix, n=100, **params):
    return engine.start(
        "preview-archive", owner="a", params={"n": n, "prefix": prefix, "every": 0, **params}
    )


def test_a_preview_changes_nothing_and_waits_holding_no_worker(engine, manual, prefix):
    job_id = start_preview(engine, prefix, n=100, every=25)
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.AWAITING and not manual.steps  # nothing more is enqueued
    assert state.fields["lease_owner"] == "" and not state.status.terminal
    assert counts(prefix) == {}  # nothing was archived
    assert len(counts(prefix, "assessed")) == 100
    d = state.to_dict()
    assert d["assessment"] == {
        "assessed": 100,
        "changes": 48,  # the even numbers, but 50 and 100 (multiples of 25) are rejected
        "rejected": 4,
        "unchanged": 48,
        "sample": ["archive 2", "archive 4", "archive 6", "archive 8", "archive 10"],
        "errors": [
            ["25", "25 cannot be archived"],
            ["50", "50 cannot be archived"],
            ["75", "75 cannot be archived"],
            ["100", "100 cannot be archived"],
        ],
    }
    assert (d["processed"], d["good"], d["bad"], d["total"]) == (0, 0, 0, 100)
    assert d["actions"] == ["confirm", "cancel"]
    preview = d["text"]["preview"]
    assert preview["summary"] == "This will archive 48 numbers."
    assert preview["rejected"] == "4 would be rejected."
    assert d["text"]["badge"] == "Awaiting confirmation"
    for refused in ("stop", "pause"):
        with pytest.raises(InvalidTransition):
            engine.signal(job_id, refused)


def test_confirm_runs_exactly_the_assessed_set(engine, manual, prefix):
    job_id = start_preview(engine, prefix, n=300)
    manual.drain(engine)
    assert engine.state(job_id).status is Status.AWAITING
    assert engine.signal(job_id, "confirm").status is Status.RUNNING
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.COMPLETED
    assert (state.count("processed"), state.count("good"), state.total) == (300, 300, 300)
    assert counts(prefix) == {str(k): 1 for k in range(1, 301)}
    assert "Confirmed: running" in [m["text"] for m in state.to_dict()["messages"]]
    assert state.to_dict()["text"]["preview"] == {}  # shown only while it waits
    with pytest.raises(InvalidTransition, match="Only a job awaiting confirmation"):
        engine.signal(job_id, "confirm")


def test_cancel_discards_a_preview_and_expiry_does_too(engine, manual, prefix, files_dir):
    first = start_preview(engine, prefix, n=50)
    manual.drain(engine)
    engine.signal(first, "cancel")
    manual.drain(engine)
    state = engine.state(first)
    assert state.status is Status.CANCELED and state.count("undone") == 0
    texts = [m["text"] for m in state.to_dict()["messages"]]
    assert "Discarded without running: nothing was changed" in texts
    assert "Canceled; nothing had been changed." in texts
    settings = Settings.from_mapping(make_config(prefix, files_dir, BATCHFLOW_CONFIRM_TIMEOUT=0.2))
    engine = Engine(settings, engine.store, make_registry())
    engine.dispatcher = manual
    second = start_preview(engine, prefix, n=50)
    manual.drain(engine)
    assert engine.state(second).status is Status.AWAITING
    engine.maintain(time.time() + 0.1, force=True)
    assert engine.state(second).status is Status.AWAITING  # not yet
    engine.maintain(time.time() + 1, force=True)
    manual.drain(engine)
    assert engine.state(second).status is Status.CANCELED
    assert counts(prefix) == {}  # neither preview changed anything


def test_a_preview_stopped_then_continued_goes_back_to_its_assessment(engine, manual, prefix):
    job_id = start_preview(engine, prefix, n=400)
    manual.drain(engine, limit=3)
    engine.signal(job_id, "stop")
    manual.drain(engine)
    stopped = engine.state(job_id)
    assert stopped.status is Status.STOPPED
    assert "Stopped during the preview; nothing was changed." in [
        m["text"] for m in stopped.to_dict()["messages"]
    ]
    engine.signal(job_id, "continue")
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.AWAITING and state.to_dict()["assessment"]["assessed"] == 400
    assert counts(prefix) == {} and set(counts(prefix, "assessed").values()) == {1}


def test_a_worker_lost_mid_preview_counts_each_item_once(engine, manual, prefix):
    job_id = start_preview(engine, prefix, n=200)
    manual.drain(engine, limit=2)
    before = engine.state(job_id).count("processed")

    def die(job, item):
        if item == before + 2:
            raise Crash()

    HOOKS[f"{job_id}:assess"] = die
    try:
        step, seq, _ = manual.steps.pop(0)
        with pytest.raises(Crash):
            engine.run_step(step, seq)
    finally:
        HOOKS.pop(f"{job_id}:assess")
    engine.maintain(time.time() + engine.settings.lease_seconds + 1, force=True)
    manual.drain(engine)
    assessment = engine.state(job_id).to_dict()["assessment"]
    assert (assessment["assessed"], assessment["changes"]) == (200, 100)
    assert counts(prefix) == {}


def test_an_import_preview_over_http_shows_the_rejected_rows_then_imports_on_confirm(
    prefix, files_dir
):
    from celery.contrib.testing.worker import start_worker

    app = create_app(prefix, files_dir)
    client = app.test_client()
    page = client.get("/jobs/start/preview-import", headers=ALICE)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    headers = {**ALICE, "X-CSRFToken": token, "Accept": "application/json"}
    rows = "name,email\nAda,ada@example.com\nBob,bob-at-example\nCy,cy@example.com\n"
    with start_worker(
        BatchFlow.state(app).celery, pool="threads", concurrency=2, perform_ping_check=False
    ):
        r = client.post(
            "/jobs/start/preview-import",
            data={"file": (io.BytesIO(rows.encode()), "c.csv"), "prefix": prefix},
            headers=headers,
            content_type="multipart/form-data",
        )
        job_id = r.json["id"]

        def status():
            return client.get(f"/jobs/{job_id}/status", headers=ALICE).json

        waiting = wait_for(lambda: (s := status())["status"] == "awaiting_confirmation" and s)
        assert waiting["assessment"]["errors"] == [["3", "email: Not an email address."]]
        assert waiting["text"]["preview"]["sample"] == [
            "Ada, ada@example.com",
            "Cy, cy@example.com",
        ]
        assert side.hgetall(f"{prefix}:applied") == {}
        assert waiting["action_urls"]["confirm"] and "confirm" in waiting["actions"]
        other = client.get("/jobs/start/preview-import", headers={"X-Test-User": "bob"})
        bob_token = re.search(r'name="csrf-token" content="([^"]+)"', other.text).group(1)
        bob = {"X-Test-User": "bob", "X-CSRFToken": bob_token, "Accept": "application/json"}
        assert client.post(f"/jobs/{job_id}/confirm", headers=bob).status_code == 404
        assert client.post(f"/jobs/{job_id}/confirm", headers=headers).status_code == 202
        done = wait_for(lambda: (s := status())["terminal"] and s)
    assert (done["good"], done["bad"], done["total"]) == (2, 1, 3)
    assert side.hgetall(f"{prefix}:applied") == {"ada@example.com": "1", "cy@example.com": "1"}


def test_a_preview_is_discarded_even_when_its_handler_offers_no_cancel(
    engine, manual, prefix, files_dir
):
    job_id = new_job_id()
    path = upload_path(files_dir, job_id)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        handle.write("name,email\nAda,ada@example.com\n")
    engine.submit("preview-import", owner="a", params={"prefix": prefix}, job_id=job_id)
    manual.drain(engine)
    state = engine.state(job_id)
    assert "cancel" not in state.capabilities and state.actions() == ["confirm", "cancel"]
    assert engine.signal(job_id, "cancel").status is Status.CANCELING
    manual.drain(engine)
    assert engine.state(job_id).status is Status.CANCELED
    assert side.hgetall(f"{prefix}:applied") == {}
