"""The words a job shows: formatting (display.py), and one job state reading the same on the
progress page, the jobs list and in the status JSON. (The widget's side is in
tests/js/test_js_templates.py, with the same states.)"""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Blueprint, Flask, render_template

from batchflow import display
from batchflow.display import (
    DEFAULT_LABELS,
    STATE_WORDS,
    format_count,
    format_datetime,
    format_duration,
    format_eta,
    format_iso,
    format_percent,
    format_rate,
    labels_for,
    register_template_filters,
    status_view,
)
from batchflow.state import JobState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_700_000_000.0

# ----------------------------------------------------------------------------- job states

_BASE = {
    "handler": "archive-posts",
    "kind": "items",
    "owner": "alice",
    "total": "1000",
    "caps": "stop,cancel,pause,retry",
    "created_at": str(T0 - 1),
    "labels": json.dumps(labels_for("archive-posts", {"good": "archived"})),
}
#: One stored job per state a person can see: every status, and every outcome of the ended ones.
STATES: dict[str, dict[str, Any]] = {
    "pending": {"status": "pending", "processed": "0", "created_at": str(T0 + 190)},
    "running": {"status": "running", "processed": "420", "good": "409", "bad": "11"},
    "paused": {"status": "paused", "processed": "420", "good": "420"},
    "stopping": {"status": "stopping", "processed": "500", "good": "500"},
    "canceling": {"status": "canceling", "processed": "600", "good": "600", "undone": "150"},
    "completed": {"status": "completed", "processed": "1000", "good": "1000"},
    "completed_with_failures": {
        "status": "completed",
        "processed": "1000",
        "good": "988",
        "bad": "12",
    },
    "failed": {"status": "failed", "processed": "30", "good": "30", "error": "The DB went away."},
    "stalled": {"status": "failed", "stalled": "1", "processed": "10", "good": "10"},
    "stopped": {"status": "stopped", "processed": "45", "good": "40", "bad": "5", "skipped": "955"},
    "canceled": {"status": "canceled", "processed": "120", "good": "120", "undone": "120"},
}
TERMINAL = {"completed", "completed_with_failures", "failed", "stalled", "stopped", "canceled"}


def status_in(state: str, job_id: str | None = None) -> dict[str, Any]:
    """The status JSON (with URLs, as views.status_json adds them) of a job in ``state``."""
    job_id = job_id or f"j-{state.replace('_', '-')}"
    fields = {"id": job_id, **_BASE, **STATES[state]}
    fields["started_at"] = str(T0)
    fields["updated_at"] = str(T0 + 200)
    if state in TERMINAL:
        fields["finished_at"] = str(T0 + 200)
    messages = [json.dumps({"at": T0 + i, "text": f"Step {i}"}) for i in (1, 2, 3)]
    data = JobState.from_stored(fields, messages).to_dict(now=T0 + 200)
    base = f"/jobs/{job_id}"
    data.update(
        url=base,
        status_url=base + "/status",
        events_url=base + "/events",
        action_urls={a: f"{base}/{a}" for a in ("stop", "cancel", "pause", "resume", "retry")},
        download_url=None,
        results_url=base + "/results",
    )
    return data


# ----------------------------------------------------------------------------- rendering


def make_app() -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test", WTF_CSRF_ENABLED=False)
    bp = Blueprint(
        "batchflow",
        __name__,
        template_folder=os.path.join(ROOT, "templates"),
        static_folder=os.path.join(ROOT, "static"),
        static_url_path="/static",
    )
    register_template_filters(bp)
    # The pages link to other jobs' pages and to start pages.
    bp.add_url_rule("/<job_id>", "progress", lambda job_id: job_id)
    bp.add_url_rule("/start/<handler>", "start", lambda handler: handler)
    app.register_blueprint(bp, url_prefix="/jobs")
    app.jinja_env.globals["csrf_token"] = lambda: "token"
    return app


def render(name: str, **context: Any) -> str:
    app = make_app()
    with app.test_request_context("/jobs/"):
        return render_template(name, **context)


class Parts(HTMLParser):
    """The text of each element with a data-bf name (the first of each name, or all in rows), and
    the attributes of each."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.texts: dict[str, list[str]] = {}
        self.attrs: dict[str, list[dict[str, str | None]]] = {}
        self.title = ""
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        name = a.get("data-bf")
        if tag == "title":
            self.in_title = True
        if tag in ("input", "meta", "link", "br", "img"):
            return
        self.stack.append((tag, name))
        if name:
            self.texts.setdefault(name, []).append("")
            self.attrs.setdefault(name, []).append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data
        for _, name in self.stack:
            if name:
                self.texts[name][-1] += data

    def text(self, name: str, i: int = 0) -> str:
        return " ".join(self.texts[name][i].split())

    def hidden(self, name: str, i: int = 0) -> bool:
        return "hidden" in self.attrs[name][i]


def parse(html: str) -> Parts:
    parts = Parts()
    parts.feed(html)
    return parts


# ----------------------------------------------------------------------------- formatting


def test_numbers_durations_and_rates() -> None:
    assert format_count(1234567) == "1,234,567" and format_count(None) == "0"
    assert format_percent(99.95) == "99%" and format_percent(None) == ""
    assert format_percent(120) == "100%" and format_percent(-1) == "0%"
    assert [format_duration(s) for s in (0, 59.4, 60, 200, 3600, 3900, None)] == [
        "0 s",
        "59 s",
        "1 min",
        "3 min 20 s",
        "1 h",
        "1 h 5 min",
        "—",
    ]
    assert [format_eta(s) for s in (None, -1, 3, 31, 130, 3700)] == [
        "",
        "",
        "a few seconds left",
        "about 40 s left",
        "about 2 min left",
        "about 1 h 2 min left",
    ]
    # Half up, as a person rounds (Python's round() would give 120 and 0.12).
    assert format_rate(120.5) == "121 per second"
    assert format_rate(0.125) == "0.13 per second"
    assert format_rate(2.0) == "2 per second" and format_rate(2.25) == "2.3 per second"
    assert format_rate(12345.6) == "12,346 per second"
    assert format_rate(0) == format_rate(None) == ""


def test_times_are_utc_with_an_iso_twin() -> None:
    assert format_iso(T0) == "2023-11-14T22:13:20Z"
    assert format_datetime(T0) == "2023-11-14 22:13 UTC"
    assert display.format_clock(T0) == "22:13:20 UTC"
    assert format_datetime(None) == "—" and format_iso(None) == ""
    assert format_iso(951_825_600) == "2000-02-29T12:00:00Z"  # a leap day


def test_labels_keep_their_signature_and_start_with_the_state_word() -> None:
    labels = labels_for("contacts-report", {"completed": "Your export is ready"})
    assert labels["title"] == "Contacts report" and labels["completed"] == "Your export is ready"
    assert labels["running"] == DEFAULT_LABELS["running"]
    # One vocabulary: a state's default sentence begins with the word its badge shows.
    for state, word in STATE_WORDS.items():
        assert DEFAULT_LABELS[state].startswith(word), (state, DEFAULT_LABELS[state], word)


def test_filters_register_on_an_app_too() -> None:
    app = Flask(__name__)
    register_template_filters(app)
    with app.app_context():
        tmpl = app.jinja_env.from_string(
            "{{ 1234|batchflow_count }} {{ 'stalled'|batchflow_state }}"
        )
        assert tmpl.render() == "1,234 Stalled"


def test_the_status_json_carries_its_texts() -> None:
    s = status_in("running")
    assert s["state"] == "running" and s["bar"] == {"value": 420, "max": 1000, "percent": 42.0}
    t = s["text"]
    # The line under the title says nothing the badge already says.
    assert (t["title"], t["badge"], t["status"]) == ("Archive posts", "Running", "")
    assert (t["phase"], t["percent"]) == ("420 of 1,000 processed", "42%")
    assert t["counts"] == {"good": "409", "bad": "11", "skipped": "0", "processed": "420"}
    assert t["count_labels"]["good"] == "Archived" and t["counts_line"] == "409 archived, 11 failed"
    assert t["duration"] == "3 min 20 s" and t["started"] == "2023-11-14 22:13 UTC"
    assert t["rate"] == t["speed"] == "2.1 per second" and t["eta"] == "about 5 min left"
    assert (
        list(t["actions"]) == ["stop", "cancel", "pause"]
        and t["actions"]["stop"]["label"] == "Stop"
    )
    assert t["hint"] == "Stop keeps the work done so far. Cancel undoes everything done so far."
    assert [m["text"] for m in t["log"]] == ["Step 3", "Step 2", "Step 1"]
    assert t["log"][0]["time"] == "22:13:23 UTC"
    assert s["tallied"], "an item job counts good and bad"
    plain = status_view({**s, "kind": "steps", "good": 0, "bad": 0, "processed": 7})
    assert not plain["tallied"] and plain["text"]["phase"] == "7 of 1,000 processed"
    json.dumps(s)  # all of it is JSON


@pytest.mark.parametrize("state", list(STATES))
def test_one_state_reads_the_same_on_the_page_the_list_and_in_the_json(state: str) -> None:
    s = status_in(state)
    t = s["text"]
    assert s["state"] == state
    assert t["badge"] == STATE_WORDS[state]
    # The progress page: every part shows the JSON's own text.
    page = parse(render("batchflow/progress.html", job=s))
    assert page.title == f"{t['title']} · {t['badge']}"
    for name, expected in [
        ("title", t["title"]),
        ("badge", t["badge"]),
        ("state", t["status"]),
        ("phase", t["phase"]),
        ("percent", t["percent"]),
        ("rate", t["speed"]),
        ("eta", t["eta"]),
        ("good", t["counts"]["good"]),
        ("bad", t["counts"]["bad"]),
        ("good-label", t["count_labels"]["good"]),
        ("bad-label", t["count_labels"]["bad"]),
        ("outcome-title", t["outcome_title"]),
        ("outcome-text", t["outcome"]),
    ]:
        assert page.text(name) == expected, (name, page.text(name), expected)
    assert page.attrs["bar"][0].get("aria-valuetext") == t["bar"]
    assert page.hidden("outcome") == (state not in TERMINAL)
    if state in TERMINAL:
        assert t["status"] == "" and t["outcome_title"] == DEFAULT_LABELS[state]
        assert t["outcome_title"].startswith(t["badge"])
    else:
        label = DEFAULT_LABELS[state]
        assert label.startswith(t["badge"])
        assert t["status"] == ("" if label == t["badge"] else label)  # never the badge again
    # The jobs list: the same badge, bar, counts and duration.
    listing = parse(
        render(
            "batchflow/jobs.html",
            jobs=[s],
            status_filter=None,
            statuses=[x.value for x in __import__("batchflow").Status],
            page=1,
            has_next=False,
            is_admin=False,
        )
    )
    for name, expected in [
        ("badge", t["badge"]),
        ("percent", t["percent"]),
        ("summary", t["summary"]),
        ("duration", t["duration"]),
        ("started", t["started"]),
    ]:
        assert listing.text(name) == expected, (name, listing.text(name), expected)
    assert listing.attrs["bar"][0].get("aria-valuetext") == t["bar"]


def test_the_status_filter_names_each_status_as_its_badge_does() -> None:
    from batchflow import Status

    html = render(
        "batchflow/jobs.html",
        jobs=[],
        status_filter="failed",
        statuses=[x.value for x in Status],
        page=1,
        has_next=False,
        is_admin=False,
    )
    for status in Status:
        assert f'<option value="{status.value}"' in html
        assert f">{STATE_WORDS[status.value]}</option>" in html
    assert "No failed jobs" in html


def test_a_handlers_own_words_reach_every_text() -> None:
    s = status_in("completed")
    s["labels"]["completed"] = "Your export is ready"
    s["labels"]["good"] = "rows written"
    t = status_view(s)["text"]
    assert t["badge"] == "Completed", "the badge is the state's word, the same for every handler"
    assert t["outcome_title"] == "Your export is ready"
    assert t["outcome"] == "1,000 rows written." and t["count_labels"]["good"] == "Rows written"
