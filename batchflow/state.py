"""A job as stored, read-only: what pages, the JSON API and the command line show."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from .display import DEFAULT_LABELS, status_view
from .schema import Status, as_float, as_int, as_json


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
                parsed.append({"at": entry.get("at"), "text": str(entry.get("text", ""))})
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
        if status.terminal:
            retry = self.kind == "items" and self.count("bad") > 0 and "retry" in caps
            return ["retry"] if retry else []
        allowed: list[str] = []
        if status in (Status.PENDING, Status.RUNNING, Status.PAUSED):
            allowed += [a for a in ("stop", "cancel") if a in caps]
        if "pause" in caps:
            pausing = self.fields.get("signal") == "pause"
            if status in (Status.PENDING, Status.RUNNING) and not pausing:
                allowed.append("pause")
            if status is Status.PAUSED or pausing:
                allowed.append("resume")
        return allowed

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """The status JSON of the HTTP API, without URLs (the web layer adds those).

        Besides the job's fields it carries ``state``, ``bar`` and ``text``: what every view of
        the job shows, ready-made by :func:`batchflow.display.status_view`.
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
            "message": f.get("message") or None,
            "messages": self.messages,
            "labels": labels,
            "actions": self.actions(),
            "error": f.get("error") or None,
            "results": as_json(f.get("results"), None),
            "response": as_json(f.get("response"), None),
            "params": params,
            "restarted": f.get("restarted") == "1",
            "file_name": f.get("file_name") or None,
            "file_ready": self.file_ready,
            "redirect_url": f.get("redirect_url") or None,
            "created_at": as_float(f.get("created_at")),
            "started_at": started,
            "finished_at": finished,
            "updated_at": as_float(f.get("updated_at")),
        }
        data.update(status_view(data))
        return data
