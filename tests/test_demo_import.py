"""The demo's import, as a visitor tries it: the sample file from the home page uploaded, its six
mistakes rejected with their messages, the rejected rows fixed and uploaded again as they are, the
contacts counted on the home page. A real in-process worker, real Redis, the demo's own SQLite;
the browser test drives Debian's Chromium and leaves screenshots in tests/artifacts/demo-import/
(1280 and 390 px, light and dark)."""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from batchflow import BatchFlow
from batchflow_demo import create_app
from batchflow_demo.importer import SAMPLE_FOLDER, SAMPLE_NAME, SAMPLE_ROWS, ImportedContacts
from tests.handlers import REDIS_URL
from tests.helpers import CHROMIUM, ROOT, broker_options, launch_chromium, live_server, wait_for

SHOTS = Path(ROOT) / "tests" / "artifacts" / "demo-import"
HEADER = ["name", "email", "city"]
#: The sample's mistakes: row number (the header is row 1) -> the row as written, the message.
MISTAKES = {
    "18": (
        ["Quinn Abara", "quinn.abara.17@example", "Osaka"],
        "email: Not an email address (name@example.com).",
    ),
    "49": (["", "viktor.berg.48@example.com", "Tbilisi"], "name: A name is required."),
    "84": (
        ["Elena Dubois", "elena.dubois.83@example.com", "Washington"],
        "Row 84 has 4 values; the header has 3 columns.",
    ),
    "121": (
        ['"Zoë "Zed" Eriksen",zoe.eriksen.120@example.com,Dublin', "", ""],
        "Row 121 has a badly quoted value: a closing quote must be followed by ',' or the end"
        " of the line.",
    ),
    "152": (["Uma Fischer", "", "Valparaíso"], "email: An email address is required."),
    "187": (
        ["Dmitri Haddad", "dmitri.haddad.186 at example.com", "Dublin"],
        "email: Not an email address (name@example.com).",
    ),
}


def demo_config(prefix: str, data: Path, **more: Any) -> dict[str, Any]:
    return {
        "BATCHFLOW_REDIS_URL": REDIS_URL,
        "BATCHFLOW_KEY_PREFIX": prefix,
        "BATCHFLOW_DEMO_DATA": str(data),
        "BATCHFLOW_DEMO_POSTS": 30,
        "BATCHFLOW_DEMO_IMPORT_ROW_COST": 0,
        "BATCHFLOW_STEP_TARGET": 0.2,
        "BATCHFLOW_LEASE_SECONDS": 3,
        "BATCHFLOW_MAINTENANCE_INTERVAL": 0.5,
        "TESTING": True,
        "BATCHFLOW_CELERY": {**broker_options(prefix), "worker_send_task_events": False},
        **more,
    }


@pytest.fixture
def demo_app(prefix: str, tmp_path: Path) -> Iterator[Any]:
    """The demo app on the test's key prefix, with a real in-process worker."""
    from celery.contrib.testing.worker import start_worker

    app = create_app(demo_config(prefix, tmp_path / "data", WTF_CSRF_ENABLED=False))
    celery = BatchFlow.state(app).celery
    with start_worker(
        celery, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=20
    ):
        yield app


def upload(client: Any, content: bytes, name: str) -> str:
    response = client.post(
        "/jobs/start/import-contacts",
        data={"file": (io.BytesIO(content), name)},
        headers={"Accept": "application/json"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def finished(client: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> Any:
        status = client.get(f"/jobs/{job_id}/status").get_json()
        return status if status["terminal"] else None

    return dict(wait_for(done, timeout=timeout, interval=0.1))


def contacts(app: Any) -> ImportedContacts:
    return ImportedContacts(os.path.join(app.config["BATCHFLOW_DEMO_DATA"], "contacts.sqlite3"))


def home_count(client: Any) -> int:
    html = client.get("/").get_data(as_text=True)
    found = re.search(r'<strong id="contacts-imported">([\d,]+)</strong>', html)
    assert found, html
    return int(found.group(1).replace(",", ""))


def test_the_home_page_links_the_start_page_and_a_sample_that_downloads(demo_app, prefix):
    client = demo_app.test_client()
    html = client.get("/").get_data(as_text=True)
    assert 'href="/jobs/start/import-contacts"' in html
    sample = re.search(
        r'<a [^>]*href="([^"]+)"[^>]*>Download a sample file with a few mistakes<', html
    )
    assert sample, html
    with client.get(sample.group(1)) as response:
        assert response.status_code == 200 and response.mimetype == "text/csv"
        assert response.headers["Content-Disposition"] == f"attachment; filename={SAMPLE_NAME}"
        data = response.get_data()
    assert data == (Path(SAMPLE_FOLDER) / SAMPLE_NAME).read_bytes()
    assert data.count(b"\n") == 1 + SAMPLE_ROWS == 201  # the header and 200 contacts
    start = client.get("/jobs/start/import-contacts").get_data(as_text=True)
    assert 'type="file"' in start and 'enctype="multipart/form-data"' in start
    assert (
        "with the columns name, email (and, if you like, city)." in start
        and "<title>Importing contacts" in start
    )
    assert home_count(client) == 0
    # With the default pretend cost (50 ms a row) the sample is there to watch for a while.
    data = Path(demo_app.config["BATCHFLOW_DEMO_DATA"])
    app = create_app({**demo_config(prefix, data), "BATCHFLOW_DEMO_IMPORT_ROW_COST": 0.05})
    page = unescape(app.test_client().get("/").get_data(as_text=True))
    text = " ".join(page.split())
    assert "Each row costs a pretend 50 ms of work, so the sample's 200 rows take about 10" in text


def test_the_sample_imports_but_six_rows_which_come_back_to_fix_and_go_in(demo_app):
    client = demo_app.test_client()
    with client.get(f"/samples/{SAMPLE_NAME}") as response:
        sample = response.get_data()
    status = finished(client, upload(client, sample, SAMPLE_NAME))
    assert status["outcome"] == "completed_with_failures", status
    assert (status["total"], status["good"], status["bad"]) == (200, 194, 6)
    assert home_count(client) == 194 == contacts(demo_app).count()
    assert contacts(demo_app).find("chloe.abara.3@example.com") == {
        "email": "chloe.abara.3@example.com",
        "name": "Chloé Abara",
        "city": "Montréal",
    }
    errors = client.get(f"/jobs/{status['id']}/results?which=errors").get_json()["items"]
    assert errors == {row: message for row, (_, message) in MISTAKES.items()}

    rejected = client.get(status["rejected_url"])
    assert rejected.status_code == 200 and "attachment" in rejected.headers["Content-Disposition"]
    assert "contacts-with-mistakes-rejected.csv" in rejected.headers["Content-Disposition"]
    text = rejected.get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[0] == [*HEADER, "error"]
    expected = [[*values, message] for values, message in MISTAKES.values()]
    expected[2].append(" D.C.")  # the value beyond the header's columns follows the message
    assert rows[1:] == expected

    # The visitor fixes each row in that file and uploads it again as it is (error column too).
    fixed = [
        rows[0],
        ["Quinn Abara", "quinn.abara.17@example.com", "Osaka", rows[1][3]],
        ["Viktor Berg", "viktor.berg.48@example.com", "Tbilisi", rows[2][3]],
        ["Elena Dubois", "elena.dubois.83@example.com", "Washington, D.C.", rows[3][3]],
        ["Zoë Eriksen", "zoe.eriksen.120@example.com", "Dublin", rows[4][3]],
        ["Uma Fischer", "uma.fischer.151@example.com", "Valparaíso", rows[5][3]],
        ["Dmitri Haddad", "dmitri.haddad.186@example.com", "Dublin", rows[6][3]],
    ]
    out = io.StringIO()
    csv.writer(out).writerows(fixed)
    again = finished(client, upload(client, out.getvalue().encode(), "fixed.csv"))
    assert again["outcome"] == "completed", again
    assert (again["total"], again["good"], again["bad"]) == (6, 6, 0)
    assert home_count(client) == 200 == contacts(demo_app).count()
    assert contacts(demo_app).find("zoe.eriksen.120@example.com")["name"] == "Zoë Eriksen"
    assert contacts(demo_app).find("elena.dubois.83@example.com")["city"] == "Washington, D.C."


def test_importing_the_same_contacts_again_updates_them(demo_app):
    client = demo_app.test_client()
    first = "name,Email,city\nAda Abara,ADA@example.com ,Lisbon\nBen Berg,ben@example.com,\n"
    status = finished(client, upload(client, first.encode(), "a.csv"))
    assert (status["good"], status["bad"]) == (2, 0)
    assert contacts(demo_app).find("ada@example.com") == {
        "email": "ada@example.com",
        "name": "Ada Abara",
        "city": "Lisbon",
    }
    second = "email,name\nada@example.com,Ada Lovelace\n"
    status = finished(client, upload(client, second.encode(), "b.csv"))
    assert (status["good"], status["bad"]) == (1, 0)
    results = client.get(f"/jobs/{status['id']}/results").get_json()["items"]
    assert results == {"2": "updated"}
    assert contacts(demo_app).find("ada@example.com") == {
        "email": "ada@example.com",
        "name": "Ada Lovelace",
        "city": "",
    }
    assert contacts(demo_app).count() == 2


# -- in a browser --------------------------------------------------------------------------------


def shoot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")
def test_a_visitor_uploads_the_sample_watches_it_and_gets_the_rejected_rows(prefix, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    # CSRF on, as the demo runs: the start page's form carries its token.
    app = create_app(demo_config(prefix, tmp_path / "data", BATCHFLOW_DEMO_IMPORT_ROW_COST=0.01))
    SHOTS.mkdir(parents=True, exist_ok=True)
    sample = Path(SAMPLE_FOLDER) / SAMPLE_NAME
    with live_server(app) as base, sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1280, "height": 900}
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base + "/")
        page.click("#start-import")
        page.wait_for_url(f"{base}/jobs/start/import-contacts")
        start_url = page.url
        page.set_input_files('input[type="file"]', str(sample))
        page.click('button[type="submit"]')
        page.wait_for_url(re.compile(r"/jobs/[^/]+/?$"))
        progress_url = page.url
        rejected = page.locator('[data-bf="rejected"]')
        expect(rejected).to_be_visible(timeout=60_000)
        expect(rejected).to_have_text("Download the rejected rows to fix (CSV)")
        main = page.locator("main").inner_text()
        assert "194 imported" in main and "6 rejected" in main, main
        with page.expect_download() as download:
            rejected.click()
        saved = download.value.path()
        rows = list(csv.reader(io.StringIO(Path(saved).read_text("utf-8-sig"))))
        assert [row[3] for row in rows[1:]] == [message for _, message in MISTAKES.values()]
        pages = ((start_url, "start"), (progress_url, "progress-ended"), (base + "/", "home"))
        for url, name in pages:
            for width in (1280, 390):
                for scheme in ("light", "dark"):
                    page.set_viewport_size({"width": width, "height": 900})
                    page.emulate_media(color_scheme=scheme)
                    page.goto(url)
                    page.wait_for_load_state("load")
                    if name == "progress-ended":
                        expect(rejected).to_be_visible()
                    shoot(page, f"{name}-{width}-{scheme}")
        page.goto(base + "/")
        assert page.locator("#contacts-imported").inner_text() == "194"
        context.close()
        browser.close()
    assert errors == [], errors


@pytest.mark.slow
def test_the_sample_ships_in_the_wheel(built_wheel):
    import zipfile

    names = set(zipfile.ZipFile(built_wheel).namelist())
    assert f"batchflow_demo/data/{SAMPLE_NAME}" in names, "setup.cfg package data?"
    assert "batchflow_demo/importer.py" in names


def test_restoring_archived_posts_shows_a_preview_and_waits_for_confirm(demo_app):
    from tests.test_demo import _finished, _posts, _start

    client = demo_app.test_client()
    _finished(client, _start(client, "archive-posts"))
    archived = _posts(demo_app).stats()["archived"]
    assert archived > 0
    job_id = _start(client, "restore-posts")

    def status() -> dict:
        return client.get(f"/jobs/{job_id}/status", headers={"Accept": "application/json"}).json

    waiting = wait_for(lambda: (s := status())["status"] == "awaiting_confirmation" and s, 60)
    preview = waiting["text"]["preview"]
    assert preview["summary"] == f"This will restore {archived:,} archived posts."
    assert preview["sample"][0].startswith("Post 1: ")
    assert _posts(demo_app).stats()["archived"] == archived  # nothing restored yet
    page = client.get(f"/jobs/{job_id}")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    client.post(f"/jobs/{job_id}/confirm", data={"csrf_token": token})
    done = _finished(client, job_id)
    assert (done["status"], done["good"], done["total"]) == ("completed", archived, archived)
    assert _posts(demo_app).stats()["archived"] == 0
