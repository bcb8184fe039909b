"""The job's vocabulary: statuses (and, as the code moves here, hash fields, signals and codes).

Every other module, and the Lua scripts, take these names from here.
"""

from __future__ import annotations

import enum
import json
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
