"""What an attacker found, each a test that failed before its fix: open redirects, bad input that
answered 500, a chunked body past the limit, security headers, the secret key, CSV formulas
behind blanks, and the anonymous identity at login."""

from __future__ import annotations

import io
import json
import random

import pytest
from flask import Flask

from batchflow import BatchFlow, ConfigurationError
from batchflow.files import neutralize_cell, neutralize_rows
from tests.handlers import make_registry
from tests.test_web import ALICE, start, token
from tests.webapp import create_app


@pytest.fixture
def app(prefix, files_dir):
    return create_app(prefix, files_dir, BATCHFLOW_MAX_BODY=200_000)


@pytest.fixture
def client(app):
    return app.test_client()


def json_headers(client):
    return {**ALICE, "X-CSRFToken": token(client), "Accept": "application/json"}


# -- redirect_url ----------------------------------------------------------------------------

OFF_SITE = [
    "///evil.example/x",
    "////evil.example/x",
    "/\\/evil.example",
    "/\t/evil.example",
    "/ /evil.example",
    " //evil.example",
    "http://localhost/x",  # the Host this request sent: not a reason to trust it
    "https://localhost/x",
]


@pytest.mark.parametrize("url", OFF_SITE)
def test_redirect_url_accepts_only_what_a_browser_resolves_to_this_site(client, url):
    response = start(client, params={"n": 1}, redirect_url=url, headers=ALICE)
    assert response.status_code == 400 and "this site" in response.json["error"], url


def test_a_full_url_is_accepted_for_the_apps_own_server_name_only(prefix, files_dir):
    app = create_app(prefix, files_dir, SERVER_NAME="jobs.example.test")
    client = app.test_client()
    base = "http://jobs.example.test"
    own = "https://jobs.example.test/reports"
    headers = {**ALICE, "X-CSRFToken": token(client), "Accept": "application/json"}
    ok = client.post(
        f"{base}/jobs/start/count",
        json={"params": {"n": 1}, "redirect_url": own},
        headers=headers,
    )
    assert ok.status_code == 202
    assert BatchFlow.state(app).engine.state(ok.json["id"]).fields["redirect_url"] == own
    other = client.post(
        f"{base}/jobs/start/count",
        json={"params": {"n": 1}, "redirect_url": "https://jobs.example.test.evil/x"},
        headers=headers,
    )
    assert other.status_code == 400


# -- bad input that answered 500 -------------------------------------------------------------


def test_json_nested_100000_deep_is_400_not_500(prefix, files_dir):
    client = create_app(prefix, files_dir).test_client()
    deep = '{"params": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    response = client.post(
        "/jobs/start/count",
        data=deep,
        content_type="application/json",
        headers=json_headers(client),
    )
    assert response.status_code == 400 and "JSON object" in response.json["error"]


def test_json_past_the_nesting_limit_is_400_with_the_limit(client):
    params = {"a": json.loads("[" * 40 + "]" * 40)}
    response = client.post(
        "/jobs/start/count", json={"params": params}, headers=json_headers(client)
    )
    assert response.status_code == 400 and "at most 32 levels" in response.json["error"]


@pytest.mark.parametrize(
    "body",
    [
        '{"ids": ["\\ud800"]}',
        '{"ids": ["ok", "a\\udfffb"]}',
        '{"ids": ["1"], "params": {"prefix": "\\ud800"}}',
        '{"ids": ["1"], "redirect_url": "/x\\ud800"}',
    ],
)
def test_a_lone_surrogate_anywhere_in_a_start_request_is_400(client, body):
    response = client.post(
        "/jobs/start/archive",
        data=body,
        content_type="application/json",
        headers=json_headers(client),
    )
    assert response.status_code == 400 and "not valid Unicode" in response.json["error"]


def test_huge_cursor_count_and_page_numbers_are_400_not_500(client):
    job_id = start(client, params={"n": 1}).json["id"]
    headers = json_headers(client)
    for cursor in (2**64, 2**70, -1):
        r = client.get(f"/jobs/{job_id}/results?cursor={cursor}", headers=headers)
        assert r.status_code == 400 and "cursor" in r.json["error"], cursor
    # a count past what Redis takes is clamped, not an error
    assert client.get(f"/jobs/{job_id}/results?count={2**70}", headers=headers).status_code == 200
    for page in (2**63, 2**64, 10**7):
        r = client.get(f"/jobs/?page={page}", headers=headers)
        assert r.status_code == 400 and "page must be at most" in r.json["error"], page
    assert client.get("/jobs/?page=1000000", headers=headers).status_code == 200


def _chunked_post(client, body: bytes, ctype: str):
    """A body sent with Transfer-Encoding: chunked, as a server that ends the input stream
    (gunicorn, werkzeug's server) hands it to the app: no Content-Length."""
    headers = {**json_headers(client), "Transfer-Encoding": "chunked"}
    return client.post(
        "/jobs/start/archive",
        input_stream=io.BytesIO(body),
        content_type=ctype,
        headers=headers,
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_past_the_limit_is_413_and_one_within_it_works(client, prefix):
    big_json = json.dumps({"ids": ["1"] * 50_000}).encode()
    assert len(big_json) > 200_000
    assert _chunked_post(client, big_json, "application/json").status_code == 413
    form = b"ids=1&x=" + b"y" * 300_000
    assert _chunked_post(client, form, "application/x-www-form-urlencoded").status_code == 413
    small = json.dumps({"ids": ["1", "2"], "params": {"prefix": prefix}}).encode()
    response = _chunked_post(client, small, "application/json")
    assert response.status_code == 202, response.json


# -- headers -----------------------------------------------------------------------------------


def test_batchflow_pages_and_files_carry_security_headers(client):
    job_id = start(client, params={"n": 1}).json["id"]
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/status", "/jobs/", "/jobs/start/count"):
        r = client.get(path, headers=ALICE)
        assert r.status_code == 200, path
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'self'" in csp, path
        assert "unsafe-inline" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "same-origin"
        assert r.headers["Cache-Control"] == "no-store", path
    static = client.get("/jobs/static/batchflow/batchflow.js")
    assert static.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in static.headers.get("Cache-Control", "")
    static.close()
    # errors too: a 404 page is framed by nobody
    missing = client.get("/jobs/" + "A" * 22, headers=ALICE)
    assert (
        missing.status_code == 404
        and "frame-ancestors" in missing.headers["Content-Security-Policy"]
    )


def test_the_host_apps_own_headers_win_and_the_policy_can_be_turned_off(prefix, files_dir):
    app = create_app(prefix, files_dir, BATCHFLOW_CONTENT_SECURITY_POLICY="")
    client = app.test_client()
    assert "Content-Security-Policy" not in client.get("/jobs/", headers=ALICE).headers

    app = create_app(prefix, files_dir)

    @app.before_request
    def mark():
        from flask import g

        g.mine = True

    @app.after_request
    def own(response):  # runs after batchflow's: the app has the last word
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    assert (
        app.test_client().get("/jobs/", headers=ALICE).headers["Referrer-Policy"] == "no-referrer"
    )


def test_init_app_without_a_secret_key_says_why(prefix, files_dir):
    from tests.helpers import make_config

    app = Flask(__name__)
    app.config.update(make_config(prefix, files_dir))
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        BatchFlow(app, registry=make_registry())
    # An app with its own identity hook and its own CSRF protection needs no secret of ours.
    other = Flask(__name__)
    other.config.update(make_config(prefix, files_dir))
    BatchFlow(other, registry=make_registry(), identity=lambda: "u", csrf=False)


# -- CSV ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell", [" =1+1", "\t=1", "\r+1", "\n-2", "\u00a0@SUM(A1)", "  \n =HYPERLINK(1)", "=1", "\t"]
)
def test_formulas_behind_blanks_are_neutralised(cell):
    assert neutralize_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["abc", " a", "1=1", "", "a-b", "  text"])
def test_plain_cells_are_left_alone(cell):
    assert neutralize_cell(cell) == cell


def test_rows_neutralised_a_column_at_a_time_match_the_cell_by_cell_guard():
    """The column-wise guard FileJob writes with changes exactly the cells neutralize_cell
    changes: thousands of random rows of formula starts, blanks, NUL characters, quotes,
    numbers and None, of one width and of several."""
    rng = random.Random(7)
    alphabet = "=+-@ \t\r\n\u00a0\x00a1,\"'"

    def cell() -> object:
        pick = rng.random()
        if pick < 0.1:
            return None
        if pick < 0.2:
            return rng.randint(-5, 5)
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))

    for _ in range(5000):
        width = rng.randint(1, 3)
        ragged = rng.random() < 0.1
        rows = [
            tuple(cell() for _ in range(width + (ragged and rng.randint(0, 1))))
            for _ in range(rng.randint(0, 6))
        ]
        wanted = [[neutralize_cell(value) for value in row] for row in rows]
        assert [list(row) for row in neutralize_rows(rows)] == wanted, rows
    untouched = [("a", 1, None), ("b", -2, "")]
    assert neutralize_rows(untouched) is untouched  # nothing to change: the rows as they are


# -- the anonymous identity --------------------------------------------------------------------


def _login_app(prefix, files_dir, **config):
    import flask_login

    from tests.helpers import broker_options, make_config

    class User(flask_login.UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", BATCHFLOW_CELERY=broker_options(prefix))
    app.config.update(make_config(prefix, files_dir, **config))
    flask_login.LoginManager(app).user_loader(User)
    BatchFlow(app, registry=make_registry())

    @app.post("/login/<user_id>")
    def log_in(user_id):
        flask_login.login_user(User(user_id))
        return "ok"

    @app.post("/logout")
    def log_out():
        flask_login.logout_user()
        return "ok"

    return app


def _anonymous_job_seen_after_login_and_logout(app) -> bool:
    client = app.test_client()
    job = client.post(
        "/jobs/start/count", json={"params": {"n": 1}}, headers={"X-CSRFToken": token(client, {})}
    )
    assert job.status_code == 202
    client.post("/login/5", headers={"X-CSRFToken": token(client, {})})
    client.post("/logout", headers={"X-CSRFToken": token(client, {})})
    return client.get(f"/jobs/{job.json['id']}/status").status_code == 200


def test_the_anonymous_identity_survives_login_unless_told_to_forget_it(prefix, files_dir):
    assert _anonymous_job_seen_after_login_and_logout(_login_app(prefix, files_dir))
    forgetful = _login_app(prefix, files_dir, BATCHFLOW_FORGET_ANON_AT_LOGIN=True)
    assert not _anonymous_job_seen_after_login_and_logout(forgetful)


def test_boolean_settings_read_words_and_refuse_nonsense():
    from batchflow.config import Settings

    assert Settings.from_mapping({"BATCHFLOW_FORGET_ANON_AT_LOGIN": "yes"}).forget_anon_at_login
    assert not Settings.from_mapping({"BATCHFLOW_FORGET_ANON_AT_LOGIN": "0"}).forget_anon_at_login
    with pytest.raises(ConfigurationError, match="true or false"):
        Settings.from_mapping({"BATCHFLOW_FORGET_ANON_AT_LOGIN": "maybe"})
