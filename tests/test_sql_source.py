"""KeysetSource against real databases: SQLite (a file) and PostgreSQL (a database of this test
process's own, see tests/pg.py), through Sessions, Engines and Connections, ORM and Core."""

from __future__ import annotations

import datetime
import decimal
import json
import multiprocessing
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, Numeric, create_engine, delete, insert, select, text, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

from batchflow.sources import Entry
from batchflow.sql import FETCH_CHUNK, KeysetSource, decode_value, encode_value
from tests.helpers import ROOT
from tests.pg import pg_url  # noqa: F401 - the fixture


class Base(DeclarativeBase):
    pass


class Contact(Base):
    __tablename__ = "bf_contacts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    region: Mapped[str]
    n: Mapped[int]
    name: Mapped[str]
    active: Mapped[bool] = mapped_column(default=True)
    email: Mapped[str | None]


class Post(Base):
    __tablename__ = "bf_posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str]  # not unique, on purpose


class Event(Base):
    __tablename__ = "bf_events"
    at: Mapped[datetime.datetime] = mapped_column(primary_key=True)
    uid: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    day: Mapped[datetime.date]


class Price(Base):
    __tablename__ = "bf_prices"
    amount: Mapped[decimal.Decimal] = mapped_column(Numeric(12, 4), primary_key=True)


contacts = Contact.__table__


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: Any, tmp_path: Any) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'walk.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def add_contacts(engine: Engine, ids: list[int], **values: Any) -> None:
    rows = [
        {"id": i, "region": "nesw"[i % 4], "n": i // 4, "name": f"Contact {i}", **values}
        for i in ids
    ]
    with engine.begin() as conn:
        conn.execute(insert(Contact), rows)


def stored(data: Any) -> Any:
    """What comes back from Redis: the JSON text of ``data``, parsed."""
    return json.loads(json.dumps(data))


def walk(source: KeysetSource, limit: int) -> list[Entry]:
    """Every entry, page after page, as the engine walks a source (state and cursors as JSON)."""
    state = stored(source.plan().state)
    cursor, entries = None, []
    while True:
        page = source.read(state, cursor, limit)
        assert len(page) <= limit
        entries += page
        if len(page) < limit:
            return entries
        cursor = stored(page[-1].cursor)


IDS = [3, 5, 6, 10, 11, 12, 20, 21, 30, 31, 32, 40, 50, 51, 52, 60, 70, 71, 72, 80]


@pytest.mark.parametrize("limit", [1, 3, 1000])
def test_every_row_is_walked_once_in_key_order(db, limit):
    add_contacts(db, sorted(IDS, key=lambda i: (i * 7) % 11))  # inserted out of order
    with Session(db) as session:
        source = KeysetSource(session, select(Contact), Contact.id)
        plan = source.plan()
        assert plan.state == {"upper": 80} and plan.total == 20
        entries = walk(source, limit)
    assert [e.id for e in entries] == [str(i) for i in IDS]
    assert [e.cursor for e in entries] == IDS
    assert all(isinstance(e.item, Contact) for e in entries)
    assert [e.item.name for e in entries] == [f"Contact {i}" for i in IDS]


@pytest.mark.parametrize("bind", ["session", "scoped_session", "engine", "connection"])
def test_orm_and_core_selects_through_every_kind_of_bind(db, bind):
    add_contacts(db, IDS)
    queries = {
        "orm": (select(Contact).where(Contact.id > 10), Contact.id),
        "core": (select(contacts), contacts.c.id),
        "columns": (select(contacts.c.name), contacts.c.id),  # the key is not among them
    }
    with db.connect() as conn, Session(db) as session:
        scoped = scoped_session(sessionmaker(db))  # what Flask-SQLAlchemy's db.session is
        binds = {"session": session, "scoped_session": scoped, "engine": db, "connection": conn}
        target = binds[bind]
        orm = walk(KeysetSource(target, *queries["orm"]), 4)
        core = walk(KeysetSource(target, *queries["core"]), 4)
        columns = walk(KeysetSource(target, *queries["columns"]), 4)
        scoped.remove()
    assert [e.item.id for e in orm] == [i for i in IDS if i > 10]
    assert [tuple(e.item) for e in core] == [
        (i, "nesw"[i % 4], i // 4, f"Contact {i}", True, None) for i in IDS
    ]
    assert core[0].item.name == "Contact 3" and core[0].item._fields[-1] == "email"
    # The rows carry the select's own columns, not the key the walk added.
    assert [tuple(e.item) for e in columns] == [(f"Contact {i}",) for i in IDS]
    assert [e.id for e in columns] == [str(i) for i in IDS]


def test_a_session_is_used_but_never_committed_nor_closed(db):
    add_contacts(db, IDS)
    with Session(db) as session:
        session.get(Contact, 3).name = "changed, not committed"
        entries = walk(KeysetSource(session, select(Contact), Contact.id), 5)
        # The walk saw the session's own (flushed) change, and gave its objects, attached.
        assert entries[0].item.name == "changed, not committed"
        assert all(e.item in session for e in entries)
        assert session.in_transaction()
        session.rollback()
    with db.connect() as conn:
        assert conn.scalar(select(contacts.c.name).where(contacts.c.id == 3)) == "Contact 3"


@pytest.mark.parametrize("limit", [1, 2, 1000])
def test_a_composite_key_walks_in_row_value_order(db, limit):
    add_contacts(db, list(range(1, 23)))
    source = KeysetSource(db, select(Contact), (Contact.region, Contact.n))
    plan = source.plan()
    assert plan.state == {"upper": ["w", 4]} and plan.total == 22
    entries = walk(source, limit)
    expected = sorted(("nesw"[i % 4], i // 4) for i in range(1, 23))
    assert [tuple(e.cursor) for e in entries] == expected
    assert [e.id for e in entries] == [json.dumps(list(k)) for k in expected]
    assert entries[0].id == '["e", 0]'
    assert [(e.item.region, e.item.n) for e in entries] == expected


def test_string_keys_follow_the_databases_own_order(db):
    slugs = ["b", "a", "aa", "Z", "z", "a b", "ab", "10", "9", "é", "B"]
    with db.begin() as conn:
        conn.execute(insert(Post), [{"id": i, "slug": s} for i, s in enumerate(slugs)])
        ordered = conn.scalars(select(Post.slug).order_by(Post.slug)).all()
    assert sorted(ordered) == sorted(slugs)
    for limit in (1, 2, 4, 100):
        entries = walk(KeysetSource(db, select(Post), Post.slug), limit)
        assert [e.id for e in entries] == ordered


def test_datetime_date_and_uuid_keys_round_trip(db):
    start = datetime.datetime(2026, 3, 1, 9, 30, 15, 123456)
    rows = [
        {"at": start + datetime.timedelta(seconds=i // 3), "uid": uuid.uuid4(), "day": start.date()}
        for i in range(12)
    ]
    with db.begin() as conn:
        conn.execute(insert(Event), rows)
    source = KeysetSource(db, select(Event), (Event.at, Event.uid))
    entries = walk(source, 5)
    expected = sorted((r["at"], r["uid"]) for r in rows)
    assert [(e.item.at, e.item.uid) for e in entries] == expected
    assert [tuple(decode_value(v) for v in stored(e.cursor)) for e in entries] == expected
    assert stored(entries[0].cursor)[0] == {"$t": "datetime", "v": "2026-03-01T09:30:15.123456"}
    again = source.fetch([entries[7].id, entries[2].id])
    assert [(e.item.at, e.item.uid) for e in again] == [expected[2], expected[7]]
    by_day = walk(KeysetSource(db, select(Event.day, Event.uid), Event.uid), 4)
    assert [e.id for e in by_day] == sorted(str(r["uid"]) for r in rows)
    assert [
        e.item.uid
        for e in KeysetSource(db, select(Event), Event.uid).fetch([by_day[3].id, by_day[0].id])
    ] == [uuid.UUID(by_day[0].id), uuid.UUID(by_day[3].id)]


def test_decimal_keys_round_trip(pg_url):  # noqa: F811 - the fixture
    engine = create_engine(pg_url)
    Price.__table__.create(engine)
    try:
        amounts = [decimal.Decimal(a) for a in ("0.1000", "1.5000", "-2.0001", "10.0000")]
        with engine.begin() as conn:
            conn.execute(insert(Price), [{"amount": a} for a in amounts])
        source = KeysetSource(engine, select(Price), Price.amount)
        entries = walk(source, 2)
        assert [e.item.amount for e in entries] == sorted(amounts)
        assert stored(entries[0].cursor) == {"$t": "decimal", "v": "-2.0001"}
        assert [e.id for e in source.fetch(["1.5000", "0.1000", "3"])] == ["0.1000", "1.5000"]
    finally:
        Price.__table__.drop(engine)
        engine.dispose()


def test_the_querys_where_is_kept_and_its_order_replaced(db):
    add_contacts(db, IDS)
    with db.begin() as conn:
        conn.execute(update(Contact).where(Contact.id % 2 == 1).values(active=False))
    query = select(Contact).where(Contact.active).order_by(Contact.name.desc())
    source = KeysetSource(db, query, Contact.id)
    assert source.plan().total == len([i for i in IDS if i % 2 == 0])
    assert [e.item.id for e in walk(source, 3)] == [i for i in IDS if i % 2 == 0]


def test_the_plan_fixes_the_upper_bound(db):
    add_contacts(db, [2, 4, 6, 8, 10])
    source = KeysetSource(db, select(Contact), Contact.id)
    plan = source.plan()
    assert (plan.state, plan.total) == ({"upper": 10}, 5)
    state = stored(plan.state)
    first = source.read(state, None, 2)
    add_contacts(db, [11, 12, 100])  # above the bound: never met
    add_contacts(db, [1, 3, 7])  # in gaps: 1 and 3 are behind the cursor (4), 7 ahead of it
    rest = source.read(state, stored(first[-1].cursor), 100)
    assert [e.id for e in first + rest] == ["2", "4", "6", "7", "8", "10"]


def test_deleted_rows_are_not_met_nor_fetched(db):
    add_contacts(db, IDS)
    source = KeysetSource(db, select(Contact), Contact.id)
    state = stored(source.plan().state)
    first = source.read(state, None, 5)
    with db.begin() as conn:
        conn.execute(delete(Contact).where(Contact.id.in_([3, 30, 31, 80])))
    rest = source.read(state, stored(first[-1].cursor), 100)
    walked = [int(e.id) for e in first + rest]
    assert walked == [i for i in IDS if i not in (30, 31, 80)]  # 3 was met before it went
    assert [e.id for e in source.fetch(["30", "3", "5"])] == ["5"]


@pytest.mark.parametrize("limit", [1, 2, 3, 4])
def test_a_key_that_is_not_unique_raises_instead_of_skipping(db, limit):
    # Sorted: a, b, c, c, d: the two c are at indexes 2 and 3, on and across page boundaries.
    with db.begin() as conn:
        conn.execute(insert(Post), [{"id": i, "slug": s} for i, s in enumerate("dcbac")])
    source = KeysetSource(db, select(Post), Post.slug)
    state = stored(source.plan().state)
    cursor, met = None, []
    with pytest.raises(ValueError) as raised:
        while True:
            page = source.read(state, cursor, limit)
            met += [e.id for e in page]
            cursor = page[-1].cursor
    assert str(raised.value) == (
        "The key (bf_posts.slug) is not unique: two rows have 'c'. A keyset walk would skip "
        "rows; order by a unique column, or add one (the primary key) to the key."
    )
    assert met == {1: ["a", "b"], 2: ["a", "b"], 3: [], 4: []}[limit]  # the pages before them
    assert [e.id for e in walk(KeysetSource(db, select(Post), (Post.slug, Post.id)), 2)] == [
        '["a", 3]',
        '["b", 2]',
        '["c", 1]',
        '["c", 4]',
        '["d", 0]',
    ]


def test_null_keys_are_refused_when_the_job_starts(db):
    add_contacts(db, [1, 2, 3, 4], email="x@example.com")
    add_contacts(db, [5, 6])  # email NULL
    with pytest.raises(ValueError) as raised:
        KeysetSource(db, select(Contact), Contact.email).plan()
    assert str(raised.value).startswith(
        "2 rows have a NULL key column 'bf_contacts.email': a keyset walk would skip them"
    )
    with pytest.raises(ValueError, match="1 row has a NULL key column 'bf_contacts.email'"):
        KeysetSource(db, select(Contact).where(Contact.id > 5), (Contact.id, Contact.email)).plan()
    query = select(Contact).where(Contact.email.is_not(None))
    assert KeysetSource(db, query, Contact.email).plan().total == 4


def test_fetch_by_ids_single_and_composite(db):
    add_contacts(db, IDS)
    source = KeysetSource(db, select(Contact), Contact.id)
    assert [e.id for e in source.fetch(["52", "5", "999", "5", "11"])] == ["5", "11", "52"]
    assert source.fetch([]) == []
    with pytest.raises(ValueError, match="'abc' is not an entry id of this source"):
        source.fetch(["abc"])
    pairs = KeysetSource(db, select(Contact), (Contact.region, Contact.n))
    found = pairs.fetch(['["w", 7]', '["e", 1]', '["n", 99]'])
    assert [(e.item.id, e.id) for e in found] == [(5, '["e", 1]'), (31, '["w", 7]')]
    named = KeysetSource(db, select(Contact), (Contact.region, Contact.n), id=Contact.id)
    assert [e.id for e in walk(named, 3)] == [
        str(i) for i in sorted(IDS, key=lambda i: ("nesw"[i % 4], i // 4))
    ]
    assert [e.id for e in named.fetch(["31", "5", "4"])] == ["5", "31"]


def test_fetch_looks_up_many_ids_in_chunks(db):
    add_contacts(db, list(range(1, 1301)))
    source = KeysetSource(db, select(Contact.id), Contact.id)
    wanted = [str(i) for i in range(1300, 0, -1) if i % 13] + ["5000"]
    assert len(wanted) > 2 * FETCH_CHUNK
    assert [e.id for e in source.fetch(wanted)] == [str(i) for i in range(1, 1301) if i % 13]


def test_an_empty_query_plans_nothing(db):
    source = KeysetSource(db, select(Contact), Contact.id)
    plan = source.plan()
    assert (plan.state, plan.total) == ({"upper": None}, 0)
    assert source.read(plan.state, None, 10) == []


def test_queries_it_cannot_walk_are_refused_with_the_fix(db):
    with pytest.raises(ValueError, match="no LIMIT or OFFSET: filter the rows with .where"):
        KeysetSource(db, select(Contact).limit(10), Contact.id)
    with pytest.raises(ValueError, match="no LIMIT or OFFSET"):
        KeysetSource(db, select(Contact).offset(10), Contact.id)
    with pytest.raises(TypeError, match=r"instead of Model.query"):
        KeysetSource(db, text("SELECT 1"), Contact.id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        0,
        -7,
        2**70,
        "",
        "ö $t",
        0.1,
        -1e300,
        True,
        False,
        None,
        datetime.datetime(2026, 1, 2, 3, 4, 5, 6),
        datetime.datetime(
            2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=-3))
        ),
        datetime.date(1999, 12, 31),
        datetime.time(23, 59, 1, 500),
        decimal.Decimal("1.2300"),
        decimal.Decimal("-0"),
        uuid.UUID(int=12345),
    ],
)
def test_key_values_round_trip_through_json_exactly(value):
    back = decode_value(stored(encode_value(value)))
    assert back == value and type(back) is type(value) and str(back) == str(value)


def test_key_values_of_other_types_are_refused_by_name():
    with pytest.raises(TypeError, match="cannot hold a builtins.bytes key value"):
        encode_value(b"x")
    with pytest.raises(TypeError, match="builtins.object"):
        encode_value(object())


def test_import_batchflow_does_not_import_sqlalchemy():
    code = "import sys, batchflow, batchflow.sources; print('sqlalchemy' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert found.stdout.strip() == "False", found.stderr


# -- a walk while another process writes ------------------------------------------------------

INITIAL = list(range(2, 6001, 2))  # even ids: the odd ones are gaps another process fills


def churn(url: str, path: str, ready: Any, go: Any, stop: Any) -> None:
    """Another process's writes during the walk: deletes of initial rows, inserts in the gaps
    below the bound and above it, each in its own transaction, timed (monotonic, system-wide)."""
    engine = create_engine(url)
    rng = random.Random(12)
    alive, gaps, above, done = set(INITIAL), list(range(1, 6000, 2)), 6001, []
    rng.shuffle(gaps)
    with engine.connect() as conn:
        conn.execute(select(1))
        ready.set()
        go.wait(30)
        while not stop.is_set() and len(done) < 600:
            kind = rng.choice(["delete", "delete", "below", "below", "above"])
            if kind == "delete":
                key = rng.choice(sorted(alive))
                alive.discard(key)
                statement: Any = delete(Contact).where(Contact.id == key)
            else:
                key = gaps.pop() if kind == "below" else above
                above += kind == "above"
                statement = insert(Contact).values(id=key, region="n", n=0, name="new")
            t0 = time.monotonic()
            conn.execute(statement)
            conn.commit()
            done.append((kind, key, t0, time.monotonic()))
            time.sleep(0.003)
    engine.dispose()
    with open(path, "w") as f:
        json.dump(done, f)


@pytest.mark.slow
def test_a_walk_while_another_process_inserts_and_deletes(pg_url, tmp_path):  # noqa: F811
    engine = create_engine(pg_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    add_contacts(engine, INITIAL)
    spawn = multiprocessing.get_context("spawn")
    ready, go, stop = spawn.Event(), spawn.Event(), spawn.Event()
    path = str(tmp_path / "churn.json")
    writer = spawn.Process(target=churn, args=(pg_url, path, ready, go, stop))
    writer.start()
    try:
        assert ready.wait(30), "the writer process did not start"
        source = KeysetSource(engine, select(Contact), Contact.id)
        plan = source.plan()
        assert (plan.state, plan.total) == ({"upper": 6000}, 3000)
        go.set()
        walked, pages, cursor = [], [], None
        while True:
            s0 = time.monotonic()
            page = source.read(plan.state, cursor, 50)
            s1 = time.monotonic()
            walked += [int(e.id) for e in page]
            hi = int(page[-1].id) if len(page) == 50 else 6000
            pages.append((cursor or 0, hi, s0, s1))
            if len(page) < 50:
                break
            cursor = page[-1].cursor
            time.sleep(0.02)
        stop.set()
        writer.join(30)
        assert writer.exitcode == 0
    finally:
        stop.set()
        if writer.is_alive():
            writer.kill()
        Base.metadata.drop_all(engine)
        engine.dispose()
    with open(path) as f:
        done = json.load(f)
    check_the_walk(walked, pages, done)


def check_the_walk(walked: list[int], pages: list[Any], done: list[Any]) -> None:
    """Exactly the documented promise. A row deleted or inserted in the gaps is met or not
    according to whether its write committed before or after the page covering its key was
    read; a write whose commit overlaps that read may go either way."""
    assert walked == sorted(set(walked)), "met twice or out of order"
    deleted = {key for kind, key, _, _ in done if kind == "delete"}
    below = {key for kind, key, _, _ in done if kind == "below"}
    above = {key for kind, key, _, _ in done if kind == "above"}
    assert set(walked) <= set(INITIAL) | below
    assert not set(walked) & above and max(walked) <= 6000
    assert set(INITIAL) - deleted <= set(walked), "an untouched row was not met"
    outcomes: dict[tuple[str, bool], int] = {}
    for kind, key, t0, t1 in done:
        if kind == "above":
            continue
        _, _, s0, s1 = next(p for p in pages if p[0] < key <= p[1])
        if t1 < s0:  # committed before the page was read
            seen = kind == "below"
        elif t0 > s1:  # committed after it
            seen = kind == "delete"
        else:
            continue
        assert (key in walked) == seen, (kind, key, "met" if key in walked else "not met")
        outcomes[kind, seen] = outcomes.get((kind, seen), 0) + 1
    # The writes were spread over the walk: each case happened, and was checked, many times.
    assert len(above) >= 5
    for case in [("delete", True), ("delete", False), ("below", True), ("below", False)]:
        assert outcomes.get(case, 0) >= 5, (case, outcomes)
