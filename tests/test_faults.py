"""batchflow under faults: real Redis, real Celery worker processes, real kills.

What is proved, for every fault below: every job that got an id reaches a terminal status within a
stated bound; every item ends with exactly one committed outcome; counters are exact; a step's side
effects repeat only for a step that was cut off; no step runs after an acknowledged stop except one
already in flight; the chain of steps never forks.

The proof is read from the outside: tests/fault_handlers.py records on the test Redis every handler
body that started (``ran``), every commit (``commits``), every run_step outcome and every enqueue,
and fires faults at exact points that a test arms. Every test uses its own key prefix and queue,
and stops the processes it started in ``finally`` (through the ``workers`` fixture).

Settings for the recovery bound: lease 2 s, queue timeout 3 s, maintenance every 0.25 s. A lost
step is re-run within ``lease + 2 * maintenance`` (2.5 s), a lost successor within ``queue timeout
+ 2 * maintenance`` (3.5 s), plus a claim; the tests allow RECOVERY_BOUND = 10 s. The lease stays
at 2 s: the tests assert that no step is recovered without a fault, and on a busy machine a
shorter lease lapses by itself. Where a test claims that nothing (more) happened, it waits for a
positive event that proves the system had the chance (a later job through the same worker,
maintenance run past every deadline, a lease seen lapsed), not for a fixed time.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from batchflow import Status
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.store import Store
from batchflow.tasks import make_celery
from tests.fault_handlers import FAULT_POINTS, fault_row, make_fault_registry
from tests.handlers import side
from tests.helpers import (
    ALICE,
    ListDispatcher,
    WorkerProcess,
    broker_options,
    make_config,
    wait_for,
    web_start,
    web_status,
    worker_went_round,
)

LEASE = 2.0
#: Workers say they are alive every WORKER_TTL / 4; silent for WORKER_TTL, their steps are taken.
WORKER_TTL = 1.0
QUEUE_TIMEOUT = 3.0
MAINTENANCE = 0.25
RECOVERY_BOUND = 10.0
MEASURED: list[str] = []
MEASURE_LOG = os.environ.get("BFT_MEASURE_LOG", "")


def measured(name: str, seconds: float) -> None:
    line = f"{name}: {seconds:.2f} s"
    MEASURED.append(line)
    print("RECOVERY", line)
    if MEASURE_LOG:
        with open(MEASURE_LOG, "a") as handle:
            handle.write(line + "\n")


# -- processes ---------------------------------------------------------------------------------


class FaultWorker(WorkerProcess):
    """A ``celery worker`` subprocess running tests/fault_workerapp.py on the test's prefix."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        pool: str = "solo",
        concurrency: int = 1,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            config,
            app="tests.fault_workerapp",
            pool=pool,
            concurrency=concurrency,
            name="fw",
            extra_env=extra_env,
        )
        self.prefix = config["BATCHFLOW_KEY_PREFIX"]

    def wait_ready(self, timeout: float = 30.0) -> FaultWorker:
        wait_for(
            lambda: (
                self.name in side.lrange(f"{self.prefix}:ready", 0, -1)
                or self.proc.poll() is not None
            ),
            timeout=timeout,
        )
        assert self.proc.poll() is None, f"worker {self.name} exited with {self.proc.returncode}"
        return self

    def children(self) -> set[int]:
        """The worker's child processes (its prefork pool), read from /proc."""
        pids: set[int] = set()
        with contextlib.suppress(FileNotFoundError):
            for task in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{task}/children") as handle:
                    pids.update(int(p) for p in handle.read().split())
        return pids

    def alive(self) -> bool:
        return self.proc.poll() is None


class Workers:
    """Starts fault workers for one test and kills every one of them at the end."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.started: list[FaultWorker] = []
        self.spawned: list[FaultWorker] = []  # started, not yet waited for

    def start(self, config: dict[str, Any] | None = None, **kwargs: Any) -> FaultWorker:
        """Start a worker and wait until it (and any spawned before it) is ready."""
        worker = self.spawn(config, **kwargs)
        self.wait_ready()
        return worker

    def spawn(self, config: dict[str, Any] | None = None, **kwargs: Any) -> FaultWorker:
        """Start a worker without waiting for it: workers spawned together start in parallel
        (about 0.6 s each); :meth:`wait_ready` waits for all of them."""
        worker = FaultWorker(config or self.config, **kwargs)
        self.started.append(worker)
        self.spawned.append(worker)
        return worker

    def wait_ready(self) -> None:
        while self.spawned:
            self.spawned.pop(0).wait_ready()

    def close(self) -> None:
        for worker in self.started:
            with contextlib.suppress(Exception):
                worker.kill()


# -- fixtures and helpers ----------------------------------------------------------------------


def fault_config(prefix: str, files_dir: str, **overrides: Any) -> dict[str, Any]:
    settings = {
        "BATCHFLOW_LEASE_SECONDS": LEASE,
        "BATCHFLOW_WORKER_TTL": WORKER_TTL,
        "BATCHFLOW_QUEUE_TIMEOUT": QUEUE_TIMEOUT,
        "BATCHFLOW_MAINTENANCE_INTERVAL": MAINTENANCE,
        "BATCHFLOW_BATCH_MAX": 500,
    }
    return make_config(prefix, files_dir, **{**settings, **overrides})


@pytest.fixture
def config(prefix: str, files_dir: str, broker: str) -> dict[str, Any]:
    return fault_config(prefix, files_dir, BATCHFLOW_BROKER_URL=broker)


def make_engine(config: dict[str, Any], prefix: str) -> Engine:
    """An engine in the test process that enqueues on the workers' broker (it runs no steps)."""
    settings = Settings.from_mapping(config)
    engine = Engine(
        settings, Store.from_url(settings.redis_url, settings.key_prefix), make_fault_registry()
    )
    make_celery(engine, config=broker_options(prefix))
    return engine


@pytest.fixture
def engine(config: dict[str, Any], prefix: str) -> Engine:
    return make_engine(config, prefix)


@pytest.fixture
def workers(config: dict[str, Any]) -> Iterator[Workers]:
    started = Workers(config)
    try:
        yield started
    finally:
        started.close()


class SharedWorker:
    """One solo fault worker on a key prefix of its own, shared by the tests of a module that need
    only a live worker and kill nothing (starting a worker costs about 0.6 s).

    Each test still starts from nothing: :meth:`reset`, after every test, disarms every fault
    point, stops whatever the test left running (releasing any step blocked at a gate), and deletes
    every key of the prefix but the broker's; a worker that does not come back to idle is killed,
    and :meth:`ensure` starts a new one for the next test.
    """

    def __init__(self, prefix: str, files_dir: str) -> None:
        self.prefix = prefix
        self.config = fault_config(prefix, files_dir)
        self.workers = Workers(self.config)
        self.worker: FaultWorker | None = None

    def ensure(self) -> FaultWorker:
        if self.worker is None or not self.worker.alive():
            self.worker = self.workers.start()
        return self.worker

    def reset(self) -> None:
        engine = make_engine(self.config, self.prefix)
        for key in side.scan_iter(match=f"{self.prefix}:fault:*"):
            side.delete(key)

        def idle() -> bool:
            left = [job.id for job in engine.store.active_jobs() if job.status]
            for job_id in left:
                with contextlib.suppress(Exception):
                    engine.signal(job_id, "stop")
            for point in FAULT_POINTS:
                side.rpush(f"{self.prefix}:gate:{point}", "go")
            return all(engine.state(job_id).status.terminal for job_id in left)

        try:
            wait_for(idle, timeout=30, interval=0.2)
        except AssertionError:
            if self.worker is not None:
                self.worker.kill()
        keep = (f"{self.prefix}:broker:", f"{self.prefix}:ready")
        stale = [k for k in side.scan_iter(match=f"{self.prefix}:*") if not k.startswith(keep)]
        for i in range(0, len(stale), 500):
            side.unlink(*stale[i : i + 500])

    def close(self) -> None:
        self.workers.close()
        stale = list(side.scan_iter(match=f"{self.prefix}:*"))
        for i in range(0, len(stale), 500):
            side.unlink(*stale[i : i + 500])


@pytest.fixture(scope="module")
def shared_worker(tmp_path_factory: Any) -> Iterator[SharedWorker]:
    shared = SharedWorker(f"bft-{uuid.uuid4().hex[:12]}", str(tmp_path_factory.mktemp("files")))
    try:
        yield shared
    finally:
        shared.close()


class OnASharedWorker:
    """Base of the test classes whose tests run on the module's :class:`SharedWorker`: their
    ``prefix`` and ``config`` are the shared worker's, and ``live_worker`` is that worker, ready."""

    @pytest.fixture
    def prefix(self, shared_worker: SharedWorker) -> str:
        return shared_worker.prefix

    @pytest.fixture
    def config(self, shared_worker: SharedWorker) -> dict[str, Any]:
        return shared_worker.config

    @pytest.fixture
    def live_worker(self, shared_worker: SharedWorker) -> Iterator[FaultWorker]:
        try:
            yield shared_worker.ensure()
        finally:
            shared_worker.reset()


def records(prefix: str, name: str, job_id: str | None = None) -> list[dict[str, Any]]:
    found = [json.loads(raw) for raw in side.lrange(f"{prefix}:{name}", 0, -1)]
    return [r for r in found if job_id is None or r.get("job") == job_id]


def arm(prefix: str, point: str, **spec: Any) -> None:
    side.delete(f"{prefix}:fault:{point}")
    side.hset(f"{prefix}:fault:{point}", mapping={k: str(v) for k, v in spec.items()})


def disarm(prefix: str, point: str) -> None:
    side.delete(f"{prefix}:fault:{point}")


def fired(prefix: str, point: str, count: int = 1, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait until ``point`` fired ``count`` times; its records."""
    wait_for(lambda: side.llen(f"{prefix}:fired:{point}") >= count, timeout=timeout)
    return records(prefix, f"fired:{point}")


def release(prefix: str, point: str, times: int = 1) -> None:
    for _ in range(times):
        side.rpush(f"{prefix}:gate:{point}", "go")


def terminal(engine: Engine, job_id: str, timeout: float = 60.0) -> Any:
    return wait_for(lambda: (s := engine.state(job_id)).status.terminal and s, timeout=timeout)


def maintain_past_every_deadline(engine: Engine) -> dict[str, int]:
    """Run maintenance now as if every lease and queue timeout had already passed; what it did."""
    return engine.maintain(time.time() + LEASE + QUEUE_TIMEOUT + 1, force=True)


def lease_lapsed(engine: Engine, job_id: str) -> bool:
    """The job's step lease has expired (the worker that held it is gone)."""
    return int(engine.state(job_id).fields["lease_until"]) < time.time() * 1000


def commit_time(prefix: str, job_id: str, seq: int) -> float:
    (commit,) = [c for c in records(prefix, "commits", job_id) if c["seq"] == seq]
    return float(commit["t"])


def assert_one_chain(prefix: str, job_id: str, state: Any, cut: set[int] = frozenset()) -> None:
    """The job's steps formed one chain: every seq committed exactly once and in order, the job's
    seq equals the number of commits, no step had two successors, and a handler body ran more
    than once only for a step in ``cut`` (a step that was cut off)."""
    # A worker records its commit just after COMMIT answers: the job may be seen ended first.
    seq = int(state.fields["seq"])
    wait_for(lambda: len(records(prefix, "commits", job_id)) >= seq, timeout=5)
    commits = records(prefix, "commits", job_id)
    seqs = [c["seq"] for c in commits]
    assert seqs == list(range(len(commits))), f"commits out of order or repeated: {seqs}"
    assert all(c["new_seq"] == c["seq"] + 1 for c in commits)
    assert int(state.fields["seq"]) == len(commits)
    successors = Counter(
        e["seq"] for e in records(prefix, "enqueued", job_id) if e["source"] == "successor"
    )
    assert all(n == 1 for n in successors.values()), f"a step had two successors: {successors}"
    bodies = Counter(r["seq"] for r in records(prefix, "ran", job_id))
    repeated = {seq for seq, n in bodies.items() if n > 1}
    assert repeated <= set(cut), f"steps ran twice without being cut off: {repeated - set(cut)}"
    assert all(n <= 2 for n in bodies.values()), bodies


def expected_report(rows: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "name", "email", "note"])
    for i in range(rows):
        writer.writerow([("'" + c) if c.startswith("=") else c for c in fault_row(i)])
    return out.getvalue().encode()


def uninterrupted_report(config: dict[str, Any], rows: int) -> bytes:
    """The output of the same FileJob run without any fault, steps driven by hand (its records
    go under a prefix of their own, where no fault is armed)."""
    settings = Settings.from_mapping(config)
    engine = Engine(
        settings, Store.from_url(settings.redis_url, settings.key_prefix), make_fault_registry()
    )
    engine.dispatcher = manual = ListDispatcher()
    reference_prefix = f"{config['BATCHFLOW_KEY_PREFIX']}:reference"
    job_id = engine.start(
        "f-report", owner="ref", params={"rows": rows, "prefix": reference_prefix}
    )
    manual.drain(engine)
    state = engine.state(job_id)
    assert state.status is Status.COMPLETED
    with open(state.fields["file_path"], "rb") as handle:
        data = handle.read()
    engine.cleanup(job_id)
    return data


def read_file(state: Any) -> bytes:
    with open(state.fields["file_path"], "rb") as handle:
        return handle.read()


# -- 1. SIGKILL mid-step -----------------------------------------------------------------------

ROWS = 20_000

# (pool, point, how): "self" = the process SIGKILLs itself at the point; "external" = the step
# blocks at the point and the test SIGKILLs it from outside (the pool child found through /proc,
# or the whole worker).
KILLS = [
    ("solo", "claimed", "self"),  # after the claim, before the handler
    ("solo", "written", "self"),  # rows written, before the commit
    ("solo", "commit", "self"),  # the handler returned; the commit was never sent
    ("solo", "enqueue", "self"),  # committed; the successor was never enqueued
    ("solo", "written", "external"),  # the whole worker (main process) killed from outside
    ("prefork", "written", "self"),  # a pool child dies mid-step; the main process lives on
    ("prefork", "enqueue", "self"),
    ("prefork", "written", "external"),  # the pool child, found in /proc, killed from outside
]


@pytest.mark.slow
@pytest.mark.parametrize(("pool", "point", "how"), KILLS, ids=["-".join(k) for k in KILLS])
def test_sigkill_mid_step_a_second_worker_finishes_the_file_exactly(
    engine, workers, config, prefix, pool, point, how
):
    reference = uninterrupted_report(config, ROWS)
    assert reference == expected_report(ROWS)
    victim = workers.spawn(pool=pool)
    rescuer = workers.start()
    children = victim.children() if pool == "prefork" else set()
    assert pool == "solo" or children, "a prefork worker has its pool child"
    spec = {"action": "kill" if how == "self" else "block", "left": 1, "min_seq": 3}
    arm(prefix, point, worker=victim.name, **spec)
    job_id = engine.start("f-report", owner="a", params={"rows": ROWS, "prefix": prefix})
    (hit,) = fired(prefix, point)
    if how == "external":
        if pool == "prefork":
            assert hit["pid"] in victim.children() and hit["pid"] != victim.pid
            os.kill(hit["pid"], signal.SIGKILL)
        else:
            assert hit["pid"] == victim.pid
            victim.kill()
        killed_at = time.time()
    else:
        killed_at = hit["t"]
    if pool == "solo":
        wait_for(lambda: not victim.alive(), timeout=10)
        assert victim.proc.returncode == -signal.SIGKILL
    else:
        assert hit["pid"] in children and hit["pid"] != victim.pid
        wait_for(lambda: not os.path.exists(f"/proc/{hit['pid']}/status") or _zombie(hit["pid"]))
    state = terminal(engine, job_id, timeout=90)
    d = state.to_dict()
    assert (d["status"], d["processed"], d["total"]) == ("completed", ROWS, ROWS)
    assert read_file(state) == reference  # byte-identical to the uninterrupted run
    cut_seq = hit["seq"]
    body_ran_in_cut = point in ("written", "commit")
    assert_one_chain(prefix, job_id, state, cut={cut_seq} if body_ran_in_cut else set())
    if point == "enqueue":
        # The commit landed; only the successor was lost, and maintenance re-sent it once the
        # committed deadline (commit + queue timeout) passed.
        assert int(state.fields["recoveries"]) == 0
        recovered_at = commit_time(prefix, job_id, cut_seq + 1)
        earliest = QUEUE_TIMEOUT
    else:
        # Nobody ran the step before its worker was known dead (a redelivery found it busy):
        # the worker said it was alive at most a quarter of WORKER_TTL before the kill.
        assert int(state.fields["recoveries"]) == 1
        recovered_at = commit_time(prefix, job_id, cut_seq)
        earliest = WORKER_TTL * 3 / 4
    elapsed = recovered_at - killed_at
    measured(f"sigkill {pool} {point} {how}", elapsed)
    assert earliest - 0.2 < elapsed < RECOVERY_BOUND
    assert rescuer.alive()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["written", "enqueue"])
@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_on_rabbitmq_a_killed_workers_step_runs_again_and_the_file_is_exact(
    engine, workers, config, prefix, point
):
    """RabbitMQ as the broker: a worker SIGKILLed mid-step (its message goes back to the queue
    as its connection closes, and is refused while the dead worker's lease holds; maintenance
    sends the step again) or between its commit and the next step's enqueue. RabbitMQ tends to
    hand a chain's steps to the worker that sent them, so the victim runs alone until it dies,
    and the rescuer starts after. Threads, not solo: see README, Deployment."""
    reference = uninterrupted_report(config, ROWS)
    victim = workers.start(pool="threads")
    arm(prefix, point, worker=victim.name, action="kill", left=1, min_seq=3)
    job_id = engine.start("f-report", owner="a", params={"rows": ROWS, "prefix": prefix})
    (hit,) = fired(prefix, point)
    wait_for(lambda: not victim.alive(), timeout=10)
    assert victim.proc.returncode == -signal.SIGKILL
    rescuer = workers.start(pool="threads")
    state = terminal(engine, job_id, timeout=90)
    assert (state.status, state.count("processed")) == (Status.COMPLETED, ROWS)
    assert read_file(state) == reference  # byte-identical to the uninterrupted run
    cut = hit["seq"]
    assert_one_chain(prefix, job_id, state, cut={cut} if point == "written" else set())
    # A step cut off mid-way is taken over by maintenance (a recovery) or, when the rescuer
    # gets the message RabbitMQ gave back after the dead worker's lease ran out, by the claim.
    assert int(state.fields["recoveries"]) <= (1 if point == "written" else 0)
    measured(f"sigkill {point} on RabbitMQ", commit_time(prefix, job_id, cut + 1) - hit["t"])
    assert rescuer.alive()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return "zombie" in handle.read()
    except (FileNotFoundError, ProcessLookupError):  # reaped, maybe between open and read
        return True


@pytest.mark.slow
def test_sigkill_mid_item_step_every_id_has_exactly_one_committed_outcome(engine, workers, prefix):
    ids = [f"i{n:05d}" for n in range(8_000)]
    # Two prefork workers: whichever runs the id loses its pool child; both live on.
    workers.spawn(pool="prefork")
    workers.start(pool="prefork")
    arm(prefix, "change", action="kill", left=1, item="i05678")
    job_id = engine.start("f-items", owner="a", ids=ids, params={"prefix": prefix})
    (hit,) = fired(prefix, "change")
    state = terminal(engine, job_id, timeout=90)
    d = state.to_dict()
    assert (d["status"], d["good"], d["bad"], d["skipped"]) == ("completed", 8_000, 0, 0)
    assert d["processed"] == d["total"] == 8_000
    results = dict(engine.store.iter_hash(job_id, "results"))
    assert set(results) == set(ids) and not dict(engine.store.iter_hash(job_id, "errors"))
    cut = hit["seq"]
    assert_one_chain(prefix, job_id, state, cut={cut})
    # Side effects repeated only inside the step that was cut off: a run of ids up to i05678.
    changed = {k: int(v) for k, v in side.hgetall(f"{prefix}:changed").items()}
    assert set(changed) == set(ids)
    twice = sorted(k for k, v in changed.items() if v == 2)
    assert max(changed.values()) <= 2
    if twice:
        first, last = ids.index(twice[0]), ids.index(twice[-1])
        assert twice == ids[first : last + 1] and last < ids.index("i05678")
    calls = {k: int(v) for k, v in side.hgetall(f"{prefix}:calls").items()}
    assert calls["i05678"] == 2 and sum(calls.values()) == 8_000 + len(twice) + 1
    measured("sigkill prefork child mid item", commit_time(prefix, job_id, cut) - hit["t"])
    measured("ids changed twice by that sigkill", len(twice))


@pytest.mark.slow
def test_sigkill_mid_lane_that_lane_alone_is_recovered_and_each_id_counted_once(
    engine, workers, prefix
):
    """A job in four lanes; the prefork child running lane 3 dies at one id. Maintenance takes
    that lane over alone (the other lanes go on), and only ids of the step cut off in lane 3
    run twice; the job completes once, every id with one committed outcome."""
    ids = [f"i{n:05d}" for n in range(4_000)]  # lane 3: i02000 to i02999
    workers.spawn(pool="prefork")
    workers.start(pool="prefork")
    arm(prefix, "change", action="kill", left=1, item="i02345")
    job_id = engine.start("f-lanes", owner="a", ids=ids, params={"prefix": prefix})
    fired(prefix, "change")
    state = terminal(engine, job_id, timeout=90)
    d = state.to_dict()
    assert (d["status"], d["good"], d["bad"], d["processed"]) == ("completed", 4_000, 0, 4_000)
    assert set(dict(engine.store.iter_hash(job_id, "results"))) == set(ids)
    assert state.fields["recoveries"] == "1"  # one lane's step, nothing else
    lanes = engine.store.lanes(job_id)
    assert {n: r["processed"] for n, r in lanes.items()} == dict.fromkeys(range(1, 5), "1000")
    changed = {k: int(v) for k, v in side.hgetall(f"{prefix}:changed").items()}
    assert set(changed) == set(ids) and max(changed.values()) <= 2
    twice = sorted(k for k, v in changed.items() if v == 2)
    if twice:  # a run of lane 3's ids just before the one that killed
        first, last = ids.index(twice[0]), ids.index(twice[-1])
        assert twice == ids[first : last + 1] and 2_000 <= first and last < ids.index("i02345")
    outcomes = [json.loads(r) for r in side.lrange(f"{prefix}:outcomes", 0, -1)]
    ended = [o for o in outcomes if o["job"] == job_id and o["outcome"] == "completed"]
    assert len(ended) == 1 and ended[0]["lane"] == 0  # the job ended once, in its own chain


@pytest.mark.slow
def test_a_sigkill_repeats_about_one_checkpoint_interval_of_work(workers, prefix, files_dir):
    """Ids that take 2 ms each, steps of 500 ids (about a second): a pool child killed 0.8 s
    into a step. The step's progress was committed every BATCHFLOW_CHECKPOINT_INTERVAL (0.1 s)
    while it ran, so the step run again repeats only the ids after the last checkpoint (without
    checkpoints: all 400 ids the step had changed, 0.8 s of work)."""
    # Steps of exactly 500 ids (about a second): the kill at i00900 comes 0.8 s into one.
    config = fault_config(prefix, files_dir, BATCHFLOW_BATCH_MIN=500, BATCHFLOW_BATCH_INITIAL=500)
    engine = make_engine(config, prefix)
    ids = [f"i{n:05d}" for n in range(1000)]
    workers.start(config, pool="prefork")
    arm(prefix, "change", action="kill", left=1, item="i00900")
    job_id = engine.start("f-items", owner="a", ids=ids, params={"prefix": prefix, "sleep": 0.002})
    fired(prefix, "change")
    state = terminal(engine, job_id, timeout=90)
    assert (state.count("good"), state.count("processed")) == (1000, 1000)
    changed = {k: int(v) for k, v in side.hgetall(f"{prefix}:changed").items()}
    assert set(changed) == set(ids) and max(changed.values()) <= 2
    repeated = sorted(k for k, v in changed.items() if v == 2)
    measured("work repeated by a sigkill mid step (2 ms ids)", len(repeated) * 0.002)
    assert len(repeated) * 0.002 <= 0.25, repeated  # about one checkpoint interval, not a step
    assert_one_chain(prefix, job_id, state, cut={records(prefix, "fired:change")[0]["seq"]})


#: Takeover at the default settings: a step whose worker died runs again within this.
DEFAULT_TAKEOVER_BOUND = 4.5


@pytest.mark.slow
@pytest.mark.parametrize("victim_kind", ["pool child", "whole worker"])
def test_at_the_default_settings_a_dead_workers_step_runs_again_in_seconds(
    workers, prefix, files_dir, victim_kind
):
    """With the default 30 s lease and maintenance interval, a step whose worker died is taken
    over once the worker stops saying it is alive (BATCHFLOW_WORKER_TTL, 2 s), not after the
    lease runs out; the file is still exact."""
    config = make_config(prefix, files_dir, BATCHFLOW_BATCH_MAX=500)
    del config["BATCHFLOW_LEASE_SECONDS"], config["BATCHFLOW_MAINTENANCE_INTERVAL"]
    assert Settings.from_mapping(config).lease_seconds == 30.0
    engine = make_engine(config, prefix)
    pool = "prefork" if victim_kind == "pool child" else "solo"
    victim = workers.start(config, pool=pool)
    arm(prefix, "written", action="block", left=1, min_seq=3, worker=victim.name)
    job_id = engine.start("f-report", owner="a", params={"rows": 5000, "prefix": prefix})
    (hit,) = fired(prefix, "written")  # alone, the victim runs every step up to the third
    workers.start(config)  # the worker that takes over; meanwhile the victim says it is alive
    if pool == "prefork":
        assert hit["pid"] in victim.children()
        os.kill(hit["pid"], signal.SIGKILL)
    else:
        victim.kill()
    killed_at = time.time()
    state = terminal(engine, job_id, timeout=60)
    assert read_file(state) == expected_report(5000)
    assert int(state.fields["recoveries"]) == 1
    elapsed = commit_time(prefix, job_id, hit["seq"]) - killed_at
    measured(f"takeover at default settings, {victim_kind} killed", elapsed)
    assert elapsed < DEFAULT_TAKEOVER_BOUND


# -- 2. The same step delivered twice ----------------------------------------------------------


def outcomes_of(prefix: str, job_id: str, seq: int) -> list[str]:
    return [o["outcome"] for o in records(prefix, "outcomes", job_id) if o["seq"] == seq]


def test_the_same_step_delivered_concurrently_and_back_to_back_commits_once(
    engine, workers, prefix
):
    workers.start(pool="threads", concurrency=4)
    arm(prefix, "step", action="block", left=1, min_seq=3)
    job_id = engine.start(
        "f-count", owner="a", params={"n": 8, "per_step": 1, "sleep": 0.05, "prefix": prefix}
    )
    (hit,) = fired(prefix, "step")
    seq = hit["seq"]
    assert seq == 3
    for _ in range(3):  # three more deliveries while the first holds the lease
        engine._dispatch().enqueue_step(job_id, seq)
    wait_for(lambda: outcomes_of(prefix, job_id, seq).count("busy") == 3)
    release(prefix, "step")
    wait_for(lambda: any(c["seq"] == seq for c in records(prefix, "commits", job_id)))
    for _ in range(2):  # and two after it committed
        engine._dispatch().enqueue_step(job_id, seq)
    wait_for(lambda: outcomes_of(prefix, job_id, seq).count("stale") == 2)
    state = terminal(engine, job_id)
    assert state.status is Status.COMPLETED and state.count("processed") == 8
    assert sorted(outcomes_of(prefix, job_id, seq)) == ["busy"] * 3 + ["running"] + ["stale"] * 2
    assert_one_chain(prefix, job_id, state)  # one body, one commit, one successor per step


@pytest.mark.slow
def test_redelivery_by_a_short_visibility_timeout_commits_each_step_once(engine, workers, prefix):
    env = {"BFT_VISIBILITY_TIMEOUT": "1"}
    workers.spawn(extra_env=env)
    workers.start(extra_env=env)
    # Each step takes 2.5 s: the broker hands every step's message out again while it runs.
    job_id = engine.start(
        "f-count", owner="a", params={"n": 3, "per_step": 1, "sleep": 2.5, "prefix": prefix}
    )
    state = terminal(engine, job_id, timeout=90)
    assert state.status is Status.COMPLETED and state.count("processed") == 3
    outcomes = Counter(o["outcome"] for o in records(prefix, "outcomes", job_id))
    assert outcomes["busy"] + outcomes["stale"] >= 2, outcomes  # redeliveries did happen
    assert_one_chain(prefix, job_id, state)
    assert int(state.fields["recoveries"]) == 0


# -- 3. A lost successor -----------------------------------------------------------------------


class RefusingDispatcher(ListDispatcher):
    """Enqueues into a list, or, once ``refuse`` is set, fails like a broker that is down."""

    refuse = False

    def enqueue_step(self, job_id: str, seq: int, countdown: float = 0.0, lane: int = 0) -> None:
        if self.refuse:
            raise ConnectionError("the broker is down")
        super().enqueue_step(job_id, seq, countdown, lane)


@pytest.mark.slow
def test_a_lost_successor_is_re_enqueued_from_the_committed_state(engine, workers, config, prefix):
    from tests.fault_handlers import instrument

    settings = Settings.from_mapping(config)
    local = Engine(settings, engine.store, make_fault_registry())
    local.dispatcher = dispatcher = RefusingDispatcher()
    instrument(local, prefix)
    ids = [str(n) for n in range(3000)]
    job_id = local.start("f-items", owner="a", ids=ids, params={"prefix": prefix})
    workers.start()
    dispatcher.refuse = True
    assert local.run_step(job_id, 0).status is Status.RUNNING  # committed; enqueueing failed
    lost_at = time.time()
    assert local.run_step(job_id, 1).status is Status.RUNNING  # a second step: still fenced
    state = terminal(engine, job_id, timeout=60)
    d = state.to_dict()
    assert (d["status"], d["good"], d["bad"], d["processed"]) == ("completed", 3000, 0, 3000)
    assert_one_chain(prefix, job_id, state)
    enqueued = records(prefix, "enqueued", job_id)
    resent = [e["seq"] for e in enqueued if e["source"] == "other" and e["seq"] > 0]
    assert resent[:1] == [2]  # maintenance re-sent the step after the last commit
    elapsed = commit_time(prefix, job_id, 2) - lost_at
    measured("lost successor", elapsed)
    assert QUEUE_TIMEOUT - 0.5 < elapsed < RECOVERY_BOUND
    changed = {k: int(v) for k, v in side.hgetall(f"{prefix}:changed").items()}
    assert changed == {i: 1 for i in ids}


@pytest.mark.slow
def test_a_stop_recorded_while_the_broker_is_down_is_still_obeyed(engine, workers, config, prefix):
    """Stopping a paused job enqueues its next step; with the broker down that fails, but the stop
    is recorded and maintenance sends the step once the queue timeout passed."""
    settings = Settings.from_mapping(config)
    local = Engine(settings, engine.store, make_fault_registry())
    local.dispatcher = dispatcher = RefusingDispatcher()
    job_id = local.start("f-fixed", owner="a", ids=IDS, params={"prefix": prefix})
    dispatcher.drain(local, limit=3)
    local.signal(job_id, "pause")
    dispatcher.drain(local, limit=1)
    assert local.state(job_id).status is Status.PAUSED and dispatcher.steps == []
    dispatcher.refuse = True
    asked = local.signal(job_id, "stop")  # recorded, although nothing could be enqueued
    assert asked.status is Status.STOPPING
    workers.start()
    state = terminal(engine, job_id, timeout=RECOVERY_BOUND + 5)
    d = state.to_dict()
    assert (d["status"], d["good"], d["skipped"]) == ("stopped", 20, 180)


# -- 4. Redis restarted mid-job ----------------------------------------------------------------


def web_client(prefix: str, files_dir: str, **config: Any) -> Any:
    from tests.webapp import create_app

    overrides = {
        "BATCHFLOW_LEASE_SECONDS": LEASE,
        "BATCHFLOW_QUEUE_TIMEOUT": QUEUE_TIMEOUT,
        "BATCHFLOW_MAINTENANCE_INTERVAL": MAINTENANCE,
        "BATCHFLOW_BATCH_MAX": 500,
        **config,
    }
    return create_app(prefix, files_dir, **overrides).test_client()


@pytest.mark.slow
def test_redis_restarted_mid_job_with_persistence_the_job_finishes_exactly(
    own_redis, prefix, files_dir
):
    server = own_redis(appendonly=True)
    config = fault_config(prefix, files_dir, BATCHFLOW_REDIS_URL=server.url)
    workers = Workers(config)
    try:
        workers.spawn()
        workers.start()
        client = web_client(prefix, files_dir, BATCHFLOW_REDIS_URL=server.url)
        ids = [f"r{n:05d}" for n in range(10_000)]
        r = web_start(client, "archive", {"ids": ids, "params": {"prefix": prefix}})
        assert r.status_code == 202
        job_id = r.json["id"]
        wait_for(lambda: web_status(client, job_id).json["processed"] >= 3000, timeout=60)
        server.kill()
        down_at = time.time()
        started = time.monotonic()
        r = web_status(client, job_id)
        assert r.status_code == 503 and "Redis" in r.json["error"]
        assert time.monotonic() - started < 5
        time.sleep(LEASE + 1)  # down longer than a lease: every lease in flight expires
        server.start()
        back_at = time.time()
        assert web_status(client, job_id).status_code == 200  # the web reconnects
        done = wait_for(
            lambda: (s := web_status(client, job_id).json)["terminal"] and s, timeout=90
        )
        finished_at = time.time()
        assert (done["status"], done["good"], done["bad"], done["skipped"]) == (
            "completed",
            10_000,
            0,
            0,
        )
        assert done["processed"] == done["total"] == 10_000
        engine = make_engine(config, prefix)
        assert set(dict(engine.store.iter_hash(job_id, "results"))) == set(ids)
        state = engine.state(job_id)
        commits = records(prefix, "commits", job_id)
        # Commits before the outage and after it: one chain (commits that raced the kill may
        # have landed without the worker hearing back; those the chain check still sees once).
        seqs = sorted(c["seq"] for c in commits)
        assert len(seqs) == len(set(seqs)) and int(state.fields["seq"]) >= len(seqs)
        archived = {k: int(v) for k, v in side.hgetall(f"{prefix}:archived").items()}
        assert set(archived) == set(ids) and max(archived.values()) <= 2
        first_after = min(c["t"] for c in commits if c["t"] > back_at)
        measured("redis restart (aof): first commit after restart", first_after - back_at)
        measured("redis restart (aof): outage", back_at - down_at)
        measured("redis restart (aof): restart to completion", finished_at - back_at)
        assert first_after - back_at < RECOVERY_BOUND + 10  # workers' broker reconnect backoff
        for worker in workers.started:
            assert worker.alive()
    finally:
        workers.close()


@pytest.mark.slow
def test_redis_restarted_without_persistence_the_job_is_reported_lost(own_redis, prefix, files_dir):
    server = own_redis(appendonly=False)
    config = fault_config(prefix, files_dir, BATCHFLOW_REDIS_URL=server.url)
    workers = Workers(config)
    try:
        workers.start()
        client = web_client(prefix, files_dir, BATCHFLOW_REDIS_URL=server.url)
        ids = [f"r{n:05d}" for n in range(10_000)]
        r = web_start(
            client, "archive", {"ids": ids, "params": {"prefix": prefix, "sleep": 0.0003}}
        )
        job_id = r.json["id"]
        wait_for(lambda: web_status(client, job_id).json["processed"] >= 1000, timeout=60)
        server.kill()
        time.sleep(1)
        server.start()  # empty: everything is gone, the job included
        r = web_status(client, job_id)
        assert r.status_code == 404 and "No such job" in r.json["error"]
        engine = make_engine(config, prefix)
        # The workers reconnected: a new job runs to the end on the restarted server. The solo
        # worker ran it after the step it had in flight when Redis died; and maintenance run
        # past every deadline brings nothing back either.
        r = web_start(client, "count", {"params": {"n": 50}})
        again = wait_for(lambda: (s := web_status(client, r.json["id"]).json)["terminal"] and s)
        assert (again["status"], again["processed"]) == ("completed", 50)
        assert maintain_past_every_deadline(engine)["requeued"] == 0
        assert web_status(client, job_id).status_code == 404  # lost, never "running" forever
        import redis

        fresh = redis.Redis.from_url(server.url, decode_responses=True)
        assert [k for k in fresh.scan_iter(match=f"*{job_id}*")] == []
        assert engine.jobs("alice") and all(j.id != job_id for j in engine.jobs("alice"))
    finally:
        workers.close()


# -- 5. Redis or the broker down when a job is started ----------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("down", ["redis", "broker", "both"])
def test_starting_a_job_while_redis_or_the_broker_is_down_is_a_fast_503(
    own_redis, prefix, files_dir, redis_client, down
):
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    if down == "redis":
        config = {"BATCHFLOW_REDIS_URL": dead, "BATCHFLOW_BROKER_URL": redis_client_url()}
    elif down == "broker":
        config = {"BATCHFLOW_BROKER_URL": dead}
    else:
        server = own_redis(appendonly=True)
        config = {"BATCHFLOW_REDIS_URL": server.url}
        server.kill()
    client = web_client(prefix, files_dir, **config)
    for body in ({"params": {"n": 10}}, None):
        started = time.monotonic()
        if body is None:  # a form post gets the same answer, as a page
            import re

            page = client.get("/jobs/start/count", headers=ALICE)
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
            r = client.post(
                "/jobs/start/count", data={"n": "10", "csrf_token": csrf}, headers=ALICE
            )
            assert r.status_code == 503 and "text/html" in r.content_type
        else:
            r = web_start(client, "count", body)
            assert r.status_code == 503, r.data
            assert ("Redis" if down != "broker" else "job queue") in r.json["error"]
        assert time.monotonic() - started < 5
    # Nothing half-created: no job keys, no index entries, nothing in anyone's list.
    assert list(redis_client.scan_iter(match=f"{prefix}:*")) == []
    if down == "both":
        server.start()
        import redis

        assert redis.Redis.from_url(server.url).keys("*") == []


def redis_client_url() -> str:
    from tests.handlers import REDIS_URL

    return REDIS_URL


# -- 6. Handlers that misbehave ----------------------------------------------------------------


@pytest.mark.slow
def test_a_step_slower_than_the_lease_is_kept_alive_and_never_run_twice(workers, prefix, files_dir):
    lease = 1.0  # a short lease of its own, renewed every third of it
    config = fault_config(prefix, files_dir, BATCHFLOW_LEASE_SECONDS=lease)
    engine = make_engine(config, prefix)
    workers.spawn(config)
    workers.start(config)  # a second worker that would take the step over if its lease lapsed
    # Each step outlives two leases (and the worker TTL); the one-shot job outlives four.
    steps = engine.start(
        "f-count", owner="a", params={"n": 2, "per_step": 1, "sleep": 2 * lease, "prefix": prefix}
    )
    task = engine.start("f-task", owner="a", params={"n": 4, "sleep": lease, "prefix": prefix})
    for job_id, total in ((steps, 2), (task, 4)):
        state = terminal(engine, job_id, timeout=60)
        d = state.to_dict()
        assert (d["status"], d["processed"], d["restarted"]) == ("completed", total, False)
        assert int(state.fields["recoveries"]) == 0
        assert_one_chain(prefix, job_id, state)
        assert all(r["attempt"] == 1 for r in records(prefix, "ran", job_id))
        assert "lost" not in [o["outcome"] for o in records(prefix, "outcomes", job_id)]
    units = side.lrange(f"{prefix}:task-units:{task}", 0, -1)
    assert len(units) == 4 and len({u.split(":")[0] for u in units}) == 1  # one run, one process


@pytest.mark.slow
def test_a_poison_id_that_kills_its_worker_every_time_is_recorded_bad(engine, workers, prefix):
    max_attempts = engine.settings.max_attempts
    workers.start(pool="prefork")
    ids = [f"p{n:03d}" for n in range(400)]
    ids[250] = "poison"  # deep inside a step's slice of ids, not at its start
    arm(prefix, "change", action="kill", item="poison")  # every time, in whichever pool child
    started = time.monotonic()
    job_id = engine.start("f-items", owner="a", ids=ids, params={"prefix": prefix})
    state = terminal(engine, job_id, timeout=120)
    elapsed = time.monotonic() - started
    d = state.to_dict()
    assert (d["status"], d["good"], d["bad"], d["skipped"], d["processed"]) == (
        "completed",
        399,
        1,
        0,
        400,
    )
    errors = engine.results(job_id, "errors", 0, 1000).items  # as the report shows them
    assert list(errors) == ["poison"] and f"lost {max_attempts} times" in errors["poison"]
    assert set(dict(engine.store.iter_hash(job_id, "results"))) == set(ids) - {"poison"}
    kills = len(records(prefix, "fired:change"))
    measured(f"poison id: {kills} kills, job took", elapsed)
    assert kills >= max_attempts
    assert kills <= max_attempts + 1  # it was tried alone max_attempts times, no more
    changed = {k: int(v) for k, v in side.hgetall(f"{prefix}:changed").items()}
    assert set(changed) == set(ids) - {"poison"}


class TestMisbehavingHandlersOnASharedWorker(OnASharedWorker):
    """Handlers that raise, on a live worker (which nobody kills)."""

    def test_an_id_that_always_raises_is_recorded_bad_once_and_the_job_goes_on(
        self, engine, live_worker, prefix
    ):
        ids = [str(n) for n in range(500)]
        ids[237] = "raise-237"
        job_id = engine.start("f-items", owner="a", ids=ids, params={"prefix": prefix})
        state = terminal(engine, job_id)
        d = state.to_dict()
        assert (d["status"], d["outcome"]) == ("completed", "completed_with_failures")
        assert (d["good"], d["bad"], d["skipped"], d["processed"]) == (499, 1, 0, 500)
        errors = engine.results(job_id, "errors", 0, 1000).items  # as the report shows them
        # Not a UserError: the report shows a reference, the log the real text.
        assert errors.keys() == {"raise-237"}
        assert errors["raise-237"].startswith("Something went wrong (ref ")
        results = dict(engine.store.iter_hash(job_id, "results"))
        assert set(results) == set(ids) - {"raise-237"}
        calls = {k: int(v) for k, v in side.hgetall(f"{prefix}:calls").items()}
        assert calls == {i: 1 for i in ids}  # no redelivery loop: the bad id was tried once
        assert_one_chain(prefix, job_id, state)

    @pytest.mark.slow
    def test_a_handler_that_raises_in_create_job_fails_the_job_once(
        self, engine, live_worker, prefix
    ):
        job_id = engine.start("f-create", owner="a", params={"prefix": prefix})
        state = terminal(engine, job_id)
        d = state.to_dict()
        assert (d["status"], d["outcome"]) == ("failed", "failed")
        assert d["error"].startswith("Something went wrong (ref ")
        assert state.fields["error_detail"].endswith("could not set up: the table is missing")
        assert side.hgetall(f"{prefix}:hooks:{job_id}") == {"failure": "1", "finish": "1"}
        # Nothing runs it again: maintenance past every deadline sends nothing, and the worker
        # went round (a later job ran to its end behind anything sent before).
        assert maintain_past_every_deadline(engine)["requeued"] == 0
        worker_went_round(engine)
        assert len(records(prefix, "ran", job_id)) == 1
        assert_one_chain(prefix, job_id, engine.state(job_id))


# -- 7. Stop and cancel races ------------------------------------------------------------------

IDS = [f"s{n:04d}" for n in range(200)]  # f-fixed: steps of 10 ids, seq k works on ids[10(k-1):10k]


def changed_ids(prefix: str) -> dict[str, int]:
    return {k: int(v) for k, v in side.hgetall(f"{prefix}:changed").items()}


@pytest.mark.parametrize("what", ["stop", "cancel"])
def test_stop_or_cancel_before_the_first_step_runs_nothing(engine, workers, prefix, what):
    job_id = engine.start("f-fixed", owner="a", ids=IDS, params={"prefix": prefix})
    asked = "stopping" if what == "stop" else "canceling"
    assert engine.signal(job_id, what).status.value == asked
    assert engine.signal(job_id, what).status.value == asked  # twice: the same
    workers.start()
    state = terminal(engine, job_id)
    d = state.to_dict()
    expected = "stopped" if what == "stop" else "canceled"
    assert (d["status"], d["processed"], d["good"], d["skipped"]) == (expected, 0, 0, 200)
    assert records(prefix, "ran", job_id) == [] and changed_ids(prefix) == {}
    assert_one_chain(prefix, job_id, state)


class TestStopAndCancelRacesOnASharedWorker(OnASharedWorker):
    """Stop, cancel, pause and resume racing the steps of a live worker (which nobody kills)."""

    @pytest.mark.parametrize("what", ["stop", "cancel"])
    def test_stop_or_cancel_mid_step_lets_only_the_step_in_flight_finish(
        self, engine, live_worker, prefix, what
    ):
        arm(prefix, "change", action="block", left=1, item="s0055")  # inside seq 6
        job_id = engine.start("f-fixed", owner="a", ids=IDS, params={"prefix": prefix})
        (hit,) = fired(prefix, "change")
        assert hit["seq"] == 6
        asked = engine.signal(job_id, what)
        assert asked.status.value == ("stopping" if what == "stop" else "canceling")
        engine.signal(job_id, what)  # twice
        release(prefix, "change")
        state = terminal(engine, job_id)
        d = state.to_dict()
        assert_one_chain(prefix, job_id, state)
        bodies = [r["seq"] for r in records(prefix, "ran", job_id)]
        assert max(bodies) == 6  # no handler body after the stop except the one in flight
        assert changed_ids(prefix) == {i: 1 for i in IDS[:60]}  # exactly the ids of steps 1-6
        if what == "stop":
            counts = (d["status"], d["processed"], d["good"], d["skipped"])
            assert counts == ("stopped", 60, 60, 140)
            assert d["good"] + d["bad"] + d["skipped"] == d["total"]
            assert set(dict(engine.store.iter_hash(job_id, "results"))) == set(IDS[:60])
        else:
            assert (d["status"], d["undone"], d["undo_failed"]) == ("canceled", 60, 0)
            undone = {k: int(v) for k, v in side.hgetall(f"{prefix}:undone").items()}
            assert undone == {i: 1 for i in IDS[:60]}  # every change undone exactly once

    @pytest.mark.parametrize("what", ["stop", "cancel"])
    def test_stop_or_cancel_during_and_after_the_last_step(self, engine, live_worker, prefix, what):
        from batchflow import InvalidTransition

        arm(prefix, "step", action="block", left=1, min_seq=20)  # seq 20 is the last: ids 190-199
        job_id = engine.start("f-fixed", owner="a", ids=IDS, params={"prefix": prefix})
        (hit,) = fired(prefix, "step")
        assert hit["seq"] == 20
        engine.signal(job_id, what)
        release(prefix, "step")
        state = terminal(engine, job_id)
        d = state.to_dict()
        hooks = side.hgetall(f"{prefix}:hooks:{job_id}")
        if what == "stop":
            # The last step finished the work before any step could answer the stop: all done.
            assert (d["status"], d["good"], d["skipped"]) == ("completed", 200, 0)
            assert hooks == {"complete": "1", "finish": "1"}
        else:
            # A cancel wins over the step's own ending: everything done is undone, and the job
            # never completed, so on_complete never ran; on_finish ran once, at the real end.
            assert (d["status"], d["undone"]) == ("canceled", 200)
            assert set(side.hgetall(f"{prefix}:undone").values()) == {"1"}
            assert hooks == {"finish": "1"}
        assert changed_ids(prefix) == {i: 1 for i in IDS}
        assert max(r["seq"] for r in records(prefix, "ran", job_id)) == 20
        assert_one_chain(prefix, job_id, state)
        for again in ("stop", "cancel"):  # after the end: a clear refusal, nothing changes
            with pytest.raises(InvalidTransition, match="already ended"):
                engine.signal(job_id, again)
        assert engine.state(job_id).fields["seq"] == state.fields["seq"]

    def test_a_resume_that_races_the_step_answering_the_pause_is_not_lost(
        self, engine, live_worker, prefix
    ):
        arm(prefix, "step", action="block", left=1, min_seq=3)
        job_id = engine.start("f-fixed", owner="a", ids=IDS, params={"prefix": prefix})
        fired(prefix, "step")
        engine.signal(job_id, "pause")  # step 3 is in flight: step 4 will answer the pause
        arm(prefix, "commit", action="block", left=1, min_seq=4)
        release(prefix, "step")
        (hit,) = fired(prefix, "commit")  # step 4 decided to pause and is about to commit that
        assert hit["seq"] == 4
        assert engine.signal(job_id, "resume").status is Status.RUNNING  # the user resumes now
        release(prefix, "commit")
        state = terminal(engine, job_id, timeout=30)  # a lost resume would leave it paused
        d = state.to_dict()
        assert (d["status"], d["good"], d["skipped"]) == ("completed", 200, 0)
        assert_one_chain(prefix, job_id, state)

    def test_a_cancel_after_the_last_step_ran_its_callbacks_is_refused(
        self, engine, live_worker, prefix
    ):
        from batchflow import InvalidTransition

        # The last step: its callbacks ran, it is not committed yet.
        arm(prefix, "commit", action="block", left=1, min_seq=20)
        job_id = engine.start("f-fixed", owner="a", ids=IDS, params={"prefix": prefix})
        fired(prefix, "commit")
        with pytest.raises(InvalidTransition, match="finishing"):
            engine.signal(job_id, "cancel")
        release(prefix, "commit")
        state = terminal(engine, job_id)
        assert (state.status, state.count("good")) == (Status.COMPLETED, 200)
        assert side.hgetall(f"{prefix}:hooks:{job_id}") == {"complete": "1", "finish": "1"}
        assert side.hgetall(f"{prefix}:undone") == {}


#: Where an item step can be cut off: after its claim, mid-slice (five of its ten ids changed),
#: after the handler returned (all ten changed, nothing committed), after its commit (the
#: successor never enqueued).
LOST_STEP_POINTS = ["claimed", "change", "commit", "enqueue"]


@pytest.mark.slow
@pytest.mark.parametrize("point", LOST_STEP_POINTS)
@pytest.mark.parametrize("what", ["stop", "cancel"])
def test_a_stop_or_cancel_right_after_a_lost_step_is_exact(engine, workers, prefix, what, point):
    """Step 11 (s0100-s0109) is cut off by the SIGKILL of its pool child at ``point``; the stop or
    cancel is recorded before anyone runs the step again. The lost slice is settled first (run
    again, one id per step, as the worker holding it is known dead), so a stop counts those ids
    as done, not as never reached, and a cancel undoes every id that was changed, once."""
    workers.start(pool="prefork")
    where = {"item": "s0105"} if point == "change" else {"min_seq": 11}
    arm(prefix, point, action="kill", left=1, **where)
    job_id = engine.start("f-fixed", owner="a", ids=IDS, params={"prefix": prefix})
    (hit,) = fired(prefix, point)
    # The worker says its dead child's step is free WORKER_TTL * 3/4 after the kill at the
    # earliest: the signal is recorded long before.
    asked = engine.signal(job_id, what).status
    assert asked is (Status.STOPPING if what == "stop" else Status.CANCELING)
    state = terminal(engine, job_id, timeout=60)
    d = state.to_dict()
    assert hit["seq"] == 11
    changed = changed_ids(prefix)
    assert set(changed) == set(IDS[:110]) and max(changed.values()) <= 2, changed
    if what == "stop":
        assert (d["status"], d["processed"], d["good"], d["skipped"]) == ("stopped", 110, 110, 90)
        assert set(dict(engine.store.iter_hash(job_id, "results"))) == set(IDS[:110])
    else:
        assert (d["status"], d["undone"], d["undo_failed"]) == ("canceled", 110, 0)
        undone = {k: int(v) for k, v in side.hgetall(f"{prefix}:undone").items()}
        assert undone == {i: 1 for i in IDS[:110]}  # every changed id undone, once
    lost = point != "enqueue"  # at "enqueue" the step had committed; only its successor was lost
    assert int(state.fields["recoveries"]) == int(lost)
    assert_one_chain(prefix, job_id, state, cut={11} if point in ("change", "commit") else set())


@pytest.mark.slow
def test_a_cancel_after_a_whole_worker_died_mid_step_undoes_what_the_lost_step_changed(
    engine, workers, prefix
):
    """The lost step (s0100-s0109) changed s0100-s0104 before its worker (the only one) was
    killed; the cancel comes before a new worker starts. The slice is settled first, so the undo
    covers every changed id."""
    first = workers.start()
    arm(prefix, "change", action="block", left=1, item="s0105")  # inside seq 11
    job_id = engine.start("f-fixed", owner="a", ids=IDS, params={"prefix": prefix})
    (hit,) = fired(prefix, "change")
    first.kill()
    assert engine.signal(job_id, "cancel").status is Status.CANCELING
    workers.start()
    state = terminal(engine, job_id, timeout=60)
    d = state.to_dict()
    assert (d["status"], d["undone"], d["undo_failed"]) == ("canceled", 110, 0)
    changed = changed_ids(prefix)
    undone = {k: int(v) for k, v in side.hgetall(f"{prefix}:undone").items()}
    assert set(changed) == set(IDS[:110]) and undone == {i: 1 for i in IDS[:110]}
    assert hit["seq"] == 11 and int(state.fields["recoveries"]) == 1
    assert_one_chain(prefix, job_id, state, cut={11})


@pytest.mark.slow
def test_a_stop_with_every_worker_down_is_obeyed_when_one_comes_back(engine, workers, prefix):
    first = workers.start()
    arm(prefix, "change", action="block", left=1, item="s0105")  # inside seq 11
    job_id = engine.start("f-fixed", owner="a", ids=IDS, params={"prefix": prefix})
    (hit,) = fired(prefix, "change")
    first.kill()  # every worker is down, mid-step
    assert engine.signal(job_id, "stop").status is Status.STOPPING  # recorded
    wait_for(lambda: lease_lapsed(engine, job_id), timeout=2 * LEASE)
    assert engine.state(job_id).status is Status.STOPPING  # nobody to obey it yet
    # The next worker claims the stop step and dies at once; the stop survives that too.
    arm(prefix, "claimed", action="kill", left=1)
    second = workers.start()
    fired(prefix, "claimed")
    wait_for(lambda: not second.alive(), timeout=10)
    back = time.time()
    workers.start()
    state = terminal(engine, job_id, timeout=30)
    measured("stop obeyed after workers came back", time.time() - back)
    d = state.to_dict()
    # The stop waited until the cut-off step's slice (s0100-s0109, five of them changed before
    # the kill) was settled, one id per step: they count as done, not as never reached.
    assert (d["status"], d["processed"], d["good"], d["skipped"]) == ("stopped", 110, 110, 90)
    assert set(dict(engine.store.iter_hash(job_id, "results"))) == set(IDS[:110])
    assert hit["seq"] == 11
    settled = {r["seq"] for r in records(prefix, "ran", job_id) if r["seq"] > 11}
    assert settled == set(range(12, 21))  # ten ids, one per step, then nothing more
    changed = changed_ids(prefix)
    assert set(changed) == set(IDS[:110])
    assert {i for i, n in changed.items() if n == 2} == set(IDS[100:105])  # at-least-once
    assert int(state.fields["recoveries"]) == 2
    assert_one_chain(prefix, job_id, state, cut={11})


# -- 8. Graceful shutdown ----------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_mid_step_the_step_finishes_and_the_worker_leaves(engine, workers, config, prefix):
    reference = uninterrupted_report(config, ROWS)
    leaving = workers.spawn()
    workers.start()
    arm(prefix, "written", action="block", left=1, min_seq=3, worker=leaving.name)
    job_id = engine.start("f-report", owner="a", params={"rows": ROWS, "prefix": prefix})
    (hit,) = fired(prefix, "written")
    os.kill(leaving.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert leaving.alive()  # a warm shutdown waits for the step in flight
    release(prefix, "written")
    leaving.proc.wait(20)
    assert leaving.proc.returncode == 0
    state = terminal(engine, job_id, timeout=60)
    assert state.status is Status.COMPLETED and state.count("processed") == ROWS
    assert read_file(state) == reference
    (commit,) = [c for c in records(prefix, "commits", job_id) if c["seq"] == hit["seq"]]
    assert commit["pid"] == leaving.pid  # the leaving worker committed its own step
    assert int(state.fields["recoveries"]) == 0
    assert_one_chain(prefix, job_id, state)


@pytest.mark.slow
def test_sigterm_to_a_prefork_workers_process_group_requeues_the_step(
    engine, workers, config, prefix
):
    """What systemd's default KillMode does: SIGTERM to every process of the worker. The pool
    child dies mid-step (Celery resets SIGTERM in pool children); the step is run again."""
    reference = uninterrupted_report(config, ROWS)
    leaving = workers.spawn(pool="prefork")
    workers.start()
    arm(prefix, "written", action="block", left=1, min_seq=3, worker=leaving.name)
    job_id = engine.start("f-report", owner="a", params={"rows": ROWS, "prefix": prefix})
    (hit,) = fired(prefix, "written")
    os.killpg(leaving.pid, signal.SIGTERM)
    termed = time.time()
    release(prefix, "written")  # in case the child outlived the signal
    leaving.proc.wait(30)
    state = terminal(engine, job_id, timeout=60)
    assert state.status is Status.COMPLETED and state.count("processed") == ROWS
    assert read_file(state) == reference
    cut = hit["seq"]
    assert_one_chain(prefix, job_id, state, cut={cut})
    measured("sigterm process group: step re-run", commit_time(prefix, job_id, cut) - termed)
    assert commit_time(prefix, job_id, cut) - termed < RECOVERY_BOUND


# -- A frozen worker (SIGSTOP longer than the lease, then SIGCONT) -----------------------------


def freeze_at(prefix: str, point: str, victim: FaultWorker) -> dict[str, Any]:
    """Freeze ``victim`` when it reaches ``point``; it goes on from there once thawed."""
    (hit,) = fired(prefix, point)
    os.kill(victim.pid, signal.SIGSTOP)
    release(prefix, point)
    return hit


def thaw(victim: FaultWorker) -> None:
    os.kill(victim.pid, signal.SIGCONT)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["claimed", "before-write"])
def test_a_frozen_worker_that_wakes_after_the_job_ended_leaves_the_file_alone(
    engine, workers, config, prefix, point
):
    reference = uninterrupted_report(config, ROWS)
    victim = workers.spawn()
    workers.start()
    arm(prefix, point, action="block", left=1, min_seq=3, worker=victim.name)
    job_id = engine.start("f-report", owner="a", params={"rows": ROWS, "prefix": prefix})
    hit = freeze_at(prefix, point, victim)
    state = terminal(engine, job_id, timeout=60)  # the other worker took over and finished
    assert read_file(state) == reference
    thaw(victim)
    wait_for(
        lambda: (
            hit["seq"]
            in [
                o["seq"]
                for o in records(prefix, "outcomes", job_id)
                if o["pid"] == victim.pid and o["outcome"] == "lost"
            ]
        )
    )
    assert engine.state(job_id).status is Status.COMPLETED
    assert read_file(engine.state(job_id)) == reference  # the woken step changed nothing
    assert_one_chain(prefix, job_id, engine.state(job_id), cut={hit["seq"]})


@pytest.mark.slow
def test_a_frozen_one_shot_job_stops_when_it_wakes_to_find_its_lease_gone(engine, workers, prefix):
    victim = workers.start()
    arm(prefix, "run", action="block", left=1, worker=victim.name)
    job_id = engine.start("f-task", owner="a", params={"n": 10, "sleep": 0.3, "prefix": prefix})
    freeze_at(prefix, "run", victim)
    rescuer = workers.start()  # takes the job over once the frozen worker's lease has lapsed
    wait_for(lambda: any(r["pid"] == rescuer.pid for r in records(prefix, "ran", job_id)))
    thaw(victim)  # two copies would now run at once, unless the woken one stops
    state = terminal(engine, job_id, timeout=60)
    wait_for(lambda: any(o["pid"] == victim.pid for o in records(prefix, "outcomes", job_id)))
    d = state.to_dict()
    assert (d["status"], d["good"], d["processed"], d["restarted"]) == ("completed", 10, 10, True)
    units = side.lrange(f"{prefix}:task-units:{job_id}", 0, -1)
    by_victim = [u for u in units if u.startswith(f"{victim.pid}:")]
    assert len(by_victim) <= 1, by_victim  # at most the unit in flight when it woke
    assert [u for u in units if u.startswith(f"{rescuer.pid}:")] == [
        f"{rescuer.pid}:{i}" for i in range(10)
    ]


@pytest.mark.slow
def test_sigkill_mid_import_loses_no_row_and_counts_each_once(engine, workers, prefix, files_dir):
    """A pool child killed while it applies row 1,700 of 3,000: the import goes on from the last
    committed cursor; every row is applied, each counted once, and only rows of the step that
    was cut off (after its last checkpoint) are applied again: an upsert keyed by the row, as
    ``apply`` should be, leaves each contact once."""
    from batchflow.imports import upload_path
    from batchflow.keys import new_job_id

    emails = [f"p{n}@example.com" for n in range(3000)]
    job_id = new_job_id()
    path = upload_path(files_dir, job_id)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        handle.write("name,email\n" + "".join(f"P {n},{e}\n" for n, e in enumerate(emails)))
    workers.start(pool="prefork")
    arm(prefix, "change", action="kill", left=1, item="p1700@example.com")
    engine.submit("f-import", owner="a", params={"prefix": prefix}, job_id=job_id)
    (hit,) = fired(prefix, "change")
    state = terminal(engine, job_id, timeout=90)
    d = state.to_dict()
    assert (d["status"], d["good"], d["bad"], d["total"]) == ("completed", 3000, 0, 3000)
    applied = {k: int(v) for k, v in side.hgetall(f"{prefix}:applied").items()}
    assert set(applied) == set(emails) and max(applied.values()) <= 2
    twice = [e for e in emails if applied[e] == 2]
    if twice:  # a run of rows just before the one that killed its worker
        first, last = emails.index(twice[0]), emails.index(twice[-1])
        assert twice == emails[first : last + 1] and last < 1700
    assert side.hlen(f"{prefix}:contacts") == 3000
    assert_one_chain(prefix, job_id, state, cut={hit["seq"]})


@pytest.mark.slow
def test_sigkill_mid_preview_changes_nothing_and_assesses_each_once(engine, workers, prefix):
    """A pool child killed while it assesses number 1,700 of 3,000: the preview goes on from the
    last committed cursor, its counts are exact, nothing was archived; Confirm then archives each
    number once."""
    workers.start(pool="prefork")
    arm(prefix, "assess", action="kill", left=1, item="1700")
    job_id = engine.start("f-preview", owner="a", params={"n": 3000, "prefix": prefix, "every": 0})
    fired(prefix, "assess")
    waiting = wait_for(lambda: (s := engine.state(job_id)).status is Status.AWAITING and s, 90)
    found = waiting.to_dict()["assessment"]
    assert (found["assessed"], found["changes"], found["rejected"]) == (3000, 1500, 0)
    assert not side.exists(f"{prefix}:archived")
    assessed = {k: int(v) for k, v in side.hgetall(f"{prefix}:assessed").items()}
    assert set(assessed) == {str(n) for n in range(1, 3001)} and max(assessed.values()) <= 2
    engine.signal(job_id, "confirm")
    done = terminal(engine, job_id, timeout=90)
    assert (done.status, done.count("good"), done.total) == (Status.COMPLETED, 3000, 3000)
    archived = {k: int(v) for k, v in side.hgetall(f"{prefix}:archived").items()}
    assert archived == {str(n): 1 for n in range(1, 3001)}
