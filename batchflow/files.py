"""File jobs: a file (CSV by default) written step by step for the user to download, exactly once
per row even when a step is cut off and run again; and the formula guard every CSV batchflow
writes goes through."""

from __future__ import annotations

import contextlib
import csv
import io
import operator
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

from .handlers import Handler, StepResult
from .job import Job
from .schema import F, Kind, Status
from .sources import items_of

# A spreadsheet skips leading blanks before it looks for a formula: " =1+1" runs too.
_FORMULA = re.compile(r"[ \t\r\n\u00a0]*[=+\-@]|[\t\r]")
#: The first characters a formula may start with (a cheap test before the pattern's).
_FORMULA_STARTS = frozenset("=+-@ \t\r\n\u00a0")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
#: A cell :func:`neutralize_cell` changes, in a column's text cells each after a NUL character.
_FORMULA_IN_COLUMN = re.compile(r"\x00(?:[ \t\r\n\u00a0]*[=+\-@]|[\t\r])")


@contextlib.contextmanager
def _files_dir_errors(job: Job) -> Iterator[None]:
    """An OS error while writing a job's file (a full disk, a folder that is not writable)
    names the setting and the folder, keeping the system's own words."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        error = OSError(
            f"Could not write the job's file in BATCHFLOW_FILES_DIR ({job.files_dir}): {reason}"
        )
        error.errno = exc.errno
        raise error from exc


def neutralize_cell(value: Any) -> Any:
    """``value`` for a CSV cell: text that a spreadsheet would run as a formula (it starts with
    ``=``, ``+``, ``-`` or ``@``, after any spaces, tabs, line breaks or no-break spaces, or with a
    tab or a carriage return) gets a leading ``'``; anything else is returned as it is."""
    if isinstance(value, str) and value[:1] in _FORMULA_STARTS and _FORMULA.match(value):
        return "'" + value
    return value


def neutralize_rows(rows: Iterable[Sequence[Any]]) -> Sequence[Sequence[Any]]:
    """``rows`` with every cell through :func:`neutralize_cell`.

    Rows (tuples or lists) of one width are looked at a column at a time: a column of text (and
    blanks) is joined and searched once, and only a column with a cell to change is changed
    cell by cell; the rows come back as they are when none is. A step's rows by the ten
    thousand cost a few C calls a column instead of a Python call a cell.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    if not set(map(type, rows)) <= {tuple, list} or len(widths := set(map(len, rows))) != 1:
        return [[neutralize_cell(value) for value in row] for row in rows]
    columns = [list(map(operator.itemgetter(at), rows)) for at in range(widths.pop())]
    changed = False
    for at, column in enumerate(columns):
        kinds = set(map(type, column))
        if not any(issubclass(kind, str) for kind in kinds):
            continue  # numbers, dates, blanks: never a formula
        if kinds <= {str, type(None)}:
            text = "\x00" + "\x00".join(filter(None, column))
            if not _FORMULA_IN_COLUMN.search(text):
                continue
        columns[at] = list(map(neutralize_cell, column))
        changed = True
    return list(zip(*columns, strict=True)) if changed else rows


class FileJob(Handler):
    """A job that writes a file for the user to download.

    Write with :meth:`write_rows` (CSV) or :meth:`write` from ``create_job`` and ``continue_job``.
    Each commit records the file's length, and a step writes from the committed length on, at
    explicit offsets (never blindly appending, never truncating below the committed length): a
    step run again after its worker died writes over what the cut-off step left, and the step that
    completes the job trims anything past its end, so every row lands exactly once. A worker that
    was frozen past its lease and wakes up after another took over writes its rows to the same
    offsets the chain wrote them to, so it changes nothing, provided a step's rows depend only on
    the job's committed state (``job.units_processed``, ``job.data``, ``job.params``).

    A file job over a :meth:`~Handler.source` needs no ``continue_job``: each step writes the
    rows :meth:`rows` makes of the source's next entries, and commits the file's length with the
    source's cursor.

    :cvar filename: the name the user downloads; see :meth:`file_name` to compute it.
    :cvar content_type: the download's MIME type.
    :cvar neutralize_formulas: prefix CSV cells that a spreadsheet would run as a formula
        (``=``, ``+``, ``-``, ``@``) with ``'``.
    :cvar header: a CSV header row that ``create_job`` writes first (when set).
    """

    kind: ClassVar[Kind] = Kind.FILE
    filename: ClassVar[str] = "export.csv"
    content_type: ClassVar[str] = "text/csv"
    neutralize_formulas: ClassVar[bool] = True
    header: ClassVar[Sequence[str] | None] = None

    def create_job(self, job: Job) -> StepResult:
        """Write :attr:`header`, if set."""
        if self.header:
            self.write_rows(job, [self.header])
        return None

    def rows(self, items: list[Any], job: Job) -> Iterable[Sequence[Any]]:
        """The CSV rows for a step's entries of the job's source; by default a row (a tuple, a
        SQLAlchemy ``Row``) as it is, or a dict's values."""
        return [list(item.values()) if isinstance(item, dict) else list(item) for item in items]

    def continue_job(self, job: Job, batch_size: int) -> StepResult:
        """Write the rows of the source's next entries (a handler without a source defines its
        own ``continue_job``)."""
        if job.buffer.committed(F.ITEMS_SOURCE) != "source":
            raise NotImplementedError(
                f"{type(self).__name__} must define continue_job(job, batch_size), or source(job)"
            )
        items = items_of(job.entries)
        self.write_rows(job, self.rows(items, job))
        job.mark_processed(len(items))
        if len(items) < len(job.entries):  # entries the source could not read (CSV rows)
            for entry in job.entries:
                if entry.error is not None:
                    job.record_error(entry.id, entry.error)
                    job.bad()
        if job.entries:
            job.advance(job.entries[-1])
        if job.last_slice:
            job.complete()
        return None

    def file_name(self, job: Job) -> str:
        """The download name; override to depend on the job's parameters."""
        return self.filename

    def file_path(self, job: Job) -> str:
        """Where the job's file lives: its own folder under ``BATCHFLOW_FILES_DIR``."""
        name = _SAFE_NAME.sub("_", os.path.basename(self.file_name(job))).strip(" .") or "download"
        return os.path.join(job.files_dir, job.id, name)

    def before_step(self, job: Job) -> None:
        path = self.file_path(job)
        committed = job.committed_file_size
        if committed == 0:
            with _files_dir_errors(job):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "ab").close()
        elif not os.path.exists(path):
            # Recreating it would yield a file without its first rows: cleaned up, or a worker
            # whose BATCHFLOW_FILES_DIR is not the folder the other workers share.
            raise FileNotFoundError(
                f"The job's file {path} is gone: every worker must share BATCHFLOW_FILES_DIR, "
                "and a job's file is deleted only after the job ended."
            )
        job.record_file(
            path, size=committed, name=os.path.basename(path), content_type=self.content_type
        )

    def write(self, job: Job, data: str | bytes) -> None:
        """Add ``data`` after what the job wrote so far (text is written as UTF-8)."""
        raw = data.encode() if isinstance(data, str) else data
        path = job.file_path or self.file_path(job)
        offset = job.file_size
        with _files_dir_errors(job), open(path, "r+b") as handle:
            handle.seek(offset)
            handle.write(raw)
        job.record_file(path, size=offset + len(raw))

    def after_step(self, job: Job) -> None:
        # Only the completing step trims: a cut-off step may have written past the last row.
        path = job.file_path
        if job.buffer.ending is Status.COMPLETED and path and not job.lease_lost:
            os.truncate(path, job.file_size)

    def write_rows(self, job: Job, rows: Iterable[Sequence[Any]]) -> None:
        """Append CSV rows to the job's file."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerows(neutralize_rows(rows) if self.neutralize_formulas else rows)
        self.write(job, buffer.getvalue())

    def cleanup_job(self, job: Job) -> None:
        """Delete the job's file and its folder."""
        path = job.file_path or self.file_path(job)
        folder = os.path.dirname(path)
        if os.path.basename(folder) == job.id:
            shutil.rmtree(folder, ignore_errors=True)
