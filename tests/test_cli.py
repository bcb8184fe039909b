"""``flask batchflow ...``: every command through Flask's CLI runner, against real Redis and a real
in-process Celery worker (or, for ``maintain``, steps run by hand so that nothing else tidies
up)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from batchflow import BatchFlow, Status
from batchflow.engine import Engine
from tests.handlers import make_registry
from tests.helpers import broker_options, make_config, wait_for, wait_terminal, worker_went_round

Invoke = Callable[..., Result]
UNKNOWN = "A" * 22  # shaped like a job id, but no such job


def _app(prefix: str, files_dir: str, **overrides: Any) -> Flask:
    app = Flask("cli_test")
    app.config.update(
        make_config(prefix, files_dir, **overrides),
        BATCHFLOW_CELERY=broker_options(prefix),
        SECRET_KEY="test",
        TESTING=True,
    )
    BatchFlow(app, registry=make_registry())
    return app


@pytest.fixture
def app(prefix: str, files_dir: str) -> Flask:
    return _app(prefix, files_dir)


@pytest.fixture
def jobs(app: Flask) -> Engine:
    return BatchFlow.state(app).engine


@pytest.fixture
def running(app: Flask) -> Iterator[None]:
    from celery.contrib.testing.worker import start_worker

    celery = BatchFlow.state(app).celery
    with start_worker(
        celery, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=20
    ):
        yield


@pytest.fixture
def flask_batchflow(app: Flask) -> Invoke:
    runner = app.test_cli_runner()

    def invoke(*args: str) -> Result:
        result = runner.invoke(args=["batchflow", *args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


def test_the_group_lists_its_commands(flask_batchflow: Invoke):
    result = flask_batchflow("--help")
    assert result.exit_code == 0
    commands = ("list", "show", "watch", "start", "stop", "cancel", "pause", "resume", "retry")
    commands += ("maintain",)
    for command in commands:
        assert re.search(rf"^\s+{command}\s", result.output, re.M), command
    # `prune`, maintain's old name, still runs (below) but is not offered.
    assert not re.search(r"^\s+prune\s", result.output, re.M)


def test_list_says_when_there_are_no_jobs(flask_batchflow: Invoke):
    result = flask_batchflow("list")
    assert (result.exit_code, result.output) == (0, "No jobs.\n")


def test_list_shows_jobs_newest_first_and_filters(flask_batchflow, jobs, running, prefix):
    counted = jobs.start("count", owner="alice", params={"n": 5, "prefix": prefix})
    wait_terminal(jobs, counted)
    failed = jobs.start("boom", owner="bob", params={"why": "no disk", "prefix": prefix})
    wait_terminal(jobs, failed)

    header, *lines = flask_batchflow("list").output.splitlines()
    assert header.split() == ["ID", "HANDLER", "STATE", "%", "PROGRESS", "RESULT"]
    assert [line.split()[0] for line in lines] == [failed, counted]
    # Neither counts good and bad (an item job does, below): they show what they processed.
    assert re.match(rf"{failed}\s+boom\s+Failed\s+0%\s+0/10\s+0 processed$", lines[0])
    assert re.match(rf"{counted}\s+count\s+Completed\s+100%\s+5/5\s+5 processed$", lines[1])
    assert header.index("RESULT") == lines[0].index("0 processed") == lines[1].index("5 proc")

    assert flask_batchflow("list", "--owner", "alice").output.split()[6] == counted
    assert flask_batchflow("list", "--status", "failed").output.split()[6] == failed
    assert len(flask_batchflow("list", "--limit", "1").output.splitlines()) == 2
    assert flask_batchflow("list", "--owner", "carol").output == "No jobs.\n"


def test_show_prints_one_job_and_refuses_unknown_ids(flask_batchflow, jobs, running, prefix):
    job_id = jobs.start("count", owner="alice", params={"n": 7, "prefix": prefix})
    wait_terminal(jobs, job_id)
    result = flask_batchflow("show", job_id)
    assert result.exit_code == 0
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in result.output.splitlines())
        if key.strip() != "message"
    )
    assert fields["id"] == job_id and fields["handler"] == "count"
    assert fields["owner"] == "alice" and fields["status"] == "completed"
    assert (fields["total"], fields["processed"], fields["percent"]) == ("7", "7", "100.0")
    assert "   message: All counted" in result.output.splitlines()

    for bad_id in (UNKNOWN, "not-an-id", "../../etc"):
        missing = flask_batchflow("show", bad_id)
        assert missing.exit_code == 2
        assert missing.stderr.startswith("Error: ")
        assert "No such job. It may have expired, or the link is wrong." in missing.stderr


def test_an_unknown_job_is_reported_plainly(flask_batchflow):
    missing = flask_batchflow("show", UNKNOWN)
    assert missing.stderr == "Error: No such job. It may have expired, or the link is wrong.\n"


def test_watch_follows_a_job_to_its_end(flask_batchflow, jobs, running, prefix):
    job_id = jobs.start("count", owner="a", params={"n": 300, "sleep": 0.002, "prefix": prefix})
    result = flask_batchflow("watch", job_id)
    assert result.exit_code == 0, result.output
    assert "[##############################] 100.0%  300/300  Completed" in result.stdout
    assert result.stdout.rstrip().endswith("\nCompleted")

    failed = jobs.start("boom", owner="a", params={"why": "no disk", "prefix": prefix})
    result = flask_batchflow("watch", failed)
    assert result.exit_code == 1
    assert result.stdout.rstrip().endswith("Failed")
    ref = re.fullmatch(r"Error: Something went wrong \(ref (\w{8})\)\.\n.*", result.stderr, re.S)
    assert ref, result.stderr  # the user's text, then the real one the operator may see
    assert result.stderr.endswith(f"\nDetail: ref {ref[1]}: ValueError: boom: no disk\n")

    assert flask_batchflow("watch", UNKNOWN).exit_code == 2


def test_stop_keeps_the_work_and_a_finished_job_refuses(flask_batchflow, jobs, running, prefix):
    job_id = jobs.start("count", owner="a", params={"n": 100_000, "sleep": 0.001, "prefix": prefix})
    wait_for(lambda: jobs.state(job_id).count("processed") > 0)
    result = flask_batchflow("stop", job_id)
    assert result.exit_code == 0
    assert re.match(rf"stop requested: {job_id}\s+count\s+(Stopping|Stopped)\s", result.output)
    state = wait_terminal(jobs, job_id)
    assert state.status is Status.STOPPED and 0 < state.count("processed") < 100_000

    again = flask_batchflow("stop", job_id)
    assert again.exit_code == 3
    assert again.stderr == "Error: The job has already ended (stopped); there is nothing to stop.\n"
    assert flask_batchflow("stop", UNKNOWN).exit_code == 2


def test_cancel_undoes_and_is_refused_where_unsupported(flask_batchflow, jobs, running, prefix):
    job_id = jobs.start("count", owner="a", params={"n": 100_000, "sleep": 0.001, "prefix": prefix})
    wait_for(lambda: jobs.state(job_id).count("processed") > 0)
    result = flask_batchflow("cancel", job_id)
    assert result.exit_code == 0
    assert result.output.startswith(f"cancel requested: {job_id}")
    assert wait_terminal(jobs, job_id).status is Status.CANCELED

    one_shot = jobs.start("rebuild", owner="a", params={"n": 2000, "sleep": 0.005})
    refused = flask_batchflow("cancel", one_shot)
    assert refused.exit_code == 3
    assert refused.stderr == "Error: This job does not support cancel.\n"
    flask_batchflow("stop", one_shot)
    assert wait_terminal(jobs, one_shot).status is Status.STOPPED


def test_pause_then_resume(flask_batchflow, jobs, running, prefix):
    job_id = jobs.start("count", owner="a", params={"n": 600, "sleep": 0.0005, "prefix": prefix})
    wait_for(lambda: jobs.state(job_id).count("processed") > 0)
    assert flask_batchflow("pause", job_id).exit_code == 0
    wait_for(lambda: jobs.state(job_id).status is Status.PAUSED)
    paused_at = jobs.state(job_id).count("processed")
    worker_went_round(jobs)  # the worker had its chance to run a step: it ran none of this job's
    assert jobs.state(job_id).count("processed") == paused_at
    again = flask_batchflow("pause", job_id)  # the engine would take it; the command says so
    assert (again.exit_code, again.stdout) == (3, "")
    assert again.stderr == "Error: The job is paused already.\n"
    result = flask_batchflow("resume", job_id)
    assert result.exit_code == 0 and result.output.startswith(f"resume requested: {job_id}")
    assert wait_terminal(jobs, job_id).status is Status.COMPLETED


def test_retry_starts_a_job_over_the_failed_ids(flask_batchflow, jobs, running, prefix):
    ids = ["1", "bad-2", "3", "bad-4", "5"]
    job_id = jobs.start("archive", owner="alice", ids=ids, params={"prefix": prefix})
    assert wait_terminal(jobs, job_id).count("bad") == 2

    result = flask_batchflow("retry", job_id)
    assert result.exit_code == 0
    new_id = result.output.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", new_id) and new_id != job_id
    retried = wait_terminal(jobs, new_id)
    assert retried.owner == "alice" and retried.fields["retry_of"] == job_id
    assert (retried.total, retried.count("bad")) == (2, 2)

    clean = jobs.start("archive", owner="alice", ids=["7", "8"], params={"prefix": prefix})
    wait_terminal(jobs, clean)
    refused = flask_batchflow("retry", clean)
    assert refused.exit_code == 3
    assert refused.stderr == "Error: This job has no failed ids to retry.\n"
    assert flask_batchflow("retry", UNKNOWN).exit_code == 2


def test_maintain_requeues_overdue_steps_and_cleans_expired_jobs(prefix, files_dir):
    # No worker: steps run by hand, so only maintain recovers and cleans (a worker would do it too).
    app = _app(prefix, files_dir, BATCHFLOW_JOB_TTL=1, BATCHFLOW_QUEUE_TIMEOUT=0.2)
    engine = BatchFlow.state(app).engine
    runner = app.test_cli_runner()

    done = engine.start("count", owner="a", params={"n": 3, "prefix": prefix})
    seq = 0
    while not engine.state(done).status.terminal:
        engine.run_step(done, seq)
        seq += 1
    never_claimed = engine.start("count", owner="a", params={"n": 3, "prefix": prefix})
    time.sleep(1.3)  # past the queue timeout of the one, and the TTL of the other

    result = runner.invoke(args=["batchflow", "maintain"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"requeued 1 overdue steps, cleaned 1 expired jobs, tidied \d+ index entries\n",
        result.output,
    )
    assert runner.invoke(args=["batchflow", "show", done]).exit_code == 2
    assert engine.state(never_claimed).status is Status.PENDING
    # Nothing more to do the second time (asked by the old name, `prune`, which still works).
    # (The never-claimed step may be overdue again already, 0.2 s later on a loaded machine.)
    again = runner.invoke(args=["batchflow", "prune"])
    assert re.match(r"requeued [01] overdue steps, cleaned 0 expired jobs", again.output)


def test_every_action_says_why_it_does_not_apply_and_exits_3(flask_batchflow, jobs, prefix):
    # No worker: the job stays pending, so each state below holds until the next command.
    job_id = jobs.start("count", owner="a", params={"n": 5, "prefix": prefix})
    resumed = flask_batchflow("resume", job_id)
    assert (resumed.exit_code, resumed.stdout) == (3, "")
    assert resumed.stderr == (
        "Error: The job is not paused (it is pending); there is nothing to resume.\n"
    )
    assert flask_batchflow("pause", job_id).exit_code == 0  # pausing: it pauses when it runs
    again = flask_batchflow("pause", job_id)
    assert again.exit_code == 3
    assert again.stderr == (
        "Error: The job is pausing already (it pauses after its current step).\n"
    )
    assert flask_batchflow("resume", job_id).exit_code == 0  # a pausing job may be resumed

    assert flask_batchflow("stop", job_id).exit_code == 0
    assert jobs.state(job_id).status is Status.STOPPING
    for what, why in (
        ("stop", "The job is stopping already."),
        ("cancel", "The job cannot cancel while it is stopping."),
        ("pause", "The job cannot pause while it is stopping."),
        ("resume", "The job is not paused (it is stopping); there is nothing to resume."),
    ):
        refused = flask_batchflow(what, job_id)
        assert (refused.exit_code, refused.stderr) == (3, f"Error: {why}\n"), what
    assert jobs.state(job_id).status is Status.STOPPING  # nothing was recorded


def test_list_filters_by_outcome(flask_batchflow, jobs, running, prefix):
    clean = jobs.start("archive", owner="a", ids=["1", "2"], params={"prefix": prefix})
    mixed = jobs.start("archive", owner="a", ids=["1", "bad-2"], params={"prefix": prefix})
    failed = jobs.start("boom", owner="a", params={"why": "no disk", "prefix": prefix})
    for job_id in (clean, mixed, failed):
        wait_terminal(jobs, job_id)

    def listed(*args: str) -> list[str]:
        result = flask_batchflow("list", *args)
        assert result.exit_code == 0, result.output
        return [line.split()[0] for line in result.output.splitlines()[1:]]

    assert listed("--status", "completed_with_failures") == [mixed]
    row = flask_batchflow("list", "--status", "completed_with_failures").output.splitlines()[1]
    assert re.match(
        rf"{mixed}\s+archive\s+Completed with failures\s+100%\s+2/2\s+good 1  bad 1$", row
    )
    assert listed("--status", "completed") == [mixed, clean]
    assert listed("--status", "failed") == [failed]
    assert flask_batchflow("list", "--status", "stalled").output == "No jobs.\n"
    assert flask_batchflow("list", "--status", "nonsense").exit_code == 2


def test_start_prints_the_new_job_id(flask_batchflow, jobs, running, prefix):
    result = flask_batchflow(
        "start", "count", "--param", "n=4", "--params", f'{{"prefix": "{prefix}"}}'
    )
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    state = wait_terminal(jobs, job_id)
    assert (state.status, state.owner, state.total) == (Status.COMPLETED, "cli", 4)

    result = flask_batchflow(
        "start",
        "archive",
        "--id",
        "1",
        "--id",
        "bad-2",
        "--owner",
        "alice",
        "--json",
        "--params",
        f'{{"prefix": "{prefix}"}}',
    )
    started = json.loads(result.stdout)
    assert result.exit_code == 0 and started["created"] is True
    state = wait_terminal(jobs, started["id"])
    assert (state.owner, state.total, state.count("bad")) == ("alice", 2, 1)

    # The handler's form validates and types the parameters, as on the web.
    greeting = flask_batchflow(
        "start", "greeting", "--param", "name=Ann", "--param", "times=3", "--param", "api_key=k"
    )
    assert greeting.exit_code == 0, greeting.output
    state = wait_terminal(jobs, greeting.stdout.strip())
    assert state.to_dict()["params"] == {"name": "Ann", "times": 3, "api_key": "••••••"}


def test_start_refuses_what_the_web_refuses(flask_batchflow, prefix, files_dir):
    def refused(*args: str) -> tuple[int, str]:
        result = flask_batchflow("start", *args)
        assert result.stdout == ""
        return result.exit_code, result.stderr

    code, stderr = refused("nosuch")
    assert code == 2 and stderr.startswith("Error: No job handler is registered as 'nosuch'.")
    assert stderr.endswith(
        " Handlers this app knows: admin-only, archive, archive-lanes, batch-archive, boom, "
        "count, count-up, frozen-count, generated, greeting, hooked, import-contacts, leaky, "
        "leaky-items, numbers-export, people-export, preview-archive, preview-import, rebuild, "
        "report, touch-people, walk-archive.\n"
    )
    assert refused("archive") == (
        2,
        "Error: Handler 'archive' needs a list of ids to work on.\n",
    )
    code, stderr = refused("greeting", "--param", "name=Ann", "--param", "times=many")
    assert code == 2 and stderr.startswith("  times: ") and "Some fields need attention." in stderr
    assert refused("count", "--params", "[1]")[0] == 2
    assert refused("count", "--param", "n")[0] == 2
    assert refused("admin-only", "--owner", "bob") == (
        3,
        "Error: 'bob' is not allowed to start 'admin-only'.\n",
    )
    assert flask_batchflow("start", "admin-only", "--owner", "boss-admin").exit_code == 0
    assert (
        flask_batchflow("start", "admin-only", "--owner", "bob", "--skip-permission").exit_code == 0
    )


def test_start_honours_the_owners_limit(prefix, files_dir):
    app = _app(prefix, files_dir, BATCHFLOW_MAX_ACTIVE_JOBS=1)
    runner = app.test_cli_runner()
    first = runner.invoke(args=["batchflow", "start", "count", "--owner", "carol"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(args=["batchflow", "start", "count", "--owner", "carol"])
    assert second.exit_code == 3
    assert second.stderr.startswith("Error: You already have 1 active job(s)")


def test_list_and_show_print_json(flask_batchflow, jobs, running, prefix):
    job_id = jobs.start("count", owner="alice", params={"n": 3, "prefix": prefix})
    wait_terminal(jobs, job_id)
    listed = json.loads(flask_batchflow("list", "--json").stdout)
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    assert listed["jobs"][0]["outcome"] == "completed" and listed["jobs"][0]["processed"] == 3
    assert json.loads(flask_batchflow("list", "--json", "--owner", "bob").stdout) == {"jobs": []}
    shown = json.loads(flask_batchflow("show", job_id, "--json").stdout)
    assert (shown["id"], shown["owner"], shown["total"]) == (job_id, "alice", 3)
    assert shown["error_detail"] is None


def test_redis_down_is_exit_4_not_a_traceback(prefix, files_dir):
    app = _app(prefix, files_dir, BATCHFLOW_REDIS_URL="redis://127.0.0.1:1/0")
    result = app.test_cli_runner().invoke(args=["batchflow", "list"])
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.output


def test_workers_says_none_is_seen_and_counts_the_waiting_steps(flask_batchflow, jobs, prefix):
    first = jobs.start("count", owner="alice", params={"n": 5})
    jobs.start("count", owner="bob", params={"n": 5})
    created = jobs.state(first).to_dict()["created_at"]
    wait_for(lambda: time.time() - created > 1.2)
    none, queue = flask_batchflow("workers").output.splitlines()
    assert none == f"No worker seen: start one (celery -A worker worker -Q {prefix})."
    assert queue.startswith(f"Queue {prefix}: 2 messages wait in the broker; 2 steps wait")
    assert re.search(r"the oldest for [0-9.]+ s\.$", queue), queue
    report = json.loads(flask_batchflow("workers", "--json").output)
    assert report["workers"] == [] and report["broker"] == {
        "ok": True,
        "waiting": 2,
        "consumers": None,
    }
    assert report["waiting_steps"] == 2 and report["oldest_wait_s"] >= 1.2


def test_workers_lists_a_running_worker_and_the_steps_it_holds(flask_batchflow, jobs, running):
    job_id = jobs.start("count", owner="alice", params={"n": 30, "sleep": 0.05})
    report = wait_for(
        lambda: (
            (r := json.loads(flask_batchflow("workers", "--json").output))["workers"]
            and r["workers"][0]["steps"]
            and r
        )
    )
    (worker,) = report["workers"]
    assert worker["pool"] == "threads" and worker["concurrency"] == 2
    assert worker["steps"][0]["job_id"] == job_id
    header, row, queue = flask_batchflow("workers").output.splitlines()
    assert header.split() == ["WORKER", "PID", "POOL", "QUEUES", "VERSION", "UP", "SEEN", "STEPS"]
    assert row.split()[0] == worker["name"] and "threads x2" in row
    assert queue.startswith("Queue ")
    wait_terminal(jobs, job_id)
