"""Real servers the notification tests talk to, each a subprocess on a free port, started and
stopped by pid: an SMTP server (aiosmtpd, its Mailbox handler writing each message into a
Maildir) and an HTTP receiver (this module run as a script) that keeps each request it gets.

Run as a script: ``python -m tests.receivers <port> <folder> [<fail first N with status>]``. It
writes each POST it receives to ``<folder>/<n>.json`` (headers, body as text, the status it
answered) and answers 204, or the given status to the first N requests.
"""

from __future__ import annotations

import json
import mailbox
import os
import socket
import subprocess
import sys
import time
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class Server:
    """A subprocess listening on ``port``; :meth:`stop` kills it by pid."""

    def __init__(self, command: list[str], port: int) -> None:
        self.port = port
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.proc = subprocess.Popen(self.command, cwd=ROOT, start_new_session=True)
        _wait_listening(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)


class SmtpServer(Server):
    """aiosmtpd on a free port, keeping every message in the Maildir ``folder``."""

    def __init__(self, folder: str, port: int | None = None) -> None:
        self.folder = folder
        port = port or free_port()
        command = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}"]
        super().__init__([*command, "-c", "aiosmtpd.handlers.Mailbox", folder], port)

    def messages(self) -> list[Message]:
        if not os.path.isdir(os.path.join(self.folder, "new")):
            return []
        return [message for _, message in mailbox.Maildir(self.folder, create=False).items()]


class HttpReceiver(Server):
    """An HTTP server on a free port that keeps every POST in ``folder``; the first ``fail``
    requests are answered with ``status`` instead of 204."""

    def __init__(self, folder: str, *, fail: int = 0, status: int = 503) -> None:
        self.folder = folder
        port = free_port()
        command = [sys.executable, "-m", "tests.receivers", str(port), folder, str(fail)]
        super().__init__([*command, str(status)], port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def requests(self) -> list[dict[str, Any]]:
        if not os.path.isdir(self.folder):
            return []
        names = [n for n in os.listdir(self.folder) if n.endswith(".json")]
        found = []
        for name in sorted(names, key=lambda n: int(n.split(".")[0])):
            with open(os.path.join(self.folder, name)) as record:
                found.append(json.load(record))
        return found


def _serve(port: int, folder: str, fail: int, status: int) -> None:
    os.makedirs(folder, exist_ok=True)
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            count[0] += 1
            code = status if count[0] <= fail else 204
            record = {"path": self.path, "headers": dict(self.headers), "body": body.decode()}
            record["answered"] = code
            path = os.path.join(folder, f"{count[0]}.json")
            with open(path + ".part", "w") as out:
                json.dump(record, out)
            os.replace(path + ".part", path)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
