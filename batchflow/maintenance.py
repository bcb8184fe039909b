"""Maintenance: what keeps jobs moving when workers die and cleans up after jobs that ended.

Every worker runs it every ``BATCHFLOW_MAINTENANCE_INTERVAL`` (a lock in Redis lets one of them do
the work per interval), ``flask batchflow maintain`` runs it by hand. It

- re-enqueues a step whose worker died (it gave no sign of life for ``BATCHFLOW_WORKER_TTL``, or
  its lease expired) or that never reached a worker (``BATCHFLOW_QUEUE_TIMEOUT``);
- sends the ``notify`` task for a job that ended but whose notifications are still pending past
  ``notify_due`` (its worker died before delivering them, or a channel waits for a retry), and
  moves jobs that ended, told, out of the active index;
- runs ``cleanup_job`` for jobs past ``BATCHFLOW_JOB_TTL`` and deletes their state.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from .config import Settings
from .history import History
from .inbox import Deliveries
from .logs import about_job
from .meter import Meter
from .notify import retire
from .records import ActiveJob
from .schema import Signal, SignalCode, Status, is_terminal, ms
from .store import Store

log = logging.getLogger("batchflow")


@dataclasses.dataclass
class Done:
    """What one round of maintenance did."""

    requeued: int = 0  # steps enqueued again
    lost: int = 0  # ... of which a worker had claimed and lost
    cleaned: int = 0  # expired jobs cleaned and deleted
    finished: int = 0  # ended (or vanished) jobs taken out of the active index
    notified: int = 0  # ended jobs whose pending notifications were sent to a worker

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Maintenance:
    """One round of maintenance at a time.

    :param settings: deployment settings.
    :param store: job state.
    :param enqueue_step: sends step ``seq`` of a job (of its lane ``lane``) to the workers.
    :param cleanup: runs an expired job's ``cleanup_job`` (once); returns the job's owner, or None
        if its state is gone.
    :param notify: sends an ended job's pending notifications to a worker.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        enqueue_step: Callable[[str, int, int], None],
        cleanup: Callable[[str], str | None],
        notify: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.enqueue_step = enqueue_step
        self.cleanup = cleanup
        self.notify = notify
        self.deliveries = Deliveries(store.client, store.keys)
        #: Each handler's last runs: maintenance keeps a job's record as the job leaves the
        #: active index.
        self.history = History(
            store.client, store.keys, settings.history_runs, settings.history_days
        )
        self.meter = Meter(store.client, store.keys)

    def run(self, now: float | None = None, *, force: bool = False) -> Done:
        """One round; unless ``force``, only the first caller per interval (across every worker)
        does the work."""
        now = time.time() if now is None else now
        done = Done()
        interval = self.settings.maintenance_interval
        if not force and not self.store.try_lock("maintenance", interval * 0.8):
            return done
        self._recover_overdue(now, done)
        self._clean_expired(now, done)
        return done

    def _recover_overdue(self, now: float, done: Done) -> None:
        s = self.settings
        jobs = self.store.active_jobs()
        dead = self._dead_workers(jobs, now)
        for job in jobs:
            if job.status is not None and is_terminal(job.status) and job.notify_due_ms:
                self._notify(job.id, job.notify_due_ms, now, done)
                continue
            if job.status is None or is_terminal(job.status):
                if job.status is not None:
                    retire(self.history, self.meter, self.history.fields_of(job.id), now)
                self.store.finish(job.id, now if job.status is None else now + s.job_ttl)
                done.finished += 1
                continue
            if job.status == Status.PAUSED.value:
                continue
            if job.status == Status.AWAITING.value:
                if job.deadline_ms <= ms(now):  # BATCHFLOW_CONFIRM_TIMEOUT passed: discard it
                    self._discard(job.id, now, done)
                continue
            holder_died = job.lease_owner in dead
            if job.deadline_ms > ms(now) and not holder_died:
                continue  # the common case costs nothing more than the pipelined read
            recovered = self.store.recover(
                job.id,
                ms(now),
                ms(now + s.queue_timeout),
                job.lease_owner if holder_died else "",
                job.lane,
            )
            if recovered is not None:
                self._requeue(job.id, *recovered, done, lane=job.lane)

    def _dead_workers(self, jobs: list[ActiveJob], now: float) -> set[str]:
        """Workers that hold a live lease but have given no sign of life for
        ``BATCHFLOW_WORKER_TTL``: their process died (or froze), and their steps are taken over
        without waiting for the lease to run out. A lease renewed more recently than that is
        left alone, so a worker that has just claimed its first step is never taken for dead."""
        s = self.settings
        settled = ms(now - s.worker_ttl + s.lease_seconds)  # renewed before now - worker_ttl
        holders = {
            job.lease_owner
            for job in jobs
            if job.lease_owner and ms(now) < job.deadline_ms <= settled
        }
        return holders - self.store.living(holders)

    def _notify(self, job_id: str, due_ms: int, now: float, done: Done) -> None:
        """Send the ``notify`` task for an ended job whose notifications are due; ``notify_due``
        moves on by ``BATCHFLOW_QUEUE_TIMEOUT`` meanwhile, so the task is sent again only if it
        was lost (the task's lock keeps two deliveries apart anyway)."""
        if due_ms > ms(now):
            return
        self.deliveries.postpone(job_id, ms(now + self.settings.queue_timeout))
        try:
            self.notify(job_id)
        except Exception:  # noqa: BLE001 - tried again after the lock expires
            log.exception("job %s: could not send its pending notifications to a worker", job_id)
            return
        done.notified += 1

    def _discard(self, job_id: str, now: float, done: Done) -> None:
        """Cancel a preview nobody confirmed in time; nothing was changed."""
        deadline = ms(now + self.settings.queue_timeout)
        code, _, seq = self.store.signal(job_id, Signal.CANCEL, now, deadline)
        if code is SignalCode.ENQUEUE:
            log.info(
                "job %s was not confirmed in time (BATCHFLOW_CONFIRM_TIMEOUT): discarded", job_id
            )
            self._requeue(job_id, seq, False, done)

    def _requeue(self, job_id: str, seq: int, lost: bool, done: Done, lane: int = 0) -> None:
        with about_job(job_id, step=seq, lane=lane):
            self._send_again(job_id, seq, lost, done, lane)

    def _send_again(self, job_id: str, seq: int, lost: bool, done: Done, lane: int) -> None:
        done.requeued += 1
        done.lost += lost
        if lost:
            self.meter.count_recovered()
        why = "its worker was lost" if lost else "it was never claimed"
        try:
            self.enqueue_step(job_id, seq, lane)
        except Exception:  # noqa: BLE001 - overdue again after the fresh deadline
            log.exception(
                "job %s: step %s is overdue (%s) and could not be re-enqueued; "
                "maintenance tries again after BATCHFLOW_QUEUE_TIMEOUT",
                job_id,
                seq,
                why,
            )
            return
        log.warning("job %s: step %s was overdue (%s); re-enqueued", job_id, seq, why)

    def _clean_expired(self, now: float, done: Done) -> None:
        for job_id in self.store.due_for_cleaning(now):
            owner = self.cleanup(job_id)
            self.store.delete_job(job_id, owner)
            done.cleaned += 1
