"""What a step works on: the ids CLAIM sliced, or its job's source's next entries (a cursor
walk), and the source's plan, fixed when the job is created. The step runner
(:mod:`batchflow.steps`) calls these between the claim and the handler."""

from __future__ import annotations

import json

from .handlers import Handler
from .i18n import N_, Message
from .job import Job
from .schema import F, Kind, Status, as_json
from .sources import Entry, Source

#: The error of an id a retry looked up in the job's source and did not find.
GONE = N_("This item no longer exists.")


def plan_work(handler: Handler, job: Job) -> None:
    """Ask the job's source what its walk covers, once, and keep that with the job."""
    plan = source_of(handler, job).plan()
    job.buffer.set(F.SOURCE_PLAN, json.dumps(plan.state))
    job.set_total(plan.total)


def feed(handler: Handler, job: Job, batch: int, *, keep_ids: bool = False) -> None:
    """Give the step its entries: the source's next ones after the committed cursor, or the ids
    CLAIM sliced (looked up in the source, for a job that has one: a retry)."""
    b = job.buffer
    if b.committed(F.ITEMS_SOURCE) == "source":
        state = as_json(b.committed(F.SOURCE_PLAN), {})
        cursor = as_json(b.committed(F.CURSOR), None)
        entries = source_of(handler, job).read(state, cursor, batch)
        job.load_entries(entries, last=len(entries) < batch, walking=True, keep_ids=keep_ids)
    elif b.committed(F.KIND) == Kind.ITEMS:
        last = not job.items or job.units_processed + len(job.items) >= (job.total or 0)
        entries = job.entries
        if handler.walks_source() and job.items:
            found = {entry.id: entry for entry in source_of(handler, job).fetch(job.items)}
            entries = [found.get(item) or Entry(item, None, None, GONE) for item in job.items]
        job.load_entries(entries, last=last)


def settle_total(job: Job) -> None:
    """When a source's walk completes, its total becomes what was met: entries removed while the
    job ran were not found (said in a message), and the bar ends full."""
    planned, met = job.total, job.units_processed
    if job.buffer.ending is not Status.COMPLETED or job.buffer.value(F.SOURCE_PLAN) is None:
        return
    if planned is not None and met < planned:
        gone = Message(
            N_("%(gone)s of the %(counted)s counted at the start were gone when reached."),
            gone=planned - met,
            counted=planned,
        )
        job.add_message(gone)
    job.set_total(met)


def source_of(handler: Handler, job: Job) -> Source:
    """The handler's source for this job, checked to be one."""
    source = handler.source(job)
    if not isinstance(source, Source):
        raise TypeError(
            f"{type(handler).__name__}.source(job) returned {type(source).__name__}, "
            "not a batchflow Source."
        )
    return source
