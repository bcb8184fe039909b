"""The catalogue and a job's failed ids as a person sees them: a real server and a real Chromium,
at a desktop and a phone width, in light and dark."""

from __future__ import annotations

import os
import re

import pytest

from tests.helpers import CHROMIUM, launch_chromium, live_server, wait_for
from tests.webapp import create_app

SHOTS = os.path.join(os.path.dirname(__file__), "artifacts", "catalogue")
ALICE = {"X-Test-User": "alice"}
SCRIPT_ID = "<script>alert(1)</script>bad"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]


@pytest.fixture
def server(prefix, files_dir):
    """The test app on a real threaded HTTP server, with a real in-process worker."""
    app = create_app(prefix, files_dir)
    with live_server(app) as base:
        yield app, base


def finished_archive(app, prefix) -> str:
    """An archive job of alice's, run by the worker to its end: 24 failed ids (one of them a
    script tag) and 6 archived."""
    client = app.test_client()
    page = client.get("/jobs/start/archive", headers=ALICE)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    ids = [f"bad-{i:02}" for i in range(23)] + [SCRIPT_ID] + [f"ok-{i}" for i in range(6)]
    started = client.post(
        "/jobs/start/archive",
        json={"ids": ids, "params": {"prefix": prefix}},
        headers={**ALICE, "X-CSRFToken": token},
    )
    job_id = started.json["id"]
    wait_for(lambda: client.get(f"/jobs/{job_id}/status", headers=ALICE).json["terminal"], 30)
    return job_id


def cells(page, selector: str) -> list[str]:
    return page.locator(selector).all_inner_texts()


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_find_a_job_to_start_and_page_through_the_failed_ids(server, prefix, width, scheme):
    from playwright.sync_api import expect, sync_playwright

    app, base = server
    job_id = finished_archive(app, prefix)
    os.makedirs(SHOTS, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(
            viewport={"width": width, "height": 800},
            color_scheme=scheme,
            extra_http_headers=ALICE,
        )
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
        page.on(
            "console", lambda m: "Content Security Policy" in m.text and problems.append(m.text)
        )

        # From the jobs list to the catalogue, and on to a start page.
        page.goto(f"{base}/jobs/")
        page.get_by_role("link", name="Start a job").click()
        page.wait_for_url(f"{base}/jobs/catalogue")
        titles = cells(page, "[data-batchflow-catalogue] .bf-row__title")
        assert "Counting" in titles and "Archiving" in titles
        handlers = cells(page, "[data-batchflow-catalogue] .bf-row__handler")
        assert "admin-only" not in handlers and "count" in handlers
        page.screenshot(path=f"{SHOTS}/catalogue-{width}-{scheme}.png", full_page=True)
        page.get_by_role("link", name="Counting", exact=True).click()
        page.wait_for_url(f"{base}/jobs/start/count")

        # The job's page links its failed ids, on the page as rendered and as the script keeps it.
        page.goto(f"{base}/jobs/{job_id}")
        page.get_by_role("link", name="See the failed ids").click()
        page.wait_for_url(f"{base}/jobs/{job_id}/results?which=errors")
        assert len(cells(page, "[data-batchflow-outcomes] tbody th")) == 24

        # The failed ids, ten at a time: next, next, then back.
        page.goto(f"{base}/jobs/{job_id}/results?which=errors&count=10")
        first = cells(page, "[data-batchflow-outcomes] tbody th")
        assert len(first) == 10
        page.screenshot(path=f"{SHOTS}/results-{width}-{scheme}.png", full_page=True)
        rows = page.locator("[data-batchflow-outcomes] tbody th")
        page.get_by_role("link", name="Next →").click()
        expect(rows.first).not_to_have_text(first[0])  # the next page is in
        second = cells(page, "[data-batchflow-outcomes] tbody th")
        page.get_by_role("link", name="Next →").click()
        expect(rows).to_have_count(4)
        third = cells(page, "[data-batchflow-outcomes] tbody th")
        assert len(second) == 10 and len(third) == 4
        assert page.get_by_role("link", name="Next →").count() == 0
        assert sorted(first + second + third) == sorted(
            [f"bad-{i:02}" for i in range(23)] + [SCRIPT_ID]
        )
        page.get_by_role("link", name="← Previous").click()
        expect(rows).to_have_text(second)
        page.get_by_role("link", name="← Previous").click()
        expect(rows).to_have_text(first)
        # The script tag is text in the table; nothing ran.
        page.goto(f"{base}/jobs/{job_id}/results?which=errors&count=30")
        messages = cells(page, "[data-batchflow-outcomes] tbody td")
        assert f"cannot archive {SCRIPT_ID}" in messages
        page.get_by_role("link", name="Results").click()
        page.wait_for_url(f"{base}/jobs/{job_id}/results?which=results&count=30")
        expect(page.locator("[data-batchflow-outcomes] tbody th")).to_have_count(6)
        browser.close()
    assert problems == []
