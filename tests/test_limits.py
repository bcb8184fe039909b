"""Who may start a job and how many: retry asks the permission hook, the per-owner limit on
active jobs (atomic across web processes and concurrent starts), and opt-in de-duplication."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from batchflow import BatchFlow, ConfigurationError, LimitReached, Registry
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.schema import AdmitCode
from batchflow.store import CREATE_GRACE_MS, Store
from tests.handlers import Archive, Count, make_registry
from tests.helpers import ListDispatcher, make_config
from tests.test_web import ALICE, finish, start, token
from tests.webapp import create_app

ADMIN = {"X-Test-User": "root-admin"}


class Limited(Count):
    """Counting, at most one per owner at once, apart from the owner-wide pool."""

    max_active_jobs = 1


class Unlimited(Count):
    max_active_jobs = 0


class Deduplicated(Count):
    deduplicate = True


def _add_handlers(registry: Any) -> None:
    registry.add("limited", Limited)
    registry.add("unlimited", Unlimited)
    registry.add("dedup", Deduplicated)


@pytest.fixture
def app(prefix, files_dir):
    app = create_app(prefix, files_dir, BATCHFLOW_MAX_ACTIVE_JOBS=3)
    _add_handlers(BatchFlow.state(app).registry)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def engine(app):
    return BatchFlow.state(app).engine


def _engine(prefix: str, files_dir: str, limit: int) -> tuple[Engine, ListDispatcher]:
    settings = Settings.from_mapping(
        make_config(prefix, files_dir, BATCHFLOW_MAX_ACTIVE_JOBS=limit)
    )
    registry = make_registry()
    _add_handlers(registry)
    engine = Engine(settings, Store.from_url(settings.redis_url, prefix), registry)
    engine.dispatcher = ListDispatcher()
    return engine, engine.dispatcher


def _at_once(count: int, call: Callable[[int], Any]) -> list[Any]:
    """``call(i)`` in ``count`` threads released together; their results (or exceptions)."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except Exception as exc:  # noqa: BLE001 - the test looks at what each start got
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def _failed_archive(client, prefix, headers=ALICE) -> str:
    job_id = start(
        client, handler="guarded", headers=headers, ids=["a1", "bad-1"], params={"prefix": prefix}
    ).json["id"]
    assert finish(client, job_id, headers=headers)["bad"] == 1
    return job_id


def _retry(client, job_id, headers=ALICE):
    headers = {**headers, "X-CSRFToken": token(client, headers), "Accept": "application/json"}
    return client.post(f"/jobs/{job_id}/retry", headers=headers)


# -- retry asks the permission hook ------------------------------------------------------------


def test_a_revoked_permission_refuses_retry_with_403_and_creates_no_job(
    app, client, engine, web_worker, prefix
):
    revoked: set[str] = set()
    BatchFlow.state(app).registry.add("guarded", Archive, permission=lambda u: u not in revoked)
    job_id = _failed_archive(client, prefix)
    revoked.add("alice")
    assert start(client, handler="guarded", ids=["x"], params={"prefix": prefix}).status_code == 403
    refused = _retry(client, job_id)
    assert refused.status_code == 403 and "not allowed" in refused.json["error"]
    assert [s.id for s in engine.jobs("alice")] == [job_id]  # no second job
    revoked.clear()
    assert _retry(client, job_id).status_code == 202


def test_an_admins_retry_of_another_users_job_asks_the_hook_for_the_admin(
    app, client, engine, web_worker, prefix
):
    asked: list[str] = []
    allowed = {"alice"}

    def hook(user: str) -> bool:
        asked.append(user)
        return user in allowed

    BatchFlow.state(app).registry.add("guarded", Archive, permission=hook)
    job_id = _failed_archive(client, prefix)
    asked.clear()
    refused = _retry(client, job_id, headers=ADMIN)
    assert refused.status_code == 403 and asked == ["root-admin"]
    assert engine.jobs("root-admin") == []
    allowed.add("root-admin")
    retried = _retry(client, job_id, headers=ADMIN)
    assert retried.status_code == 202
    assert engine.state(retried.json["id"]).owner == "root-admin"


# -- the per-owner limit on active jobs ------------------------------------------------------


def test_concurrent_starts_over_two_web_processes_admit_exactly_the_limit(prefix, files_dir):
    apps = [create_app(prefix, files_dir, BATCHFLOW_MAX_ACTIVE_JOBS=3, WTF_CSRF_ENABLED=False)]
    apps.append(create_app(prefix, files_dir, BATCHFLOW_MAX_ACTIVE_JOBS=3, WTF_CSRF_ENABLED=False))

    def post(i: int) -> Any:
        client = apps[i % 2].test_client()
        return client.post("/jobs/start/count", json={"params": {"n": 5}}, headers=ALICE)

    answers = _at_once(20, post)
    assert sorted(r.status_code for r in answers) == [202] * 3 + [429] * 17
    created = {r.json["id"] for r in answers if r.status_code == 202}
    engine = BatchFlow.state(apps[0]).engine
    assert {s.id for s in engine.jobs("alice")} == created
    for refused in (r for r in answers if r.status_code == 429):
        assert refused.headers["Retry-After"].isdigit()
        assert set(refused.json["active_jobs"]) <= created
        assert "Wait for one to finish, or stop one" in refused.json["error"]


def test_the_limit_counts_only_the_owners_active_jobs_and_a_finished_job_frees_its_slot(
    prefix, files_dir
):
    engine, steps = _engine(prefix, files_dir, limit=2)
    first = engine.start("count", owner="alice", params={"n": 1})
    engine.start("count", owner="alice", params={"n": 1})
    with pytest.raises(LimitReached) as refused:
        engine.start("count", owner="alice", params={"n": 1})
    assert refused.value.details["active_jobs"] and refused.value.headers["Retry-After"]
    engine.start("count", owner="bob", params={"n": 1})  # another owner's jobs are apart
    steps.drain(engine)
    assert engine.state(first).status.terminal
    assert engine.start("count", owner="alice", params={"n": 1})


def test_a_job_ended_or_gone_without_its_removal_does_not_hold_a_place(
    prefix, files_dir, redis_client
):
    engine, _ = _engine(prefix, files_dir, limit=1)
    job_id = engine.start("count", owner="alice", params={"n": 1})
    # The job ended, and the worker died before anything else: nothing told admission.
    redis_client.hset(engine.store.keys.job(job_id), "status", "completed")
    assert engine.start("count", owner="alice", params={"n": 1}) != job_id
    # An admitted job whose hash never came (its starter died) holds its place for the grace only.
    admit = engine.admission.admit
    assert admit("bob", "x" * 22, pool="*", limit=1, fingerprint="", now_ms=0).code is AdmitCode.OK
    held = admit("bob", "y" * 22, pool="*", limit=1, fingerprint="", now_ms=1)
    assert held.code is AdmitCode.FULL and held.job_ids == ["x" * 22]
    later = admit("bob", "y" * 22, pool="*", limit=1, fingerprint="", now_ms=CREATE_GRACE_MS + 1)
    assert later.code is AdmitCode.OK


def test_a_handlers_own_limit_counts_its_jobs_apart(prefix, files_dir):
    engine, _ = _engine(prefix, files_dir, limit=1)
    limited = engine.start("limited", owner="alice", params={"n": 1})
    engine.start("count", owner="alice", params={"n": 1})  # the owner-wide pool has its own place
    with pytest.raises(LimitReached) as refused:
        engine.start("limited", owner="alice", params={"n": 1})
    assert refused.value.details == {"active_jobs": [limited]}
    assert "'limited' job(s)" in str(refused.value)
    with pytest.raises(LimitReached):
        engine.start("count", owner="alice", params={"n": 1})
    for _ in range(3):  # max_active_jobs = 0: no limit, whatever BATCHFLOW_MAX_ACTIVE_JOBS says
        engine.start("unlimited", owner="alice", params={"n": 1})


def test_starting_from_code_is_limited_too_and_zero_means_no_limit(prefix, files_dir):
    engine, _ = _engine(prefix, files_dir, limit=0)
    for _ in range(12):
        engine.start("count", owner="alice", params={"n": 1})
    assert len(engine.jobs("alice")) == 12
    assert engine.store.client.exists(engine.store.keys.owner_active("alice")) == 0


def test_retry_over_the_limit_is_429(client, web_worker, app, prefix):
    BatchFlow.state(app).registry.add("guarded", Archive)
    job_id = _failed_archive(client, prefix)
    for _ in range(3):
        assert start(client, params={"n": 100_000, "sleep": 0.01}).status_code == 202
    refused = _retry(client, job_id)
    assert refused.status_code == 429 and len(refused.json["active_jobs"]) == 3


# -- de-duplication -------------------------------------------------------------------------


def test_identical_concurrent_starts_of_a_deduplicating_handler_get_one_job(prefix, files_dir):
    app = create_app(prefix, files_dir, WTF_CSRF_ENABLED=False)
    _add_handlers(BatchFlow.state(app).registry)

    def post(i: int) -> Any:
        body = {"params": {"n": "5"}}  # as the form below sends it
        return app.test_client().post("/jobs/start/dedup", json=body, headers=ALICE)

    answers = _at_once(20, post)
    assert sorted(r.status_code for r in answers) == [200] * 19 + [202]
    ids = {r.json["id"] for r in answers}
    engine = BatchFlow.state(app).engine
    assert len(ids) == 1 and [s.id for s in engine.jobs("alice")] == list(ids)
    # The form flow lands on the existing job's page.
    form = app.test_client().post("/jobs/start/dedup", data={"n": "5"}, headers=ALICE)
    assert form.status_code == 303 and form.headers["Location"].endswith(f"/jobs/{ids.pop()}")


def test_deduplication_is_per_owner_parameters_and_active_jobs_only(prefix, files_dir):
    engine, steps = _engine(prefix, files_dir, limit=10)
    first = engine.submit("dedup", owner="alice", params={"n": 1})
    assert first.created
    again = engine.submit("dedup", owner="alice", params={"n": 1})
    assert (again.job_id, again.created) == (first.job_id, False)
    assert engine.start("dedup", owner="alice", params={"n": 2}) != first.job_id
    assert engine.start("dedup", owner="bob", params={"n": 1}) != first.job_id
    assert engine.start("count", owner="alice", params={"n": 1}) != first.job_id  # not opted in
    assert engine.start("count", owner="alice", params={"n": 1}) != first.job_id
    steps.drain(engine)
    after = engine.submit("dedup", owner="alice", params={"n": 1})
    assert after.created and after.job_id != first.job_id


def test_the_cli_retry_counts_toward_the_owners_limit(prefix, files_dir):
    app = Flask("limits_cli")
    app.config.update(SECRET_KEY="k", **make_config(prefix, files_dir, BATCHFLOW_MAX_ACTIVE_JOBS=1))
    BatchFlow(app, registry=make_registry())
    engine = BatchFlow.state(app).engine
    engine.dispatcher = steps = ListDispatcher()
    failed = engine.start("archive", owner="alice", ids=["bad-1"], params={"prefix": prefix})
    steps.drain(engine)
    engine.start("count", owner="alice", params={"n": 1})  # alice's one place is taken
    refused = app.test_cli_runner().invoke(args=["batchflow", "retry", failed])
    assert refused.exit_code == 3 and "Wait for one to finish" in refused.output
    steps.drain(engine)
    assert app.test_cli_runner().invoke(args=["batchflow", "retry", failed]).exit_code == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_a_handlers_limit_must_be_a_whole_number(bad):
    class Wrong(Count):
        max_active_jobs = bad

    with pytest.raises(ConfigurationError, match="max_active_jobs must be a whole number"):
        Registry().add("wrong", Wrong)


def test_cleaning_an_expired_job_removes_it_from_its_owners_active_jobs(prefix, files_dir):
    engine, steps = _engine(prefix, files_dir, limit=2)
    job_id = engine.start("count", owner="alice", params={"n": 1})
    active = engine.store.keys.owner_active("alice")
    assert engine.store.client.hexists(active, job_id)
    steps.drain(engine)
    engine.maintain(time.time() + engine.settings.job_ttl + 60, force=True)
    assert not engine.store.client.exists(active)
