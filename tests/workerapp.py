"""A Celery app for worker subprocesses in tests: ``celery -A tests.workerapp worker``.

Settings come from BATCHFLOW_* environment variables; broker keys share the test's key prefix.
"""

from __future__ import annotations

import os

from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.store import Store
from batchflow.tasks import make_celery
from tests.handlers import make_registry
from tests.helpers import broker_options

settings = Settings.from_mapping()
engine = Engine(settings, Store.from_url(settings.redis_url, settings.key_prefix), make_registry())
celery = make_celery(
    engine,
    config={**broker_options(settings.key_prefix), "worker_send_task_events": False},
)
if os.environ.get("BFT_VISIBILITY_TIMEOUT"):
    celery.conf.broker_transport_options["visibility_timeout"] = float(
        os.environ["BFT_VISIBILITY_TIMEOUT"]
    )
