"""The job's vocabulary: statuses (and, as the code moves here, hash fields, signals and codes).

Every other module, and the Lua scripts, take these names from here.
"""

from __future__ import annotations

import enum


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

    ``completed``, ``failed``, ``stopped`` and ``canceled`` are terminal.
    """

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    CANCELING = "canceling"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.STOPPED, Status.CANCELED)
