"""The Celery app of the fault tests' worker subprocesses (``celery -A tests.fault_workerapp``).

Like tests/workerapp.py (settings from BATCHFLOW_* environment variables, broker keys under the
test's key prefix), with the fault handlers and the instrumentation of tests/fault_handlers.py.
``BFT_VISIBILITY_TIMEOUT`` makes the broker redeliver unacknowledged messages after that many
seconds, sweeping every second. The worker announces itself in ``{prefix}:ready`` when it is ready.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_ready

from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.store import Store
from batchflow.tasks import make_celery
from tests.fault_handlers import instrument, make_fault_registry
from tests.handlers import side
from tests.helpers import broker_options

settings = Settings.from_mapping()
prefix = settings.key_prefix
engine = Engine(settings, Store.from_url(settings.redis_url, prefix), make_fault_registry())
transport: dict[str, Any] = broker_options(prefix)["broker_transport_options"]
if os.environ.get("BFT_VISIBILITY_TIMEOUT"):
    transport.update(
        visibility_timeout=float(os.environ["BFT_VISIBILITY_TIMEOUT"]),
        unacked_restore_interval=1,
        unacked_restore_throttle=1,
    )
celery = make_celery(
    engine,
    config={"broker_transport_options": transport, "worker_send_task_events": False},
)
instrument(engine, prefix)


@worker_ready.connect
def _announce(**kwargs: Any) -> None:
    side.rpush(f"{prefix}:ready", os.environ.get("BFT_WORKER_NAME", str(os.getpid())))
