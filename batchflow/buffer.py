"""What a step reports, kept apart from the state committed before it (see :class:`StepBuffer`).

The engine commits the buffer atomically when the step returns, so a step that is cut off and
run again never counts twice; the heartbeat commits its checkpoints while the step runs.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from .schema import F, Status, as_int

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
    walked: list[str] = dataclasses.field(default_factory=list)  # a source's ids, kept for undo

    def __bool__(self) -> bool:
        return bool(
            self.incr
            or self.set
            or self.messages
            or self.results
            or self.errors
            or self.undo_errors
            or self.walked
        )

    def absorb(self, other: _Report) -> None:
        for name, n in other.incr.items():
            self.incr[name] = self.incr.get(name, 0) + n
        self.set.update(other.set)
        self.messages += other.messages
        self.results += other.results
        self.errors += other.errors
        self.undo_errors += other.undo_errors
        self.walked += other.walked

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

    def add_walked(self, item_ids: list[str]) -> None:
        with self._lock:
            self._pending.walked.extend(item_ids)

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
