"""A resumable keyset walk over a SQLAlchemy query: :class:`KeysetSource`.

Needs the ``sql`` extra (``pip install "batchflow[sql]"``, or ``batchflow[postgres]`` for
SQLAlchemy with psycopg); ``import batchflow`` alone never imports SQLAlchemy.

The walk reads the query's rows in pages ordered by a key (one column or several) that is unique
and never NULL: ``WHERE key > cursor AND key <= upper ORDER BY key LIMIT n``. The upper bound is
the largest key when the job is created (:meth:`KeysetSource.plan`), and the cursor is the key of
the last row handled, committed with each step. What that guarantees, with other transactions
writing to the table while the job runs:

- every row that matches the query when the job starts, and still exists when the walk reaches
  it, is met exactly once, in key order; a step run again after its worker died reads the same
  page from the committed cursor;
- a row inserted after the start with a key above the upper bound is never met (rows numbered by
  a sequence or an auto-increment always are: a job does not chase a table that keeps growing);
- a row inserted after the start with a key *below* the bound is met if the walk has not yet
  passed its key when it is inserted, and not met otherwise (a keyset walk sees what is ahead of
  it): only keys above the bound are shut out;
- a row deleted before the walk reaches it is not met (nor counted: the total is a count made
  at the start); a row deleted after it was met stays handled;
- a row whose *key* changes during the run may be missed (moved behind the cursor) or met twice
  (handled, then moved ahead of the cursor): walk by a key that does not change, such as the
  primary key.

A key that is not unique, or rows whose key is NULL, would make a keyset walk skip rows without a
word: NULL keys are refused when the job starts, duplicate keys whenever a page meets two of
them (the page reads one row more than it returns, so two equal keys are side by side even
across a page boundary): both raise :class:`ValueError`, never a silent skip.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import itertools
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Select, func, select, tuple_
from sqlalchemy.orm import QueryableAttribute, Session, scoped_session
from sqlalchemy.sql.elements import ColumnElement

from .sources import Entry, Plan, Source, SourceError

#: What runs the queries: a Session (Flask-SQLAlchemy's ``db.session`` too), an Engine or a
#: Connection.
Bind = Session | scoped_session[Any] | Engine | Connection
#: A key column: an ORM attribute (``Contact.id``) or a Core column (``contacts.c.id``).
KeyColumn = ColumnElement[Any] | QueryableAttribute[Any]

#: How many ids :meth:`KeysetSource.fetch` looks up per query.
FETCH_CHUNK = 500
_KEY_LABEL = "batchflow_key_{}"
_ID_LABEL = "batchflow_id"

# Tagged JSON forms of the key types JSON has no word for: {"$t": tag, "v": text}.
_TAGGED: dict[str, tuple[type, Callable[[str], Any]]] = {
    "datetime": (datetime.datetime, datetime.datetime.fromisoformat),
    "date": (datetime.date, datetime.date.fromisoformat),
    "time": (datetime.time, datetime.time.fromisoformat),
    "decimal": (decimal.Decimal, decimal.Decimal),
    "uuid": (uuid.UUID, uuid.UUID),
}


def encode_value(value: Any) -> Any:
    """One key value as JSON data that :func:`decode_value` turns back into an equal value of
    the same type: ``None``, bool, int, float and str as they are; datetime, date, time,
    Decimal and UUID as ``{"$t": "datetime", "v": "<iso text>"}`` and the like.

    :raises TypeError: for any other type (name the walk by a column of a supported type).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    # datetime before date: a datetime is a date too.
    for tag, (kind, _parse) in _TAGGED.items():
        if isinstance(value, (datetime.date, datetime.time)) and isinstance(value, kind):
            return {"$t": tag, "v": value.isoformat()}
        if isinstance(value, kind):
            return {"$t": tag, "v": str(value)}
    raise TypeError(
        f"A keyset cursor cannot hold a {type(value).__module__}.{type(value).__qualname__} key "
        "value; key columns must be int, str, float, bool, datetime, date, time, Decimal or UUID."
    )


def decode_value(data: Any) -> Any:
    """The key value :func:`encode_value` encoded as ``data``."""
    if isinstance(data, dict):
        tag = data.get("$t")
        if tag not in _TAGGED or not isinstance(data.get("v"), str):
            raise ValueError(f"{data!r} is not an encoded key value")
        return _TAGGED[tag][1](data["v"])
    return data


def _parse_text(text: str, column: KeyColumn) -> Any:
    """A single column's value back from its ``str()`` (an entry id), by the column's type."""
    try:
        kind = column.type.python_type
    except NotImplementedError:
        return text
    if kind is bool:
        if text not in ("True", "False"):
            raise ValueError(f"{text!r} is not a bool")
        return text == "True"
    if kind in (int, float):
        return kind(text)
    for tagged_kind, parse in _TAGGED.values():
        if kind is tagged_kind:
            return parse(text)
    return text


def _name(column: KeyColumn) -> str:
    return str(getattr(column, "expression", column))


class KeysetSource(Source):
    """The rows of a SQLAlchemy ``select()``, walked in the order of a unique, non-null key.

    :param bind: a :class:`~sqlalchemy.orm.Session` (or Flask-SQLAlchemy's ``db.session``): the
        queries run in it, and it is never committed nor closed; or an
        :class:`~sqlalchemy.Engine` or :class:`~sqlalchemy.Connection`: each call runs in a
        short Session of its own, so ORM objects come back detached (their loaded columns
        readable; give a Session to change and save them).
    :param query: a ``select()``: ``select(Contact).where(...)`` gives each entry the
        ``Contact`` object as its item; any other select (``select(table)``,
        ``select(t.c.id, t.c.name)``) gives a :class:`~sqlalchemy.Row`. Its WHERE, joins and
        columns are kept; its ORDER BY is replaced by the key's.
    :param key: a column, or a sequence of columns, unique and never NULL over the query's
        rows: the primary key, or e.g. ``(Post.created_at, Post.id)``.
    :param id: a column whose value, as text, names each entry (per-id results, "retry
        failed") instead of the key: e.g. ``Post.id`` when walking by
        ``(Post.created_at, Post.id)``. By default an entry's id is its key: ``str(value)``
        for one column, a JSON array for several (``'["north", 3]'``).
    :raises TypeError: if ``query`` is not a ``select()`` (a legacy ``Model.query`` is not).
    :raises ValueError: if ``query`` has a LIMIT or an OFFSET (the walk pages by key: filter
        with WHERE instead), or ``key`` is empty.
    """

    def __init__(
        self,
        bind: Bind,
        query: Select[Any],
        key: KeyColumn | Sequence[KeyColumn],
        *,
        id: KeyColumn | None = None,
    ) -> None:
        if not isinstance(query, Select):
            raise TypeError(
                f"KeysetSource needs a select() statement (SQLAlchemy 2.x), not "
                f"{type(query).__name__}: write select(Model).where(...) instead of Model.query."
            )
        if not query.limit(None).offset(None).compare(query):
            raise ValueError(
                "KeysetSource pages through the query by its key, so the query must have no "
                "LIMIT or OFFSET: filter the rows with .where(...) instead."
            )
        keys = [key] if isinstance(key, (ColumnElement, QueryableAttribute)) else list(key)
        if not keys:
            raise ValueError("KeysetSource needs at least one key column.")
        self.bind = bind
        self.query = query
        self.keys = keys
        self.id_column = id
        described = query.column_descriptions
        self.orm_entity = (
            len(described) == 1
            and described[0].get("entity") is not None
            and described[0].get("expr") is described[0]["entity"]
        )
        self.positions = None if self.orm_entity else self._positions()

    def _positions(self) -> list[int] | None:
        """Where the key (and id) columns are among the query's own, when it selects them all
        (``select(table)``): its rows are then the items as they are, read once, with nothing
        added to the query. None when some are not selected."""
        selected = list(self.query.selected_columns)
        wanted = [*self.keys, *([self.id_column] if self.id_column is not None else [])]
        positions = []
        for column in wanted:
            expr: Any = (
                column.__clause_element__() if hasattr(column, "__clause_element__") else column
            )
            found = [i for i, own in enumerate(selected) if own is expr or own.compare(expr)]
            if not found:
                return None
            positions.append(found[0])
        return positions

    # -- Source --------------------------------------------------------------------------------

    def plan(self) -> Plan:
        """Count the query's rows, refuse NULL keys, and fix the upper bound: the largest key.

        :raises ValueError: if some rows have a NULL in a key column.
        """
        walked = self._labelled().subquery()
        columns = [walked.c[_KEY_LABEL.format(i)] for i in range(len(self.keys))]
        with self._session() as session:
            nulls = session.execute(
                select(*[func.count() - func.count(column) for column in columns]).select_from(
                    walked
                )
            ).one()
            self._refuse_nulls(list(nulls))
            last = session.execute(
                select(*columns).order_by(*[column.desc() for column in columns]).limit(1)
            ).first()
            if last is None:
                return Plan(state={"upper": None}, total=0)
            upper = tuple(last)
            total = session.execute(
                select(func.count()).select_from(walked).where(self._compare(columns, "<=", upper))
            ).scalar_one()
        return Plan(state={"upper": self._encode(upper)}, total=int(total))

    def read(self, state: dict[str, Any], cursor: Any, limit: int) -> list[Entry]:
        """Up to ``limit`` entries after ``cursor`` and up to the planned upper bound, in key
        order.

        :raises ValueError: if two rows of the page (or the row just after it) share a key.
        """
        if limit <= 0 or state.get("upper") is None:
            return []
        where = [self._compare(self.keys, "<=", self._decode(state["upper"]))]
        if cursor is not None:
            where.append(self._compare(self.keys, ">", self._decode(cursor)))
        # One row more than asked: a duplicate key on the page boundary is still seen.
        statement = self._walked().where(*where).order_by(*self.keys).limit(limit + 1)
        return self._entries(statement)[:limit]

    def fetch(self, ids: Sequence[str]) -> list[Entry]:
        """The entries with these ids that still match the query, in key order; ids of rows
        that are gone are simply absent. Looks them up :data:`FETCH_CHUNK` at a time.

        :raises ValueError: for an id this source could not have given.
        """
        values = list(dict.fromkeys(self._parse_id(text) for text in ids))
        with contextlib.suppress(TypeError):  # values Python cannot order: keep the given order
            values.sort()
        columns = [self.id_column] if self.id_column is not None else self.keys
        entries: list[Entry] = []
        for start in range(0, len(values), FETCH_CHUNK):
            chunk = values[start : start + FETCH_CHUNK]
            if len(columns) == 1:
                match = columns[0].in_([value[0] for value in chunk])
            else:
                match = tuple_(*columns).in_(chunk)
            entries += self._entries(self._walked().where(match).order_by(*self.keys))
        return entries

    # -- queries -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session | scoped_session[Any]]:
        if isinstance(self.bind, (Engine, Connection)):
            with Session(bind=self.bind) as session:
                yield session
        else:
            yield self.bind

    def _walked(self) -> Select[Any]:
        """The query a page is read with: the user's own when it selects the key (and id)
        columns, else with them added."""
        return self.query.order_by(None) if self.positions is not None else self._labelled()

    def _labelled(self) -> Select[Any]:
        """The user's query with the key (and id) columns added after its own, unordered."""
        extra = [column.label(_KEY_LABEL.format(i)) for i, column in enumerate(self.keys)]
        if self.id_column is not None:
            extra.append(self.id_column.label(_ID_LABEL))
        return self.query.add_columns(*extra).order_by(None)

    def _compare(self, columns: Sequence[Any], op: str, values: tuple[Any, ...]) -> Any:
        """``key <op> values``; a row-value comparison for a composite key (SQLite >= 3.15)."""
        left = columns[0] if len(columns) == 1 else tuple_(*columns)
        right = values[0] if len(columns) == 1 else values
        return left > right if op == ">" else left <= right

    def _entries(self, statement: Select[Any]) -> list[Entry]:
        extra = len(self.keys) + (self.id_column is not None)
        with self._session() as session:
            if self.orm_entity or self.positions is not None:  # read once
                rows = session.execute(statement).all()
                items: Sequence[Any] = [row[0] for row in rows] if self.orm_entity else rows
            else:  # the rows twice: whole for the keys, and with the user's own columns only
                frozen = session.execute(statement).freeze()
                rows = frozen().all()
                width = len(rows[0]) - extra if rows else 0
                items = frozen().columns(*range(width)).all() if rows else []
        if not rows:
            return []
        at = self.positions or list(range(len(rows[0]) - extra, len(rows[0])))
        keys, name_at = at[: len(self.keys)], (at[-1] if self.id_column is not None else None)
        if len(keys) == 1 and name_at is None:  # the usual case, a step's rows by the thousand
            return self._simple_entries(rows, items, keys[0])
        entries: list[Entry] = []
        previous: tuple[Any, ...] | None = None
        for row, item in zip(rows, items, strict=True):
            key = tuple(row[i] for i in keys)
            if key == previous:
                self._refuse_duplicate(key)
            previous = key
            name = row[name_at] if name_at is not None else None
            entries.append(Entry(self._id_text(key, name), item, self._encode(key)))
        return entries

    def _simple_entries(self, rows: Sequence[Any], items: Sequence[Any], at: int) -> list[Entry]:
        """:meth:`_entries` for one key column naming each entry, built a column at a time (a
        step's rows come by the ten thousand)."""
        keys = [row[at] for row in rows]
        if len(set(keys)) < len(keys):  # sorted by key: the equal ones are neighbours
            (key,) = [a for a, b in zip(keys, keys[1:], strict=False) if a == b][:1]
            self._refuse_duplicate((key,))
        native = type(keys[0]) in (int, str)  # one column, one type: its own JSON
        cursors = keys if native else [encode_value(key) for key in keys]
        # tuple.__new__ straight: the named tuple's own __new__ is a Python call per row.
        fields = zip(map(str, keys), items, cursors, itertools.repeat(None))
        return list(map(tuple.__new__, itertools.repeat(Entry), fields))

    # -- keys, cursors and ids -----------------------------------------------------------------

    def _encode(self, key: tuple[Any, ...]) -> Any:
        if len(self.keys) == 1:
            return encode_value(key[0])
        return [encode_value(value) for value in key]

    def _decode(self, data: Any) -> tuple[Any, ...]:
        if len(self.keys) == 1:
            return (decode_value(data),)
        if not isinstance(data, list) or len(data) != len(self.keys):
            raise ValueError(f"{data!r} is not a cursor of a {len(self.keys)}-column key")
        return tuple(decode_value(value) for value in data)

    def _id_text(self, key: tuple[Any, ...], name: Any) -> str:
        if self.id_column is not None:
            return str(name)
        if len(self.keys) == 1:
            return str(key[0])
        return json.dumps(self._encode(key))

    def _parse_id(self, text: str) -> tuple[Any, ...]:
        try:
            if self.id_column is not None:
                return (_parse_text(text, self.id_column),)
            if len(self.keys) == 1:
                return (_parse_text(text, self.keys[0]),)
            return self._decode(json.loads(text))
        except ValueError as error:
            raise ValueError(f"{text!r} is not an entry id of this source: {error}") from None

    def _key_names(self) -> str:
        return ", ".join(_name(column) for column in self.keys)

    def _refuse_nulls(self, counts: list[int]) -> None:
        found = [(_name(column), n) for column, n in zip(self.keys, counts, strict=True) if n]
        if not found:
            return
        which = "; ".join(
            f"{n} row{'s have' if n != 1 else ' has'} a NULL key column {name!r}"
            for name, n in found
        )
        raise SourceError(
            f"{which}: a keyset walk would skip them (NULL is neither above nor below a "
            "cursor). Leave them out of the query with .where(column.is_not(None)), or walk "
            "by columns that are never NULL."
        )

    def _refuse_duplicate(self, key: tuple[Any, ...]) -> None:
        shown = repr(key[0]) if len(key) == 1 else json.dumps(self._encode(key))
        raise SourceError(
            f"The key ({self._key_names()}) is not unique: two rows have {shown}. A keyset walk "
            "would skip rows; order by a unique column, or add one (the primary key) to the key."
        )
