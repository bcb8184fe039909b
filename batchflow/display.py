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
from .i18n import N_, locale, number, shown, stored
from .i18n import gettext as _
from .words import (
    ACTION_HINTS,
    ACTION_TIPS,
    CANCEL_PAUSE_TIP,
    DEFAULT_LABELS,
    FILE_DELETED,
    FILE_STOPPED,
    FILE_STOPPED_NOTE,
    NO_WORKER,
    NO_WORKER_AFTER,
    NO_WORKER_SEEN,
    PREVIEW_HINT,
    SIGNAL_ECHOES,
    STATE_WORDS,
    UI_TEXTS,
)


def labels_for(handler_name: str, handler_labels: Mapping[str, Any]) -> dict[str, str]:
    """The labels a job shows, as the job keeps them: the handler's own over the defaults (a
    :class:`~batchflow.Message` kept as a message id with its arguments); the title defaults to
    the handler's name made readable ("contacts-report" -> "Contacts report")."""
    title = handler_name.replace("-", " ").replace("_", " ").strip().capitalize() or N_("Job")
    return {**DEFAULT_LABELS, "title": title, **{k: stored(v) for k, v in handler_labels.items()}}


# ------------------------------------------------------------------------------ formatting


def state_word(state: str) -> str:
    """A state (a status or an outcome) in a word or two: ``"running"`` -> ``"Running"``."""
    return _(STATE_WORDS.get(state, state.replace("_", " ").capitalize()))


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
        return bar, _("Undoing… %(done)s of %(of)s", done=format_count(done), of=format_count(of))
    if total is not None:
        top = max(total, 1)
        phase = _(
            "%(processed)s of %(total)s processed",
            processed=format_count(processed),
            total=format_count(total),
        )
        if state == "completed":
            return {"value": top, "max": top, "percent": 100.0}, phase
        value = min(processed, total)
        percent = s.get("percent")
        if percent is None:
            percent = 100.0 * value / top
        return {"value": value, "max": top, "percent": percent}, phase
    if s.get("terminal"):  # full when work was done, empty when nothing was
        value = 1 if processed or state == "completed" else 0
        return {"value": value, "max": 1, "percent": None}, _processed(processed)
    idle = _("Waiting for a worker…") if s.get("status") == "pending" else _("Working…")
    phase = _processed(processed) if processed else idle
    return {"value": None, "max": None, "percent": None}, phase


def _processed(n: Any) -> str:
    return _("%(count)s processed", count=format_count(n))


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(text: str) -> str:
    return text if text[-1:] in ".!?…" else text + "."


def _tally(s: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """ "409 archived, 11 failed" (the failed only when there are some)."""
    good = _("%(count)s %(label)s", count=format_count(s.get("good")), label=labels["good"])
    if not s.get("bad"):
        return good
    bad = _("%(count)s %(label)s", count=format_count(s.get("bad")), label=labels["bad"])
    return _("%(good)s, %(bad)s", good=good, bad=bad)


def _counts(s: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """ "409 archived, 11 failed" for a job that tallies; "7 processed" for one that does not."""
    return _tally(s, labels) if _tallied(s) else _processed(s.get("processed"))


def _undone(s: Mapping[str, Any]) -> str:
    """ "2,906" undone after a cancel, and ", 3 could not be undone" when some could not."""
    failed, undone = s.get("undo_failed"), format_count(s.get("undone"))
    if not failed:
        return undone
    return _(
        "%(undone)s, %(failed)s could not be undone", undone=undone, failed=format_count(failed)
    )


def _outcome(s: Mapping[str, Any], labels: Mapping[str, str], state: str) -> str:
    """What the outcome box says under its title: the counts, and what became of the work."""
    counts = _counts(s, labels)
    if state in ("completed", "completed_with_failures"):
        return _("%(counts)s.", counts=counts)
    if state == "failed" and s.get("outcome") == "completed_with_failures":  # all failed
        return _("%(count)s %(label)s.", count=format_count(s.get("bad")), label=labels["bad"])
    if state in ("failed", "stalled"):
        if s.get("processed"):
            return _("Before it ended: %(counts)s.", counts=counts)
        return _("Nothing was processed.")
    if state == "stopped" and s.get("kind") == "file":
        return _("%(counts)s before the stop.", counts=counts) + " " + _(FILE_STOPPED_NOTE)
    if state == "stopped":
        return _("Kept: %(counts)s.", counts=counts)
    if state == "canceled":
        return _("Undone: %(undone)s.", undone=_undone(s))
    return ""


def _label(s: Mapping[str, Any], labels: Mapping[str, str], state: str) -> str:
    """The state's sentence: the status line while the job runs, the outcome's title after."""
    default = _(DEFAULT_LABELS[state]) if state in DEFAULT_LABELS else None
    label = labels.get(state) or state_word(state)
    if s.get("no_worker"):
        return _(NO_WORKER_SEEN)
    if state == "pending" and (s.get("waiting_s") or 0) >= NO_WORKER_AFTER:
        return _(NO_WORKER)
    if state == "running" and s.get("pausing"):
        return labels.get("pausing") or _(DEFAULT_LABELS["pausing"])
    if state == "failed" and s.get("outcome") == "completed_with_failures":
        return _("Failed: all %(count)s failed", count=format_count(s.get("bad")))
    if state == "stopped" and s.get("kind") == "file" and label == default:
        return _(FILE_STOPPED)
    return label


def _gist(text: str) -> str:
    # "Cancel requested: undoing the work done so far" and "Canceling: undoing the work done so
    # far…" say one thing: compare what follows the colon, in lower-case words only.
    return " ".join(re.findall(r"\w+", text.split(":", 1)[-1].lower()))


def _message(s: Mapping[str, Any], label: str, badge: str, state: str) -> str:
    """The latest message, or ``""`` when it only repeats the badge or the status line."""
    message = str(s.get("message") or "")
    gist = _gist(message)
    if not message or gist in (_gist(label), _gist(badge)):
        return ""
    current = "pausing" if s.get("pausing") and state == "running" else state
    echoes = {_gist(_(text)): echoed for text, echoed in SIGNAL_ECHOES.items()}
    return "" if echoes.get(gist) == current else message


def _summary(s: Mapping[str, Any], labels: Mapping[str, str], state: str) -> str:
    """What the job counted, in a few words (the jobs list, the CLI): undone after a cancel."""
    if state == "canceled":
        if not _tallied(s):
            return _("Undone: %(processed)s", processed=_processed(s.get("processed")))
        return _("Undone %(undone)s", undone=_undone(s))
    return _counts(s, labels)


def _value(value: Any) -> str:
    """A result's value as shown: numbers with separators, anything else but text as JSON."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value)
    return value if isinstance(value, str) else json.dumps(value)


def _actions(s: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
    actions = [a for a in s.get("actions") or [] if a in ACTION_TIPS]
    tips = {**ACTION_TIPS, **({"resume": CANCEL_PAUSE_TIP} if s.get("pausing") else {})}
    if s.get("status") == "awaiting_confirmation":
        tips["cancel"] = N_("Discard the preview: nothing is changed.")
    return {a: {"label": labels.get(a) or a, "tip": _(tips[a])} for a in actions}


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
    own = {k: v for k, v in (status.get("labels") or {}).items() if v}
    labels = {k: shown(v) for k, v in {**DEFAULT_LABELS, **own}.items()}  # in the reader's words
    state = display_state(status)
    terminal = bool(status.get("terminal"))
    running = status.get("status") == "running"
    bar, phase = _bar(status, state)
    percent = format_percent(bar["percent"])
    label = _label(status, labels, state)
    badge = _("Pausing…") if running and status.get("pausing") else state_word(state)
    own_title = own.get("title")
    if own_title == DEFAULT_LABELS["title"]:
        own_title = None  # the default says nothing the handler's name does not say better
    title = shown(own_title) if own_title else status.get("handler") or labels["title"]
    good = labels["good"]
    started, finished = status.get("started_at"), status.get("finished_at")
    end = finished or status.get("updated_at")
    duration = format_duration(end - started if started and end else None)
    took = _("Took %(duration)s", duration=duration) if terminal and started and finished else ""
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
        counts["good"], count_labels["good"] = format_count(status.get("undone")), _("Undone")
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
        **_link_texts(status),
        "results": {str(k): _value(v) for k, v in results.items()}
        if isinstance(results, Mapping)
        else {},
        "log": _log(status),
        "preview": _preview(status, labels),
        "ui": {key: _(text) for key, text in UI_TEXTS.items()},
    }
    return {"state": state, "tallied": _tallied(status), "bar": bar, "text": text}


def _link_texts(s: Mapping[str, Any]) -> dict[str, str]:
    """The download's and the report's links, why a file is gone, what a retry retries."""
    name = s.get("file_name")
    return {
        "download": _("Download %(name)s", name=name) if name else _("Download the file"),
        "file_note": _(FILE_DELETED) if s.get("file_deleted") else "",
        "report": _("Download the error report (CSV)")
        if s.get("bad")
        else _("Download the results (CSV)"),
        "retry_of": _("Retry of job %(job)s", job=s["retry_of"]) if s.get("retry_of") else "",
    }


def _action_texts(
    s: Mapping[str, Any], state: str, actions: Mapping[str, Any], good: str
) -> dict[str, Any]:
    """The buttons (``actions``), the ``hint`` under them, and the question Cancel asks."""
    if state == "awaiting_confirmation":
        hint, question = _(PREVIEW_HINT), _("Discard this preview? Nothing has been changed.")
    else:
        hint = " ".join(_(ACTION_HINTS[a]) for a in actions if a in ACTION_HINTS)
        done = _("%(count)s %(label)s", count=format_count(s.get("good")), label=good)
        question = _(
            "Cancel this job and undo everything it has done so far (%(done)s)?", done=done
        )
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
        summary = _(DEFAULT_LABELS["preview"]).format(**counts)
    rejected = _("%(count)s would be rejected.", count=counts["rejected"])
    return {
        "summary": summary,
        "rejected": rejected if found.get("rejected") else "",
        "sample": [str(text) for text in found.get("sample") or []],
        "errors": [[str(i), shown(m)] for i, m in found.get("errors") or []],
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
    """Register :data:`TEMPLATE_FILTERS`, and the globals ``_bf`` (a text in the reader's
    language) and ``batchflow_locale()``, on a Flask blueprint (for every template of the app it
    is registered on) or on a Flask app.

    :param target: a ``flask.Blueprint`` or a ``flask.Flask``; taken loosely so this module
        imports no Flask.
    """
    add = getattr(target, "add_app_template_filter", None) or target.add_template_filter
    for name, function in TEMPLATE_FILTERS.items():
        add(function, name)
    # The pages' other words go through _bf, in the reader's language; <html lang> through this.
    add_global = getattr(target, "add_app_template_global", None) or target.add_template_global
    add_global(_, "_bf")
    add_global(locale, "batchflow_locale")
