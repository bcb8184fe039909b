"""Resumable sources: where an item job (or a file job) takes its work from, walked by a cursor
that is committed with each step, instead of a list of ids copied into Redis.

A source is asked for its :class:`Plan` once, when the job is created (a query fixes its upper
bound and counts its rows), then, step after step, for the next entries after the committed
cursor. Each :class:`Entry` carries the cursor just past it, and the job commits that cursor with
the entry's outcome, so a step run again after its worker died resumes exactly where the last
commit left off: every entry is handled at least once and counted once.

The sources batchflow ships:

- :class:`CallableSource` (here): any iterator the user can resume from a cursor they give;
- :class:`batchflow.sql.KeysetSource`: a keyset walk over a SQLAlchemy query (the ``sql`` extra);
- :class:`batchflow.csvsource.CsvSource`: the rows of a CSV file, by byte offset.

A source is built afresh by the handler for every step (``source(job)``), in the worker: keep
nothing on it between steps but what its constructor is given.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from .exceptions import UserError


class SourceError(UserError, ValueError):
    """A source cannot be walked safely as it is (a key that is not unique, NULL keys): the job
    fails with this message, shown as written, rather than skip or repeat rows."""


class Entry(NamedTuple):
    """One unit of work a source produced (a named tuple: a step may hold tens of thousands).

    :param id: the entry's id, as per-id results, errors, retry and undo know it (text).
    :param item: what the handler receives (a row, a dict of a CSV row's columns, an id).
    :param cursor: JSON data: the position just past this entry, where the walk resumes.
    :param error: set when the source could not read this entry (a malformed CSV row): the
        entry is counted bad with this message, and the handler never sees it. batchflow's own
        are kept messages (:func:`batchflow.i18n.shown` gives their text in a locale).
    """

    id: str
    item: Any
    cursor: Any
    error: str | None = None


#: An entry's item and error, by position (read in C, for a step's entries by the ten thousand).
_ITEM, _ERROR = operator.itemgetter(1), operator.itemgetter(3)


def all_none(values: Iterable[Any]) -> bool:
    """Whether every value is ``None`` (by identity, in C)."""
    return all(map(operator.is_, values, itertools.repeat(None)))


def items_of(entries: Sequence[Entry]) -> list[Any]:
    """The items of the entries the source could read (those without an error), in order."""
    if all_none(map(_ERROR, entries)):
        return list(map(_ITEM, entries))
    return [entry.item for entry in entries if entry.error is None]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a source fixes once, when its job is created.

    :param state: JSON data the source needs at every step (a query's upper bound, a file's
        header); given back to :meth:`Source.read`.
    :param total: how many entries the walk will meet, if known (the progress bar's
        denominator); entries removed while the job runs are simply not met.
    """

    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    total: int | None = None


class Source:
    """Base class of resumable sources."""

    def plan(self) -> Plan:
        """Fix what the walk covers, once, when the job is created; count it if cheap."""
        return Plan()

    def read(self, state: dict[str, Any], cursor: Any, limit: int) -> list[Entry]:
        """Up to ``limit`` entries after ``cursor`` (None: from the start), in walk order.
        Fewer than ``limit`` means the walk has reached its end.

        :param state: the :attr:`Plan.state` fixed when the job was created.
        """
        raise NotImplementedError(f"{type(self).__name__} must define read(state, cursor, limit)")

    def fetch(self, ids: Sequence[str]) -> list[Entry]:
        """The entries with these ids (those that still exist), for "retry failed"; a source
        that cannot look entries up by id does not offer retry."""
        raise NotImplementedError(f"{type(self).__name__} cannot look entries up by id")

    @classmethod
    def can_fetch(cls) -> bool:
        """Whether :meth:`fetch` is defined (and so a job over this source can retry)."""
        return cls.fetch is not Source.fetch


class CallableSource(Source):
    """Any walk the user can resume from a cursor they give.

    ``walk(cursor)`` yields ``(id, item, next_cursor)`` triples from just after ``cursor`` (None
    for the start), where ``next_cursor`` is JSON data saying where the walk goes on after
    ``item``; batchflow takes what a step needs and closes the iterator. ``total`` (a number or
    a function returning one) sizes the progress bar.

    >>> numbers = CallableSource(lambda after: ((n, n, n) for n in range((after or 0) + 1, 11)))
    """

    def __init__(
        self,
        walk: Callable[[Any], Iterable[tuple[Any, Any, Any]]],
        *,
        total: int | Callable[[], int | None] | None = None,
    ) -> None:
        self.walk = walk
        self.total = total

    def plan(self) -> Plan:
        total = self.total() if callable(self.total) else self.total
        return Plan(total=total)

    def read(self, state: dict[str, Any], cursor: Any, limit: int) -> list[Entry]:
        entries: list[Entry] = []
        if limit <= 0:
            return entries
        iterator = iter(self.walk(cursor))
        try:
            for item_id, item, after in iterator:
                entries.append(Entry(str(item_id), item, after))
                if len(entries) >= limit:
                    break
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        return entries
