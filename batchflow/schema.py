"""The job's vocabulary, owned here and nowhere else: the fields of the job hash, the statuses,
the signals a user sends, the phases of a job and the codes the Lua scripts answer with.

The Lua scripts (:mod:`batchflow.scripts`) get the terminal statuses from :data:`LUA_TERMINAL`,
built from :class:`Status`; a test checks that every field name the scripts use is one of
:class:`F`'s.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Mapping
from typing import Any


class Status(str, enum.Enum):
    """Where a job is in its life.

    Allowed transitions::

        pending   -> running                      (a worker claimed the first step)
        running   -> completed | failed           (the handler said so, or raised)
        pending   -> stopping | canceling         (asked before the first step ran)
        running   -> stopping  -> stopped         (Stop: the work done is kept)
        running   -> canceling -> canceled        (Cancel: the work done is undone, newest first)
        running   -> paused    -> running         (Pause / Resume, between steps)
        paused    -> stopping | canceling
        running   -> awaiting_confirmation -> running | canceling
                                                  (a preview: Confirm, or Cancel or expiry)
        stopped   -> running                      (Continue: the same job goes on)

    ``completed``, ``failed``, ``stopped`` and ``canceled`` are terminal.
    """

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    AWAITING = "awaiting_confirmation"  # assessed; waits for Confirm, holding no worker
    STOPPING = "stopping"
    CANCELING = "canceling"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.STOPPED, Status.CANCELED)


#: The statuses a job ends in.
TERMINAL = frozenset(s for s in Status if s.terminal)


def is_terminal(status: str | None) -> bool:
    """Whether a stored status is one a job ends in."""
    return status in _TERMINAL_VALUES


_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
#: The statuses in which a job needs a worker: its step runs, or waits in the queue for one.
WAITING_STATUSES = frozenset(
    s.value for s in (Status.PENDING, Status.RUNNING, Status.STOPPING, Status.CANCELING)
)
#: The same set as a Lua table constructor, for the scripts: ``TERMINAL[status]`` is true.
LUA_TERMINAL = "{" + ", ".join(f"{s.value} = true" for s in sorted(TERMINAL)) + "}"


class Signal(str, enum.Enum):
    """What a user (or a script) may ask of a running job; recorded in Redis, answered between
    steps by whichever worker runs the job next."""

    STOP = "stop"
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    CONTINUE = "continue"  # a stopped job goes on (REOPEN, not SIGNAL)
    CONFIRM = "confirm"  # an assessed job runs (REOPEN, not SIGNAL)

    @property
    def capability(self) -> str:
        """The handler capability that allows it (resume needs pause)."""
        return "pause" if self is Signal.RESUME else self.value


class Phase(str, enum.Enum):
    """Which handler method the next step calls."""

    CREATE = "create"  # create_job (and items() for an item job that makes its own ids)
    ASSESS = "assess"  # a preview: what would change (assess_job), before a Confirm
    RUN = "run"  # continue_job
    UNDO = "undo"  # undo_job, after a cancel


class Kind(str, enum.Enum):
    """The kind of a handler class, stored with each job (it decides how steps are cut)."""

    HANDLER = "handler"  # Handler: create_job / continue_job
    FILE = "file"  # FileJob: a file to download
    ITEMS = "items"  # ItemsJob: one change per id, ids stored with the job
    TASK = "task"  # TaskJob: one call, live progress


class ClaimCode(str, enum.Enum):
    """CLAIM's answer: whether this delivery of a step may run."""

    OK = "ok"
    MISSING = "missing"  # no such job (expired, or never was)
    TERMINAL = "terminal"  # the job has ended
    STALE = "stale"  # the job's seq moved on: a duplicate or old delivery
    BUSY = "busy"  # a live lease is held by another delivery of this step
    PAUSED = "paused"  # the job is paused; resume enqueues the step again


class SignalCode(str, enum.Enum):
    """SIGNAL's answer to a stop, cancel, pause or resume (and REOPEN's, to a continue)."""

    OK = "ok"  # recorded; the step in flight (or the next) answers it
    ENQUEUE = "enqueue"  # recorded; no step is in flight, so the caller enqueues one
    SAME = "same"  # already so
    MISSING = "missing"
    TERMINAL = "terminal"  # the job has ended
    REFUSED = "refused"  # not allowed in this status
    ENDING = "ending"  # a cancel after the step in flight began to end the job: too late
    CLEANED = "cleaned"  # (continue) the stopped job's output was already cleaned up


class AdmitCode(str, enum.Enum):
    """ADMIT's answer to a new job (see :mod:`batchflow.admission`)."""

    OK = "ok"  # admitted: its place is taken, create the job
    SAME = "same"  # an identical job of the owner's is still active: that one is the answer
    FULL = "full"  # the owner has as many active jobs as the limit allows


class F:
    """The fields of the job hash (``prefix:{job_id}:job``); every value is a string."""

    # Identity and what the job is.
    ID = "id"
    HANDLER = "handler"
    KIND = "kind"
    OWNER = "owner"
    PARAMS = "params"  # JSON, as validated
    SENSITIVE = "sensitive"  # JSON list of parameter names to mask
    LABELS = "labels"  # JSON: the texts the job shows
    CAPS = "caps"  # comma-separated capabilities: stop, cancel, pause, retry, continue
    REDIRECT_URL = "redirect_url"
    RETRY_OF = "retry_of"  # the job whose failed ids this job retries
    # Where it is.
    STATUS = "status"
    SIGNAL = "signal"  # "pause" while a pause is asked but not yet answered
    PHASE = "phase"
    DATA = "data"  # JSON: the handler's job.data
    ITEMS_SOURCE = "items_source"  # "request", "handler", "source" or "" (see ItemsSource)
    CURSOR = "cursor"  # JSON: a source's position after the last entry committed
    SOURCE_PLAN = "source_plan"  # JSON: what the source fixed when the job was created
    # Counters.
    TOTAL = "total"  # "" while unknown
    PROCESSED = "processed"
    GOOD = "good"
    BAD = "bad"
    SKIPPED = "skipped"
    UNDONE = "undone"
    UNDO_FAILED = "undo_failed"
    UNDO_CURSOR = "undo_cursor"  # while undoing: how many processed items are left to undo
    # The step protocol.
    SEQ = "seq"  # the step due next; each commit moves it on by one
    EVENTS = "events"  # how many events the job has published: a follower that skips one re-reads
    ATTEMPTS = "attempts"  # claims of the current step
    RECOVERIES = "recoveries"  # steps whose worker was lost
    CAREFUL_UNTIL = "careful_until"  # after a lost step, go one unit at a time up to here
    LEASE_OWNER = "lease_owner"  # the worker holding the current step, "" when none
    LEASE_UNTIL = "lease_until"  # ms: lease expiry, or the deadline for the next claim
    COMMITTED_BY = "committed_by"  # "<seq> <worker>" of the last commit: a replay is known
    BATCH_SIZE = "batch_size"
    ENDING = "ending"  # the seq of the step that began to end the job (a cancel is too late)
    STALLED = "stalled"  # "1": failed because its worker kept dying
    RESTARTED = "restarted"  # "1": a one-shot job started again after its worker was lost
    CLEANED = "cleaned"  # "1": cleanup_job ran
    CHECKPOINTS = "checkpoints"  # the number of the last checkpoint applied (RENEW, COMMIT)
    # A job in lanes (see lanes.py): how many, and how many have not ended; each lane's own step
    # fields live in the job's lanes hash as "<lane>:<field>", with these three of its own.
    LANES = "lanes"  # "" or 0 or 1: one chain of steps
    LANES_OPEN = "lanes_open"
    LANE_START = "lane_start"  # the index of the lane's first id in the job's ids
    LANE_SIZE = "lane_size"  # how many ids the lane walks (its step sees it as the total)
    LANE_STATE = "lane_state"  # "" while it runs, else the ending it reached
    # What the job shows.
    MESSAGE = "message"  # the latest message
    ERROR = "error"  # for everyone: a UserError's text, or a generic sentence with a reference
    ERROR_DETAIL = "error_detail"  # admins only: the real messages behind those references
    RESULTS = "results"  # JSON: set_results()
    RESPONSE = "response"  # JSON: a step's StepResponse data
    FILE_PATH = "file_path"
    FILE_NAME = "file_name"
    FILE_TYPE = "file_type"
    FILE_SIZE = "file_size"  # bytes written as of the last commit
    UPLOAD_NAME = "upload_name"  # an import job's upload, as the person's computer named it
    ASSESSMENT = "assessment"  # JSON: what a preview found (see steps.py), shown until confirmed
    # Notifications of the job's ending (see notify.py).
    NOTIFY_EMAIL = "notify_email"  # "1": the owner asked to be emailed when the job ends
    LOCALE = "locale"  # the starter's locale: the language of the job's notifications
    NOTIFY_DUE = "notify_due"  # ms: the ending's notifications are pending, due from then
    NOTIFIED = "notified"  # JSON: how each channel's delivery of the ending went
    SEEN = "seen"  # the seq of the ending its owner has seen (opened its page, dismissed it)
    # Times (seconds since the epoch).
    CREATED_AT = "created_at"
    STARTED_AT = "started_at"
    FINISHED_AT = "finished_at"
    UPDATED_AT = "updated_at"

    @classmethod
    def names(cls) -> frozenset[str]:
        """Every field name."""
        return frozenset(v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str))


#: Counters that only go up by a step's increments.
COUNTERS = (F.PROCESSED, F.GOOD, F.BAD, F.SKIPPED, F.UNDONE, F.UNDO_FAILED, F.UNDO_CURSOR)


def initial_fields(
    *,
    job_id: str,
    handler: str,
    kind: Kind,
    owner: str,
    params_json: str,
    labels: Mapping[str, str],
    capabilities: list[str],
    sensitive: tuple[str, ...] | list[str],
    total: int | None,
    items_source: str,
    batch_size: int,
    first_deadline_ms: int,
    redirect_url: str | None,
    now: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The hash of a new job, as :meth:`Store.create` writes it: every field a step reads."""
    now = time.time() if now is None else now
    fields: dict[str, Any] = {
        F.ID: job_id,
        F.HANDLER: handler,
        F.KIND: kind.value,
        F.OWNER: owner,
        F.STATUS: Status.PENDING.value,
        F.SIGNAL: "",
        F.PHASE: Phase.CREATE.value,
        F.PARAMS: params_json,
        F.DATA: "{}",
        F.LABELS: json.dumps(dict(labels)),
        F.CAPS: ",".join(capabilities),
        F.SENSITIVE: json.dumps(list(sensitive)),
        F.TOTAL: "" if total is None else total,
        **{name: 0 for name in COUNTERS},
        F.SEQ: 0,
        F.ATTEMPTS: 0,
        F.RECOVERIES: 0,
        F.CAREFUL_UNTIL: 0,
        F.CHECKPOINTS: 0,
        F.LEASE_OWNER: "",
        F.LEASE_UNTIL: first_deadline_ms,
        F.BATCH_SIZE: batch_size,
        F.ITEMS_SOURCE: items_source,
        F.REDIRECT_URL: redirect_url or "",
        F.CREATED_AT: now,
        F.UPDATED_AT: now,
    }
    for key, value in (extra or {}).items():
        if key not in F.names():
            raise ValueError(f"{key!r} is not a field of the job hash.")
        fields.setdefault(key, value)
    return fields


def ms(seconds: float) -> int:
    """Seconds as the whole milliseconds the scripts compare."""
    return int(seconds * 1000)


def as_int(value: str | None, default: int = 0) -> int:
    """A counter field as stored (``""`` or missing is ``default``)."""
    try:
        return int(float(value)) if value not in (None, "") else default
    except ValueError:
        return default


def as_float(value: str | None) -> float | None:
    """A time field as stored, or None."""
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def as_json(value: str | None, default: Any) -> Any:
    """A JSON field as stored, or ``default`` when empty or malformed."""
    if not value:
        return default
    try:
        return json.loads(value)
    except ValueError:
        return default


def flat_pairs(flat: list[Any]) -> dict[str, str]:
    """A hash as Redis and the scripts return it, ``[k1, v1, k2, v2...]``, as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def lane_records(flat: Mapping[str, str]) -> dict[int, dict[str, str]]:
    """A job's lanes hash (fields ``<lane>:<field>``) as ``{lane: {field: value}}``."""
    lanes: dict[int, dict[str, str]] = {}
    for name, value in flat.items():
        lane, _, field = name.partition(":")
        lanes.setdefault(int(lane), {})[field] = value
    return lanes
