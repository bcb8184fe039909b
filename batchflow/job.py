"""The job as its handler sees it during one step.

Three small objects, each with one concern:

- :class:`Job`: the handler's API. Identity, parameters, counters, and the verbs a handler reports
  with (``good``, ``bad``, ``add_message``, ``complete``...).
- :class:`StepBuffer`: what the step has reported so far, over the state committed before it. The
  engine commits it atomically when the step returns, so a step that is cut off and run again
  never counts twice.
- :class:`LeaseView`: what the heartbeat thread learns about the step's lease while the handler
  runs (the job's status now, whether another worker took the step over). Shared between the
  step's thread and the heartbeat's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from .schema import F, Status, as_int, as_json


@dataclasses.dataclass
class StepResponse:
    """What a step may return besides reporting on the job.

    :param message: a line for the progress page; same as ``job.add_message(message)``.
    :param data: extra data for the page, shown as ``response`` in the status JSON (for example a
        URL the step produced). It replaces the previous step's response data.
    """

    message: str | None = None
    data: dict[str, Any] | None = None


#: Seconds between two checkpoints that count; a tenth of the default commit interval.
CHECKPOINT_GAP = 0.01


@dataclasses.dataclass
class _Report:
    """Part of a step's report: counter increments, fields set, messages, per-id outcomes."""

    incr: dict[str, int] = dataclasses.field(default_factory=dict)
    set: dict[str, str] = dataclasses.field(default_factory=dict)
    messages: list[str] = dataclasses.field(default_factory=list)
    results: list[list[str]] = dataclasses.field(default_factory=list)
    errors: list[list[str]] = dataclasses.field(default_factory=list)
    undo_errors: list[list[str]] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.incr
            or self.set
            or self.messages
            or self.results
            or self.errors
            or self.undo_errors
        )

    def absorb(self, other: _Report) -> None:
        for name, n in other.incr.items():
            self.incr[name] = self.incr.get(name, 0) + n
        self.set.update(other.set)
        self.messages += other.messages
        self.results += other.results
        self.errors += other.errors
        self.undo_errors += other.undo_errors

    def payload(self) -> dict[str, Any]:
        """As the scripts apply it (see ``_APPLY`` in scripts.py): only the parts with content."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


class StepBuffer:
    """Everything one step reports, kept apart from the state committed before it.

    What the step reported up to its last :meth:`checkpoint` is *ready*: a consistent state that
    the heartbeat may commit while the step goes on (fenced by the lease, like every commit), so
    that a step run again after its worker died resumes from there. The rest is committed when
    the step returns. Thread-safe: the heartbeat drains it while the handler reports into it.

    :param committed: the job hash as the step claimed it.
    """

    def __init__(self, committed: Mapping[str, str]) -> None:
        self._committed = dict(committed)
        self._data_before = committed.get(F.DATA) or "{}"
        self._ready = _Report()
        self._pending = _Report()
        # A checkpoint sent but not known to be applied: (its number, its payload). RENEW and
        # COMMIT apply a numbered checkpoint once (the job's `checkpoints` field), so it can be
        # sent again after an error without counting twice.
        self._unconfirmed: tuple[int, dict[str, Any]] | None = None
        self._numbered = as_int(committed.get(F.CHECKPOINTS))
        self._lock = threading.Lock()
        #: How the step said the job (or its undo) ends, if it did.
        self.ending: Status | None = None
        #: Seconds to wait before the next step (``job.defer``, ``step_delay``).
        self.deferred = 0.0
        #: Whether the step has called :meth:`checkpoint`.
        self.checkpointing = False
        self._next_checkpoint = 0.0

    # -- reading -----------------------------------------------------------------------------

    def committed(self, name: str) -> str | None:
        """A field as of the last commit (or the last checkpoint or live report committed)."""
        return self._committed.get(name)

    def value(self, name: str) -> str | None:
        """A field as this step leaves it: what it set, else the committed value."""
        with self._lock:
            for report in (self._pending, self._ready):
                if name in report.set:
                    return report.set[name]
        return self._committed.get(name)

    def count(self, name: str) -> int:
        """A counter, this step's increments included."""
        with self._lock:
            mine = self._ready.incr.get(name, 0) + self._pending.incr.get(name, 0)
            return as_int(self._committed.get(name)) + mine

    # -- recording ---------------------------------------------------------------------------

    def incr(self, name: str, n: int) -> None:
        with self._lock:
            self._pending.incr[name] = self._pending.incr.get(name, 0) + n

    def set(self, name: str, value: Any) -> None:
        with self._lock:
            self._pending.set[name] = "" if value is None else str(value)

    def add_message(self, text: str) -> None:
        with self._lock:
            self._pending.messages.append(text)

    def add_result(self, item_id: str, result_json: str) -> None:
        with self._lock:
            self._pending.results.append([item_id, result_json])

    def add_error(self, item_id: str, message: str) -> None:
        with self._lock:
            self._pending.errors.append([item_id, message])

    def add_undo_errors(self, failed: list[list[str]]) -> None:
        with self._lock:
            self._pending.undo_errors.extend(failed)

    def end(self, status: Status, error: str | None = None) -> None:
        """Say that the job ends with ``status`` after this step."""
        self.ending = status
        if error is not None:
            self.set(F.ERROR, error)

    def defer(self, seconds: float) -> None:
        self.deferred = max(self.deferred, seconds)

    def checkpoint(self, data: dict[str, Any]) -> None:
        """Mark what was reported so far (and ``data``) as a consistent state to commit. From the
        first checkpoint on, only checkpoints are committed while the step runs (a one-shot
        job's live progress too), so that a step resumed from one neither skips nor repeats.

        Calls closer than :data:`CHECKPOINT_GAP` to the last one that counted are skipped (an
        item job checkpoints after every id: thousands a second)."""
        self.checkpointing = True
        now = time.monotonic()
        if now < self._next_checkpoint:
            return
        self._next_checkpoint = now + CHECKPOINT_GAP
        data_json = json.dumps(data, default=str)
        with self._lock:
            self._ready.absorb(self._pending)
            self._pending = _Report()
            if data_json != self._data_before:
                self._ready.set[F.DATA] = data_json
                self._data_before = data_json

    # -- handing over ------------------------------------------------------------------------

    def drain_live(self, *, everything: bool = False) -> tuple[int, dict[str, Any]] | None:
        """Take what is ready to commit before the step ends (with ``everything``, all that was
        reported: a one-shot job's live progress), as a numbered payload for RENEW; it counts as
        committed from now on. A payload not yet :meth:`confirm`-ed is returned again until it
        is. None if there is nothing."""
        with self._lock:
            if self._unconfirmed is not None:
                return self._unconfirmed
            if everything and not self.checkpointing:
                self._ready.absorb(self._pending)
                self._pending = _Report()
            ready, self._ready = self._ready, _Report()
            if not ready:
                return None
            for name, n in ready.incr.items():
                self._committed[name] = str(as_int(self._committed.get(name)) + n)
            self._committed.update(ready.set)
            self._numbered += 1
            self._unconfirmed = (self._numbered, {**ready.payload(), "checkpoint": self._numbered})
            return self._unconfirmed

    def confirm(self, number: int) -> None:
        """RENEW applied checkpoint ``number``."""
        with self._lock:
            if self._unconfirmed is not None and self._unconfirmed[0] == number:
                self._unconfirmed = None

    def payload(self, data: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
        """The buffer as COMMIT applies it: counters, fields (``data`` if it changed, then the
        engine's ``updates``), results, errors and messages of this step."""
        data_json = json.dumps(data, default=str)
        with self._lock:
            report = _Report()
            report.absorb(self._ready)
            report.absorb(self._pending)
            if data_json != self._data_before:
                report.set[F.DATA] = data_json
            for key, value in updates.items():
                report.set[key] = "" if value is None else str(value)
            payload = report.payload()
            if self._unconfirmed is not None:
                payload["unconfirmed"] = self._unconfirmed[1]
            # COMMIT refuses the step if the job lacks a checkpoint it applied (a Redis restart
            # lost it): what this buffer holds would then not add up.
            payload["checkpoints"] = self._numbered
            return payload


class LeaseView:
    """What the heartbeat last learned about a running step: the job's status and pending
    signal, and whether the lease was lost to another worker. Written by the heartbeat thread,
    read by the step's."""

    def __init__(self, status: str, signal: str) -> None:
        self.status = status
        self.signal = signal
        self.lost = False

    def saw(self, status: str, signal: str) -> None:
        self.status, self.signal = status, signal

    def mark_lost(self) -> None:
        self.lost = True


class Job:
    """One job, as its handler sees it during one step.

    Nothing here does I/O. Everything reported is buffered (:attr:`buffer`) and committed when the
    step returns; a step that is cut off before its commit leaves no trace in the counters.

    :param fields: the job hash as the step claimed it.
    :param items: the ids this step works on (item jobs; newest first while undoing).
    :param bad_flags: while undoing, which of ``items`` ended bad.
    :param files_dir: ``BATCHFLOW_FILES_DIR``.
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        *,
        items: list[str] | None = None,
        bad_flags: list[bool] | None = None,
        files_dir: str = "",
    ) -> None:
        #: The step's report, committed when it returns.
        self.buffer = StepBuffer(fields)
        #: What the heartbeat learns while the step runs.
        self.lease = LeaseView(fields.get(F.STATUS, ""), fields.get(F.SIGNAL, ""))
        #: The job's id: unguessable, URL-safe.
        self.id: str = fields[F.ID]
        #: The registered name of the job's handler.
        self.handler: str = fields[F.HANDLER]
        #: Who started the job (the identity hook's answer when it was started).
        self.owner: str = fields.get(F.OWNER, "")
        #: The parameters the job was started with, as validated by the handler.
        self.params: dict[str, Any] = as_json(fields.get(F.PARAMS), {})
        #: Data that persists between steps. Change it freely; it is committed with the step.
        self.data: dict[str, Any] = as_json(fields.get(F.DATA), {})
        #: This step's position in the job's chain; each commit moves it on by one.
        self.seq: int = as_int(fields.get(F.SEQ))
        #: How many times this step has been claimed: more than 1 after a worker was lost.
        self.attempt: int = as_int(fields.get(F.ATTEMPTS), 1)
        #: The folder (``BATCHFLOW_FILES_DIR``) where a FileJob keeps its output.
        self.files_dir = files_dir
        #: The ids this step works on (item jobs; newest first while undoing).
        self.items: list[str] = items or []
        self._bad_flags = bad_flags or []
        self._stop_seen = False

    # -- what the job knows ----------------------------------------------------------------

    @property
    def status(self) -> Status:
        """The status when this step was claimed (or, while a one-shot job runs, last seen)."""
        return Status(self.lease.status or Status.PENDING.value)

    @property
    def total(self) -> int | None:
        """The number of units the job expects, or None while it is unknown."""
        raw = self.buffer.value(F.TOTAL)
        return as_int(raw) if raw else None

    @property
    def units_processed(self) -> int:
        """Units processed so far, this step's included."""
        return self.buffer.count(F.PROCESSED)

    @property
    def good_count(self) -> int:
        return self.buffer.count(F.GOOD)

    @property
    def bad_count(self) -> int:
        return self.buffer.count(F.BAD)

    @property
    def undo_position(self) -> int:
        """While undoing: how many of the processed items are still to be undone."""
        return self.buffer.count(F.UNDO_CURSOR)

    def item_was_bad(self, index: int) -> bool:
        """While undoing: whether ``self.items[index]`` ended bad (so there is nothing to undo)."""
        return index < len(self._bad_flags) and self._bad_flags[index]

    @property
    def lease_lost(self) -> bool:
        """True once another worker has taken this step over (this one was frozen, or cut off
        from Redis, for longer than its lease): change nothing more and return."""
        return self.lease.lost

    # -- what a handler reports ------------------------------------------------------------

    def _add(self, name: str, n: int) -> None:
        if n < 0:
            raise ValueError(f"{name} counts only go up; got {n}.")
        self.buffer.incr(name, n)

    def set_total(self, total: int | None) -> None:
        """Say how many units the job will process; None makes the bar indeterminate."""
        if total is not None and total < 0:
            raise ValueError("A job's total cannot be negative.")
        self.buffer.set(F.TOTAL, "" if total is None else str(int(total)))

    def mark_processed(self, n: int = 1) -> None:
        """Count ``n`` more units as processed."""
        self._add(F.PROCESSED, n)

    def good(self, n: int = 1) -> None:
        """Count ``n`` units as done well; also counts them processed."""
        self._add(F.GOOD, n)
        self._add(F.PROCESSED, n)

    def bad(self, n: int = 1) -> None:
        """Count ``n`` units as failed; also counts them processed."""
        self._add(F.BAD, n)
        self._add(F.PROCESSED, n)

    def add_message(self, text: str) -> None:
        """Show a line of text on the progress page (it is always shown as text, never HTML)."""
        self.buffer.add_message(str(text))

    def record_result(self, item_id: str, result: Any) -> None:
        """Keep ``result`` (JSON-serialisable) as the outcome of ``item_id``."""
        self.buffer.add_result(str(item_id), json.dumps(result, default=str))

    def record_error(self, item_id: str, message: str) -> None:
        """Record why ``item_id`` failed; it is listed in the job's error report as written."""
        self.buffer.add_error(str(item_id), str(message))

    def record_undone(self, passed: int, undone: int, failed: list[list[str]]) -> None:
        """While undoing: ``passed`` ids were gone through, ``undone`` of them reversed, and
        ``failed`` (``[id, message]`` pairs) could not be."""
        self.buffer.incr(F.UNDO_CURSOR, -passed)
        self.buffer.incr(F.UNDONE, undone)
        self.buffer.incr(F.UNDO_FAILED, len(failed))
        self.buffer.add_undo_errors(failed)

    def set_results(self, results: Any) -> None:
        """The results of the whole job, shown when it ends."""
        self.buffer.set(F.RESULTS, json.dumps(results, default=str))

    def respond(self, data: dict[str, Any]) -> None:
        """Data for the page, shown as ``response`` in the status JSON (see StepResponse)."""
        self.buffer.set(F.RESPONSE, json.dumps(data, default=str))

    def checkpoint(self) -> None:
        """Say that what this step reported so far is a consistent state (every unit reported
        is done, every unit done is reported, ``job.data`` matches). The heartbeat commits it
        every ``BATCHFLOW_CHECKPOINT_INTERVAL`` while the step goes on, so that a step run again
        after its worker died resumes from there instead of repeating the whole step.
        ``ItemsJob`` calls it after every id; a handler of another kind may call it between
        units. A ``TaskJob`` that checkpoints (keeping where it is in ``job.data``) is resumed
        from its last checkpoint after its worker died, instead of starting again from scratch;
        from its first checkpoint on, its live progress is sent at checkpoints only."""
        self.buffer.checkpoint(self.data)

    def complete(self, message: str | None = None) -> None:
        """End the job successfully after this step (while undoing: the undo is finished)."""
        if message:
            self.add_message(message)
        self.buffer.end(Status.COMPLETED)

    def fail(self, message: str) -> None:
        """End the job as failed after this step, with ``message`` shown to the user as written
        (like a :class:`~batchflow.UserError`'s)."""
        self.buffer.end(Status.FAILED, str(message) or "The job failed.")

    def defer(self, seconds: float) -> None:
        """Wait ``seconds`` before the next step runs, without holding a worker (throttling)."""
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError("defer() takes a finite number of seconds >= 0.")
        self.buffer.defer(float(seconds))

    def stop_requested(self) -> bool:
        """Whether a user asked to stop or cancel. One-shot jobs check it while they run; a
        one-shot job that saw True ends stopped (or canceled) when ``run`` returns.

        Also True once this worker has lost the job's lease (see :attr:`lease_lost`): returning
        then keeps two copies of the job from running at once.
        """
        if self.lease.lost or self.lease.status in (Status.STOPPING, Status.CANCELING):
            self._stop_seen = True
        return self._stop_seen

    def cancel_requested(self) -> bool:
        """Whether a user asked to cancel: a one-shot job that allows it must undo its work."""
        return self.lease.status == Status.CANCELING.value

    @property
    def stop_seen(self) -> bool:
        """Whether :meth:`stop_requested` answered True during this step."""
        return self._stop_seen

    @property
    def ended(self) -> bool:
        """Whether this step has said the job (or its undo) is finished."""
        return self.buffer.ending is not None

    # -- a FileJob's file ----------------------------------------------------------------------

    @property
    def committed_file_size(self) -> int:
        """Bytes of the job's file as of the last commit: where this step's writing starts."""
        return as_int(self.buffer.committed(F.FILE_SIZE))

    @property
    def file_size(self) -> int:
        """Bytes of the job's file, this step's writing included."""
        return as_int(self.buffer.value(F.FILE_SIZE))

    @property
    def file_path(self) -> str | None:
        """Where the job's file is, once recorded."""
        return self.buffer.value(F.FILE_PATH) or None

    def record_file(
        self, path: str, *, size: int, name: str | None = None, content_type: str | None = None
    ) -> None:
        """Record the job's file (committed with the step): its path, its length now, and the
        name and type it is downloaded with."""
        self.buffer.set(F.FILE_PATH, path)
        self.buffer.set(F.FILE_SIZE, str(size))
        if name is not None:
            self.buffer.set(F.FILE_NAME, name)
        if content_type is not None:
            self.buffer.set(F.FILE_TYPE, content_type)
