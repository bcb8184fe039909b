#!/usr/bin/env python
"""batchflow's benchmarks: every figure is a ratio against a peer measured in the same run.

    python bench/run.py            # the full run (about 3 minutes on an idle 2-core machine)
    python bench/run.py --quick    # fewer items, steps, repetitions and kills (about 80 s)
    python bench/run.py --only 2,3 # some benchmarks only (1-12)

1. engine units/s in-process; 2-3. step overhead and Redis commands per step; 4. items
throughput; 5. progress and stop latency; 6. scale; 7. work repeated per SIGKILL, with the default
checkpoints against none (its peer is batchflow without checkpoints; see bench/crash.py); 8-11.
sources, batch changes, imports, uploads (bench/sources.py); 12. event streams over two web
processes (bench/streams.py).

Needs a Redis at 127.0.0.1:6379 (``--redis-url`` for another). The RQ peer needs ``pip install rq``
(3.0 or later, for ``RQ_KEY_PREFIX``); without it that peer is skipped with a note. Nothing is
flushed: a run uses its own key prefix (``bench-<random>``, Celery's broker keys and RQ's keys
included) and deletes only those keys at the end. Worker subprocesses are stopped at the end, on
errors and on Ctrl-C. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import platform
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from batchflow.engine import Engine  # noqa: E402
from batchflow.schema import is_terminal  # noqa: E402
from batchflow.store import Store  # noqa: E402
from bench import harness  # noqa: E402
from bench.crash import bench_crash  # noqa: E402
from bench.handlers import BATCHES, make_registry  # noqa: E402
from bench.harness import (  # noqa: E402
    Context,
    Monitor,
    command_calls,
    delta,
    median,
    percentile,
    wait_for,
)
from bench.lanes import bench_lanes  # noqa: E402
from bench.peers import CHAIN_TASK, ITEM_TASK  # noqa: E402
from bench.sources import bench_batch, bench_export, bench_import, bench_upload  # noqa: E402
from bench.streams import bench_streams  # noqa: E402

# -- the report ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    bench: str
    measure: str
    ours: str
    peer: str
    ratio: str
    goal: str = ""
    verdict: str = ""


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: dict[str, list[str]] = collections.defaultdict(list)
        self.values: dict[str, float] = {}

    def row(self, *args: Any, **kwargs: Any) -> None:
        self.rows.append(Row(*args, **kwargs))

    def note(self, bench: str, text: str) -> None:
        self.notes[bench].append(text)

    def render(self) -> str:
        head = Row("#", "measure", "batchflow", "peer", "ratio", "goal", "")
        rows = [head, *self.rows]
        widths = [max(len(getattr(r, f.name)) for r in rows) for f in dataclasses.fields(Row)]
        lines = []
        for i, r in enumerate(rows):
            cells = [
                getattr(r, f.name).ljust(w)
                for f, w in zip(dataclasses.fields(Row), widths, strict=True)
            ]
            lines.append("  ".join(cells).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M/s"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k/s"
    return f"{x:,.0f}/s"


def ms(x: float) -> str:
    return f"{x * 1000:.2f} ms" if x < 0.1 else f"{x * 1000:.0f} ms"


# -- shared runs --------------------------------------------------------------------------------


class InlineDispatcher:
    """Runs a job's steps in this process, one after another (benchmark 1: no Celery at all)."""

    def __init__(self) -> None:
        self.steps: collections.deque[tuple[str, int]] = collections.deque()

    def enqueue_step(self, job_id: str, seq: int, countdown: float = 0.0, lane: int = 0) -> None:
        self.steps.append((job_id, seq))

    def enqueue_cleanup(self, job_id: str) -> None:
        pass

    def enqueue_notify(self, job_id: str) -> None:
        pass

    def drain(self, engine: Engine) -> int:
        ran = 0
        while self.steps:
            engine.run_step(*self.steps.popleft())
            ran += 1
        return ran


def wait_job(ctx: Context, job_id: str, timeout: float, interval: float = 0.02) -> dict[str, str]:
    """Poll the job's status until it is terminal; returns the job hash."""
    key = ctx.engine.store.keys.job(job_id)
    wait_for(
        lambda: is_terminal(ctx.polled("HGET", key, "status")), timeout, interval, f"job {job_id}"
    )
    return ctx.r.hgetall(key)


def engine_chain(ctx: Context, steps: int, sleep: float = 0.0) -> float:
    """A no-op job of ``steps`` steps (create + steps-1 one-unit steps) through the worker;
    seconds from just before ``engine.start`` to the last commit's ``finished_at``."""
    t0 = time.time()
    job_id = ctx.engine.start("steps", owner="bench", params={"n": steps - 1, "sleep": sleep})
    fields = wait_job(ctx, job_id, 30 + steps * (0.05 + sleep))
    assert fields["status"] == "completed", fields.get("error")
    assert int(fields["processed"]) == steps - 1 and int(fields["seq"]) == steps
    return float(fields["finished_at"]) - t0


def peer_chain(ctx: Context, steps: int, sleep: float = 0.0, channel: str = "") -> float:
    """The hand-written chain of ``steps`` Celery tasks; seconds from just before the first
    ``send_task`` to the last task's ``finished_at``."""
    key = ctx.key("chain", uuid.uuid4().hex[:8])
    t0 = time.time()
    ctx.app.send_task(CHAIN_TASK, args=(key, steps, sleep, channel), queue=ctx.queue)
    wait_for(
        lambda: ctx.polled("HGET", key, "finished_at"),
        30 + steps * (0.05 + sleep),
        0.02,
        "the peer chain",
    )
    fields = ctx.r.hgetall(key)
    assert int(fields["processed"]) == steps
    return float(fields["finished_at"]) - t0


def interleave(
    reps: int, a: Callable[[], Any], b: Callable[[], Any]
) -> tuple[list[Any], list[Any]]:
    """``reps`` pairs of runs, alternating which goes first; the other processes on a shared
    machine then weigh on both sides of each pair alike."""
    out_a, out_b = [], []
    for i in range(reps):
        if i % 2:
            out_b.append(b())
            out_a.append(a())
        else:
            out_a.append(a())
            out_b.append(b())
    return out_a, out_b


def best(times: list[float]) -> float:
    """The best (shortest) of repeated timings: on a shared machine noise only ever slows a run
    down, so the fastest run is the most reproducible estimate of what the code costs."""
    return min(times)


@dataclasses.dataclass
class Counted:
    result: Any
    calls: dict[str, int]  # commands run, by name (commandstats delta)
    usec: dict[str, int]  # the server's microseconds spent in them, by name
    cpu: float  # CPU seconds the first worker process used


def counted(ctx: Context, fn: Callable[[], Any]) -> Counted:
    """Run ``fn`` between two INFO commandstats snapshots (and two readings of the worker's CPU
    time); the delta less INFO itself and less the benchmark's own polling commands."""
    time.sleep(0.15)  # the previous run's last ack lands before the window opens
    polls = collections.Counter(ctx.polls)
    worker = ctx.workers[0]
    cpu0 = worker.cpu_seconds() or 0.0
    before = command_calls(ctx.r)
    result = fn()
    time.sleep(0.15)  # this run's last ack lands inside the window
    after = command_calls(ctx.r)
    cpu = (worker.cpu_seconds() or 0.0) - cpu0
    d = delta(after, before)
    for name, n in (ctx.polls - polls).items():
        d[name] = d.get(name, 0) - n
    calls = {k: v for k, v in d.items() if v and not k.startswith("usec:") and k != "info"}
    usec = {k[5:]: v for k, v in d.items() if k.startswith("usec:") and k != "usec:info"}
    return Counted(result, calls, usec, cpu)


def slope(
    big: list[dict[str, int]], small: list[dict[str, int]], n_big: int, n_small: int
) -> dict[str, float]:
    """Commands per extra step between the two chain lengths. Each command's count is the
    minimum over repetitions: others' traffic on the shared Redis only ever adds."""
    names = {k for d in big + small for k in d}
    out = {}
    for name in names:
        b = min(d.get(name, 0) for d in big)
        s = min(d.get(name, 0) for d in small)
        value = (b - s) / (n_big - n_small)
        if abs(value) >= 0.005:
            out[name] = value
    return out


def fmt_counts(counts: dict[str, float], limit: int = 12) -> str:
    items = sorted(counts.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:limit]
    return ", ".join(f"{k} {v:+.2f}" if v < 0 else f"{k} {v:.2f}" for k, v in items) or "none"


# -- 1. engine units/s in-process ---------------------------------------------------------------


def bench_inline(ctx: Context, opts: argparse.Namespace, rep: Report) -> None:
    tag = "1"
    engine = Engine(ctx.settings, Store.from_url(ctx.redis_url, ctx.prefix), make_registry())
    dispatcher = InlineDispatcher()
    engine.dispatcher = dispatcher
    r = ctx.r

    def run_units(n: int) -> tuple[float, list[int], int]:
        BATCHES.clear()
        t0 = time.perf_counter()
        job_id = engine.start("units", owner="bench", params={"n": n})
        steps = dispatcher.drain(engine)
        elapsed = time.perf_counter() - t0
        state = engine.state(job_id)
        assert state.status.value == "completed" and state.count("processed") == n
        return elapsed, list(BATCHES), steps

    def loop_units(batches: list[int]) -> float:
        key = ctx.key("loop-units", uuid.uuid4().hex[:8])
        t0 = time.perf_counter()
        done = 0
        for size in batches:
            done += size
            r.hincrby(key, "processed", size)
        elapsed = time.perf_counter() - t0
        assert int(r.hget(key, "processed") or 0) == done
        return elapsed

    all_ids = [str(i) for i in range(opts.inline_items)]

    def run_items(ids: list[str]) -> tuple[float, int]:
        key = ctx.key("inline-items", uuid.uuid4().hex[:8])
        t0 = time.perf_counter()
        job_id = engine.start("increment", owner="bench", ids=ids, params={"key": key})
        steps = dispatcher.drain(engine)
        elapsed = time.perf_counter() - t0
        state = engine.state(job_id)
        assert state.status.value == "completed" and state.count("good") == len(ids)
        assert int(r.hget(key, "n") or 0) == len(ids)
        return elapsed, steps

    def loop_items(ids: list[str]) -> float:
        key = ctx.key("loop-items", uuid.uuid4().hex[:8])
        t0 = time.perf_counter()
        for _ in ids:
            r.hincrby(key, "n", 1)
        elapsed = time.perf_counter() - t0
        assert int(r.hget(key, "n") or 0) == len(ids)
        return elapsed

    # Warm-up: scripts loaded, connections open, code paths hot.
    run_units(20_000)
    loop_units([10, 20, 40])
    run_items(all_ids[:2000])
    loop_items(all_ids[:2000])

    eng_u, loop_u, steps_u = [], [], 0
    for _ in range(opts.reps):
        t, batches, steps_u = run_units(opts.units)
        eng_u.append(t)
        loop_u.append(loop_units(batches))
    runs = interleave(opts.item_reps, lambda: run_items(all_ids), lambda: loop_items(all_ids))
    eng_i, steps_i = [t for t, _ in runs[0]], runs[0][-1][1]
    loop_i = runs[1]
    eu, lu, ei, li = best(eng_u), best(loop_u), best(eng_i), best(loop_i)
    n_u, n_i = opts.units, opts.inline_items
    ru, ri = lu / eu, li / ei
    rep.row(
        tag,
        f"no-op units/s in-process ({n_u:,}) vs HINCRBY per batch",
        fmt_rate(n_u / eu),
        fmt_rate(n_u / lu),
        f"{ru:.2f}x",
        "info",
    )
    rep.row(
        tag,
        f"HINCRBY items/s in-process ({n_i:,} ids) vs plain loop",
        fmt_rate(n_i / ei),
        fmt_rate(n_i / li),
        f"{ri:.2f}x",
        ">= 0.9x",
        verdict(ri >= 0.9),
    )
    rep.values["inline_step_us"] = (eu - lu) / steps_u * 1e6
    rep.note(
        tag,
        f"engine.run_step driven inline in this process (no Celery, no worker): "
        f"{n_u:,} no-op units took {steps_u} steps (adaptive size, capped at "
        f"BATCHFLOW_BATCH_MAX={ctx.settings.batch_max}), best of {opts.reps} {eu * 1000:.1f} ms "
        f"= {eu / steps_u * 1e6:.0f} us/step; peer: a plain loop over the same batch "
        f"sizes doing one HINCRBY per batch, {lu * 1000:.1f} ms. Difference = engine "
        f"cost per step beyond one round trip: {(eu - lu) / steps_u * 1e6:.0f} us.",
    )
    rep.note(
        tag,
        f"{n_i:,} ids, change = one HINCRBY, in-process: engine (start() storing and "
        f"checking the ids included, {steps_i} steps) "
        f"{', '.join(f'{x:.2f} s' for x in eng_i)}; plain loop of the same HINCRBYs "
        f"{', '.join(f'{x:.2f} s' for x in loop_i)} ({opts.item_reps} interleaved pairs; "
        f"the table shows the best of each).",
    )


# -- 2 and 3. step overhead and Redis commands per step -------------------------------------------


def bench_steps(ctx: Context, opts: argparse.Namespace, rep: Report) -> None:
    n, n_small = opts.steps, max(20, opts.steps // 5)
    engine_chain(ctx, 50)
    peer_chain(ctx, 50)
    idle_d = counted(ctx, lambda: time.sleep(1.0)).calls
    e_runs, p_runs = interleave(
        opts.step_reps,
        lambda: counted(ctx, lambda: engine_chain(ctx, n)),
        lambda: counted(ctx, lambda: peer_chain(ctx, n)),
    )
    e_times, p_times = [c.result / n for c in e_runs], [c.result / n for c in p_runs]
    e_cpu, p_cpu = [c.cpu / n for c in e_runs], [c.cpu / n for c in p_runs]
    e_small = [counted(ctx, lambda: engine_chain(ctx, n_small)) for _ in range(2)]
    p_small = [counted(ctx, lambda: peer_chain(ctx, n_small)) for _ in range(2)]
    e_big, p_big = [c.calls for c in e_runs], [c.calls for c in p_runs]

    e_step, p_step = best(e_times), best(p_times)
    ratio = e_step / p_step
    rep.values["step_overhead"] = e_step
    rep.values["peer_step"] = p_step
    rep.row(
        "2",
        f"time per step, no-op, 1 solo worker ({n} steps)",
        ms(e_step),
        ms(p_step),
        f"{ratio:.2f}x",
        "<= 1.2x",
        verdict(ratio <= 1.2),
    )
    if best(p_cpu) > 0:
        rep.row(
            "2",
            "worker CPU per step (same runs)",
            ms(best(e_cpu)),
            ms(best(p_cpu)),
            f"{best(e_cpu) / best(p_cpu):.2f}x",
            "info",
        )
    rep.note(
        "2",
        f"batchflow: a job of {n} steps (create + {n - 1} one-unit steps, fixed "
        f"batch_size=1) through one `celery worker -P solo` subprocess; time from just "
        f"before engine.start() to the last commit's finished_at, / {n}. Peer: a Celery "
        f"task doing HINCRBY processed + HSET updated_at, re-enqueued with "
        f"self.apply_async, {n} links, same app, broker, queue and worker. Per-step "
        f"times of {opts.step_reps} interleaved pairs (the table shows the best of each): "
        f"batchflow "
        f"{', '.join(ms(x) for x in e_times)}; peer {', '.join(ms(x) for x in p_times)}.",
    )

    # 3: commands per step from commandstats, as the slope between two chain lengths.
    e_slope = slope(e_big, [c.calls for c in e_small], n, n_small)
    p_slope = slope(p_big, [c.calls for c in p_small], n, n_small)
    extra = {k: e_slope.get(k, 0.0) - p_slope.get(k, 0.0) for k in set(e_slope) | set(p_slope)}
    extra = {k: v for k, v in extra.items() if abs(v) >= 0.02}
    e_total, p_total = sum(e_slope.values()), sum(p_slope.values())
    celery_own = dict(p_slope)
    for name in ("hincrby", "hset"):  # the peer's own two writes per link
        celery_own[name] = celery_own.get(name, 0.0) - 1.0
    celery_own = {k: v for k, v in celery_own.items() if abs(v) >= 0.02}
    rep.values["evalsha_per_step"] = e_slope.get("evalsha", 0.0)
    noise = sum(idle_d.values())
    rep.row(
        "3",
        "Redis commands per step, all (Lua's inner calls too)",
        f"{e_total:.1f}",
        f"{p_total:.1f}",
        f"{e_total / p_total:.2f}x",
        "info",
    )

    # The split between client round trips and commands run inside Lua, from MONITOR.
    mon = monitor_split(ctx, opts)
    e_client, e_lua, p_client = mon["engine_client"], mon["engine_lua"], mon["peer_client"]
    trips = {k: e_client.get(k, 0.0) - p_client.get(k, 0.0) for k in set(e_client) | set(p_client)}
    trips = {k: v for k, v in trips.items() if abs(v) >= 0.02}
    # Beyond Celery's own traffic = the engine's client commands less the peer's, plus the two
    # writes the peer makes itself (which are not Celery's).
    beyond = sum(trips.values()) + 2.0
    rep.values["round_trips"] = beyond
    rep.row(
        "3",
        "client round trips per step beyond Celery's",
        f"{beyond:.2f}",
        "2 (HINCRBY+HSET)",
        f"{beyond / 2:.2f}x",
        "<= 2",
        verdict(beyond <= 2.05),
    )
    # Server time: commandstats counts a script's inner calls both in EVALSHA's time and in
    # their own command's; the inner ones are taken out at their average time per call.
    e_us = slope([c.usec for c in e_runs], [c.usec for c in e_small], n, n_small)
    p_us = slope([c.usec for c in p_runs], [c.usec for c in p_small], n, n_small)
    inner = sum(
        e_lua[k] * e_us.get(k, 0.0) / e_slope[k] for k in e_lua if e_slope.get(k, 0.0) > 0.5
    )
    e_server, p_server = sum(e_us.values()) - inner, sum(p_us.values())
    if p_server > 0:
        rep.row(
            "3",
            "Redis server time per step (commandstats usec)",
            f"{e_server:.0f} us",
            f"{p_server:.0f} us",
            f"{e_server / p_server:.2f}x",
            "info",
        )
    rep.row(
        "3",
        "commands inside batchflow's Lua scripts per step",
        f"{sum(e_lua.values()):.1f}",
        "0",
        "-",
        "info",
    )
    rep.note(
        "3",
        f"INFO commandstats deltas around each run (less INFO and the benchmark's own "
        f"polls), taken as the slope between {n}- and {n_small}-step chains so that "
        f"one-off costs (start, subscribe, final ack) cancel; each command's count is "
        f"its minimum over {len(e_big)}/{len(e_small)} runs because other clients of "
        f"the shared Redis only add. Idle noise measured before: {noise} commands in "
        f"1 s (worker's idle BRPOP and others' traffic).",
    )
    rep.note("3", f"batchflow per step: {fmt_counts(e_slope, 20)}.")
    rep.note(
        "3",
        f"Redis server time per step (commandstats usec slope, minimum over runs): "
        f"batchflow {e_server:.0f} us, of which CLAIM + COMMIT (EVALSHA, inner calls included) "
        f"{e_us.get('evalsha', 0.0):.0f} us; peer {p_server:.0f} us, of which its HINCRBY "
        f"{p_us.get('hincrby', 0.0):.0f} us.",
    )
    rep.note(
        "3",
        f"peer per link: {fmt_counts(p_slope, 20)}; of which Celery/kombu's own "
        f"(less the task's HINCRBY+HSET): {fmt_counts(celery_own, 20)}.",
    )
    rep.note("3", f"batchflow minus peer per step (commandstats): {fmt_counts(extra, 20)}.")
    rep.note(
        "3",
        f"MONITOR (prefix-filtered, slope between {mon['n_big']}- and "
        f"{mon['n_small']}-step chains): batchflow's client commands per step "
        f"{fmt_counts(e_client, 20)}; the peer's {fmt_counts(p_client, 20)}; "
        f"difference {fmt_counts(trips, 20)} (+2 for the peer's own writes = "
        f"{beyond:.2f} round trips beyond Celery's).",
    )
    rep.note("3", f"Inside CLAIM + COMMIT per step (Lua, no round trips): {fmt_counts(e_lua, 20)}.")


def monitor_split(ctx: Context, opts: argparse.Namespace) -> dict[str, Any]:
    n_big, n_small = (100, 20) if opts.quick else (220, 20)
    result: dict[str, Any] = {"n_big": n_big, "n_small": n_small}
    runs: dict[str, dict[int, collections.Counter[tuple[str, str]]]] = {"engine": {}, "peer": {}}
    for steps in (n_small, n_big):
        for kind, fn in (("engine", engine_chain), ("peer", peer_chain)):
            time.sleep(0.15)
            with Monitor(ctx.redis_url, ctx.prefix, {ctx.poll_port}) as mon:
                fn(ctx, steps)
                time.sleep(0.15)
            runs[kind][steps] = mon.counts

    def per_step(kind: str, source: str) -> dict[str, float]:
        big, small = runs[kind][n_big], runs[kind][n_small]
        names = {name for (src, name) in list(big) + list(small) if src == source}
        out = {}
        for name in names:
            value = (big[(source, name)] - small[(source, name)]) / (n_big - n_small)
            if abs(value) >= 0.005:
                out[name] = value
        return out

    result["engine_client"] = per_step("engine", "client")
    result["engine_lua"] = per_step("engine", "lua")
    result["peer_client"] = per_step("peer", "client")
    return result


# -- 4. items throughput through a worker ---------------------------------------------------------


def bench_items(ctx: Context, opts: argparse.Namespace, rep: Report) -> None:
    tag = "4"
    r = ctx.r
    n, m = opts.items, opts.peer_items
    ids = [str(i) for i in range(n)]

    def floor() -> float:
        key = ctx.key("floor", uuid.uuid4().hex[:8])
        t0 = time.perf_counter()
        for _ in ids:
            r.hincrby(key, "n", 1)
        elapsed = time.perf_counter() - t0
        assert int(r.hget(key, "n") or 0) == n
        return elapsed

    def engine_items() -> tuple[float, int]:
        key = ctx.key("items", uuid.uuid4().hex[:8])
        t0 = time.time()
        job_id = ctx.engine.start("increment", owner="bench", ids=ids, params={"key": key})
        fields = wait_job(ctx, job_id, 120)
        assert fields["status"] == "completed" and int(fields["good"]) == n
        assert int(r.hget(key, "n") or 0) == n
        return float(fields["finished_at"]) - t0, int(fields["seq"])

    def celery_items(count: int) -> float:
        key = ctx.key("per-item", uuid.uuid4().hex[:8])
        t0 = time.time()
        for _ in range(count):
            ctx.app.send_task(ITEM_TASK, args=(key,), queue=ctx.queue)
        wait_for(
            lambda: int(ctx.polled("HGET", key, "n") or 0) >= count,
            60 + count * 0.02,
            0.01,
            "Celery per-item tasks",
        )
        return time.time() - t0

    engine_items()  # warm-up
    celery_items(100)
    runs, floor_t = interleave(opts.item_reps, engine_items, floor)
    eng_t, steps = [t for t, _ in runs], runs[-1][1]
    cel_t = [celery_items(m) for _ in range(opts.peer_reps)]
    rq_t, rq_note = rq_items(ctx, opts, m)

    fl, en, ce = n / best(floor_t), n / best(eng_t), m / best(cel_t)
    ratio = en / fl
    rep.values["items_rate"] = en
    rep.row(
        tag,
        f"items/s, HINCRBY, 1 solo worker ({n:,} ids) vs plain loop",
        fmt_rate(en),
        fmt_rate(fl),
        f"{ratio:.2f}x",
        ">= 0.9x",
        verdict(ratio >= 0.9),
    )
    rep.row(
        tag,
        f"items/s vs Celery, one task per item ({m:,})",
        fmt_rate(en),
        fmt_rate(ce),
        f"{en / ce:.1f}x",
        ">= 25x",
        verdict(en / ce >= 25),
    )
    rep.row(
        tag,
        "ceiling: the plain loop (floor) vs Celery per item",
        fmt_rate(fl),
        fmt_rate(ce),
        f"{fl / ce:.1f}x",
        "info",
    )
    if rq_t:
        rq = m / best(rq_t)
        rep.row(
            tag,
            f"items/s vs RQ SimpleWorker, one job per item ({m:,})",
            fmt_rate(en),
            fmt_rate(rq),
            f"{en / rq:.1f}x",
            ">= 25x",
            verdict(en / rq >= 25),
        )
    else:
        rep.row(
            tag, "items/s vs RQ, one job per item", fmt_rate(en), "skipped", "-", ">= 25x", "n/a"
        )
    rep.note(
        tag,
        f"batchflow: an ItemsJob over {n:,} ids (change = one HINCRBY), default step "
        f"size (adaptive, target {ctx.settings.step_target:g} s, start "
        f"{ctx.settings.batch_initial}, max {ctx.settings.batch_max}), one solo "
        f"worker; from just before engine.start() (which stores the ids) to the last "
        f"commit: {', '.join(f'{x:.2f} s' for x in eng_t)} ({steps} steps). Floor: the "
        f"same {n:,} HINCRBYs in a plain loop in this process: "
        f"{', '.join(f'{x:.2f} s' for x in floor_t)}.",
    )
    rep.note(
        tag,
        f"Celery peer: {m:,} send_task calls of a task doing the HINCRBY (same app, "
        f"acks_late, prefetch 1, same solo worker), timed until the counter reached "
        f"{m:,} (10 ms polls): {', '.join(f'{x:.2f} s' for x in cel_t)}. Fewer items "
        f"than batchflow's {n:,} to keep the run short; rates are per item, so the "
        f"comparison stands. The per-item ratio cannot exceed the floor's ({fl / ce:.1f}x "
        f"here): with a one-round-trip change, the items are bounded by Redis round trips "
        f"(floor {1e6 / fl:.0f} us per item) and Celery costs {1e6 / ce:.0f} us per task.",
    )
    rep.note(tag, rq_note)


def rq_items(ctx: Context, opts: argparse.Namespace, m: int) -> tuple[list[float], str]:
    """RQ, one job per item, a warm SimpleWorker subprocess; returns times and a note."""
    os.environ["RQ_KEY_PREFIX"] = f"{ctx.prefix}:rq"  # read by rq when it is first imported
    try:
        import rq
        import rq.defaults
        from rq import Queue
        from rq.serializers import JSONSerializer
    except ImportError:
        return [], "RQ peer skipped: rq is not installed (pip install rq)."
    if getattr(rq.defaults, "RQ_KEY_PREFIX", None) != f"{ctx.prefix}:rq":
        return [], (
            f"RQ peer skipped: rq {rq.__version__} cannot put its keys under this run's "
            "prefix (RQ_KEY_PREFIX needs rq >= 3.0, or rq was imported earlier)."
        )
    import redis

    from bench.peers import rq_increment

    conn = redis.Redis.from_url(ctx.redis_url)
    queue = Queue(ctx.queue, connection=conn, serializer=JSONSerializer)
    env = {
        **os.environ,
        "RQ_KEY_PREFIX": f"{ctx.prefix}:rq",
        "BATCHFLOW_BENCH_REDIS_URL": ctx.redis_url,
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    log_path = os.path.join(ctx.tmp, "rq-worker.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rq.cli",
                "worker",
                "-w",
                "rq.worker.SimpleWorker",
                "-u",
                ctx.redis_url,
                "-n",
                f"{ctx.prefix}-rq",
                "-S",
                "json",
                "--logging_level",
                "WARNING",
                "--disable-job-desc-logging",
                ctx.queue,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    harness._PROCESSES.append(proc)

    def run(count: int) -> float:
        key = ctx.key("rq", uuid.uuid4().hex[:8])
        t0 = time.time()
        for start in range(0, count, 500):
            jobs = [
                Queue.prepare_data(rq_increment, (key,), result_ttl=0)
                for _ in range(start, min(count, start + 500))
            ]
            with conn.pipeline() as pipe:
                queue.enqueue_many(jobs, pipeline=pipe)
                pipe.execute()
        wait_for(
            lambda: int(ctx.polled("HGET", key, "n") or 0) >= count or proc.poll() is not None,
            60 + count * 0.05,
            0.01,
            "RQ jobs",
        )
        if proc.poll() is not None:
            with open(log_path, errors="replace") as f:
                raise RuntimeError("the RQ worker exited:\n" + f.read()[-3000:])
        return time.time() - t0

    try:
        run(50)  # warm-up: the worker is up and has imported everything
        times = [run(m) for _ in range(opts.peer_reps)]
    finally:
        harness._stop_process(proc)
        harness._PROCESSES.remove(proc)
    return times, (
        f"RQ peer: rq {rq.__version__}, {m:,} jobs (JSON serializer, result_ttl=0) "
        f"enqueued with enqueue_many in pipelines of 500, one warm "
        f"SimpleWorker subprocess (no fork per job: RQ's fastest worker), timed until "
        f"the counter reached {m:,}: {', '.join(f'{x:.2f} s' for x in times)}."
    )


# -- 5. stop and progress latency ----------------------------------------------------------------


def bench_latency(ctx: Context, opts: argparse.Namespace, rep: Report) -> None:
    tag = "5"
    r = ctx.r
    # Progress: every commit's event, as engine.follow() yields it, against the peer chain's own
    # PUBLISH of its progress, both timed from the moment the worker had the progress to send.
    p_steps, pause = opts.progress_steps, 0.005
    eng_lat: list[float] = []
    job_id = ctx.engine.start("steps", owner="bench", params={"n": p_steps - 1, "sleep": pause})

    def follow() -> None:
        first = True
        for state in ctx.engine.follow(job_id, keepalive=5):
            now = time.time()
            if state is None:
                continue
            if not first:
                eng_lat.append(now - float(state.fields["updated_at"]))
            first = False

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    follower.join(60 + p_steps * 0.05)
    peer_lat: list[float] = []
    channel = ctx.key("progress", uuid.uuid4().hex[:8])
    pubsub = redis_pubsub(ctx, channel)
    key_done = threading.Event()

    def listen() -> None:
        while not key_done.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                peer_lat.append(time.time() - json.loads(message["data"])["t"])

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    peer_chain(ctx, p_steps, pause, channel)
    time.sleep(0.1)
    key_done.set()
    listener.join(5)
    pubsub.close()
    e50, e99 = percentile(eng_lat, 50), percentile(eng_lat, 99)
    q50, q99 = percentile(peer_lat, 50), percentile(peer_lat, 99)
    rep.row(
        tag,
        "progress latency p50 (commit -> subscriber)",
        ms(e50),
        ms(q50),
        f"{e50 / q50:.2f}x",
        "< 20 ms",
        verdict(e50 < 0.020),
    )
    rep.row(tag, "progress latency p99", ms(e99), ms(q99), f"{e99 / q99:.2f}x", "info")
    rep.note(
        tag,
        f"Progress: a {p_steps}-step job ({pause * 1000:g} ms of work per step); "
        f"latency = when engine.follow() yields the event in this process minus the "
        f"commit's updated_at (time.time() in the worker just before COMMIT): "
        f"{len(eng_lat)} events. Peer: the hand-written chain PUBLISHes "
        f'{{"t": time.time()}} after its writes; a raw redis-py subscriber parses it: '
        f"{len(peer_lat)} events. batchflow's event carries the fields the commit changed and "
        f"the messages it added, merged into the state the stream holds, as a JobState.",
    )

    # Stop: request stop at stratified points within a running step whose length is the step
    # target; latency = request -> the stopped commit's finished_at.
    step = ctx.settings.step_target
    k = opts.stop_trials
    offsets = [(i + 0.5) / k * step for i in range(k)]
    e_stop, p_stop = [], []
    for offset in offsets:
        job_id = ctx.engine.start("steps", owner="bench", params={"n": 1000, "sleep": step})
        job_key = ctx.engine.store.keys.job(job_id)
        wait_for(
            lambda k=job_key: int(ctx.polled("HGET", k, "seq") or 0) >= 1,
            30,
            0.002,
            "the create step",
        )
        time.sleep(offset)
        t0 = time.time()
        ctx.engine.signal(job_id, "stop")
        fields = wait_job(ctx, job_id, 30 + step * 3, 0.01)
        assert fields["status"] == "stopped", fields["status"]
        e_stop.append(float(fields["finished_at"]) - t0)

        key = ctx.key("stop", uuid.uuid4().hex[:8])
        ctx.app.send_task(CHAIN_TASK, args=(key, 1000, step, "", True), queue=ctx.queue)
        time.sleep(offset)
        t0 = time.time()
        r.hset(key, "stop", "1")
        wait_for(
            lambda k=key: ctx.polled("HGET", k, "status") == "stopped",
            30 + step * 3,
            0.01,
            "the peer chain to stop",
        )
        p_stop.append(float(r.hget(key, "finished_at")) - t0)
    overhead = rep.values.get("step_overhead") or measure_overhead(ctx)
    bound = step + 2 * overhead
    e50, emax, q50, qmax = median(e_stop), max(e_stop), median(p_stop), max(p_stop)
    rep.row(
        tag,
        f"stop latency p50 ({k} trials, step {step:g} s)",
        ms(e50),
        ms(q50),
        f"{e50 / q50:.2f}x",
        "info",
    )
    rep.row(
        tag,
        "stop latency max (= p99 of the trials)",
        ms(emax),
        ms(qmax),
        f"{emax / qmax:.2f}x",
        f"<= {ms(bound)}",
        verdict(emax <= bound),
    )
    rep.note(
        tag,
        f"Stop: a job of one-unit steps that each take the step target "
        f"({step:g} s, BATCHFLOW_STEP_TARGET); stop requested {k} times at "
        f"{', '.join(f'{o:.2f}' for o in offsets)} s into the first running step "
        f"(stratified); latency = engine.signal(job, 'stop') -> the commit that set "
        f"status stopped (its finished_at): {', '.join(ms(x) for x in e_stop)}. Peer: "
        f"the hand-written chain with the same pretend work, checking a stop flag "
        f"(HGET) at the start of each link: {', '.join(ms(x) for x in p_stop)}. Goal "
        f"bound = step target + 2 x step overhead ({ms(overhead)}, benchmark 2) = "
        f"{ms(bound)}.",
    )


def redis_pubsub(ctx: Context, channel: str) -> Any:
    import redis

    pubsub = redis.Redis.from_url(ctx.redis_url, decode_responses=True).pubsub(
        ignore_subscribe_messages=True
    )
    pubsub.subscribe(channel)
    return pubsub


def measure_overhead(ctx: Context) -> float:
    engine_chain(ctx, 30)
    return engine_chain(ctx, 200) / 200


# -- 6. scale: concurrent jobs on one and two worker processes ----------------------------------


def bench_scale(ctx: Context, opts: argparse.Namespace, rep: Report) -> None:
    tag = "6"
    jobs, steps = opts.jobs, opts.job_steps
    total = jobs * steps

    def cpu() -> float:
        return sum(w.cpu_seconds() or 0.0 for w in ctx.workers)

    idle: dict[int, list[float]] = collections.defaultdict(list)

    def engine_many() -> tuple[float, float]:
        m0, cpu0, t0 = harness.machine_cpu(), cpu(), time.time()
        ids = [
            ctx.engine.start("steps", owner="bench", params={"n": steps - 1}) for _ in range(jobs)
        ]
        active = ctx.engine.store.keys.active
        wait_for(lambda: ctx.polled("ZCARD", active) == 0, 60 + total * 0.05, 0.02, "all jobs")
        ends = []
        for job_id in ids:
            state = ctx.engine.state(job_id)
            assert state.status.value == "completed" and int(state.fields["seq"]) == steps
            ends.append(float(state.fields["finished_at"]))
        share = harness.idle_share(m0, harness.machine_cpu())
        if share is not None:
            idle[len(ctx.workers)].append(share)
        return total / (max(ends) - t0), (cpu() - cpu0) / total

    def peer_many() -> tuple[float, float]:
        run = uuid.uuid4().hex[:8]
        done = ctx.key("scale-done", run)
        keys = [ctx.key("scale", run, str(j)) for j in range(jobs)]
        cpu0, t0 = cpu(), time.time()
        for key in keys:
            ctx.app.send_task(CHAIN_TASK, args=(key, steps, 0.0, "", False, done), queue=ctx.queue)
        wait_for(
            lambda: int(ctx.polled("GET", done) or 0) >= jobs,
            60 + total * 0.05,
            0.02,
            "all peer chains",
        )
        ends = [float(ctx.r.hget(key, "finished_at")) for key in keys]
        return total / (max(ends) - t0), (cpu() - cpu0) / total

    results: dict[int, tuple[list[float], list[float]]] = {}
    cpus: dict[int, tuple[list[float], list[float]]] = {}
    extra = None
    try:
        for workers in (1, 2):
            if workers == 2:
                extra = ctx.start_worker("w2")
                engine_many()  # warm-up of the new worker
                peer_many()
            e_runs, p_runs = interleave(opts.scale_reps, engine_many, peer_many)
            results[workers] = ([r for r, _ in e_runs], [r for r, _ in p_runs])
            cpus[workers] = ([c for _, c in e_runs], [c for _, c in p_runs])
    finally:
        if extra is not None:
            ctx.stop_worker(extra)
    for workers, (e, p) in results.items():
        em, pm = max(e), max(p)
        rep.row(
            tag,
            f"steps/s, {jobs} concurrent jobs, {workers} solo worker(s)",
            fmt_rate(em),
            fmt_rate(pm),
            f"{em / pm:.2f}x",
            "info",
        )
        rep.values[f"scale_{workers}"] = em
        rep.values[f"scale_peer_{workers}"] = pm
    if 1 in results and 2 in results:
        e1, e2 = max(results[1][0]), max(results[2][0])
        p1, p2 = max(results[1][1]), max(results[2][1])
        rep.row(
            tag,
            "scaling, 2 workers / 1 worker",
            f"{e2 / e1:.2f}x",
            f"{p2 / p1:.2f}x",
            f"{(e2 / e1) / (p2 / p1):.2f}x",
            "info",
        )
    rep.note(
        tag,
        f"{jobs} jobs of {steps} no-op steps each (create + {steps - 1} one-unit "
        f"steps) started at once, {total:,} steps; steps/s = {total:,} / (last "
        f"finished_at - first start). Peer: {jobs} hand-written chains of {steps} "
        f"links. Workers are separate `celery worker -P solo` processes on a "
        f"{os.cpu_count()}-core machine that also runs Redis and this script. Runs: "
        + "; ".join(
            f"{w} worker(s): batchflow "
            f"{', '.join(fmt_rate(x) for x in e)}, peer "
            f"{', '.join(fmt_rate(x) for x in p)}"
            for w, (e, p) in results.items()
        )
        + ". Machine CPU idle during batchflow's runs: "
        + "; ".join(f"{w} worker(s) {median(v) * 100:.0f}%" for w, v in idle.items())
        + ". Worker CPU per step (all worker processes): "
        + "; ".join(
            f"{w} worker(s): batchflow {ms(best(e))}, peer {ms(best(p))}"
            for w, (e, p) in cpus.items()
        )
        + ".",
    )


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about 80 s)")
    parser.add_argument("--items", type=int, help="ids in the item jobs (default 20000)")
    parser.add_argument(
        "--peer-items", type=int, help="items for the one-task-per-item peers (default 600)"
    )
    parser.add_argument(
        "--inline-items", type=int, help="ids in benchmark 1's item job (default 10000)"
    )
    parser.add_argument("--units", type=int, help="no-op units in benchmark 1 (default 1000000)")
    parser.add_argument("--steps", type=int, help="steps in benchmarks 2 and 3 (default 500)")
    parser.add_argument(
        "--reps",
        type=int,
        help="repetitions of each timed run (default 3, --quick 2; the item runs do one more, "
        "the one-task-per-item peers one fewer)",
    )
    parser.add_argument("--jobs", type=int, help="concurrent jobs in benchmark 6 (default 100)")
    parser.add_argument("--job-steps", type=int, help="steps per job in benchmark 6 (default 12)")
    parser.add_argument("--stop-trials", type=int, help="stop requests in benchmark 5 (default 6)")
    parser.add_argument(
        "--progress-steps", type=int, help="steps of the progress-latency job (default 200)"
    )
    parser.add_argument("--rows", type=int, help="table rows in benchmark 8 (default 1000000)")
    parser.add_argument(
        "--batch-items", type=int, help="items of benchmark 9's jobs (default 100000)"
    )
    parser.add_argument(
        "--import-rows", type=int, help="CSV rows imported in benchmark 10 (default 1000000)"
    )
    parser.add_argument("--upload-mb", type=int, help="upload size in benchmark 11 (MiB, 1024)")
    parser.add_argument("--streams", type=int, help="event streams in benchmark 12 (default 200)")
    parser.add_argument("--lane-items", type=int, help="ids of benchmark 13's job (default 20000)")
    parser.add_argument(
        "--stream-steps", type=int, help="steps of each job in benchmark 12 (default 10)"
    )
    parser.add_argument(
        "--kills",
        type=int,
        help="SIGKILLs per configuration in benchmark 7 (default 5, --quick 3)",
    )
    parser.add_argument(
        "--only",
        default="1,2,3,4,5,6,7,8,9,10,11,12,13",
        help="comma-separated benchmarks to run (1-13; 2 and 3 run together)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BATCHFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    opts = parser.parse_args(argv)
    if opts.kills is not None and opts.kills < 1:
        parser.error("--kills must be at least 1")
    quick = opts.quick
    defaults = {
        "items": 8000 if quick else 20_000,
        "inline_items": 3000 if quick else 10_000,
        "peer_items": 200 if quick else 600,
        "units": 200_000 if quick else 1_000_000,
        "steps": 150 if quick else 500,
        "reps": 2 if quick else 3,
        "jobs": 100,
        "job_steps": 4 if quick else 12,
        "stop_trials": 3 if quick else 6,
        "progress_steps": 60 if quick else 200,
        "kills": 3 if quick else 5,
        "rows": 100_000 if quick else 1_000_000,
        "batch_items": 20_000 if quick else 100_000,
        "import_rows": 100_000 if quick else 1_000_000,
        "upload_mb": 200 if quick else 1024,
        "streams": 60 if quick else 200,
        "stream_steps": 5 if quick else 10,
        "lane_items": 4000 if quick else 20_000,
    }
    for name, value in defaults.items():
        if getattr(opts, name) is None:
            setattr(opts, name, value)
    opts.step_reps = opts.reps
    opts.item_reps = opts.reps + 1 if opts.reps > 1 else 1
    opts.scale_reps = opts.reps
    opts.peer_reps = max(1, opts.reps - 1)
    opts.lane_reps = max(1, opts.reps - 1)
    opts.only = {int(x) for x in opts.only.split(",") if x.strip()}
    return opts


#: The benchmarks that run on the run's one shared worker (1 has none; 7 starts its own).
SHARED_WORKER = {2, 3, 4, 5, 6, 8, 9, 10, 12}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    os.environ["BATCHFLOW_BENCH_REDIS_URL"] = opts.redis_url
    harness.install_signal_handlers()
    started = time.time()
    load0 = os.getloadavg()[0]
    ctx = Context(opts.redis_url)
    rep = Report()
    info = ctx.r.info("server")
    print(
        f"batchflow benchmarks: prefix {ctx.prefix}, Redis {info['redis_version']} at "
        f"{opts.redis_url}, Python {platform.python_version()}, {os.cpu_count()} cores, "
        f"load {load0:.2f}{', quick' if opts.quick else ''}",
        flush=True,
    )
    plan = [
        ({1}, "1. engine units/s in-process", bench_inline),
        ({2, 3}, "2+3. step overhead and Redis commands per step", bench_steps),
        ({4}, "4. items throughput", bench_items),
        ({5}, "5. progress and stop latency", bench_latency),
        ({6}, "6. scale", bench_scale),
        ({7}, "7. work repeated per SIGKILL", bench_crash),
        ({8}, "8. keyset export from PostgreSQL", bench_export),
        ({9}, "9. batch change", bench_batch),
        ({10}, "10. import memory", bench_import),
        ({11}, "11. upload memory", bench_upload),
        ({12}, "12. event streams over two web processes", bench_streams),
        ({13}, "13. one job in lanes", bench_lanes),
    ]
    try:
        for numbers, title, bench in plan:
            if not numbers & opts.only:
                continue
            if numbers & SHARED_WORKER and not ctx.workers:
                ctx.start_worker("w1")
            print(f"{title} ...", end=" ", flush=True)
            t0 = time.time()
            bench(ctx, opts, rep)
            print(f"{time.time() - t0:.0f} s", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping workers and deleting this run's keys", file=sys.stderr)
        return 130
    finally:
        ctx.close()
    print()
    print(rep.render())
    print()
    print("How each figure was measured (absolute numbers):")
    for bench, notes in sorted(rep.notes.items(), key=lambda kv: int(kv[0])):
        for text in notes:
            print(textwrap.fill(text, 100, initial_indent=f"{bench}. ", subsequent_indent="   "))
    load = os.getloadavg()[0]
    print(
        f"\nTotal time {time.time() - started:.0f} s; load average at the start "
        f"{load0:.2f}, at the end {load:.2f} on {os.cpu_count()} cores; keys under "
        f"{ctx.prefix}: deleted."
    )
    if max(load0, load) > (os.cpu_count() or 1):
        print(
            "Note: other processes competed for the CPU during this run; absolute times are "
            "inflated and even the best-of-N ratios less exact than on an idle machine."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
