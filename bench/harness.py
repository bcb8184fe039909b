"""What every benchmark needs: an isolated key prefix on the shared Redis, the engine and Celery app
of the benchmark process, worker subprocesses that are always stopped, and Redis command counts.

Isolation: every key a run makes (batchflow's, Celery's broker keys, RQ's, the peers' counters)
starts with ``bench-<random>:``; at the end only those keys are deleted (SCAN MATCH + UNLINK).
The Redis is never flushed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from batchflow.config import Settings  # noqa: E402
from batchflow.engine import Engine  # noqa: E402
from batchflow.store import Store  # noqa: E402
from batchflow.tasks import make_celery  # noqa: E402
from bench.handlers import REDIS_URL, make_registry  # noqa: E402
from bench.peers import PING_TASK  # noqa: E402

#: Every process this run started, so that they are stopped however the run ends.
_PROCESSES: list[subprocess.Popen[bytes]] = []


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def stop_all_processes() -> None:
    while _PROCESSES:
        _stop_process(_PROCESSES.pop())


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP unwind like Ctrl-C, so that workers and keys are cleaned up
    (SIGINT too, for runs started where it was ignored, as in a background job)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.01, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Worker:
    """A real ``celery worker`` subprocess (solo pool, unless told) on the run's prefix and queue.

    Each worker also listens on a private queue, so that a readiness ping reaches that worker.
    ``settings`` are more ``BATCHFLOW_*`` values for this worker only, on top of the run's; the
    worker consumes the queue they name (``BATCHFLOW_QUEUE``, the run's queue unless set).
    """

    def __init__(
        self,
        ctx: Context,
        name: str,
        settings: Mapping[str, Any] | None = None,
        pool: str = "solo",
        concurrency: int = 1,
    ) -> None:
        self.ctx = ctx
        self.name = f"{name}-{uuid.uuid4().hex[:6]}"
        self.private_queue = f"{ctx.queue}.{self.name}"
        self.log_path = os.path.join(ctx.tmp, f"{self.name}.log")
        self.settings = dict(settings or {})
        config = {**ctx.config, **self.settings}
        self.queue = str(config["BATCHFLOW_QUEUE"])
        env = {**os.environ, **{k: str(v) for k, v in config.items()}}
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.workerapp",
                    "worker",
                    "-P",
                    pool,
                    "-c",
                    str(concurrency),
                    "-Q",
                    f"{self.queue},{self.private_queue}",
                    "-n",
                    f"{self.name}@%h",
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _PROCESSES.append(self.proc)

    def wait_ready(self, timeout: float = 60.0) -> None:
        key = f"{self.ctx.prefix}:ready:{self.name}"
        self.ctx.app.send_task(PING_TASK, args=(key,), queue=self.private_queue)
        try:
            wait_for(
                lambda: self.ctx.r.exists(key) or self.proc.poll() is not None,
                timeout,
                0.02,
                f"worker {self.name}",
            )
        except TimeoutError:
            raise RuntimeError(
                f"worker {self.name} did not start; log:\n{self.log_tail()}"
            ) from None
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited; log:\n{self.log_tail()}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the worker process has used so far (Linux), else None."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def kill(self) -> float:
        """SIGKILL the worker's process group, as a crash (nothing runs after it); returns the
        time the signal was sent (``time.time()``)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        killed_at = time.time()
        self.proc.wait(10)
        return killed_at

    def stop(self) -> None:
        _stop_process(self.proc)
        with contextlib.suppress(ValueError):
            _PROCESSES.remove(self.proc)


class Context:
    """One benchmark run: its prefix, clients, the benchmark process's engine and Celery app."""

    def __init__(self, redis_url: str = REDIS_URL) -> None:
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self.queue = self.prefix
        self.tmp = tempfile.mkdtemp(prefix="batchflow-bench-")
        self.config: dict[str, Any] = {
            "BATCHFLOW_REDIS_URL": redis_url,
            "BATCHFLOW_KEY_PREFIX": self.prefix,
            "BATCHFLOW_QUEUE": self.queue,
            "BATCHFLOW_FILES_DIR": os.path.join(self.tmp, "files"),
            "BATCHFLOW_BENCH_REDIS_URL": redis_url,
            # Benchmarks run up to a hundred jobs of one owner at once.
            "BATCHFLOW_MAX_ACTIVE_JOBS": 0,
        }
        self.redis_url = redis_url
        self.r = redis.Redis.from_url(redis_url, decode_responses=True)
        self.r.ping()
        # The benchmark's waits poll on one connection of their own, so that MONITOR can leave
        # them out and command counts can subtract them.
        self.poll = redis.Redis.from_url(
            redis_url, decode_responses=True, single_connection_client=True
        )
        self.poll.ping()
        self.poll_port: int = self.poll.connection._sock.getsockname()[1]  # type: ignore[union-attr]
        self.polls: collections.Counter[str] = collections.Counter()
        self.settings = Settings.from_mapping(self.config)
        self.engine = Engine(self.settings, Store.from_url(redis_url, self.prefix), make_registry())
        self.app = make_celery(
            self.engine,
            main="batchflow-bench-client",
            config={"broker_transport_options": {"global_keyprefix": f"{self.prefix}:broker:"}},
        )
        self.workers: list[Worker] = []

    def polled(self, command: str, *args: Any) -> Any:
        """One polling command on the polling connection (counted)."""
        self.polls[command.lower()] += 1
        return self.poll.execute_command(command, *args)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, "bench", *parts))

    def start_worker(
        self,
        name: str,
        settings: Mapping[str, Any] | None = None,
        wait: bool = True,
        **pool: Any,
    ) -> Worker:
        """Start a worker (with ``settings`` on top of the run's; ``pool=``, ``concurrency=``
        for another pool than solo); without ``wait``, the caller calls ``wait_ready()`` later
        (several workers then start side by side)."""
        worker = Worker(self, name, settings, **pool)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def stop_worker(self, worker: Worker) -> None:
        worker.stop()
        self.workers.remove(worker)

    def close(self) -> None:
        """Stop the workers, then delete exactly this run's keys."""
        for worker in list(self.workers):
            with contextlib.suppress(Exception):
                worker.stop()
        self.workers.clear()
        stop_all_processes()
        with contextlib.suppress(Exception):
            self.app.close()
        delete_prefix(self.r, self.prefix)
        shutil.rmtree(self.tmp, ignore_errors=True)


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.unlink(*keys[i : i + 500])
    return len(keys)


def machine_cpu() -> tuple[int, int] | None:
    """(total, idle) jiffies of the whole machine from /proc/stat (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(values), values[3] + values[4]


def idle_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[0] == before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])


# -- statistics ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); with few samples p99 is the maximum."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


# -- Redis command counts -----------------------------------------------------------------------


def command_calls(client: redis.Redis) -> collections.Counter[str]:
    """Calls per command since the server started (``INFO commandstats``), Lua's included, and
    the server's microseconds per command under ``"usec:" + name``."""
    stats = client.info("commandstats")
    out: collections.Counter[str] = collections.Counter()
    for name, v in stats.items():
        out[name.removeprefix("cmdstat_")] = int(v["calls"])
        out["usec:" + name.removeprefix("cmdstat_")] = int(v["usec"])
    return out


def delta(after: collections.Counter[str], before: collections.Counter[str]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


class Monitor:
    """Counts the commands that name this run's prefix, by source (client or Lua script), using
    MONITOR. Keyless commands (MULTI, EXEC) are counted for the client connections that also
    sent prefixed commands. Commands from the benchmark's own polling connection are left out.
    """

    def __init__(self, redis_url: str, prefix: str, ignore_ports: set[int]) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.prefix = prefix
        self.ignore_ports = {str(p) for p in ignore_ports}
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._keyless: list[tuple[str, str]] = []
        self._clients: set[str] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._wake_key = f"{prefix}:monitor-wake"

    def _run(self) -> None:
        with self.client.monitor() as m:
            self._ready.set()
            for entry in m.listen():
                if entry.get("client_port") in self.ignore_ports:
                    continue
                command = entry["command"]
                name = command.split(" ", 1)[0].lower()
                if self._wake_key in command:
                    if self._stop.is_set():
                        return
                    continue
                source = "lua" if entry["client_type"] == "lua" else "client"
                address = f"{entry.get('client_address')}:{entry.get('client_port')}"
                if self.prefix in command:
                    self.counts[(source, name)] += 1
                    if source == "client":
                        self._clients.add(address)
                elif source == "client":
                    self._keyless.append((address, name))

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        while self._thread.is_alive():
            self.client.exists(self._wake_key)
            self._thread.join(0.2)
        for address, name in self._keyless:
            if address in self._clients:
                self.counts[("client", name)] += 1
