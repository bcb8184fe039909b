"""The README's modal snippet copied alone onto a page of the app: no meta tags, no token, no
stylesheet; the widget finds the blueprint's routes, a CSRF token and its styles by itself. And a
job no worker takes: its page keeps asking for its status, so the server's words can change.
A real server, a real worker (or none), a real Chromium."""

from __future__ import annotations

import contextlib
import os

import pytest
from flask import render_template_string

from batchflow import BatchFlow
from batchflow.keys import Keys
from tests.helpers import CHROMIUM, launch_chromium, live_server, wait_for
from tests.webapp import create_app

SHOTS = os.path.join(os.path.dirname(__file__), "artifacts", "widget")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]

#: The README's snippet, and nothing else on the page.
#: (``config``: nothing, or a data-batchflow-config attribute on the script tag.)
SNIPPET = (
    "<script src=\"{{ url_for('batchflow.static', filename='batchflow/batchflow.js') }}\""
    "{{ config|safe }}></script>\n"
    """<button data-batchflow-start="report" data-batchflow-modal>Export contacts</button>"""
)


@pytest.fixture
def serve(prefix, files_dir):
    """``serve(worker=True)``: the test app on a real threaded server, with a route /bare that
    serves the snippet alone (under batchflow's own Content-Security-Policy); its URL, and the
    paths the app answered, in order."""
    from flask import request

    stack = contextlib.ExitStack()

    def serve(worker=True, config=""):
        app = create_app(prefix, files_dir, BATCHFLOW_STEP_TARGET=0.25)
        policy = BatchFlow.state(app).settings.content_security_policy
        seen: list[tuple[str, int]] = []

        @app.get("/bare")
        def bare():
            page = render_template_string(SNIPPET, config=config)
            return page, 200, {"Content-Security-Policy": policy}

        @app.get("/favicon.ico")
        def favicon():
            return "", 204  # the browser asks; a 404 would be a console error

        @app.after_request
        def record(response):
            seen.append((request.path, response.status_code))
            return response

        return app, stack.enter_context(live_server(app, worker=worker)), seen

    with stack:
        yield serve


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # Any console error (a refused request, a blocked stylesheet or script) is a bug here.
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        yield page
        browser.close()
        assert errors == [], errors


def test_the_modal_snippet_alone_starts_a_styled_job_and_follows_it_to_the_end(serve, page):
    app, base, seen = serve()
    page.goto(f"{base}/bare")
    page.get_by_role("button", name="Export contacts").click()
    dialog = page.locator("dialog[open]")
    dialog.wait_for(timeout=10000)
    # Styled by batchflow.css, which the page never linked: the widget did.
    assert dialog.evaluate("d => getComputedStyle(d).borderTopLeftRadius") == "16px"
    assert dialog.locator(".bf-job").evaluate("j => getComputedStyle(j).display") == "flex"
    download = dialog.get_by_role("link", name="Download contacts.csv")
    download.wait_for(timeout=30000)
    assert "Report ready" in dialog.inner_text()
    assert ("/jobs/csrf-token", 200) in seen
    assert [s for s in seen if s[0] == "/jobs/start/report"] == [("/jobs/start/report", 202)]
    foot = dialog.locator(".bf-dialog__foot")
    assert "keeps running" not in foot.inner_text()  # the job has ended
    os.makedirs(SHOTS, exist_ok=True)
    for scheme in ("light", "dark"):
        for width in (1280, 390):
            page.emulate_media(color_scheme=scheme)
            page.set_viewport_size({"width": width, "height": 800})
            page.screenshot(path=f"{SHOTS}/snippet-modal-{width}-{scheme}.png")


def test_a_job_no_worker_takes_is_asked_about_again_while_its_stream_is_open(
    serve, page, redis_client, prefix
):
    app, base, seen = serve(
        worker=False, config=""" data-batchflow-config='{"pendingPollMs": 300}'"""
    )
    page.goto(f"{base}/bare")
    page.get_by_role("button", name="Export contacts").click()
    dialog = page.locator("dialog[open]")
    dialog.wait_for(timeout=10000)
    wait_for(lambda: any(p.endswith("/events") for p, _ in seen))
    job_id = next(p for p, _ in seen if p.endswith("/events")).split("/")[2]
    polls = lambda: [c for p, c in seen if p == f"/jobs/{job_id}/status"]  # noqa: E731
    # The safety poll on a stream is every 15 s; a waiting job is asked about far more often.
    wait_for(lambda: len(polls()) >= 3, timeout=10)
    assert set(polls()) == {200}
    assert [c for p, c in seen if p.endswith("/events")] == [200]  # one stream, still open
    assert BatchFlow.state(app).engine.state(job_id).status.value == "pending"
    # New words without a commit (so no event): the next poll brings them to the page.
    redis_client.hset(Keys(prefix).job(job_id), "message", "Nobody has picked this job up yet")
    dialog.get_by_text("Nobody has picked this job up yet").wait_for(timeout=10000)
    page.screenshot(path=f"{SHOTS}/snippet-modal-pending-1280-light.png")


def test_the_token_endpoint_answers_this_site_only_and_is_never_cached(prefix, files_dir):
    app = create_app(prefix, files_dir)
    client = app.test_client()
    answer = client.get("/jobs/csrf-token", headers={"Origin": "https://evil.example"})
    assert answer.status_code == 200 and answer.is_json
    assert answer.headers["Cache-Control"] == "no-store"
    assert not any(h.lower().startswith("access-control-") for h in answer.headers.keys())
    token = answer.get_json()["csrf_token"]
    refused = client.post("/jobs/start/count", json={"params": {"n": 1}})
    assert refused.status_code == 400 and "CSRF" in refused.get_json()["error"]
    started = client.post(
        "/jobs/start/count", json={"params": {"n": 1}}, headers={"X-CSRFToken": token}
    )
    assert started.status_code == 202
