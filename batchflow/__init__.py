"""batchflow: long-running batch jobs for Flask apps, run by Celery workers, with state in Redis.

A user writes a handler class, registers it by name, mounts the extension, and runs workers::

    from batchflow import BatchFlow, FileJob, registry

    @registry.register("contacts-report")
    class ContactsReport(FileJob):
        ...

    batchflow = BatchFlow(app)
    celery = batchflow.celery(app)     # celery -A yourmodule worker

``__all__`` is the user's vocabulary. Lower layers have modules of their own (``batchflow.engine``
for :class:`~batchflow.engine.Engine`, ``batchflow.config`` for
:class:`~batchflow.config.Settings`...).
"""

# Engine and Settings are not the user's vocabulary (not in __all__): import them from
# batchflow.engine and batchflow.config. They stay importable from here for scripts written
# before they left __all__.
from .config import Settings  # noqa: F401
from .csvsource import CsvSource
from .engine import Engine  # noqa: F401
from .exceptions import (
    BatchflowError,
    ConfigurationError,
    InvalidParams,
    InvalidTransition,
    JobNotFound,
    LimitReached,
    PermissionDenied,
    TooManyItems,
    Unavailable,
    UnknownHandler,
    UserError,
)
from .extension import BatchFlow
from .files import FileJob
from .handlers import Handler, ItemsJob, TaskJob
from .i18n import Message
from .imports import ImportJob
from .job import Job, StepResponse
from .notices import Notice
from .registry import Registry, registry
from .schema import Status
from .sources import CallableSource, Entry, Plan, Source, SourceError
from .state import JobState

__all__ = [
    "BatchFlow",
    "BatchflowError",
    "CallableSource",
    "ConfigurationError",
    "CsvSource",
    "Entry",
    "FileJob",
    "Handler",
    "ImportJob",
    "InvalidParams",
    "InvalidTransition",
    "ItemsJob",
    "Job",
    "JobNotFound",
    "JobState",
    "LimitReached",
    "Message",
    "Notice",
    "PermissionDenied",
    "Plan",
    "Registry",
    "Source",
    "SourceError",
    "Status",
    "StepResponse",
    "TaskJob",
    "TooManyItems",
    "Unavailable",
    "UnknownHandler",
    "UserError",
    "registry",
]
__version__ = "0.1.0.dev0"
