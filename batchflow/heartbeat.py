"""The heartbeat: one daemon thread per process that keeps running steps' leases alive, sends
one-shot jobs' live progress, and says the process is alive while it runs steps, so that a long
step is not taken for a dead one, and a dead worker's step is taken over in seconds."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator

from .job import Job
from .logs import about_job
from .schema import ms
from .store import Store

log = logging.getLogger("batchflow")

_worker: tuple[int, str] | None = None


def worker_id() -> str:
    """This process's identity in leases: host, pid and a random tag (fork-safe)."""
    global _worker
    pid = os.getpid()
    if _worker is None or _worker[0] != pid:
        _worker = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}")
    return _worker[1]


@dataclasses.dataclass
class _Watched:
    job: Job
    worker: str
    interval: float  # between beats
    live: bool  # a one-shot job: send all it reported at every beat, and renew every beat
    due: float  # the next beat
    renew_due: float  # the lease's next renewal, when a beat has nothing to send
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    ended: bool = False  # the step left the watch: a beat that comes late sends nothing


class Heartbeat:
    """Renews the lease of every step this process runs, every ``interval`` of that step.

    While it watches a step, it also says every ``worker_ttl / 4`` that this process is alive
    (one command per process, not per step): maintenance takes over the steps of a worker that
    said nothing for ``worker_ttl`` without waiting for their leases to run out.

    :param store: where the leases are.
    :param lease_seconds: how long each renewal extends a lease (``BATCHFLOW_LEASE_SECONDS``).
    :param worker_ttl: how long a sign of life lasts (``BATCHFLOW_WORKER_TTL``).
    """

    def __init__(self, store: Store, lease_seconds: float, worker_ttl: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.worker_ttl = worker_ttl
        self._alive_every = worker_ttl / 4
        self._alive_due = 0.0
        self._watched: dict[int, _Watched] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next_wake = 0.0
        self._busy_until = 0.0
        self._idle_wait = 0.1
        self._pid: int | None = None

    @contextlib.contextmanager
    def watch(self, job: Job, worker: str, interval: float, *, live: bool) -> Iterator[None]:
        """Keep ``job``'s lease while the block runs, and every ``interval`` commit what the step
        reported up to its last checkpoint; with ``live``, everything it reported (a one-shot
        job's progress)."""
        now = time.monotonic()
        entry = _Watched(job, worker, interval, live, now + interval, now + self.lease_seconds / 3)
        with self._lock:
            self._watched[id(entry)] = entry
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._next_wake = 0.0
                self._alive_due = 0.0
                threading.Thread(target=self._run, name="batchflow-heartbeat", daemon=True).start()
            # Most steps end long before their first beat: wake the thread only if this one is
            # due before the thread means to wake anyway, or if the process's sign of life is
            # due (a thread switch per step costs).
            wake = min(entry.due, self._alive_due) < self._next_wake
        if wake:
            self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(id(entry), None)
            # A beat in progress finishes before the step commits; one that comes later (the
            # thread listed the entry before it left) must send nothing: the commit carries what
            # is ready, and a checkpoint of the same units applied first would count them twice.
            with entry.lock:
                entry.ended = True

    def _run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                entries = list(self._watched.values())
            now = time.monotonic()
            if entries and now >= self._alive_due:
                self._alive_due = now + self._alive_every
                self._say_alive({entry.worker for entry in entries})
            for entry in entries:
                if entry.due <= now:
                    entry.due = now + entry.interval
                    self._beat(entry)
            with self._lock:
                upcoming = [e.due for e in self._watched.values()]
                if upcoming:
                    upcoming.append(self._alive_due)
                if upcoming:
                    self._busy_until = time.monotonic() + 1.0
                # Sleep until the next beat is due, or until a step due sooner is watched. While
                # steps come and go, keep a short pace rather than being woken for each one.
                idle = self._idle_wait if time.monotonic() < self._busy_until else 5.0
                wait = max(0.005, min(upcoming) - time.monotonic() if upcoming else idle)
                self._next_wake = time.monotonic() + wait
            self._wake.wait(wait)

    def _say_alive(self, workers: set[str]) -> None:
        for worker in workers:
            try:
                self.store.mark_alive(worker, self.worker_ttl)
            except Exception:  # noqa: BLE001 - retried at the next interval
                log.warning("could not say that worker %s is alive", worker, exc_info=True)

    def _beat(self, entry: _Watched) -> None:
        with entry.lock:
            if entry.ended:
                return
            job = entry.job
            drained = job.buffer.drain_live(everything=entry.live)
            if drained is None and not entry.live and time.monotonic() < entry.renew_due:
                return  # nothing to commit, and the lease is fresh enough
            entry.renew_due = time.monotonic() + self.lease_seconds / 3
            now = time.time()
            try:
                seen = self.store.renew(
                    job.id,
                    job.seq,
                    entry.worker,
                    now,
                    ms(now + self.lease_seconds),
                    drained[1] if drained else None,
                    job.lane,
                )
            except Exception:  # noqa: BLE001 - retried at the next beat (or sent with the commit)
                with about_job(job.id, handler=job.handler, step=job.seq, lane=job.lane):
                    log.warning("heartbeat for job %s failed", job.id, exc_info=True)
                return
            if seen is None:
                job.lease.mark_lost()
                return
            if drained:
                job.buffer.confirm(drained[0])
            job.lease.saw(seen.status, seen.signal)
