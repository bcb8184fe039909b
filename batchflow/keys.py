"""Redis key names: one builder for every key batchflow writes, hash-tagged per job."""

from __future__ import annotations

import hashlib
import re
import secrets

from .exceptions import JobNotFound

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def valid_job_id(job_id: object) -> bool:
    """Whether ``job_id`` has the shape of an id batchflow issues; anything else is unknown."""
    return isinstance(job_id, str) and bool(JOB_ID_RE.match(job_id))


def new_job_id() -> str:
    """22 random URL-safe characters, never starting with "-" or "_" (a command line would take
    ``-abc`` for an option: ``flask batchflow stop -abc`` must work)."""
    while True:
        job_id = secrets.token_urlsafe(16)
        if job_id[0].isalnum():
            return job_id


def checked_job_id(job_id: str) -> str:
    """``job_id`` if it has the shape of an id batchflow issues, else the unknown job's error."""
    if not valid_job_id(job_id):
        raise JobNotFound(str(job_id)[:80])
    return job_id


def _digest(name: str) -> str:
    # Owners are arbitrary strings (emails, ids); a digest keeps the key's alphabet fixed.
    return hashlib.sha256(name.encode()).hexdigest()[:32]


class Keys:
    """Builds every Redis key batchflow uses; no other code formats a key.

    Job ids must have been checked with :func:`valid_job_id` (the engine does, once).

    :param prefix: the configured ``BATCHFLOW_KEY_PREFIX``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _job_key(self, job_id: str, part: str) -> str:
        return f"{self.prefix}:{{{job_id}}}:{part}"

    def job(self, job_id: str) -> str:
        return self._job_key(job_id, "job")

    def items(self, job_id: str) -> str:
        return self._job_key(job_id, "items")

    def results(self, job_id: str) -> str:
        return self._job_key(job_id, "results")

    def errors(self, job_id: str) -> str:
        return self._job_key(job_id, "errors")

    def undo_errors(self, job_id: str) -> str:
        return self._job_key(job_id, "undo_errors")

    def messages(self, job_id: str) -> str:
        return self._job_key(job_id, "messages")

    def lanes(self, job_id: str) -> str:
        """A job in lanes: each lane's step fields, named ``<lane>:<field>``."""
        return self._job_key(job_id, "lanes")

    def notifying(self, job_id: str) -> str:
        """The lock held while a process delivers the job's notifications (it expires)."""
        return self._job_key(job_id, "notifying")

    def channel(self, job_id: str) -> str:
        return self._job_key(job_id, "events")

    def meter(self, job_id: str) -> str:
        """The job's meter: its steps' counters, a BITFIELD string (see :mod:`.meter`)."""
        return self._job_key(job_id, "meter")

    def all_of(self, job_id: str) -> list[str]:
        """Every key one job may own (the channel is not a key)."""
        return [
            self.job(job_id),
            self.items(job_id),
            self.results(job_id),
            self.errors(job_id),
            self.undo_errors(job_id),
            self.messages(job_id),
            self.lanes(job_id),
            self.meter(job_id),
        ]

    @property
    def active(self) -> str:
        """Jobs not yet terminal, scored by creation time: what maintenance watches."""
        return f"{self.prefix}:index:active"

    @property
    def meter_totals(self) -> str:
        """The figures of the jobs that left the active index, by handler: a hash in the
        index's own slot (its hash tag is the index's name; see :mod:`.meter`)."""
        return f"{self.prefix}:meter:{{{self.active}}}"

    @property
    def expiring(self) -> str:
        """Terminal jobs, scored by the time their state and output should be cleaned."""
        return f"{self.prefix}:index:expiring"

    @property
    def all_jobs(self) -> str:
        return f"{self.prefix}:index:all"

    def owner(self, owner: str) -> str:
        return f"{self.prefix}:index:owner:{_digest(owner)}"

    def owner_active(self, owner: str) -> str:
        """The owner's active jobs as admission counts them (see :mod:`batchflow.admission`)."""
        return f"{self.prefix}:index:owner-active:{_digest(owner)}"

    def unseen(self, owner: str) -> str:
        """The owner's ended jobs they have not seen yet, scored by when each ended."""
        return f"{self.prefix}:unseen:{_digest(owner)}"

    def streams(self, identity: str) -> str:
        """The event streams ``identity`` holds open, scored by the end of their lease."""
        return f"{self.prefix}:streams:{_digest(identity)}"

    def worker(self, worker_id: str) -> str:
        """A worker process's sign of life: it exists while the process runs steps and lives."""
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def fleet(self) -> str:
        """The workers seen, scored by when each last announced itself (see :mod:`.fleet`)."""
        return f"{self.prefix}:{{fleet}}:seen"

    def fleet_worker(self, name: str) -> str:
        """One worker's announcement (it expires); in the fleet index's slot."""
        return f"{self.prefix}:{{fleet}}:worker:{_digest(name)}"

    def history(self, handler: str) -> str:
        """A handler's run history (see :mod:`.history`), in one slot with the others."""
        return f"{self.prefix}:{{history}}:runs:{_digest(handler)}"

    @property
    def history_handlers(self) -> str:
        """The handlers that have a run history, scored by their last run's end."""
        return f"{self.prefix}:{{history}}:handlers"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"
