"""Handlers and instrumentation for the fault tests (tests/test_faults.py).

A test arms a *fault point* by writing a hash ``{prefix}:fault:{point}`` on the side Redis (the
test server on 6379, which the faults never touch): ``action`` is ``kill`` (SIGKILL this process
right there), ``block`` (wait on ``{prefix}:gate:{point}`` until the test pushes to it), ``raise``
or ``sleep``; optional ``left`` (how many times it fires; absent = every time), ``min_seq`` (only
at steps from that seq on), ``item`` (only for that id), ``job``, and ``worker`` (only in the
worker of that name). Every firing is recorded in ``{prefix}:fired:{point}`` *before* it acts,
so a test knows which step and which pid it hit.

What really happened is recorded on the side Redis too, so a test can prove its claims from the
outside: ``{prefix}:ran`` (one entry per handler body that started: job, seq, attempt, pid),
``{prefix}:commits`` (one entry per successful commit), ``{prefix}:outcomes`` (what every
run_step returned), ``{prefix}:enqueued`` (every step the engine sent, and whether a step's
successor or something else sent it), ``{prefix}:calls`` / ``{prefix}:changed`` (per id: how often
``change`` was entered / how often its side effect happened) and ``{prefix}:undone``.

Points: ``claimed`` (a claim succeeded, before the handler), ``create`` and ``step`` (in the
handler), ``before-write`` and ``written`` (a FileJob is about to write / wrote its rows),
``change`` (an item job is about to change one id), ``commit`` (the handler returned, before the
commit), ``enqueue`` (the step committed, before its successor is enqueued), ``run`` (a one-shot
job's loop), ``assess`` (a preview is about to assess one item).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

from batchflow import FileJob, Handler, ItemsJob, Registry, TaskJob
from batchflow.engine import Engine
from batchflow.job import Job
from batchflow.steps import StepOutcome
from tests.handlers import make_registry, side
from tests.source_handlers import ImportContacts, PreviewArchive

_local = threading.local()

#: Every point a test can arm (see the module docstring).
FAULT_POINTS = (
    "claimed",
    "create",
    "step",
    "before-write",
    "written",
    "change",
    "commit",
    "enqueue",
    "run",
    "assess",
)


def fault_point(
    prefix: str, point: str, job_id: str, seq: int, item: str | None = None, *, spec: Any = None
) -> None:
    """Act as the test armed ``point`` (see the module docstring); do nothing if it is not armed."""
    key = f"{prefix}:fault:{point}"
    if spec is None:
        spec = side.hgetall(key)
    if not spec:
        return
    if spec.get("job") and spec["job"] != job_id:
        return
    if spec.get("worker") and spec["worker"] != os.environ.get("BFT_WORKER_NAME"):
        return
    if "min_seq" in spec and seq < int(spec["min_seq"]):
        return
    if "item" in spec and item != spec["item"]:
        return
    if "left" in spec and side.hincrby(key, "left", -1) < 0:
        return
    record = {"job": job_id, "seq": seq, "item": item, "pid": os.getpid(), "t": time.time()}
    side.rpush(f"{prefix}:fired:{point}", json.dumps(record))
    action = spec.get("action")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never reached: SIGKILL cannot be caught
    elif action == "block":
        side.blpop([f"{prefix}:gate:{point}"], timeout=float(spec.get("timeout", 60)))
    elif action == "sleep":
        time.sleep(float(spec["seconds"]))
    elif action == "raise":
        raise RuntimeError(spec.get("message", f"fault at {point}"))


def _prefix(job: Job) -> str:
    return str(job.params["prefix"])


def ran(job: Job, what: str = "step") -> None:
    """Record that a handler body started (the side effect a cut-off step may repeat)."""
    record = {
        "job": job.id,
        "seq": job.seq,
        "attempt": job.attempt,
        "what": what,
        "pid": os.getpid(),
        "t": time.time(),
    }
    side.rpush(f"{_prefix(job)}:ran", json.dumps(record))


def fault_row(i: int) -> list[str]:
    note = "=1+1" if i % 97 == 3 else f"note {i}"
    return [str(i), f"Contact {i}", f"contact{i}@example.com", note]


class FaultReport(FileJob):
    """A CSV of params["rows"] deterministic rows; fault points ``create`` and ``written``."""

    filename = "faults.csv"

    def create_job(self, job: Job) -> None:
        ran(job, "create")
        fault_point(_prefix(job), "create", job.id, job.seq)
        job.set_total(int(job.params.get("rows", 100)))
        self.write_rows(job, [["id", "name", "email", "note"]])

    def continue_job(self, job: Job, batch_size: int) -> None:
        ran(job)
        start = job.units_processed
        stop = min(start + batch_size, job.total or 0)
        fault_point(_prefix(job), "before-write", job.id, job.seq)
        self.write_rows(job, [fault_row(i) for i in range(start, stop)])
        fault_point(_prefix(job), "written", job.id, job.seq)
        job.mark_processed(stop - start)
        if job.units_processed >= (job.total or 0):
            job.complete("Report ready")


class FaultItems(ItemsJob):
    """Changes ids (side effect: ``{prefix}:changed``); ids containing "raise" always raise;
    params["sleep"] seconds per id; fault point ``change`` per id and ``step`` per step; undo
    counts in ``{prefix}:undone``."""

    labels = {"title": "Fault items", "good": "changed", "bad": "failed"}

    def before_step(self, job: Job) -> None:
        # One read of the armed point per step, not per id.
        self._change_fault = side.hgetall(f"{_prefix(job)}:fault:change")

    def continue_job(self, job: Job, batch_size: int) -> Any:
        ran(job)
        fault_point(_prefix(job), "step", job.id, job.seq)
        return super().continue_job(job, batch_size)

    def change(self, item_id: str, job: Job) -> Any:
        prefix = _prefix(job)
        side.hincrby(f"{prefix}:calls", item_id, 1)
        if self._change_fault:
            fault_point(prefix, "change", job.id, job.seq, item_id, spec=self._change_fault)
        if "raise" in item_id:
            raise ValueError(f"cannot change {item_id}")
        side.hincrby(f"{prefix}:changed", item_id, 1)
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]))
        return {"changed": item_id}

    def undo(self, item_id: str, job: Job) -> None:
        side.hincrby(f"{_prefix(job)}:undone", item_id, 1)

    def on_complete(self, job: Job) -> None:
        side.hincrby(f"{_prefix(job)}:hooks:{job.id}", "complete", 1)

    def on_finish(self, job: Job) -> None:
        side.hincrby(f"{_prefix(job)}:hooks:{job.id}", "finish", 1)


class FixedItems(FaultItems):
    """FaultItems in steps of exactly 10 ids, so a test knows which seq is the last."""

    batch_size = 10


class FaultCount(Handler):
    """Counts to params["n"] in steps of params["per_step"] units, sleeping params["sleep"]
    seconds per step (a step slower than the lease, if asked); fault point ``step``."""

    can_cancel = True

    def create_job(self, job: Job) -> None:
        ran(job, "create")
        job.set_total(int(job.params.get("n", 10)))

    def continue_job(self, job: Job, batch_size: int) -> None:
        ran(job)
        fault_point(_prefix(job), "step", job.id, job.seq)
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]))
        units = min(int(job.params.get("per_step", 1)), (job.total or 0) - job.units_processed)
        job.mark_processed(units)
        if job.units_processed >= (job.total or 0):
            job.complete("All counted")

    def undo_job(self, job: Job, batch_size: int) -> None:
        job.complete()


class FaultTask(TaskJob):
    """A one-shot job: params["n"] units of params["sleep"] seconds, honouring Stop; fault point
    ``run`` before each unit."""

    def run(self, job: Job) -> None:
        ran(job, "run")
        n = int(job.params.get("n", 10))
        job.set_total(n)
        for i in range(n):
            if job.stop_requested():
                side.rpush(f"{_prefix(job)}:task-stopped", json.dumps({"pid": os.getpid()}))
                return
            fault_point(_prefix(job), "run", job.id, job.seq)
            time.sleep(float(job.params.get("sleep", 0.01)))
            side.rpush(f"{_prefix(job)}:task-units:{job.id}", f"{os.getpid()}:{i}")
            job.good()


class FailsInCreate(Handler):
    """Raises in create_job; counts its on_failure callbacks."""

    def create_job(self, job: Job) -> None:
        ran(job, "create")
        raise RuntimeError("could not set up: the table is missing")

    def continue_job(self, job: Job, batch_size: int) -> None:
        raise AssertionError("never reached")

    def on_failure(self, job: Job) -> None:
        side.hincrby(f"{_prefix(job)}:hooks:{job.id}", "failure", 1)

    def on_finish(self, job: Job) -> None:
        side.hincrby(f"{_prefix(job)}:hooks:{job.id}", "finish", 1)


class FaultImport(ImportContacts):
    """ImportContacts with the fault point ``change`` before each row is applied (the item is
    the row's email)."""

    def before_step(self, job: Job) -> None:
        super().before_step(job)
        self._change_fault = side.hgetall(f"{_prefix(job)}:fault:change")

    def apply(self, values: dict[str, Any], job: Job) -> Any:
        if self._change_fault:
            spec = self._change_fault
            fault_point(_prefix(job), "change", job.id, job.seq, values["email"], spec=spec)
        return super().apply(values, job)


class FaultPreview(PreviewArchive):
    """PreviewArchive with the fault point ``assess`` before each number is assessed."""

    def before_step(self, job: Job) -> None:
        self._assess_fault = side.hgetall(f"{_prefix(job)}:fault:assess")

    def assess(self, item: int, job: Job) -> Any:
        if self._assess_fault:
            fault_point(_prefix(job), "assess", job.id, job.seq, str(item), spec=self._assess_fault)
        return super().assess(item, job)


def make_fault_registry() -> Registry:
    """The tests' usual handlers plus the fault handlers."""
    registry = make_registry()
    registry.add("f-report", FaultReport)
    registry.add("f-items", FaultItems)
    registry.add("f-lanes", type("FaultLanes", (FaultItems,), {"lanes": 4}))
    registry.add("f-fixed", FixedItems)
    registry.add("f-count", FaultCount)
    registry.add("f-task", FaultTask)
    registry.add("f-create", FailsInCreate)
    registry.add("f-import", FaultImport)
    registry.add("f-preview", FaultPreview)
    return registry


def instrument(engine: Engine, prefix: str) -> None:
    """Record every run_step outcome, commit and enqueue on the side Redis, and add the fault
    points ``claimed``, ``commit`` and ``enqueue`` around the store's claim and commit and the
    dispatcher's enqueue. Test instrumentation only: batchflow's code is unchanged."""
    store, dispatcher = engine.store, engine.dispatcher
    real_claim, real_commit, real_run_step = store.claim, store.commit, engine.run_step
    assert dispatcher is not None
    real_enqueue = dispatcher.enqueue_step

    def claim(job_id: str, seq: int, *args: Any, **kwargs: Any) -> Any:
        result = real_claim(job_id, seq, *args, **kwargs)
        if result.code == "ok":
            fault_point(prefix, "claimed", job_id, seq)
        return result

    def commit(job_id: str, seq: int, *args: Any, **kwargs: Any) -> Any:
        fault_point(prefix, "commit", job_id, seq)
        result = real_commit(job_id, seq, *args, **kwargs)
        if result is not None:
            record = {
                "job": job_id,
                "seq": seq,
                "new_seq": result.seq,
                "status": result.status,
                "pid": os.getpid(),
                "t": time.time(),
            }
            side.rpush(f"{prefix}:commits", json.dumps(record))
        return result

    def enqueue_step(job_id: str, seq: int, countdown: float = 0.0, lane: int = 0) -> None:
        stepping = getattr(_local, "step", None)
        source = "successor" if stepping == (job_id, seq - 1) else "other"
        if source == "successor":
            fault_point(prefix, "enqueue", job_id, seq - 1)
        side.rpush(
            f"{prefix}:enqueued",
            json.dumps({"job": job_id, "seq": seq, "source": source, "t": time.time()}),
        )
        real_enqueue(job_id, seq, countdown, lane)

    def run_step(job_id: str, seq: int, lane: int = 0, **kwargs: Any) -> StepOutcome:
        _local.step = (job_id, seq)
        try:
            outcome = real_run_step(job_id, seq, lane, **kwargs)
        finally:
            _local.step = None
        record = {
            "job": job_id,
            "seq": seq,
            "lane": lane,
            "outcome": str(outcome),
            "pid": os.getpid(),
        }
        side.rpush(f"{prefix}:outcomes", json.dumps(record))
        return outcome

    store.claim = claim  # type: ignore[method-assign]
    store.commit = commit  # type: ignore[method-assign]
    dispatcher.enqueue_step = enqueue_step  # type: ignore[method-assign]
    engine.run_step = run_step  # type: ignore[method-assign]
