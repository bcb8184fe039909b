"""Lanes: one item job walked by several chains of steps at once, committing into the one job.

A job in lanes (``ItemsJob.lanes``, or ``lanes=`` at start within ``ItemsJob.max_lanes``) begins
like any job, in its own chain: the create step (and a preview, if the handler has one) runs
there. The own chain's first step in the run phase cuts the job's ids into contiguous ranges, one
per lane, and sends each lane's first step. Each lane is then a chain of its own: its own ``seq``
and lease (the fence), its own position in its range, batch size, ``careful_until`` and
checkpoints, kept in the job's lanes hash (see :mod:`batchflow.scripts`); its steps commit their
counters, messages and per-id outcomes into the one job.

The own chain waits while lanes run. A lane that reaches the end of its range, or answers a stop,
or has undone its range after a cancel, ends; the commit that ends the last open lane sends the own
chain's next step, which looks at every lane (:func:`coordinate`): lanes that must go on (stopped
ones after Continue, ended ones after a cancel: their range is undone newest first) are opened
again, and once none must, that step ends the job, once, running its callbacks. Pause and resume
reach every lane the same way: the job's status is one, and a resume sends the own chain's step,
which wakes each open lane.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .exceptions import InvalidParams
from .i18n import gettext as _
from .schema import F, Status, as_int


@dataclasses.dataclass(frozen=True)
class LanePlan:
    """What the own chain's step does for a job in lanes: lanes to make (``[first, size,
    batch]``), lanes to open again, ``(lane, seq)`` steps to send, or the job's ``ending``."""

    make: list[list[int]] = dataclasses.field(default_factory=list)
    reopen: list[int] = dataclasses.field(default_factory=list)
    wake: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    ending: Status | None = None

    def payload(self) -> dict[str, list[int] | list[list[int]]]:
        """The COMMIT payload's part that makes or reopens lanes."""
        extra: dict[str, list[int] | list[list[int]]] = {}
        if self.make:
            extra["make_lanes"] = self.make
        if self.reopen:
            extra["reopen_lanes"] = self.reopen
        return extra


def lanes_for(handler_class: type, asked: Any, items_source: str) -> int:
    """How many lanes a new job runs in: ``asked`` (a start's ``lanes``) within the handler's
    ``max_lanes``, else its ``lanes``; 1 for a job that has no ids of its own to cut.

    :raises InvalidParams: ``asked`` is not a whole number from 1 to the handler's bound.
    """
    default = getattr(handler_class, "lanes", 1)
    most = getattr(handler_class, "max_lanes", None) or default
    if asked is not None and (
        isinstance(asked, bool) or not isinstance(asked, int) or not 1 <= asked <= most
    ):
        raise InvalidParams(_("lanes must be a whole number from 1 to %(most)s.", most=most))
    has_ids = items_source in ("request", "handler")
    return (default if asked is None else asked) if has_ids else 1


def partition(total: int, lanes: int, batch: int) -> list[list[int]]:
    """``total`` ids cut into at most ``lanes`` contiguous ranges of nearly equal size:
    ``[[first, size, batch], ...]`` (no empty range)."""
    count = max(1, min(lanes, total))
    size, extra = divmod(total, count)
    ranges, first = [], 0
    for n in range(count):
        length = size + (1 if n < extra else 0)
        if length:
            ranges.append([first, length, batch])
        first += length
    return ranges


def coordinate(
    status: Status, lanes: int, total: int, batch: int, records: dict[int, dict[str, str]]
) -> LanePlan:
    """What the own chain of a job in lanes does, given the job's ``status`` and its lanes'
    records (``{lane: fields}``, empty before they are made)."""
    if not records:
        if status is Status.RUNNING and total > 0:
            made = partition(total, lanes, batch)
            return LanePlan(make=made, wake=[(n, 0) for n in range(1, len(made) + 1)])
        return LanePlan(ending=_ending(status, set()))
    ended = {n: r.get(F.LANE_STATE, "") for n, r in records.items() if r.get(F.LANE_STATE)}
    open_lanes = sorted(set(records) - set(ended))
    if status is Status.RUNNING:  # Continue: the lanes a stop ended go on
        reopen = sorted(n for n, state in ended.items() if state == Status.STOPPED.value)
    elif status is Status.CANCELING:  # every lane's range is undone
        reopen = sorted(n for n, state in ended.items() if state != Status.CANCELED.value)
    else:
        reopen = []
    wake = [(n, as_int(records[n].get(F.SEQ))) for n in sorted(open_lanes + reopen)]
    if wake:
        return LanePlan(reopen=reopen, wake=wake)
    return LanePlan(ending=_ending(status, set(ended.values())))


def _ending(status: Status, states: set[str]) -> Status:
    """How a job whose lanes have all ended (in ``states``) ends."""
    if status is Status.CANCELING:
        return Status.CANCELED
    if status is Status.STOPPING and states - {Status.COMPLETED.value}:
        return Status.STOPPED
    return Status.COMPLETED
