"""What a job shows a person: its labels and every text the pages, the widget and the CLI show.

This is the one source of those words and of their formatting. The pages call these functions as
Jinja filters (:func:`register_template_filters`); the status JSON carries their results ready-made
(:func:`status_view`, added by :meth:`batchflow.state.JobState.to_dict`), and batchflow.js only
ever copies those strings into the page. It imports no Flask: the engine stores a job's labels
(:func:`labels_for`) when the job starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from .formats import (
    format_clock,
    format_count,
    format_datetime,
    format_duration,
    format_eta,
    format_iso,
    format_percent,
    format_rate,
)

#: The words for every state and action; a handler's ``labels`` override any of them. A state's
#: label (the status line, the outcome's title) starts with its :data:`STATE_WORDS` word.
DEFAULT_LABELS: dict[str, str] = {
    "title": "Working",
    "pending": "Waiting for a worker…",
    "running": "Running",
    "pausing": "Pausing after the current step…",
    "paused": "Paused",
    "awaiting_confirmation": "Awaiting confirmation: check the preview, then confirm or cancel",
    "stopping": "Stopping after the current step…",
    "canceling": "Canceling: undoing the work done so far…",
    "completed": "Completed",
    "completed_with_failures": "Completed with failures",
    "failed": "Failed",
    "stalled": "Stalled: the job kept losing its worker",
    "stopped": "Stopped. The work done so far was kept.",
    "canceled": "Canceled. The work done was undone.",
    "good": "done",
    "bad": "failed",
    "skipped": "not reached",
    "stop": "Stop",
    "cancel": "Cancel",
    "pause": "Pause",
    "resume": "Resume",
    "retry": "Retry failed",
    "continue": "Continue",
    "confirm": "Confirm",
    # A preview's summary; {changes}, {assessed}, {rejected} and {unchanged} are its counts.
    "preview": "{changes} of {assessed} would change.",
}

#: A state in a word or two: badges, the jobs list, the status filter, the CLI. Not per handler,
#: so the same state reads the same everywhere.
STATE_WORDS: dict[str, str] = {
    "pending": "Waiting",
    "running": "Running",
    "paused": "Paused",
    "awaiting_confirmation": "Awaiting confirmation",
    "stopping": "Stopping",
    "canceling": "Canceling",
    "completed": "Completed",
    "completed_with_failures": "Completed with failures",
    "failed": "Failed",
    "stalled": "Stalled",
    "stopped": "Stopped",
    "canceled": "Canceled",
}

#: What each action does, as a button's tooltip.
ACTION_TIPS: dict[str, str] = {
    "stop": "Stop after the current step. Work already done is kept.",
    "cancel": "Stop and undo every change this job has made.",
    "pause": "Pause after the current step. You can resume later.",
    "resume": "Continue where the job left off.",
    "retry": "Start a new job for the items that failed.",
    "continue": "Go on from where the job stopped, as the same job.",
    "confirm": "Run the job over the items the preview went through.",
}

#: A resume offered while a pause is still pending cancels that pause.
CANCEL_PAUSE_TIP = "Cancel the pending pause: the job keeps running."
#: Seconds a job may wait for its first step before its view says no worker has taken it.
NO_WORKER_AFTER = 30.0
#: The status line of a job no worker has taken after :data:`NO_WORKER_AFTER` seconds.
NO_WORKER = (
    "No worker has taken this job yet. Check that a worker is running "
    "(celery -A worker worker) and that it uses the same Redis broker and queue as this app."
)

#: What a stopped export's outcome says about its file (the file is never trimmed to its last
#: row, so it is not offered; maintenance deletes it when the job expires).
FILE_STOPPED = "Stopped before the file was finished."
FILE_STOPPED_NOTE = (
    "The unfinished file is not offered for download and is deleted when the job expires. "
    "Start a new export to get the whole file."
)
#: What a finished export whose file was cleaned up says instead of its download link.
FILE_DELETED = (
    "The file was deleted from the server (after it was downloaded, or when it expired). "
    "Start a new export to get a fresh one."
)

#: Lines under the buttons, for the actions whose effect on the work done is worth saying.
ACTION_HINTS: dict[str, str] = {
    "stop": "Stop keeps the work done so far.",
    "cancel": "Cancel undoes everything done so far.",
}

#: What a preview's buttons do, under them.
PREVIEW_HINT = (
    "Confirm runs the job over these items; Cancel discards the preview. "
    "Nothing has been changed yet."
)

#: The fixed words of a job's view (headings, links, the confirmation, connection trouble),
#: sent in every status JSON so that the widget has no words of its own.
UI_TEXTS: dict[str, str] = {
    "restarted": "This job was restarted after its worker was lost; its counts started again.",
    "activity": "Activity",
    "results": "Results",
    "back": "Back",
    "going_back": "Going back in a moment…",
    "stay": "Stay here",
    "downloaded": "Downloaded. The file was removed from the server.",
    "confirm_yes": "Yes, cancel and undo",
    "confirm_no": "Don't cancel",
    "connection": "Connection problem. Retrying…",
    "network": "Network error: the request did not reach the server. Please try again.",
    "refused": "The server refused the request (HTTP {code}). Please try again.",
    "close": "Close",
    "close_tip": "Close (the job keeps running)",
    "keeps_running": "The job keeps running if you close this window.",
    "open_page": "Open the job page",
    "new_export": "Start a new export",
    "see_failed": "See the failed ids",
    "preview_sample": "For example",
    "preview_errors": "Would be rejected",
    "rejected": "Download the rejected rows to fix (CSV)",
    "notify_me": "Notify me when done",
    "notify_on": "You will get a notification when the job ends.",
    "notify_blocked": "This browser blocks notifications from this site.",
}


def labels_for(handler_name: str, handler_labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a job shows: the handler's own over the defaults; the title defaults to the
    handler's name made readable ("contacts-report" -> "Contacts report")."""
    title = handler_name.replace("-", " ").replace("_", " ").strip().capitalize() or "Job"
    return {**DEFAULT_LABELS, "title": title, **handler_labels}


# ------------------------------------------------------------------------------ formatting


def state_word(state: str) -> str:
    """A state (a status or an outcome) in a word or two: ``"running"`` -> ``"Running"``."""
    return STATE_WORDS.get(state, state.replace("_", " ").capitalize())


# ------------------------------------------------------------------------------ a job's view


def display_state(status: Mapping[str, Any]) -> str:
    """The state a job shows: its outcome once it has ended (``"stalled"``), else its status."""
    if status.get("terminal"):
        outcome = str(status.get("outcome") or status.get("status"))
        if outcome == "completed_with_failures" and _all_failed(status):
            return "failed"  # it ran to the end, but not one item succeeded
        return outcome
    return str(status.get("status"))


def _all_failed(s: Mapping[str, Any]) -> bool:
    return bool(s.get("bad")) and not s.get("good")


def _tallied(s: Mapping[str, Any]) -> bool:
    # Item and one-shot jobs count good and bad; other jobs only count units processed.
    return s.get("kind") in ("items", "task") or (s.get("good") or 0) + (s.get("bad") or 0) > 0


def _bar(s: Mapping[str, Any], state: str) -> tuple[dict[str, Any], str]:
    """The bar (``value`` None: indeterminate) and the phase line above it."""
    processed = s.get("processed") or 0
    total = s.get("total")
    if s.get("status") == "canceling":  # the bar shows the undo: how much done work is reversed
        done = (s.get("undone") or 0) + (s.get("undo_failed") or 0)
        of = s.get("good") or 0
        bar = {"value": min(done, of) if of else None, "max": of or None}
        bar["percent"] = 100.0 * done / of if of else None
        return bar, f"Undoing… {format_count(done)} of {format_count(of)}"
    if total is not None:
        top = max(total, 1)
        phase = f"{format_count(processed)} of {format_count(total)} processed"
        if state == "completed":
            return {"value": top, "max": top, "percent": 100.0}, phase
        value = min(processed, total)
        percent = s.get("percent")
        if percent is None:
            percent = 100.0 * value / top
        return {"value": value, "max": top, "percent": percent}, phase
    if s.get("terminal"):  # full when work was done, empty when nothing was
        value = 1 if processed or state == "completed" else 0
        return {"value": value, "max": 1, "percent": None}, f"{format_count(processed)} processed"
    idle = "Waiting for a worker…" if s.get("status") == "pending" else "Working…"
    phase = f"{format_count(processed)} processed" if processed else idle
    return {"value": None, "max": None, "percent": None}, phase


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(text: str) -> str:
    return text if text[-1:] in ".!?…" else text + "."


def _tally(s: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """ "409 archived, 11 failed" (the failed only when there are some)."""
    good = f"{format_count(s.get('good'))} {labels['good']}"
    return good + (f", {format_count(s.get('bad'))} {labels['bad']}" if s.get("bad") else "")


def _counts(s: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """ "409 archived, 11 failed" for a job that tallies; "7 processed" for one that does not."""
    return _tally(s, labels) if _tallied(s) else f"{format_count(s.get('processed'))} processed"


def _undone(s: Mapping[str, Any]) -> str:
    """ "2,906" undone after a cancel, and ", 3 could not be undone" when some could not."""
    failed = s.get("undo_failed")
    tail = f", {format_count(failed)} could not be undone" if failed else ""
    return f"{format_count(s.get('undone'))}{tail}"


def _outcome(s: Mapping[str, Any], labels: Mapping[str, str], state: str) -> str:
    """What the outcome box says under its title: the counts, and what became of the work."""
    counts = _counts(s, labels)
    if state in ("completed", "completed_with_failures"):
        return f"{counts}."
    if state == "failed" and s.get("outcome") == "completed_with_failures":
        return f"{format_count(s.get('bad'))} {labels['bad']}."  # all of them: see _all_failed
    if state in ("failed", "stalled"):
        return f"Before it ended: {counts}." if s.get("processed") else "Nothing was processed."
    if state == "stopped" and s.get("kind") == "file":
        return f"{counts} before the stop. {FILE_STOPPED_NOTE}"
    if state == "stopped":
        return f"Kept: {counts}."
    if state == "canceled":
        return f"Undone: {_undone(s)}."
    return ""


def _label(s: Mapping[str, Any], labels: Mapping[str, str], state: str) -> str:
    """The state's sentence: the status line while the job runs, the outcome's title after."""
    default = DEFAULT_LABELS.get(state)
    label = labels.get(state) or state_word(state)
    if state == "pending" and (s.get("waiting_s") or 0) >= NO_WORKER_AFTER:
        return NO_WORKER
    if state == "running" and s.get("pausing"):
        return labels.get("pausing") or DEFAULT_LABELS["pausing"]
    if state == "failed" and s.get("outcome") == "completed_with_failures":
        return f"Failed: all {format_count(s.get('bad'))} failed"
    if state == "stopped" and s.get("kind") == "file" and label == default:
        return FILE_STOPPED
    return label


def _gist(text: str) -> str:
    # "Cancel requested: undoing the work done so far" and "Canceling: undoing the work done so
    # far…" say one thing: compare what follows the colon, in lower-case words only.
    return " ".join(re.findall(r"\w+", text.split(":", 1)[-1].lower()))


#: Messages that only echo a signal; the status line says the same while that state lasts.
SIGNAL_ECHOES: dict[str, str] = {
    "stop requested": "stopping",
    "pause requested": "pausing",
    "paused": "paused",
}


def _message(s: Mapping[str, Any], label: str, badge: str, state: str) -> str:
    """The latest message, or ``""`` when it only repeats the badge or the status line."""
    message = str(s.get("message") or "")
    gist = _gist(message)
    if not message or gist in (_gist(label), _gist(badge)):
        return ""
    current = "pausing" if s.get("pausing") and state == "running" else state
    return "" if SIGNAL_ECHOES.get(gist) == current else message


def _summary(s: Mapping[str, Any], labels: Mapping[str, str], state: str) -> str:
    """What the job counted, in a few words (the jobs list, the CLI): undone after a cancel."""
    if state == "canceled":
        if not _tallied(s):
            return f"Undone: {format_count(s.get('processed'))} processed"
        return f"Undone {_undone(s)}"
    return _counts(s, labels)


def _value(value: Any) -> str:
    """A result's value as shown: numbers with separators, anything else but text as JSON."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,}"
    return value if isinstance(value, str) else json.dumps(value)


def _actions(s: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
    actions = [a for a in s.get("actions") or [] if a in ACTION_TIPS]
    tips = {**ACTION_TIPS, **({"resume": CANCEL_PAUSE_TIP} if s.get("pausing") else {})}
    if s.get("status") == "awaiting_confirmation":
        tips["cancel"] = "Discard the preview: nothing is changed."
    return {a: {"label": labels.get(a) or a, "tip": tips[a]} for a in actions}


def status_view(status: Mapping[str, Any]) -> dict[str, Any]:
    """What a job's view shows, ready-made: ``state`` (the outcome once ended, else the status;
    ``failed`` when every item failed), ``tallied`` (whether it counts good and bad, or only units
    processed), ``bar`` (``value`` and ``max``, None while indeterminate, and ``percent``) and
    ``text``, every string of the view, computed from the status JSON's own fields so that the
    page, the JSON and the widget cannot disagree. The README's Web API section lists ``text``'s
    keys; among them ``status`` (the line under the title; says when no worker took the job),
    ``message`` (``""`` when it repeats the badge or ``status``), ``summary`` (the counts for
    lists: "100,000 processed", "Undone 2,906"), ``file_note``, ``retry_of`` and ``log`` (the last
    eight messages, newest first, a run of identical ones as one line).
    """
    labels = {**DEFAULT_LABELS, **{k: v for k, v in (status.get("labels") or {}).items() if v}}
    state = display_state(status)
    terminal = bool(status.get("terminal"))
    running = status.get("status") == "running"
    bar, phase = _bar(status, state)
    percent = format_percent(bar["percent"])
    label = _label(status, labels, state)
    badge = "Pausing…" if running and status.get("pausing") else state_word(state)
    own_title = (status.get("labels") or {}).get("title")
    if own_title == DEFAULT_LABELS["title"]:
        own_title = None  # the default says nothing the handler's name does not say better
    title = own_title or status.get("handler") or DEFAULT_LABELS["title"]
    good = labels["good"]
    started, finished = status.get("started_at"), status.get("finished_at")
    end = finished or status.get("updated_at")
    duration = format_duration(end - started if started and end else None)
    took = f"Took {duration}" if terminal and started and finished else ""
    rate = format_rate(status.get("rate"))
    outcome = _outcome(status, labels, state) if terminal else ""
    if terminal:
        live = f"{_sentence(label)} {outcome}"
    else:
        live = f"{_sentence(label)} {phase}" + (f", {percent}" if percent else "")
    actions = _actions(status, labels)
    counts = {k: format_count(status.get(k)) for k in ("good", "bad", "skipped", "processed")}
    count_labels = {k: _capital(labels[k]) for k in ("good", "bad", "skipped")}
    if state == "canceled":  # the work done is undone now: the first box counts the undone
        counts["good"], count_labels["good"] = format_count(status.get("undone")), "Undone"
    results = status.get("results")
    text = {
        "title": title,
        "badge": badge,
        # The line under the title, unless it would only repeat the badge ("Running").
        "status": "" if terminal or label == badge else label,
        "message": _message(status, label, badge, state),
        "phase": phase,
        "percent": percent,
        "bar": phase + (f" ({percent})" if percent else ""),
        "counts": counts,
        "count_labels": count_labels,
        "counts_line": _tally(status, labels),
        "summary": _summary(status, labels, state),
        "rate": rate,
        "eta": format_eta(status.get("eta_s")) if running else "",
        "duration": duration,
        "speed": took if terminal else (rate if running else ""),
        "started": format_datetime(started),
        "started_iso": format_iso(started),
        "outcome_title": label if terminal else "",
        "outcome": outcome,
        "live": live,
        "tab": f"{badge if terminal or not percent else percent} · {title}",
        **_action_texts(status, state, actions, good),
        "download": f"Download {status.get('file_name') or 'the file'}",
        "file_note": FILE_DELETED if status.get("file_deleted") else "",
        "report": f"Download the {'error report' if status.get('bad') else 'results'} (CSV)",
        "retry_of": f"Retry of job {status['retry_of']}" if status.get("retry_of") else "",
        "results": {str(k): _value(v) for k, v in results.items()}
        if isinstance(results, Mapping)
        else {},
        "log": _log(status),
        "preview": _preview(status, labels),
        "ui": dict(UI_TEXTS),
    }
    return {"state": state, "tallied": _tallied(status), "bar": bar, "text": text}


def _action_texts(
    s: Mapping[str, Any], state: str, actions: Mapping[str, Any], good: str
) -> dict[str, Any]:
    """The buttons (``actions``), the ``hint`` under them, and the question Cancel asks."""
    if state == "awaiting_confirmation":
        hint, question = PREVIEW_HINT, "Discard this preview? Nothing has been changed."
    else:
        hint = " ".join(ACTION_HINTS[a] for a in actions if a in ACTION_HINTS)
        done = f"{format_count(s.get('good'))} {good}"
        question = f"Cancel this job and undo everything it has done so far ({done})?"
    return {"actions": actions, "hint": hint, "confirm_cancel": question}


def _preview(status: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """What a preview found, while the job waits for its Confirm: ``summary`` (the handler's
    ``preview`` label with the counts), ``rejected`` ("3 would be rejected"), ``sample`` and
    ``errors`` (``[id, message]`` pairs); empty once it runs."""
    found = status.get("assessment")
    if not isinstance(found, Mapping) or status.get("status") != "awaiting_confirmation":
        return {}
    counts = {
        k: format_count(found.get(k)) for k in ("changes", "assessed", "rejected", "unchanged")
    }
    try:
        summary = labels["preview"].format(**counts)
    except (KeyError, IndexError, ValueError):  # a handler's label with other placeholders
        summary = DEFAULT_LABELS["preview"].format(**counts)
    return {
        "summary": summary,
        "rejected": f"{counts['rejected']} would be rejected." if found.get("rejected") else "",
        "sample": [str(text) for text in found.get("sample") or []],
        "errors": [[str(i), str(m)] for i, m in found.get("errors") or []],
    }


def _log(status: Mapping[str, Any]) -> list[dict[str, str]]:
    """The activity log: the last eight messages, newest first; a run of identical messages is
    one line, counted ("Wrote 5,000 rows (×12)"), at the time of the latest."""
    runs: list[tuple[str, Any, int]] = []
    for m in status.get("messages") or []:
        text = str(m.get("text", ""))
        if runs and runs[-1][0] == text:
            runs[-1] = (text, m.get("at"), runs[-1][2] + 1)
        else:
            runs.append((text, m.get("at"), 1))
    return [
        {
            "text": text if n == 1 else f"{text} (×{n})",
            "time": format_clock(at),
            "iso": format_iso(at),
        }
        for text, at, n in reversed(runs[-8:])
    ]


def with_view(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` with its :func:`status_view` (``state``, ``tallied``, ``bar``, ``text``), unless
    it has one."""
    if "text" in status:
        return dict(status)
    return {**status, **status_view(status)}


# ------------------------------------------------------------------------------ Jinja

#: The template filters, by name: the pages format with these and nothing else.
TEMPLATE_FILTERS: dict[str, Callable[..., Any]] = {
    "batchflow_view": with_view,
    "batchflow_state": state_word,
    "batchflow_count": format_count,
    "batchflow_duration": format_duration,
    "batchflow_iso": format_iso,
    "batchflow_datetime": format_datetime,
    "batchflow_clock": format_clock,
}


def register_template_filters(target: Any) -> None:
    """Register :data:`TEMPLATE_FILTERS` on a Flask blueprint (for every template of the app it
    is registered on) or on a Flask app.

    :param target: a ``flask.Blueprint`` or a ``flask.Flask``; taken loosely so this module
        imports no Flask.
    """
    add = getattr(target, "add_app_template_filter", None) or target.add_template_filter
    for name, function in TEMPLATE_FILTERS.items():
        add(function, name)
