"""A job's per-id outcomes: the JSON API pages by ``count`` exactly, and a browser gets a page."""

from __future__ import annotations

import html
import re

import pytest

from batchflow import BatchFlow
from tests.helpers import ListDispatcher
from tests.webapp import create_app

ALICE = {"X-Test-User": "alice"}
BROWSER = {**ALICE, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
SCRIPT_ID = "<script>alert(1)</script>bad"


@pytest.fixture
def app(prefix, files_dir):
    return create_app(prefix, files_dir)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def engine(app):
    """The app's engine with its steps run inline, by hand (no worker needed)."""
    engine = BatchFlow.state(app).engine
    engine.dispatcher = ListDispatcher()
    return engine


def archive(client, engine, prefix, ids) -> str:
    """Run an archive job over ``ids`` to its end (ids containing "bad" fail)."""
    page = client.get("/jobs/start/archive", headers=ALICE)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    started = client.post(
        "/jobs/start/archive",
        json={"ids": ids, "params": {"prefix": prefix}},
        headers={**ALICE, "X-CSRFToken": token},
    )
    assert started.status_code == 202, started.text
    job_id = started.json["id"]
    engine.dispatcher.drain(engine)
    assert engine.state(job_id).status.terminal
    return job_id


def pages_of(client, job_id, counts, which="errors"):
    """Every page of the JSON API, asking for ``counts[i % len(counts)]`` entries on page i."""
    pages, cursor = [], 0
    while True:
        count = counts[len(pages) % len(counts)]
        r = client.get(
            f"/jobs/{job_id}/results?which={which}&count={count}&cursor={cursor}", headers=ALICE
        )
        assert r.status_code == 200 and r.is_json, r.text
        pages.append((count, list(r.json["items"])))
        cursor = r.json["cursor"]
        if not cursor:
            return pages
        assert len(pages) < 10_000, "the cursor never ends"


@pytest.mark.parametrize("failed", [384, 1500], ids=["small-hash", "large-hash"])
def test_count_is_honoured_and_the_cursor_continues_exactly(client, engine, prefix, failed):
    bad = [f"bad-{i}" for i in range(failed)]
    job_id = archive(client, engine, prefix, bad + [f"ok-{i}" for i in range(20)])
    for counts in ([3], [7], [50], [3, 50, 1, 7]):
        pages = pages_of(client, job_id, counts)
        # Every page but the last is full, and none is longer than asked.
        assert all(len(ids) == count for count, ids in pages[:-1]), counts
        assert 0 < len(pages[-1][1]) <= pages[-1][0]
        seen = [item for _, ids in pages for item in ids]
        assert len(seen) == len(set(seen)), f"an id came twice paging by {counts}"
        assert set(seen) == set(bad), f"ids lost paging by {counts}"
    results = pages_of(client, job_id, [6], which="results")
    assert {i for _, ids in results for i in ids} == {f"ok-{i}" for i in range(20)}


def test_api_clients_keep_json_and_a_browser_gets_a_page(client, engine, prefix):
    job_id = archive(client, engine, prefix, ["bad-1", "ok"])
    url = f"/jobs/{job_id}/results?which=errors"
    for headers in (ALICE, {**ALICE, "Accept": "*/*"}, {**ALICE, "Accept": "application/json"}):
        r = client.get(url, headers=headers)
        assert r.is_json and r.json == {
            "which": "errors",
            "items": {"bad-1": "cannot archive bad-1"},
            "cursor": 0,
        }
    assert client.get(url + "&format=json", headers=BROWSER).is_json
    assert client.get(f"/jobs/{job_id}/results?format=csv", headers=BROWSER).mimetype == "text/csv"
    page = client.get(url, headers=BROWSER)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "bad-1" in page.text and "cannot archive bad-1" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    # A cursor this route did not give, or a bad count, is a 400 in JSON, for a browser too.
    for query in ("cursor=-1", f"cursor={2**64}", "count=-5"):
        r = client.get(f"{url}&{query}", headers=BROWSER)
        assert r.status_code == 400 and r.is_json, query
    # Someone else's job is the same 404 as an unknown one.
    assert client.get(url, headers={**BROWSER, "X-Test-User": "bob"}).status_code == 404


ROW_ID = re.compile(r'<th scope="row"><span class="bf-row__handler">([^<]*)</span></th>')


def row_ids(text: str) -> list[str]:
    return [html.unescape(m) for m in ROW_ID.findall(text)]


def link(text: str, rel: str) -> str | None:
    found = re.search(rf'rel="{rel}" href="([^"]+)"', text)
    return html.unescape(found.group(1)) if found else None


def test_the_page_pages_with_next_and_previous_and_escapes_messages(client, engine, prefix):
    bad = [f"bad-{i:02}" for i in range(20)] + [SCRIPT_ID]
    job_id = archive(client, engine, prefix, bad + ["ok"])
    url = f"/jobs/{job_id}/results?which=errors&count=3"
    visited, seen = [], []
    while url:
        page = client.get(url, headers=BROWSER)
        assert page.status_code == 200 and page.mimetype == "text/html", page.text
        ids = row_ids(page.text)
        assert 0 < len(ids) <= 3
        visited.append((url, ids))
        seen += ids
        url = link(page.text, "next")
    assert len(visited) == 7 and sorted(seen) == sorted(bad)
    assert link(client.get(visited[0][0], headers=BROWSER).text, "prev") is None
    # Previous goes back page by page, to the very pages seen going forward.
    url = link(client.get(visited[-1][0], headers=BROWSER).text, "prev")
    for _, ids in reversed(visited[:-1]):
        page = client.get(url, headers=BROWSER)
        assert row_ids(page.text) == ids
        url = link(page.text, "prev")
    assert url is None
    # The message holding a script tag is text on the page, never markup.
    everything = "".join(client.get(u, headers=BROWSER).text for u, _ in visited)
    assert "<script>alert(1)</script>" not in everything
    assert "cannot archive &lt;script&gt;alert(1)&lt;/script&gt;bad" in everything
    for trail in ("x", "\u00b2", "1..2", str(2**64)):
        assert client.get(f"{visited[0][0]}&back={trail}", headers=BROWSER).status_code == 400


def test_the_page_has_an_empty_state_and_links_back_to_the_job(client, engine, prefix):
    job_id = archive(client, engine, prefix, ["ok-1", "ok-2"])
    page = client.get(f"/jobs/{job_id}/results?which=errors", headers=BROWSER)
    assert page.status_code == 200 and "No failed ids" in page.text
    assert f'href="/jobs/{job_id}"' in page.text
    assert f'href="/jobs/{job_id}/results?format=csv"' in page.text
    results = client.get(f"/jobs/{job_id}/results?which=results", headers=BROWSER)
    assert (
        row_ids(results.text) == ["ok-1", "ok-2"]
        and "{&#34;archived&#34;: &#34;ok-1&#34;}" in results.text
    )
