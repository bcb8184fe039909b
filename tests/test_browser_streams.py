"""The progress page when the server limits event streams: a page refused a stream (429: the
identity holds its cap) still updates by polling, and a page whose stream the server ended (its
lifetime) opens a new one. A real server, a real worker, a real Chromium."""

from __future__ import annotations

import contextlib
import os

import pytest

from batchflow import BatchFlow
from tests.helpers import CHROMIUM, launch_chromium, live_server, wait_for
from tests.test_browser import bar_value
from tests.webapp import create_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]


@pytest.fixture
def serve(prefix, files_dir):
    """``serve(**config)``: the test app on a real threaded server, with a worker; its URL."""
    stack = contextlib.ExitStack()

    def serve(**config):
        app = create_app(prefix, files_dir, BATCHFLOW_STEP_TARGET=0.25, **config)
        return app, stack.enter_context(live_server(app))

    with stack:
        yield serve


@pytest.fixture
def context():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1100, "height": 800})
        errors: list[str] = []
        context.on("weberror", lambda error: errors.append(str(error.error)))
        yield context
        browser.close()
        assert errors == [], errors


def answers(app):
    """The statuses the app answers to event-stream requests and to status polls, in order."""
    from flask import request

    seen: dict[str, list[int]] = {"events": [], "status": []}

    @app.after_request
    def record(response):
        kind = request.path.rsplit("/", 1)[-1]
        if kind in seen:
            seen[kind].append(response.status_code)
        return response

    return seen


def start_counting(page, base, n):
    page.goto(f"{base}/jobs/")  # a session for the anonymous user
    page.evaluate(f"() => batchflow.start('count', {{params: {{n: {n}, sleep: 0.001}}}})")
    page.goto(f"{base}/jobs/")
    page.get_by_role("link", name="Counting").first.click()
    page.wait_for_url(f"{base}/jobs/*")
    return page.url.rsplit("/", 1)[1]


def test_a_page_refused_a_stream_still_updates_by_polling(serve, context, redis_client, prefix):
    app, base = serve(BATCHFLOW_STREAMS_PER_USER=1)
    engine = BatchFlow.state(app).engine
    seen = answers(app)
    first = context.new_page()
    job_id = start_counting(first, base, 100_000)
    wait_for(lambda: (bar_value(first) or 0) > 0)
    open_now = len(seen["events"])
    (key,) = redis_client.keys(f"{prefix}:streams:*")
    wait_for(lambda: redis_client.zcard(key) == 1)  # the first page's stream holds the one slot

    second = context.new_page()  # the same browser, the same person: over the cap
    second.goto(f"{base}/jobs/{job_id}")
    wait_for(lambda: 429 in seen["events"])
    wait_for(lambda: (bar_value(second) or 0) > 0)
    at = bar_value(second)
    polls = len(seen["status"])
    wait_for(lambda: (bar_value(second) or 0) > at, timeout=15)  # polls bring progress
    wait_for(lambda: len(seen["status"]) >= polls + 2)
    # No reconnect loop: one refusal; SSE is tried again only sseRetryMs later.
    # (The first page may reconnect its own stream meanwhile on a loaded machine: a 200.)
    assert seen["events"][open_now:].count(429) == 1, seen
    assert set(seen["status"]) == {200}
    engine.signal(job_id, "stop")
    second.get_by_text("Stopped", exact=False).first.wait_for(timeout=15000)


def test_a_page_whose_stream_ended_opens_a_new_one(serve, context):
    app, base = serve(BATCHFLOW_STREAM_SECONDS=1)
    seen = answers(app)
    page = context.new_page()
    job_id = start_counting(page, base, 6000)
    wait_for(lambda: len(seen["events"]) >= 4, timeout=20)  # one stream a second or so
    assert set(seen["events"]) == {200}
    # Between two streams one poll, for what the gap missed: not a second of polling each time.
    assert len(seen["status"]) <= len(seen["events"]) + 1, seen
    wait_for(lambda: BatchFlow.state(app).engine.state(job_id).status.terminal, timeout=30)
    wait_for(lambda: "6,000 of 6,000" in page.locator("main").inner_text(), timeout=15)
