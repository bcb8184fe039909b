"""A contacts report as a FileJob. The demo's ``export-contacts`` job runs it; copy it into your
app to adapt it.

It counts the contacts and writes the CSV header in ``create_job``, writes one batch of rows per
``continue_job``, calls the job complete when a batch comes back short, and deletes the file in
``cleanup_job``::

    class ContactsReport(FileJob):
        def create_job(self, job):
            job.set_total(self.count_units_to_process(job))
            self.write_rows(job, [HEADER])

        def continue_job(self, job, batch_size):
            rows = self.get_csv_data(job, job.units_processed, batch_size)
            self.write_rows(job, rows)
            job.mark_processed(len(rows))
            if len(rows) < batch_size:
                job.complete()

What batchflow adds: the steps run in Celery workers, not in the browser's AJAX calls; a step cut
off by a dying worker runs again and writes from the file's last committed length, so every row
lands exactly once; cells that a spreadsheet would run as a formula (``=``, ``+``,
``-``, ``@``) are written with a leading ``'``; ``FileJob.cleanup_job`` deletes the file after the
download (or when the job expires).

The contacts here are generated from their row number, so the example runs with no database. To
export your own table, override :meth:`ContactsReport.count_units_to_process` and
:meth:`ContactsReport.get_csv_data`, for example with SQLAlchemy::

    def count_units_to_process(self, job):
        return db.session.scalar(select(func.count()).select_from(Contact))

    def get_csv_data(self, job, offset, limit):
        query = select(Contact).order_by(Contact.id).offset(offset).limit(limit)
        return [contact.as_row() for contact in db.session.scalars(query)]

Order by a unique column so that ``offset`` means the same row from one step to the next.
"""

from __future__ import annotations

import unicodedata
from typing import Any, ClassVar

from batchflow import FileJob, Job, StepResponse

from .lang import N_

#: What a step may return: a message for the page, a StepResponse, or nothing.
StepResult = StepResponse | str | None

#: The report's header row (written in ``create_job``).
HEADER = ["ID", "First name", "Last name", "Email", "Phone", "City", "Country", "Notes"]

_FIRST = (
    "Ada Ben Chloé Dmitri Elena Farid Grace Hiro Ines Jonas Kofi Lena Mateo Nadia Oscar Priya "
    "Quinn Rosa Sven Tomás Uma Viktor Wen Ximena Yusuf Zoë"
).split()
_LAST = (
    "Abara Berg Costa Dubois Eriksen Fischer García Haddad Ivanova Jensen Kowalski Lindqvist "
    "Moreau Nakamura O'Brien Petrov Quispe Rossi Schmidt Tanaka Uribe Varga Walsh Xu Yilmaz Zhang"
).split()
_PLACES = [
    ("Lisbon", "Portugal"),
    ("Nairobi", "Kenya"),
    ("Osaka", "Japan"),
    ("Montréal", "Canada"),
    ("Kraków", "Poland"),
    ("Valparaíso", "Chile"),
    ("Tromsø", "Norway"),
    ("Pune", "India"),
    ("Dublin", "Ireland"),
    ("São Paulo", "Brazil"),
    ("Tbilisi", "Georgia"),
]
# Notes that a spreadsheet would run, or treat specially, if written as they are: the report
# writes them with a leading ' (FileJob.neutralize_formulas).
_RISKY_NOTES = {
    7: '=HYPERLINK("https://example.com","click me")',
    19: "@sales-team please call back",
    31: "=1+1",
    43: "-2 seats, +1 guest",
}


def contact_row(index: int) -> list[str]:
    """Contact number ``index`` (0-based), always the same: a CSV row in :data:`HEADER`'s order."""
    first = _FIRST[index % len(_FIRST)]
    last = _LAST[(index // len(_FIRST)) % len(_LAST)]
    city, country = _PLACES[(index * 7) % len(_PLACES)]
    name = unicodedata.normalize("NFKD", f"{first}.{last}").encode("ascii", "ignore").decode()
    email = f"{name}.{index + 1}@example.com".lower().replace("'", "")
    phone = f"0{(index * 7919) % 900 + 100} {(index * 104729) % 9000 + 1000}"
    note = _RISKY_NOTES.get(index % 50, "")
    return [str(index + 1), first, last, email, phone, city, country, note]


class ContactsReport(FileJob):
    """Writes every contact to ``contact-list-report.csv``, a batch of rows per step.

    :cvar contacts: how many contacts the generated data has; override
        :meth:`count_units_to_process` to count real ones.
    """

    filename = "contact-list-report.csv"
    labels: ClassVar[dict[str, str]] = {
        "title": N_("Contacts report"),
        "running": N_("Writing the report…"),
        "completed": N_("Report ready"),
    }
    contacts: ClassVar[int] = 100_000

    def count_units_to_process(self, job: Job) -> int:
        """How many contacts the report will hold."""
        return self.contacts

    def get_csv_data(self, job: Job, offset: int, limit: int) -> list[list[Any]]:
        """Rows ``offset`` to ``offset + limit`` of the report; fewer at the end."""
        stop = min(offset + limit, job.total or 0)
        return [contact_row(index) for index in range(offset, stop)]

    def create_job(self, job: Job) -> StepResult:
        """Count the contacts and write the header row. Runs once, in a worker."""
        total = self.count_units_to_process(job)
        job.set_total(total)
        self.write_rows(job, [HEADER])
        return StepResponse(f"Contacts report started: {total:,} contacts to write.")

    def continue_job(self, job: Job, batch_size: int) -> StepResult:
        """Write the next ``batch_size`` rows; a short batch means the report is complete."""
        before = job.units_processed
        rows = self.get_csv_data(job, before, batch_size)
        self.write_rows(job, rows)
        job.mark_processed(len(rows))
        if len(rows) < batch_size:
            job.complete(f"Report ready: {job.units_processed:,} contacts.")
            return None
        # A line for the activity log at each quarter, not one per step: the bar already shows
        # every step, and a log of identical lines says nothing.
        total = job.total or 0
        quarter = job.units_processed * 4 // total if total else 0
        if 0 < quarter < 4 and quarter > before * 4 // total:
            return f"{quarter * 25}% written: {job.units_processed:,} of {total:,} contacts."
        return None
