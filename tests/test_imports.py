"""Import jobs through the web: a CSV (or XLSX) uploaded with the start request, checked before
anything is enqueued, each row validated and applied once by a real worker, and the rejected
rows handed back to fix and upload again. Real Redis, real Celery worker, real files."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time

import pytest

from batchflow import BatchFlow
from tests.handlers import HOOKS, Crash, side
from tests.helpers import wait_for
from tests.webapp import create_app

ALICE = {"X-Test-User": "alice"}
GOOD_AND_BAD = (
    "name,email,age\n"
    "Ada,ada@example.com,36\n"
    "Bob,not-an-email,40\n"
    "Cy,cy@example.com,\n"
    ",nobody@example.com,20\n"
    "Di,di@example.com,200\n"
    "Ed,ed@example.com,50,extra\n"
    "Flo,flo@example.com,61\n"
)


@pytest.fixture
def app(prefix, files_dir):
    return create_app(prefix, files_dir, BATCHFLOW_UPLOAD_MAX_BYTES=64 * 1024)


@pytest.fixture
def client(app):
    return app.test_client()


def csrf(client) -> str:
    page = client.get("/jobs/start/import-contacts", headers=ALICE)
    assert page.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


def upload(client, content: bytes | str, prefix: str, name: str = "contacts.csv", **extra):
    data = content.encode() if isinstance(content, str) else content
    form = {"file": (io.BytesIO(data), name), "prefix": prefix, **extra}
    headers = {**ALICE, "X-CSRFToken": csrf(client), "Accept": "application/json"}
    return client.post(
        "/jobs/start/import-contacts",
        data=form,
        headers=headers,
        content_type="multipart/form-data",
    )


def finish(client, job_id, timeout=30):
    return wait_for(
        lambda: (r := client.get(f"/jobs/{job_id}/status", headers=ALICE).json)["terminal"] and r,
        timeout=timeout,
    )


def applied(prefix: str) -> dict[str, int]:
    return {k: int(v) for k, v in side.hgetall(f"{prefix}:applied").items()}


def test_an_upload_is_checked_row_by_row_and_the_rejected_rows_come_back_to_fix(
    client, web_worker, prefix, files_dir
):
    r = upload(client, GOOD_AND_BAD, prefix)
    assert r.status_code == 202, r.json
    job_id = r.json["id"]
    status = finish(client, job_id)
    assert (status["total"], status["good"], status["bad"]) == (7, 3, 4)
    assert applied(prefix) == {"ada@example.com": 1, "cy@example.com": 1, "flo@example.com": 1}
    ada = json.loads(side.hget(f"{prefix}:contacts", "ada@example.com"))
    assert ada == {"name": "Ada", "email": "ada@example.com", "age": 36}  # converted by the form
    assert status["rejected_url"]
    rejected = client.get(status["rejected_url"], headers=ALICE)
    assert rejected.status_code == 200 and "attachment" in rejected.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(rejected.get_data(as_text=True).lstrip("\ufeff"))))
    assert rows[0] == ["name", "email", "age", "error"]
    assert [row[:3] for row in rows[1:]] == [
        ["Bob", "not-an-email", "40"],
        ["", "nobody@example.com", "20"],
        ["Di", "di@example.com", "200"],
        ["Ed", "ed@example.com", "50"],
    ]
    errors = [row[3] for row in rows[1:]]
    assert errors[0] == "email: Not an email address."
    assert errors[1].startswith("name: ") and errors[2].startswith("age: ")
    assert errors[3] == "Row 7 has 4 values; the header has 3 columns." and rows[4][4] == "extra"
    # The user fixes that file and uploads it again as it is: the error column is ignored.
    fixed = rejected.get_data(as_text=True).replace("not-an-email", "bob@example.com")
    again = upload(client, fixed.replace(",200,", ",20,"), prefix)
    assert again.status_code == 202, again.json
    second = finish(client, again.json["id"])
    assert (second["good"], second["bad"]) == (2, 2)  # Bob and Di now; Ed and the nameless not
    assert applied(prefix)["bob@example.com"] == applied(prefix)["di@example.com"] == 1
    # The upload lives in the job's own folder, owner-only, until the job is cleaned up.
    path = os.path.join(files_dir, job_id, "upload.csv")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    BatchFlow.state(client.application).engine.cleanup(job_id)
    assert not os.path.exists(os.path.dirname(path))
    assert client.get(status["rejected_url"], headers=ALICE).status_code == 404


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"", "a.csv", "The file is empty."),
        (b"PK\x03\x04" + b"\x00" * 100, "a.csv", "XLSX"),
        (b"\x00\x01\x02binary" * 10, "a.csv", "does not look like a CSV"),
        ("name,email\nZo\xe9,z@example.com\n".encode("latin-1"), "a.csv", "not valid UTF-8"),
        (b"name,phone\nAda,123\n", "a.csv", "'email'"),
        (b"name,email,shoe\nAda,a@x.io,42\n", "a.csv", "Unknown column(s) 'shoe'"),
    ],
)
def test_a_bad_file_is_refused_before_anything_is_enqueued(
    client, prefix, files_dir, content, name, message
):
    r = upload(client, content, prefix, name=name)
    assert r.status_code == 400 and message in r.json["error"], r.json
    engine = BatchFlow.state(client.application).engine
    assert engine.jobs("alice") == []
    assert not os.path.exists(files_dir) or os.listdir(files_dir) == []


def test_an_upload_over_the_limit_is_refused_with_413_and_nothing_kept(client, prefix, files_dir):
    r = upload(client, "name,email\n" + "Ada,ada@example.com\n" * 5000, prefix)
    assert r.status_code == 413 and "64 KiB" in r.json["error"]
    assert not os.path.exists(files_dir) or os.listdir(files_dir) == []


def test_an_upload_needs_its_csrf_token_and_a_file(client, prefix, files_dir):
    form = {"file": (io.BytesIO(b"name,email\nA,a@b.c\n"), "a.csv"), "prefix": prefix}
    r = client.post(
        "/jobs/start/import-contacts",
        data=form,
        headers={**ALICE, "Accept": "application/json"},
        content_type="multipart/form-data",
    )
    assert r.status_code == 400 and "CSRF" in r.json["error"]
    headers = {**ALICE, "X-CSRFToken": csrf(client), "Accept": "application/json"}
    r = client.post(
        "/jobs/start/import-contacts",
        data={"prefix": prefix},
        headers=headers,
        content_type="multipart/form-data",
    )
    assert r.status_code == 400 and "Choose a file" in r.json["error"]
    assert not os.path.exists(files_dir) or os.listdir(files_dir) == []


def test_the_start_page_offers_a_file_input_and_shows_errors_beside_it(client, prefix):
    page = client.get("/jobs/start/import-contacts", headers=ALICE)
    assert 'enctype="multipart/form-data"' in page.text
    assert (
        'type="file"' in page.text
        and "with the columns name, email (and, if you like, age)." in page.text
    )
    token = csrf(client)
    form = {"file": (io.BytesIO(b"name,phone\n"), "a.csv"), "prefix": prefix, "csrf_token": token}
    r = client.post(
        "/jobs/start/import-contacts", data=form, headers=ALICE, content_type="multipart/form-data"
    )
    assert r.status_code == 400 and "lacks the column(s) &#39;email&#39;" in r.text
    assert 'type="file"' in r.text


def test_an_xlsx_workbook_is_imported_like_its_csv(client, web_worker, prefix, tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    for row in (["name", "email", "age"], ["Ada", "ada@example.com", 36], ["Bob", "bad", 3]):
        sheet.append(row)
    path = tmp_path / "contacts.xlsx"
    book.save(path)
    r = upload(client, path.read_bytes(), prefix, name="Contacts.XLSX")
    assert r.status_code == 202, r.json
    status = finish(client, r.json["id"])
    assert (status["good"], status["bad"]) == (1, 1)
    assert json.loads(side.hget(f"{prefix}:contacts", "ada@example.com"))["age"] == 36


def test_a_worker_lost_mid_import_applies_no_row_twice_and_loses_none(app, prefix, files_dir):
    """In-process steps: a step dies after applying some rows; the next claim resumes from the
    committed cursor. Only rows the lost step applied before it died may be applied again; every
    row is counted once."""
    from tests.helpers import ListDispatcher

    engine = BatchFlow.state(app).engine
    manual = ListDispatcher()
    engine.dispatcher = manual
    rows = "".join(f"P{n},p{n}@example.com,{n % 100}\n" for n in range(500))
    client = app.test_client()
    r = upload(client, "name,email,age\n" + rows, prefix)
    job_id = r.json["id"]
    manual.drain(engine, limit=2)
    seen = []

    def die(job, values):
        seen.append(values["email"])
        if len(seen) == 4:
            raise Crash()

    HOOKS[f"{job_id}:apply"] = die
    try:
        step, seq, _ = manual.steps.pop(0)
        with pytest.raises(Crash):
            engine.run_step(step, seq)
    finally:
        HOOKS.pop(f"{job_id}:apply")
    engine.maintain(time.time() + engine.settings.lease_seconds + 1, force=True)
    manual.drain(engine)
    state = engine.state(job_id)
    assert (state.count("processed"), state.count("good"), state.total) == (500, 500, 500)
    counts = applied(prefix)
    assert set(counts) == {f"p{n}@example.com" for n in range(500)}
    assert {email for email, n in counts.items() if n > 1} <= set(seen[:3])


def test_a_form_sent_without_a_file_comes_back_with_the_reason_and_its_token(client, prefix):
    token = csrf(client)
    r = client.post(
        "/jobs/start/import-contacts",
        data={"prefix": prefix, "csrf_token": token},
        headers=ALICE,
        content_type="multipart/form-data",
    )
    assert r.status_code == 400 and "Choose a file to upload" in r.text
    assert "CSRF" not in r.text and 'type="file"' in r.text
