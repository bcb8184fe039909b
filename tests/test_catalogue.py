"""The catalogue: the jobs the current user may start, asked of each handler's permission hook."""

from __future__ import annotations

import re

import pytest
from flask import Flask, request

from batchflow import BatchFlow, Handler, Registry
from tests.handlers import Count
from tests.helpers import broker_options, make_config

asked: list[tuple[str, object]] = []


class Described(Count):
    """Not this line: the description wins."""

    description = "Counts <quickly> & well"
    labels = {"title": "Counting fast"}


class Documented(Count):
    """Counts to n,
    slowly.

    More lines that the catalogue does not show.
    """


class Undocumented(Count):
    pass


def hook(name: str, *allowed: str):
    def permission(user: object) -> bool:
        asked.append((name, user))
        return user in allowed

    return permission


def make_app(prefix: str, files_dir: str, registry: Registry) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test-secret",
        BATCHFLOW_CELERY=broker_options(prefix),
        **make_config(prefix, files_dir),
    )
    BatchFlow(
        app,
        registry=registry,
        identity=lambda: request.headers.get("X-Test-User"),
        can_admin=lambda user: user == "root",
    )
    return app


@pytest.fixture
def client(prefix, files_dir):
    registry = Registry()
    registry.add("described", Described)
    registry.add("documented", Documented, permission=hook("documented", "alice", "root"))
    registry.add("undocumented", Undocumented)
    registry.add("carols", Count, permission=hook("carols", "carol"))
    registry.add("nobodys", Count, permission=hook("nobodys"))
    asked.clear()
    return make_app(prefix, files_dir, registry).test_client()


def catalogue(client, user: str) -> list[dict[str, str]]:
    r = client.get("/jobs/catalogue", headers={"X-Test-User": user, "Accept": "application/json"})
    assert r.status_code == 200 and r.is_json, r.text
    return r.json["handlers"]


def test_each_user_sees_exactly_what_their_permission_hooks_allow(client):
    assert [h["name"] for h in catalogue(client, "alice")] == [
        "described",
        "documented",
        "undocumented",
    ]
    # The hooks were asked about this request's user, as a start asks them.
    assert sorted(asked) == [("carols", "alice"), ("documented", "alice"), ("nobodys", "alice")]
    assert [h["name"] for h in catalogue(client, "carol")] == [
        "carols",
        "described",
        "undocumented",
    ]
    # An admin sees everyone's jobs, but starts only what the hooks allow them.
    assert [h["name"] for h in catalogue(client, "root")] == [
        "described",
        "documented",
        "undocumented",
    ]
    for user in ("alice", "carol", "root"):
        for entry in catalogue(client, user):
            allowed = client.get(entry["url"], headers={"X-Test-User": user})
            assert allowed.status_code == 200, (user, entry)
    assert client.get("/jobs/start/nobodys", headers={"X-Test-User": "root"}).status_code == 403


def test_titles_descriptions_and_links(client):
    entries = {h["name"]: h for h in catalogue(client, "alice")}
    assert entries["described"] == {
        "name": "described",
        "title": "Counting fast",
        "description": "Counts <quickly> & well",
        "url": "/jobs/start/described",
    }
    assert entries["documented"]["description"] == "Counts to n, slowly."
    assert entries["documented"]["title"] == "Counting"  # its labels, inherited
    # A docstring is not inherited: a class without one has no description.
    assert entries["undocumented"]["description"] == ""
    assert Handler.summary() != "" and Undocumented.summary() == ""


def test_the_page_lists_the_start_links_escaped_and_nothing_else(client):
    page = client.get("/jobs/catalogue", headers={"X-Test-User": "alice"})
    assert page.status_code == 200 and page.mimetype == "text/html"
    links = set(re.findall(r'href="(/jobs/start/[^"]+)"', page.text))
    assert links == {"/jobs/start/described", "/jobs/start/documented", "/jobs/start/undocumented"}
    assert "Counts &lt;quickly&gt; &amp; well" in page.text and "<quickly>" not in page.text
    assert "carols" not in page.text and "nobodys" not in page.text
    # The jobs list links here.
    jobs = client.get("/jobs/", headers={"X-Test-User": "alice"})
    assert 'href="/jobs/catalogue"' in jobs.text


def test_json_when_asked_and_a_403_when_nobody_is_signed_in(client):
    assert [h["name"] for h in catalogue(client, "dave")] == ["described", "undocumented"]
    assert client.get("/jobs/catalogue?format=json", headers={"X-Test-User": "x"}).is_json
    assert not client.get("/jobs/catalogue", headers={"X-Test-User": "x"}).is_json
    assert client.get("/jobs/catalogue").status_code == 403


def test_an_app_with_no_open_handler_shows_the_empty_state(prefix, files_dir):
    registry = Registry()
    registry.add("carols", Count, permission=hook("carols", "carol"))
    client = make_app(prefix, files_dir, registry).test_client()
    page = client.get("/jobs/catalogue", headers={"X-Test-User": "alice"})
    assert page.status_code == 200 and "No jobs to start" in page.text
    assert "/jobs/start/" not in page.text
    assert catalogue(client, "alice") == []
    assert [h["name"] for h in catalogue(client, "carol")] == ["carols"]
