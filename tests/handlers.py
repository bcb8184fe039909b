"""Handlers the tests run. Their side effects go to Redis keys under the test's prefix, so a test
can check what really happened (each id changed once, each undo once) on the real server."""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

import redis

from batchflow import FileJob, Handler, ItemsJob, Registry, StepResponse, TaskJob, UserError
from batchflow.job import Job

REDIS_URL = os.environ.get("BATCHFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
side = redis.Redis.from_url(REDIS_URL, decode_responses=True)

#: Test hooks by job id: called by handlers at marked points (in-process workers only).
HOOKS: dict[str, Any] = {}
CLEANUPS: dict[str, int] = {}
_cleanup_lock = threading.Lock()


class Crash(BaseException):
    """Stands for a worker dying mid-step: not an Exception, so nothing in batchflow catches it."""


def _hook(job: Job, point: str) -> None:
    hook = HOOKS.get(f"{job.id}:{point}") or HOOKS.get(f"*:{point}")
    if hook is not None:
        hook(job)


class Count(Handler):
    """Counts to params["n"]; params["sleep"] seconds per unit; a message every step."""

    labels = {"title": "Counting"}
    can_cancel = True

    def create_job(self, job: Job) -> StepResponse:
        job.set_total(int(job.params.get("n", 100)))
        if job.params.get("note"):
            job.add_message(str(job.params["note"]))
        return StepResponse("Counting started", {"phase": "created"})

    def continue_job(self, job: Job, batch_size: int) -> str:
        _hook(job, "step")
        remaining = (job.total or 0) - job.units_processed
        units = min(batch_size, remaining)
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]) * units)
        job.mark_processed(units)
        job.data["steps"] = job.data.get("steps", 0) + 1
        if job.units_processed >= (job.total or 0):
            job.complete("All counted")
        return f"Counted to {job.units_processed}"

    def undo_job(self, job: Job, batch_size: int) -> None:
        job.complete()

    def cleanup_job(self, job: Job) -> None:
        with _cleanup_lock:
            CLEANUPS[job.id] = CLEANUPS.get(job.id, 0) + 1
        if "prefix" in job.params:  # side effects only ever go under the test's own prefix
            side.incr(f"{job.params['prefix']}:cleanups:{job.id}")


class Boom(Handler):
    """Raises in continue_job (or in create_job with params["in_create"])."""

    def create_job(self, job: Job) -> None:
        if job.params.get("in_create"):
            raise RuntimeError("could not set up: " + str(job.params.get("why", "no reason")))
        job.set_total(10)

    def continue_job(self, job: Job, batch_size: int) -> None:
        raise ValueError("boom: " + str(job.params.get("why", "no reason")))

    def on_failure(self, job: Job) -> None:
        if "prefix" in job.params:
            side.incr(f"{job.params['prefix']}:failures:{job.id}")


class Report(FileJob):
    """A contacts-style CSV: a header, then params["rows"] generated rows."""

    filename = "contacts.csv"

    def create_job(self, job: Job) -> None:
        job.set_total(int(job.params.get("rows", 100)))
        self.write_rows(job, [["id", "name", "email", "note"]])

    def continue_job(self, job: Job, batch_size: int) -> None:
        start = job.units_processed
        stop = min(start + batch_size, job.total or 0)
        self.write_rows(job, [row(i) for i in range(start, stop)])
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]) * (stop - start))
        _hook(job, "written")
        job.mark_processed(stop - start)
        if job.units_processed >= (job.total or 0):
            job.complete("Report ready")


def row(i: int) -> list[str]:
    note = "=SUM(A1:A2)" if i % 50 == 7 else f"note {i}"
    return [str(i), f"Contact {i}", f"contact{i}@example.com", note]


class Archive(ItemsJob):
    """Marks ids archived in a Redis hash; ids containing "bad" (or every 7th with
    params["every"]) fail; undo restores them."""

    labels = {"title": "Archiving", "good": "archived", "bad": "could not archive"}

    def _key(self, job: Job) -> str:
        return f"{job.params['prefix']}:archived"

    def change(self, item_id: str, job: Job) -> Any:
        _hook(job, "change")
        every = int(job.params.get("every", 0))
        if "bad" in item_id or (every and item_id.isdigit() and int(item_id) % every == 0):
            raise UserError(f"cannot archive {item_id}")  # for the person: shown as written
        side.hincrby(self._key(job), item_id, 1)
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]))
        return {"archived": item_id}

    def undo(self, item_id: str, job: Job) -> None:
        side.hincrby(self._key(job), item_id, -1)
        side.hincrby(f"{job.params['prefix']}:undone", item_id, 1)


class Generated(ItemsJob):
    """Produces its own ids server-side."""

    def items(self, job: Job) -> Any:
        return (f"g{i}" for i in range(int(job.params.get("n", 50))))

    def change(self, item_id: str, job: Job) -> Any:
        return None


class Rebuild(TaskJob):
    """A one-shot job: params["n"] units, params["sleep"] each, honouring Stop."""

    labels = {"title": "Rebuilding the index"}

    def run(self, job: Job) -> None:
        n = int(job.params.get("n", 20))
        job.set_total(n)
        for i in range(n):
            if job.stop_requested():
                return
            time.sleep(float(job.params.get("sleep", 0.01)))
            if i % 10 == 9:
                job.bad()
            else:
                job.good()
        job.set_results({"rebuilt": n})


class Greeting(Handler):
    """A job whose parameters come from a Flask-WTF form, one of them secret."""

    labels = {"title": "Send greetings"}
    sensitive_params = ("api_key",)

    @classmethod
    def _form(cls) -> type:
        from flask_wtf import FlaskForm
        from wtforms import IntegerField, PasswordField, StringField
        from wtforms.validators import DataRequired, InputRequired, Length, NumberRange

        class GreetingForm(FlaskForm):
            name = StringField("Name", validators=[DataRequired(), Length(max=40)])
            times = IntegerField("Times", validators=[InputRequired(), NumberRange(1, 1000)])
            api_key = PasswordField("API key", validators=[DataRequired()])

        return GreetingForm

    def create_job(self, job: Job) -> None:
        job.set_total(int(job.params["times"]))

    def continue_job(self, job: Job, batch_size: int) -> None:
        job.mark_processed(job.total or 0)
        job.complete(f"Greeted {job.params['name']} {job.params['times']} times")


Greeting.params_form = Greeting._form()


class Hooked(Handler):
    """Counts its callbacks in Redis; params["fail"] makes it fail; a fixed pause between steps."""

    step_delay = 0.2

    def create_job(self, job: Job) -> None:
        job.set_total(3)

    def continue_job(self, job: Job, batch_size: int) -> None:
        if job.params.get("fail"):
            raise RuntimeError("failed on purpose")
        side.rpush(f"{job.params['prefix']}:step-times:{job.id}", time.time())
        job.mark_processed(1)
        if job.units_processed >= 3:
            job.complete()

    def _count(self, job: Job, name: str) -> None:
        side.hincrby(f"{job.params['prefix']}:hooks:{job.id}", name, 1)

    def on_complete(self, job: Job) -> None:
        self._count(job, "complete")

    def on_failure(self, job: Job) -> None:
        self._count(job, "failure")

    def on_finish(self, job: Job) -> None:
        self._count(job, "finish")


#: A driver error's text with a password in it: it must reach the log and admins, nobody else.
LEAK = "could not connect to postgresql://u:secret@db/x"


class Leaky(Handler):
    """Raises LEAK where params["where"] says: create, continue, on_complete, cleanup; "user"
    raises a UserError instead (its text is for the person)."""

    def _raise_at(self, job: Job, where: str) -> None:
        if job.params.get("where") == where:
            raise ConnectionError(LEAK)

    def create_job(self, job: Job) -> None:
        self._raise_at(job, "create")
        job.set_total(1)

    def continue_job(self, job: Job, batch_size: int) -> None:
        self._raise_at(job, "continue")
        if job.params.get("where") == "user":
            raise UserError("The export is too large for your plan: pick fewer months.")
        job.mark_processed(1)
        job.complete()

    def on_complete(self, job: Job) -> None:
        self._raise_at(job, "on_complete")

    def cleanup_job(self, job: Job) -> None:
        self._raise_at(job, "cleanup")


class LeakyItems(ItemsJob):
    """Ids containing "leak" raise LEAK, ids containing "user" a UserError; undo always raises
    LEAK. One id per step."""

    batch_size = 1

    def change(self, item_id: str, job: Job) -> Any:
        if "leak" in item_id:
            raise ConnectionError(LEAK)
        if "user" in item_id:
            raise UserError(f"{item_id} is archived already.")
        return {"ok": item_id}

    def undo(self, item_id: str, job: Job) -> None:
        raise ConnectionError(LEAK)


class FrozenCount(TaskJob):
    """Records how many objects its process has frozen out of the garbage collector."""

    labels = {"title": "Counting frozen objects"}

    def run(self, job: Job) -> None:
        side.rpush(f"{job.params['prefix']}:frozen", gc.get_freeze_count())


def make_registry() -> Registry:
    registry = Registry()
    registry.add("frozen-count", FrozenCount)
    registry.add("count", Count)
    registry.add("boom", Boom)
    registry.add("report", Report)
    registry.add("archive", Archive)
    registry.add("archive-lanes", type("ArchiveLanes", (Archive,), {"lanes": 2, "max_lanes": 4}))
    registry.add("generated", Generated)
    registry.add("rebuild", Rebuild)
    registry.add("greeting", Greeting)
    registry.add("hooked", Hooked)
    registry.add("leaky", Leaky)
    registry.add("leaky-items", LeakyItems)
    registry.add("admin-only", Count, permission=lambda user: str(user).endswith("admin"))
    from tests.source_handlers import HANDLERS  # they use this module's Redis client

    for name, handler in HANDLERS.items():
        registry.add(name, handler)
    return registry
