"""Load: a thousand jobs on real worker processes, and hundreds of HTTP clients on a real server.

Every test here is bounded in time and marked ``slow``. Run ``pytest -s -m slow tests/test_load.py``
to see the numbers they print (memory per finished job, Redis round trips per poll, latencies);
the same numbers are in their assertion messages.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import http.client
import json
import random
import re
import socket
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import redis
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from batchflow import BatchFlow, Status
from batchflow.config import Settings
from batchflow.engine import CLEANUP_GRACE, Engine
from batchflow.schema import Signal
from batchflow.store import Store
from batchflow.tasks import make_celery
from tests.handlers import REDIS_URL
from tests.helpers import WorkerProcess, broker_options, make_config, wait_for, wait_terminal
from tests.load_handlers import FAILING, make_load_registry
from tests.webapp import create_app

JOBS = 1000
ITEMS = 100


def LoadWorker(config: dict[str, Any], *, name: str = "load") -> WorkerProcess:  # noqa: N802
    """A worker subprocess running ``tests.load_handlers`` (the suite's handlers plus ``light``)."""
    return WorkerProcess(config, app="tests.load_handlers", name=name)


@contextlib.contextmanager
def load_engine(config: dict[str, Any]) -> Iterator[Engine]:
    """The test process's engine on ``config``, enqueueing on the real broker of its prefix."""
    settings = Settings.from_mapping(config)
    engine = Engine(
        settings, Store.from_url(settings.redis_url, settings.key_prefix), make_load_registry()
    )
    celery = make_celery(engine, config=broker_options(settings.key_prefix))
    try:
        yield engine
    finally:
        celery.close()


# -- Redis memory of a finished job ---------------------------------------------------------------

PARTS = ("job", "items", "results", "errors", "undo_errors", "messages", "lanes", "meter")


def job_memory(client: redis.Redis, engine: Engine, job_ids: list[str]) -> list[dict[str, int]]:
    """Bytes per key of each job (``MEMORY USAGE key SAMPLES 0``: every element counted), by
    the part of the job the key holds (Keys.all_of); keys that do not exist count 0."""
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            for key in engine.store.keys.all_of(job_id):
                pipe.memory_usage(key, samples=0)
        sizes = pipe.execute()
    width = len(PARTS)
    assert len(engine.store.keys.all_of(job_ids[0])) == width, "Keys.all_of changed; update PARTS"
    return [
        {
            part: int(size or 0)
            for part, size in zip(PARTS, sizes[i * width : (i + 1) * width], strict=True)
        }
        for i in range(len(job_ids))
    ]


def _ttls(client: redis.Redis, engine: Engine, job_id: str) -> dict[str, int]:
    keys = engine.store.keys.all_of(job_id)
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.ttl(key)
        return {part: ttl for part, ttl in zip(PARTS, pipe.execute(), strict=True) if ttl != -2}


# -- 1. a thousand jobs at once -------------------------------------------------------------------


@pytest.mark.slow
def test_a_thousand_item_jobs_at_once_on_two_worker_processes(
    redis_client: redis.Redis, prefix: str, files_dir: str
) -> None:
    """1,000 item jobs of 100 ids each (``light``), all started before two worker processes
    (solo pool) can drain them: the steps of all the jobs interleave in one queue.

    Proves: exact counters for every job (good + bad + skipped == processed == total == 100, the
    bad ones exactly its failing ids, with their errors); no state crosses between jobs (job
    *n*'s ids are ``j<n>-...``, and its side effects go to a hash named after it, which must hold
    exactly its good ids, each changed once; its errors name only its own ids; one such hash per
    job and no other); every job's id list is gone once it ends; and the Redis memory each
    finished job keeps, by number of failures, is printed and must be the same for jobs of the
    same shape and grow with failures (the next test bounds it: O(1) + O(failures)).
    """
    # Steps of 50 ids: three steps per job (create, 50, 50), so 3,000 steps interleave, and the
    # run fits its time on two shared cores. Maintenance at its default interval rather than the
    # suite's 0.5 s: a pass costs two Redis round trips per active job, here a thousand.
    # A hundred active jobs per owner: no per-owner limit (test_limits.py tests it).
    config = make_config(
        prefix,
        files_dir,
        BATCHFLOW_BATCH_INITIAL=50,
        BATCHFLOW_MAINTENANCE_INTERVAL=5.0,
        BATCHFLOW_MAX_ACTIVE_JOBS=0,
    )
    expected: dict[str, tuple[int, list[str], list[str]]] = {}

    def start(n: int) -> None:
        failing = n % 5  # 0 to 4 failing ids per job, spread through the list
        ids = [
            f"{FAILING}j{n}-{i}" if i % 25 == 3 and i // 25 < failing else f"j{n}-{i}"
            for i in range(ITEMS)
        ]
        job_id = engine.start(
            "light", owner=f"u{n % 10}", ids=ids, params={"prefix": prefix, "mark": f"j{n}"}
        )
        bad = [i for i in ids if i.startswith(FAILING)]
        expected[job_id] = (n, [i for i in ids if i not in bad], bad)

    with load_engine(config) as engine:
        workers = [LoadWorker(config, name=f"w{i}") for i in range(2)]
        try:
            began = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(start, range(JOBS)))
            enqueued = time.monotonic() - began
            active = engine.store.keys.active
            wait_for(lambda: redis_client.zcard(active) == 0, timeout=75, interval=0.25)
            elapsed = time.monotonic() - began
        finally:
            for w in workers:
                w.stop()

    job_ids = list(expected)
    keys = engine.store.keys
    with redis_client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            n = expected[job_id][0]
            pipe.hgetall(keys.job(job_id))
            pipe.exists(keys.results(job_id))
            pipe.hgetall(keys.errors(job_id))
            pipe.hgetall(f"{prefix}:marked:j{n}")
            pipe.exists(keys.items(job_id))
        replies = pipe.execute()
    problems: list[str] = []
    steps = recoveries = 0
    for index, job_id in enumerate(job_ids):
        n, good, bad = expected[job_id]
        fields, results, errors, marked, items_left = replies[index * 5 : index * 5 + 5]
        counts = {k: int(fields.get(k) or 0) for k in ("processed", "good", "bad", "skipped")}
        steps += int(fields.get("seq") or 0)
        recoveries += int(fields.get("recoveries") or 0)
        if fields.get("status") != Status.COMPLETED.value:
            problems.append(f"job {n}: status {fields.get('status')} ({fields.get('error')})")
            continue
        if fields.get("total") != str(ITEMS) or counts != {
            "processed": ITEMS,
            "good": len(good),
            "bad": len(bad),
            "skipped": 0,
        }:
            problems.append(f"job {n}: total {fields.get('total')}, counts {counts}")
        if counts["good"] + counts["bad"] + counts["skipped"] != int(fields.get("total") or -1):
            problems.append(f"job {n}: good + bad + skipped != total ({counts})")
        if marked != dict.fromkeys(good, "1"):
            strays = sorted(set(marked) - set(good))[:3]
            problems.append(f"job {n}: side effects on {len(marked)} ids, strays {strays}")
        if errors != {i: f"cannot process {i}" for i in bad}:
            problems.append(f"job {n}: errors {sorted(errors)[:3]}, expected {bad[:3]}")
        if results or items_left:
            problems.append(f"job {n}: results kept {results}, id list kept {items_left}")
    assert not problems, f"{len(problems)} of {JOBS} jobs wrong, e.g. {problems[:10]}"
    hashes = sum(1 for _ in redis_client.scan_iter(match=f"{prefix}:marked:*", count=1000))
    assert hashes == JOBS, f"{hashes} side-effect hashes, expected one per job ({JOBS})"

    memory = job_memory(redis_client, engine, job_ids)
    by_failures: dict[int, list[int]] = defaultdict(list)
    for job_id, parts in zip(job_ids, memory, strict=True):
        by_failures[len(expected[job_id][2])].append(sum(parts.values()))
    report = (
        f"{JOBS} jobs x {ITEMS} ids: started in {enqueued:.1f} s, all finished {elapsed:.1f} s "
        f"after the first start ({JOBS * ITEMS / elapsed:.0f} ids/s, {steps / elapsed:.0f} "
        f"steps/s, {steps} steps, {recoveries} recovered); Redis memory per finished job: "
        + ", ".join(
            f"{k} failed {statistics.mean(v):.0f} B (min {min(v)}, max {max(v)})"
            for k, v in sorted(by_failures.items())
        )
    )
    print(f"\n[load] {report}")
    means = [statistics.mean(by_failures[k]) for k in sorted(by_failures)]
    assert means == sorted(means) and means[0] < means[-1], f"memory vs failures: {report}"
    for group in by_failures.values():
        # Same shape, same footprint (ids differ in length by a few digits).
        assert max(group) - min(group) <= 256, report
    assert recoveries == 0, f"steps were recovered though no worker was lost: {report}"


# -- 1b. memory of a finished job: O(1) + O(failures) --------------------------------------------


def _ids(total: int, failing: int) -> list[str]:
    """``total`` ids of the same length; ``failing`` of them, evenly spread, fail in ``light``."""
    every = total // failing if failing else 0
    return [
        f"{FAILING}{i:06d}" if every and i % every == 0 and i // every < failing else f"ok{i:06d}"
        for i in range(total)
    ]


@pytest.mark.slow
def test_a_finished_jobs_redis_memory_is_constant_plus_its_failures(
    redis_client: redis.Redis, prefix: str, files_dir: str
) -> None:
    """A finished job keeps O(1) + O(failed ids) bytes in Redis, whatever its size.

    ``light`` keeps no per-id result, so its keys are the job hash, the error per failed id and
    the message log; the id list is deleted when the job ends. Measured with ``MEMORY USAGE key
    SAMPLES 0`` summed over ``Keys.all_of(job)``. A 100-id and a 10,000-id job without failures
    must use the same memory within 256 bytes; each failure must add a bounded, roughly constant
    amount. One ``archive`` job of 10,000 ids, which keeps a result per id, is reported beside
    them for scale (that part grows with the ids, by design: ``change`` returned a value).
    Every key a finished job keeps must expire (TTL at most ``BATCHFLOW_JOB_TTL`` + grace).
    """
    config = make_config(prefix, files_dir)
    shapes = [(100, 0), (10_000, 0), (100, 10), (10_000, 100), (10_000, 1_000), (10_000, 5_000)]
    jobs: dict[tuple[int, int], str] = {}
    with load_engine(config) as engine:
        worker = LoadWorker(config, name="mem")
        try:
            for total, failing in shapes:
                jobs[(total, failing)] = engine.start(
                    "light", owner="mem", ids=_ids(total, failing), params={"prefix": prefix}
                )
            archive = engine.start(
                "archive",
                owner="mem",
                ids=[f"a{i:06d}" for i in range(10_000)],
                params={"prefix": prefix},
            )
            states = {shape: wait_terminal(engine, job_id, 60) for shape, job_id in jobs.items()}
            archive_state = wait_terminal(engine, archive, 60)
        finally:
            worker.stop()

    for (total, failing), state in states.items():
        assert state.status is Status.COMPLETED, state.to_dict()
        assert (state.total, state.count("processed")) == (total, total)
        assert (state.count("good"), state.count("bad")) == (total - failing, failing)
        errors = dict(engine.store.iter_hash(state.id, "errors"))
        assert errors == {
            i: f"cannot process {i}" for i in _ids(total, failing) if i.startswith(FAILING)
        }
    assert archive_state.count("good") == 10_000

    order = list(jobs)
    measured = job_memory(redis_client, engine, [jobs[s] for s in order] + [archive])
    memory = {
        shape: sum(parts.values())
        for shape, parts in zip(order, measured[: len(order)], strict=True)
    }
    archive_parts = measured[-1]
    base_small, base_big = memory[(100, 0)], memory[(10_000, 0)]
    per_failure = {
        (total, k): (memory[(total, k)] - memory[(total, 0)]) / k for total, k in order if k
    }
    report = (
        "finished light job: "
        + ", ".join(f"{t} ids/{k} failed = {memory[(t, k)]} B" for t, k in order)
        + "; bytes per failure: "
        + ", ".join(f"{k} of {t}: {v:.0f}" for (t, k), v in per_failure.items())
        + f"; archive job of 10,000 ids with a result each: {sum(archive_parts.values())} B "
        f"(results {archive_parts['results']} B)"
    )
    print(f"\n[load] Redis memory: {report}")
    for t, k in order:
        parts = measured[order.index((t, k))]
        assert parts["items"] == 0 and parts["results"] == 0, (t, k, parts)
    assert abs(base_big - base_small) <= 256, report
    assert base_big < 8_192, report
    assert memory[(10_000, 100)] < memory[(10_000, 1_000)] < memory[(10_000, 5_000)], report
    for shape, cost in per_failure.items():
        assert 16 <= cost <= 256, f"{shape}: {cost:.0f} B per failure; {report}"
    ceiling = engine.settings.job_ttl + CLEANUP_GRACE
    for job_id in [*jobs.values(), archive]:
        ttls = _ttls(redis_client, engine, job_id)
        assert ttls and all(0 < ttl <= ceiling for ttl in ttls.values()), (job_id, ttls)


# -- 2. hundreds of clients polling and following ---------------------------------------------


class Meter:
    """What one request cost in Redis round trips, by kind."""

    __slots__ = ("kind", "commands", "setup", "health", "connects", "began", "seconds")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.began = time.perf_counter()
        self.seconds = 0.0  # from the app's call to the response's close, in the server
        self.commands = 0  # round trips the request's own code made
        self.setup = 0  # handshake round trips of connections opened during the request
        self.health = 0  # redis-py's health-check PINGs (idle connections, every 15 s at most)
        self.connects = 0


_metered = threading.local()


class CountingConnection(redis.Connection):
    """A redis-py connection that counts round trips for the request running on its thread.

    A round trip is one write of commands followed by reading their replies: it is counted at the
    first ``read_response`` after a ``send_packed_command``, so a pipeline of two commands is one
    round trip, and replies pushed by the server (pub/sub messages) are not counted at all.
    """

    _phase: str | None = None  # "setup" while connecting, "health" during a health check
    _sent: str | None = None  # what the last write was, until its first reply is read

    def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        if self._sock:
            return super().connect_check_health(*args, **kwargs)
        meter = getattr(_metered, "meter", None)
        if meter is not None:
            meter.connects += 1
        self._phase = "setup"
        try:
            return super().connect_check_health(*args, **kwargs)
        finally:
            self._phase = None

    def check_health(self) -> Any:
        before = self._phase
        self._phase = before or "health"
        try:
            return super().check_health()
        finally:
            self._phase = before

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        super().send_packed_command(command, check_health)
        self._sent = self._phase or "commands"

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        sent, self._sent = self._sent, None
        meter = getattr(_metered, "meter", None)
        if sent and meter is not None:
            setattr(meter, sent, getattr(meter, sent) + 1)
        return super().read_response(*args, **kwargs)


class Metering:
    """WSGI middleware: a :class:`Meter` on the thread for each request, kept until the server
    closes the response (an event stream's whole life), then recorded."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.records: list[Meter] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        kind = "poll" if path.endswith("/status") else "events" if path.endswith("/events") else ""
        meter = Meter(kind or "other")
        _metered.meter = meter
        try:
            body = self.app(environ, start_response)
        except BaseException:
            _metered.meter = None
            raise
        return _MeteredBody(body, meter, self.records)


class _MeteredBody:
    def __init__(self, body: Iterable[bytes], meter: Meter, records: list[Meter]) -> None:
        self.body, self.meter, self.records = body, meter, records

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            _metered.meter = None
            self.meter.seconds = time.perf_counter() - self.meter.began
            self.records.append(self.meter)


class QuietHandler(WSGIRequestHandler):
    """The dev server's handler without a log line per request (errors are still logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class LoadServer(ThreadedWSGIServer):
    """Werkzeug's threaded server (what ``make_server(threaded=True)`` builds) with a listen
    backlog for hundreds of clients: with the default 128, connections that arrive while the
    accepting thread waits for the GIL are dropped and retried a second or more later."""

    request_queue_size = 1024


def _start_over_http(address: tuple[str, int], user: str, body: dict[str, Any]) -> str:
    """Start a ``count`` job as ``user`` the way a page does: CSRF token, then a JSON POST."""
    conn = http.client.HTTPConnection(*address, timeout=20)
    try:
        conn.request("GET", "/jobs/start/count", headers={"X-Test-User": user})
        page = conn.getresponse()
        html = page.read().decode()
        assert page.status == 200, html
        match = re.search(r'name="csrf-token" content="([^"]+)"', html)
        assert match, "no CSRF token on the start page"
        cookie = (page.getheader("Set-Cookie") or "").split(";", 1)[0]
        conn.request(
            "POST",
            "/jobs/start/count",
            body=json.dumps(body),
            headers={
                "X-Test-User": user,
                "X-CSRFToken": match.group(1),
                "Cookie": cookie,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        started = conn.getresponse()
        data = json.loads(started.read())
        assert started.status == 202, data
        return str(data["id"])
    finally:
        conn.close()


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclasses.dataclass
class WebLoad:
    """What one run of :func:`web_load` saw."""

    window: float
    pollers: int
    baseline: list[float]
    latencies: list[float]
    errors: list[str]
    streams: list[list[dict[str, Any]]]
    meters: list[Meter]
    finals: dict[str, Any]
    stuck: int

    def polls(self) -> list[Meter]:
        """The meters of the polls under load (the unloaded baseline's come first)."""
        return [m for m in self.meters if m.kind == "poll"][len(self.baseline) :]

    def report(self) -> str:
        polls, streams = self.polls(), self.streams
        inside = [m.seconds for m in polls]
        trips = Counter(m.commands for m in polls)
        stream_trips = [m.commands for m in self.meters if m.kind == "events"]
        n = len(self.latencies)
        latency = (
            f"latency p50 {_percentile(self.latencies, 50) * 1000:.1f} ms, p99 "
            f"{_percentile(self.latencies, 99) * 1000:.1f} ms, max "
            f"{max(self.latencies) * 1000:.1f} ms (in the app: p50 "
            f"{_percentile(inside, 50) * 1000:.1f} ms, p99 {_percentile(inside, 99) * 1000:.1f} "
            f"ms; one client alone before the load: p50 "
            f"{_percentile(self.baseline, 50) * 1000:.1f} ms)"
            if n > 1 and len(inside) > 1
            else "no latencies"
        )
        return (
            f"{n} polls in {self.window:.0f} s ({n / self.window:.0f}/s, "
            f"{n / max(1, self.pollers) / self.window:.1f}/s per poller), {latency}; Redis round "
            f"trips per poll {dict(sorted(trips.items()))}, plus "
            f"{sum(m.connects for m in polls)} pool connections opened "
            f"({sum(m.setup for m in polls)} handshake round trips) and "
            f"{sum(m.health for m in polls)} health-check PINGs; {len(streams)} streams, "
            f"{sum(map(len, streams))} events ({min(map(len, streams), default=0)} to "
            f"{max(map(len, streams), default=0)} per stream), "
            f"{statistics.mean(stream_trips) if stream_trips else 0:.1f} round trips per "
            f"stream; {len(self.errors)} errors, {self.stuck} clients stuck"
        )


def web_load(
    prefix: str,
    files_dir: str,
    *,
    pollers: int,
    followers: int,
    window: float,
    units: int,
    sleep: float,
    config: dict[str, Any],
) -> WebLoad:
    """Serve ``tests.webapp`` with Werkzeug's threaded server on a real socket, run a worker
    subprocess, start one ``count`` job per user over HTTP (CSRF token, JSON POST), then run
    ``pollers`` clients polling ``/status`` every 0.2 s and ``followers`` clients reading
    ``/events`` to the end, spread over the jobs. The jobs are paused from their start until every
    follower has its first event, then run while the pollers go on for ``window`` seconds more
    (and at least three polls each).
    Ten polls by one client alone come first, as a baseline. Everything is stopped before it
    returns; nothing is asserted here."""
    interval, min_polls = 0.2, 3
    users = ["alice", "bob", "carol", "dave"]
    app = create_app(prefix, files_dir, **config)
    state = BatchFlow.state(app)
    state.engine.store.client.connection_pool.connection_class = CountingConnection
    metering = Metering(app.wsgi_app)
    app.wsgi_app = metering  # type: ignore[method-assign]
    worker = WorkerProcess(
        make_config(prefix, files_dir, **config), pool="threads", concurrency=4, name="web"
    )
    server = LoadServer("127.0.0.1", 0, app, QuietHandler)
    address = ("127.0.0.1", server.server_port)
    serving = threading.Thread(target=server.serve_forever, name="load-server", daemon=True)
    serving.start()
    stop = threading.Event()
    errors: list[str] = []
    baseline: list[float] = []
    latencies: list[float] = []
    streams: list[list[dict[str, Any]]] = []
    clients: list[threading.Thread] = []
    connections: list[http.client.HTTPConnection] = []

    def poll(
        job_id: str, user: str, latencies: list[float] = latencies, at_least: int = min_polls
    ) -> None:
        conn = http.client.HTTPConnection(*address, timeout=30)
        connections.append(conn)
        last, done = -1, 0
        due = time.monotonic() + random.uniform(0, interval)
        try:
            # Until the window ends, and `at_least` times however slow the server is.
            while not stop.is_set() or done < at_least:
                if time.monotonic() > hard_stop:
                    errors.append(f"poller: only {done} polls answered before the deadline")
                    return
                time.sleep(max(0.0, due - time.monotonic()))
                began = time.perf_counter()
                conn.request(
                    "GET",
                    f"/jobs/{job_id}/status",
                    headers={"X-Test-User": user, "Accept": "application/json"},
                )
                response = conn.getresponse()
                raw = response.read()
                latencies.append(time.perf_counter() - began)
                if response.status != 200:
                    errors.append(f"poll {response.status}: {raw[:300]!r}")
                    return
                body = json.loads(raw)
                if body["id"] != job_id or body["processed"] < last:
                    errors.append(f"poll of {job_id}: id {body['id']}, {last} -> {body}")
                    return
                last, done = body["processed"], done + 1
                due = max(due + interval, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
            errors.append(f"poller: {exc!r}")
        finally:
            conn.close()

    def follow(job_id: str, user: str) -> None:
        conn = http.client.HTTPConnection(*address, timeout=30)
        connections.append(conn)
        events: list[dict[str, Any]] = []
        streams.append(events)
        try:
            conn.request("GET", f"/jobs/{job_id}/events", headers={"X-Test-User": user})
            response = conn.getresponse()
            kind = response.getheader("Content-Type", "")
            if response.status != 200 or not kind.startswith("text/event-stream"):
                errors.append(f"events {response.status} {kind}: {response.read()[:300]!r}")
                return
            while line := response.readline():
                text = line.decode().rstrip("\r\n")
                if text.startswith("data: "):
                    event = json.loads(text[6:])
                    if event.get("id") != job_id or event.get("owner") != user:
                        errors.append(f"stream of {job_id} got {event.get('id')}")
                        return
                    events.append(event)
        except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
            errors.append(f"follower: {exc!r}")
        finally:
            conn.close()

    finals: dict[str, Any] = {}
    stuck, elapsed = 0, window
    try:
        warmup = state.engine.start("count", owner="warmup", params={"n": 1})
        wait_terminal(state.engine, warmup, timeout=30)  # the worker is up
        jobs = {
            user: _start_over_http(address, user, {"params": {"n": units, "sleep": sleep}})
            for user in users
        }
        for job_id in jobs.values():
            state.engine.signal(job_id, Signal.PAUSE)
        # One client alone first, for scale: ten polls with nothing else going on.
        hard_stop = time.monotonic() + 30
        stop.set()
        poll(jobs[users[0]], users[0], baseline, 10)
        stop.clear()
        began = time.monotonic()
        hard_stop = began + window + 40
        for i in range(max(pollers, followers)):
            user = users[i % len(users)]
            for target, count in ((poll, pollers), (follow, followers)):
                if i < count:
                    thread = threading.Thread(target=target, args=(jobs[user], user), daemon=True)
                    clients.append(thread)
                    thread.start()
            time.sleep(1.0 / max(pollers, followers))  # ramp up over a second
        # The jobs wait, paused, until every follower has its first event: on a loaded 2-core
        # machine starting 400 client threads and answering them can take longer than a job.
        try:
            wait_for(lambda: len(streams) == followers and all(streams), timeout=30)
        except AssertionError:
            errors.append(f"only {sum(map(bool, streams))} of {followers} streams began")
        for job_id in jobs.values():
            state.engine.signal(job_id, Signal.RESUME)
        time.sleep(window)
        stop.set()
        elapsed = time.monotonic() - began
        for thread in clients:
            thread.join(max(0.1, hard_stop + 5 - time.monotonic()))
        stuck = sum(t.is_alive() for t in clients)
        finals = {user: wait_terminal(state.engine, job_id, 30) for user, job_id in jobs.items()}
        # The server records a request's meter as it closes the response, just after the client
        # has read it.
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: (
                    len([m for m in metering.records if m.kind == "poll"])
                    >= len(baseline) + len(latencies)
                ),
                timeout=5,
            )
    finally:
        stop.set()
        for conn in connections:  # unblocks any client still reading, when the test failed
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in clients:
            thread.join(5)
        server.shutdown()
        server.server_close()
        serving.join(10)
        worker.stop()
    return WebLoad(
        elapsed, pollers, baseline, latencies, errors, streams, metering.records, finals, stuck
    )


@pytest.mark.slow
def test_two_hundred_pollers_and_two_hundred_event_streams(prefix: str, files_dir: str) -> None:
    """200 clients poll ``/jobs/<id>/status`` every 0.2 s (for 5 s after every stream began, and
    at least three times each) and 200 follow ``/jobs/<id>/events`` to the end, all at once, on
    four running jobs of four users, through Werkzeug's threaded server (a real socket) in this
    process and a worker subprocess.

    Proves: no errors under that load (every poll answers 200 with the job's JSON for the
    poller's job, and each poller's ``processed`` never goes back; every event is JSON for the
    follower's own job and owner, ``processed`` goes up over each stream, and every stream ends
    with the job's terminal event, once, with ``processed`` never going back on the way), and that
    a poll costs one Redis round trip.

    How round trips are measured: the app's Store client gets a connection class
    (:class:`CountingConnection`) that counts, for the request running on its thread, each write
    of commands whose reply is then read: one round trip, however many commands it pipelines. A
    WSGI middleware (:class:`Metering`) opens a meter per request and records it when the server
    closes the response. Opening a pool connection (redis-py's handshake) and redis-py's
    health-check PING on a connection idle for 15 s are counted apart: they are the pool's
    housekeeping, not the endpoint's, and are reported. Every poll must cost exactly one round
    trip of its own (at most one; and at least one shows the counter was in the path).

    The app runs with its default Redis settings: all event streams of a process share one
    subscription (Store.events), so 200 streams do not need 200 connections.

    Prints the p50/p99 latency of the polls as the clients saw them (no timed assertion).
    """
    pollers, followers, units = 200, 200, 500
    run = web_load(
        prefix,
        files_dir,
        pollers=pollers,
        followers=followers,
        window=5.0,
        units=units,
        # About 5 s of work per job once every stream has begun (web_load holds them paused
        # until then), in steps of about 0.5 s.
        sleep=0.01,
        config={
            "BATCHFLOW_REDIS_URL": REDIS_URL,
            "BATCHFLOW_STEP_TARGET": 0.5,
            # 50 streams per user here: this test measures load, not the per-user cap.
            "BATCHFLOW_STREAMS_PER_USER": followers,
        },
    )
    report = run.report()
    print(f"\n[load] web: {report}")
    assert not run.errors, f"{run.errors[:10]}; {report}"
    assert run.stuck == 0, report
    for user, final in run.finals.items():
        assert final.status is Status.COMPLETED and final.count("processed") == units, user
    polls = run.polls()
    assert len(polls) == len(run.latencies) >= pollers * 3, report
    assert {m.commands for m in polls} == {1}, f"a poll must cost one Redis round trip; {report}"
    assert len(run.streams) == followers, report
    went_back = []
    for events in run.streams:
        assert events and not events[0]["terminal"], f"a stream began after its job; {report}"
        processed = [e["processed"] for e in events]
        assert processed[-1] > processed[0], f"no progress seen: {processed}; {report}"
        assert events[-1]["status"] == Status.COMPLETED.value, events[-1]
        assert events[-1]["processed"] == units and events[-1]["terminal"], events[-1]
        assert not any(e["terminal"] for e in events[:-1]), "events after the terminal one"
        if processed != sorted(processed):
            went_back.append(processed)
    assert not went_back, f"{len(went_back)} streams went back, e.g. {went_back[0][:6]}"


@pytest.mark.slow
def test_more_event_streams_than_the_default_redis_pool(prefix: str, files_dir: str) -> None:
    """120 followers and 20 pollers on one job with the app's default Redis settings: every
    request must be answered and every stream must reach the terminal event."""
    run = web_load(
        prefix,
        files_dir,
        pollers=20,
        followers=120,
        window=3.0,
        units=100,
        sleep=0.03,  # 3 s once every stream is open
        config={"BATCHFLOW_STREAMS_PER_USER": 120},  # the pool is under test, not the cap
    )
    report = run.report()
    print(f"\n[load] web, default pool: {report}; first errors: {run.errors[:2]}")
    assert not run.errors, f"{run.errors[:3]}; {report}"
    assert all(events and events[-1]["terminal"] for events in run.streams), report


@pytest.mark.slow
def test_a_follower_never_goes_back_when_commits_land_as_it_starts(
    engine: Engine, manual: Any
) -> None:
    """The load test's out-of-order streams, made deterministic: two commits land between a
    follower's first state and its next read. It must then see them in order, without a
    keep-alive (there was no silence)."""
    job_id = engine.start("count", owner="a", params={"n": 100})
    manual.drain(engine, limit=1)  # the create step
    follower = engine.follow(job_id, keepalive=5.0)
    try:
        first = next(follower)
        manual.drain(engine, limit=2)  # two commits, each publishing an event
        began = time.monotonic()
        following = [next(follower), next(follower)]
        waited = time.monotonic() - began
    finally:
        follower.close()
    seen = [first.count("processed")] + [s.count("processed") if s else None for s in following]
    assert None not in seen, f"a keep-alive after {waited:.3f} s, though events were queued: {seen}"
    assert seen == sorted(seen) and len(set(seen)) == 3, seen
