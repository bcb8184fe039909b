"""A job as stored, read-only: what pages, the JSON API and the command line show."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from .display import status_view
from .i18n import shown
from .schema import WAITING_STATUSES, Status, as_float, as_int, as_json
from .words import DEFAULT_LABELS


@dataclasses.dataclass(frozen=True)
class JobState:
    """A job as stored, for pages, the JSON API and the CLI. Build it with :meth:`from_stored`."""

    fields: dict[str, str]
    messages: list[dict[str, Any]]

    @classmethod
    def from_stored(cls, fields: Mapping[str, str], messages: list[str] | Any) -> JobState:
        parsed = []
        for raw in messages if isinstance(messages, list) else []:
            entry = raw if isinstance(raw, dict) else as_json(raw, None)
            if isinstance(entry, dict):
                # In the current locale: a kept Message is a message id and its arguments.
                parsed.append({"at": entry.get("at"), "text": shown(entry.get("text", ""))})
        return cls(dict(fields), parsed)

    @property
    def id(self) -> str:
        return self.fields["id"]

    @property
    def owner(self) -> str:
        return self.fields.get("owner", "")

    @property
    def status(self) -> Status:
        return Status(self.fields.get("status", "pending"))

    @property
    def kind(self) -> str:
        return self.fields.get("kind", "handler")

    def count(self, name: str) -> int:
        return as_int(self.fields.get(name))

    @property
    def total(self) -> int | None:
        raw = self.fields.get("total", "")
        return as_int(raw) if raw != "" else None

    @property
    def capabilities(self) -> set[str]:
        return {c for c in self.fields.get("caps", "").split(",") if c}

    @property
    def outcome(self) -> str | None:
        status = self.status
        if not status.terminal:
            return None
        if status is Status.COMPLETED and self.count("bad"):
            return "completed_with_failures"
        if status is Status.FAILED and self.fields.get("stalled") == "1":
            return "stalled"
        return status.value

    @property
    def file_ready(self) -> bool:
        return (
            self.status is Status.COMPLETED
            and bool(self.fields.get("file_path"))
            and self.fields.get("cleaned") != "1"
        )

    def actions(self) -> list[str]:
        """What a user may ask of the job now."""
        status, caps = self.status, self.capabilities
        if status is Status.AWAITING:
            return [a for a in ("confirm",) if a in caps] + ["cancel"]
        if status.terminal:
            after: list[str] = []
            if status is Status.STOPPED and "continue" in caps and not self.fields.get("cleaned"):
                after.append("continue")
            if self._retry_helps() and "retry" in caps:
                after.append("retry")
            return after
        allowed: list[str] = []
        if status in (Status.PENDING, Status.RUNNING, Status.PAUSED):
            allowed += [a for a in ("stop", "cancel") if a in caps]
        if "pause" in caps:
            if status in (Status.PENDING, Status.RUNNING) and not self.pausing:
                allowed.append("pause")
            if status is Status.PAUSED or self.pausing:
                allowed.append("resume")
        return allowed

    def _retry_helps(self) -> bool:
        """Whether retrying the failed ids is worth offering: not after a cancel (the user undid
        the job), nor after a retry in which every id failed again (offering it once more would
        be a loop)."""
        if self.kind != "items" or not self.count("bad") or self.status is Status.CANCELED:
            return False
        return not (self.fields.get("retry_of") and not self.count("good"))

    @property
    def pausing(self) -> bool:
        """Whether a pause was asked for and the step in flight has not answered it yet."""
        pending = self.status in (Status.PENDING, Status.RUNNING)
        return pending and self.fields.get("signal") == "pause"

    def to_dict(self, now: float | None = None, *, no_worker: bool = False) -> dict[str, Any]:
        """The status JSON of the HTTP API, without URLs (the web layer adds those).

        Its texts (messages, ``text``) are in the current locale (:mod:`batchflow.i18n`).
        Besides the job's fields it carries ``state``, ``bar`` and ``text``: what every view of
        the job shows, ready-made by :func:`batchflow.display.status_view`. ``message`` is the
        latest message unless it only repeats the status line (then None); ``waiting_s`` the
        seconds a pending job has waited for a worker (None once one took it); ``no_worker``
        whether the job waits for a worker while none is seen (the caller says: ``no_worker``
        when no worker consuming the app's queue announced itself).
        """
        f = self.fields
        now = time.time() if now is None else now
        total, processed = self.total, self.count("processed")
        started, finished = as_float(f.get("started_at")), as_float(f.get("finished_at"))
        percent = rate = eta = None
        if total:
            percent = round(min(100.0, 100.0 * processed / total), 1)
        elif total == 0 and self.status.terminal:
            percent = 100.0
        if started and processed:
            elapsed = max((finished or now) - started, 1e-6)
            rate = round(processed / elapsed, 2)
            if total is not None and not self.status.terminal and rate > 0:
                eta = round(max(0, total - processed) / rate, 1)
        labels = dict(DEFAULT_LABELS)
        labels.update(as_json(f.get("labels"), {}))
        params = as_json(f.get("params"), {})
        for name in as_json(f.get("sensitive"), []):
            if name in params:
                params[name] = "••••••"
        data: dict[str, Any] = {
            "id": f["id"],
            "handler": f.get("handler", ""),
            "kind": self.kind,
            "owner": self.owner,
            "status": self.status.value,
            "terminal": self.status.terminal,
            "outcome": self.outcome,
            "total": total,
            "processed": processed,
            "good": self.count("good"),
            "bad": self.count("bad"),
            "skipped": self.count("skipped"),
            "undone": self.count("undone"),
            "undo_failed": self.count("undo_failed"),
            "percent": percent,
            "rate": rate,
            "eta_s": eta,
            "message": shown(f.get("message")) or None,
            "messages": self.messages,
            "labels": labels,
            "actions": self.actions(),
            "error": shown(f.get("error")) or None,
            "results": as_json(f.get("results"), None),
            "response": as_json(f.get("response"), None),
            "params": params,
            "restarted": f.get("restarted") == "1",
            "pausing": self.pausing,
            "retry_of": f.get("retry_of") or None,
            "file_name": f.get("file_name") or None,
            "upload_name": f.get("upload_name") or None,
            "assessment": as_json(f.get("assessment"), None),
            "file_ready": self.file_ready,
            "file_deleted": self.kind == "file"
            and self.status is Status.COMPLETED
            and f.get("cleaned") == "1",
            "redirect_url": f.get("redirect_url") or None,
            "created_at": as_float(f.get("created_at")),
            "started_at": started,
            "finished_at": finished,
            "updated_at": as_float(f.get("updated_at")),
        }
        created = data["created_at"]
        pending = self.status is Status.PENDING and created
        data["waiting_s"] = round(max(0.0, now - created), 1) if pending else None
        data["no_worker"] = no_worker and self.status.value in WAITING_STATUSES
        data.update(status_view(data))
        data["message"] = data["text"]["message"] or None
        return data
