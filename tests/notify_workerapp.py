"""The Celery app of the notification kill tests' worker subprocesses
(``celery -A tests.notify_workerapp``): settings from BATCHFLOW_* and MAIL_* environment variables,
broker keys under the test's prefix, a handler that always emails its owner (``user:<name>`` is
``<name>@example.com``), and the fault points ``before_send`` and ``after_send`` around the SMTP
send (see tests/fault_handlers.py). The worker announces itself in ``{prefix}:ready``.
"""

from __future__ import annotations

import os
import types
from typing import Any

from celery.signals import worker_ready

import batchflow.notify
from batchflow import Registry, TaskJob
from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.job import Job
from batchflow.store import Store
from batchflow.tasks import make_celery
from tests.fault_handlers import fault_point
from tests.handlers import side
from tests.helpers import broker_options


class Mailed(TaskJob):
    labels = {"title": "Mailed report"}
    notify_email = True

    def run(self, job: Job) -> None:
        job.add_message("done")


def make_mail_registry() -> Registry:
    registry = Registry()
    registry.add("mailed", Mailed)
    return registry


def user_of(owner: str) -> Any:
    return types.SimpleNamespace(email=f"{owner.split(':')[-1]}@example.com")


if __name__ != "__main__" and os.environ.get("BFT_NOTIFY_WORKER"):
    settings = Settings.from_mapping()
    prefix = settings.key_prefix
    store = Store.from_url(settings.redis_url, prefix)
    engine = Engine(settings, store, make_mail_registry(), load_user=user_of)
    celery = make_celery(
        engine, config={**broker_options(prefix), "worker_send_task_events": False}
    )
    real_send = batchflow.notify.send_email

    def send_email(mail: Any, message: Any, timeout: float) -> None:
        job_id = str(message["X-Batchflow-Job"])
        fault_point(prefix, "before_send", job_id, 0)
        real_send(mail, message, timeout)
        fault_point(prefix, "after_send", job_id, 0)

    batchflow.notify.send_email = send_email  # type: ignore[assignment]

    @worker_ready.connect
    def _announce(**kwargs: Any) -> None:
        side.rpush(f"{prefix}:ready", os.environ.get("BFT_WORKER_NAME", str(os.getpid())))
