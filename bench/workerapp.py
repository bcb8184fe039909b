"""The Celery app of benchmark worker subprocesses: ``celery -A bench.workerapp worker``.

Settings come from ``BATCHFLOW_*`` environment variables (the run sets its own prefix and queue);
broker keys live under the same prefix. batchflow's tasks and the hand-written peers share this
one app, so both run on the same broker, settings and worker.
"""

from __future__ import annotations

from batchflow.config import Settings
from batchflow.engine import Engine
from batchflow.store import Store
from batchflow.tasks import make_celery
from bench.handlers import make_registry
from bench.peers import register_peer_tasks

settings = Settings.from_mapping()
engine = Engine(settings, Store.from_url(settings.redis_url, settings.key_prefix), make_registry())
celery = make_celery(
    engine,
    main="batchflow-bench",
    config={
        "broker_transport_options": {"global_keyprefix": f"{settings.key_prefix}:broker:"},
        "worker_send_task_events": False,
    },
)
register_peer_tasks(celery)
