"""Jobs over a real database: an export walked by key while another process inserts and deletes
rows, a batch UPDATE per step, a key that is not unique. PostgreSQL (a database of this test
process's own, see tests/pg.py) and SQLite, real Redis, a real in-process worker."""

from __future__ import annotations

import csv
import multiprocessing
import random
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, insert, select

from batchflow import Status
from tests.helpers import wait_for, wait_terminal
from tests.pg import pg_url  # noqa: F401 - the fixture
from tests.source_handlers import db_engine, people_table


@pytest.fixture
def table(request, prefix) -> Any:
    return people_table(f"people_{prefix.replace('-', '_')}")


@pytest.fixture
def pg_people(pg_url, table):  # noqa: F811 - the fixture
    engine = db_engine(pg_url)
    table.create(engine)
    yield pg_url, table
    table.drop(engine)


def _mutate(url: str, name: str, upper: int, done: Any, seed: int, queue: Any) -> None:
    """Another process: until the export ends, insert rows above the bound and delete rows."""
    engine = create_engine(url)
    table = people_table(name)
    rng = random.Random(seed)
    deleted, inserted, next_id = [], [], upper + 1
    while not done.is_set() or len(deleted) < 5 or len(inserted) < 5:
        with engine.begin() as connection:
            if rng.random() < 0.5:
                victim = rng.randrange(1, upper + 1)
                connection.execute(delete(table).where(table.c.id == victim))
                deleted.append(victim)
            else:
                connection.execute(insert(table).values(id=next_id, name=f"new {next_id}"))
                inserted.append(next_id)
                next_id += 1
        time.sleep(0.005)
    queue.put((deleted, inserted))


@pytest.mark.slow
def test_an_export_while_another_process_inserts_and_deletes_holds_each_row_once(
    engine, worker, pg_people, prefix
):
    url, table = pg_people
    n = 4000
    with db_engine(url).begin() as connection:
        connection.execute(
            insert(table), [{"id": i, "name": f"person {i}"} for i in range(1, n + 1)]
        )
    params = {"url": url, "table": table.name, "sleep": 0.01}
    job_id = engine.start("people-export", owner="a", params=params)
    wait_for(lambda: engine.state(job_id).total == n, timeout=60)  # the bound is fixed: churn
    context = multiprocessing.get_context("spawn")
    queue, done = context.Queue(), context.Event()
    mutator = context.Process(target=_mutate, args=(url, table.name, n, done, 7, queue))
    mutator.start()
    try:
        state = wait_terminal(engine, job_id, timeout=120)
        done.set()
        deleted, inserted = queue.get(timeout=60)
    finally:
        done.set()
        mutator.join(timeout=10)
    assert state.status is Status.COMPLETED and deleted and inserted
    with open(state.fields["file_path"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "name"]
    ids = [int(row[0]) for row in rows[1:]]
    assert ids == sorted(set(ids))  # each row once, in key order
    assert all(row[1] == f"person {row[0]}" for row in rows[1:])
    still_there = set(range(1, n + 1)) - set(deleted)
    assert still_there <= set(ids) <= set(range(1, n + 1))  # none inserted above the bound
    assert state.total == len(ids) == state.count("processed")


def test_a_batch_update_touches_each_row_once_and_a_row_gone_is_bad(
    engine, worker, pg_people, prefix
):
    url, table = pg_people
    with db_engine(url).begin() as connection:
        connection.execute(insert(table), [{"id": i, "name": f"p{i}"} for i in range(1, 3001)])
    job_id = engine.start("touch-people", owner="a", params={"url": url, "table": table.name})
    state = wait_terminal(engine, job_id, timeout=60)
    assert (state.count("good"), state.count("bad"), state.total) == (3000, 0, 3000)
    with db_engine(url).connect() as connection:
        touched = connection.execute(select(table.c.touched).distinct()).scalars().all()
    assert touched == [1]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_key_that_is_not_unique_fails_the_job_with_a_clear_message(
    engine, manual, request, tmp_path, table, backend
):
    url = f"sqlite:///{tmp_path / 'people.sqlite'}"
    if backend == "postgresql":
        url = request.getfixturevalue("pg_url")
    db = db_engine(url)
    table.create(db)
    try:
        with db.begin() as connection:
            names = ["ann", "bob", "bob", "cy"] * 5
            rows = [{"id": i, "name": f"{name}{i // 4}"} for i, name in enumerate(names)]
            connection.execute(insert(table), rows)
        params = {"url": url, "table": table.name, "key": "name"}
        job_id = engine.start("people-export", owner="a", params=params)
        manual.drain(engine)
        state = engine.state(job_id)
        assert state.status is Status.FAILED
        assert "is not unique: two rows have 'bob0'" in state.to_dict()["error"]
    finally:
        table.drop(db)
