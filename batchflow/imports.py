"""Import jobs: a person uploads a CSV file (or an XLSX workbook, with the ``xlsx`` extra); each
row is checked, then applied; the rows that were rejected come back as a CSV to fix and upload
again as it is.

The web layer receives the upload (``POST /jobs/start/<name>`` as ``multipart/form-data``, the
file in the field ``file``), runs the cheap checks of :meth:`ImportJob.check_upload` before
anything is enqueued, and keeps the file in the job's own folder under ``BATCHFLOW_FILES_DIR``
until the job is cleaned up. The job walks the file's rows by byte offset
(:class:`~batchflow.csvsource.CsvSource`): nothing of it is copied into Redis.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from .csvsource import ERROR_COLUMN, CsvSource, check_csv
from .exceptions import UserError
from .handlers import ItemsJob
from .job import Job
from .sources import Source

#: The upload's name in the job's folder (an XLSX workbook is converted to it).
UPLOAD_NAME = "upload.csv"
#: The columns the rejected-rows download adds (the second when the upload had an ``error``
#: column of its own): a file fixed and uploaded again as it is carries one, and it is ignored.
MESSAGE_COLUMNS = (ERROR_COLUMN, f"{ERROR_COLUMN} (batchflow)")


def upload_path(files_dir: str, job_id: str) -> str:
    """Where an import job's upload is kept: ``<BATCHFLOW_FILES_DIR>/<job id>/upload.csv``."""
    return os.path.join(files_dir, job_id, UPLOAD_NAME)


class _RowData:
    """A row's values as WTForms reads posted form data (``getlist``)."""

    def __init__(self, row: Mapping[str, str]) -> None:
        self.row = row

    def __contains__(self, name: object) -> bool:
        return name in self.row

    def __iter__(self) -> Any:
        return iter(self.row)

    def __len__(self) -> int:
        return len(self.row)

    def getlist(self, name: str) -> list[str]:
        return [self.row[name]] if name in self.row else []


def form_errors(errors: Mapping[str, Any]) -> str:
    """A WTForms ``form.errors`` as one line: ``"email: Invalid email address. age: ..."``."""
    parts = []
    for name, messages in errors.items():
        texts = messages if isinstance(messages, (list, tuple)) else [messages]
        parts.append(f"{name}: {' '.join(str(text) for text in texts)}")
    return " ".join(parts)


class ImportJob(ItemsJob):
    """Rows of an uploaded CSV file, each checked (:meth:`validate_row`) and applied
    (:meth:`apply`); a rejected row is counted bad with its message, and
    ``GET /jobs/<id>/results?which=errors&format=csv`` hands the rejected rows back in the
    upload's own columns plus an ``error`` column.

    :cvar columns: the columns the file must have (compared without case and surrounding spaces);
        the upload is refused, naming those missing, before anything is enqueued.
    :cvar optional_columns: the other columns it may have; any other column is refused, named.
        None (the default) accepts any other column and passes it on.
    :cvar encoding: the file's text encoding; ``utf-8-sig`` reads UTF-8 with or without a BOM.
    :cvar row_form: a WTForms form class (``wtforms.Form``, or a Flask-WTF ``FlaskForm``) that
        checks and converts each row; its errors are the row's message.
    """

    columns: ClassVar[Sequence[str]] = ()
    optional_columns: ClassVar[Sequence[str] | None] = None
    encoding: ClassVar[str] = "utf-8-sig"
    row_form: ClassVar[type | None] = None
    # The fix for rejected rows is the file: correct them and upload it again.
    can_retry: ClassVar[bool] = False

    def source(self, job: Job) -> Source:
        return CsvSource(
            upload_path(job.files_dir, job.id),
            encoding=self.encoding,
            columns=list(self.columns) or None,
        )

    def check_upload(self, path: str) -> list[str]:
        """The cheap checks an upload gets in the request that sends it: the header it has.

        :raises InvalidParams: saying what is wrong with the file (HTTP 400).
        """
        optional = self.optional_columns
        if optional is not None:
            optional = [*optional, *self._ignored()]
        return check_csv(
            path,
            encoding=self.encoding,
            required=tuple(self.columns),
            optional=None if optional is None else tuple(optional),
        )

    def _ignored(self) -> list[str]:
        declared = {name.casefold() for name in (*self.columns, *(self.optional_columns or ()))}
        return [name for name in MESSAGE_COLUMNS if name.casefold() not in declared]

    def validate_row(self, row: dict[str, str], job: Job) -> dict[str, Any]:
        """A row's values, checked and converted (by :attr:`row_form`, if set); raise a
        :class:`~batchflow.UserError` to reject the row with its message. The ``error`` column
        of a rejected-rows file uploaded again is left out."""
        ignored = {name.casefold() for name in self._ignored()}
        row = {name: value for name, value in row.items() if name.casefold() not in ignored}
        if self.row_form is None:
            return row
        form = self.row_form(formdata=_RowData(row), meta={"csrf": False})
        if not form.validate():
            raise UserError(form_errors(form.errors))
        return dict(form.data)

    def apply(self, values: dict[str, Any], job: Job) -> Any:
        """Apply one checked row (create or update what it describes); raise to reject it. The
        return value (if not None) is kept as the row's result."""
        raise NotImplementedError(f"{type(self).__name__} must define apply(values, job)")

    def change(self, item: Any, job: Job) -> Any:
        return self.apply(self.validate_row(item, job), job)

    def assess(self, item: Any, job: Job) -> Any:
        """In a preview: the row checked, not applied; its values are the sample's text."""
        values = self.validate_row(item, job)
        return ", ".join(str(value) for value in values.values() if value not in (None, ""))

    def cleanup_job(self, job: Job) -> None:
        """Delete the upload and the job's folder."""
        shutil.rmtree(os.path.dirname(upload_path(job.files_dir, job.id)), ignore_errors=True)
