"""The page templates, rendered by a minimal Flask app (a `batchflow` blueprint that only serves
templates and static files, not the real views) and checked in the browser: the server's first
paint with JavaScript off, and batchflow.js taking that markup over without a visible change."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("/usr/bin/chromium is not installed", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

from flask import Blueprint, Flask, render_template  # noqa: E402
from flask_wtf import CSRFProtect, FlaskForm  # noqa: E402
from harness import ROOT, make_status, progression  # noqa: E402
from wtforms import BooleanField, IntegerField, SelectField, StringField, SubmitField  # noqa: E402
from wtforms.validators import DataRequired, NumberRange  # noqa: E402

from batchflow.display import register_template_filters  # noqa: E402

pytestmark = pytest.mark.browser

EVIL = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def make_app(prefix_in_context: bool = True) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test", WTF_CSRF_ENABLED=True)
    CSRFProtect(app)
    bp = Blueprint(
        "batchflow",
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
        static_url_path="/static",
    )
    register_template_filters(bp)  # what views.py does to the real blueprint
    app.register_blueprint(bp, url_prefix="/jobs")
    if prefix_in_context:  # what the real extension is asked to provide
        app.context_processor(lambda: {"batchflow_prefix": "/jobs"})
    return app


def render(name: str, prefix_in_context: bool = True, **context) -> str:
    app = make_app(prefix_in_context)
    with app.test_request_context("/jobs/x"):
        return render_template(name, **context)


def with_config(html: str, config: dict) -> str:
    """A rendered page whose widget uses these timings (read by batchflow.js when it loads)."""
    script = f"<script>window.batchflowConfig = {json.dumps(config)};</script>"
    return html.replace("<script src=", script + "<script src=", 1)


class ReportForm(FlaskForm):
    title = StringField(
        "Report title", validators=[DataRequired()], description="Shown at the top of the file."
    )
    limit = IntegerField("Rows", validators=[NumberRange(min=1, max=10_000)])
    fmt = SelectField("Format", choices=["csv", "xlsx"])
    notify = BooleanField("Email me when it is ready")


class FormWithSubmit(FlaskForm):
    name = StringField("Name")
    go = SubmitField("Build it")


def parts(page, root_selector=".bf-job"):
    """The visible texts of the parts the server and the script both render."""
    return page.evaluate(
        """sel => Object.fromEntries(['title', 'badge', 'phase', 'percent', 'good', 'bad',
                'good-label', 'bad-label', 'rate', 'eta', 'state', 'message'].map(k => {
            const n = document.querySelector(sel + ' [data-bf="' + k + '"]');
            return [k, n ? n.textContent.trim() : null];
        }))""",
        root_selector,
    )


def running_job(job_id="p1", **kw):
    state = dict(
        total=1000,
        processed=420,
        good=409,
        bad=11,
        rate=120.5,
        eta_s=130,
        message="Archived post 420",
        actions=["stop", "pause", "cancel"],
    )
    state.update(kw)
    return make_status(job_id, **state)


# --------------------------------------------------------------------------- progress.html


def test_progress_first_paint_without_javascript(harness, browser, shot):
    html = render("batchflow/progress.html", job=running_job())
    assert '<meta http-equiv="refresh" content="5">' in html  # inside <noscript>
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1000, "height": 900}
    )
    page = context.new_page()
    try:
        page.goto(harness.raw_page("nojs", html))
        assert page.title() == "Archiving posts · Running"
        got = parts(page)
        assert got["title"] == "Archiving posts" and got["badge"] == "Running"
        assert got["phase"] == "420 of 1,000 processed" and got["percent"] == "42%"
        assert (got["good"], got["bad"]) == ("409", "11")
        assert (got["good-label"], got["bad-label"]) == ("Archived", "Could not archive")
        assert (got["rate"], got["eta"]) == ("121 per second", "about 2 min left")
        bar = page.locator("progress")
        assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("420", "1000")
        # Without JavaScript the actions are plain POST forms carrying the CSRF token.
        forms = page.locator('[data-bf="actions"] form')
        assert forms.count() == 3
        assert forms.first.get_attribute("action") == "/jobs/p1/stop"
        assert forms.first.locator('input[name="csrf_token"]').get_attribute("value")
        assert page.locator("details.bf-confirm-nojs summary").inner_text() == "Cancel"
        assert page.locator('meta[name="csrf-token"]').get_attribute("content")
        assert page.locator(".bf-nav a").get_attribute("href") == "/jobs/"
        shot(page, "page-progress-nojs")
    finally:
        context.close()


def test_script_takes_over_the_server_markup_unchanged(harness, page, shot):
    job = harness.add_job("p1", [running_job()], auto=False)
    html = render("batchflow/progress.html", job=running_job())
    # The same page once with JavaScript off, to compare the first paint with the live view.
    context = page.context.browser.new_context(java_script_enabled=False)
    static = context.new_page()
    static.goto(harness.raw_page("hydrate", html))
    server = parts(static)
    context.close()

    page.goto(harness.raw_page("hydrate", html))
    page.wait_for_function("document.querySelector('[data-batchflow-job]').batchflow !== undefined")
    page.wait_for_function("document.querySelector('[data-bf=\"actions\"] button') !== null")
    assert parts(page) == server
    assert page.title() == "42% · Archiving posts"
    assert page.locator('[data-bf="actions"] form').count() == 0, (
        "the script replaces the no-JS forms"
    )
    assert page.locator('[data-bf="actions"] button').all_inner_texts() == [
        "Stop",
        "Pause",
        "Cancel",
    ]
    shot(page, "page-progress")

    job.push(running_job(processed=900, good=880, bad=20))
    page.wait_for_function("document.querySelector('[data-bf=\"percent\"]').textContent === '90%'")
    job.push(
        make_status(
            "p1",
            status="completed",
            outcome="completed_with_failures",
            total=1000,
            processed=1000,
            good=980,
            bad=20,
            download_url="/jobs/p1/download",
            file_name="posts.csv",
        )
    )
    page.wait_for_function(
        "document.querySelector('.bf-job').dataset.status === 'completed_with_failures'"
    )
    assert page.locator("a[data-bf-download]").inner_text() == "Download posts.csv"
    assert page.title() == "Completed with failures · Archiving posts"
    shot(page, "page-progress-done")


def test_finished_page_shows_outcome_results_and_back(harness, page, shot):
    job = make_status(
        "p2",
        status="completed",
        kind="task",
        total=None,
        processed=12,
        good=12,
        results={"indexed": 12, "languages": ["en", "fr"]},
        redirect_url="/page/back",
        restarted=True,
        messages=[
            {"at": 1_700_000_100, "text": "Started"},
            {"at": 1_700_000_160, "text": "Indexed 12 pages"},
        ],
    )
    html = render("batchflow/progress.html", job=job)
    assert "http-equiv" not in html, "a finished page does not refresh itself"
    page.goto(harness.raw_page("finished", with_config(html, {"redirectDelayMs": 500})))
    page.locator('[data-bf="outcome"]').wait_for()
    assert page.locator('[data-bf="outcome"]').inner_text().startswith("Completed")
    assert page.locator('[data-bf="restarted"]').is_visible()
    assert page.locator(".bf-kv tr").count() == 2
    assert page.locator('[data-bf="back"]').get_attribute("href") == "/page/back"
    assert page.locator(".bf-log__item").count() == 2
    time.sleep(1.2)  # more than twice the redirect delay
    assert page.url.endswith("/page/finished"), "an already finished job never redirects by itself"
    shot(page, "page-finished")


def test_progress_template_escapes_everything(harness, page):
    job = make_status(
        "p3",
        status="failed",
        message=EVIL,
        error=EVIL,
        results={EVIL: EVIL},
        messages=[{"at": 1_700_000_000, "text": EVIL}, {"at": 1_700_000_001, "text": EVIL}],
    )
    job["labels"]["title"] = EVIL
    job["labels"]["good"] = EVIL
    html = render("batchflow/progress.html", job=job)
    assert "<script>window.pwned" not in html and "<img src=x" not in html
    initial = re.search(
        r'<script type="application/json" id="batchflow-initial">(.*?)</script>', html, re.S
    )
    assert json.loads(initial.group(1))["message"] == EVIL
    page.goto(harness.raw_page("escape", html))
    page.locator(".bf-job").wait_for()
    time.sleep(0.3)
    assert page.evaluate("window.pwned") is None
    assert page.locator('[data-bf="message"]').inner_text() == EVIL
    assert page.locator(".bf-job img, .bf-job script:not([type])").count() == 0


# --------------------------------------------------------------------------- jobs.html


def test_jobs_list_page(harness, page, shot):
    harness.add_job("l1", progression("l1", total=60, steps=3), interval=0.2)
    jobs = [
        make_status("l1", total=60, processed=20, good=20),
        make_status(
            "l2",
            status="completed",
            outcome="completed_with_failures",
            handler="contacts-report",
            total=500,
            processed=500,
            good=488,
            bad=12,
            owner="bob",
        ),
        make_status("l3", status="failed", total=None, processed=3, good=3, owner="carol"),
    ]
    jobs[1]["labels"]["title"] = "Contacts report"
    html = render(
        "batchflow/jobs.html",
        jobs=jobs,
        status_filter=None,
        page=2,
        has_next=True,
        is_admin=True,
        statuses=["pending", "running", "paused", "completed", "failed", "stopped", "canceled"],
    )
    page.goto(harness.raw_page("jobs", with_config(html, {"rowPollMs": 200, "rowDelayMs": 50})))
    headers = page.locator("thead th").all_inner_texts()
    assert [h.lower() for h in headers] == [
        "job",
        "owner",
        "status",
        "progress",
        "result",
        "started",
        "duration",
    ]
    rows = page.locator("tbody tr")
    assert rows.count() == 3
    assert rows.nth(1).locator("a").get_attribute("href") == "/jobs/l2"
    assert rows.nth(1).locator("a").inner_text() == "Contacts report"
    assert rows.nth(1).locator('[data-bf="badge"]').inner_text() == "Completed with failures"
    assert rows.nth(1).locator(".bf-row__owner").inner_text() == "bob"
    assert rows.nth(2).locator("progress").get_attribute("value") == "1", (
        "a finished job shows a full bar"
    )
    assert page.locator("#bf-status-filter option").count() == 8
    assert page.locator('a[rel="prev"]').get_attribute("href") == "?page=1"
    assert page.locator('a[rel="next"]').get_attribute("href") == "?page=3"
    page.wait_for_function(
        "document.querySelector('tbody tr').dataset.terminal === 'true'", timeout=15_000
    )
    assert rows.nth(0).locator('[data-bf="badge"]').inner_text() == "Completed"
    assert rows.nth(0).locator('[data-bf="percent"]').inner_text() == "100%"
    assert not harness.requests_to("/jobs/l2/status"), "finished rows are not polled"
    shot(page, "page-jobs")


def test_jobs_list_empty_and_filtered(harness, page, shot):
    html = render(
        "batchflow/jobs.html",
        jobs=[],
        status_filter="failed",
        page=1,
        has_next=False,
        is_admin=False,
        statuses=["running", "failed"],
    )
    page.goto(harness.raw_page("jobs-empty", html))
    assert page.locator(".bf-empty__title").inner_text() == "No failed jobs"
    assert page.locator("#bf-status-filter").input_value() == "failed"
    assert page.locator(".bf-pager").count() == 0
    assert page.locator("thead").count() == 0
    shot(page, "page-jobs-empty")
    html = render(
        "batchflow/jobs.html",
        jobs=[],
        status_filter=None,
        page=3,
        has_next=False,
        is_admin=False,
        statuses=["running"],
        prefix_in_context=False,
    )
    assert "No jobs yet" in html and 'href="?page=2"' in html
    assert "My jobs</a>" not in html, "no jobs link when the prefix is unknown"


# --------------------------------------------------------------------------- start.html


def test_start_form_with_errors(harness, page, shot):
    app = make_app()
    with app.test_request_context(
        "/jobs/start/contacts-report", method="POST", data={"title": "", "limit": "0", "fmt": "csv"}
    ):
        form = ReportForm()
        assert not form.validate()
        html = render_template(
            "batchflow/start.html",
            handler_name="contacts-report",
            labels={"title": "Contacts report"},
            form=form,
            action_url="/jobs/start/contacts-report",
            error="Some parameters are not valid.",
        )
    page.goto(harness.raw_page("start", html))
    assert page.locator("h1").inner_text() == "Contacts report"
    form_el = page.locator("form.bf-form")
    assert form_el.get_attribute("action") == "/jobs/start/contacts-report"
    assert form_el.get_attribute("method") == "post"
    assert form_el.locator('input[name="csrf_token"]').count() == 1
    # The CSRF token of this test request is invalid, and that error is shown, too.
    top = page.locator(".bf-errors--form li").all_inner_texts()
    assert top[0] == "Some parameters are not valid." and "CSRF" in top[1]
    title = page.locator("#title")
    assert title.get_attribute("aria-invalid") == "true"
    assert title.get_attribute("aria-describedby") == "title-help title-errors"
    assert page.locator("#title-errors").inner_text() == "This field is required."
    assert "between 1 and 10000" in page.locator("#limit-errors").inner_text()
    assert page.locator("#fmt").get_attribute("aria-invalid") is None
    assert page.locator('label[for="notify"]').inner_text() == "Email me when it is ready"
    assert page.locator('button[type="submit"]').inner_text() == "Start"
    page.locator("#fmt").focus()
    shot(page, "page-start")


def test_start_form_uses_its_own_submit_button(harness):
    app = make_app()
    with app.test_request_context("/jobs/start/x"):
        html = render_template(
            "batchflow/start.html",
            handler_name="x",
            labels={"title": None},
            form=FormWithSubmit(),
            action_url="/jobs/start/x",
        )
    assert 'value="Build it"' in html and ">Start</button>" not in html
    assert "<title>x</title>" in html


# --------------------------------------------------------------------------- one vocabulary

WORDS = ["title", "badge", "state", "phase", "percent", "rate", "eta", "good", "bad"]
WORDS += ["good-label", "bad-label", "outcome-title", "outcome-text"]


def expected_parts(status: dict) -> dict:
    """What each part of a job's view must say: the status JSON's own texts."""
    t = status["text"]
    return {
        "title": t["title"],
        "badge": t["badge"],
        "state": t["status"],
        "phase": t["phase"],
        "percent": t["percent"],
        "rate": t["speed"],
        "eta": t["eta"],
        "good": t["counts"]["good"],
        "bad": t["counts"]["bad"],
        "good-label": t["count_labels"]["good"],
        "bad-label": t["count_labels"]["bad"],
        "outcome-title": t["outcome_title"],
        "outcome-text": t["outcome"],
        "aria": t["bar"],
    }


def view_parts(page, root: str) -> dict:
    return page.evaluate(
        """([root, names]) => {
            const r = document.querySelector(root);
            const out = Object.fromEntries(names.map(k => {
                const n = r.querySelector('[data-bf="' + k + '"]');
                return [k, n ? n.textContent.trim().replace(/\\s+/g, ' ') : null];
            }));
            out.aria = r.querySelector('progress').getAttribute('aria-valuetext');
            return out;
        }""",
        [root, WORDS],
    )


def row_parts(page, job_id: str) -> dict:
    return page.evaluate(
        """id => {
            const row = document.querySelector('tr[data-status-url="/jobs/' + id + '/status"]');
            const out = {};
            for (const k of ['badge', 'percent', 'summary', 'duration']) {
                out[k] = row.querySelector('[data-bf="' + k + '"]').textContent.trim();
            }
            out.aria = row.querySelector('progress').getAttribute('aria-valuetext');
            out.status = row.dataset.status;
            return out;
        }""",
        job_id,
    )


def test_every_state_reads_the_same_on_the_page_the_widget_and_the_list(harness, page, browser):
    """For a job in each state: the server's page (no JavaScript), the same page taken over by the
    script, a view the script builds from nothing, and a jobs-list row the script updates all say
    exactly what the status JSON's texts say."""
    from tests.test_display import STATES, status_in

    nojs = browser.new_context(java_script_enabled=False)
    static = nojs.new_page()
    try:
        for state in STATES:
            status = status_in(state)
            job_id = status["id"]
            harness.add_job(job_id, [status], auto=False)
            want = expected_parts(status)
            html = render("batchflow/progress.html", job=status)

            static.goto(harness.raw_page(f"same-{state}-nojs", html))
            assert view_parts(static, ".bf-job") == want, f"{state}: the server's page"

            page.goto(harness.raw_page(f"same-{state}-page", html))
            page.wait_for_function("document.querySelector('[data-batchflow-job]').batchflow")
            page.wait_for_function("document.querySelector('[data-bf=live]').textContent !== ''")
            assert view_parts(page, ".bf-job") == want, f"{state}: the page, taken over"
            assert page.locator('[data-bf="live"]').inner_text() == status["text"]["live"]

            box = "{container: document.getElementById('w')}"
            script = f"batchflow.progress({json.dumps(job_id)}, {box})"
            page.goto(harness.page(f"same-{state}-widget", '<div id="w"></div>', script))
            page.wait_for_function(f"document.querySelector('#w .bf-job[data-status=\"{state}\"]')")
            assert view_parts(page, "#w .bf-job") == want, f"{state}: a view built by the script"

            # The jobs list: a row first painted as running, then updated by the script.
            row_id = job_id + "-row"
            harness.add_job(row_id, [status_in(state, row_id)], auto=False)
            listed = [status_in("running", row_id)]
            listing = render(
                "batchflow/jobs.html",
                jobs=listed,
                status_filter=None,
                statuses=[],
                page=1,
                has_next=False,
                is_admin=False,
            )
            page.goto(
                harness.raw_page(f"same-{state}-list", with_config(listing, {"rowDelayMs": 0}))
            )
            page.wait_for_function(
                f"document.querySelector('tbody tr').dataset.status === {json.dumps(state)}"
            )
            got = row_parts(page, row_id)
            t = status["text"]
            assert got == {
                "badge": t["badge"],
                "percent": t["percent"],
                "summary": t["summary"],
                "duration": t["duration"],
                "aria": t["bar"],
                "status": state,
            }, f"{state}: a row of the jobs list"
    finally:
        nojs.close()
