"""An uploaded CSV file's rows as a resumable source; the checks an upload gets before a job is
created; the rejected rows handed back as a CSV to fix (XLSX workbooks are turned into CSV by
:mod:`batchflow.xlsx`).

Rows are walked by byte offset: an entry's cursor is the offset just past its row, so a step run
again after its worker died seeks there and reads on. The file is read in binary and split into
lines here, each decoded on its own and fed to :func:`csv.reader` (which pulls only the lines a
row needs): a line that is not valid text, or a row the parser refuses, is one bad row, and the
walk goes on with the next line.

Row numbers count as a spreadsheet shows them: the header is row 1, the first data row row 2; a
quoted value spanning lines is one row (a row's number is its ordinal, not a line number); a
blank line is counted (a spreadsheet shows an empty row) but is no entry. Column names are
compared without their surrounding spaces and case: a header ``Email`` matches the expected
column ``email``, and items carry the expected spelling.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from .exceptions import ConfigurationError, InvalidParams
from .files import neutralize_cell
from .i18n import N_, Message, shown
from .i18n import gettext as _
from .sources import Entry, Plan, Source

#: What a row's problems say, kept as messages (shown in each reader's language).
NOT_VALID = N_("is not valid %(encoding)s (byte %(byte)s at position %(where)s)")
ROW_PROBLEM = N_("Row %(row)s %(problem)s.")


def kept(text: str, **args: Any) -> str:
    """``text`` with ``args`` as a job keeps it: a message id with its arguments."""
    return Message(text, **args).stored()


#: The column :func:`rejected_rows_csv` adds, with each row's message.
ERROR_COLUMN = "error"
#: The reader settings a plan keeps, so every step and the rejected-rows export parse alike.
DIALECT_FIELDS = "delimiter quotechar escapechar doublequote skipinitialspace quoting".split()
#: A row may take this many times ``max_field`` bytes (all its lines), then it is one bad row
#: and the walk skips to the next line: no runaway quote or newline-free file fills the memory.
ROW_BYTES_PER_FIELD_LIMIT = 16
XLSX_EXTRA = N_("XLSX uploads need the xlsx extra: pip install batchflow[xlsx]")


class CsvRow(dict[str, str]):
    """One row: its values by column name (``row["email"]``), and the row as written.

    :ivar raw: every value in file order, also those beyond the header's columns; for a row the
        parser could not split (bad quoting, too long), one value: the row's text.
    :ivar row: the row's number (the header is row 1).
    """

    def __init__(self, header: Sequence[str], values: Sequence[str], row: int) -> None:
        super().__init__(zip(header, values, strict=False))
        self.raw = list(values)
        self.row = row


@dataclasses.dataclass(frozen=True)
class _Record:
    row: int
    values: list[str]
    problem: str | None  # the error, after "Row N " ("has 5 values; ...")
    end: int  # the byte offset just past the row


class _RowTooLong(Exception):
    """Raised by the line feed, through csv.reader: the row passed its size limit."""


class _LineFeed:
    """The lines of a binary file from a byte offset, decoded one by one for csv.reader. csv.reader
    pulls only the lines a row needs, so after each row :attr:`offset` is the byte just past it.
    A class, not a generator: it raises :class:`_RowTooLong` into the reader and goes on."""

    def __init__(self, file: IO[bytes], offset: int, encoding: str, max_row_bytes: int) -> None:
        file.seek(offset)
        self.file, self.offset = file, offset
        self.encoding, self.max_row_bytes = encoding, max_row_bytes
        self.start_row()

    def start_row(self) -> None:
        self.row_bytes = 0
        self.problem: str | None = None
        self.text: list[str] = []

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        line = self.file.readline(self.max_row_bytes - self.row_bytes + 1)
        if not line:
            raise StopIteration
        self.offset += len(line)
        self.row_bytes += len(line)
        if self.row_bytes > self.max_row_bytes:
            while not line.endswith(b"\n"):  # skip the rest of this line, unread
                line = self.file.readline(65536)
                self.offset += len(line)
                if not line:
                    break
            raise _RowTooLong()
        try:
            text = line.decode(self.encoding)
        except UnicodeDecodeError as exc:
            text = line.decode(self.encoding, "replace")
            if self.problem is None:
                where = self.row_bytes - len(line) + exc.start + 1
                name = _encoding_name(self.encoding)
                byte = f"0x{line[exc.start]:02x}"
                self.problem = kept(NOT_VALID, encoding=name, byte=byte, where=str(where))
        if "\x00" in text:
            if self.problem is None:
                self.problem = kept(N_("contains a NUL byte (binary data, not text)"))
            text = text.replace("\x00", "\ufffd")
        self.text.append(text)
        return text


def _encoding_name(encoding: str) -> str:
    name = codecs.lookup(encoding).name
    return "UTF-8" if name in ("utf-8", "utf-8-sig") else name


def _line_encoding(encoding: str) -> str:
    """The codec each line is decoded with: UTF-8 for ``utf-8-sig`` (the BOM is skipped once, at
    the start of the file). Only encodings where a newline is the byte 0x0A can be split here."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ConfigurationError(f"Unknown encoding {encoding!r} for a CSV file.") from None
    name = "utf-8" if name == "utf-8-sig" else name
    if '\n\r,;"'.encode(name, "replace") != b'\n\r,;"':
        raise ConfigurationError(
            f"CSV files in {name} cannot be read line by line; convert them to UTF-8."
        )
    return name


def _quoting_message(exc: csv.Error, delimiter: str) -> str:
    text = str(exc)
    if "field larger than field limit" in text:
        limit = csv.field_size_limit()
        return kept(
            N_("has a value longer than %(most)s characters (a quote never closed?)"), most=limit
        )
    if "expected after" in text:
        return kept(
            N_(
                "has a badly quoted value: a closing quote must be followed by %(delimiter)r "
                "or the end of the line"
            ),
            delimiter=delimiter,
        )
    if "unexpected end of data" in text:
        return kept(N_("has a quote that is never closed"))
    if "new-line character" in text:
        return kept(N_("has a line break inside a value without quotes"))
    return kept(N_("could not be read (%(why)s)"), why=text)


def _row_problem(values: list[str], max_field: int, width: int | None) -> str | None:
    long = next((n for n, value in enumerate(values) if len(value) > max_field), None)
    if long is not None:
        return kept(
            N_("has a value longer than %(most)s characters (value %(which)s)"),
            most=max_field,
            which=str(long + 1),
        )
    if width is not None and len(values) != width:
        text = N_("has %(count)s value; the header has %(width)s columns")
        if len(values) != 1:
            text = N_("has %(count)s values; the header has %(width)s columns")
        return kept(text, count=len(values), width=width)
    return None


def _walk(
    file: IO[bytes], offset: int, row: int, state: Mapping[str, Any], width: int | None
) -> Iterator[_Record]:
    """The records of ``file`` from byte ``offset``, the first numbered ``row + 1``; blank lines
    are counted and skipped. ``width``: the header's column count, None while reading it."""
    dialect, max_field = state["dialect"], state["max_field"]
    limit = max_field * ROW_BYTES_PER_FIELD_LIMIT
    feed = _LineFeed(file, offset, state["encoding"], limit)
    reader = csv.reader(feed, strict=True, **dialect)
    while True:
        feed.start_row()
        row += 1
        problem = None
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problem = _quoting_message(exc, dialect["delimiter"])
        except _RowTooLong:
            problem = kept(N_("is longer than %(most)s bytes"), most=limit)
        if problem is not None:
            values = ["".join(feed.text).rstrip("\r\n")[:max_field]]
        elif not values and feed.problem is None:
            continue
        problem = problem or feed.problem or _row_problem(values, max_field, width)
        yield _Record(row, values, problem, feed.offset)


def _reading_state(
    encoding: str, dialect: str | type[csv.Dialect], max_field: int
) -> dict[str, Any]:
    if max_field > csv.field_size_limit():
        raise ConfigurationError(
            f"max_field={max_field} is above the csv module's limit ({csv.field_size_limit()}): "
            f"call csv.field_size_limit({max_field}) once at startup, or lower max_field."
        )
    found = csv.get_dialect(dialect) if isinstance(dialect, str) else dialect
    return {
        "encoding": _line_encoding(encoding),
        "dialect": {name: getattr(found, name) for name in DIALECT_FIELDS},
        "max_field": max_field,
    }


def _first_record(file: IO[bytes], state: Mapping[str, Any]) -> _Record:
    """The header row, or InvalidParams if the file has none that can be read."""
    file.seek(0)
    start = len(codecs.BOM_UTF8) if file.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0
    if start and state["encoding"] != "utf-8":
        start = 0  # a BOM in a file said to be in another encoding: let the header show it
    record = next(_walk(file, start, 0, state, None), None)
    if record is None:
        raise InvalidParams(_("The file is empty."))
    if record.row != 1:
        raise InvalidParams(_("The first line is blank: it must name the columns."))
    if record.problem and NOT_VALID in record.problem:
        raise InvalidParams(
            _(
                "The header row %(problem)s: save the file as CSV UTF-8, or set the encoding.",
                problem=shown(record.problem),
            )
        )
    if record.problem:
        raise InvalidParams(_("The header row %(problem)s.", problem=shown(record.problem)))
    return record


def column_names(names: Iterable[str]) -> str:
    """Names quoted and listed: ``'email', 'name'``."""
    return ", ".join(f"'{name}'" for name in names)


def check_header(
    raw: Sequence[str], required: Sequence[str] = (), optional: Sequence[str] | None = None
) -> list[str]:
    """The header's column names, stripped, with expected names in their expected spelling.

    :param required: the columns the file must have.
    :param optional: the columns it may have besides; None: any other column is accepted.
    :raises InvalidParams: a blank or repeated name, a missing or an unknown column.
    """
    names = [name.strip() for name in raw]
    blank = [str(n + 1) for n, name in enumerate(names) if not name]
    if blank:
        raise InvalidParams(
            _(
                "Column(s) %(columns)s of the header have no name: name them, or delete the "
                "empty columns.",
                columns=", ".join(blank),
            )
        )
    expected = {name.casefold(): name for name in [*required, *(optional or ())]}
    names = [expected.get(name.casefold(), name) for name in names]
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name.casefold() in seen:
            repeated.append(name)
        seen.add(name.casefold())
    if repeated:
        raise InvalidParams(
            f"The column(s) {column_names(dict.fromkeys(repeated))} appear more than once in "
            "the header."
        )
    messages = []
    missing = [name for name in required if name.casefold() not in seen]
    if missing:
        messages.append(f"The file lacks the column(s) {column_names(missing)}.")
    if optional is not None:
        unknown = [name for name in names if name.casefold() not in expected]
        if unknown:
            messages.append(
                f"Unknown column(s) {column_names(unknown)}: "
                f"expected {column_names(list(expected.values()))}."
            )
    if messages:
        raise InvalidParams(" ".join(messages))
    return names


class CsvSource(Source):
    """The rows of a CSV file, each an :class:`Entry` whose id is its row number (text) and whose
    item is a :class:`CsvRow` (values by column name).

    A malformed row is an entry with ``error`` set (counted bad with that message, never given
    to the handler): a wrong number of values, bad quoting, a NUL byte, a value longer than
    ``max_field`` characters, a line that is not valid text in ``encoding`` (each line is decoded
    on its own, so a file that changes encoding halfway has bad rows, not a failed job). Its item
    holds what could be parsed; ``item.raw`` has every value.

    :param path: the file (an upload kept for the job's life).
    :param encoding: the file's text encoding; ``utf-8-sig`` reads UTF-8 with or without a BOM.
    :param columns: the columns the header must have (more are accepted, and kept in items).
    :param dialect: a :mod:`csv` dialect name or class (delimiter, quoting).
    :param max_field: the longest value accepted, in characters; at most
        :func:`csv.field_size_limit` (131072 unless the process raised it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encoding: str = "utf-8-sig",
        columns: Sequence[str] | None = None,
        dialect: str | type[csv.Dialect] = "excel",
        max_field: int = 131072,
    ) -> None:
        self.path = os.fspath(path)
        self.columns = list(columns or ())
        self.reading = _reading_state(encoding, dialect, max_field)

    def plan(self) -> Plan:
        """Check the header and count the rows, in one streaming pass over the file (raises
        InvalidParams for a file with no header, or one that lacks a column of ``columns``)."""
        with open(self.path, "rb") as file:
            first = _first_record(file, self.reading)
            header = check_header(first.values, self.columns)
            total = sum(1 for _row in _walk(file, first.end, 1, self.reading, len(header)))
        return Plan(state={**self.reading, "header": header, "offset": first.end}, total=total)

    def read(self, state: dict[str, Any], cursor: Any, limit: int) -> list[Entry]:
        """Up to ``limit`` rows from the cursor's byte offset (the first data row for None).
        Each entry's cursor is ``{"offset": <byte just past the row>, "row": <its number>}``."""
        offset, row = (state["offset"], 1) if cursor is None else (cursor["offset"], cursor["row"])
        header = state["header"]
        entries: list[Entry] = []
        with open(self.path, "rb") as file:
            for record in _walk(file, offset, row, state, len(header)):
                if len(entries) >= limit:
                    break
                error = (
                    kept(ROW_PROBLEM, row=str(record.row), problem=record.problem)
                    if record.problem
                    else None
                )
                item = CsvRow(header, record.values, record.row)
                after = {"offset": record.end, "row": record.row}
                entries.append(Entry(str(record.row), item, after, error))
        return entries


def _sniff(chunk: bytes, encoding: str, complete: bool) -> None:
    """InvalidParams if the file's first bytes are not CSV text in ``encoding``."""
    if chunk.startswith(b"PK\x03\x04"):
        raise InvalidParams(
            _(
                "This is an Excel workbook (XLSX) or another zip file, not a CSV file: save it "
                "as CSV UTF-8 (in Excel: File > Save As), or upload it where XLSX is accepted "
                "(that needs the xlsx extra: pip install batchflow[xlsx])."
            )
        )
    if chunk.startswith(b"\xd0\xcf\x11\xe0"):
        raise InvalidParams(_("This is an old Excel workbook (XLS): save it as CSV UTF-8."))
    if chunk.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InvalidParams(_("This file is UTF-16 text: save it as CSV UTF-8."))
    if b"\x00" in chunk:
        raise InvalidParams(
            _(
                "This does not look like a CSV file (it holds binary data: NUL bytes): "
                "upload a CSV file, saved as CSV UTF-8."
            )
        )
    try:
        codecs.getincrementaldecoder(encoding)().decode(chunk, final=complete)
    except UnicodeDecodeError as exc:
        line = chunk.count(b"\n", 0, exc.start) + 1
        where = exc.start - chunk.rfind(b"\n", 0, exc.start)
        raise InvalidParams(
            _(
                "The file is not valid %(encoding)s (line %(line)s: byte %(byte)s at position "
                "%(where)s): save it as CSV UTF-8, or set the encoding.",
                encoding=_encoding_name(encoding),
                line=line,
                byte=f"0x{chunk[exc.start]:02x}",
                where=where,
            )
        ) from None


def check_csv(
    path: str | os.PathLike[str],
    *,
    encoding: str = "utf-8-sig",
    required: Sequence[str] = (),
    optional: Sequence[str] | None = None,
    sniff_bytes: int = 65536,
) -> list[str]:
    """The checks a request runs on an uploaded CSV before anything is enqueued: cheap (the first
    ``sniff_bytes`` and the header row), each failure an :class:`InvalidParams` (HTTP 400) whose
    message says what to do. Bad data rows further on are the job's bad rows, not this check's.

    :param required: the columns the file must have.
    :param optional: the columns it may have besides; None: any other column is accepted.
    :returns: the header's column names (see :func:`check_header`).
    :raises InvalidParams: empty, binary, an XLSX, not valid text in ``encoding`` in its first
        ``sniff_bytes``, or a header that is blank, repeats a name, lacks a required column or
        (with ``optional``) has an unknown one.
    """
    state = _reading_state(encoding, "excel", csv.field_size_limit())
    with open(path, "rb") as file:
        chunk = file.read(sniff_bytes)
        if not chunk.removeprefix(codecs.BOM_UTF8).strip():
            raise InvalidParams(_("The file is empty."))
        _sniff(chunk, state["encoding"], len(chunk) < sniff_bytes)
        first = _first_record(file, state)
    return check_header(first.values, required, optional)


def rejected_rows_csv(
    path: str | os.PathLike[str], state: Mapping[str, Any], errors: Mapping[str, str]
) -> Iterator[str]:
    """The rows of an upload that ``errors`` names (row-number ids, as :class:`CsvSource` gives
    them), as CSV text to fix and upload again: the upload's own header plus an ``error``
    column, then each such row's values as written, with its message under ``error`` (a row
    short of values is padded with empty ones; values beyond the header's columns follow the
    message). A row the parser could not split has its whole text in the first column.

    Streams the file again (memory grows with ``errors``, not with the file); every cell,
    message included, goes through :func:`~batchflow.handlers.neutralize_cell`, so a value such
    as ``=1+1`` comes back as ``'=1+1``. Starts with a BOM, so Excel reads it as UTF-8.

    :param state: the :attr:`Plan.state` of the job's :class:`CsvSource`.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values: Sequence[str]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([neutralize_cell(value) for value in values])
        return buffer.getvalue()

    wanted = set(errors)
    with open(path, "rb") as file:
        header = _first_record(file, state).values
        taken = ERROR_COLUMN in {name.strip().casefold() for name in header}
        yield "\ufeff" + line([*header, f"{ERROR_COLUMN} (batchflow)" if taken else ERROR_COLUMN])
        for record in _walk(file, state["offset"], 1, state, None):
            if not wanted:
                return
            key = str(record.row)
            if key in wanted:
                wanted.discard(key)
                values, width = record.values, len(header)
                padded = [*values[:width], *[""] * (width - len(values))]
                yield line([*padded, shown(errors[key]), *values[width:]])
