"""Event streams cannot exhaust the web server: a lifetime per stream, and a cap per identity on
the streams open at once, shared through Redis. Real Redis, the real app; jobs stay pending (no
worker), as a job nobody runs would: their streams would never end by themselves."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time

import pytest

from batchflow import BatchFlow
from batchflow.streams import KEEPALIVE, LEASE
from tests.helpers import wait_for
from tests.test_web import ALICE, BOB, start
from tests.webapp import create_app


def make_client(prefix, files_dir, **config):
    app = create_app(prefix, files_dir, **config)
    return app, app.test_client()


def slots(app):
    return BatchFlow.state(app).engine.streams


@contextlib.contextmanager
def serving(app):
    """``app`` on a real threaded HTTP server, a thread per request, as streams are served."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()


def open_stream(port, job_id, headers=ALICE):
    """A stream over HTTP, read up to its first event (the job's state) when it is one."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", f"/jobs/{job_id}/events", headers=headers)
    r = conn.getresponse()
    if r.status == 200:
        while not (line := r.readline().decode()).startswith("data: "):
            assert line, "the stream ended before its first event"
        assert json.loads(line[6:])["id"] == job_id
    r.conn = conn
    return r


def hang_up(r):
    r.close()
    r.conn.close()


def _text(chunk):
    return chunk.decode() if isinstance(chunk, bytes) else chunk


def test_the_keep_alive_comes_well_before_a_slot_lapses():
    assert LEASE >= 3 * KEEPALIVE


def test_one_identity_beyond_its_cap_gets_429_before_any_stream_and_others_still_stream(
    prefix, files_dir
):
    app, client = make_client(prefix, files_dir, BATCHFLOW_STREAMS_PER_USER=2)
    slots(app).keepalive = 0.2  # a client that hung up is noticed this fast
    alice_job = start(client, params={"n": 10}).json["id"]
    bob_job = start(client, headers=BOB, params={"n": 10}).json["id"]
    with serving(app) as port:
        held = [open_stream(port, alice_job), open_stream(port, alice_job)]
        assert [r.status for r in held] == [200, 200]

        refused = open_stream(port, alice_job)
        assert refused.status == 429
        assert refused.getheader("Retry-After") == "1"
        assert refused.getheader("Content-Type") == "application/json"  # not a stream
        body = json.loads(refused.read())
        assert "2 live progress streams" in body["error"]
        assert body["status_url"] == f"/jobs/{alice_job}/status"
        assert slots(app).held("alice") == 2

        bobs = open_stream(port, bob_job, headers=BOB)
        assert bobs.status == 200 and slots(app).held("bob") == 1
        # Someone else's job is a 404, as ever, and takes no slot.
        assert client.get(f"/jobs/{alice_job}/events", headers=BOB).status_code == 404
        assert slots(app).held("bob") == 1

        hang_up(held[0])  # noticed at the next keep-alive, and its slot freed
        wait_for(lambda: slots(app).held("alice") == 1, timeout=5)
        again = open_stream(port, alice_job)
        assert again.status == 200
        for r in (held[1], again, bobs, refused):
            hang_up(r)
        wait_for(lambda: slots(app).held("alice") == slots(app).held("bob") == 0, timeout=5)


def test_a_stream_closed_before_its_first_chunk_frees_its_slot(prefix, files_dir):
    app, client = make_client(prefix, files_dir, BATCHFLOW_STREAMS_PER_USER=1)
    job_id = start(client, params={"n": 10}).json["id"]
    r = client.get(f"/jobs/{job_id}/events", headers=ALICE, buffered=False)
    assert r.status_code == 200 and slots(app).held("alice") == 1
    r.close()  # the generator never ran
    assert slots(app).held("alice") == 0


def test_a_stream_ends_after_its_lifetime_and_frees_its_slot(prefix, files_dir):
    app, client = make_client(
        prefix, files_dir, BATCHFLOW_STREAMS_PER_USER=1, BATCHFLOW_STREAM_SECONDS=1
    )
    job_id = start(client, params={"n": 10}).json["id"]  # pending for good: no worker
    began = time.monotonic()
    r = client.get(f"/jobs/{job_id}/events", headers=ALICE, buffered=False)
    text = "".join(_text(chunk) for chunk in r.response)  # returns when the server ends it
    took = time.monotonic() - began
    assert 1.0 <= took < 4.0, took
    assert text.startswith("retry: ")  # the browser reconnects by itself after this
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert events and events[0]["status"] == "pending"
    assert slots(app).held("alice") == 0  # freed when the stream ended, before any close()
    r.close()
    again = client.get(f"/jobs/{job_id}/events", headers=ALICE, buffered=False)
    assert again.status_code == 200  # a new stream may begin at once
    again.close()


def test_a_stream_that_ends_with_its_job_frees_its_slot(prefix, files_dir):
    from celery.contrib.testing.worker import start_worker

    app, client = make_client(prefix, files_dir, BATCHFLOW_STREAMS_PER_USER=1)
    job_id = start(client, params={"n": 300}).json["id"]
    celery = BatchFlow.state(app).celery
    with start_worker(celery, pool="threads", concurrency=1, perform_ping_check=False):
        r = client.get(f"/jobs/{job_id}/events", headers=ALICE, buffered=False)
        text = "".join(_text(chunk) for chunk in r.response)
    assert json.loads(text.rsplit("data: ", 1)[1])["status"] == "completed"
    assert slots(app).held("alice") == 0
    r.close()


def test_the_slots_of_a_process_that_died_lapse_by_themselves(prefix, files_dir, redis_client):
    app, _ = make_client(prefix, files_dir)
    streams = slots(app)
    # A process takes two slots with a short lease, then dies: it never releases them.
    dead = [streams.acquire("carol", 2, lease=0.4) for _ in range(2)]
    assert all(dead) and streams.acquire("carol", 2, lease=0.4) is None
    key = streams.keys.streams("carol")
    assert key.startswith(f"{prefix}:streams:") and 0 < redis_client.pttl(key) <= 400
    time.sleep(0.5)
    assert streams.held("carol") == 0
    live = streams.acquire("carol", 2, lease=0.4)
    assert live is not None
    # A live stream's refresh keeps its slot past the first lease; a lapsed slot is not revived.
    time.sleep(0.25)
    assert streams.refresh("carol", live, lease=0.4)
    time.sleep(0.25)
    assert streams.held("carol") == 1
    assert not streams.refresh("carol", dead[0])
    streams.release("carol", live)
    streams.release("carol", live)  # again is fine
    assert streams.held("carol") == 0
    time.sleep(0.5)
    assert redis_client.exists(key) == 0  # nothing left behind


@pytest.mark.parametrize("cap", [1, 3])
def test_concurrent_acquires_never_exceed_the_cap(prefix, files_dir, cap):
    from concurrent.futures import ThreadPoolExecutor

    app, _ = make_client(prefix, files_dir)
    streams = slots(app)
    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(lambda _: streams.acquire("dave", cap), range(16)))
    assert sum(t is not None for t in tokens) == cap == streams.held("dave")
