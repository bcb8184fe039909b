"""Events that scale: a process subscribes only to the jobs its streams follow, and leaves their
channels when the last stream of a job ends; a commit publishes what changed, numbered, and only
when someone follows the job; a follower that misses an event reads the job anew."""

from __future__ import annotations

import json
import threading
from typing import Any

import redis

from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.events import POLL
from batchflow.schema import F
from batchflow.store import Store
from tests.handlers import REDIS_URL, make_registry
from tests.helpers import ListDispatcher, make_config, wait_for


def _engine(settings: Settings, url: str | None = None) -> Engine:
    """An engine with a store of its own: what one web process holds."""
    store = Store.from_url(url or settings.redis_url, settings.key_prefix)
    engine = Engine(settings, store, make_registry())
    engine.dispatcher = ListDispatcher()
    return engine


def _numsub(client: redis.Redis, channel: str) -> int:
    return int(dict(client.pubsub_numsub(channel))[channel])


class Follower:
    """Follows a job in a thread, keeping every state it is given."""

    def __init__(self, engine: Engine, job_id: str) -> None:
        self.states: list[Any] = []
        self.generator = engine.store.follow(job_id, timeout=30)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.states)  # the first state: subscribed, then read

    def _run(self) -> None:
        try:
            for snapshot in self.generator:
                self.states.append(snapshot)
                if snapshot and snapshot[0].get(F.STATUS) == "completed":
                    return
        finally:
            self.generator.close()  # the stream ends: the process leaves the job's channel

    def statuses(self) -> list[str]:
        return [s[0][F.STATUS] for s in self.states if s]


def test_each_process_receives_only_the_events_of_the_jobs_its_streams_follow(
    settings, redis_client
):
    """Two web processes, each streaming its own three jobs of six: each receives exactly the
    events of its own jobs, and once the streams end it is subscribed to nothing."""
    web = [_engine(settings), _engine(settings)]
    worker = _engine(settings)
    job_ids = [worker.start("count", owner="o", params={"n": 3}) for _ in range(6)]
    followers = [Follower(web[i % 2], job_id) for i, job_id in enumerate(job_ids)]
    for i, engine in enumerate(web):
        mine = {engine.store.keys.channel(j) for j in job_ids[i::2]}
        assert engine.store.events.channels() == mine
    worker.dispatcher.drain(worker)  # type: ignore[attr-defined]
    for follower in followers:
        follower.thread.join(10)
        assert follower.statuses()[-1] == "completed", follower.statuses()
    events = [int(worker.state(j).fields[F.EVENTS]) for j in job_ids]
    assert all(n >= 4 for n in events), events  # start, steps, the ending
    for i, engine in enumerate(web):
        assert engine.store.events.received == sum(events[i::2])
        wait_for(lambda e=engine: not e.store.events.channels())
    channel = web[0].store.keys.channel(job_ids[0])
    wait_for(lambda: _numsub(redis_client, channel) == 0, timeout=5)  # unsubscribed in Redis


def test_an_event_carries_what_changed_not_the_whole_job(settings, redis_client):
    engine = _engine(settings)
    job_id = engine.start("count", owner="o", params={"n": 3, "note": "hello"})
    pubsub = redis_client.pubsub()
    pubsub.subscribe(engine.store.keys.channel(job_id))
    wait_for(lambda: pubsub.get_message(timeout=POLL))  # the subscription is live
    engine.dispatcher.drain(engine)  # type: ignore[attr-defined]
    events = []
    while message := pubsub.get_message(timeout=0.5):
        events.append(json.loads(message["data"]))
    pubsub.close()
    numbers = [event["events"] for event in events]
    assert numbers == list(range(1, len(events) + 1)), numbers
    first, last = events[0], events[-1]
    assert first["set"]["status"] == "running"  # the claim of the first step
    assert F.PARAMS not in first["set"] and F.LABELS not in first["set"]
    assert last["set"]["status"] == "completed" and last["messages"]
    assert all(json.loads(m)["text"] for m in last["messages"])
    assert max(len(json.dumps(event)) for event in events) < 600


def test_a_missed_event_makes_the_follower_read_the_job_and_an_old_one_is_dropped(
    settings, redis_client
):
    engine = _engine(settings)
    job_id = engine.start("count", owner="o", params={"n": 3})
    follower = Follower(engine, job_id)
    channel = engine.store.keys.channel(job_id)
    # An event that already is in what the follower read: dropped.
    redis_client.publish(channel, json.dumps({"events": 0, "set": {"status": "bogus"}}))
    # An event numbered past the next one: some were missed, so the job is read anew.
    redis_client.publish(channel, json.dumps({"events": 7, "set": {"status": "bogus"}}))
    wait_for(lambda: len(follower.states) == 2)
    assert follower.statuses() == ["pending", "pending"]
    engine.dispatcher.drain(engine)  # type: ignore[attr-defined]
    follower.thread.join(10)
    assert follower.statuses()[-1] == "completed"
    assert "bogus" not in follower.statuses()


def test_a_job_nobody_follows_publishes_nothing(own_redis, prefix, files_dir):
    """On a Redis of the test's own (its command counts are the test's alone): a step of a job
    that no stream follows runs no PUBLISH; one that is followed publishes each event once."""
    server = own_redis(appendonly=False)
    settings = Settings.from_mapping(
        make_config(
            prefix, files_dir, BATCHFLOW_REDIS_URL=server.url, BATCHFLOW_BROKER_URL=REDIS_URL
        )
    )
    engine = _engine(settings)
    client = redis.Redis.from_url(server.url, decode_responses=True)

    def published() -> int:
        return int(client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))

    unwatched = engine.start("count", owner="o", params={"n": 3})
    engine.dispatcher.drain(engine)  # type: ignore[attr-defined]
    assert published() == 0 and int(engine.state(unwatched).fields[F.EVENTS]) >= 4
    watched = engine.start("count", owner="o", params={"n": 3})
    follower = Follower(engine, watched)
    engine.dispatcher.drain(engine)  # type: ignore[attr-defined]
    follower.thread.join(10)
    assert published() == int(engine.state(watched).fields[F.EVENTS])
    assert len(follower.states) == published() + 1  # the first read, then each event
