"""Notifications in a real Chromium: a job started on one page ends while its owner is on another
page of the app, which shows the toast (and the unseen count) by itself; dismissing it marks the
ending seen. And the job page's "Notify me when done": permission asked on click, a browser
notification when the job ends while the tab is in the background. Screenshots of the toast at
1280 and 390 px, light and dark, go to tests/artifacts/notify/."""

from __future__ import annotations

import contextlib
import os
import re

import pytest
from flask import render_template_string

from tests.helpers import CHROMIUM, launch_chromium, live_server, wait_for
from tests.webapp import create_app

SHOTS = os.path.join(os.path.dirname(__file__), "artifacts", "notify")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]

#: Another page of the host app: its own navigation with the unseen count, and the script.
OTHER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Elsewhere</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<script src="{{ url_for('batchflow.static', filename='batchflow/batchflow.js') }}" defer></script>
</head><body style="font-family: sans-serif; margin: 2rem">
{%- set unseen = batchflow_unseen_count() %}
<nav><a href="/jobs/">Jobs</a>
  <span id="unseen" class="bf-count" data-batchflow-unseen data-hide-zero
  {%- if not unseen %} hidden{% endif %}>{{ unseen }}</span></nav>
<h1>Somewhere else in the app</h1>
<p>Reading the news while the export runs.</p>
</body></html>
"""


@pytest.fixture
def server(prefix, files_dir):
    app = create_app(prefix, files_dir)

    @app.get("/elsewhere")
    def elsewhere():
        return render_template_string(OTHER_PAGE)

    @app.get("/favicon.ico")
    def favicon():
        return "", 204  # the browser asks; a 404 would be a console error

    with live_server(app) as url:
        yield url


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


def new_page(browser, base, *, width=1280, scheme="light", errors=None):
    context = browser.new_context(
        viewport={"width": width, "height": 800}, color_scheme=scheme, base_url=base
    )
    context.add_init_script("window.batchflowConfig = {notifyPollMs: 250};")
    page = context.new_page()
    if errors is not None:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    return context, page


def start_export(page, rows=3000, sleep=0.001):
    page.goto(f"/app?rows={rows}&sleep={sleep}")
    page.click("#export")
    page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{16,}$"))
    return page.url.rsplit("/", 1)[1]


def test_a_job_that_ends_while_its_owner_is_elsewhere_shows_a_toast_there(server, browser):
    from playwright.sync_api import expect

    errors: list[str] = []
    context, page = new_page(browser, server, errors=errors)
    job_id = start_export(page)
    page.goto("/elsewhere")  # the job still runs
    expect(page.locator("#unseen")).to_be_hidden()
    toast = page.locator(f'.bf-toast[data-job="{job_id}"]')
    expect(toast).to_be_visible(timeout=30_000)
    expect(toast.locator(".bf-toast__title")).to_have_text("Report")
    expect(toast.locator(".bf-toast__text")).to_contain_text("Completed")
    expect(toast.locator("a")).to_have_text("Download")
    expect(toast.locator("a")).to_have_attribute("href", f"/jobs/{job_id}/download")
    expect(page.locator(".bf-toasts")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#unseen")).to_have_text("1")
    # Another page of the app: the count is there from the server; the toast was shown already.
    page.goto("/elsewhere")
    expect(page.locator("#unseen")).to_have_text("1")
    page.wait_for_timeout(800)
    expect(page.locator(".bf-toast")).to_have_count(0)
    # The same person in another browser (their session, no memory of the toast) sees it there;
    # dismissing it marks it seen: the count goes, and the server agrees.
    second, page = new_page(browser, server, errors=errors)
    second.add_cookies(context.cookies())
    page.goto("/elsewhere")
    page.locator(".bf-toast__close").click()
    expect(page.locator(".bf-toast")).to_have_count(0)
    expect(page.locator("#unseen")).to_be_hidden()
    listed = page.evaluate("fetch('/jobs/notifications').then((r) => r.json())")
    assert listed["unseen"] == 0
    assert errors == []
    second.close()
    context.close()


def test_the_job_page_marks_its_own_ending_seen_and_shows_no_toast(server, browser):
    from playwright.sync_api import expect

    context, page = new_page(browser, server)
    job_id = start_export(page, rows=500)
    expect(page.locator(".bf-job--completed")).to_be_visible(timeout=30_000)
    page.wait_for_timeout(800)
    expect(page.locator(".bf-toast")).to_have_count(0)
    listed = page.evaluate("fetch('/jobs/notifications').then((r) => r.json())")
    assert listed["unseen"] == 0, listed
    assert job_id
    context.close()


def test_notify_me_when_done_shows_a_browser_notification_from_a_background_tab(server, browser):
    from playwright.sync_api import expect

    context, page = new_page(browser, server)
    context.grant_permissions(["notifications"], origin=server)
    # Instrumentation, not a stand-in: the real Notification runs; the page keeps what it was given.
    context.add_init_script(
        """(() => {
          const Real = window.Notification;
          window.shown = [];
          window.Notification = function (title, options) {
            window.shown.push([title, options.body]);
            return new Real(title, options);
          };
          window.Notification.permission = Real.permission;
          window.Notification.requestPermission = (...a) => Real.requestPermission(...a);
        })();"""
    )
    job_id = start_export(page, rows=4000, sleep=0.002)
    button = page.get_by_role("button", name="Notify me when done")
    expect(button).to_be_visible()
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SHOTS, "notify-me-1280-light.png"))
    button.click()
    expect(page.locator('[data-bf="notify-note"]')).to_have_text(
        "You will get a notification when the job ends."
    )
    # Playwright tells every page it has the focus; the real focus moves with the tab in front.
    context.new_cdp_session(page).send("Emulation.setFocusEmulationEnabled", {"enabled": False})
    other = context.new_page()
    other.goto("/elsewhere")
    other.bring_to_front()
    wait_for(lambda: not page.evaluate("document.hasFocus()"), timeout=10)
    wait_for(lambda: page.evaluate("window.shown.length"), timeout=30)
    title, body = page.evaluate("window.shown[0]")
    assert title == "Report" and body.startswith("Completed — ")
    assert job_id
    context.close()


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_of_the_toast(server, browser, width, scheme):
    from playwright.sync_api import expect

    context, page = new_page(browser, server, width=width, scheme=scheme)
    start_export(page, rows=1500)
    page.goto("/elsewhere")
    expect(page.locator(".bf-toast")).to_be_visible(timeout=30_000)
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SHOTS, f"toast-{width}-{scheme}.png"))
    with contextlib.suppress(Exception):
        context.close()
