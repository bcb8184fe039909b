"""The corners of the pages a walk through them found wrong, as a person sees them: a real
server, a real worker, a real Chromium. Screenshots go to tests/artifacts/pages/ (1280 and
390 px, light and dark)."""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

import pytest

from batchflow import BatchFlow, display
from batchflow.fleet import WorkerSeen
from tests.handlers import HOOKS
from tests.helpers import CHROMIUM, launch_chromium, live_server, wait_for
from tests.webapp import create_app

SHOTS = os.path.join(os.path.dirname(__file__), "artifacts", "pages")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]

START = """async ([handler, body]) => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const r = await fetch('/jobs/start/' + handler, {
    method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRFToken': csrf},
    body: JSON.stringify(body)});
  return (await r.json()).id;
}"""


def _serve(prefix: str, files_dir: str, worker: bool) -> Any:
    app = create_app(prefix, files_dir, BATCHFLOW_STEP_TARGET=0.25)
    with live_server(app, worker=worker) as base:
        yield app, base


@pytest.fixture
def server(prefix, files_dir):
    yield from _serve(prefix, files_dir, worker=True)


@pytest.fixture
def idle_server(prefix, files_dir):
    """The app with no worker at all: its jobs wait for ever."""
    yield from _serve(prefix, files_dir, worker=False)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], errors


@pytest.fixture(autouse=True)
def no_hooks():
    yield
    HOOKS.clear()


def start(page, base: str, handler: str, **body: Any) -> str:
    if "/jobs" not in page.url:
        page.goto(f"{base}/jobs/")  # a session (and a CSRF token) for the anonymous user
    return page.evaluate(START, [handler, body])


def shots(browser, page, name: str) -> None:
    """The page as it is now at 1280 and 390 px, light and dark (same session)."""
    os.makedirs(SHOTS, exist_ok=True)
    state = page.context.storage_state()
    for width in (1280, 390):
        for scheme in ("light", "dark"):
            context = browser.new_context(
                viewport={"width": width, "height": 900},
                color_scheme=scheme,
                storage_state=state,
            )
            other = context.new_page()
            other.goto(page.url)
            other.wait_for_load_state("networkidle")
            other.screenshot(
                path=os.path.join(SHOTS, f"{name}-{width}-{scheme}.png"), full_page=True
            )
            context.close()


def main_text(page) -> str:
    return page.locator("main").inner_text()


def test_a_canceled_job_reads_undone_offers_no_retry_and_the_list_says_undone(
    server, page, browser, prefix
):
    app, base = server
    engine = BatchFlow.state(app).engine
    ids = [f"p{i}" if i % 10 else f"bad{i}" for i in range(1500)]
    job_id = start(page, base, "archive", ids=ids, params={"prefix": prefix, "sleep": 0.003})
    page.goto(f"{base}/jobs/{job_id}")
    wait_for(lambda: engine.state(job_id).count("bad") > 0)
    page.get_by_role("button", name="Cancel", exact=True).click()
    page.get_by_role("button", name="Yes, cancel and undo").click()
    page.locator('[data-bf="outcome-title"]', has_text="Canceled").wait_for(timeout=30000)
    state = engine.state(job_id)
    assert state.status.value == "canceled" and state.count("bad") > 0
    assert page.get_by_role("button", name="Retry failed").count() == 0
    page.reload()
    assert page.get_by_role("button", name="Retry failed").count() == 0
    shots(browser, page, "progress-canceled")
    # A finished export in the list counts what it processed; the canceled job reads undone.
    export = start(page, base, "report", params={"rows": 1500, "sleep": 0})
    wait_for(lambda: engine.state(export).status.value == "completed")
    page.goto(f"{base}/jobs/")
    rows = page.locator("tbody tr")
    summaries = {
        rows.nth(i).locator(".bf-row__title").get_attribute("href").rsplit("/", 1)[1]: rows.nth(i)
        .locator('[data-bf="summary"]')
        .inner_text()
        for i in range(rows.count())
    }
    assert summaries[export] == "1,500 processed"
    assert summaries[job_id] == f"Undone {state.count('undone'):,}"
    assert "result" in page.locator("thead").inner_text().lower()
    shots(browser, page, "jobs-list")


def test_a_retry_where_every_id_failed_again_says_so_links_back_and_offers_no_retry(
    server, page, prefix
):
    app, base = server
    engine = BatchFlow.state(app).engine
    first = start(page, base, "archive", ids=["bad1", "bad2", "bad3"], params={"prefix": prefix})
    page.goto(f"{base}/jobs/{first}")
    title = page.locator('[data-bf="outcome-title"]')
    title.filter(has_text="Failed: all 3 failed").wait_for(timeout=20000)
    page.get_by_role("button", name="Retry failed").click()  # once: it may have been transient
    page.wait_for_url(re.compile(r".*/jobs/(?!" + first + r")[\w-]+$"))
    retry = page.url.rsplit("/", 1)[1]
    wait_for(lambda: engine.state(retry).status.terminal)
    page.reload()
    assert title.inner_text() == "Failed: all 3 failed"
    assert page.locator('[data-bf="badge"]').inner_text() == "Failed"
    assert page.get_by_role("button", name="Retry failed").count() == 0
    page.get_by_role("link", name=f"Retry of job {first}").click()
    page.wait_for_url(f"{base}/jobs/{first}")


def test_a_failed_job_that_processed_nothing_shows_an_empty_bar(server, page, browser):
    app, base = server
    engine = BatchFlow.state(app).engine
    job_id = start(page, base, "boom", params={"in_create": 1, "why": "no database"})
    wait_for(lambda: engine.state(job_id).status.terminal)
    page.goto(f"{base}/jobs/{job_id}")
    page.locator('[data-bf="outcome-title"]', has_text="Failed").wait_for()
    bar = page.locator("progress").first
    assert bar.get_attribute("value") == "0"
    assert "Nothing was processed" in main_text(page)
    shots(browser, page, "progress-failed-nothing")


def test_a_stopped_export_says_what_became_of_its_file(server, page, browser):
    app, base = server
    engine = BatchFlow.state(app).engine
    job_id = start(page, base, "report", params={"rows": 400000, "sleep": 0.00002})
    page.goto(f"{base}/jobs/{job_id}")
    wait_for(lambda: engine.state(job_id).count("processed") > 2000, timeout=30)
    page.get_by_role("button", name="Stop").click()
    outcome = page.locator('[data-bf="outcome-text"]')
    outcome.filter(has_text="not offered for download").wait_for(timeout=20000)
    done = engine.state(job_id).count("processed")
    text = main_text(page)
    assert "kept" not in page.locator('[data-bf="outcome-title"]').inner_text().lower()
    assert "Start a new export" in outcome.inner_text()
    assert f"Stopped after {done:,} processed" in text and "units" not in text
    assert page.get_by_role("link", name=re.compile("Download")).count() == 0
    page.reload()
    shots(browser, page, "progress-stopped-export")


def test_a_downloaded_export_revisited_says_its_file_was_deleted(server, page, browser):
    app, base = server
    engine = BatchFlow.state(app).engine
    job_id = start(page, base, "report", params={"rows": 40, "sleep": 0})
    page.goto(f"{base}/jobs/{job_id}")
    link = page.get_by_role("link", name="Download contacts.csv")
    link.wait_for(timeout=20000)
    with page.expect_download():
        link.click()
    page.goto(f"{base}/jobs/")  # leaving the page tells the server it may delete the file
    wait_for(lambda: engine.state(job_id).fields.get("cleaned") == "1")
    page.goto(f"{base}/jobs/{job_id}")
    note = page.locator('[data-bf="file-note"]')
    assert "deleted" in note.inner_text()
    note.get_by_role("link", name="Start a new export").wait_for()
    assert page.get_by_role("link", name="Download contacts.csv").count() == 0
    shots(browser, page, "progress-export-deleted")


def test_pausing_then_paused_each_read_once(server, page, browser):
    app, base = server
    engine = BatchFlow.state(app).engine
    release = threading.Event()
    entered = threading.Event()

    def hold(job):  # the step in flight waits until the test lets it end
        if job.units_processed > 0:
            entered.set()
            release.wait(30)

    HOOKS["*:step"] = hold
    job_id = start(page, base, "count", params={"n": 100000, "sleep": 0.0001})
    page.goto(f"{base}/jobs/{job_id}")
    assert entered.wait(30)
    page.get_by_role("button", name="Pause").click()
    badge = page.locator('[data-bf="badge"]')
    badge.filter(has_text="Pausing…").wait_for(timeout=10000)
    resume = page.get_by_role("button", name="Resume")
    assert "pending pause" in (resume.get_attribute("title") or "")
    shots(browser, page, "progress-pausing")
    HOOKS.clear()
    release.set()
    badge.filter(has_text="Paused").wait_for(timeout=20000)
    wait_for(lambda: engine.state(job_id).status.value == "paused")
    page.reload()
    status_line = page.locator('[data-bf="status"]')
    assert status_line.is_hidden() or "Paused" not in status_line.inner_text()
    assert main_text(page).count("Paused · Paused") == 0


def test_identical_step_messages_collapse_into_one_line(server, page):
    app, base = server
    engine = BatchFlow.state(app).engine
    HOOKS["*:written"] = lambda job: job.add_message("Wrote a batch of rows")
    job_id = start(page, base, "report", params={"rows": 3000, "sleep": 0.0002})
    wait_for(lambda: engine.state(job_id).status.terminal, timeout=30)
    steps = sum(m["text"] == "Wrote a batch of rows" for m in engine.state(job_id).messages)
    assert steps > 2
    page.goto(f"{base}/jobs/{job_id}")
    items = page.locator('[data-bf="messages"] li').all_inner_texts()
    assert any(f"Wrote a batch of rows (×{steps})" in item for item in items), items
    assert sum("Wrote a batch of rows" in item for item in items) == 1


def test_a_job_no_worker_takes_says_so(idle_server, page, browser):
    app, base = idle_server
    job_id = start(page, base, "count", params={"n": 10})
    page.goto(f"{base}/jobs/{job_id}")
    line = page.locator('[data-bf="state"]')  # at once: no worker consuming the queue is seen
    assert line.inner_text().startswith("No worker is running for this job's queue")
    assert "celery -A worker worker" in line.inner_text()
    shots(browser, page, "progress-no-worker")


def test_the_no_worker_notice_gives_way_to_progress_when_a_worker_starts(idle_server, page):
    from celery.contrib.testing.worker import start_worker

    app, base = idle_server
    job_id = start(page, base, "count", params={"n": 10})
    page.goto(f"{base}/jobs/{job_id}")
    line = page.locator('[data-bf="state"]')
    assert line.inner_text().startswith("No worker is running")
    celery = BatchFlow.state(app).celery
    with start_worker(celery, pool="threads", concurrency=1, perform_ping_check=False):
        page.locator('[data-bf="badge"]').get_by_text("Completed").wait_for(timeout=20_000)
    assert "No worker" not in page.locator("main").inner_text()


def test_a_job_no_seen_worker_takes_says_so_after_a_while(idle_server, page, monkeypatch):
    app, base = idle_server
    engine = BatchFlow.state(app).engine
    # A worker of the queue announces itself but never takes the job (say, it reads another
    # broker): the page cannot know, and says what to check after NO_WORKER_AFTER.
    queue = engine.settings.queue
    now = time.time()
    engine.fleet.announce(WorkerSeen("elsewhere@h:1", "h", 1, 1, "solo", (queue,), "1", now, now))
    monkeypatch.setattr(display, "NO_WORKER_AFTER", 1.0)  # instead of waiting 30 s
    job_id = start(page, base, "count", params={"n": 10})
    wait_for(lambda: (engine.state(job_id).to_dict()["waiting_s"] or 0) > 1.0)
    page.goto(f"{base}/jobs/{job_id}")
    line = page.locator('[data-bf="state"]')
    assert line.inner_text().startswith("No worker has taken this job yet")
    assert "celery -A worker worker" in line.inner_text()


def test_a_preview_shows_what_it_found_and_confirm_runs_it(browser, page, server, prefix):
    from tests.test_sources import counts

    _, base = server
    job_id = start(page, base, "preview-archive", params={"n": 60, "every": 20, "prefix": prefix})
    page.goto(f"{base}/jobs/{job_id}")
    page.wait_for_selector('[data-status="awaiting_confirmation"]', timeout=20000)
    preview = page.locator('[data-bf="preview"]')
    assert preview.is_visible()
    assert preview.locator('[data-bf="preview-summary"]').inner_text() == (
        "This will archive 27 numbers."
    )
    assert preview.locator('[data-bf="preview-rejected"]').inner_text() == "3 would be rejected."
    sample = preview.locator('[data-bf="preview-sample"] li').all_inner_texts()
    assert sample == ["archive 2", "archive 4", "archive 6", "archive 8", "archive 10"]
    errors = preview.locator('[data-bf="preview-errors"] li').all_inner_texts()
    assert errors == [
        "20 20 cannot be archived",
        "40 40 cannot be archived",
        "60 60 cannot be archived",
    ]
    assert counts(prefix) == {}
    shots(browser, page, "preview")
    page.locator('[data-bf-action="confirm"]').click()
    page.wait_for_selector('[data-status="completed_with_failures"]', timeout=20000)
    assert not preview.is_visible()
    assert len(counts(prefix)) == 57  # the 60 assessed, less the 3 rejected again
