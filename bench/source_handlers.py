"""The handlers of benchmarks 8-11 (resumable sources, batch changes, imports).

Side effects go to Redis keys the benchmark passes in ``params`` (under the run's prefix). Every
step also records the size of the slice it was given (``RPUSH params["sizes"] <n>``), so the plain
loop a handler is measured against can replay exactly the page or batch sizes that batchflow's
adaptive step sizing chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wtforms import Form, IntegerField, StringField
from wtforms.validators import DataRequired, NumberRange, Optional, Regexp

from batchflow import FileJob, ImportJob, ItemsJob, Registry
from batchflow.job import Job
from batchflow.sources import Entry, Plan, Source
from bench.handlers import side

#: SQLAlchemy engines by URL, one per worker process (a handler is built afresh for each step).
_ENGINES: dict[str, Any] = {}


def db_engine(url: str) -> Any:
    from sqlalchemy import create_engine

    if url not in _ENGINES:
        _ENGINES[url] = create_engine(url)
    return _ENGINES[url]


def people_table(name: str) -> Any:
    """The exported table: ``id`` (primary key), ``name``, ``email``."""
    from sqlalchemy import Column, Integer, MetaData, String, Table

    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(100), nullable=False),
        Column("email", String(200), nullable=False),
    )


class Range(Source):
    """The numbers 1..n in order, the cursor the last number handled (no Redis, no database)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def plan(self) -> Plan:
        return Plan({"n": self.n}, total=self.n)

    def read(self, state: dict[str, Any], cursor: Any, limit: int) -> list[Entry]:
        first = (cursor or 0) + 1
        last = min(int(state["n"]), first + limit - 1)
        return [Entry(str(k), k, k) for k in range(first, last + 1)]


class PeopleExport(FileJob):
    """A CSV of a PostgreSQL table (id, name, email) walked by id with KeysetSource."""

    labels = {"title": "Exporting people (benchmark)"}
    filename = "people.csv"
    header = ["id", "name", "email"]

    def source(self, job: Job) -> Source:
        from sqlalchemy import select

        from batchflow.sql import KeysetSource

        table = people_table(job.params["table"])
        return KeysetSource(db_engine(job.params["url"]), select(table), key=table.c.id)

    def rows(self, items: list[Any], job: Job) -> list[tuple[Any, Any, Any]]:
        side.rpush(job.params["sizes"], len(items))
        return [(row.id, row.name, row.email) for row in items]


def bump_pipeline(key: str, sizes_key: str, items: Sequence[int]) -> None:
    """What one step of the batch job does, and the plain loop too: one pipeline of an
    ``HINCRBY key <item> 1`` per item plus the slice's size."""
    with side.pipeline(transaction=False) as pipe:
        for item in items:
            pipe.hincrby(key, str(item), 1)
        pipe.rpush(sizes_key, len(items))
        pipe.execute()


class BatchBump(ItemsJob):
    """1..n (a :class:`Range` source); a step's whole slice in one pipelined call."""

    labels = {"title": "Bumping in batches (benchmark)"}

    def source(self, job: Job) -> Source:
        return Range(int(job.params["n"]))

    def change_batch(self, items: list[int], job: Job) -> Sequence[Any]:
        bump_pipeline(job.params["key"], job.params["sizes"], items)
        return [None] * len(items)


class ItemBump(ItemsJob):
    """The same change one item at a time: one ``HINCRBY`` round trip per item."""

    labels = {"title": "Bumping one by one (benchmark)"}

    def source(self, job: Job) -> Source:
        return Range(int(job.params["n"]))

    def change(self, item: int, job: Job) -> None:
        side.hincrby(job.params["key"], str(item), 1)


class ContactRow(Form):
    name = StringField(validators=[DataRequired()])
    email = StringField(validators=[Regexp(r"^[^@\s]+@[^@\s]+$", message="Not an email address.")])
    age = IntegerField(validators=[Optional(), NumberRange(0, 150)])


def apply_contact(values: dict[str, Any]) -> None:
    """The import's change: pure CPU (no I/O), so the benchmark measures batchflow's own cost
    per row (reading, checking, counting) rather than a database's."""
    values["email"].strip().lower()


class ImportContacts(ImportJob):
    """A CSV of name, email, age; each row checked by a WTForms form; returns no result (the
    job's Redis state then holds only its counters and the rejected rows' messages)."""

    labels = {"title": "Importing contacts (benchmark)", "good": "imported", "bad": "rejected"}
    columns = ["name", "email"]
    optional_columns = ["age"]
    row_form = ContactRow

    def apply(self, values: dict[str, Any], job: Job) -> None:
        apply_contact(values)


def add_source_handlers(registry: Registry) -> None:
    registry.add("people-export", PeopleExport)
    registry.add("batch-bump", BatchBump)
    registry.add("item-bump", ItemBump)
    registry.add("import-contacts", ImportContacts)
