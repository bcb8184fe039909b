"""The step protocol: claim a step, run the handler, commit the step's buffer, enqueue the next.

Guarantees, as users meet them:

- A step carries ``(job_id, seq)``. Only the delivery whose ``seq`` matches the job's, with no live
  lease held, runs; a duplicate or stale delivery does nothing. Steps are at-least-once, commits
  exactly-once: counters never double-count.
- A step whose worker dies is run again after its lease expires (maintenance re-enqueues it); a
  step whose successor was never enqueued is re-enqueued once the queue timeout passed. Only the
  step cut off may repeat its side effects; a FileJob writes from the committed length at fixed
  offsets, so rows land exactly once.
- A step that keeps killing its worker is not retried forever: after a lost step, the rest of its
  slice runs one unit per step, so the unit that kills is met alone; after
  ``BATCHFLOW_MAX_ATTEMPTS`` tries an item job records that item as bad and goes on, any other job
  fails as *stalled*.
- A worker that lost its lease while still alive (frozen, or cut off from Redis for longer than the
  lease) cannot commit; as soon as its heartbeat learns it, an item job stops changing ids and a
  one-shot job's ``stop_requested()`` turns True, so two copies do not run on.
- Stop, cancel and pause are recorded in Redis first and answered between steps, by whichever worker
  claims the next step (even if every worker, or the broker, is down when they are asked). A cancel
  that arrives while the last step ends the job wins if that step has not run its callbacks yet
  (the work is undone); after that it is refused: callbacks run for the job's real ending only.

This module imports no Flask and no Celery: the Celery layer gives it a :class:`Dispatcher`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from .config import Settings
from .display import labels_for
from .exceptions import (
    BatchflowError,
    InvalidParams,
    InvalidTransition,
    JobNotFound,
    TooManyItems,
    Unavailable,
    UnknownHandler,
)
from .handlers import Handler, ItemsJob, StepResult, error_message
from .job import Job, StepResponse
from .registry import HandlerSpec, Registry
from .schema import Status
from .state import JobState
from .store import TERMINAL, Store, valid_job_id

log = logging.getLogger("batchflow")

#: Endings that a cancel arriving during the ending step turns into an undo (see COMMIT).
_CANCELABLE_ENDINGS = (Status.COMPLETED, Status.STOPPED)
#: How much longer than the TTL a terminal job's keys live, so maintenance can clean up first.
CLEANUP_GRACE = 3600
MAX_ID_LENGTH = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Dispatcher(Protocol):
    """How the engine reaches workers; the Celery layer provides it."""

    def enqueue_step(self, job_id: str, seq: int, countdown: float = 0.0) -> None: ...

    def enqueue_cleanup(self, job_id: str) -> None: ...


@dataclasses.dataclass
class Page:
    """One page of a job's per-id results or errors; ``cursor`` 0 means there are no more."""

    items: dict[str, Any]
    cursor: int


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


_worker: tuple[int, str] | None = None


def worker_id() -> str:
    """This process's identity in leases: host, pid and a random tag (fork-safe)."""
    global _worker
    pid = os.getpid()
    if _worker is None or _worker[0] != pid:
        _worker = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}")
    return _worker[1]


class Engine:
    """Runs jobs. One per app (web side) or worker process; thread-safe.

    :param settings: deployment settings.
    :param store: the Redis store.
    :param registry: the handlers jobs may name.
    """

    def __init__(self, settings: Settings, store: Store, registry: Registry) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.dispatcher: Dispatcher | None = None
        self.heartbeat = Heartbeat()

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
    ) -> str:
        """Create a job and enqueue its first step; returns the new job's id.

        Nothing is left behind if anything fails: the job's keys are removed again when its first
        step cannot be enqueued.

        :raises UnknownHandler: no handler by that name.
        :raises InvalidParams: the handler refused the parameters, or the ids are not acceptable.
        :raises TooManyItems: more ids than ``BATCHFLOW_MAX_IDS``.
        :raises Unavailable: Redis or the broker does not answer.
        """
        spec = self.registry.get(handler)
        instance = spec.create()
        params = instance.validate_params(dict(params or {}))
        try:
            params_json = json.dumps(params)
        except (TypeError, ValueError) as exc:
            raise InvalidParams(f"Job parameters must be JSON data: {exc}") from None
        id_list, source = self._check_ids(spec, instance, ids)
        job_id = secrets.token_urlsafe(16)
        now = time.time()
        labels = labels_for(spec.name, instance.labels)
        fixed = spec.handler_class.batch_size
        fields: dict[str, Any] = {
            "id": job_id,
            "handler": spec.name,
            "kind": spec.kind,
            "owner": owner,
            "status": Status.PENDING.value,
            "signal": "",
            "phase": "create",
            "params": params_json,
            "data": "{}",
            "labels": json.dumps(labels),
            "caps": ",".join(instance.capabilities()),
            "sensitive": json.dumps(list(instance.sensitive_params)),
            "total": len(id_list) if id_list is not None else "",
            "processed": 0,
            "good": 0,
            "bad": 0,
            "skipped": 0,
            "undone": 0,
            "undo_failed": 0,
            "undo_cursor": 0,
            "seq": 0,
            "attempts": 0,
            "recoveries": 0,
            "careful_until": 0,
            "lease_owner": "",
            "lease_until": _ms(now + self.settings.queue_timeout),
            "batch_size": self.settings.clamp_batch(fixed or self.settings.batch_initial),
            "items_source": source,
            "redirect_url": redirect_url or "",
            "created_at": now,
            "updated_at": now,
        }
        for key, value in (extra or {}).items():
            fields.setdefault(key, value)
        self.store.create(job_id, fields, id_list, _ms(now))
        try:
            self._dispatch().enqueue_step(job_id, 0)
        except Exception as exc:
            with contextlib.suppress(BatchflowError):
                self.store.delete_job(job_id, owner)
            if isinstance(exc, BatchflowError):
                raise
            raise Unavailable(
                f"The job queue does not answer ({exc}); nothing was started. "
                "Check that the Celery broker (BATCHFLOW_BROKER_URL) runs."
            ) from exc
        log.info("started job %s (%s) for %s", job_id, spec.name, owner)
        return job_id

    def _check_ids(
        self, spec: HandlerSpec, handler: Handler, ids: Iterable[Any] | None
    ) -> tuple[list[str] | None, str]:
        if spec.kind != "items":
            if ids is not None:
                raise InvalidParams(f"Handler {spec.name!r} does not take ids.")
            return None, ""
        if ids is None:
            if isinstance(handler, ItemsJob) and type(handler).items is not ItemsJob.items:
                return None, "handler"
            raise InvalidParams(f"Handler {spec.name!r} needs a list of ids to work on.")
        if isinstance(ids, (str, bytes, dict)):
            raise InvalidParams("ids must be a list of strings or numbers.")
        checked: list[str] = []
        limit = self.settings.max_ids
        for item in ids:
            if len(checked) >= limit:
                raise TooManyItems(
                    f"Too many ids: at most {limit} per job (BATCHFLOW_MAX_IDS). "
                    "Split the work, or let the handler produce its ids with items()."
                )
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise InvalidParams("Each id must be a string or a whole number.")
            text = str(item)
            if not text or len(text) > MAX_ID_LENGTH:
                raise InvalidParams(f"Each id must be 1 to {MAX_ID_LENGTH} characters long.")
            if _CONTROL.search(text):
                raise InvalidParams("Ids must not contain control characters.")
            checked.append(text)
        if not checked:
            raise InvalidParams("The list of ids is empty: there is nothing to do.")
        return checked, "request"

    def retry_failed(self, job_id: str, owner: str) -> str:
        """Start a new job over only the ids that failed in ``job_id``.

        :raises InvalidTransition: the job is not a finished item job with failed ids.
        """
        state = self.state(job_id)
        if state.kind != "items" or not state.status.terminal:
            raise InvalidTransition("Only a finished item job can retry its failed ids.")
        failed = [item for item, _ in self.store.iter_hash(job_id, "errors")]
        if not failed:
            raise InvalidTransition("This job has no failed ids to retry.")
        return self.start(
            state.fields["handler"],
            owner=owner,
            params=json.loads(state.fields.get("params") or "{}"),
            ids=failed,
            redirect_url=state.fields.get("redirect_url") or None,
            extra={"retry_of": job_id},
        )

    # -- reading -------------------------------------------------------------------------------

    def state(self, job_id: str) -> JobState:
        """The job's stored state, in one Redis round trip.

        :raises JobNotFound: no such job, or a malformed id.
        """
        if not valid_job_id(job_id):
            raise JobNotFound(job_id)
        fields, messages = self.store.snapshot(job_id)
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
                if status is None or fields.get("status") == status:
                    states.append(JobState.from_stored(fields, messages))
        return states[:limit]

    def follow(self, job_id: str, keepalive: float = 15.0) -> Iterator[JobState | None]:
        """The job's state now and after every commit, in order, until it ends; None after every
        ``keepalive`` seconds of silence (for a stream's keep-alive).

        :raises JobNotFound: no such job.
        """
        if not valid_job_id(job_id):
            raise JobNotFound(job_id)
        for snapshot in self.store.follow(job_id, keepalive):
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
        next_cursor, raw = self.store.results_page(job_id, which, cursor, max(1, min(count, 1000)))
        if which == "results":
            return Page({k: json.loads(v) for k, v in raw.items()}, next_cursor)
        return Page(dict(raw), next_cursor)

    def report_rows(self, job_id: str) -> Iterator[tuple[str, str, str]]:
        """Every per-id outcome as ``(id, "good" | "bad" | "undo failed", detail)``."""
        for item, value in self.store.iter_hash(job_id, "results"):
            yield item, "good", value
        for item, message in self.store.iter_hash(job_id, "errors"):
            yield item, "bad", message
        for item, message in self.store.iter_hash(job_id, "undo_errors"):
            yield item, "undo failed", message

    # -- signals -------------------------------------------------------------------------------

    def request(self, job_id: str, what: str) -> JobState:
        """Ask a job to ``stop``, ``cancel``, ``pause`` or ``resume``; from any process.

        Idempotent: asking again for what is already under way is fine. A request is recorded in
        Redis before anything else: it is obeyed by whichever worker runs the job next, even if
        every worker (or the broker) is down now.

        :raises JobNotFound: no such job.
        :raises InvalidTransition: the job cannot do that now (the reason says why).
        """
        if what not in ("stop", "cancel", "pause", "resume"):
            raise InvalidTransition(f"Unknown request {what!r}.")
        state = self.state(job_id)
        capability = "pause" if what == "resume" else what
        if capability not in state.capabilities:
            raise InvalidTransition(f"This job does not support {what}.")
        now = time.time()
        code, status, seq = self.store.signal(
            job_id, what, now, _ms(now + self.settings.queue_timeout)
        )
        if code == "missing":
            raise JobNotFound(job_id)
        if code == "terminal":
            raise InvalidTransition(
                f"The job has already ended ({status}); there is nothing to {what}."
            )
        if code == "refused":
            raise InvalidTransition(f"The job cannot {what} while it is {status}.")
        if code == "ending":
            raise InvalidTransition(
                f"The job is finishing its last step; it is too late to {what}."
            )
        if code == "enqueue":
            try:
                self._dispatch().enqueue_step(job_id, seq)
            except Exception:  # noqa: BLE001 - recorded; SIGNAL set a deadline for maintenance
                log.exception(
                    "could not enqueue step %s/%s after %s; maintenance will retry",
                    job_id,
                    seq,
                    what,
                )
        return self.state(job_id)

    # -- running a step ------------------------------------------------------------------------

    def run_step(self, job_id: str, seq: int) -> str:
        """Run step ``seq`` of a job, if it is still due; returns what happened.

        This is the body of the Celery step task. It never raises for a handler's error: the job
        fails with the error's message and the traceback goes to the log.
        """
        s = self.settings
        worker = worker_id()
        if not valid_job_id(job_id):
            return "missing"
        claim = self.store.claim(job_id, seq, worker, _ms(time.time()), _ms(s.lease_seconds))
        if claim.code != "ok":
            log.debug("step %s/%s not run: %s", job_id, seq, claim.code)
            return claim.code
        fields = claim.fields
        live = fields.get("kind") == "task" and fields.get("phase") == "run"
        job = Job(
            fields, items=claim.ids, bad_flags=claim.bad_flags, files_dir=s.files_dir, live=live
        )
        started = time.monotonic()
        interval = s.progress_interval if live else s.lease_seconds / 3
        spec = self.registry.find(job.handler)
        with self.heartbeat.watch(self, job, worker, interval):
            updates = self._advance(spec, job)
        if spec is not None and not job.ended:
            job.defer(spec.handler_class.step_delay)
            if fields.get("phase") != "create":
                elapsed = time.monotonic() - started
                updates["batch_size"] = self._next_batch(spec, job, elapsed)
        now = time.time()
        deadline = _ms(now + job._defer + s.queue_timeout)
        committed = self.store.commit(
            job_id, seq, worker, now, job._payload(updates), deadline, s.job_ttl + CLEANUP_GRACE
        )
        if committed is None:
            log.warning("step %s/%s lost its lease before committing; discarded", job_id, seq)
            return "lost"
        new_seq, status = committed
        if status in TERMINAL:
            self.store.finish(job_id, now + s.job_ttl)
        elif status != Status.PAUSED.value:
            try:
                self._dispatch().enqueue_step(job_id, new_seq, job._defer)
            except Exception:  # noqa: BLE001 - maintenance re-enqueues after the deadline
                log.exception(
                    "could not enqueue step %s/%s; maintenance will retry", job_id, new_seq
                )
        return status

    def _advance(self, spec: HandlerSpec | None, job: Job) -> dict[str, Any]:
        """Run the handler's part of the step; returns fields for the commit to set."""
        if spec is None:
            job.fail(f"This worker cannot run the job: {UnknownHandler(job.handler)}")
            return self._end(None, job, Status.FAILED)
        handler = spec.create()
        try:
            return self._run_handler(spec, handler, job)
        except Exception as exc:  # noqa: BLE001 - a handler's error fails its job, not the worker
            log.exception("job %s (%s) failed", job.id, job.handler)
            job.fail(error_message(exc))
            return self._end(handler, job, Status.FAILED)

    def _run_handler(self, spec: HandlerSpec, handler: Handler, job: Job) -> dict[str, Any]:
        f = job._fields
        status, phase = job.status, f.get("phase", "create")
        if status is Status.STOPPING:
            return self._end(handler, job, Status.STOPPED)
        if f.get("signal") == "pause":
            job.add_message("Paused")
            return {"status": Status.PAUSED.value, "signal": ""}
        if job.attempt > self.settings.max_attempts:
            return self._give_up(handler, job, phase)
        if status is Status.CANCELING:
            if phase == "undo" and spec.kind != "task":
                self._respond(job, handler.undo_job(job, self._batch(job)))
                if not job.ended:
                    return {}
            return self._end(handler, job, Status.CANCELED)
        handler.before_step(job)
        updates: dict[str, Any] = {}
        if phase == "create":
            if f.get("items_source") == "handler":
                self._load_items(handler, job)
            self._respond(job, handler.create_job(job))
            updates["phase"] = "run"
        else:
            self._respond(job, handler.continue_job(job, self._batch(job)))
        handler.after_step(job)
        if job._lost:
            # Another worker holds the lease now: this step's ending is not the job's (its commit
            # will be refused), so it runs no callbacks.
            return updates
        if spec.kind == "task" and job._stop_seen:
            ending = Status.CANCELED if job.cancel_requested() else Status.STOPPED
            return {**updates, **self._end(handler, job, ending)}
        if job._end is not None:
            return {**updates, **self._end(handler, job, job._end)}
        return updates

    def _batch(self, job: Job) -> int:
        """One unit while retrying a lost step and through the rest of its slice (CLAIM sets
        ``careful_until``), so a unit that kills its worker is found alone; else the batch."""
        f = job._fields
        careful = int(f.get("careful_until") or 0) > int(f.get("processed") or 0)
        return 1 if job.attempt > 1 or careful else int(f.get("batch_size") or 1)

    def _next_batch(self, spec: HandlerSpec, job: Job, elapsed: float) -> int:
        """Aim the next step at ``BATCHFLOW_STEP_TARGET`` seconds: at most doubling, at least
        halving, within the configured bounds. A fixed ``batch_size`` never moves."""
        s, current = self.settings, self._batch(job)
        fixed = spec.handler_class.batch_size
        if fixed:
            return s.clamp_batch(fixed)
        ideal = current * s.step_target / max(elapsed, 1e-4)
        return s.clamp_batch(int(max(current / 2, min(current * 2, math.floor(ideal))) or 1))

    def _respond(self, job: Job, response: StepResult) -> None:
        if isinstance(response, str):
            job.add_message(response)
        elif isinstance(response, StepResponse):
            if response.message:
                job.add_message(response.message)
            if response.data is not None:
                job._set["response"] = json.dumps(response.data, default=str)

    def _load_items(self, handler: Handler, job: Job) -> None:
        """Store the ids an item job produces server-side, in chunks, and set the total."""
        produced = handler.items(job)  # type: ignore[attr-defined]
        self.store.reset_items(job.id)
        count = self.store.push_items(job.id, (str(item) for item in produced or ()))
        job.set_total(count)

    def _give_up(self, handler: Handler, job: Job, phase: str) -> dict[str, Any]:
        lost = job.attempt - 1
        if job._fields.get("kind") == "items" and job.items and phase != "create":
            item = job.items[0]
            reason = f"The worker was lost {lost} times while working on this id; it was skipped."
            if job.status is Status.CANCELING:
                job._undid(1, 0, [[item, reason]])
            else:
                job.record_error(item, reason)
                job.bad()
            return {}
        job.fail(
            f"The worker running this job was lost {lost} times in a row; batchflow stopped "
            "retrying so that it cannot loop forever."
        )
        return {**self._end(handler, job, Status.FAILED), "stalled": 1}

    def _end(self, handler: Handler | None, job: Job, status: Status) -> dict[str, Any]:
        """The fields that end a job, after its handler's callbacks (part of this last step)."""
        updates: dict[str, Any] = {"status": status.value}
        if handler is not None and status in _CANCELABLE_ENDINGS and not self._seal(job):
            # A cancel came first: the commit turns this ending into the undo it asked for, so
            # the job did not complete (or stop) and those callbacks must not run.
            return updates
        total = job.total
        if status in (Status.STOPPED, Status.CANCELED) and total is not None:
            updates["skipped"] = max(0, total - job.units_processed)
        if status is Status.STOPPED:
            job.add_message(f"Stopped after {job.units_processed} units; the work done is kept.")
        elif status is Status.CANCELED:
            job.add_message("Canceled; the work done was undone.")
        if handler is not None:
            hooks = {
                Status.COMPLETED: [handler.on_complete],
                Status.FAILED: [handler.on_failure],
            }.get(status, [])
            for hook in [*hooks, handler.on_finish]:
                try:
                    hook(job)
                except Exception as exc:  # noqa: BLE001 - a callback cannot undo the ending
                    log.exception("%s of job %s raised", hook.__name__, job.id)
                    job.add_message(f"{hook.__name__} failed: {error_message(exc)}")
        return updates

    def _seal(self, job: Job) -> bool:
        """Record that this step ends the job, so that a cancel arriving from now on is refused
        rather than turning an ending whose callbacks already ran into an undo. False if a cancel
        came first or the lease is gone: then the ending's callbacks must not run."""
        now = time.time()
        try:
            seen = self.store.report(
                job.id,
                job.seq,
                worker_id(),
                now,
                {"set": {"ending": str(job.seq)}},
                _ms(now + self.settings.lease_seconds),
            )
        except Exception:  # noqa: BLE001 - Redis blinked: end anyway; the commit still decides
            log.warning("could not mark job %s as ending", job.id, exc_info=True)
            return True
        if seen is None:
            job._lost = True
            return False
        return seen[0] != Status.CANCELING.value

    # -- cleanup and maintenance ---------------------------------------------------------------

    def request_cleanup(self, job_id: str) -> None:
        """Ask a worker to run the job's ``cleanup_job`` (after its file was downloaded).

        :raises InvalidTransition: the job has not ended yet.
        """
        state = self.state(job_id)
        if not state.status.terminal:
            raise InvalidTransition("The job is still running; stop it before cleaning up.")
        if state.fields.get("cleaned") != "1":
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
            handler = self.registry.get(fields.get("handler", "")).create()
            handler.cleanup_job(Job(fields, files_dir=self.settings.files_dir))
        except Exception:  # noqa: BLE001 - logged; cleanup is not retried
            log.exception("cleanup of job %s failed", job_id)
        return True

    def maintain(self, now: float | None = None, *, force: bool = False) -> dict[str, int]:
        """Recover overdue steps and clean expired jobs. Runs in every worker; one per interval
        does the work (a lock in Redis). Returns counts of what it did."""
        now = time.time() if now is None else now
        s = self.settings
        done = {"requeued": 0, "lost": 0, "cleaned": 0, "finished": 0}
        if not force and not self.store.try_lock("maintenance", s.maintenance_interval * 0.8):
            return done
        for job_id, status, deadline_ms in self.store.active_jobs():
            if status is None or status in TERMINAL:
                self.store.finish(job_id, now if status is None else now + s.job_ttl)
                done["finished"] += 1
                continue
            if status == Status.PAUSED.value or deadline_ms > _ms(now):
                continue  # the common case costs nothing more than the pipelined read
            recovered = self.store.recover(job_id, _ms(now), _ms(now + s.queue_timeout))
            if recovered is None:
                continue
            seq, lost = recovered
            done["requeued"] += 1
            done["lost"] += lost
            log.warning(
                "job %s: step %s overdue (%s); re-enqueued",
                job_id,
                seq,
                "worker lost" if lost else "never claimed",
            )
            with contextlib.suppress(Exception):
                self._dispatch().enqueue_step(job_id, seq)
        for job_id in self.store.due_for_cleaning(now):
            self.cleanup(job_id)
            owner = None
            with contextlib.suppress(JobNotFound):
                owner = self.state(job_id).owner
            self.store.delete_job(job_id, owner)
            done["cleaned"] += 1
        return done


@dataclasses.dataclass
class _Watched:
    engine: Engine
    job: Job
    worker: str
    interval: float
    due: float
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class Heartbeat:
    """One daemon thread per process that keeps running steps' leases alive and sends one-shot
    jobs' live progress, so a long step is not taken for a dead one."""

    def __init__(self) -> None:
        self._watched: dict[int, _Watched] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next_wake = 0.0
        self._pid: int | None = None

    @contextlib.contextmanager
    def watch(self, engine: Engine, job: Job, worker: str, interval: float) -> Iterator[None]:
        entry = _Watched(engine, job, worker, interval, time.monotonic() + interval)
        with self._lock:
            self._watched[id(entry)] = entry
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._next_wake = 0.0
                threading.Thread(target=self._run, name="batchflow-heartbeat", daemon=True).start()
            # Most steps end long before their first beat: wake the thread only if this one is
            # due before the thread means to wake anyway (a thread switch per step costs).
            wake = entry.due < self._next_wake
        if wake:
            self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(id(entry), None)
            with entry.lock:  # a beat in progress finishes before the step commits
                pass

    def _run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                entries = list(self._watched.values())
            now = time.monotonic()
            for entry in entries:
                if entry.due <= now:
                    entry.due = now + entry.interval
                    self._beat(entry)
            with self._lock:
                upcoming = [e.due for e in self._watched.values()]
                # Sleep until the next beat is due, or until a step due sooner is watched.
                wait = max(0.005, min(upcoming) - time.monotonic() if upcoming else 5.0)
                self._next_wake = time.monotonic() + wait
            self._wake.wait(wait)

    def _beat(self, entry: _Watched) -> None:
        with entry.lock:
            job, engine = entry.job, entry.engine
            payload = job._drain_live() if job._live else None
            lease = time.time() + engine.settings.lease_seconds
            try:
                seen = engine.store.report(
                    job.id, job.seq, entry.worker, time.time(), payload, _ms(lease)
                )
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next interval
                log.warning("heartbeat for job %s failed", job.id, exc_info=True)
                return
            if seen is None:
                job._lost = True
            else:
                job._seen_status = seen[0]
