"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

from batchflow.engine import Engine
from tests.handlers import REDIS_URL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Debian's chromium; Playwright's own browser download is not used.
CHROMIUM = "/usr/bin/chromium"


def launch_chromium(playwright: Any) -> Any:
    """Headless Debian chromium through Playwright, with the flags this machine needs."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


@contextlib.contextmanager
def live_server(app: Any, *, worker: bool = True) -> Iterator[str]:
    """``app`` on a real threaded HTTP server (a thread per request, as event streams need) and,
    unless ``worker`` is False, a real in-process Celery worker (threads) on the app's own queue;
    yields the server's base URL. The worker stops first, then the server."""
    from celery.contrib.testing.worker import start_worker
    from werkzeug.serving import make_server

    from batchflow import BatchFlow

    http = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        with contextlib.ExitStack() as stack:
            if worker:
                celery = BatchFlow.state(app).celery
                stack.enter_context(
                    start_worker(celery, pool="threads", concurrency=2, perform_ping_check=False)
                )
            yield f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()


def make_config(prefix: str, files_dir: str, **overrides: Any) -> dict[str, Any]:
    config = {
        "BATCHFLOW_REDIS_URL": REDIS_URL,
        "BATCHFLOW_KEY_PREFIX": prefix,
        "BATCHFLOW_QUEUE": prefix,
        "BATCHFLOW_FILES_DIR": files_dir,
        "BATCHFLOW_LEASE_SECONDS": 3,
        "BATCHFLOW_QUEUE_TIMEOUT": 30,
        "BATCHFLOW_MAINTENANCE_INTERVAL": 0.5,
        "BATCHFLOW_STEP_TARGET": 0.2,
        # One-shot jobs report (and renew their lease) this often: a test sees live progress
        # after 0.1 s of work rather than 0.25 s (the default).
        "BATCHFLOW_PROGRESS_INTERVAL": 0.1,
        # In-process workers leave the test process's garbage collector as it is (a freeze there
        # would keep the fixtures of the test running at the time from ever being collected);
        # worker subprocesses freeze, as deployed (see WorkerProcess).
        "BATCHFLOW_GC_FREEZE": False,
    }
    config.update(overrides)
    return config


#: Seconds a worker's BRPOP waits for a message before its event loop goes round again. Kombu's
#: default is 1 s, and a worker notices it was asked to stop only between two rounds: at 0.1 s a
#: test's worker stops in about 0.1 s instead of about 1 s (ten idle BRPOPs a second, per worker).
BROKER_POLL = 0.1


def broker_options(prefix: str) -> dict[str, Any]:
    """Celery settings for a test's app: its broker keys under the test's prefix, and a worker
    that stops quickly (:data:`BROKER_POLL`)."""
    return {
        "broker_transport_options": {
            "global_keyprefix": f"{prefix}:broker:",
            "polling_interval": BROKER_POLL,
        }
    }


class QueuedStep(tuple):  # type: ignore[type-arg]
    """A step a ListDispatcher holds: ``(job_id, seq, countdown)``, and its ``lane``."""

    lane: int

    def __new__(cls, job_id: str, seq: int, countdown: float, lane: int = 0) -> QueuedStep:
        step = super().__new__(cls, (job_id, seq, countdown))
        step.lane = lane
        return step


class ListDispatcher:
    """The engine's Dispatcher interface backed by a list, to drive steps by hand."""

    def __init__(self) -> None:
        self.steps: list[QueuedStep] = []
        self.cleanups: list[str] = []
        self.notifies: list[str] = []

    def enqueue_step(self, job_id: str, seq: int, countdown: float = 0.0, lane: int = 0) -> None:
        self.steps.append(QueuedStep(job_id, seq, countdown, lane))

    def enqueue_cleanup(self, job_id: str) -> None:
        self.cleanups.append(job_id)

    def enqueue_notify(self, job_id: str) -> None:
        self.notifies.append(job_id)

    def drain(self, engine: Engine, limit: int = 100_000) -> int:
        """Run queued steps inline until none are left; returns how many ran."""
        ran = 0
        while self.steps and ran < limit:
            step = self.steps.pop(0)
            engine.run_step(step[0], step[1], step.lane)
            ran += 1
        return ran


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def wait_terminal(engine: Engine, job_id: str, timeout: float = 30.0) -> Any:
    return wait_for(lambda: (s := engine.state(job_id)).status.terminal and s, timeout=timeout)


def worker_went_round(engine: Engine, timeout: float = 30.0) -> None:
    """Wait for proof that the test's worker had its chance to run anything already sent to it:
    a job started now runs to its end (its steps queue behind every earlier message). Use it
    instead of a fixed sleep before asserting that nothing (more) happened."""
    probe = engine.start("count", owner="went-round", params={"n": 1})
    assert wait_terminal(engine, probe, timeout=timeout).status.value == "completed"


class WorkerProcess:
    """A real ``celery worker`` subprocess on the test's prefix, that a test can kill.

    :param app: the module holding the Celery app (``celery -A app``).
    :param name: the start of the worker's node name; ``self.name`` is it plus a random tag, and
        the worker sees it as ``BFT_WORKER_NAME``.
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        app: str = "tests.workerapp",
        concurrency: int = 1,
        pool: str = "solo",
        name: str = "w",
        extra_env: dict[str, str] | None = None,
        stderr: str | None = None,
    ) -> None:
        import subprocess
        import sys
        import uuid

        self.name = f"{name}-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, **{k: str(v) for k, v in config.items()}}
        env["BATCHFLOW_GC_FREEZE"] = "true"  # as deployed (``extra_env`` may turn it off)
        env.update(extra_env or {})
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env["BFT_WORKER_NAME"] = self.name
        command = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool]
        command += ["-c", str(concurrency), "-Q", config["BATCHFLOW_QUEUE"]]
        command += [
            "-n",
            f"{self.name}@%h",
            "--loglevel",
            os.environ.get("BFT_LOGLEVEL", "WARNING"),
        ]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        # ``stderr``: a file that receives the worker's log (its own file, closed here).
        with open(stderr, "ab") if stderr else contextlib.nullcontext() as errors:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=env, start_new_session=True, stderr=errors
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int | None = None) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig or signal.SIGKILL)
        if sig in (None, signal.SIGKILL):
            self.proc.wait(10)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except Exception:  # noqa: BLE001
                self.kill()


ALICE = {"X-Test-User": "alice"}


def web_start(client: Any, handler: str, body: dict[str, Any]) -> Any:
    """Start a job through a Flask test client as alice, the way a page does (CSRF token, JSON)."""
    page = client.get(f"/jobs/start/{handler}", headers=ALICE)
    assert page.status_code == 200
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    return client.post(f"/jobs/start/{handler}", json=body, headers={**ALICE, "X-CSRFToken": csrf})


def web_status(client: Any, job_id: str) -> Any:
    return client.get(f"/jobs/{job_id}/status", headers={**ALICE, "Accept": "application/json"})


class RedisServer:
    """A redis-server of the test's own on a free port, stopped by its pid (never 6379)."""

    def __init__(self, directory: str, *, appendonly: bool) -> None:
        self.dir = directory
        self.appendonly = appendonly
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert self.port != 6379
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                self.dir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), timeout=15)
        client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - still starting
        return False
