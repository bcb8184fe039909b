"""batchflow: long-running batch jobs for Flask apps, run by Celery workers, with state in Redis.

A user writes a handler class, registers it by name, mounts the extension, and runs workers::

    from batchflow import BatchFlow, FileJob, registry

    @registry.register("contacts-report")
    class ContactsReport(FileJob):
        ...

    batchflow = BatchFlow(app)
    celery = batchflow.make_celery(app)     # celery -A yourmodule worker
"""

from .config import Settings
from .engine import Engine
from .exceptions import (
    BatchflowError,
    ConfigurationError,
    InvalidParams,
    InvalidTransition,
    JobNotFound,
    PermissionDenied,
    TooManyItems,
    Unavailable,
    UnknownHandler,
)
from .handlers import FileJob, Handler, ItemsJob, TaskJob
from .job import Job, StepResponse
from .registry import Registry, registry
from .schema import Status
from .state import JobState

__all__ = [
    "BatchFlow",
    "BatchflowError",
    "ConfigurationError",
    "Engine",
    "FileJob",
    "Handler",
    "InvalidParams",
    "InvalidTransition",
    "ItemsJob",
    "Job",
    "JobNotFound",
    "JobState",
    "PermissionDenied",
    "Registry",
    "Settings",
    "Status",
    "StepResponse",
    "TaskJob",
    "TooManyItems",
    "Unavailable",
    "UnknownHandler",
    "registry",
]
__version__ = "0.1.0.dev0"


def __getattr__(name: str) -> object:
    # The Flask extension is imported on first use, so that workers and scripts importing
    # batchflow.engine do not pay for (or depend on) Flask's import.
    if name == "BatchFlow":
        from .extension import BatchFlow

        return BatchFlow
    raise AttributeError(f"module 'batchflow' has no attribute {name!r}")
