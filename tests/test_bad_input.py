"""Bad input, as a table: each request gets a clear 4xx, no server error, no Redis key, no
import."""

from __future__ import annotations

import json
import sys

import pytest

from batchflow import BatchFlow, ConfigurationError, FileJob
from batchflow.config import Settings
from tests.test_web import ALICE, BOB, JOB_ROUTES, finish, start, token
from tests.webapp import create_app

GOOD_ID = "A" * 22
BAD_JOB_IDS = [
    "short",
    "x" * 65,
    "x" * 5000,
    "*" * 22,
    "{" + "x" * 21,
    "x" * 21 + "}",
    "abc:defghijklmnopqrstu",
    "..",
    "%2e%2e%2f" * 3,
    "a b c d e f g h i j k l",
    "\u202eabcdefghijklmnopqrstu",
    GOOD_ID,  # well formed, unknown
]


@pytest.fixture
def app(prefix, files_dir):
    return create_app(prefix, files_dir, BATCHFLOW_MAX_IDS=1000, BATCHFLOW_MAX_BODY=200_000)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def no_trace(redis_client, prefix):
    """After the test body: no job key under the prefix, nothing new imported."""
    modules = set(sys.modules)
    yield
    keys = [k for k in redis_client.scan_iter(match=f"{prefix}:*") if ":broker:" not in k]
    assert keys == []
    new = {m for m in set(sys.modules) - modules if not m.startswith(("encodings", "_"))}
    assert not {m for m in new if m in ("os.path", "subprocess", "builtins", "pickle")} and not {
        m for m in new if m.startswith(("tests.", "batchflow."))
    }, new


@pytest.mark.parametrize("job_id", BAD_JOB_IDS)
@pytest.mark.parametrize(("method", "path"), JOB_ROUTES)
def test_malformed_and_unknown_job_ids_are_404(client, no_trace, job_id, method, path):
    headers = {**ALICE, "X-CSRFToken": token(client), "Accept": "application/json"}
    response = getattr(client, method)(f"/jobs/{job_id}{path}", headers=headers)
    assert response.status_code == 404
    if response.is_json:
        assert "error" in response.json


@pytest.mark.parametrize(
    "handler",
    [
        "os.system",
        "os.path",
        "builtins.eval",
        "__import__",
        "Count",
        "tests.handlers.Count",
        "count%00",
        "COUNT",
        "count/../boom",
        "a" * 200,
    ],
)
def test_handler_names_are_looked_up_never_imported(client, no_trace, handler):
    response = start(client, handler=handler)
    assert response.status_code == 404, response.status_code
    if "/" not in handler:  # a path that matches no route at all gets the host app's own 404
        assert "error" in response.json


BODIES = [
    # (description, raw body or json, content type, status, message part)
    ("not JSON", b"{nope", "application/json", 400, "JSON object"),
    ("a JSON list", b"[1, 2]", "application/json", 400, "JSON object"),
    ("params a list", {"params": [1]}, None, 400, "params must be"),
    ("ids a string", {"ids": "1,2"}, None, 400, "ids must be"),
    ("ids of objects", {"ids": [{"a": 1}]}, None, 400, "string or a whole number"),
    ("ids with booleans", {"ids": [True]}, None, 400, "string or a whole number"),
    ("empty ids", {"ids": []}, None, 400, "empty"),
    ("an empty id", {"ids": [""]}, None, 400, "1 to 512"),
    ("an over-long id", {"ids": ["x" * 600]}, None, 400, "1 to 512"),
    ("a NUL in an id", {"ids": ["a\u0000b"]}, None, 400, "control"),
    ("ids past the limit", {"ids": list(range(1001))}, None, 413, "at most 1000"),
    ("redirect_url not a string", {"ids": ["1"], "redirect_url": 5}, None, 400, "string"),
]


@pytest.mark.parametrize(
    ("what", "body", "ctype", "status", "message"), BODIES, ids=[b[0] for b in BODIES]
)
def test_bad_start_bodies(client, no_trace, what, body, ctype, status, message):
    headers = {**ALICE, "X-CSRFToken": token(client), "Accept": "application/json"}
    if ctype:
        response = client.post(
            "/jobs/start/archive", data=body, content_type=ctype, headers=headers
        )
    else:
        response = client.post("/jobs/start/archive", json=body, headers=headers)
    assert response.status_code == status, response.json
    assert message in response.json["error"]


def test_oversized_bodies_and_a_million_ids_are_413(client, no_trace):
    headers = {**ALICE, "X-CSRFToken": token(client), "Accept": "application/json"}
    million = json.dumps({"ids": list(range(1_000_000))})
    response = client.post(
        "/jobs/start/archive", data=million, content_type="application/json", headers=headers
    )
    assert response.status_code == 413
    form = client.post(
        "/jobs/start/count", data={"x": "y" * 300_000, "csrf_token": token(client)}, headers=ALICE
    )
    assert form.status_code == 413


def test_ids_for_a_handler_that_takes_none(client, no_trace):
    response = start(client, handler="count", ids=["1"])
    assert response.status_code == 400 and "does not take ids" in response.json["error"]


def test_state_changing_routes_refuse_get_and_missing_csrf(client, no_trace):
    for path in ("/stop", "/cancel", "/pause", "/resume", "/cleanup", "/retry"):
        assert client.get(f"/jobs/{GOOD_ID}{path}", headers=ALICE).status_code == 405
        assert client.post(f"/jobs/{GOOD_ID}{path}", headers=ALICE).status_code == 400
    assert client.post("/jobs/start/count", json={}, headers=ALICE).status_code == 400


def test_bad_batch_settings_are_clear_configuration_errors(prefix):
    for key, value in [
        ("BATCHFLOW_BATCH_MIN", 0),
        ("BATCHFLOW_BATCH_MAX", -5),
        ("BATCHFLOW_BATCH_INITIAL", "lots"),
        ("BATCHFLOW_STEP_TARGET", 0),
        ("BATCHFLOW_LEASE_SECONDS", -1),
        ("BATCHFLOW_KEY_PREFIX", "a{b}"),
    ]:
        with pytest.raises(ConfigurationError, match=key):
            Settings.from_mapping({key: value})
    with pytest.raises(ConfigurationError, match="must not exceed"):
        Settings.from_mapping({"BATCHFLOW_BATCH_MIN": 10, "BATCHFLOW_BATCH_MAX": 5})
    huge = Settings.from_mapping({"BATCHFLOW_BATCH_MAX": 10**9})
    assert huge.clamp_batch(10**12) == 10**9 and huge.clamp_batch(-3) == 1


def test_hostile_text_is_escaped_on_pages_and_neutralised_in_csv(client, app, prefix):
    from celery.contrib.testing.worker import start_worker

    hostile = [
        "<b>x</b>",
        "<script>alert(1)</script>",
        "\u202eevil",
        "=HYPERLINK(1)",
        "+1",
        "-2",
        "@SUM(A1)",
        "bad-<i>",
    ]
    with start_worker(
        BatchFlow.state(app).celery, pool="threads", concurrency=1, perform_ping_check=False
    ):
        job_id = start(client, handler="archive", ids=hostile, params={"prefix": prefix}).json["id"]
        status = finish(client, job_id)
        page = client.get(f"/jobs/{job_id}", headers=ALICE).text
        assert "<script>alert(1)</script>" not in page and "<b>x</b>" not in page
        report = client.get(f"/jobs/{job_id}/results?format=csv", headers=ALICE).text
        for line in report.splitlines()[1:]:
            assert not line.startswith(("=", "+", "-", "@")), line
        assert "'=HYPERLINK(1),good" in report and "'@SUM(A1),good" in report
        assert status["bad"] == 1
        listing = client.get("/jobs/", headers=ALICE).text
        assert "<script>alert(1)</script>" not in listing


def test_download_names_cannot_leave_the_job_folder(files_dir):
    from batchflow.job import Job

    class Sneaky(FileJob):
        filename = "../../etc/passwd"

    class Absolute(FileJob):
        filename = "/etc/shadow"

    job = Job({"id": GOOD_ID, "handler": "x"}, files_dir=files_dir)
    for cls, name in ((Sneaky, "passwd"), (Absolute, "shadow")):
        path = cls().file_path(job)
        assert path == f"{files_dir}/{GOOD_ID}/{name}"


def test_stop_or_cancel_on_a_finished_job_is_a_clear_409(client, app):
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        BatchFlow.state(app).celery, pool="threads", concurrency=1, perform_ping_check=False
    ):
        job_id = start(client, params={"n": 3}).json["id"]
        finish(client, job_id)
    headers = {**ALICE, "X-CSRFToken": token(client), "Accept": "application/json"}
    for action in ("stop", "cancel", "pause"):
        first = client.post(f"/jobs/{job_id}/{action}", headers=headers)
        second = client.post(f"/jobs/{job_id}/{action}", headers=headers)
        assert first.status_code == second.status_code == 409
        assert first.json == second.json and "already ended" in first.json["error"]
    assert client.post(f"/jobs/{job_id}/stop", headers={**headers, **BOB}).status_code == 404
