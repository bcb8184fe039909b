"""The README's tutorial, shipped as examples/tutorial/, run as a newcomer runs it: the
``flask --app myapp init-db`` command in its folder, the app's own page in a real Chromium, a real
Celery worker, and the CSV compared with the table. And the export's paging by key, step by step,
while rows come and go."""

from __future__ import annotations

import csv
import importlib
import os
import sqlite3
import subprocess
import sys
from typing import Any

import pytest

from batchflow import BatchFlow
from tests.helpers import (
    CHROMIUM,
    ROOT,
    ListDispatcher,
    broker_options,
    launch_chromium,
    live_server,
    make_config,
)

TUTORIAL = os.path.join(ROOT, "examples", "tutorial")


@pytest.fixture(scope="module")
def myapp() -> Any:
    """The tutorial's package, imported from examples/tutorial (and forgotten afterwards, so
    that no other test meets a ``myapp`` module)."""
    loaded = sys.modules.get("myapp")
    assert loaded is None or loaded.__file__.startswith(TUTORIAL), f"another myapp: {loaded}"
    sys.path.insert(0, TUTORIAL)
    try:
        module = importlib.import_module("myapp")
    finally:
        sys.path.remove(TUTORIAL)
    assert module.__file__ == os.path.join(TUTORIAL, "myapp", "__init__.py")
    yield module
    for name in [n for n in sys.modules if n == "myapp" or n.startswith("myapp.")]:
        del sys.modules[name]


@pytest.fixture
def db_file(tmp_path: Any) -> str:
    return str(tmp_path / "contacts.sqlite")


def run_in_tutorial(args: list[str], prefix: str, db_file: str) -> str:
    """Run ``python ARGS`` in examples/tutorial/, where the README runs its commands, on the
    test's database and Redis key prefix; its output."""
    env = {
        **os.environ,
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "DATABASE_URL": f"sqlite:///{db_file}",
        "BATCHFLOW_KEY_PREFIX": prefix,
        "BATCHFLOW_QUEUE": prefix,
    }
    done = subprocess.run(
        [sys.executable, *args], cwd=TUTORIAL, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def init_db(app: Any, contacts: int) -> None:
    """``flask --app myapp init-db --contacts N``, in this process."""
    result = app.test_cli_runner().invoke(args=["init-db", "--contacts", str(contacts)])
    assert result.output == f"Added {contacts} contacts.\n", result.exception


def tutorial_app(myapp: Any, prefix: str, files_dir: str, db_file: str, **config: Any) -> Any:
    """The tutorial's app on the test's database, Redis key prefix and Celery broker keys."""
    return myapp.create_app(
        {
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{db_file}",
            "BATCHFLOW_CELERY": broker_options(prefix),
            **make_config(prefix, files_dir, **config),
        }
    )


def table_rows(db_file: str) -> list[list[str]]:
    """The contacts as the database holds them, read without the app, in id order."""
    with sqlite3.connect(db_file) as connection:
        query = "SELECT id, name, email FROM contacts ORDER BY id"
        return [[str(value) for value in row] for row in connection.execute(query)]


def read_csv(path: str) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_the_readme_commands_run_from_the_tutorial_folder(prefix, db_file):
    """``flask --app myapp init-db`` seeds the table; ``worker.py`` (``celery -A worker``) builds
    the app with the handler registered."""
    init_db = ["-m", "flask", "--app", "myapp", "init-db", "--contacts", "20"]
    assert run_in_tutorial(init_db, prefix, db_file) == "Added 20 contacts.\n"
    assert len(table_rows(db_file)) == 20
    check = "import worker; from batchflow import registry; print(registry.get('contacts-report'))"
    assert "ContactsReport" in run_in_tutorial(["-c", check], prefix, db_file)


def test_the_export_pages_by_key_each_row_once_while_the_table_changes(
    myapp, prefix, files_dir, db_file
):
    """Steps of ten rows, run one by one; between them a contact already exported is deleted
    and new ones are added. Paging by offset would skip row 11 (the rows shift down by one);
    by key, every row that existed throughout is written once, and the new ones at the end."""
    app = tutorial_app(
        myapp, prefix, files_dir, db_file, BATCHFLOW_BATCH_MIN=10, BATCHFLOW_BATCH_MAX=10
    )
    init_db(app, 30)
    again = app.test_cli_runner().invoke(args=["init-db"])  # seeds an empty table only
    assert again.output == "The contacts table is not empty: nothing added.\n"
    before = table_rows(db_file)
    engine = BatchFlow.state(app).engine
    steps = ListDispatcher()
    engine.dispatcher = steps
    Contact, db = myapp.models.Contact, myapp.models.db

    def run_step() -> None:
        job_id, seq, _ = steps.steps.pop(0)
        with app.app_context():  # as in the worker: each step in an app context of its own
            engine.run_step(job_id, seq)

    def change_table(delete: int, add: int) -> None:
        with app.app_context():
            db.session.delete(db.session.get(Contact, delete))
            db.session.add_all(Contact(name=f"New {n}", email=f"new{n}@x.org") for n in range(add))
            db.session.commit()

    job_id = engine.start("contacts-report", owner="tutorial")
    run_step()  # create_job: the count (30), the last id (30) and the header
    assert engine.state(job_id).total == 30
    while engine.state(job_id).count("processed") < 10:
        run_step()  # the first contacts (the batch grows from 1)
    done = engine.state(job_id).count("processed")
    change_table(delete=done, add=3)  # one already exported; 31, 32 and 33 after the last id
    change_table(delete=done + 5, add=0)  # one not yet reached
    while steps.steps:
        run_step()

    state = engine.state(job_id)
    assert state.status.value == "completed"
    rows = read_csv(os.path.join(files_dir, job_id, "contacts.csv"))
    assert rows[0] == ["id", "name", "email"]
    # Each contact that existed at the start and was still there when reached, once, in order.
    assert rows[1:] == [row for row in before if int(row[0]) != done + 5]
    assert state.count("processed") == state.total == 29


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")
def test_the_tutorial_app_exports_its_table_from_its_page(myapp, prefix, files_dir, db_file):
    """The README's steps: init-db, the app's page, its form, the progress page, the download;
    then the modal button on the same page."""
    from playwright.sync_api import sync_playwright

    # At most 100 rows a step: the export takes several steps, each after the last one's key.
    app = tutorial_app(myapp, prefix, files_dir, db_file, BATCHFLOW_BATCH_MAX=100)
    init_db(app, 500)
    errors: list[str] = []
    with live_server(app) as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_context(accept_downloads=True).new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/")
        assert "500 contacts." in page.inner_text("body")
        page.get_by_role("button", name="Export contacts", exact=True).click()
        page.wait_for_url(f"{base}/jobs/*")
        link = page.get_by_role("link", name="Download")
        link.first.wait_for(timeout=20_000)
        with page.expect_download() as info:
            link.first.click()
        assert info.value.suggested_filename == "contacts.csv"
        assert read_csv(info.value.path()) == [["id", "name", "email"], *table_rows(db_file)]

        page.goto(f"{base}/")
        page.get_by_role("button", name="Export contacts (modal)").click()
        dialog = page.locator("dialog[open]")
        dialog.get_by_role("link", name="Download").first.wait_for(timeout=20_000)
        browser.close()
    assert errors == []


def test_the_readme_tutorial_shows_the_example_app_verbatim() -> None:
    """The README's tutorial is this app's code: a change to one without the other fails here."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        section = handle.read().split("## Tutorial: your first job", 1)[1].split("\n## ", 1)[0]
    for name in ("myapp/models.py", "myapp/jobs.py", "myapp/__init__.py", "worker.py"):
        with open(os.path.join(TUTORIAL, name), encoding="utf-8") as handle:
            assert handle.read().rstrip("\n") in section, f"README's tutorial differs from {name}"
