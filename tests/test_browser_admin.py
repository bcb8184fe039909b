"""The admin page in a real browser: live rows, the bulk form without JavaScript, screenshots at
1280 and 390 px, light and dark (tests/artifacts/pages/admin-*.png)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from batchflow import BatchFlow, Status
from tests.helpers import CHROMIUM, launch_chromium, live_server, wait_for, wait_terminal
from tests.webapp import create_app

SHOTS = os.path.join(os.path.dirname(__file__), "artifacts", "pages")
ADMIN = {"X-Test-User": "root-admin"}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]


@pytest.fixture
def server(prefix: str, files_dir: str) -> Any:
    app = create_app(prefix, files_dir, BATCHFLOW_STEP_TARGET=0.25)
    with live_server(app, worker=True) as base:
        yield app, base


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


def admin_page(browser, *, javascript: bool = True, width: int = 1280, scheme: str = "light"):
    context = browser.new_context(
        viewport={"width": width, "height": 900},
        color_scheme=scheme,
        extra_http_headers=ADMIN,
        java_script_enabled=javascript,
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return page


def shots(browser, url: str, name: str) -> None:
    os.makedirs(SHOTS, exist_ok=True)
    for width in (1280, 390):
        for scheme in ("light", "dark"):
            page = admin_page(browser, width=width, scheme=scheme)
            page.goto(url)
            page.wait_for_load_state("networkidle")
            page.screenshot(
                path=os.path.join(SHOTS, f"{name}-{width}-{scheme}.png"), full_page=True
            )
            assert page.errors == []
            page.context.close()


def test_the_admin_page_shows_the_fleet_and_its_active_rows_move_by_themselves(server, browser):
    app, base = server
    engine = BatchFlow.state(app).engine
    done = engine.start("count", owner="alice", params={"n": 3})
    failed = engine.start("boom", owner="bob", params={"why": "the disk is full"})
    wait_terminal(engine, done)
    wait_terminal(engine, failed)
    slow = engine.start("count", owner="carol", params={"n": 600, "sleep": 0.02})
    wait_for(lambda: engine.state(slow).count("processed") > 0)
    wait_for(lambda: engine.fleet.seen())

    page = admin_page(browser)
    page.goto(f"{base}/jobs/admin/")
    assert page.locator("h1").inner_text() == "Operations"
    assert page.locator("[data-batchflow-workers] tbody tr").count() == 1
    row = page.locator(f'tr[data-status-url="/jobs/{slow}/status"]')
    assert "carol" in row.inner_text()
    first = row.locator('[data-bf="summary"]').inner_text()
    wait_for(lambda: row.locator('[data-bf="summary"]').inner_text() != first, timeout=15)
    counts = page.locator('[data-batchflow-counts] tr[data-handler="boom"]')
    assert counts.locator('[data-count="failed"]').inner_text() == "1"
    assert page.errors == []
    shots(browser, page.url, "admin")
    wait_terminal(engine, slow, timeout=60)


def test_bulk_stop_without_javascript_asks_then_stops_the_handlers_jobs(server, browser):
    app, base = server
    engine = BatchFlow.state(app).engine
    jobs = [engine.start("count", owner=o, params={"n": 5000, "sleep": 0.01}) for o in "ab"]
    wait_for(lambda: all(engine.state(j).status is Status.RUNNING for j in jobs))

    page = admin_page(browser, javascript=False)
    page.goto(f"{base}/jobs/admin/")
    page.select_option("#bf-bulk-handler", "count")
    page.select_option("#bf-bulk-action", "stop")
    page.get_by_role("button", name="Review…").click()
    assert page.locator("h1").inner_text() == "Stop 2 active jobs of count?"
    shots_url = page.url  # a POST's answer: shot below from its own page instead
    assert shots_url.endswith("/jobs/admin/bulk")
    os.makedirs(SHOTS, exist_ok=True)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(
            path=os.path.join(SHOTS, f"admin-confirm-{width}-light.png"), full_page=True
        )
    page.get_by_role("button", name="Stop (2)").click()
    assert page.url.endswith("/jobs/admin/")
    assert "Stop asked of 2 of 2 active jobs of count." in page.locator("main").inner_text()
    for job_id in jobs:
        assert wait_terminal(engine, job_id).status is Status.STOPPED


def test_someone_who_is_not_an_admin_finds_nothing_there(server, browser):
    app, base = server
    context = browser.new_context(extra_http_headers={"X-Test-User": "alice"})
    page = context.new_page()
    answer = page.goto(f"{base}/jobs/admin/")
    assert answer.status == 404
    page.goto(f"{base}/jobs/")
    assert page.get_by_role("link", name="Operations").count() == 0
    context.close()


def test_a_handlers_page_lists_its_last_runs(server, browser):
    app, base = server
    engine = BatchFlow.state(app).engine
    ids = [engine.start("count", owner=o, params={"n": 3}) for o in ("alice", "bob")]
    for job_id in ids:
        wait_terminal(engine, job_id)
    history = engine.notifier.history
    wait_for(lambda: len(history.last("count")) == 2)

    page = admin_page(browser)
    page.goto(f"{base}/jobs/admin/")
    page.locator('[data-batchflow-handlers] tr[data-handler="count"] a').click()
    assert page.url.endswith("/jobs/admin/handlers/count")
    assert page.locator("[data-batchflow-runs] tbody tr").count() == 2
    assert page.locator('[data-history="runs"]').inner_text() == "2"
    assert page.errors == []
    shots(browser, page.url, "admin-handler")
