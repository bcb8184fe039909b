"""XLSX workbooks turned into CSV files (the ``xlsx`` extra: openpyxl), so an import reads an
uploaded workbook as it reads a CSV upload."""

from __future__ import annotations

import csv
import datetime
import os
from collections.abc import Iterator
from typing import Any

from .csvsource import XLSX_EXTRA, column_names
from .exceptions import InvalidParams
from .i18n import gettext as _


def _xlsx_text(value: Any) -> str:
    """A cell's value as CSV text: dates in ISO form, integral numbers without ``.0``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime.datetime) and value.time() == datetime.time(0):
        value = value.date()  # a date cell: openpyxl gives every date as a datetime
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def xlsx_to_csv(
    src: str | os.PathLike[str], dest: str | os.PathLike[str], *, sheet: str | None = None
) -> None:
    """Write the first sheet (or ``sheet``) of the workbook ``src`` to ``dest`` as UTF-8 CSV,
    streaming (openpyxl's read-only mode): formulas as their last computed values, dates as ISO
    text (``2024-03-01``, ``2024-03-01T09:30:00``), ``3.0`` as ``3``. Rows are padded to the
    header's width; empty rows at the end are dropped.

    :raises InvalidParams: openpyxl is not installed (the ``xlsx`` extra), ``src`` is not a
        workbook, or it has no sheet named ``sheet``.
    """
    try:
        import openpyxl
    except ImportError:
        raise InvalidParams(_(XLSX_EXTRA)) from None
    try:
        book = openpyxl.load_workbook(src, read_only=True, data_only=True)
    except Exception:  # zipfile.BadZipFile, InvalidFileException, KeyError, XML errors
        raise InvalidParams(
            _(
                "This is not a valid Excel workbook (XLSX): open it in Excel and save it again, "
                "or save it as CSV UTF-8."
            )
        ) from None
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise InvalidParams(
                _(
                    "The workbook has no sheet named '%(sheet)s': it has %(sheets)s.",
                    sheet=sheet,
                    sheets=column_names(book.sheetnames),
                )
            )
        rows = (book[sheet] if sheet is not None else book.worksheets[0]).iter_rows(
            values_only=True
        )
        _write_rows(rows, dest)
    finally:
        book.close()


def _write_rows(rows: Iterator[tuple[Any, ...]], dest: str | os.PathLike[str]) -> None:
    width, blank = None, 0
    try:
        with open(dest, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            for cells in rows:
                values = [_xlsx_text(value) for value in cells]
                while values and not values[-1]:
                    values.pop()
                if not values:
                    # Blank lines keep the sheet's row numbers, written only if a row with
                    # values follows; blank rows above the header are dropped.
                    blank += width is not None
                    continue
                width = len(values) if width is None else width
                writer.writerows([[]] * blank)
                blank = 0
                writer.writerow(values + [""] * (width - len(values)))
    except BaseException:
        os.unlink(dest)
        raise
