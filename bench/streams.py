"""Benchmark 12: event streams across web processes.

N jobs, each followed by one event stream (``engine.follow()`` in a thread, as a progress page's
SSE stream does), the streams split between two follower subprocesses standing for two web
processes. Each process should receive exactly the events of its own streams' jobs (its
``EventHub.received``, counted), and each event should reach its stream quickly (commit's
``updated_at`` to the follower's ``time.time()``; the worker and the followers are on one
machine, so their clocks agree). The peer is the former design, a process subscribed to every
job's channel: a pattern subscriber in the benchmark process counts what such a process receives.

    python -m bench.streams follow <job ids...>   # one follower process (run by the benchmark)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from batchflow.config import Settings  # noqa: E402
from batchflow.schema import F, is_terminal  # noqa: E402
from batchflow.store import Store  # noqa: E402
from bench.harness import Context, percentile, wait_for  # noqa: E402


def follow(job_ids: list[str]) -> dict[str, Any]:
    """Follow each job in a thread until it ends; what this process received, and when."""
    settings = Settings.from_mapping()
    store = Store.from_url(settings.redis_url, settings.key_prefix)
    latencies: list[float] = []
    ready = threading.Barrier(len(job_ids) + 1)
    lock = threading.Lock()

    def stream(job_id: str) -> None:
        first = True
        for snapshot in store.follow(job_id, timeout=30):
            now = time.time()
            if first:
                ready.wait()
                first = False
                continue
            if snapshot is None:
                continue
            with lock:
                latencies.append(now - float(snapshot[0][F.UPDATED_AT]))
            if is_terminal(snapshot[0].get(F.STATUS)):
                return

    threads = [threading.Thread(target=stream, args=(j,), daemon=True) for j in job_ids]
    for thread in threads:
        thread.start()
    ready.wait()
    print("ready", flush=True)
    for thread in threads:
        thread.join(300)
    return {"received": store.events.received, "latencies": latencies}


class Held:
    """A dispatcher that keeps the steps it is given, to send them later."""

    def __init__(self, held: list[tuple[str, int]]) -> None:
        self.held = held

    def enqueue_step(self, job_id: str, seq: int, countdown: float = 0.0, lane: int = 0) -> None:
        self.held.append((job_id, seq))


def bench_streams(ctx: Context, opts: Any, rep: Any) -> None:
    tag = "12"
    jobs, steps = opts.streams, opts.stream_steps
    # The jobs are created without their first step, so every stream is open before any runs.
    held: list[tuple[str, int]] = []
    dispatcher = ctx.engine.dispatcher
    ctx.engine.dispatcher = Held(held)
    try:
        job_ids = [
            ctx.engine.start("steps", owner=f"s{i % 20}", params={"n": steps, "sleep": 0.002})
            for i in range(jobs)
        ]
    finally:
        ctx.engine.dispatcher = dispatcher
    halves = [job_ids[0::2], job_ids[1::2]]
    env = {**os.environ, **{k: str(v) for k, v in ctx.config.items()}}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    followers = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.streams", "follow", *half],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for half in halves
    ]
    peer = ctx.r.pubsub(ignore_subscribe_messages=True)
    peer.psubscribe(f"{ctx.prefix}:*:events")
    peer_received = 0
    try:
        for process in followers:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for job_id, seq in held:
            dispatcher.enqueue_step(job_id, seq)
        deadline = time.monotonic() + 120 + jobs * steps * 0.02
        while any(p.poll() is None for p in followers) and time.monotonic() < deadline:
            if peer.get_message(timeout=0.1) is not None:
                peer_received += 1
        while peer.get_message(timeout=0.2) is not None:
            peer_received += 1
        results = [json.loads(p.communicate(timeout=30)[0].splitlines()[-1]) for p in followers]
    finally:
        peer.close()
        for process in followers:
            if process.poll() is None:
                process.kill()
    events = {j: int(ctx.r.hget(ctx.engine.store.keys.job(j), F.EVENTS) or 0) for j in job_ids}
    own = [sum(events[j] for j in half) for half in halves]
    received = [r["received"] for r in results]
    latencies = [x for r in results for x in r["latencies"]]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    exact = received == own
    rep.row(
        tag,
        f"events one web process receives, {jobs} streams over 2",
        f"{received[0]:,} + {received[1]:,}",
        f"{peer_received:,} each",
        f"{max(received) / peer_received:.2f}x",
        "= its own streams' events",
        "ok" if exact else "MISSED",
    )
    rep.row(
        tag,
        "event latency p50 / p99 (commit -> stream)",
        f"{p50 * 1000:.1f} / {p99 * 1000:.1f} ms",
        "",
        "",
        "p99 < 50 ms",
        "ok" if p99 < 0.050 else "MISSED",
    )
    rep.note(
        tag,
        f"Streams: {jobs} jobs of {steps} one-unit steps (2 ms each), every job followed by one "
        f"stream (engine.follow in a thread), the streams split over two follower processes "
        f"standing for two web processes; the jobs start once every stream is open. Each "
        f"process received {received} events (its EventHub's count); its own jobs published "
        f"{own} (each job's events field); the peer, a pattern subscription on every job's "
        f"channel (how each process subscribed before), received {peer_received:,}. Latency: "
        f"each event's arrival in its stream minus the commit's updated_at, {len(latencies):,} "
        f"events.",
    )
    ended = [ctx.engine.store.snapshot(j)[0][F.STATUS] for j in job_ids]
    wait_for(lambda: all(is_terminal(status) for status in ended), 1, what="every job to end")


if __name__ == "__main__":
    if sys.argv[1:2] == ["follow"]:
        print(json.dumps(follow(sys.argv[2:])), flush=True)
