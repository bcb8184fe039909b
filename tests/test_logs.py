"""Logs a person can follow: the job, handler and step on every line about a job; JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.exceptions import ConfigurationError
from batchflow.logs import JsonLines, about_job, configure
from tests.helpers import WorkerProcess, make_config, wait_for, wait_terminal


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """batchflow's log in the JSON format, captured as a log shipper would read stderr."""
    configure("json")
    logger = logging.getLogger("batchflow")
    ours = next(h for h in logger.handlers if isinstance(h.formatter, JsonLines))
    captured = io.StringIO()
    stream = ours.setStream(captured)
    level = logger.level
    logger.setLevel(logging.INFO)  # whatever level an earlier test in this process left
    try:
        yield captured
    finally:
        logger.setLevel(level)
        ours.setStream(stream)
        configure("text")


def _lines(captured: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]


def test_a_failing_step_logs_one_json_line_naming_job_handler_and_step(
    engine: Engine, manual, json_lines
):
    job_id = engine.start("boom", owner="alice", params={"why": "disk full"})
    manual.drain(engine)
    assert engine.state(job_id).status.value == "failed"
    lines = [x for x in _lines(json_lines) if x.get("job_id") == job_id]
    (line,) = [x for x in lines if x["level"] == "ERROR"]
    assert line["logger"] == "batchflow"
    assert line["handler"] == "boom" and isinstance(line["step"], int)
    assert "boom: disk full" in line["message"] and "[job=" not in line["message"]
    assert "ValueError: boom: disk full" in line["exception"]
    assert line["time"].endswith("Z") and line["process"] > 0


def test_text_lines_end_with_the_job_they_are_about(caplog):
    configure("text")
    log = logging.getLogger("batchflow")
    with caplog.at_level(logging.INFO, logger="batchflow"):
        with about_job("j" * 22, handler="export", step=7, lane=2):
            log.info("wrote %s rows", 10)
        log.info("not about a job")
    inside, outside = caplog.records
    assert inside.getMessage() == f"wrote 10 rows [job={'j' * 22} handler=export step=7 lane=2]"
    assert (inside.job_id, inside.handler, inside.step, inside.lane) == ("j" * 22, "export", 7, 2)
    assert outside.getMessage() == "not about a job" and outside.job_id is None


def test_a_recovered_step_is_logged_with_its_job_and_step(engine: Engine, manual, json_lines):
    job_id = engine.start("count", owner="alice", params={"n": 5})
    manual.steps.clear()  # the step is lost before any worker takes it
    engine.maintain(now=engine.state(job_id).to_dict()["created_at"] + 10_000, force=True)
    (line,) = [x for x in _lines(json_lines) if x.get("job_id") == job_id]
    assert line["level"] == "WARNING" and line["step"] == 0, line
    assert "re-enqueued" in line["message"]


def test_a_worker_subprocess_writes_json_lines_when_asked(
    engine: Engine, celery_app, prefix: str, files_dir: str, tmp_path
):
    config = make_config(prefix, files_dir, BATCHFLOW_LOG_FORMAT="json")
    errors = tmp_path / "worker.log"
    proc = WorkerProcess(config, stderr=str(errors), name="logs")
    try:
        job_id = engine.start("boom", owner="alice", params={"why": "no paper"})
        wait_terminal(engine, job_id)

        def logged() -> list[dict]:
            lines = [json.loads(x) for x in errors.read_text().splitlines() if x.startswith("{")]
            return [x for x in lines if x.get("job_id") == job_id]

        (line,) = wait_for(logged, timeout=10)
    finally:
        proc.stop()
    assert line["handler"] == "boom" and "no paper" in line["message"]


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ConfigurationError, match="BATCHFLOW_LOG_FORMAT must be 'text' or 'json'"):
        Settings.from_mapping({"BATCHFLOW_LOG_FORMAT": "xml"})
