"""A job's per-id results read page by page (see :meth:`batchflow.store.Store.results_page`)."""

from __future__ import annotations

from typing import cast

import redis

# A results cursor packs where HSCAN is (its cursor), the COUNT it read the batch there with, and
# how many of that batch's entries were returned: HSCAN returns whole buckets (a small hash, all
# of it) and reads the same batch again from the same cursor and COUNT while the hash does not
# change. A batch is COUNT plus a bucket's rest, or a whole listpack-encoded hash (far below
# 2^20 entries); HSCAN's cursor stays below 2^34 (a hash holds at most 2^32 fields).
_SKIP_BITS, _BATCH_BITS = 20, 10


def pack_cursor(scan: int, batch: int, skip: int) -> int:
    """One integer below 2^64 for where a results page ended (see :meth:`Store.results_page`)."""
    return ((scan << _BATCH_BITS | batch - 1) << _SKIP_BITS) | skip


def unpack_cursor(cursor: int) -> tuple[int, int, int]:
    """``(HSCAN cursor, batch COUNT, entries of that batch already returned)``."""
    batch = (cursor >> _SKIP_BITS & (1 << _BATCH_BITS) - 1) + 1
    return cursor >> (_SKIP_BITS + _BATCH_BITS), batch, cursor & (1 << _SKIP_BITS) - 1


def read_page(client: redis.Redis, key: str, cursor: int, count: int) -> tuple[int, dict[str, str]]:
    """At most ``count`` entries of the hash ``key`` from ``cursor`` on, and the next cursor (0:
    no more). Every entry exactly once across the pages while the hash does not change."""
    scan, batch, skip = unpack_cursor(cursor)
    batch = batch if skip else count
    page: dict[str, str] = {}
    while True:
        after, found = client.hscan(key, cursor=scan, count=batch)
        entries = list(cast(dict[str, str], found).items())[skip:]
        room = count - len(page)
        page.update(entries[:room])
        if len(entries) > room:  # the page ends inside this batch: read it again from there
            return pack_cursor(scan, batch, skip + room), page
        scan, batch, skip = int(after), count - len(page), 0
        if not scan or not batch:
            return (pack_cursor(scan, count, 0) if scan else 0), page
