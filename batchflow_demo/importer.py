"""The demo's import: ``import-contacts``, an ImportJob that reads an uploaded CSV of contacts
(``name``, ``email``, and maybe ``city``), checks each row with a WTForms form and saves it in the
demo's SQLite file of imported contacts (``BATCHFLOW_DEMO_DATA``/contacts.sqlite3), created or
updated by email address.

The home page counts the imported contacts and offers :data:`SAMPLE_NAME`, a file of 200
contacts of which 6 are wrong in the ways real files are (an address without its domain's
ending, another with " at " for "@", a missing name, a missing address, a city with an unquoted
comma, quotes inside a quoted name): upload it, download the rejected rows, fix them and upload
that file again as it is.

Each row costs a pretend ``BATCHFLOW_DEMO_IMPORT_ROW_COST`` seconds (50 ms: the sample takes
about 10 seconds), so there is progress to watch.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from typing import Any, ClassVar

from flask import current_app
from wtforms import Form, StringField
from wtforms.validators import DataRequired, Length, Optional, Regexp

from batchflow import ImportJob, Job

from .contacts import StepResult
from .jobs import pretend_work, registry
from .lang import N_

#: The sample file, in this package's ``data`` folder.
SAMPLE_NAME = "contacts-with-mistakes.csv"
#: How many contacts the sample holds (the home page says how long they take).
SAMPLE_ROWS = 200
SAMPLE_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
#: An address: something, one @, a domain with a dot in it; no spaces.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s.]+$"


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class ContactRow(Form):  # type: ignore[misc]  # WTForms ships no type hints
    """One row of a contacts file, checked and tidied (spaces trimmed, the address lowercased)."""

    name = StringField(
        filters=[_strip], validators=[DataRequired("A name is required."), Length(max=100)]
    )
    email = StringField(
        filters=[_strip, _lower],
        validators=[
            DataRequired("An email address is required."),
            Regexp(EMAIL_PATTERN, message="Not an email address (name@example.com)."),
            Length(max=200),
        ],
    )
    city = StringField(filters=[_strip], validators=[Optional(), Length(max=100)])


class ImportedContacts:
    """The contacts imported into the demo, in an SQLite file keyed by email address.

    :param path: the database file (created on first use).
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection (autocommit), closed afterwards; the table is created if need be."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS contacts (email TEXT PRIMARY KEY, name TEXT NOT NULL,"
                " city TEXT NOT NULL DEFAULT '', imported_by TEXT NOT NULL)"
            )
            yield conn
        finally:
            conn.close()

    @staticmethod
    def save(conn: sqlite3.Connection, values: dict[str, Any], job_id: str) -> str:
        """Create or update the contact ``values`` describes; says which ("created", "updated").
        Saving the same row again (a step run again after a lost worker) changes nothing."""
        email, name, city = values["email"], values["name"], values.get("city") or ""
        found = conn.execute(
            "SELECT name, city, imported_by FROM contacts WHERE email = ?", (email,)
        ).fetchone()
        if found is None:
            conn.execute(
                "INSERT INTO contacts (email, name, city, imported_by) VALUES (?, ?, ?, ?)",
                (email, name, city, job_id),
            )
            return "created"
        conn.execute(
            "UPDATE contacts SET name = ?, city = ?, imported_by = ? WHERE email = ?",
            (name, city, job_id, email),
        )
        return "created" if found[2] == job_id else "updated"

    def count(self) -> int:
        """How many contacts have been imported."""
        with self.connection() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM contacts").fetchone()[0])

    def find(self, email: str) -> dict[str, str] | None:
        """The contact with this address, or None."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT email, name, city FROM contacts WHERE email = ?", (email.lower(),)
            ).fetchone()
        return None if row is None else dict(zip(("email", "name", "city"), row, strict=True))


def imported_contacts() -> ImportedContacts:
    """The current app's imported contacts (``BATCHFLOW_DEMO_DATA``/contacts.sqlite3)."""
    folder = current_app.config["BATCHFLOW_DEMO_DATA"]
    return ImportedContacts(os.path.join(folder, "contacts.sqlite3"))


@registry.register("import-contacts")
class ImportContacts(ImportJob):
    """Creates or updates a contact for each row of the uploaded file; a row that fails
    :class:`ContactRow` is rejected with its message and the rest go on."""

    labels: ClassVar[dict[str, str]] = {
        "title": N_("Importing contacts"),
        "good": N_("imported"),
        "bad": N_("rejected"),
    }
    columns = ("name", "email")
    optional_columns = ("city",)
    row_form = ContactRow
    _db: sqlite3.Connection  # this step's connection (a handler object lives for one step)

    def continue_job(self, job: Job, batch_size: int) -> StepResult:
        # One database connection per step, closed when the step ends.
        with imported_contacts().connection() as self._db:
            return super().continue_job(job, batch_size)

    def apply(self, values: dict[str, Any], job: Job) -> Any:
        outcome = ImportedContacts.save(self._db, values, job.id)
        pretend_work("BATCHFLOW_DEMO_IMPORT_ROW_COST")
        return None if outcome == "created" else outcome
