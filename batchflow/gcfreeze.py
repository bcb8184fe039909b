"""Keeping CPython's garbage collector off what a worker process keeps for good.

A step that reads 50,000 rows allocates hundreds of thousands of objects that live until it
ends (rows, entries, the CSV's lines). Each such wave makes Python run full collections, and a
full collection walks every object the process holds: in a Celery worker, the few hundred
thousand that importing Celery, the app, its handlers and their libraries built, which are never
garbage. Frozen (:func:`gc.freeze`, which CPython's documentation advises for long-lived
processes), they are left out of every collection.

The worker's step task freezes after the first step each handler runs in the process, once the
step has returned, because a handler's first step is often where its libraries are imported and
its connections made (a database driver, an engine and its pool). Garbage is collected first, so
nothing that is already garbage is frozen; the objects frozen are those the process still holds
then, once per handler. Frozen objects are still freed when nothing refers to them any more; only
a reference cycle among them, dropped later, would stay.
"""

from __future__ import annotations

import gc
import os

#: The handlers whose first step each process has run (a forked pool child is a new process).
_seen: dict[int, set[str]] = {}


def freeze_after_first_step(handler: str) -> None:
    """Call after a step of ``handler``: the first time in this process, collect garbage, then
    freeze what remains out of every later collection."""
    seen = _seen.setdefault(os.getpid(), set())
    if handler not in seen:
        seen.add(handler)
        gc.collect()
        gc.freeze()
