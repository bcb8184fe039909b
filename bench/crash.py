"""Benchmark 7: work repeated per SIGKILL, without checkpoints and with the default ones.

Steps are at-least-once: a step whose worker is SIGKILLed runs again on another worker, from the
job's committed progress. While an item step runs, the heartbeat commits its progress (the ids
handled so far, with their outcomes) every ``BATCHFLOW_CHECKPOINT_INTERVAL`` (0.1 s by default),
so the step run again repeats only the ids after the last checkpoint. With an interval far longer
than a step (3600 s), nothing is committed before the step ends: all the ids the step had
changed are changed again.

One kill:

- the *victim*, a fresh ``celery worker -P solo`` subprocess with the configuration's settings,
  is the only worker on the run's queue; the *rescuer*, a solo worker at the default settings, is
  up throughout but consumes a queue of its own, so it runs nothing until it takes a step over;
- a job of ``SLICE`` ids (``SlowIncrement``: ``HINCRBY key <id> 1``, then 2 ms of pretend work;
  fixed steps of ``SLICE`` ids, about a second): its create step, then one step over all ids;
- at a stratified random delay after the create step's commit (0.2-0.9 s, inside the 1 s step),
  the worker holding the step (the job's ``lease_owner``: ``host:pid:tag``) is checked to be the
  victim and its process group is SIGKILLed; the next kill's victim starts booting at once;
- a live worker's maintenance finds the dead worker (``BATCHFLOW_WORKER_TTL``) and re-enqueues
  the step on its own queue; the step runs again, one id per step through the lost slice;
- once the job has completed, the per-id counts say exactly which ids were changed twice.

Kills alternate between the two configurations in pairs (before, after, after, before, ...),
each pair at the same delay, so that both see the same points within a step.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time
import uuid
from typing import TYPE_CHECKING, Any

from batchflow.buffer import CHECKPOINT_GAP
from batchflow.config import DEFAULTS
from batchflow.schema import is_terminal
from bench.handlers import SlowIncrement
from bench.harness import Context, Worker, wait_for

if TYPE_CHECKING:
    from bench.run import Report

TAG = "7"
#: Ids per job: exactly one step's slice (the handler's fixed batch_size).
SLICE = SlowIncrement.batch_size
#: Pretend work per id, after its HINCRBY.
SLEEP = 0.002
#: The kill lands this many seconds after the create step's commit (stratified within).
DELAYS = (0.2, 0.9)
#: The victim's pace (seconds per id) is measured over this window just before the kill.
PACE_WINDOW = 0.15
#: The issue's goal: at most about one default checkpoint interval of work repeated per kill.
GOAL = float(DEFAULTS["BATCHFLOW_CHECKPOINT_INTERVAL"])
#: The two configurations: one setting apart, everything else the defaults.
CONFIGS: dict[str, dict[str, Any]] = {
    "none": {"BATCHFLOW_CHECKPOINT_INTERVAL": 3600},
    "checkpoints": {"BATCHFLOW_CHECKPOINT_INTERVAL": GOAL},
}


@dataclasses.dataclass
class Kill:
    """What one SIGKILL cost."""

    config: str
    delay: float  # planned: seconds from the create step's commit to the kill
    into: float  # measured: the kill's time less the create step's commit time
    done: int  # ids the victim had changed when it was killed
    pace: float  # seconds per id the victim took over the last PACE_WINDOW before the kill
    saved: int  # ids committed (the job's `processed`) just after the kill
    checkpoints: int  # checkpoints the step had committed
    repeated: int  # ids changed twice in the end
    takeover: float  # the kill -> the first commit after it
    total: float  # the job's start -> its last commit

    @property
    def work(self) -> float:
        """Seconds of work repeated: the repeated ids at the victim's own pace."""
        return self.repeated * self.pace


def _plan(kills: int, rng: random.Random) -> list[tuple[str, float]]:
    """``kills`` pairs (one kill per configuration, same delay), order alternating."""
    lo, hi = DELAYS
    delays = [lo + (hi - lo) * (i + rng.random()) / kills for i in range(kills)]
    rng.shuffle(delays)
    out = []
    for i, delay in enumerate(delays):
        pair = ("none", "checkpoints") if i % 2 == 0 else ("checkpoints", "none")
        out += [(config, delay) for config in pair]
    return out


def _job_fields(ctx: Context, job_key: str, *names: str) -> list[str | None]:
    return list(ctx.polled("HMGET", job_key, *names))


def _created(ctx: Context, job_key: str) -> float | None:
    """The create step's commit time, once it has committed (seq 1)."""
    seq, updated_at = _job_fields(ctx, job_key, "seq", "updated_at")
    if int(seq or 0) < 1:
        return None
    if int(seq or 0) > 1:
        raise RuntimeError(f"job {job_key}: the first item step ended before the kill")
    return float(updated_at or 0)


def _claimed_by(ctx: Context, job_key: str) -> str | None:
    """The worker holding step 1 (``host:pid:tag``), once claimed."""
    seq, owner = _job_fields(ctx, job_key, "seq", "lease_owner")
    return owner if int(seq or 0) == 1 and owner else None


def _first_commit_after(ctx: Context, job_key: str, killed_at: float) -> float:
    """Seconds from the kill to the commit of the step run again (seq 1 -> 2)."""
    seen_at = wait_for(
        lambda: int(_job_fields(ctx, job_key, "seq")[0] or 0) >= 2 and time.time(),
        60,
        0.002,
        "the step to be taken over",
    )
    seq, updated_at = _job_fields(ctx, job_key, "seq", "updated_at")
    if seq == "2":  # that commit's own time; else the moment the poll saw it
        return float(updated_at or 0) - killed_at
    return float(seen_at) - killed_at


def _check_counts(ctx: Context, key: str, ids: list[str], fields: dict[str, str]) -> int:
    """The job completed with every id good, each changed once or twice, after one lost step;
    returns how many ids were changed twice."""
    if fields.get("status") != "completed" or int(fields.get("good") or 0) != len(ids):
        raise RuntimeError(
            f"benchmark 7: the job ended {fields.get('status')} with good={fields.get('good')} "
            f"of {len(ids)} (error: {fields.get('error')!r})"
        )
    counts = {k: int(v) for k, v in ctx.r.hgetall(key).items()}
    wrong = {i: counts.get(i, 0) for i in ids if counts.get(i, 0) not in (1, 2)}
    if wrong or len(counts) != len(ids):
        raise RuntimeError(f"benchmark 7: ids changed 0 or more than 2 times: {wrong}")
    if fields.get("recoveries") != "1":
        raise RuntimeError(f"benchmark 7: {fields.get('recoveries')} steps recovered, not 1")
    return sum(1 for v in counts.values() if v == 2)


class Victims:
    """The victim workers, one per kill, each started while the previous kill is taken over."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.next: Worker | None = None

    def boot(self, config: str) -> None:
        self.next = self.ctx.start_worker(f"victim-{config}", CONFIGS[config], wait=False)

    def take(self, config: str) -> Worker:
        if self.next is None or self.next.settings != CONFIGS[config]:
            raise RuntimeError(f"no victim booted for {config}")
        victim, self.next = self.next, None
        victim.wait_ready()
        return victim

    def stop(self) -> None:
        if self.next is not None:
            self.ctx.stop_worker(self.next)
            self.next = None


def _kill_one(ctx: Context, victims: Victims, config: str, delay: float, after: str | None) -> Kill:
    victim = victims.take(config)
    key = ctx.key("crash", uuid.uuid4().hex[:8])
    ids = [f"c{i:04d}" for i in range(SLICE)]
    t0 = time.time()
    job_id = ctx.engine.start(
        "slow-increment", owner="bench", ids=ids, params={"key": key, "sleep": SLEEP}
    )
    job_key = ctx.engine.store.keys.job(job_id)
    created = wait_for(lambda: _created(ctx, job_key), 30, 0.002, "the create step")
    owner = wait_for(lambda: _claimed_by(ctx, job_key), 10, 0.002, "the item step's claim")
    if int(owner.rsplit(":", 2)[1]) != victim.proc.pid:
        raise RuntimeError(f"benchmark 7: step 1 is held by {owner}, not the victim")
    time.sleep(max(0.0, created + delay - PACE_WINDOW - time.time()))
    paced_from, paced_done = time.time(), ctx.r.hlen(key)
    time.sleep(max(0.0, created + delay - time.time()))
    killed_at = victim.kill()
    done = ctx.r.hlen(key)
    pace = (killed_at - paced_from) / max(1, done - paced_done)
    seq, saved, checkpoints = _job_fields(ctx, job_key, "seq", "processed", "checkpoints")
    ctx.stop_worker(victim)
    if seq != "1" or done >= SLICE:
        raise RuntimeError(f"benchmark 7: the kill came after the step ended (seq {seq})")
    if after is not None:
        victims.boot(after)  # boots while the step is taken over
    takeover = _first_commit_after(ctx, job_key, killed_at)
    wait_for(lambda: is_terminal(ctx.polled("HGET", job_key, "status")), 120, 0.02, f"job {job_id}")
    fields: dict[str, str] = ctx.polled("HGETALL", job_key)
    repeated = _check_counts(ctx, key, ids, fields)
    return Kill(
        config,
        delay,
        killed_at - created,
        done,
        pace,
        int(saved or 0),
        int(checkpoints or 0),
        repeated,
        takeover,
        float(fields["finished_at"]) - t0,
    )


def bench_crash(ctx: Context, opts: argparse.Namespace, rep: Report) -> None:
    # The run's shared worker would take steps from the victims: only this benchmark's workers
    # consume the run's queue while it runs.
    for worker in list(ctx.workers):
        ctx.stop_worker(worker)
    plan = _plan(opts.kills, random.Random())
    victims = Victims(ctx)
    victims.boot(plan[0][0])
    rescuer = ctx.start_worker("rescuer", {"BATCHFLOW_QUEUE": f"{ctx.queue}.rescue"})
    kills: list[Kill] = []
    try:
        for i, (config, delay) in enumerate(plan):
            after = plan[i + 1][0] if i + 1 < len(plan) else None
            kills.append(_kill_one(ctx, victims, config, delay, after))
    finally:
        victims.stop()
        ctx.stop_worker(rescuer)
    report(ctx, rep, kills)


def report(ctx: Context, rep: Report, kills: list[Kill]) -> None:
    by = {c: [k for k in kills if k.config == c] for c in CONFIGS}
    after, before = by["checkpoints"], by["none"]

    mean = statistics.fmean
    ids_a, ids_b = mean([k.repeated for k in after]), mean([k.repeated for k in before])
    work_a, work_b = mean([k.work for k in after]), mean([k.work for k in before])
    top_a, top_b = max(k.work for k in after), max(k.work for k in before)
    n = len(after)
    rep.row(
        TAG,
        f"repeated work per SIGKILL, checkpoints vs none, mean ({n}+{n})",
        f"{ids_a:.0f} ids, {work_a * 1000:.0f} ms",
        f"{ids_b:.0f} ids, {work_b * 1000:.0f} ms",
        f"{work_a / work_b:.3f}x" if work_b else "-",
        f"<= {GOAL * 1000:.0f} ms",
        "met" if work_a <= GOAL else "MISSED",
    )
    rep.row(
        TAG,
        "repeated work per SIGKILL, max (ids and ms apart)",
        f"{max(k.repeated for k in after)} ids, {top_a * 1000:.0f} ms",
        f"{max(k.repeated for k in before)} ids, {top_b * 1000:.0f} ms",
        f"{top_a / top_b:.3f}x" if top_b else "-",
        "info",
    )
    take_a = statistics.median([k.takeover for k in after])
    take_b = statistics.median([k.takeover for k in before])
    rep.row(
        TAG,
        "takeover, SIGKILL -> next commit (median)",
        f"{take_a:.2f} s",
        f"{take_b:.2f} s",
        f"{take_a / take_b:.2f}x",
        "info",
    )
    notes(ctx, rep, kills)


def notes(ctx: Context, rep: Report, kills: list[Kill]) -> None:
    s = ctx.settings
    rep.note(
        TAG,
        f"batchflow column: checkpoints every {GOAL:g} s (BATCHFLOW_CHECKPOINT_INTERVAL, the "
        f"default); peer column: the same code with no checkpoint during a step (interval "
        f"3600 s), the 'before'. Each kill: a job of {SLICE} ids (HINCRBY <id> then "
        f"{SLEEP * 1000:g} ms of sleep each, fixed steps of {SLICE} ids) on a fresh solo worker, "
        f"the only one on the run's queue; the worker holding the item step (its lease_owner) "
        f"SIGKILLed {DELAYS[0]:g}-{DELAYS[1]:g} s after the create step's commit (stratified "
        f"random, the same delays for both, interleaved before/after/after/before); a rescuer "
        f"(default settings, own queue) or the next kill's victim takes the step over and the "
        f"job completes. Repeated = ids whose HINCRBY count is 2 (every job completed with "
        f"good = {SLICE}, every id changed once or twice); ms = repeated ids x the victim's own "
        f"time per id, measured over the last {PACE_WINDOW:g} s before the kill (ids counted "
        f"then and at the kill): {statistics.fmean([k.pace for k in kills]) * 1000:.2f} ms on "
        f"average. Expected with checkpoints: the ids since the last checkpoint, about half an "
        f"interval on average and at most an interval plus {CHECKPOINT_GAP * 1000:g} ms "
        f"(CHECKPOINT_GAP) and one RENEW; without: every id the step had done.",
    )
    for name in CONFIGS:
        group = [k for k in kills if k.config == name]
        rep.note(
            TAG,
            f"{name}: "
            + "; ".join(
                f"killed {k.into:.2f} s in, {k.done} done, {k.saved} committed "
                f"(checkpoints: {k.checkpoints}), {k.repeated} repeated "
                f"({k.work * 1000:.0f} ms), takeover {k.takeover:.2f} s, job {k.total:.1f} s"
                for k in group
            )
            + ".",
        )
    odd = [k for k in kills if k.repeated != k.done - k.saved]
    rep.note(
        TAG,
        f"Takeover = SIGKILL -> the commit of the step run again, at the default "
        f"BATCHFLOW_WORKER_TTL {s.worker_ttl:g} s and maintenance interval "
        f"{s.maintenance_interval:g} s. Maintenance takes a worker for dead once it gave no "
        f"sign of life and its lease was last renewed more than the TTL ago: with checkpoints "
        f"the last renewal is the last checkpoint, just before the kill; without, the claim, "
        f"{DELAYS[0]:g}-{DELAYS[1]:g} s before it, so takeover can come a few tenths of a second "
        f"sooner without checkpoints. The step run again goes one id per step through the "
        f"lost slice (CLAIM's careful_until), so a job takes a few seconds more after a "
        f"takeover: one-id steps, not repeated work. In every kill, repeated = ids done - ids "
        f"committed at the kill"
        + (
            "."
            if not odd
            else f", except {len(odd)}: "
            + ", ".join(f"{k.config} {k.repeated} vs {k.done - k.saved}" for k in odd)
            + "."
        ),
    )
