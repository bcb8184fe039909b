"""The handler base classes users extend.

- :class:`Handler`: ``create_job`` runs once, ``continue_job`` step after step until it calls
  ``job.complete()``, ``cleanup_job`` once when the output is no longer needed.
- :class:`~batchflow.files.FileJob` (in its own module): writes a file (CSV by default) that the
  user downloads, exactly once per row even when a step is cut off and run again.
- :class:`ItemsJob`: one ``change`` per id, good and bad counts, per-id results and errors, and
  ``undo`` for Cancel.
- :class:`TaskJob`: one ``run(job)`` call that reports as it goes.

Handlers are instantiated afresh for every step: keep state on the job (``job.data``), not on
``self``. Every step runs in a worker and may run again if its worker dies before the step's
commit; counters never double-count, but a step's own side effects (a database write, an email)
may repeat for the step that was cut off.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from .exceptions import UserError
from .failures import describe_failure
from .i18n import N_, Message
from .job import Job, StepResponse
from .schema import F, Kind, Phase, Status
from .sources import Entry, Source, all_none, items_of

StepResult = StepResponse | str | None

#: Where a preview keeps its sample and first errors in ``job.data`` while it runs.
ASSESSMENT_KEY = "_assessment"
#: How many of the items a preview found it would reject it shows.
PREVIEW_ERRORS = 10


class Handler:
    """Base class of every job handler; subclass it (or a kind below) and register it by name.

    Class attributes configure the job:

    :cvar labels: texts for the progress page (``title``, ``running``, ``completed``, ``good``...);
        anything left out gets a default.
    :cvar description: one line saying what the job does, shown beside its title in the list of
        jobs a user may start (``/jobs/catalogue``); empty (the default) uses the first paragraph
        of the class's own docstring.
    :cvar can_stop: offer Stop (halt after the current step, keep the work).
    :cvar can_cancel: offer Cancel (halt, then undo the work: needs ``undo_job``).
    :cvar can_pause: offer Pause and Resume between steps.
    :cvar can_continue: offer Continue on a stopped job: it goes on as the same job from where
        it stopped (its skipped units run, its counters go on). ``on_finish`` runs at each
        ending, the stop's included.
    :cvar batch_size: a fixed step size; None (the default) adapts it so that a step takes about
        ``BATCHFLOW_STEP_TARGET`` seconds.
    :cvar step_delay: seconds to wait between steps (throttling), without holding a worker;
        ``job.defer(seconds)`` asks for a longer wait from inside a step (a backoff while the
        database is busy, say).
    :cvar params_form: a Flask-WTF form class describing the job's parameters; the web layer
        renders it as the job's start page and validates it.
    :cvar sensitive_params: parameter names masked wherever the job is shown.
    :cvar max_active_jobs: how many of this handler's jobs one owner may have active (not yet
        ended) at once, counted apart from their other jobs; 0 for no limit. None (the default)
        puts the handler's jobs in the owner-wide pool that ``BATCHFLOW_MAX_ACTIVE_JOBS`` limits.
        A start over the limit is refused with :class:`~batchflow.exceptions.LimitReached` (429).
    :cvar deduplicate: a start identical to one of the owner's active jobs (same handler,
        validated parameters and ids) returns that job instead of starting a second one.
    :cvar notify_email: email the owner when the job ends: True always, False never, None (the
        default) when they ask for it on the start form. Needs email turned on
        (``BATCHFLOW_NOTIFY_EMAIL``; see the README's Notifications).
    :cvar webhook_url: POST this handler's endings here (signed: see :mod:`batchflow.webhooks`)
        instead of to ``BATCHFLOW_WEBHOOK_URL``.
    """

    kind: ClassVar[Kind] = Kind.HANDLER
    labels: ClassVar[dict[str, str]] = {}
    description: ClassVar[str] = ""
    can_stop: ClassVar[bool] = True
    can_cancel: ClassVar[bool] = False
    can_pause: ClassVar[bool] = True
    can_retry: ClassVar[bool] = False
    can_continue: ClassVar[bool] = True
    batch_size: ClassVar[int | None] = None
    step_delay: ClassVar[float] = 0.0
    params_form: ClassVar[type | None] = None
    sensitive_params: ClassVar[tuple[str, ...]] = ()
    max_active_jobs: ClassVar[int | None] = None
    deduplicate: ClassVar[bool] = False
    notify_email: ClassVar[bool | None] = None
    webhook_url: ClassVar[str | None] = None

    def job_labels(self, params: dict[str, Any]) -> Mapping[str, str | Message]:
        """The labels of a job started with ``params`` (as validated): :attr:`labels` unless
        overridden. A label computed from the parameters is best a :class:`~batchflow.Message`,
        shown in each reader's language: ``{"title": Message("Exporting %(count)s contacts from
        %(city)s", count=n, city=city)}`` (mark the text for your catalogue)."""
        return self.labels

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check and normalise the parameters a job is started with, in the starting request.

        :raises InvalidParams: with a message for the person who sent them.
        """
        return params

    def create_job(self, job: Job) -> StepResult:
        """Set the job up, once, in a worker: count the units (``job.set_total``), open files."""
        return None

    def continue_job(self, job: Job, batch_size: int) -> StepResult:
        """Do about ``batch_size`` units of work and report them (``job.mark_processed``).

        Called step after step until it calls ``job.complete()`` (or ``job.fail()``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must define continue_job(job, batch_size)"
        )

    def undo_job(self, job: Job, batch_size: int) -> StepResult:
        """Undo about ``batch_size`` units of the work done, newest first, for Cancel.

        Called step after step until it calls ``job.complete()``; the job then ends canceled.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support cancel")

    def cleanup_job(self, job: Job) -> None:
        """Release what the job left behind. Runs once, after download or when the job expires."""

    def source(self, job: Job) -> Source | None:
        """Where an item or file job's work comes from, walked by a committed cursor instead of
        a list of ids (see :mod:`batchflow.sources`): a query, a CSV file, any resumable walk.
        Built afresh in the worker for every step. None (the default): ids, or ``continue_job``.
        """
        return None

    @classmethod
    def walks_source(cls) -> bool:
        """Whether the handler takes its work from :meth:`source`."""
        return cls.source is not Handler.source

    def before_step(self, job: Job) -> None:
        """Runs before ``create_job`` and every ``continue_job``; FileJob opens its file here."""

    def after_step(self, job: Job) -> None:
        """Runs after ``create_job`` and every ``continue_job`` return, as part of the step
        (before its commit); FileJob trims its file here when the job completes."""

    def on_complete(self, job: Job) -> None:
        """Runs in the worker when the job completes (part of its last step)."""

    def on_failure(self, job: Job) -> None:
        """Runs in the worker when the job fails (part of its last step)."""

    def on_finish(self, job: Job) -> None:
        """Runs in the worker when the job ends in any way, after ``on_complete``/``on_failure``."""

    @classmethod
    def summary(cls) -> str:
        """:attr:`description`, or else the first paragraph of the class's own docstring (not an
        inherited one) joined into one line, or ``""``."""
        text = (cls.description or cls.__doc__ or "").strip()
        return " ".join(text.split("\n\n")[0].split())

    @classmethod
    def capabilities(cls) -> list[str]:
        names = ("stop", "cancel", "pause", "retry", "continue")
        caps = [name for name in names if getattr(cls, f"can_{name}")]
        if not cls.can_stop and "continue" in caps:
            caps.remove("continue")  # only a stopped job continues
        if getattr(cls, "preview", False):
            caps.append("confirm")
        return caps


class ItemsJob(Handler):
    """The same change applied to many ids, counted good or bad.

    Ids come with the start request (a form list or a JSON array), or from :meth:`items` for sets
    too large to post; or the job walks its :meth:`~Handler.source` (a query, a CSV file) by a
    committed cursor, never copying it into Redis, and ``change`` receives what the source
    produces (a row, a CSV row's columns). Each step works on the next slice.

    ``change`` returning a value records it as that item's result; raising records it as bad,
    and the job goes on: a :class:`~batchflow.UserError`'s text is its message in the error report,
    any other exception a generic one with a reference (its text goes to the log). ``undo``
    (optional) reverses one change: defining it offers Cancel, which undoes every id that was
    changed, newest first.
    """

    kind: ClassVar[Kind] = Kind.ITEMS
    can_retry: ClassVar[bool] = True
    #: Preview, then confirm: the job first goes through its items with :meth:`assess`
    #: (changing nothing), then waits, holding no worker, until its owner confirms (or cancels,
    #: or ``BATCHFLOW_CONFIRM_TIMEOUT`` passes); the run then goes over the same items.
    preview: ClassVar[bool] = False
    #: How many items a preview keeps as its sample.
    sample_size: ClassVar[int] = 5
    #: How many lanes walk a job's ids at once: its steps run on that many workers in parallel,
    #: each lane over its own range, all counted in the one job (see :mod:`batchflow.lanes`).
    #: 1 (the default) is one chain of steps. A job that walks a :meth:`~Handler.source` has one.
    lanes: ClassVar[int] = 1
    #: The most lanes a start may ask for (``Engine.start(..., lanes=n)``, a start request's
    #: ``lanes``); None: ``lanes``. It bounds how many workers one job can take.
    max_lanes: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "can_cancel" not in cls.__dict__ and cls.undo is not ItemsJob.undo:
            cls.can_cancel = True

    def items(self, job: Job) -> Iterable[Any] | None:
        """Ids produced server-side, for sets too large to post; None means "from the request"."""
        return None

    def change(self, item: Any, job: Job) -> Any:
        """Change one item: an id, or what the job's source produced. Raise to count it bad; the
        return value (if not None) is kept as its result, under its id."""
        raise NotImplementedError(f"{type(self).__name__} must define change(item, job)")

    def undo(self, item_id: str, job: Job) -> None:
        """Reverse the change of the item with this id (a source's entries are undone by id);
        raise if it cannot be undone (reported, not hidden)."""
        raise NotImplementedError(f"{type(self).__name__} does not support cancel")

    def assess(self, item: Any, job: Job) -> Any:
        """In a preview: whether ``item`` would change, changing nothing. Return a short text
        saying what would happen to it (the preview shows the first ones as its sample), True,
        or a false value when nothing would change; raise to say it would be rejected (the
        preview shows the first such messages). By default every item would change."""
        return True

    def assess_job(self, job: Job, batch_size: int) -> StepResult:
        """A step of the preview: :meth:`assess` each of the step's entries."""
        for entry in job.entries:
            if job.lease_lost:
                return None
            if entry.error is None:
                verdict = self._call(self.assess, entry.item, job)
            else:
                verdict = UserError(entry.error)
            self._assessed(job, entry, verdict)
            job.checkpoint()
        if job.last_slice and not job.lease_lost:
            job.complete()
        return None

    def _assessed(self, job: Job, entry: Entry, verdict: Any) -> None:
        found = job.data.setdefault(ASSESSMENT_KEY, {"sample": [], "errors": []})
        if isinstance(verdict, BaseException):
            failure = describe_failure(verdict, f"job {job.id}: assess({entry.id!r})", item=True)
            if len(found["errors"]) < PREVIEW_ERRORS:
                found["errors"].append([entry.id, failure.shown])
            job.bad()
        elif verdict:
            if len(found["sample"]) < self.sample_size:
                found["sample"].append(verdict if isinstance(verdict, str) else entry.id)
            job.good()
        else:
            job.mark_processed()
        job.advance(entry)

    def change_batch(self, items: list[Any], job: Job) -> Sequence[Any]:
        """Change a step's whole slice at once (one ``UPDATE ... WHERE id IN (...)``, one
        pipelined call), returning one outcome per item, in order: a result (None for none),
        or an exception instance to count that item bad. Raising counts every item of the slice
        bad with that error. Not defined (the default): ``change`` is called for each item."""
        raise NotImplementedError

    @classmethod
    def changes_in_batches(cls) -> bool:
        return cls.change_batch is not ItemsJob.change_batch

    def continue_job(self, job: Job, batch_size: int) -> StepResult:
        if self.changes_in_batches():
            self._change_slice(job)
        else:
            for entry in job.entries:
                if job.lease_lost:  # another worker took this step over: change nothing more
                    return None
                if entry.error is None:
                    self._outcome(job, entry, self._call(self.change, entry.item, job))
                else:
                    self._outcome(job, entry, UserError(entry.error))
                job.checkpoint()
        if job.last_slice and not job.lease_lost:
            job.complete()
        return None

    def _change_slice(self, job: Job) -> None:
        items = items_of(job.entries)
        try:
            outcomes = list(self.change_batch(items, job))
        except Exception as exc:  # noqa: BLE001 - the slice is bad, the job goes on
            failure = describe_failure(exc, f"job {job.id}: change_batch", item=True)  # logged once
            outcomes = [UserError(failure.shown)] * len(items)
        if len(outcomes) != len(items):
            raise TypeError(
                f"{type(self).__name__}.change_batch returned {len(outcomes)} outcomes for "
                f"{len(items)} items: it must return one per item, in order."
            )
        if len(items) == len(job.entries) and all_none(outcomes):
            good = len(items)  # the usual slice: every item changed, nothing to keep
        else:
            found = iter(outcomes)
            good = sum(
                self._record(job, e, next(found) if e.error is None else UserError(e.error))
                for e in job.entries
            )
        # The slice counted, and the cursor moved past it, once.
        if good:
            job.good(good)
        if len(job.entries) > good:
            job.bad(len(job.entries) - good)
        job.advance(*job.entries)
        job.checkpoint()

    @staticmethod
    def _call(change: Any, item: Any, job: Job) -> Any:
        try:
            return change(item, job)
        except Exception as exc:  # noqa: BLE001 - the item is bad, the job goes on
            return exc

    @staticmethod
    def _record(job: Job, entry: Entry, outcome: Any) -> bool:
        """Keep ``entry``'s result, or its error (an exception); whether it went well."""
        if isinstance(outcome, BaseException):
            failure = describe_failure(outcome, f"job {job.id}: change({entry.id!r})", item=True)
            job.record_error(entry.id, failure.shown)
            return False
        if outcome is not None:
            job.record_result(entry.id, outcome)
        return True

    @classmethod
    def _outcome(cls, job: Job, entry: Entry, outcome: Any) -> None:
        """Count ``entry`` good (keeping a result) or bad (an exception), and move past it."""
        if cls._record(job, entry, outcome):
            job.good()
        else:
            job.bad()
        job.advance(entry)

    def undo_job(self, job: Job, batch_size: int) -> StepResult:
        for index, item_id in enumerate(job.items):
            if job.lease_lost:
                return None
            if job.item_was_bad(index):
                job.record_undone(1, 0, [])  # nothing was changed: nothing to undo
            else:
                try:
                    self.undo(item_id, job)
                except Exception as exc:  # noqa: BLE001 - reported in the job's undo errors
                    failure = describe_failure(exc, f"job {job.id}: undo({item_id!r})", item=True)
                    job.record_undone(1, 0, [[item_id, failure.shown]])
                else:
                    job.record_undone(1, 1, [])
            job.checkpoint()
        if not job.items or job.undo_position <= 0:
            job.complete()
        return None


class TaskJob(Handler):
    """One call that does the whole job and reports as it goes.

    ``run(job)`` may call ``job.set_total``, ``job.good``/``job.bad``, ``job.add_message`` and
    ``job.set_results``; the page sees it live (throttled to ``BATCHFLOW_PROGRESS_INTERVAL``). A
    heartbeat keeps the job's lease while ``run`` works. To honour Stop, check
    ``job.stop_requested()`` now and then and return early. If the worker dies, ``run`` starts
    again from the beginning with its counters reset, and the page says so; a ``run`` that keeps
    where it is in ``job.data`` and calls ``job.checkpoint()`` between units is resumed from its
    last checkpoint instead.
    """

    kind: ClassVar[Kind] = Kind.TASK
    can_pause: ClassVar[bool] = False
    can_continue: ClassVar[bool] = False
    batch_size: ClassVar[int | None] = 1

    def run(self, job: Job) -> StepResult:
        """Do the whole job."""
        raise NotImplementedError(f"{type(self).__name__} must define run(job)")

    def continue_job(self, job: Job, batch_size: int) -> StepResult:
        response = self.run(job)
        if not job.ended:
            job.complete()
        return response


def preview_ended(job: Job) -> dict[str, Any]:
    """The fields that end a preview: the job waits for its Confirm, holding no worker, showing
    what the preview found (``assessment``); its run starts from the first item, with the
    number assessed as its total."""
    found = job.data.pop(ASSESSMENT_KEY, {})
    assessed, changes, rejected = job.units_processed, job.good_count, job.bad_count
    assessment = {
        "assessed": assessed,
        "changes": changes,
        "rejected": rejected,
        "unchanged": assessed - changes - rejected,
        "sample": found.get("sample", []),
        "errors": found.get("errors", []),
    }
    if rejected:
        ready = N_(
            "Preview ready: %(changes)s of %(assessed)s would change, %(rejected)s would be "
            "rejected. Waiting for confirmation."
        )
    else:
        ready = N_(
            "Preview ready: %(changes)s of %(assessed)s would change. Waiting for confirmation."
        )
    job.add_message(Message(ready, changes=changes, assessed=assessed, rejected=rejected))
    reset = {name: 0 for name in (F.PROCESSED, F.GOOD, F.BAD, F.CAREFUL_UNTIL)}
    return {
        **reset,
        F.STATUS: Status.AWAITING.value,
        F.SIGNAL: "",
        F.PHASE: Phase.RUN.value,
        F.CURSOR: "",
        F.TOTAL: assessed,
        F.ASSESSMENT: json.dumps(assessment),
    }
