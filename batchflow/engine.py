"""The engine: what any process (a web request, a worker, a script) does with jobs.

:class:`Engine` is the façade: start jobs, read them, signal them, clean them up. It hands a step
to the :class:`~batchflow.steps.StepRunner` (the step protocol and its guarantees are described
there) and maintenance to :class:`~batchflow.maintenance.Maintenance`. Job ids from outside are
checked here, once; a malformed id is the same :class:`JobNotFound` as an unknown one.

This module imports no Flask and no Celery: the Celery layer gives it a :class:`Dispatcher`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Generator, Iterable, Iterator
from typing import Any

from .admission import SHARED_POOL, Admission, fingerprint
from .config import Settings
from .display import labels_for
from .exceptions import (
    BatchflowError,
    InvalidParams,
    InvalidTransition,
    JobNotFound,
    LimitReached,
    Unavailable,
    refuse,
)
from .failures import describe_failure
from .fleet import Fleet
from .i18n import N_, shown
from .i18n import gettext as _
from .job import Job, UserLoader
from .keys import checked_job_id, new_job_id, valid_job_id
from .lanes import lanes_for
from .logs import about_job, configure
from .maintenance import Maintenance
from .notify import Notifier, NotifyHooks
from .registry import HandlerSpec, Registry
from .schema import AdmitCode, ClaimCode, F, Kind, Signal, SignalCode, Status, initial_fields, ms
from .state import JobState
from .steps import CLEANUP_GRACE, Dispatcher, StepOutcome, StepRunner
from .store import Store
from .streams import StreamSlots
from .words import HANDLER_LIMIT_REACHED, LIMIT_REACHED

__all__ = ["CLEANUP_GRACE", "Dispatcher", "Engine", "Page", "Started", "StepOutcome"]

log = logging.getLogger("batchflow")

#: The requests that put a job holding no worker back to running: the status it must be in, the
#: message it leaves, and the refusal's start.
REOPENINGS = {
    Signal.CONTINUE: (
        Status.STOPPED,
        "Continued from where it stopped",
        N_("Only a stopped job can continue; this one is %(status)s."),
    ),
    Signal.CONFIRM: (
        Status.AWAITING,
        "Confirmed: running",
        N_("Only a job awaiting confirmation can be confirmed; this one is %(status)s."),
    ),
}
#: Seconds a start refused for the owner's limit is told to wait (``Retry-After``).
LIMIT_RETRY_AFTER = 30


@dataclasses.dataclass(frozen=True)
class Started:
    """What a start did: ``job_id`` is the new job's, or (``created`` False) that of an identical
    active job of the owner's that a ``deduplicate`` handler answers with."""

    job_id: str
    created: bool


@dataclasses.dataclass
class Page:
    """One page of a job's per-id results or errors; ``cursor`` 0 means there are no more."""

    items: dict[str, Any]
    cursor: int


class Engine:
    """Runs jobs. One per app (web side) or worker process; thread-safe.

    :param settings: deployment settings.
    :param store: the Redis store.
    :param registry: the handlers jobs may name.
    :param load_user: ``load_user(owner) -> user or None``, what ``job.user`` is in steps.
    :param notify: the app's part in notifications (``on_notify``, the owner's email address).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        load_user: UserLoader = None,
        notify: NotifyHooks | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        configure(settings.log_format)
        self.admission = Admission(store.client, store.keys)
        #: The open event streams of each identity, capped across web processes.
        self.streams = StreamSlots(store.client, store.keys)
        #: The workers seen (each announces itself every maintenance interval).
        self.fleet = Fleet(store.client, store.keys, 3 * settings.maintenance_interval)
        #: How steps reach workers: set by the Celery layer (``make_celery``), or by tests.
        self.dispatcher: Dispatcher | None = None
        #: Tells owners their jobs ended; ``notifier.inbox`` holds what they have not seen.
        self.notifier = Notifier(settings, store, registry, load_user, notify)
        self.steps = StepRunner(settings, store, registry, self._dispatch, self.notifier, load_user)
        self.maintenance = Maintenance(
            settings,
            store,
            lambda job_id, seq, lane: self._dispatch().enqueue_step(job_id, seq, 0.0, lane),
            self._expire,
            lambda job_id: self._dispatch().enqueue_notify(job_id),
        )

    def _dispatch(self) -> Dispatcher:
        if self.dispatcher is None:
            raise BatchflowError(
                "This engine has no dispatcher: build the Celery app with make_celery() first."
            )
        return self.dispatcher

    # -- starting ----------------------------------------------------------------------------

    def start(
        self,
        handler: str,
        *,
        owner: str,
        params: dict[str, Any] | None = None,
        ids: Iterable[Any] | None = None,
        redirect_url: str | None = None,
        extra: dict[str, Any] | None = None,
        lanes: int | None = None,
    ) -> str:
        """Create a job and enqueue its first step; returns the job's id (with a
        ``deduplicate`` handler, perhaps that of an identical job already active: see
        :meth:`submit`, which tells the two apart)."""
        return self.submit(
            handler,
            owner=owner,
            params=params,
            ids=ids,
            redirect_url=redirect_url,
            extra=extra,
            lanes=lanes,
        ).job_id

    def submit(
        self,
        handler: str,
        *,
        owner: str,
        params: dict[str, Any] | None = None,
        ids: Iterable[Any] | None = None,
        redirect_url: str | None = None,
        extra: dict[str, Any] | None = None,
        job_id: str | None = None,
        lanes: int | None = None,
    ) -> Started:
        """Create a job and enqueue its first step, unless the handler deduplicates and one of
        ``owner``'s active jobs has the same handler, parameters (as validated) and ids: then
        that job is the answer (``created`` False).

        Nothing is left behind if anything fails: the job's keys are removed again when its first
        step cannot be enqueued.

        :param extra: more fields of the job hash (names from :class:`~batchflow.schema.F`).
        :param job_id: the new job's id, from :func:`new_job_id`, for a caller that puts
            something in the job's folder first (an import's upload); a fresh one by default.
        :param lanes: how many lanes walk the job's ids at once, up to the handler's
            ``max_lanes`` (see :mod:`batchflow.lanes`); by default the handler's ``lanes``.
        :raises UnknownHandler: no handler by that name.
        :raises InvalidParams: the handler refused the parameters, or the ids are not acceptable.
        :raises TooManyItems: more ids than ``BATCHFLOW_MAX_IDS``.
        :raises LimitReached: ``owner`` has as many active jobs as their limit allows
            (``BATCHFLOW_MAX_ACTIVE_JOBS``, or the handler's ``max_active_jobs``).
        :raises Unavailable: Redis or the broker does not answer.
        """
        spec = self.registry.get(handler)
        instance = spec.create()
        params = instance.validate_params(dict(params or {}))
        try:
            params_json = json.dumps(params)
        except (TypeError, ValueError) as exc:
            raise InvalidParams(_("Job parameters must be JSON data: %(why)s", why=exc)) from None
        id_list, source = spec.items_source(ids, self.settings.max_ids)
        lane_count = lanes_for(spec.handler_class, lanes, source)
        job_id = checked_job_id(job_id) if job_id is not None else new_job_id()
        now = time.time()
        existing = self._admit(spec, owner, job_id, fingerprint(spec.name, params, id_list), now)
        if existing is not None:
            return Started(existing, created=False)
        s = self.settings
        fields = initial_fields(
            job_id=job_id,
            handler=spec.name,
            kind=spec.kind,
            owner=owner,
            params_json=params_json,
            labels=labels_for(spec.name, instance.job_labels(params)),
            capabilities=instance.capabilities(),
            sensitive=instance.sensitive_params,
            total=len(id_list) if id_list is not None else None,
            items_source=source,
            batch_size=s.clamp_batch(spec.handler_class.batch_size or s.batch_initial),
            first_deadline_ms=ms(now + s.queue_timeout),
            redirect_url=redirect_url,
            now=now,
            extra={**(extra or {}), F.LANES: lane_count},
        )
        try:
            self.store.create(job_id, fields, id_list, ms(now))
            self._dispatch().enqueue_step(job_id, 0)
        except Exception as exc:
            with contextlib.suppress(BatchflowError):
                self.store.delete_job(job_id, owner)
                self.admission.release(owner, job_id)
            if isinstance(exc, BatchflowError):
                raise
            raise Unavailable(
                N_("The job queue does not answer; nothing was started."),
                f"The job queue does not answer ({exc}); nothing was started. "
                "Check that the Celery broker (BATCHFLOW_BROKER_URL) runs.",
            ) from exc
        log.info("started job %s (%s) for %s", job_id, spec.name, owner)
        return Started(job_id, created=True)

    def _admit(
        self, spec: HandlerSpec, owner: str, job_id: str, print_: str, now: float
    ) -> str | None:
        """Take the new job's place among the owner's active jobs; the id of an identical active
        job to answer with instead (a deduplicating handler), or None to go on and create it.

        :raises LimitReached: the owner's pool of active jobs is full.
        """
        own_limit = spec.handler_class.max_active_jobs
        limit = self.settings.max_active_jobs if own_limit is None else own_limit
        dedup = spec.handler_class.deduplicate
        if limit <= 0 and not dedup:
            return None  # nothing to count or to match: no Redis round trip
        pool = SHARED_POOL if own_limit is None else spec.name
        admitted = self.admission.admit(
            owner,
            job_id,
            pool=pool,
            limit=limit,
            fingerprint=print_ if dedup else "",
            now_ms=ms(now),
        )
        if admitted.code is AdmitCode.SAME:
            return admitted.job_ids[0]
        if admitted.code is AdmitCode.FULL:
            running = admitted.job_ids
            text = LIMIT_REACHED if own_limit is None else HANDLER_LIMIT_REACHED
            raise LimitReached(
                _(text, count=len(running), handler=repr(spec.name), limit=limit),
                retry_after=LIMIT_RETRY_AFTER,
                details={"active_jobs": running},
            )
        return None

    def retry_failed(self, job_id: str, owner: str) -> str:
        """:meth:`retry`, answering only the new job's id (it raises what that raises)."""
        return self.retry(job_id, owner).job_id

    def retry(self, job_id: str, owner: str) -> Started:
        """Start a new job, owned by ``owner``, over only the ids that failed in ``job_id``, with
        its parameters and redirect URL (see :meth:`submit`). The caller decides whether
        ``owner`` may start the job's handler: the web layer asks its permission hook.

        :raises InvalidTransition: the job is not a finished item job with failed ids.
        :raises LimitReached: ``owner`` has as many active jobs as their limit allows.
        """
        state = self.state(job_id)
        if state.kind != Kind.ITEMS.value or not state.status.terminal:
            raise InvalidTransition(_("Only a finished item job can retry its failed ids."))
        failed = [item for item, _message in self.store.iter_hash(job_id, "errors")]
        if not failed:
            raise InvalidTransition(_("This job has no failed ids to retry."))
        return self.submit(
            state.fields[F.HANDLER],
            owner=owner,
            params=json.loads(state.fields.get(F.PARAMS) or "{}"),
            ids=failed,
            redirect_url=state.fields.get(F.REDIRECT_URL) or None,
            extra={F.RETRY_OF: job_id},
        )

    # -- reading -------------------------------------------------------------------------------

    def state(self, job_id: str) -> JobState:
        """The job's stored state, in one Redis round trip.

        :raises JobNotFound: no such job, or a malformed id.
        """
        fields, messages = self.store.snapshot(checked_job_id(job_id))
        return JobState.from_stored(fields, messages)

    def jobs(
        self, owner: str | None, *, offset: int = 0, limit: int = 50, status: str | None = None
    ) -> list[JobState]:
        """Jobs newest first: one owner's, or everyone's when ``owner`` is None."""
        states: list[JobState] = []
        cursor = offset
        while len(states) < limit:
            ids = self.store.job_ids(owner, cursor, limit * 2 if status else limit)
            if not ids:
                break
            cursor += len(ids)
            for fields, messages in self.store.snapshots(ids):
                if status is None or fields.get(F.STATUS) == status:
                    states.append(JobState.from_stored(fields, messages))
        return states[:limit]

    def follow(
        self, job_id: str, keepalive: float = 15.0
    ) -> Generator[JobState | None, None, None]:
        """The job's state now and after every commit, in order, until it ends; None after every
        ``keepalive`` seconds of silence (for a stream's keep-alive).

        :raises JobNotFound: no such job.
        """
        for snapshot in self.store.follow(checked_job_id(job_id), keepalive):
            if snapshot is None:
                yield None
                continue
            state = JobState.from_stored(*snapshot)
            yield state
            if state.status.terminal:
                return

    def results(
        self, job_id: str, which: str = "results", cursor: int = 0, count: int = 100
    ) -> Page:
        """A page of per-id results or errors (``which`` is ``"results"`` or ``"errors"``)."""
        if which not in ("results", "errors"):
            raise InvalidParams(_("which must be 'results' or 'errors'."))
        next_cursor, raw = self.store.results_page(
            checked_job_id(job_id), which, cursor, max(1, min(count, 1000))
        )
        if which == "results":
            return Page({k: json.loads(v) for k, v in raw.items()}, next_cursor)
        return Page({k: shown(v) for k, v in raw.items()}, next_cursor)  # in the reader's words

    def report_rows(self, job_id: str) -> Iterator[tuple[str, str, str]]:
        """Every per-id outcome as ``(id, "good" | "bad" | "undo failed", detail)``."""
        checked_job_id(job_id)
        for item, value in self.store.iter_hash(job_id, "results"):
            yield item, "good", value
        for item, message in self.store.iter_hash(job_id, "errors"):
            yield item, "bad", shown(message)
        for item, message in self.store.iter_hash(job_id, "undo_errors"):
            yield item, "undo failed", shown(message)

    # -- signals -------------------------------------------------------------------------------

    def signal(self, job_id: str, what: Signal | str) -> JobState:
        """Ask a job to ``stop``, ``cancel``, ``pause`` or ``resume``; from any process.

        Idempotent: asking again for what is already under way is fine. A signal is recorded in
        Redis before anything else: it is obeyed by whichever worker runs the job next, even if
        every worker (or the broker) is down now.

        :raises JobNotFound: no such job.
        :raises InvalidTransition: the job cannot do that now (the reason says why).
        """
        try:
            signal = Signal(what)
        except ValueError:
            raise InvalidTransition(_("Unknown request %(what)r.", what=what)) from None
        state = self.state(job_id)
        discard = signal is Signal.CANCEL and state.status is Status.AWAITING
        if signal.capability not in state.capabilities and not discard:
            raise InvalidTransition(_("This job does not support %(what)s.", what=signal.value))
        if signal in REOPENINGS:
            return self._reopen(state, signal)
        now = time.time()
        code, status, seq = self.store.signal(
            job_id, signal, now, ms(now + self.settings.queue_timeout)
        )
        refuse(code, job_id, status, signal.value)
        if code is SignalCode.ENQUEUE:
            try:
                self._dispatch().enqueue_step(job_id, seq)
            except Exception:  # noqa: BLE001 - recorded; SIGNAL set a deadline for maintenance
                log.exception(
                    "could not enqueue step %s/%s after %s; maintenance will retry",
                    job_id,
                    seq,
                    signal.value,
                )
        return self.state(job_id)

    def _reopen(self, state: JobState, signal: Signal) -> JobState:
        """Continue a stopped job as the same job from where it stopped (it takes a place among
        its owner's active jobs again: LimitReached when they are full), or run an assessed one
        the user confirmed."""
        was, message, refusal = REOPENINGS[signal]
        if state.status is not was:
            raise InvalidTransition(_(refusal, status=state.status.value))
        now = time.time()
        if signal is Signal.CONTINUE:
            self._admit(self.registry.get(state.fields[F.HANDLER]), state.owner, state.id, "", now)
        deadline = ms(now + self.settings.queue_timeout)
        code, status, seq = self.store.reopen(state.id, now, deadline, was=was, message=message)
        if code is SignalCode.CLEANED:
            raise InvalidTransition(
                _("This job's output was already cleaned up: it cannot continue.")
            )
        if code is SignalCode.REFUSED:
            raise InvalidTransition(_(refusal, status=status))
        refuse(code, state.id, status, signal.value)
        try:
            self._dispatch().enqueue_step(state.id, seq)
        except Exception:  # noqa: BLE001 - REOPEN set a deadline: maintenance enqueues it
            log.exception("could not enqueue step %s/%s (%s)", state.id, seq, signal.value)
        return self.state(state.id)

    # -- running -------------------------------------------------------------------------------

    def run_step(
        self, job_id: str, seq: int, lane: int = 0, *, due: float | None = None
    ) -> StepOutcome:
        """Run step ``seq`` of a job (of one of its lanes, for a job in lanes), if it is still
        due (the body of the Celery step task).

        Never raises for a handler's error: the job fails with the error's message and the
        traceback goes to the log. ``due``: when the step was due (its message says), to
        measure its wait in the queue.
        """
        if not valid_job_id(job_id):
            return StepOutcome(refused=ClaimCode.MISSING)
        with about_job(job_id, step=seq, lane=lane):
            return self.steps.run(job_id, seq, lane, due=due)

    # -- cleanup and maintenance ---------------------------------------------------------------

    def request_cleanup(self, job_id: str) -> None:
        """Ask a worker to run the job's ``cleanup_job`` (after its file was downloaded).

        :raises InvalidTransition: the job has not ended yet.
        """
        state = self.state(job_id)
        if not state.status.terminal:
            raise InvalidTransition(_("The job is still running; stop it before cleaning up."))
        if state.fields.get(F.CLEANED) != "1":
            self._dispatch().enqueue_cleanup(job_id)

    def cleanup(self, job_id: str) -> bool:
        """Run the job's ``cleanup_job`` unless it ran already; True if it ran now.

        Exactly one caller wins, however many ask at once.
        """
        if not valid_job_id(job_id):
            return False
        fields = self.store.mark_cleaned(job_id)
        if fields is None:
            return False
        try:
            handler = self.registry.get(fields.get(F.HANDLER, "")).create()
            handler.cleanup_job(Job(fields, files_dir=self.settings.files_dir))
        except Exception as exc:  # noqa: BLE001 - logged; cleanup is not retried
            describe_failure(exc, f"cleanup_job of job {job_id}")
        return True

    def _expire(self, job_id: str) -> str | None:
        """Clean up a job whose time is up; its owner, for the index, if its state is there."""
        self.cleanup(job_id)
        try:
            owner = self.state(job_id).owner
        except JobNotFound:
            return None
        self.admission.release(owner, job_id)
        return owner

    def notify(self, job_id: str) -> bool:
        """Deliver what is due of an ended job's notifications (the ``notify`` task's body)."""
        return valid_job_id(job_id) and self.notifier.deliver(job_id)

    def maintain(self, now: float | None = None, *, force: bool = False) -> dict[str, int]:
        """Recover overdue steps and clean expired jobs (see :mod:`batchflow.maintenance`).
        Runs in every worker; one per interval does the work. Returns counts of what it did."""
        return self.maintenance.run(now, force=force).as_dict()
