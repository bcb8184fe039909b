"""The step runner, the heart of batchflow: claim a step, run the handler, commit the step's
buffer, enqueue the next step.

Guarantees, as users meet them:

- A step carries ``(job_id, seq)``. Only the delivery whose ``seq`` matches the job's, with no live
  lease held, runs; a duplicate or stale delivery does nothing. Steps are at-least-once, commits
  exactly-once: counters never double-count.
- A step whose worker dies is run again after its lease expires (maintenance re-enqueues it). Only
  the step cut off may repeat its side effects; a FileJob writes from the committed length at
  fixed offsets, so rows land exactly once.
- A step that keeps killing its worker is not retried forever: after a lost step, the rest of its
  slice runs one unit per step, so the unit that kills is met alone; after
  ``BATCHFLOW_MAX_ATTEMPTS`` tries an item job records that item as bad and goes on, any other job
  fails as *stalled*.
- A worker that lost its lease while still alive (frozen, or cut off from Redis for longer than the
  lease) cannot commit; as soon as its heartbeat learns it, an item job stops changing ids and a
  one-shot job's ``stop_requested()`` turns True, so two copies do not run on.
- Stop, cancel and pause are answered between steps, by whichever worker claims the next step. A
  cancel that arrives while the last step ends the job wins if that step has not run its callbacks
  yet (the work is undone); after that it is refused: callbacks run for the job's real ending only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from .config import Settings
from .exceptions import Unavailable, UnknownHandler
from .failures import Failure, describe_failure
from .handlers import Handler, StepResult, preview_ended
from .heartbeat import Heartbeat, worker_id
from .i18n import N_, Message, stored
from .job import Job, StepResponse, UserLoader
from .lanes import LanePlan, coordinate
from .logs import name_handler
from .meter import step_figures
from .notify import Notifier
from .records import Committed
from .registry import HandlerSpec, Registry
from .schema import ClaimCode, F, Kind, Phase, Status, as_int, is_terminal, ms
from .store import Store
from .work import feed, plan_work, settle_total

log = logging.getLogger("batchflow")

#: Endings that a cancel arriving during the ending step turns into an undo (see COMMIT).
CANCELABLE_ENDINGS = (Status.COMPLETED, Status.STOPPED)
#: How much longer than the TTL a terminal job's keys live, so maintenance can clean up first.
CLEANUP_GRACE = 3600
#: How many times larger the next step may be than one far under the step target: a job of fast
#: units reaches its step size in a few steps (from 10 units to 10,000 in five), while a unit that
#: is slow after all costs at most a few times the target.
GROWTH = 4
#: Seconds before a commit Redis did not answer is sent again, doubling up to the maximum.
COMMIT_RETRY_FIRST, COMMIT_RETRY_MAX = 0.25, 2.0


class Dispatcher(Protocol):
    """How the engine reaches workers; the Celery layer provides it (tests provide their own)."""

    def enqueue_step(
        self, job_id: str, seq: int, countdown: float = 0.0, lane: int = 0
    ) -> None: ...

    def enqueue_cleanup(self, job_id: str) -> None: ...

    def enqueue_notify(self, job_id: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    """What one delivery of a step did: either it did not run (``refused`` says why), or it ran
    and its commit was refused because another worker holds the step now (``lost``), or it ran
    and committed, leaving the job in ``status``. ``handler`` names the job's handler when the
    step ran."""

    refused: ClaimCode | None = None
    lost: bool = False
    status: Status | None = None
    handler: str | None = None

    @property
    def committed(self) -> bool:
        return self.status is not None

    def __str__(self) -> str:
        """One word for logs: the claim's refusal, ``lost``, or the status after the commit."""
        if self.refused is not None:
            return self.refused.value
        return "lost" if self.lost or self.status is None else self.status.value


def _careful(job: Job) -> bool:
    """Whether the step is inside the slice of a lost step (CLAIM sets ``careful_until``)."""
    b = job.buffer
    return int(b.committed(F.CAREFUL_UNTIL) or 0) > int(b.committed(F.PROCESSED) or 0)


class StepRunner:
    """Runs one step of a job, from claim to commit.

    :param settings: deployment settings.
    :param store: job state.
    :param registry: the handlers jobs name.
    :param dispatcher: returns the dispatcher that enqueues the next step.
    :param notifier: tells the owner when a job ends.
    :param load_user: the app's user loader, for ``job.user``.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        dispatcher: Callable[[], Dispatcher],
        notifier: Notifier,
        load_user: UserLoader = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.dispatcher = dispatcher
        self.notifier = notifier
        self.load_user = load_user
        self.heartbeat = Heartbeat(store, settings.lease_seconds, settings.worker_ttl)

    def run(self, job_id: str, seq: int, lane: int = 0, due: float | None = None) -> StepOutcome:
        """Run step ``seq`` of a job (a valid id) or of one of its lanes, if it is still due
        (since ``due``, when its message says: its wait in the queue counts from then). Never
        raises for a handler's error: the job fails, showing a UserError's text or a generic
        message with a reference; the real message and traceback go to the log under that
        reference, and to the job's admin-only ``error_detail``."""
        s = self.settings
        worker = worker_id()
        claimed = time.time()
        claim = self.store.claim(job_id, seq, worker, ms(claimed), ms(s.lease_seconds), lane)
        if claim.code is not ClaimCode.OK:
            log.debug("step %s/%s/%s not run: %s", job_id, lane, seq, claim.code.value)
            return StepOutcome(refused=claim.code)
        fields = claim.fields
        phase = fields.get(F.PHASE)
        live = fields.get(F.KIND) == Kind.TASK and phase == Phase.RUN
        job = Job(
            fields,
            items=claim.ids,
            bad_flags=claim.bad_flags,
            files_dir=s.files_dir,
            load_user=self.load_user,
            lane=lane,
        )
        name_handler(job.handler)
        started = time.monotonic()
        interval = s.progress_interval if live else s.checkpoint_interval
        spec = self.registry.find(job.handler)
        # Read before the heartbeat commits checkpoints (they move `processed` on).
        batch = self._batch(job)
        plan, coordinating = LanePlan(), lane == 0 and _coordinating(fields)
        with self.heartbeat.watch(job, worker, interval, live=live):
            if spec is not None and coordinating:
                plan, updates = self._coordinate(spec, job)
            else:
                updates = self._advance(spec, job, batch)
        if spec is not None and not job.ended and not coordinating:
            job.defer(spec.handler_class.step_delay)
            if phase != Phase.CREATE:
                elapsed = time.monotonic() - started
                updates[F.BATCH_SIZE] = self._next_batch(spec, batch, elapsed)
        now = time.time()
        if is_terminal(updates.get(F.STATUS)):  # its notifications are pending from the commit on
            updates[F.NOTIFY_DUE] = self.notifier.due_ms(now)
        deferred = job.buffer.deferred
        # A preview waits for its Confirm until the deadline; then maintenance discards it.
        awaiting = updates.get(F.STATUS) == Status.AWAITING
        wait = s.confirm_timeout if awaiting else s.queue_timeout
        # Sent again up to that deadline: a commit Redis carries out late is still followed by
        # its next step (a preview sends none).
        patience = s.lease_seconds if awaiting else max(s.lease_seconds, deferred + wait)
        lane_end = updates.pop(F.LANE_STATE, None)
        payload = {**job.buffer.payload(job.data, updates), **plan.payload()}
        payload["meter"] = step_figures(now - claimed, None if due is None else claimed - due)
        if lane_end:
            payload["lane_end"] = lane_end
        deadline = ms(now + deferred + wait)
        committed = self._commit(job, worker, now, payload, deadline, patience=patience)
        if committed is None:
            log.warning("step %s/%s lost its lease before committing; discarded", job_id, seq)
            return StepOutcome(lost=True, handler=job.handler)
        status = Status(committed.status)
        if not committed.replicated:
            # A failover now could lose this commit: what follows it waits for maintenance
            # (after the deadline), by when the commit is on a replica or the step runs again.
            log.warning(
                "step %s/%s: the commit lacks the replicas' acknowledgement "
                "(BATCHFLOW_REDIS_WAIT_REPLICAS); maintenance sends what follows it",
                job_id,
                seq,
            )
        elif status.terminal:
            if is_terminal(updates.get(F.STATUS)):  # this step ended the job
                self._notify(job_id, now)
        elif status not in (Status.PAUSED, Status.AWAITING):
            # A cancel that came during a lane's last step: COMMIT kept the lane open, to undo.
            undoing = status is Status.CANCELING and lane_end != Status.CANCELED.value
            ended = bool(lane_end) and not undoing
            self._send_next(job, committed, deferred, plan, ended or coordinating)
        return StepOutcome(status=status, handler=job.handler)

    def _send_next(
        self, job: Job, committed: Committed, deferred: float, plan: LanePlan, waits: bool
    ) -> None:
        """Send what follows a commit: the chain's next step, unless it ``waits`` (a lane that
        ended; the own chain of a job whose lanes run), the lanes ``plan`` wakes, and the own
        chain's step when the commit says it is due (the last lane ended)."""
        if not waits or (not job.lane and committed.main is not None):
            self._send(job.id, committed.seq, deferred, job.lane)
        for lane, seq in plan.wake:
            self._send(job.id, seq, 0.0, lane)
        if job.lane and committed.main is not None:
            self._send(job.id, committed.main, 0.0, 0)

    def _send(self, job_id: str, seq: int, countdown: float, lane: int) -> None:
        try:
            self.dispatcher().enqueue_step(job_id, seq, countdown, lane)
        except Exception:  # noqa: BLE001 - maintenance re-enqueues after the deadline
            log.exception(
                "could not enqueue step %s/%s/%s; maintenance will retry", job_id, lane, seq
            )

    def _coordinate(self, spec: HandlerSpec, job: Job) -> tuple[LanePlan, dict[str, Any]]:
        """The own chain's step of a job in lanes: make, open again or wake its lanes, or end
        the job once every lane has ended (see :mod:`batchflow.lanes`)."""
        b = job.buffer
        plan = coordinate(
            job.status,
            as_int(b.committed(F.LANES)),
            job.total or 0,
            as_int(b.committed(F.BATCH_SIZE), 1),
            self.store.lanes(job.id),
        )
        if plan.ending is None:
            return plan, {}
        return plan, self._end(spec.create(), job, plan.ending)

    def _notify(self, job_id: str, now: float) -> None:
        try:
            self.notifier.deliver(job_id, now)
        except Exception:  # noqa: BLE001 - maintenance delivers them once notify_due passes
            log.exception("job %s ended; its notifications wait for maintenance", job_id)

    def _commit(
        self, job: Job, worker: str, now: float, payload: Any, deadline_ms: int, *, patience: float
    ) -> Committed | None:
        """COMMIT, sent again while Redis does not answer, for ``patience`` seconds: up to the
        deadline the commit sets, after which maintenance would send the next step. A commit
        whose reply was lost (Redis stalled past the timeout, then carried it out) is recognised
        by COMMIT when it comes again, and its next step follows; one refused is fenced off."""
        ttl = self.settings.job_ttl + CLEANUP_GRACE
        give_up = time.monotonic() + patience
        pause = COMMIT_RETRY_FIRST
        while True:
            try:
                return self.store.commit(
                    job.id, job.seq, worker, now, payload, deadline_ms, ttl, job.lane
                )
            except Unavailable:
                if time.monotonic() + pause > give_up:
                    raise
                log.warning(
                    "step %s/%s: Redis did not take the commit; sending it again", job.id, job.seq
                )
                time.sleep(pause)
                pause = min(pause * 2, COMMIT_RETRY_MAX)

    # -- the handler's part ------------------------------------------------------------------

    def _advance(self, spec: HandlerSpec | None, job: Job, batch: int) -> dict[str, Any]:
        """Run the handler's part of the step; returns fields for the commit to set."""
        if spec is None:
            unknown = UnknownHandler(job.handler, worker_knows=self.registry.names())
            self._failed(job, describe_failure(unknown, f"job {job.id}"))
            return self._end(None, job, Status.FAILED)
        handler = spec.create()
        try:
            return self._run_handler(spec, handler, job, batch)
        except Exception as exc:  # noqa: BLE001 - a handler's error fails its job, not the worker
            self._failed(job, describe_failure(exc, f"job {job.id} ({job.handler})"))
            return self._end(handler, job, Status.FAILED)

    def _failed(self, job: Job, failure: Failure) -> None:
        """Fail the job showing ``failure.shown``; its detail is kept for admins."""
        job.fail(failure.shown)
        job.keep_error_detail(failure.detail)

    def _run_handler(
        self, spec: HandlerSpec, handler: Handler, job: Job, batch: int
    ) -> dict[str, Any]:
        status, phase = job.status, job.buffer.committed(F.PHASE) or Phase.CREATE.value
        settling = self._settling(spec, job, phase)
        if status is Status.STOPPING and not settling:
            return self._end(handler, job, Status.STOPPED)
        if job.lease.signal == "pause":
            job.add_message(N_("Paused"))
            return {F.STATUS: Status.PAUSED.value, F.SIGNAL: ""}
        if job.attempt > self.settings.max_attempts:
            return self._give_up(handler, job, phase)
        if status is not Status.CANCELING and (withdrawn := spec.withdrawn(job)):
            job.add_message(withdrawn)
            if job.lane:  # every lane stops, then the job's own chain ends it
                return {F.STATUS: Status.STOPPING.value}
            return self._end(handler, job, Status.STOPPED)
        if status is Status.CANCELING and not settling:
            if phase == Phase.UNDO and spec.kind is not Kind.TASK:
                self._respond(job, handler.undo_job(job, batch))
                if not job.ended:
                    return {}
            return self._end(handler, job, Status.CANCELED)
        handler.before_step(job)
        updates: dict[str, Any] = {}
        if phase == Phase.CREATE:
            if job.buffer.committed(F.ITEMS_SOURCE) == "handler":
                self._load_items(handler, job)
            elif job.buffer.committed(F.ITEMS_SOURCE) == "source":
                plan_work(handler, job)
            self._respond(job, handler.create_job(job))
            previews = getattr(handler, "preview", False)
            updates[F.PHASE] = (Phase.ASSESS if previews else Phase.RUN).value
        elif phase == Phase.ASSESS:
            feed(handler, job, batch, keep_ids=False)
            self._respond(job, handler.assess_job(job, batch))  # type: ignore[attr-defined]
            if job.buffer.ending is Status.COMPLETED and not job.lease_lost:
                job.buffer.ending = None
                updates.update(preview_ended(job))
        else:
            feed(handler, job, batch, keep_ids=handler.can_cancel)
            self._respond(job, handler.continue_job(job, batch))
            settle_total(job)
        handler.after_step(job)
        if job.lease_lost:
            # Another worker holds the lease now: this step's ending is not the job's (its commit
            # will be refused), so it runs no callbacks.
            return updates
        if spec.kind is Kind.TASK and job.stop_seen:
            ending = Status.CANCELED if job.cancel_requested() else Status.STOPPED
            return {**updates, **self._end(handler, job, ending)}
        if job.buffer.ending is not None:
            return {**updates, **self._end(handler, job, job.buffer.ending)}
        return updates

    def _settling(self, spec: HandlerSpec, job: Job, phase: str) -> bool:
        """Whether this step goes again through the slice of a lost step (CLAIM keeps a stop or
        cancel waiting until that slice is settled, so that it is counted, or undone)."""
        walking = phase in (Phase.RUN, Phase.ASSESS)
        return _careful(job) and walking and spec.kind is not Kind.TASK

    def _batch(self, job: Job) -> int:
        """One unit while retrying a lost step and through the rest of its slice (CLAIM sets
        ``careful_until``), so a unit that kills its worker is found alone; else the batch."""
        careful = job.attempt > 1 or _careful(job)
        return 1 if careful else int(job.buffer.committed(F.BATCH_SIZE) or 1)

    def _next_batch(self, spec: HandlerSpec, current: int, elapsed: float) -> int:
        """Aim the next step at ``BATCHFLOW_STEP_TARGET`` seconds: at most :data:`GROWTH` times
        larger, at least half as large, within the configured bounds. A fixed ``batch_size``
        never moves."""
        s = self.settings
        fixed = spec.handler_class.batch_size
        if fixed:
            return s.clamp_batch(fixed)
        ideal = current * s.step_target / max(elapsed, 1e-4)
        return s.clamp_batch(int(max(current / 2, min(current * GROWTH, math.floor(ideal))) or 1))

    def _respond(self, job: Job, response: StepResult) -> None:
        if isinstance(response, str):
            job.add_message(response)
        elif isinstance(response, StepResponse):
            if response.message:
                job.add_message(response.message)
            if response.data is not None:
                job.respond(response.data)

    def _load_items(self, handler: Handler, job: Job) -> None:
        """Store the ids an item job produces server-side, in chunks, and set the total."""
        produced = handler.items(job)  # type: ignore[attr-defined]
        count = self.store.replace_items(job.id, (str(item) for item in produced or ()))
        job.set_total(count)

    def _give_up(self, handler: Handler, job: Job, phase: str) -> dict[str, Any]:
        lost = job.attempt - 1
        reason = Message(
            N_("The worker was lost %(count)s times while working on this item; it was skipped."),
            count=lost,
        )
        in_items = job.buffer.committed(F.KIND) == Kind.ITEMS and phase != Phase.CREATE
        if in_items and job.status is Status.CANCELING and job.items:
            job.record_undone(1, 0, [[job.items[0], stored(reason)]])
            return {}
        if in_items and job.status is not Status.CANCELING:
            feed(handler, job, 1)
            if job.entries:
                job.record_error(job.entries[0].id, reason)
                job.bad()
                job.advance(job.entries[0])
                return {}
        lost_text = N_(
            "The worker running this job was lost %(count)s times in a row; batchflow stopped "
            "retrying so that it cannot loop forever."
        )
        job.fail(Message(lost_text, count=lost))
        return {**self._end(handler, job, Status.FAILED), F.STALLED: 1}

    # -- the job's ending --------------------------------------------------------------------

    def _end(self, handler: Handler | None, job: Job, status: Status) -> dict[str, Any]:
        """The fields that end a job, after its handler's callbacks (part of this last step)."""
        if job.lane and status is not Status.FAILED:
            # A lane's ending is its own: the job ends in its own chain once every lane has.
            return {F.LANE_STATE: status.value}
        updates: dict[str, Any] = {F.STATUS: status.value}
        if handler is not None and status in CANCELABLE_ENDINGS and not self._seal(job):
            # A cancel came first: the commit turns this ending into the undo it asked for, so
            # the job did not complete (or stop) and those callbacks must not run.
            return updates
        total = job.total
        if status in (Status.STOPPED, Status.CANCELED) and total is not None:
            updates[F.SKIPPED] = max(0, total - job.units_processed)
        if status is Status.STOPPED and job.buffer.committed(F.PHASE) == Phase.ASSESS:
            job.add_message(N_("Stopped during the preview; nothing was changed."))
        elif status is Status.STOPPED:
            done = job.units_processed
            if job.buffer.committed(F.KIND) == Kind.FILE:
                text = N_(
                    "Stopped after %(count)s processed; "
                    "the unfinished file is not offered for download."
                )
            else:
                text = N_("Stopped after %(count)s processed; the work done is kept.")
            job.add_message(Message(text, count=done))
        elif status is Status.CANCELED and not job.units_processed:
            job.add_message(N_("Canceled; nothing had been changed."))
        elif status is Status.CANCELED:
            job.add_message(N_("Canceled; the work done was undone."))
        if handler is not None:
            self._run_callbacks(handler, job, status)
        return updates

    def _run_callbacks(self, handler: Handler, job: Job, status: Status) -> None:
        hooks = {
            Status.COMPLETED: [handler.on_complete],
            Status.FAILED: [handler.on_failure],
        }.get(status, [])
        for hook in [*hooks, handler.on_finish]:
            try:
                hook(job)
            except Exception as exc:  # noqa: BLE001 - a callback cannot undo the ending
                failure = describe_failure(exc, f"{hook.__name__} of job {job.id}")
                failed = N_("%(hook)s failed: %(error)s")
                job.add_message(Message(failed, hook=hook.__name__, error=failure.shown))
                job.keep_error_detail(failure.detail)

    def _seal(self, job: Job) -> bool:
        """Record that this step ends the job, so that a cancel arriving from now on is refused
        rather than turning an ending whose callbacks already ran into an undo. False if a cancel
        came first or the lease is gone: then the ending's callbacks must not run."""
        now = time.time()
        try:
            seen = self.store.renew(
                job.id,
                job.seq,
                worker_id(),
                now,
                ms(now + self.settings.lease_seconds),
                {"set": {F.ENDING: str(job.seq)}},
            )
        except Exception:  # noqa: BLE001 - Redis blinked: end anyway; the commit still decides
            log.warning("could not mark job %s as ending", job.id, exc_info=True)
            return True
        if seen is None:
            job.lease.mark_lost()
            return False
        return seen.status != Status.CANCELING.value


def _coordinating(fields: dict[str, str]) -> bool:
    """Whether a step of the job's own chain coordinates its lanes (in its run or its undo)."""
    laned = as_int(fields.get(F.LANES)) > 1
    return laned and fields.get(F.PHASE) in (Phase.RUN.value, Phase.UNDO.value)
