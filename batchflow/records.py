"""What the store's step protocol answers: a claim, a commit, a renewal's view of the job, and
the jobs (and lanes) maintenance watches. Plain records; :mod:`batchflow.store` builds them."""

from __future__ import annotations

import dataclasses

from .schema import WAITING_STATUSES, ClaimCode


@dataclasses.dataclass
class Claim:
    """What CLAIM returned: ``code`` and, when it is ``OK``, the job and this step's ids."""

    code: ClaimCode
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    ids: list[str] = dataclasses.field(default_factory=list)
    bad_flags: list[bool] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ActiveJob:
    """A job maintenance watches: its status (None if its state is gone), the deadline of its
    step (the lease's end while a worker holds it), and the worker holding it ("" if none)."""

    id: str
    status: str | None
    deadline_ms: int
    lease_owner: str
    notify_due_ms: int = 0  # an ended job's notifications are pending, due from then (ms)
    lane: int = 0  # one lane of a job in lanes (its deadline and holder); 0: the job's own chain

    def waiting_since(self, queue_timeout: float, now: float) -> float | None:
        """When this step was sent to the workers if it waits for one now, else None: no
        worker holds it, and its deadline is the one a step gets when it is sent
        (``BATCHFLOW_QUEUE_TIMEOUT`` after it is due). A step not due yet (a countdown) or
        held by a worker does not wait; nor do a paused job, a preview awaiting Confirm, an
        ended job, or the own chain of a job in lanes (it waits for its lanes, not a worker)."""
        if self.lease_owner or self.status not in WAITING_STATUSES:
            return None
        since = self.deadline_ms / 1000 - queue_timeout
        return since if since <= now else None


@dataclasses.dataclass(frozen=True)
class Committed:
    """What COMMIT did: the step's chain's new ``seq`` and the job's ``status``; ``replicated`` is
    False when the replicas the store waits for did not all acknowledge the commit in time.
    ``main`` is the seq of the job's own chain when a job in lanes needs its step now (its last
    lane ended, or its own chain goes on to make or wake its lanes), else None."""

    seq: int
    status: str
    replicated: bool = True
    main: int | None = None


@dataclasses.dataclass(frozen=True)
class Seen:
    """What a renewal of a step's lease saw of the job: its status and pending signal."""

    status: str
    signal: str
