"""A user's type checker sees batchflow's API: the README tutorial's modules pass mypy --strict."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # a mypy run from cold: seconds

# The tutorial's handler module, app module and worker module in one, typed as strict code is.
USER_MODULE = """
from flask import Flask

from batchflow import BatchFlow, FileJob, ItemsJob, Job, StepResponse, registry


@registry.register("contacts-report")
class ContactsReport(FileJob):
    filename = "contacts.csv"
    labels = {"title": "Exporting contacts", "completed": "Your export is ready"}

    def create_job(self, job: Job) -> None:
        job.set_total(3)
        self.write_rows(job, [["id", "name", "email"]])

    def continue_job(self, job: Job, batch_size: int) -> str | None:
        rows = [(n, f"Contact {n}", f"c{n}@example.com") for n in range(batch_size)]
        self.write_rows(job, rows)
        job.mark_processed(len(rows))
        if len(rows) < batch_size:
            job.complete("Report ready")
        return f"Wrote {len(rows)} rows"


@registry.register("archive-posts")
class ArchivePosts(ItemsJob):
    def change(self, item_id: str, job: Job) -> StepResponse:
        job.add_message(f"Archived {item_id}")
        return StepResponse("archived", {"id": item_id})


batchflow = BatchFlow()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="change-me")
    batchflow.init_app(app)
    return app


app = create_app()
celery = batchflow.celery(app)
job_id: str = batchflow.start("contacts-report", owner="user:1", app=app)
"""


def test_the_tutorials_modules_pass_mypy_strict(tmp_path):
    (tmp_path / "myapp.py").write_text(USER_MODULE, encoding="utf-8")
    # batchflow from this checkout (MYPYPATH), checked as an installed package would be: errors
    # inside it are its own business (follow-imports=silent), the user's module must be clean.
    env = {**os.environ, "MYPYPATH": ROOT}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "myapp.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout
