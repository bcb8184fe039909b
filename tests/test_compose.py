"""docker-compose.yml, the Dockerfile and .dockerignore. No Docker engine is needed: compose checks
the file, and the entry points the containers run are loaded here the way they load them."""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers import ROOT

COMPOSE = os.path.join(ROOT, "docker-compose.yml")


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if k != "FLASK_SECRET_KEY"}
    return subprocess.run(
        [binary, "-f", COMPOSE, *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


def test_compose_config_is_valid():
    result = _compose("config")
    assert result.returncode == 0, result.stderr


def test_the_rabbitmq_variant_adds_the_broker_and_keeps_state_in_redis():
    yaml = pytest.importorskip("yaml")
    variant = os.path.join(ROOT, "docker-compose.rabbitmq.yml")
    result = _compose("-f", variant, "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"redis", "rabbitmq", "web", "worker"}
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3")
    assert "rabbitmq-diagnostics" in services["rabbitmq"]["healthcheck"]["test"]
    for name in ("web", "worker"):
        service = services[name]
        env = service["environment"]
        assert env["BATCHFLOW_BROKER_URL"].startswith("amqp://batchflow:")
        assert env["BATCHFLOW_BROKER_URL"].endswith("@rabbitmq:5672//")
        assert env["BATCHFLOW_REDIS_URL"] == "redis://redis:6379/0"  # job state stays in Redis
        assert env["BATCHFLOW_FILES_DIR"] == "/data/files"  # the rest of the base file is kept
        for needed in ("redis", "rabbitmq"):
            assert service["depends_on"][needed]["condition"] == "service_healthy"


@pytest.fixture
def services() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout)["services"])


def test_redis_web_and_worker_share_settings_and_files(services):
    assert set(services) == {"redis", "web", "worker"}
    assert services["redis"]["command"] == ["redis-server", "--appendonly", "yes"]
    web, worker = services["web"], services["worker"]
    for service in (web, worker):
        env = service["environment"]
        assert env["BATCHFLOW_REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert web["environment"] == worker["environment"]
    assert web["volumes"] == worker["volumes"]
    volume, mount = web["volumes"][0].split(":")[:2]
    assert volume == "files" and web["environment"]["BATCHFLOW_FILES_DIR"].startswith(mount + "/")
    assert " ".join(worker["command"]) == "celery -A worker worker --loglevel=INFO"
    command = " ".join(web["command"])
    assert command.startswith("gunicorn ") and "--worker-class=gthread" in command
    assert web["command"][-1] == "batchflow_demo:create_app()"


def test_the_web_healthcheck_asks_batchflow_health_for_redis_and_the_broker(
    services, prefix, monkeypatch
):
    gunicorn = pytest.importorskip("gunicorn.util")
    check = services["web"]["healthcheck"]
    probe = check["test"][-1]
    url = re.search(r"'(http://127\.0\.0\.1:8000(/[^']+))'", probe)
    assert url and url.group(2) == "/jobs/health?check=redis,broker", probe
    monkeypatch.setenv("BATCHFLOW_KEY_PREFIX", prefix)
    app = gunicorn.import_app("batchflow_demo:create_app()")
    answer = app.test_client().get(url.group(2))  # what the probe asks, of the app it serves
    assert answer.status_code == 200, answer.text
    assert set(answer.get_json()["checks"]) == {"redis", "broker"}


def test_the_containers_entry_points_load(prefix, monkeypatch):
    # What `gunicorn 'batchflow_demo:create_app()'` and `celery -A worker worker` import.
    gunicorn = pytest.importorskip("gunicorn.util")
    monkeypatch.setenv("BATCHFLOW_KEY_PREFIX", prefix)
    app = gunicorn.import_app("batchflow_demo:create_app()")
    show = "import worker; print(worker.celery.main, worker.celery.conf.task_default_queue)"
    result = subprocess.run(
        [sys.executable, "-c", show],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert app.name == "batchflow_demo"
    assert app.config["BATCHFLOW_KEY_PREFIX"] == prefix
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["batchflow_demo", prefix]


def test_the_dockerfile_installs_declared_extras():
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    extras = re.findall(r'pip install "\.\[([^\]]+)\]"', dockerfile)
    assert extras, "the Dockerfile should pip install the checkout with its extras"
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    declared = set(setup["options.extras_require"])
    for extra in ",".join(extras).split(","):
        assert extra.strip() in declared, (
            f"the Dockerfile installs batchflow[{extra}]: declare that extra in setup.cfg"
        )


def test_dockerignore_keeps_what_the_image_needs():
    with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as f:
        patterns = [p.strip() for p in f if p.strip() and not p.startswith("#")]
    needed = [
        "setup.cfg",
        "pyproject.toml",
        "README.md",
        "batchflow/__init__.py",
        "batchflow_demo/__init__.py",
        "batchflow_demo/templates/demo/index.html",
        "templates/batchflow/base.html",
        "static/batchflow/batchflow.js",
        "worker/__init__.py",
    ]
    for path in needed:
        assert os.path.exists(os.path.join(ROOT, path)), path
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = [p for p in patterns if any(fnmatch.fnmatch(x, p) for x in prefixes)]
        assert not excluded, f"{path} is left out of the image by {excluded}"
