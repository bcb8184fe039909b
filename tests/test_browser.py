"""The whole thing as a person sees it: a real server, a real worker, a real Chromium."""

from __future__ import annotations

import os
import time

import pytest

from batchflow import BatchFlow
from tests.helpers import CHROMIUM, launch_chromium, live_server, wait_for
from tests.test_engine import expected_report
from tests.webapp import create_app

ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]


@pytest.fixture
def server(prefix, files_dir):
    """The test app on a real threaded HTTP server, with a real in-process worker."""
    app = create_app(prefix, files_dir, BATCHFLOW_STEP_TARGET=0.25)
    with live_server(app) as base:
        yield app, base


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1100, "height": 800}
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # batchflow's pages send a Content-Security-Policy: anything it blocks is a bug.
        page.on(
            "console",
            lambda msg: "Content Security Policy" in msg.text and errors.append(msg.text),
        )
        yield page
        browser.close()
        assert errors == [], errors


def shot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"browser-{name}.png"), full_page=True)


def bar_value(page):
    bar = page.locator("progress").first
    value = bar.get_attribute("value")
    return None if value is None else float(value)


def seen_values(page, until, timeout=30.0):
    """Sample the bar until ``until()`` is true; the distinct values seen, in order."""
    values: list[float] = []
    deadline = time.monotonic() + timeout
    while not until():
        value = bar_value(page)
        if value is not None and (not values or value != values[-1]):
            values.append(value)
        assert time.monotonic() < deadline, f"timed out; saw {values}"
        time.sleep(0.05)
    return values


def test_export_a_csv_from_an_app_page_watch_it_and_download_it(server, page):
    app, base = server
    page.goto(f"{base}/app?rows=4000&sleep=0.001")
    page.click("#export")
    page.wait_for_url(f"{base}/jobs/*")
    page.wait_for_function("document.querySelector('progress') !== null")
    shot(page, "export-running")
    download_link = page.get_by_role("link", name="Download")
    values = seen_values(page, lambda: download_link.count() > 0)
    assert len(values) >= 3 and values == sorted(values), values
    shot(page, "export-done")
    with page.expect_download() as info:
        download_link.first.click()
    download = info.value
    assert download.suggested_filename == "contacts.csv"
    with open(download.path(), "rb") as handle:
        assert handle.read() == expected_report(4000)


def test_stop_a_running_job_and_see_it_stopped_with_its_counts(server, page):
    app, base = server
    engine = BatchFlow.state(app).engine
    page.goto(f"{base}/jobs/")  # a session for the anonymous user
    page.goto(f"{base}/app")
    job = page.evaluate(
        "() => batchflow.start('count', {params: {n: 100000, sleep: 0.0005}}, {container: "
        "document.querySelector('#inline')}).then ? 'started' : 'started'"
    )
    assert job == "started"
    page.wait_for_function("document.querySelector('#inline progress') !== null")
    page.goto(f"{base}/jobs/")
    page.get_by_role("link", name="Counting").first.click()
    wait_for(lambda: (bar_value(page) or 0) > 0)
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Stopped", exact=False).first.wait_for(timeout=15000)
    job_id = page.url.rsplit("/", 1)[1]
    state = engine.state(job_id)
    assert state.status.value == "stopped"
    text = page.locator("main").inner_text()
    assert f"{state.count('processed'):,}" in text or str(state.count("processed")) in text
    shot(page, "stopped")


def test_reload_mid_job_keeps_showing_live_progress(server, page):
    app, base = server
    page.goto(f"{base}/app?rows=6000&sleep=0.001")
    page.click("#export")
    page.wait_for_url(f"{base}/jobs/*")
    wait_for(lambda: (bar_value(page) or 0) > 5)
    page.reload()
    first = bar_value(page)
    assert first is not None and first > 5  # the server-side first paint shows where it is
    wait_for(lambda: (bar_value(page) or 0) > first, timeout=20)
    shot(page, "after-reload")


def test_the_widget_shows_a_modal_on_an_app_page(server, page):
    app, base = server
    page.goto(f"{base}/app")
    page.click("#rebuild")
    dialog = page.locator("dialog[open]")
    dialog.wait_for(timeout=10000)
    dialog.locator("progress").wait_for()
    shot(page, "modal-running")
    dialog.get_by_role("button", name="Stop").wait_for(state="detached", timeout=20000)
    wait_for(lambda: "40 of 40" in dialog.inner_text())
    text = dialog.inner_text()
    assert "36" in text and "4" in text and "Done" in text  # good and bad counts, the outcome
    shot(page, "modal-done")


def test_cancel_an_items_job_and_watch_the_undo(server, page, prefix):
    app, base = server
    engine = BatchFlow.state(app).engine
    page.goto(f"{base}/jobs/")
    ids = [f"p{i}" for i in range(1500)]
    page.evaluate(
        "([ids, prefix]) => batchflow.start('archive', {ids, params: {prefix, sleep: 0.003}})",
        [ids, prefix],
    )
    page.goto(f"{base}/jobs/")
    page.get_by_role("link", name="Archiving").first.click()
    wait_for(lambda: (bar_value(page) or 0) > 10)
    page.get_by_role("button", name="Cancel", exact=True).click()
    shot(page, "cancel-confirm")
    page.get_by_role("button", name="Yes, cancel and undo").click()
    page.get_by_text("Undoing", exact=False).first.wait_for(timeout=10000)
    shot(page, "canceling")
    page.get_by_text("Canceled", exact=False).first.wait_for(timeout=30000)
    shot(page, "canceled")
    job_id = page.url.rsplit("/", 1)[1]
    assert engine.state(job_id).status.value == "canceled"
    from tests.handlers import side

    assert set(side.hgetall(f"{prefix}:archived").values()) <= {"0"}


def test_pause_and_resume(server, page, prefix):
    app, base = server
    engine = BatchFlow.state(app).engine
    page.goto(f"{base}/jobs/")
    page.evaluate("() => batchflow.start('count', {params: {n: 3000, sleep: 0.001}})")
    page.goto(f"{base}/jobs/")
    page.get_by_role("link", name="Counting").first.click()
    wait_for(lambda: (bar_value(page) or 0) > 0)
    page.get_by_role("button", name="Pause").click()
    page.get_by_role("button", name="Resume").wait_for(timeout=10000)
    job_id = page.url.rsplit("/", 1)[1]
    wait_for(lambda: engine.state(job_id).status.value == "paused")
    shot(page, "paused")
    held = engine.state(job_id).count("processed")
    time.sleep(0.8)
    assert engine.state(job_id).count("processed") == held
    page.get_by_role("button", name="Resume").click()
    page.get_by_role("button", name="Pause").wait_for(timeout=10000)
    wait_for(lambda: engine.state(job_id).status.value == "completed", timeout=30)
    assert engine.state(job_id).count("processed") == 3000
    wait_for(lambda: "3,000 of 3,000" in page.locator("main").inner_text())
    shot(page, "resumed-done")
