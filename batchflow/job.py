"""The job as its handler sees it during one step.

Three small objects, each with one concern:

- :class:`Job`: the handler's API. Identity, parameters, counters, and the verbs a handler reports
  with (``good``, ``bad``, ``add_message``, ``complete``...).
- :class:`~batchflow.buffer.StepBuffer` (in its own module): what the step has reported so far,
  over the state committed before it.
- :class:`LeaseView`: what the heartbeat thread learns about the step's lease while the handler
  runs (the job's status now, whether another worker took the step over). Shared between the
  step's thread and the heartbeat's.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from .buffer import StepBuffer
from .i18n import N_, Message, stored
from .schema import F, Status, as_int, as_json
from .sources import Entry

#: ``load_user(owner) -> user or None``: the app's user loader (``BatchFlow(load_user=...)``).
#: The most of ``error_detail`` kept (the latest text wins).
DETAIL_LIMIT = 4000
UserLoader = Callable[[str], Any] | None
#: :attr:`Job.user` before its first use in a step.
_NOT_LOADED = object()


@dataclasses.dataclass
class StepResponse:
    """What a step may return besides reporting on the job.

    :param message: a line for the progress page; same as ``job.add_message(message)``.
    :param data: extra data for the page, shown as ``response`` in the status JSON (for example a
        URL the step produced). It replaces the previous step's response data.
    """

    message: str | None = None
    data: dict[str, Any] | None = None


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
    :param load_user: ``load_user(owner) -> user or None``: the app's user loader, which
        :attr:`user` calls (``BatchFlow(load_user=...)``).
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        *,
        items: list[str] | None = None,
        bad_flags: list[bool] | None = None,
        files_dir: str = "",
        load_user: UserLoader = None,
        lane: int = 0,
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
        #: The lane this step walks, for a job in lanes (0: the job's own chain; see lanes.py).
        #: A lane's step sees its lane's position and size as ``processed`` and ``total``.
        self.lane = lane
        #: How many times this step has been claimed: more than 1 after a worker was lost.
        self.attempt: int = as_int(fields.get(F.ATTEMPTS), 1)
        #: The folder (``BATCHFLOW_FILES_DIR``) where a FileJob keeps its output.
        self.files_dir = files_dir
        self._items: list[str] | None = items or []
        #: The entries this step works on: the items of an item job (an id, or what its source
        #: produced: a row, a CSV row's columns), or a file job's source's next rows.
        self.entries: list[Entry] = [Entry(item, item, None) for item in items or ()]
        #: Whether this step's entries are the last of the job's work.
        self.last_slice = False
        self._bad_flags = bad_flags or []
        self._load_user = load_user
        self._user: Any = _NOT_LOADED
        self._stop_seen = False
        self._walking = False
        self._keep_ids = False

    # -- what the job knows ----------------------------------------------------------------

    @property
    def items(self) -> list[str]:
        """The ids this step works on (item jobs; newest first while undoing)."""
        if self._items is None:
            self._items = [entry.id for entry in self.entries]
        return self._items

    @property
    def user(self) -> Any:
        """The job's owner as the app's user object, loaded on first use in each step (by
        ``BatchFlow(load_user=...)``; by default, with Flask-Login, its ``user_loader`` for an
        owner who was signed in and its anonymous user for one who was not). None without a
        loader (no Flask-Login, or an engine used on its own), or when the loader finds nobody.
        """
        if self._user is _NOT_LOADED:
            self._user = self._load_user(self.owner) if self._load_user else None
        return self._user

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

    def load_entries(
        self, entries: list[Entry], *, last: bool, walking: bool = False, keep_ids: bool = False
    ) -> None:
        """Give the step its entries (the step runner does, before ``continue_job``).

        :param last: nothing comes after them.
        :param walking: they come from the job's source, walked by a cursor that
            :meth:`advance` moves on.
        :param keep_ids: keep the ids walked (in the job's items list), so Cancel can undo them.
        """
        self.entries = entries
        self._items = None  # their ids, when asked
        self.last_slice = last
        self._walking = walking
        self._keep_ids = walking and keep_ids

    def advance(self, *entries: Entry) -> None:
        """Say that the outcomes of ``entries`` (in walk order) are reported: a source's cursor
        moves past the last, committed with those outcomes (call :meth:`checkpoint` after it to
        make the pair a consistent state)."""
        if self._walking and entries:
            self.buffer.set(F.CURSOR, json.dumps(entries[-1].cursor))
            if self._keep_ids:
                self.buffer.add_walked([entry.id for entry in entries])

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

    def add_message(self, text: str | Message) -> None:
        """Show a line of text on the progress page (it is always shown as text, never HTML). A
        :class:`~batchflow.Message` is shown in each reader's language."""
        self.buffer.add_message(stored(text))

    def record_result(self, item_id: str, result: Any) -> None:
        """Keep ``result`` (JSON-serialisable) as the outcome of ``item_id``."""
        self.buffer.add_result(str(item_id), json.dumps(result, default=str))

    def record_error(self, item_id: str, message: str | Message) -> None:
        """Record why ``item_id`` failed; it is listed in the job's error report as written (a
        :class:`~batchflow.Message` in each reader's language)."""
        self.buffer.add_error(str(item_id), stored(message))

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

    def fail(self, message: str | Message) -> None:
        """End the job as failed after this step, with ``message`` shown to the user as written
        (like a :class:`~batchflow.UserError`'s; a :class:`~batchflow.Message` in each reader's
        language)."""
        self.buffer.end(Status.FAILED, stored(message) or N_("The job failed."))

    def keep_error_detail(self, detail: str | None) -> None:
        """Add a failure's real text to the admin-only ``error_detail`` (its last
        :data:`DETAIL_LIMIT` characters are kept; the log has everything)."""
        if detail:
            before = self.buffer.value(F.ERROR_DETAIL) or ""
            joined = f"{before}\n{detail}" if before else detail
            self.buffer.set(F.ERROR_DETAIL, joined[-DETAIL_LIMIT:])

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
