"""Every text in the reader's language: batchflow's catalogues are complete (built from the .po
files as the library builds them, against the texts extracted from the code and templates now),
pages and the status JSON speak the viewer's language through Flask-Babel, a job's kept messages
read in German for a German reader and in English for an English one, numbers are formatted for
the locale, a handler's title computed from its parameters is translated by the app's own
catalogue, and a notification email is written in the language of the one who started the job.

Real Redis, a real in-process Celery worker, real Flask-Babel.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from celery.contrib.testing.worker import start_worker
from flask import Flask, request

from batchflow import BatchFlow, ItemsJob, Message, Registry, TaskJob
from batchflow.i18n import N_, TRANSLATIONS, shown, using
from batchflow.job import Job
from tests.helpers import ROOT, broker_options, make_config, wait_for, wait_terminal

LOCALES = ("de", "fr")
KEYWORDS = {"_": None, "gettext": None, "N_": None, "_bf": None, "Message": None}
PLACEHOLDER = re.compile(r"%\([a-z_]+\)[sdr]|%%|\{[a-z_]+\}")


def extracted() -> set[str]:
    """The texts batchflow marks for translation now, as `pybabel extract -F babel.cfg` finds
    them (see babel.cfg)."""
    found: set[str] = set()
    for method_map in ([("batchflow/**.py", "python")], [("templates/**.html", "jinja2")]):
        for _, _, message, _, _ in extract_from_dir(ROOT, method_map, keywords=KEYWORDS):
            found.add(message if isinstance(message, str) else message[0])
    return found


def catalogue(path: str) -> Catalog:
    with open(path, "rb") as po:
        return read_po(po)


def test_the_template_holds_exactly_the_texts_the_code_marks():
    template = catalogue(os.path.join(TRANSLATIONS, "batchflow.pot"))
    assert {m.id for m in template if m.id} == extracted(), (
        "batchflow.pot is stale: run the pybabel extract and update commands in README, Languages"
    )


@pytest.mark.parametrize("code", LOCALES)
def test_every_text_is_translated_in_every_shipped_language(code):
    path = os.path.join(TRANSLATIONS, code, "LC_MESSAGES", "batchflow.po")
    found = catalogue(path)
    entries = {m.id: m for m in found if m.id}
    texts = extracted()
    assert set(entries) - texts == set(), "translations of texts the code no longer has"
    assert texts - set(entries) == set(), "texts with no translation"
    for text, message in entries.items():
        assert message.string, f"{code}: {text!r} is not translated"
        assert not message.fuzzy, f"{code}: {text!r} is fuzzy"
        same = sorted(PLACEHOLDER.findall(text)) == sorted(PLACEHOLDER.findall(message.string))
        assert same, f"{code}: {text!r} -> {message.string!r} changes its placeholders"
    # And it builds, as the library builds it (in memory, from the .po).
    with using(code):
        assert shown("Completed") != "Completed"


def test_the_demos_catalogues_hold_its_own_texts_translated():
    demo = os.path.join(ROOT, "batchflow_demo")
    library = extracted()
    own: set[str] = set()
    for method_map in ([("**.py", "python")], [("templates/**.html", "jinja2")]):
        for _, _, message, _, _ in extract_from_dir(demo, method_map, keywords=KEYWORDS):
            own.add(message if isinstance(message, str) else message[0])
    own -= library  # batchflow's own words come from batchflow's catalogue
    for code in LOCALES:
        path = os.path.join(demo, "translations", code, "LC_MESSAGES", "messages.po")
        entries = {m.id: m for m in catalogue(path) if m.id}
        assert set(entries) == own, f"{code}: the demo's catalogue is stale"
        assert all(m.string and not m.fuzzy for m in entries.values()), code


# -- pages in the reader's language ------------------------------------------------------------


class Count(ItemsJob):
    labels = {"title": N_("Counting posts")}
    batch_size = 700

    def change(self, item: str, job: Job) -> None:
        if item.startswith("bad"):
            raise ValueError("no")


class Export(TaskJob):
    def job_labels(self, params: dict[str, Any]) -> dict[str, Any]:
        text = "Exporting %(count)s contacts from %(city)s"
        return {"title": Message(text, count=params["count"], city=params["city"])}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"count": int(params.get("count", 1)), "city": str(params.get("city", "Berlin"))}

    def run(self, job: Job) -> None:
        job.add_message("done")


def app_catalogue(folder: str) -> str:
    """The app's own German catalogue (Flask-Babel's default domain), compiled, as an app has."""
    found = Catalog(locale="de")
    found.add("Counting posts", "Beiträge zählen")
    found.add(
        "Exporting %(count)s contacts from %(city)s", "Export von %(count)s Kontakten aus %(city)s"
    )
    path = os.path.join(folder, "de", "LC_MESSAGES")
    os.makedirs(path)
    with open(os.path.join(path, "messages.mo"), "wb") as mo:
        write_mo(mo, found)
    return folder


@pytest.fixture
def app(prefix: str, files_dir: str, tmp_path: Any) -> Iterator[Flask]:
    from flask_babel import Babel

    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", BATCHFLOW_CELERY=broker_options(prefix))
    app.config.update(make_config(prefix, files_dir))
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = app_catalogue(str(tmp_path / "translations"))

    def pick() -> str | None:
        return request.args.get("lang") or request.accept_languages.best_match(["en", "de", "fr"])

    Babel(app, locale_selector=pick)
    registry = Registry()
    registry.add("count", Count)
    registry.add("export", Export)
    BatchFlow(
        app,
        registry=registry,
        identity=lambda: request.headers.get("X-User"),
        can_admin=lambda user: user == "admin",
    )
    with start_worker(BatchFlow.state(app).celery, pool="threads", perform_ping_check=False):
        yield app


def start(client: Any, handler: str, lang: str, **body: Any) -> str:
    page = client.get(f"/jobs/start/{handler}", headers={"X-User": "ada"})
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    response = client.post(
        f"/jobs/start/{handler}?lang={lang}",
        json=body,
        headers={"X-User": "ada", "X-CSRFToken": token},
    )
    assert response.status_code == 202, response.data
    return str(response.json["id"])


def test_the_same_job_reads_in_german_for_a_german_reader_and_in_english_for_another(app):
    client = app.test_client()
    engine = BatchFlow.state(app).engine
    ids = [f"p{n}" for n in range(2300)] + ["bad1"]
    job_id = start(client, "count", "de", ids=ids)
    wait_terminal(engine, job_id, timeout=60)
    german = client.get(f"/jobs/{job_id}?lang=de", headers={"X-User": "ada"}).text
    assert '<html lang="de">' in german
    assert "Beiträge zählen" in german  # the handler's title, from the app's catalogue
    assert "Mit Fehlern abgeschlossen" in german
    assert "2.300" in german and "2,300" not in german  # numbers as a German reads them
    english = client.get(f"/jobs/{job_id}?lang=en", headers={"X-User": "admin"}).text
    assert '<html lang="en">' in english
    assert "Counting posts" in english and "Completed with failures" in english
    assert "2,300" in english
    # The status JSON (what the widget copies, its fixed words included) follows the reader too.
    status_de = client.get(f"/jobs/{job_id}/status?lang=de", headers={"X-User": "ada"}).json
    status_en = client.get(f"/jobs/{job_id}/status", headers={"X-User": "ada"}).json
    assert status_de["text"]["ui"]["activity"] != status_en["text"]["ui"]["activity"]
    assert status_de["text"]["summary"] != status_en["text"]["summary"]
    # The errors page: batchflow's own words in German, the handler's message as written.
    errors = client.get(f"/jobs/{job_id}/results?which=errors&lang=de", headers={"X-User": "ada"})
    assert "Something went wrong" not in errors.text


def test_a_kept_message_is_rendered_in_each_readers_language(app):
    client = app.test_client()
    engine = BatchFlow.state(app).engine
    job_id = start(client, "count", "en", ids=[f"p{n}" for n in range(60_000)])
    wait_for(lambda: engine.state(job_id).count("processed") >= 1000, timeout=30)
    headers = {"X-User": "ada", "X-CSRFToken": token_of(client)}
    assert client.post(f"/jobs/{job_id}/stop", json={}, headers=headers).status_code == 202
    state = wait_terminal(engine, job_id, timeout=60)
    done = state.count("processed")
    messages = {
        lang: client.get(f"/jobs/{job_id}/status?lang={lang}", headers={"X-User": "ada"}).json[
            "messages"
        ][-1]["text"]
        for lang in ("en", "de", "fr")
    }
    assert messages["en"] == f"Stopped after {done:,} processed; the work done is kept."
    assert f"{done:,}".replace(",", ".") in messages["de"] and messages["de"] != messages["en"]
    assert messages["fr"] != messages["en"]


def token_of(client: Any) -> str:
    page = client.get("/jobs/catalogue", headers={"X-User": "ada"})
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def test_a_title_computed_from_the_parameters_is_translated_with_its_numbers(app):
    client = app.test_client()
    engine = BatchFlow.state(app).engine
    job_id = start(client, "export", "de", params={"count": 12430, "city": "Berlin"})
    wait_terminal(engine, job_id)
    german = client.get(f"/jobs/{job_id}/status?lang=de", headers={"X-User": "ada"}).json
    english = client.get(f"/jobs/{job_id}/status?lang=en", headers={"X-User": "ada"}).json
    assert german["text"]["title"] == "Export von 12.430 Kontakten aus Berlin"
    assert english["text"]["title"] == "Exporting 12,430 contacts from Berlin"


def test_an_email_is_written_in_the_language_of_the_one_who_started_the_job(
    prefix, files_dir, tmp_path
):
    from flask_babel import Babel

    outbox = str(tmp_path / "outbox")
    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", BATCHFLOW_CELERY=broker_options(prefix))
    app.config.update(
        make_config(
            prefix,
            files_dir,
            BATCHFLOW_NOTIFY_EMAIL=True,
            BATCHFLOW_BASE_URL="http://app.test",
            BATCHFLOW_MAIL_OUTBOX=outbox,
            MAIL_DEFAULT_SENDER="jobs@app.test",
        )
    )
    Babel(app, locale_selector=lambda: request.args.get("lang"))
    registry = Registry()
    registry.add("count", Count)
    BatchFlow(
        app,
        registry=registry,
        identity=lambda: request.headers.get("X-User"),
        load_user=lambda owner: {"email": f"{owner}@app.test"},
        email_address=lambda user: user["email"],
    )
    client = app.test_client()
    with start_worker(BatchFlow.state(app).celery, pool="threads", perform_ping_check=False):
        job_id = start(client, "count", "de", ids=["a", "b"], notify_email=True)
        wait_for(lambda: os.path.isdir(outbox) and os.listdir(outbox), timeout=30)
    (name,) = os.listdir(outbox)
    with open(os.path.join(outbox, name), "rb") as handle:
        mail = email.message_from_binary_file(handle, policy=email.policy.default)
    assert mail["To"] == "ada@app.test"
    assert mail["Subject"] == "Counting posts: Abgeschlossen"
    body = mail.get_body().get_content()
    assert f"http://app.test/jobs/{job_id}" in body and "See the job" not in body
