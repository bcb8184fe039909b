"""A scripted stand-in for the batchflow server, to test the browser code on its own.

It serves ``static/`` and pages the tests write, and answers the job endpoints
(``/jobs/<id>/status``, ``/events``, actions, ``/jobs/start/<handler>``) from a script of
status objects. Faults are injected per job: SSE that answers 500 or drops the connection,
status polls that fail. It records every request so tests can check what the widget sent.
Standard library only, plus batchflow's own ``display.with_view``: like the real server, every
status it sends carries the ready-made ``state``, ``bar`` and ``text`` (computed when it is sent,
so a test may change a status's fields or labels after building it).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from batchflow.display import with_view
from batchflow.exceptions import JobNotFound

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "static"
CSRF = "test-csrf-token-123"
TERMINAL = {"completed", "failed", "stopped", "canceled"}
LABELS = {
    "title": "Archiving posts",
    "running": "Running",
    "completed": "Completed",
    "completed_with_failures": "Completed with failures",
    "failed": "Failed",
    "stopped": "Stopped",
    "canceled": "Canceled",
    "paused": "Paused",
    "good": "archived",
    "bad": "could not archive",
    "skipped": "skipped",
    "stop": "Stop",
    "cancel": "Cancel",
    "pause": "Pause",
    "resume": "Resume",
}
_clock = [1_700_000_000.0]
_clock_lock = threading.Lock()


def tick() -> float:
    """A strictly increasing fake clock for ``updated_at``."""
    with _clock_lock:
        _clock[0] += 1.0
        return _clock[0]


def make_status(job_id: str, **kw) -> dict:
    """A complete status dict in the shape the server sends, with ``kw`` overriding defaults."""
    status = kw.pop("status", "running")
    terminal = kw.pop("terminal", status in TERMINAL)
    base = f"/jobs/{job_id}"
    s = {
        "id": job_id,
        "handler": "archive-posts",
        "kind": "items",
        "status": status,
        "terminal": terminal,
        "outcome": status if terminal else None,
        "total": 100,
        "processed": 0,
        "good": 0,
        "bad": 0,
        "skipped": 0,
        "undone": 0,
        "undo_failed": 0,
        "percent": None,
        "rate": None,
        "eta_s": None,
        "message": None,
        "messages": [],
        "labels": dict(LABELS),
        "actions": []
        if terminal
        else {"running": ["stop", "pause"], "paused": ["resume", "stop"]}.get(status, []),
        "error": None,
        "results": None,
        "response": None,
        "restarted": False,
        "created_at": 1_700_000_000.0,
        "started_at": 1_700_000_001.0,
        "finished_at": None,
        "updated_at": None,
        "owner": "alice",
        "url": base,
        "status_url": base + "/status",
        "events_url": base + "/events",
        "action_urls": {a: f"{base}/{a}" for a in ("stop", "cancel", "pause", "resume", "cleanup")},
        "download_url": None,
        "file_name": None,
        "results_url": base + "/results",
        "redirect_url": None,
    }
    s.update(kw)
    if s["total"] and s["percent"] is None:
        s["percent"] = round(100.0 * s["processed"] / s["total"], 1)
    if terminal and s["finished_at"] is None:
        s["finished_at"] = s["started_at"] + 200
    return s


def progression(
    job_id: str, total: int = 100, steps: int = 4, final: str = "completed", **kw
) -> list:
    """Running states from 0 to ``total`` in ``steps`` steps, then one terminal state."""
    states = []
    for i in range(steps):
        n = total * i // steps
        states.append(
            make_status(
                job_id,
                total=total,
                processed=n,
                good=n,
                rate=25.0,
                eta_s=(total - n) / 25.0,
                message=f"Archived {n} posts",
                **kw,
            )
        )
    end = dict(kw)
    end.setdefault("good", total)
    states.append(make_status(job_id, status=final, total=total, processed=total, **end))
    return states


class FakeJob:
    """One scripted job. Each status answer (poll or SSE event) shows the current state and, when
    ``auto`` is on, moves to the next one. With ``auto`` off the test moves it with ``goto``."""

    def __init__(
        self,
        job_id: str,
        states: list,
        *,
        auto: bool = True,
        sse: str = "ok",
        interval: float = 0.12,
    ):
        self.id = job_id
        self.states = [copy.deepcopy(s) for s in states]
        self.pos = 0
        self.auto = auto
        # "ok" | "500" | "429" (too many streams: refused) | "drop:N" (N events, then the socket
        # closes) | "end:N" (N events, then the server ends the stream, as at its lifetime) | "hang"
        self.sse = sse
        self.interval = interval
        self.status_faults: list = []  # next status answers: an int code, or "drop"
        self.action_answers: dict = {}  # action -> (code, body dict); default 200 + current state
        self.cond = threading.Condition()
        self.sse_connections = 0
        self.polls = 0
        for s in self.states:
            if s.get("updated_at") is None:
                s["updated_at"] = tick()

    def current(self) -> dict:
        with self.cond:
            return with_view(copy.deepcopy(self.states[self.pos]))

    def take(self) -> dict:
        """The state to answer with; advances in auto mode."""
        with self.cond:
            s = copy.deepcopy(self.states[self.pos])
            if self.auto and self.pos < len(self.states) - 1:
                self.pos += 1
            return with_view(s)

    def goto(self, pos: int) -> None:
        with self.cond:
            self.pos = pos
            self.cond.notify_all()

    def push(self, state: dict) -> None:
        """Append a state and make it current (for interactive scripts)."""
        with self.cond:
            state = copy.deepcopy(state)
            if state.get("updated_at") is None:
                state["updated_at"] = tick()
            self.states.append(state)
            self.pos = len(self.states) - 1
            self.cond.notify_all()


class Harness:
    def __init__(self) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.pages: dict[str, str] = {}
        self.requests: list[dict] = []
        self.start_answers: dict = {}  # handler -> (code, body) or a FakeJob to create
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle
    def start(self) -> Harness:
        self.thread.start()
        return self

    def close(self) -> None:
        with self.lock:
            for job in self.jobs.values():
                with job.cond:
                    job.sse = "closed"
                    job.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting
    def add_job(self, job_id: str, states: list, **kw) -> FakeJob:
        job = FakeJob(job_id, states, **kw)
        with self.lock:
            self.jobs[job_id] = job
        return job

    def page(self, name: str, body: str, script: str = "", head: str = "") -> str:
        """Register an HTML page that loads the widget, then runs ``script``; returns its URL."""
        self.pages[name] = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="csrf-token" content="{CSRF}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name}</title>
<link rel="stylesheet" href="/static/batchflow/batchflow.css">
{head}
</head><body class="bf-body"><main class="bf-container bf-main">{body}</main>
<script src="/static/batchflow/batchflow.js"></script>
<script>{script}</script></body></html>"""
        return f"{self.base}/page/{name}"

    def raw_page(self, name: str, html: str) -> str:
        """Register a complete HTML document (e.g. a rendered template)."""
        self.pages[name] = html
        return f"{self.base}/page/{name}"

    def requests_to(self, path_end: str, method: str | None = None) -> list[dict]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r["path"].endswith(path_end) and (method is None or r["method"] == method)
            ]

    def wait_for_request(
        self, path_end: str, method: str | None = None, timeout: float = 5.0
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.requests_to(path_end, method)
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no {method or ''} request to ...{path_end} within {timeout}s")

    # -- HTTP
    def _handler_class(self):
        harness = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _record(self, body: bytes = b"") -> None:
                with harness.lock:
                    harness.requests.append(
                        {
                            "t": time.monotonic(),
                            "method": self.command,
                            "path": urlsplit(self.path).path,
                            "query": urlsplit(self.path).query,
                            "headers": dict(self.headers.items()),
                            "body": body,
                        }
                    )

            def _send(
                self,
                code: int,
                body: bytes | str = b"",
                ctype: str = "application/json",
                headers: dict | None = None,
            ) -> None:
                if isinstance(body, str):
                    body = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, obj) -> None:
                self._send(code, json.dumps(obj))

            def _drop(self) -> None:
                """Close the connection without an answer: a network error for the browser."""
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass

            def do_GET(self):
                self._record()
                path = urlsplit(self.path).path
                parts = [p for p in path.split("/") if p]
                if path.startswith("/page/"):
                    html = harness.pages.get(path[len("/page/") :])
                    return self._send(
                        200 if html else 404, html or "no page", "text/html; charset=utf-8"
                    )
                if "static" in parts:
                    rel = "/".join(parts[parts.index("static") + 1 :])
                    f = (STATIC / rel).resolve()
                    if STATIC in f.parents and f.is_file():
                        ctype = {".js": "text/javascript", ".css": "text/css"}.get(
                            f.suffix, "text/plain"
                        )
                        return self._send(200, f.read_bytes(), ctype + "; charset=utf-8")
                    return self._send(404, "not found", "text/plain")
                if parts == ["jobs", "csrf-token"]:  # the blueprint's token for a page without one
                    return self._json(200, {"csrf_token": CSRF})
                if len(parts) == 3 and parts[0] == "jobs":
                    job = harness.jobs.get(parts[1])
                    if job is None:  # the real server's answer for an unknown job
                        return self._json(404, {"error": str(JobNotFound(parts[1]))})
                    if parts[2] == "status":
                        return self._status(job)
                    if parts[2] == "events":
                        return self._events(job)
                    if parts[2] == "download":
                        return self._send(
                            200,
                            "id,name\n1,Ada\n",
                            "text/csv",
                            {"Content-Disposition": 'attachment; filename="contacts.csv"'},
                        )
                    if parts[2] == "results":
                        return self._send(200, "id,error\n7,boom\n", "text/csv")
                self._send(404, "not found", "text/plain")

            def _status(self, job: FakeJob):
                with job.cond:
                    job.polls += 1
                    fault = job.status_faults.pop(0) if job.status_faults else None
                if fault == "drop":
                    return self._drop()
                if isinstance(fault, int):
                    return self._json(fault, {"error": "server trouble"})
                self._json(200, job.take())

            def _events(self, job: FakeJob):
                with job.cond:
                    job.sse_connections += 1
                    mode = job.sse
                if mode == "500":
                    return self._send(500, "boom", "text/plain")
                if mode == "404":
                    return self._send(404, "no", "text/plain")
                if mode == "429":
                    body = json.dumps({"error": "You have 4 live progress streams open already."})
                    return self._send(429, body, headers={"Retry-After": "15"})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                limit = int(mode.split(":")[1]) if mode.startswith(("drop:", "end:")) else None
                sent = 0
                last = None
                try:
                    while True:
                        if (
                            mode == "hang"
                        ):  # connected, but nothing ever arrives (a buffering proxy)
                            with job.cond:
                                job.cond.wait(0.5)
                                if job.sse == "closed":
                                    return
                            continue
                        if job.auto:
                            state = job.take()
                        else:
                            with job.cond:
                                while (
                                    job.states[job.pos]["updated_at"] == last
                                    and job.sse != "closed"
                                ):
                                    job.cond.wait(0.5)
                                if job.sse == "closed":
                                    return
                                state = with_view(job.states[job.pos])
                        last = state["updated_at"]
                        self.wfile.write(f"data: {json.dumps(state)}\n\n".encode())
                        self.wfile.flush()
                        sent += 1
                        if state["terminal"]:
                            return
                        if limit is not None and sent >= limit:
                            if mode.startswith("end:"):
                                self.close_connection = True  # a clean end of the response
                                return
                            return self._drop()
                        if job.auto:
                            time.sleep(job.interval)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                self._record(body)
                parts = [p for p in urlsplit(self.path).path.split("/") if p]
                if len(parts) == 3 and parts[:2] == ["jobs", "start"]:
                    return self._start(parts[2], body)
                if len(parts) == 3 and parts[0] == "jobs" and parts[1] in harness.jobs:
                    job = harness.jobs[parts[1]]
                    if parts[2] == "cleanup":
                        return self._send(204, b"")
                    if self.headers.get("X-CSRFToken") != CSRF:
                        return self._json(400, {"error": "The CSRF token is missing."})
                    code, answer = job.action_answers.get(parts[2], (200, None))
                    if callable(answer):
                        answer = answer(job)
                    if isinstance(answer, dict) and "status" in answer:
                        answer = with_view(answer)  # a status, as the server sends it
                    return self._json(code, answer if answer is not None else job.current())
                self._json(404, {"error": "Not found"})

            def _start(self, handler: str, body: bytes):
                if self.headers.get("X-CSRFToken") != CSRF:
                    return self._json(400, {"error": "The CSRF token is missing."})
                answer = harness.start_answers.get(handler)
                if answer is None:
                    return self._json(404, {"error": f"Unknown job type {handler!r}."})
                if isinstance(answer, FakeJob):
                    base = f"/jobs/{answer.id}"
                    return self._json(
                        202,
                        {
                            "id": answer.id,
                            "url": base,
                            "status_url": base + "/status",
                            "events_url": base + "/events",
                        },
                    )
                code, obj = answer
                self._json(code, obj)

        return Handler


def parse_form(body: bytes, content_type: str) -> dict:
    """Decode a multipart (FormData / sendBeacon) or urlencoded body into {name: value}."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {k: v[0] for k, v in parse_qs(body.decode()).items()}
    boundary = content_type.split("boundary=", 1)[1].strip('"')
    out = {}
    for chunk in body.split(b"--" + boundary.encode()):
        head, _, value = chunk.partition(b"\r\n\r\n")
        if b'name="' in head:
            name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
            out[name] = value.rstrip(b"\r\n").decode()
    return out
