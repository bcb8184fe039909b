"""Handlers over resumable sources for the tests. Side effects go to Redis keys under the test's
prefix (``params["prefix"]``), so a test checks what really happened on the real server."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from wtforms import Form, IntegerField, StringField
from wtforms.validators import DataRequired, NumberRange, Optional, Regexp

from batchflow import FileJob, ImportJob, ItemsJob, UserError
from batchflow.job import Job
from batchflow.sources import CallableSource, Entry, Plan, Source
from tests.handlers import HOOKS, side


class Numbers(Source):
    """The numbers 1..n, walked in order; those in the Redis set ``<prefix>:gone`` are gone
    (deleted while the job runs) and not met. Looks numbers up by id, so retry works."""

    def __init__(self, n: int, prefix: str) -> None:
        self.n, self.prefix = n, prefix

    def _gone(self) -> set[str]:
        return side.smembers(f"{self.prefix}:gone")

    def plan(self) -> Plan:
        return Plan({"n": self.n}, total=self.n)

    def read(self, state: dict[str, Any], cursor: Any, limit: int) -> list[Entry]:
        gone, entries = self._gone(), []
        number = (cursor or 0) + 1
        while number <= state["n"] and len(entries) < limit:
            if str(number) not in gone:
                entries.append(Entry(str(number), number, number))
            number += 1
        return entries

    def fetch(self, ids: Sequence[str]) -> list[Entry]:
        gone = self._gone()
        return [Entry(i, int(i), int(i)) for i in ids if int(i) <= self.n and i not in gone]


def _fails(job: Job, number: int) -> bool:
    every = int(job.params.get("every", 0))
    return (
        bool(every)
        and number % every == 0
        and not side.sismember(f"{job.params['prefix']}:fixed", str(number))
    )


class WalkArchive(ItemsJob):
    """Archives the numbers 1..n one by one; every ``every``-th fails (unless in ``:fixed``)."""

    labels = {"title": "Archiving numbers"}

    def source(self, job: Job) -> Source:
        return Numbers(int(job.params["n"]), job.params["prefix"])

    def change(self, item: int, job: Job) -> Any:
        hook = HOOKS.get(f"{job.id}:change")
        if hook is not None:
            hook(job, item)
        if _fails(job, item):
            raise UserError(f"cannot archive {item}")
        side.hincrby(f"{job.params['prefix']}:archived", str(item), 1)
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]))
        return {"square": item * item}

    def undo(self, item_id: str, job: Job) -> None:
        side.hincrby(f"{job.params['prefix']}:archived", item_id, -1)
        side.hincrby(f"{job.params['prefix']}:undone", item_id, 1)


class PreviewArchive(WalkArchive):
    """A preview first: even numbers would be archived, odd ones not; multiples of ``every``
    would be rejected. Then, once confirmed, WalkArchive's change."""

    preview = True
    labels = {"title": "Archiving numbers", "preview": "This will archive {changes} numbers."}

    def assess(self, item: int, job: Job) -> Any:
        hook = HOOKS.get(f"{job.id}:assess")
        if hook is not None:
            hook(job, item)
        side.hincrby(f"{job.params['prefix']}:assessed", str(item), 1)
        if _fails(job, item):
            raise UserError(f"{item} cannot be archived")
        return f"archive {item}" if item % 2 == 0 else None


class BatchArchive(ItemsJob):
    """Archives a step's whole slice in one pipeline; ``wrong_count`` returns one outcome short."""

    def source(self, job: Job) -> Source:
        return Numbers(int(job.params["n"]), job.params["prefix"])

    def change_batch(self, items: list[int], job: Job) -> Sequence[Any]:
        if job.params.get("raise_at") in items:
            raise UserError(f"the database refused the batch with {job.params['raise_at']}")
        outcomes: list[Any] = []
        with side.pipeline(transaction=False) as pipe:
            for item in items:
                if _fails(job, item):
                    outcomes.append(UserError(f"cannot archive {item}"))
                else:
                    pipe.hincrby(f"{job.params['prefix']}:archived", str(item), 1)
                    outcomes.append(item * 2)
            pipe.execute()
        side.rpush(f"{job.params['prefix']}:batches", len(items))
        return outcomes[:-1] if job.params.get("wrong_count") else outcomes


class CountUp(ItemsJob):
    """Walks 1..n with a CallableSource (which cannot look items up by id)."""

    def source(self, job: Job) -> Source:
        n = int(job.params["n"])
        return CallableSource(
            lambda after: ((k, k, k) for k in range((after or 0) + 1, n + 1)), total=n
        )

    def change(self, item: int, job: Job) -> Any:
        side.hincrby(f"{job.params['prefix']}:counted", str(item), 1)


class NumbersExport(FileJob):
    """A CSV of the numbers 1..n and their squares."""

    filename = "numbers.csv"
    header = ["n", "square"]

    def source(self, job: Job) -> Source:
        return Numbers(int(job.params["n"]), job.params["prefix"])

    def rows(self, items: list[int], job: Job) -> list[tuple[int, int]]:
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]) * len(items))
        return [(k, k * k) for k in items]


class ContactRow(Form):
    name = StringField(validators=[DataRequired()])
    email = StringField(validators=[Regexp(r"^[^@\s]+@[^@\s]+$", message="Not an email address.")])
    age = IntegerField(validators=[Optional(), NumberRange(0, 150)])


class ImportContacts(ImportJob):
    """Creates contacts (a Redis hash by email) from a CSV of name, email and maybe age."""

    labels = {"title": "Importing contacts", "good": "imported", "bad": "rejected"}
    columns = ["name", "email"]
    optional_columns = ["age"]
    row_form = ContactRow

    def apply(self, values: dict[str, Any], job: Job) -> Any:
        hook = HOOKS.get(f"{job.id}:apply") or HOOKS.get("*:apply")
        if hook is not None:
            hook(job, values)
        prefix = job.params["prefix"]
        side.hset(f"{prefix}:contacts", values["email"], json.dumps(values))
        side.hincrby(f"{prefix}:applied", values["email"], 1)
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]))
        return {"email": values["email"]}


class PreviewImport(ImportContacts):
    preview = True


HANDLERS = {
    "import-contacts": ImportContacts,
    "preview-import": PreviewImport,
    "preview-archive": PreviewArchive,
    "walk-archive": WalkArchive,
    "batch-archive": BatchArchive,
    "count-up": CountUp,
    "numbers-export": NumbersExport,
}


# -- over a real database (tests/test_sql_jobs.py) -----------------------------------------------

_ENGINES: dict[str, Any] = {}


def db_engine(url: str) -> Any:
    from sqlalchemy import create_engine

    if url not in _ENGINES:
        _ENGINES[url] = create_engine(url)
    return _ENGINES[url]


def people_table(name: str) -> Any:
    from sqlalchemy import Column, Integer, MetaData, String, Table

    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(100), nullable=False),
        Column("touched", Integer, nullable=False, default=0),
    )


class PeopleExport(FileJob):
    """A CSV of a table's id and name, walked by id (or by ``params["key"]``)."""

    filename = "people.csv"
    header = ["id", "name"]

    def source(self, job: Job) -> Source:
        from sqlalchemy import select

        from batchflow.sql import KeysetSource

        table = people_table(job.params["table"])
        key = table.c[job.params.get("key", "id")]
        return KeysetSource(db_engine(job.params["url"]), select(table), key=key)

    def rows(self, people: list[Any], job: Job) -> list[tuple[Any, Any]]:
        if job.params.get("sleep"):
            time.sleep(float(job.params["sleep"]))
        return [(person.id, person.name) for person in people]


class TouchPeople(ItemsJob):
    """One UPDATE per step for the step's whole slice; a row deleted meanwhile is bad."""

    def source(self, job: Job) -> Source:
        from sqlalchemy import select

        from batchflow.sql import KeysetSource

        table = people_table(job.params["table"])
        return KeysetSource(db_engine(job.params["url"]), select(table.c.id), key=table.c.id)

    def change_batch(self, items: list[Any], job: Job) -> Sequence[Any]:
        from sqlalchemy import update

        table = people_table(job.params["table"])
        ids = [row.id for row in items]
        with db_engine(job.params["url"]).begin() as connection:
            touched = set(
                connection.scalars(
                    update(table)
                    .where(table.c.id.in_(ids))
                    .values(touched=table.c.touched + 1)
                    .returning(table.c.id)
                )
            )
        return [None if i in touched else UserError(f"row {i} is gone") for i in ids]


HANDLERS["people-export"] = PeopleExport
HANDLERS["touch-people"] = TouchPeople
