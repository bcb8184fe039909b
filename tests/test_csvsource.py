"""CsvSource walks a CSV file by byte offset: every cursor resumes exactly, every malformed row
is one bad entry and the walk goes on; check_csv's messages; the rejected rows as a CSV to fix;
XLSX workbooks turned into CSV."""

from __future__ import annotations

import csv
import datetime
import io

import pytest

from batchflow.csvsource import CsvRow, CsvSource, check_csv, rejected_rows_csv
from batchflow.exceptions import ConfigurationError, InvalidParams
from batchflow.i18n import shown
from batchflow.xlsx import xlsx_to_csv

# Every malformed case in one file, UTF-8 with a BOM and CRLF line ends, with a latin-1 line,
# a quoted value spanning lines, a blank line in the middle, LF-only lines and a blank end.
MIXED = (
    b"\xef\xbb\xbfname, Email ,city\r\n"  # row 1: header (spaces around a name, case)
    b"Ann,ann@example.com,Oslo\r\n"  # 2
    b'"Bob\r\nBobson",bob@example.com,"Rome, IT"\r\n'  # 3: one row over two lines
    b"Cy,cy@example.com\r\n"  # 4: too few values
    b"\r\n"  # 5: blank: counted, not an entry
    b"D\xe9d\xe9,dede@example.com,Lyon\r\n"  # 6: latin-1 bytes in a UTF-8 file
    b'Eve,"eve"@example.com,Paris\r\n'  # 7: bad quoting
    b"F\x00x,f@example.com,Bern\n"  # 8: a NUL byte (LF line end)
    b"Gil,gil@example.com,Kyiv,extra,more\n"  # 9: too many values
    b"Hal,hal@example.com,Graz\n"  # 10
    b"\n\n"  # blank lines at the end: no rows
)
EXPECTED = {
    "2": None,
    "3": None,
    "4": "Row 4 has 2 values; the header has 3 columns.",
    "6": "Row 6 is not valid UTF-8 (byte 0xe9 at position 2).",
    "7": (
        "Row 7 has a badly quoted value: a closing quote must be followed by ',' or the end "
        "of the line."
    ),
    "8": "Row 8 contains a NUL byte (binary data, not text).",
    "9": "Row 9 has 5 values; the header has 3 columns.",
    "10": None,
}


@pytest.fixture
def mixed(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(MIXED)
    return path


def walk_all(source, state, cursor=None, limit=3):
    entries = []
    while True:
        batch = source.read(state, cursor, limit)
        entries += batch
        if len(batch) < limit:
            return entries
        cursor = batch[-1].cursor


def test_every_row_is_an_entry_and_every_malformed_row_is_a_bad_one(mixed):
    source = CsvSource(mixed, columns=["email", "name"])
    plan = source.plan()
    assert plan.state["header"] == ["name", "email", "city"]
    assert plan.state["offset"] == len(b"\xef\xbb\xbfname, Email ,city\r\n")
    assert plan.total == 8
    entries = walk_all(source, plan.state)
    assert {e.id: e.error and shown(e.error) for e in entries} == EXPECTED
    assert entries[0].item == {"name": "Ann", "email": "ann@example.com", "city": "Oslo"}
    assert entries[1].item["name"] == "Bob\r\nBobson" and entries[1].item["city"] == "Rome, IT"
    assert [e.item.row for e in entries] == [2, 3, 4, 6, 7, 8, 9, 10]
    bad = {e.id: e.item for e in entries if e.error}
    assert bad["4"] == {"name": "Cy", "email": "cy@example.com"}
    assert bad["6"].raw == ["D\ufffdd\ufffd", "dede@example.com", "Lyon"]
    assert bad["7"].raw == ['Eve,"eve"@example.com,Paris']  # unsplittable: the row's text
    assert bad["9"].raw == ["Gil", "gil@example.com", "Kyiv", "extra", "more"]
    assert isinstance(entries[0].item, CsvRow) and entries[0].item.raw == [
        "Ann",
        "ann@example.com",
        "Oslo",
    ]


def test_each_cursor_is_the_byte_just_past_its_row_and_resumes_exactly(mixed):
    source = CsvSource(mixed)
    plan = source.plan()
    entries = source.read(plan.state, None, 100)
    assert len(entries) == 8
    ends = [e.cursor["offset"] for e in entries]
    # Each row's bytes, from the previous cursor to its own, are exactly its lines in the file.
    starts = [plan.state["offset"], *ends[:-1]]
    lines = [MIXED[a:b] for a, b in zip(starts, ends, strict=True)]
    assert lines[1] == b'"Bob\r\nBobson",bob@example.com,"Rome, IT"\r\n'
    assert lines[3] == b"\r\nD\xe9d\xe9,dede@example.com,Lyon\r\n"  # the blank line goes along
    assert lines[-1] == b"Hal,hal@example.com,Graz\n"
    for n, entry in enumerate(entries):
        rest = source.read(plan.state, entry.cursor, 100)
        assert [e.id for e in rest] == [e.id for e in entries[n + 1 :]]
        assert [e.item for e in rest] == [e.item for e in entries[n + 1 :]]
    assert source.read(plan.state, entries[-1].cursor, 5) == []
    for limit in (1, 2, 5, 8):
        assert [e.id for e in walk_all(source, plan.state, limit=limit)] == list(EXPECTED)


def test_lf_and_crlf_files_and_no_bom_read_alike(tmp_path):
    rows = [["id", "note"], ["1", "plain"], ["2", 'a "quote"'], ["3", "two\nlines"]]
    for newline in ("\n", "\r\n"):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator=newline).writerows(rows)
        path = tmp_path / f"f{len(newline)}.csv"
        path.write_bytes(buffer.getvalue().encode())  # no BOM, no trailing blank line
        source = CsvSource(path)
        plan = source.plan()
        assert plan.total == 3
        entries = source.read(plan.state, None, 10)
        assert [e.item for e in entries] == [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
        assert entries[-1].cursor["offset"] == path.stat().st_size


def test_an_overlong_value_is_a_bad_row_and_so_is_a_runaway_quote(tmp_path):
    path = tmp_path / "long.csv"
    path.write_bytes(
        b"a,b\n1," + b"x" * 101 + b"\n2,ok\n" + b'3,"never closed\n' + b"y" * 3000 + b"\n4,ok\n"
    )
    source = CsvSource(path, max_field=100)
    plan = source.plan()
    entries = source.read(plan.state, None, 10)
    assert [(e.id, e.error and shown(e.error)) for e in entries] == [
        ("2", "Row 2 has a value longer than 100 characters (value 2)."),
        ("3", None),
        ("4", "Row 4 is longer than 1,600 bytes."),
        ("5", None),  # the walk went on with the line after the runaway row
    ]
    assert entries[1].item == {"a": "2", "b": "ok"}
    assert entries[3].item == {"a": "4", "b": "ok"}
    assert plan.total == 4


def test_a_quote_open_at_the_end_is_a_bad_last_row(tmp_path):
    path = tmp_path / "open.csv"
    path.write_bytes(b'a,b\n1,2\n3,"open\n')
    source = CsvSource(path)
    entries = source.read(source.plan().state, None, 10)
    assert [e.error and shown(e.error) for e in entries] == [
        None,
        "Row 3 has a quote that is never closed.",
    ]


def test_the_encoding_is_a_setting_and_unusable_ones_are_refused(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("nom,ville\nDédé,Zürich\n".encode("latin-1"))
    source = CsvSource(path, encoding="latin-1")
    assert source.read(source.plan().state, None, 5)[0].item == {"nom": "Dédé", "ville": "Zürich"}
    with pytest.raises(ConfigurationError, match="utf-16 cannot be read line by line"):
        CsvSource(path, encoding="utf-16")
    with pytest.raises(ConfigurationError, match="field_size_limit"):
        CsvSource(path, max_field=csv.field_size_limit() + 1)


def test_plan_refuses_a_header_without_the_columns(mixed):
    with pytest.raises(InvalidParams, match=r"^The file lacks the column\(s\) 'phone'\.$"):
        CsvSource(mixed, columns=["phone", "email"]).plan()


def write(tmp_path, data: bytes, name="up.csv"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "The file is empty."),
        (b"\xef\xbb\xbf\r\n\r\n", "The file is empty."),
        (b"PK\x03\x04\x14\x00\x06\x00", "This is an Excel workbook (XLSX)"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1", "This is an old Excel workbook (XLS)"),
        (b"\xff\xfen\x00a\x00", "This file is UTF-16 text: save it as CSV UTF-8."),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "This does not look like a CSV file (it holds binary data"),
        (
            b"name,city\nD\xe9d\xe9,Lyon\n",
            "The file is not valid UTF-8 (line 2: byte 0xe9 at position 2): save it as CSV "
            "UTF-8, or set the encoding.",
        ),
        (b"\nname,email\n", "The first line is blank: it must name the columns."),
        (b"name,,email,\n", "Column(s) 2, 4 of the header have no name"),
        (
            b"name,Email,email,name\n",
            "The column(s) 'email', 'name' appear more than once in the header.",
        ),
        (b"email\n", "The file lacks the column(s) 'name'."),
        (b"city\n", "The file lacks the column(s) 'email', 'name'."),
        (
            b"name,email,foo\n",
            "Unknown column(s) 'foo': expected 'email', 'name', 'phone'.",
        ),
        (
            b"name,mail\n",
            "The file lacks the column(s) 'email'. Unknown column(s) 'mail': expected 'email', "
            "'name', 'phone'.",
        ),
        (b'"name,email\n', "The header row has a quote that is never closed."),
    ],
)
def test_check_csv_says_what_is_wrong(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(InvalidParams) as raised:
        check_csv(path, required=["email", "name"], optional=["phone"])
    assert str(raised.value).startswith(message)
    assert raised.value.http_status == 400


def test_check_csv_xlsx_message_says_both_ways_out(tmp_path):
    with pytest.raises(InvalidParams) as raised:
        check_csv(write(tmp_path, b"PK\x03\x04rest"))
    assert "save it as CSV UTF-8" in str(raised.value)
    assert "pip install batchflow[xlsx]" in str(raised.value)


def test_check_csv_returns_the_header_in_the_expected_spelling(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf Name ,EMAIL,notes\r\nAnn,a@x,\r\n")
    assert check_csv(path, required=["email", "name"]) == ["name", "email", "notes"]
    assert check_csv(path) == ["Name", "EMAIL", "notes"]


def test_a_bad_line_past_the_sniffed_bytes_is_left_to_the_walk(tmp_path):
    path = write(tmp_path, b"name,city\n" + b"Ann,Oslo\n" * 10 + b"D\xe9d\xe9,Lyon\n")
    assert check_csv(path, sniff_bytes=64) == ["name", "city"]


def test_check_csv_undecodable_header_names_the_encoding(tmp_path):
    path = write(tmp_path, b"n\xe4me,city\nAnn,Oslo\n")
    with pytest.raises(InvalidParams, match=r"not valid UTF-8 \(line 1: byte 0xe4 at position 2\)"):
        check_csv(path)
    with pytest.raises(InvalidParams, match="^The header row is not valid UTF-8 .*encoding"):
        CsvSource(path).plan()


def test_rejected_rows_come_back_as_the_upload_with_an_error_column(mixed):
    source = CsvSource(mixed)
    plan = source.plan()
    entries = walk_all(source, plan.state)
    errors = {e.id: e.error for e in entries if e.error}
    errors["10"] = '=HYPERLINK("http://evil")'  # a handler's message, neutralised too
    errors["3"] = "Duplicate email"
    text = "".join(rejected_rows_csv(mixed, plan.state, errors))
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")))
    assert rows[0] == ["name", " Email ", "city", "error"]  # the upload's own header
    assert rows[1:] == [
        ["Bob\r\nBobson", "bob@example.com", "Rome, IT", "Duplicate email"],
        ["Cy", "cy@example.com", "", EXPECTED["4"]],  # padded: the message under "error"
        ["D\ufffdd\ufffd", "dede@example.com", "Lyon", EXPECTED["6"]],
        ['Eve,"eve"@example.com,Paris', "", "", EXPECTED["7"]],
        ["F\ufffdx", "f@example.com", "Bern", EXPECTED["8"]],
        ["Gil", "gil@example.com", "Kyiv", EXPECTED["9"], "extra", "more"],
        ["Hal", "hal@example.com", "Graz", '\'=HYPERLINK("http://evil")'],
    ]


def test_rejected_rows_neutralise_formula_values(tmp_path):
    path = write(tmp_path, b"name,amount\n=1+1,-5\nok,3\n")
    plan = CsvSource(path).plan()
    text = "".join(rejected_rows_csv(path, plan.state, {"2": "@bad"}))
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    assert rows == [["name", "amount", "error"], ["'=1+1", "'-5", "'@bad"]]


def test_xlsx_to_csv_writes_dates_ints_floats_and_empty_cells(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "People"
    sheet.append(["name", "born", "count", "ratio", "seen"])
    sheet.append(["Ann", datetime.date(1990, 5, 17), 3, 0.1, datetime.datetime(2024, 3, 1, 9, 30)])
    sheet.append(["Bob", None, 4.0, 2.5, None])
    sheet.append([None, None, None, None, None])
    sheet.append(["Cy", None, 1e20, -0.0, True])
    sheet.append([None] * 5)
    other = book.create_sheet("Other")
    other.append(["x"])
    other.append([1])
    src = tmp_path / "book.xlsx"
    book.save(src)
    dest = tmp_path / "book.csv"
    xlsx_to_csv(src, dest)
    assert dest.read_text(encoding="utf-8").splitlines() == [
        "name,born,count,ratio,seen",
        "Ann,1990-05-17,3,0.1,2024-03-01T09:30:00",
        "Bob,,4,2.5,",
        "",
        "Cy,,100000000000000000000,0,TRUE",
    ]
    source = CsvSource(dest)
    plan = source.plan()
    assert plan.total == 3
    assert [e.id for e in source.read(plan.state, None, 10)] == ["2", "3", "5"]  # the sheet's rows
    xlsx_to_csv(src, dest, sheet="Other")
    assert dest.read_text(encoding="utf-8").splitlines() == ["x", "1"]
    with pytest.raises(InvalidParams, match="no sheet named 'Nope': it has 'People', 'Other'"):
        xlsx_to_csv(src, dest, sheet="Nope")


def test_xlsx_to_csv_refuses_what_is_not_a_workbook(tmp_path):
    pytest.importorskip("openpyxl")
    src = write(tmp_path, b"name,email\n", "fake.xlsx")
    with pytest.raises(InvalidParams, match=r"^This is not a valid Excel workbook \(XLSX\)"):
        xlsx_to_csv(src, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_xlsx_to_csv_without_openpyxl_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openpyxl", None)  # what an install without the extra has
    with pytest.raises(InvalidParams) as raised:
        xlsx_to_csv(tmp_path / "x.xlsx", tmp_path / "x.csv")
    assert str(raised.value) == "XLSX uploads need the xlsx extra: pip install batchflow[xlsx]"


@pytest.mark.slow
def test_plan_counts_a_large_file_in_bounded_memory(tmp_path):
    import tracemalloc

    path = tmp_path / "big.csv"
    with open(path, "wb") as out:
        out.write(b"id,name,email\n")
        for n in range(0, 200_000, 1000):
            out.write(
                b"".join(b"%d,Name %d,n%d@example.com\n" % (i, i, i) for i in range(n, n + 1000))
            )
    tracemalloc.start()
    try:
        plan = CsvSource(path).plan()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.total == 200_000
    assert path.stat().st_size > 5_000_000
    assert peak < 1_000_000, peak
