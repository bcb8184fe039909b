"""The job as handlers see it during a step, and as pages and scripts see it from outside.

:class:`Job` plays the part of Event Espresso's JobParameters and of Apostrophe's reporting object:
it carries the job's identity and parameters, and buffers everything a step reports (units
processed, good and bad counts, per-id results and errors, messages, extra data, the job's end).
The engine commits the buffer atomically when the step returns, so a step that is cut off and run
again never counts twice. :class:`JobState` is the read-only view built from stored state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Mapping
from typing import Any

from .schema import Status, as_int, as_json


@dataclasses.dataclass
class StepResponse:
    """What a step may return besides reporting on the job (Event Espresso's JobStepResponse).

    :param message: a line for the progress page; same as ``job.add_message(message)``.
    :param data: extra data for the page, shown as ``response`` in the status JSON (for example a
        URL the step produced). It replaces the previous step's response data.
    """

    message: str | None = None
    data: dict[str, Any] | None = None


class Job:
    """One job, as its handler sees it during one step.

    Nothing here does I/O except :meth:`stop_requested` on a one-shot job, which reads what the
    step's heartbeat last saw. Everything reported is buffered and committed when the step
    returns; a step that is cut off before its commit leaves no trace in the counters.
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        *,
        items: list[str] | None = None,
        bad_flags: list[bool] | None = None,
        files_dir: str = "",
        live: bool = False,
    ) -> None:
        self._fields = dict(fields)
        #: The job's id: unguessable, URL-safe.
        self.id: str = fields["id"]
        #: The registered name of the job's handler.
        self.handler: str = fields["handler"]
        #: Who started the job (the identity hook's answer when it was started).
        self.owner: str = fields.get("owner", "")
        #: The parameters the job was started with, as validated by the handler.
        self.params: dict[str, Any] = as_json(fields.get("params"), {})
        #: Extra data that persists between steps (Event Espresso's extra data). Change it freely.
        self.data: dict[str, Any] = as_json(fields.get("data"), {})
        #: This step's position in the job's chain; each commit moves it on by one.
        self.seq: int = as_int(fields.get("seq"))
        #: How many times this step has been claimed: more than 1 after a worker was lost.
        self.attempt: int = as_int(fields.get("attempts"), 1)
        #: The folder (``BATCHFLOW_FILES_DIR``) where a FileJob keeps its output.
        self.files_dir = files_dir
        #: The ids this step works on (item jobs; newest first while undoing).
        self.items: list[str] = items or []
        self._bad_flags = bad_flags or []
        self._data_before = fields.get("data") or "{}"
        self._incr: dict[str, int] = {}
        self._set: dict[str, Any] = {}
        self._messages: list[str] = []
        self._results: list[list[str]] = []
        self._errors: list[list[str]] = []
        self._undo_errors: list[list[str]] = []
        self._end: Status | None = None
        self._error: str | None = None
        self._defer = 0.0
        # One-shot jobs report live: a heartbeat thread drains these while the handler runs.
        self._live = live
        self._lock = threading.Lock()
        self._seen_status = fields.get("status", "")
        self._lost = False
        self._stop_seen = False

    # -- what the job knows ----------------------------------------------------------------

    @property
    def status(self) -> Status:
        """The status when this step was claimed (or, while a one-shot job runs, last seen)."""
        return Status(self._seen_status or self._fields.get("status", "pending"))

    @property
    def total(self) -> int | None:
        """The number of units the job expects, or None while it is unknown."""
        if "total" in self._set:
            return int(self._set["total"]) if self._set["total"] != "" else None
        raw = self._fields.get("total", "")
        return as_int(raw) if raw != "" else None

    def _count(self, name: str) -> int:
        return as_int(self._fields.get(name)) + self._incr.get(name, 0)

    @property
    def units_processed(self) -> int:
        """Units processed so far, this step's included."""
        return self._count("processed")

    @property
    def good_count(self) -> int:
        return self._count("good")

    @property
    def bad_count(self) -> int:
        return self._count("bad")

    @property
    def undo_position(self) -> int:
        """While undoing: how many of the processed items are still to be undone."""
        return self._count("undo_cursor")

    def _undid(self, positions: int, undone: int, failed: list[list[str]]) -> None:
        """Record an undo slice: ``positions`` ids passed, ``undone`` reversed, ``failed`` not."""
        with self._lock:
            self._incr["undo_cursor"] = self._incr.get("undo_cursor", 0) - positions
            self._incr["undone"] = self._incr.get("undone", 0) + undone
            self._incr["undo_failed"] = self._incr.get("undo_failed", 0) + len(failed)
            self._undo_errors.extend(failed)

    def item_was_bad(self, index: int) -> bool:
        """While undoing: whether ``self.items[index]`` ended bad (so there is nothing to undo)."""
        return index < len(self._bad_flags) and self._bad_flags[index]

    # -- what a handler reports ------------------------------------------------------------

    def _add(self, name: str, n: int) -> None:
        if n < 0:
            raise ValueError(f"{name} counts only go up; got {n}.")
        with self._lock:
            self._incr[name] = self._incr.get(name, 0) + n

    def set_total(self, total: int | None) -> None:
        """Say how many units the job will process; None makes the bar indeterminate."""
        if total is not None and total < 0:
            raise ValueError("A job's total cannot be negative.")
        with self._lock:
            self._set["total"] = "" if total is None else str(int(total))

    def mark_processed(self, n: int = 1) -> None:
        """Count ``n`` more units as processed."""
        self._add("processed", n)

    def good(self, n: int = 1) -> None:
        """Count ``n`` units as done well (Apostrophe's ``good``); also counts them processed."""
        self._add("good", n)
        self._add("processed", n)

    def bad(self, n: int = 1) -> None:
        """Count ``n`` units as failed (Apostrophe's ``bad``); also counts them processed."""
        self._add("bad", n)
        self._add("processed", n)

    def add_message(self, text: str) -> None:
        """Show a line of text on the progress page (it is always shown as text, never HTML)."""
        with self._lock:
            self._messages.append(str(text))

    def record_result(self, item_id: str, result: Any) -> None:
        """Keep ``result`` (JSON-serialisable) as the outcome of ``item_id``."""
        self._results.append([str(item_id), json.dumps(result, default=str)])

    def record_error(self, item_id: str, message: str) -> None:
        """Record why ``item_id`` failed; it is listed in the job's error report."""
        self._errors.append([str(item_id), str(message)])

    def set_results(self, results: Any) -> None:
        """The results of the whole job (Apostrophe's ``setResults``), shown when it ends."""
        with self._lock:
            self._set["results"] = json.dumps(results, default=str)

    def complete(self, message: str | None = None) -> None:
        """End the job successfully after this step (while undoing: the undo is finished)."""
        if message:
            self.add_message(message)
        self._end = Status.COMPLETED

    def fail(self, message: str) -> None:
        """End the job as failed after this step, with ``message`` shown to the user."""
        self._error = str(message) or "The job failed."
        self._end = Status.FAILED

    def defer(self, seconds: float) -> None:
        """Wait ``seconds`` before the next step runs, without holding a worker (throttling)."""
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError("defer() takes a finite number of seconds >= 0.")
        self._defer = max(self._defer, float(seconds))

    def stop_requested(self) -> bool:
        """Whether a user asked to stop or cancel. One-shot jobs check it while they run; a
        one-shot job that saw True ends stopped (or canceled) when ``run`` returns.

        Also True once this worker has lost the job's lease (it was frozen or cut off from Redis
        for longer than the lease, and another worker has taken the job over): returning then
        keeps two copies of the job from running at once.
        """
        if self._lost or self._seen_status in (Status.STOPPING.value, Status.CANCELING.value):
            self._stop_seen = True
        return self._stop_seen

    def cancel_requested(self) -> bool:
        """Whether a user asked to cancel: a one-shot job that allows it must undo its work."""
        return self._seen_status == Status.CANCELING.value

    @property
    def ended(self) -> bool:
        """Whether this step has said the job (or its undo) is finished."""
        return self._end is not None

    # -- for the engine ----------------------------------------------------------------------

    def _drain_live(self) -> dict[str, Any] | None:
        """Take what a one-shot job reported since the last heartbeat."""
        with self._lock:
            if not (self._incr or self._messages or self._set):
                return None
            payload: dict[str, Any] = {}
            if self._incr:
                payload["incr"] = self._incr
                for name, n in self._incr.items():
                    self._fields[name] = str(as_int(self._fields.get(name)) + n)
            if self._set:
                payload["set"] = self._set
                self._fields.update(self._set)
            if self._messages:
                payload["messages"] = self._messages
            self._incr, self._set, self._messages = {}, {}, []
            return payload

    def _payload(self, extra_set: dict[str, Any] | None = None) -> dict[str, Any]:
        """The buffer to commit: counters, fields, results, errors and messages of this step."""
        with self._lock:
            fields: dict[str, str] = {k: str(v) for k, v in self._set.items()}
            data = json.dumps(self.data, default=str)
            if data != self._data_before:
                fields["data"] = data
            if self._error is not None:
                fields["error"] = self._error
            for key, value in (extra_set or {}).items():
                fields[key] = "" if value is None else str(value)
            payload: dict[str, Any] = {}
            if self._incr:
                payload["incr"] = dict(self._incr)
            if fields:
                payload["set"] = fields
            for key, value in (
                ("messages", self._messages),
                ("results", self._results),
                ("errors", self._errors),
                ("undo_errors", self._undo_errors),
            ):
                if value:
                    payload[key] = value
            return payload
