"""Benchmark 13: one job in lanes against one lane, Celery's one task per item, and a thread pool.

A change that waits 2 ms on I/O (``time.sleep``), ``--lane-items`` ids (20,000), one worker
subprocess with the prefork pool and concurrency 8 (``celery worker -P prefork -c 8``):

- batchflow, the job in one lane (one chain of steps: one process works, seven idle);
- batchflow, the same job in eight lanes (``lanes=8``);
- Celery, one task per item (``bench.io``: the wait, then an ``INCR``), sent in one pipeline of
  ``send_task`` calls before the clock's end is awaited, on the same worker;
- the floor: a plain ``ThreadPoolExecutor(8)`` in the benchmark's own process making the same
  waits, with no broker, no Redis and no bookkeeping.

Each side is timed from the start call to the job's ``finished_at`` (to the last ``INCR`` seen,
to the pool's end). Runs are interleaved, each side warmed up first, and the best run counts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time
import uuid
from typing import Any

from bench.harness import Context, wait_for
from bench.peers import IO_TASK

WAIT = 0.002
CONCURRENCY = 8


def bench_lanes(ctx: Context, opts: argparse.Namespace, rep: Any) -> None:
    tag, n = "13", opts.lane_items
    worker = ctx.start_worker("prefork8", pool="prefork", concurrency=CONCURRENCY)

    def job(lanes: int, items: int = n) -> float:
        ids = [str(i) for i in range(items)]
        t0 = time.time()
        job_id = ctx.engine.start(
            "waiting-items", owner="bench", params={"wait": WAIT}, ids=ids, lanes=lanes
        )
        timeout = 60 + items * WAIT * 2
        wait_for(lambda: ctx.engine.state(job_id).status.terminal, timeout, 0.05, "the job")
        state = ctx.engine.state(job_id)
        assert state.status.value == "completed" and state.count("processed") == items, state
        return float(state.fields["finished_at"]) - t0

    def celery(items: int = n) -> float:
        done = ctx.key("lanes-io", uuid.uuid4().hex[:8])
        t0 = time.time()
        with ctx.app.producer_or_acquire() as producer:
            for _ in range(items):
                ctx.app.send_task(IO_TASK, args=(done, WAIT), queue=ctx.queue, producer=producer)
        wait_for(lambda: int(ctx.polled("GET", done) or 0) >= items, 60 + items, 0.02, "peer")
        return time.time() - t0

    def threads(items: int = n) -> float:
        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(lambda _: time.sleep(WAIT), range(items)))
        return time.time() - t0

    try:
        warm = max(400, n // 20)
        job(8, warm), job(1, warm), celery(warm), threads(warm)  # noqa: B018 - warm-ups
        runs: dict[str, list[float]] = {"1": [], "8": [], "celery": [], "threads": []}
        for _ in range(opts.lane_reps):
            runs["8"].append(job(8))
            runs["celery"].append(celery())
            runs["threads"].append(threads())
            runs["1"].append(job(1))
    finally:
        ctx.stop_worker(worker)
    best = {side: min(times) for side, times in runs.items()}
    rate = {side: n / t for side, t in best.items()}
    rows = (
        ("8 lanes vs 1 lane", rate["8"], rate["1"], 6.0),
        ("8 lanes vs Celery, one task per item", rate["8"], rate["celery"], 1.5),
        ("8 lanes vs a thread pool of 8 (the floor)", rate["8"], rate["threads"], 0.8),
    )
    for title, mine, peer, goal in rows:
        ratio = mine / peer
        rep.row(
            tag,
            f"{title}, {n:,} items waiting {WAIT * 1000:.0f} ms, prefork -c {CONCURRENCY}",
            f"{mine:,.0f}/s",
            f"{peer:,.0f}/s",
            f"{ratio:.2f}x",
            f">= {goal}x",
            "met" if ratio >= goal else "NOT met",
        )
    rep.note(
        tag,
        f"Lanes: {n:,} ids, each waiting {WAIT * 1000:.0f} ms, one `celery worker -P prefork "
        f"-c {CONCURRENCY}` subprocess; best of {opts.lane_reps} interleaved runs after warm-ups "
        "of 5 %. Seconds per run: "
        + "; ".join(
            f"{side} {', '.join(f'{t:.2f}' for t in times)}" for side, times in runs.items()
        ),
    )
