"""Logs a person can follow: every line batchflow logs about a job names the job, its handler and
its step, and ``BATCHFLOW_LOG_FORMAT=json`` turns batchflow's lines into JSON, one object per
line, for log shippers.

The worker says which job it works on with :func:`about_job` (a context variable, so threads and
asyncio tasks each keep their own); :class:`JobContext`, a filter on the ``batchflow`` logger,
adds ``job_id``, ``handler``, ``step`` and ``lane`` to each record logged inside, which a format
string may use (``%(job_id)s``). In the text format it also ends the line with
``[job=... handler=... step=...]``, so that the app's own log format shows them unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

LOGGER = "batchflow"
FORMATS = ("text", "json")

_about: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "batchflow_job", default=None
)


@contextlib.contextmanager
def about_job(
    job_id: str, *, handler: str | None = None, step: int | None = None, lane: int = 0
) -> Iterator[None]:
    """Inside the block, batchflow's log records name this job (and handler, step, lane)."""
    token = _about.set({"job_id": job_id, "handler": handler, "step": step, "lane": lane})
    try:
        yield
    finally:
        _about.reset(token)


def name_handler(handler: str) -> None:
    """The job the block is about turned out to run ``handler`` (known once its step claimed
    it)."""
    about = _about.get()
    if about is not None:
        about["handler"] = handler


class JobContext(logging.Filter):
    """Adds the job a record is about to it (``None`` outside a job); with ``suffix``, also
    to the end of its message."""

    def __init__(self, *, suffix: bool) -> None:
        super().__init__()
        self.suffix = suffix

    def filter(self, record: logging.LogRecord) -> bool:
        about = _about.get() or {}
        for name in ("job_id", "handler", "step", "lane"):
            if not hasattr(record, name):
                setattr(record, name, about.get(name))
        if self.suffix and about and not getattr(record, "batchflow_suffixed", False):
            parts = [f"job={about['job_id']}"]
            if about.get("handler"):
                parts.append(f"handler={about['handler']}")
            if about.get("step") is not None:
                step = about["step"]
                parts.append(f"step={step}" + (f" lane={about['lane']}" if about["lane"] else ""))
            record.msg = f"{record.msg} [{' '.join(parts)}]"
            record.batchflow_suffixed = True
        return True


class JsonLines(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``job_id``, ``handler``, ``step``, ``lane``, ``process``, ``thread``, and ``exception`` (the
    traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("job_id", "handler", "step", "lane"):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        line["process"] = record.process
        line["thread"] = record.threadName
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(log_format: str) -> None:
    """Set up the ``batchflow`` logger for ``log_format`` (once per process; again only when the
    format changes): the job filter, and for ``json`` a handler of its own on standard error
    whose lines do not also go up to the app's handlers."""
    logger = logging.getLogger(LOGGER)
    for old in [f for f in logger.filters if isinstance(f, JobContext)]:
        logger.removeFilter(old)
    ours = [h for h in logger.handlers if isinstance(h.formatter, JsonLines)]
    for handler in ours:
        logger.removeHandler(handler)
    if ours:
        logger.propagate = True  # as it was before batchflow's own handler took over
    logger.addFilter(JobContext(suffix=log_format == "text"))
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLines())
        logger.addHandler(handler)
        logger.propagate = False
