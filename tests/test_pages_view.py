"""What the pages say in the corners a walk through them found wrong: the jobs list's counts,
retries, stopped and cleaned-up exports, repeated lines, numbers, a flooded log and a job no worker
takes. Each test builds the stored job, reads its status JSON and renders the page from it."""

from __future__ import annotations

import json
from typing import Any

from batchflow import Status
from batchflow.display import DEFAULT_LABELS, NO_WORKER_AFTER, labels_for, status_view
from batchflow.state import JobState
from tests.helpers import ListDispatcher
from tests.test_display import T0, parse, render


def status_of(
    now: float = T0 + 200,
    messages: list[Any] | None = None,
    no_worker: bool = False,
    **fields: Any,
) -> Any:
    """The status JSON (with the URLs views.status_json adds) of a stored job."""
    stored = {
        "id": "j1",
        "handler": "archive",
        "kind": "items",
        "owner": "alice",
        "caps": "stop,cancel,pause,retry",
        "created_at": str(T0 - 1),
        "started_at": str(T0),
        "updated_at": str(T0 + 200),
        "labels": json.dumps(labels_for("archive", {"good": "archived"})),
        **{k: str(v) for k, v in fields.items()},
    }
    if Status(stored.get("status", "pending")).terminal:
        stored.setdefault("finished_at", str(T0 + 200))
    raw = [json.dumps({"at": T0 + i, "text": text}) for i, text in enumerate(messages or [])]
    data = JobState.from_stored(stored, raw).to_dict(now=now, no_worker=no_worker)
    base = "/jobs/j1"
    data.update(
        url=base,
        status_url=base + "/status",
        events_url=base + "/events",
        action_urls={a: f"{base}/{a}" for a in ("stop", "cancel", "pause", "resume", "retry")},
        download_url=None,
        results_url=base + "/results" if data["kind"] == "items" else None,
    )
    return data


def page_of(status: Any) -> Any:
    return parse(render("batchflow/progress.html", job=status))


def listing_of(*statuses: Any) -> str:
    return render(
        "batchflow/jobs.html",
        jobs=list(statuses),
        status_filter=None,
        statuses=[s.value for s in Status],
        page=1,
        has_next=False,
        is_admin=False,
    )


# ------------------------------------------------------------------ 1. the jobs list's counts


def test_the_jobs_list_shows_what_each_job_counts_and_a_cancel_as_undone() -> None:
    export = status_of(
        kind="file", handler="report", status="completed", total=100_000, processed=100_000
    )
    canceled = status_of(status="canceled", processed=2906, good=2906, undone=2906)
    assert export["text"]["summary"] == "100,000 processed"
    assert canceled["text"]["summary"] == "Undone 2,906"
    html = listing_of(export, canceled)
    listing = parse(html)
    assert listing.text("summary", 0) == "100,000 processed"
    assert listing.text("summary", 1) == "Undone 2,906"
    assert "bf-subtle" in (listing.attrs["summary"][1].get("class") or "")
    assert "Done" not in [listing.text("summary", i) for i in (0, 1)]


def test_a_canceled_jobs_page_counts_the_undone_not_the_done() -> None:
    s = status_of(
        status="canceled",
        processed=46,
        good=41,
        bad=5,
        undone=40,
        undo_failed=1,
        message="Canceled; the work done was undone.",
    )
    page = page_of(s)
    assert (page.text("good-label"), page.text("good")) == ("Undone", "40")
    assert s["text"]["summary"] == "Undone 40, 1 could not be undone"
    # The status line does not repeat the outcome's title in other punctuation.
    assert s["message"] is None and page.hidden("status")


# ------------------------------------------------------------------ 2. retries


def test_no_retry_after_a_cancel_nor_after_a_retry_where_every_id_failed_again() -> None:
    assert status_of(status="completed", processed=10, good=7, bad=3)["actions"] == ["retry"]
    assert status_of(status="canceled", processed=10, good=7, bad=3, undone=7)["actions"] == []
    again = status_of(status="completed", total=384, processed=384, bad=384, retry_of="j0")
    assert again["actions"] == [] and "retry" not in again["text"]["actions"]
    # A retry where some ids got through may be retried again: it is not a loop.
    some = status_of(status="completed", processed=384, good=1, bad=383, retry_of="j0")
    assert some["actions"] == ["retry"]


def test_a_job_whose_items_all_failed_says_so() -> None:
    s = status_of(status="completed", total=384, processed=384, bad=384, retry_of="j0")
    t = s["text"]
    assert s["state"] == "failed" and t["badge"] == "Failed"
    assert t["outcome_title"] == "Failed: all 384 failed"
    page = page_of(s)
    assert page.text("outcome-title") == "Failed: all 384 failed"
    assert "bf-job--failed" in (page_html := render("batchflow/progress.html", job=s))
    assert "with some failures" not in page_html


def test_a_failed_job_that_processed_nothing_shows_an_empty_bar() -> None:
    s = status_of(kind="handler", status="failed", processed=0, error="Boom")
    assert s["bar"]["value"] == 0
    assert page_of(s).attrs["bar"][0].get("value") == "0"
    done = status_of(kind="handler", status="stopped", processed=5)
    assert done["bar"]["value"] == 1


def test_a_retry_links_back_to_the_job_it_retries() -> None:
    s = status_of(status="running", processed=1, good=1, retry_of="j0abc")
    assert s["retry_of"] == "j0abc" and s["text"]["retry_of"] == "Retry of job j0abc"
    page = page_of(s)
    assert page.text("retry-of") == "Retry of job j0abc"
    assert 'href="/jobs/j0abc"' in render("batchflow/progress.html", job=s)
    assert "retry-of" not in page_of(status_of(status="running")).texts


# ------------------------------------------------------------------ 3. exports without a file


def test_a_stopped_export_says_what_became_of_its_file() -> None:
    s = status_of(kind="file", handler="report", status="stopped", total=9, processed=4)
    t = s["text"]
    assert "kept" not in t["outcome_title"].lower()
    assert t["outcome_title"].startswith("Stopped")
    assert "not offered for download" in t["outcome"] and "new export" in t["outcome"]


def test_a_cleaned_up_export_says_its_file_was_deleted_and_how_to_get_another() -> None:
    s = status_of(
        kind="file",
        handler="report",
        status="completed",
        processed=10,
        file_path="/x/contacts.csv",
        cleaned=1,
        message="Report ready",
    )
    assert s["file_deleted"] and not s["file_ready"]
    page = page_of(s)
    assert "deleted" in page.text("file-note") and "Start a new export" in page.text("file-note")
    assert 'href="/jobs/start/report"' in render("batchflow/progress.html", job=s)
    fresh = status_of(
        kind="file", handler="report", status="completed", processed=10, file_path="/x/c.csv"
    )
    assert not fresh["file_deleted"] and "file-note" not in page_of(fresh).texts


# ------------------------------------------------------------------ 4. one line each


def test_a_message_that_repeats_the_status_line_is_not_shown_twice() -> None:
    paused = status_of(status="paused", processed=5, message="Paused")
    assert paused["message"] is None and page_of(paused).hidden("status")
    canceling = status_of(
        status="canceling",
        processed=5,
        good=5,
        message="Cancel requested: undoing the work done so far",
    )
    page = page_of(canceling)
    assert page.text("status") == DEFAULT_LABELS["canceling"]
    stopping = status_of(status="stopping", processed=5, message="Stop requested")
    assert stopping["message"] is None
    other = status_of(status="running", processed=5, message="Wrote 5 rows")
    assert other["message"] == "Wrote 5 rows"


def test_a_pending_pause_reads_pausing_and_resume_says_it_cancels_the_pause() -> None:
    s = status_of(status="running", processed=5, signal="pause", message="Pause requested")
    t = s["text"]
    assert s["pausing"] and t["badge"] == "Pausing…"
    assert list(t["actions"]) == ["stop", "cancel", "resume"]
    assert "pending pause" in t["actions"]["resume"]["tip"]
    assert page_of(s).text("badge") == "Pausing…" and s["message"] is None


# ------------------------------------------------------------------ 5. numbers


def test_a_stop_says_how_much_was_processed_with_separators(engine, manual: ListDispatcher):
    job_id = engine.submit("count", owner="alice", params={"n": 10_000_000}).job_id
    manual.drain(engine, limit=15)
    engine.signal(job_id, "stop")
    manual.drain(engine)
    state = engine.state(job_id)
    done = state.count("processed")
    assert state.status is Status.STOPPED and done >= 1000, done
    texts = [m["text"] for m in state.messages]
    assert f"Stopped after {done:,} processed; the work done is kept." in texts
    assert not any("units" in t for t in texts)


def test_results_show_numbers_with_separators() -> None:
    s = status_of(kind="task", status="completed", results=json.dumps({"rows": 1280110}))
    assert s["text"]["results"] == {"rows": "1,280,110"}
    assert "<td>1,280,110</td>" in render("batchflow/progress.html", job=s)


# ------------------------------------------------------------------ 6. the activity log


def test_identical_messages_in_a_row_are_one_line_counted() -> None:
    messages = ["Started"] + ["Wrote 5,000 rows"] * 12 + ["Done", "Done"]
    log = status_view(status_of(status="running", processed=1, messages=messages))["text"]["log"]
    assert [m["text"] for m in log] == ["Done (×2)", "Wrote 5,000 rows (×12)", "Started"]


# ------------------------------------------------------------------ 7. no worker


def test_a_job_no_worker_takes_says_so_and_what_to_check() -> None:
    waited = NO_WORKER_AFTER + 1
    fresh = status_of(now=T0 + 5, status="pending", created_at=T0)
    assert fresh["waiting_s"] == 5 and "No worker" not in json.dumps(fresh["text"])
    s = status_of(now=T0 + waited, status="pending", created_at=T0)
    assert s["waiting_s"] == waited
    line = page_of(s).text("state")
    assert line.startswith("No worker has taken this job yet")
    assert "celery -A worker worker" in line and "queue" in line
    assert status_of(now=T0 + 999, status="running", created_at=T0)["waiting_s"] is None


def test_a_job_that_needs_a_worker_while_none_is_seen_says_so_at_once() -> None:
    for status in ("pending", "running", "stopping", "canceling"):
        s = status_of(now=T0 + 1, status=status, created_at=T0, no_worker=True)
        assert s["no_worker"] is True
        line = page_of(s).text("state")
        assert line.startswith("No worker is running for this job's queue, so it waits."), status
        assert "celery -A worker worker" in line
    # A paused job, a preview awaiting Confirm and an ended job need no worker: nothing said.
    for status in ("paused", "awaiting_confirmation", "completed"):
        s = status_of(now=T0 + 1, status=status, created_at=T0, no_worker=True)
        assert s["no_worker"] is False and "No worker" not in json.dumps(s["text"]), status
