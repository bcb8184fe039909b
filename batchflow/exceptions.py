"""The errors batchflow raises. Every one says what to do about it.

Control-flow signals that a handler raises on purpose are not errors and do not live here.
"""

from __future__ import annotations

from werkzeug.exceptions import NotFound

from .i18n import N_
from .i18n import gettext as _
from .schema import SignalCode


class BatchflowError(Exception):
    """Base class of every error batchflow raises."""

    #: The HTTP status the web layer answers with when this error reaches a request.
    http_status = 500
    #: More fields of the JSON error body, and more response headers (``Retry-After``...).
    details: dict[str, object] = {}
    headers: dict[str, str] = {}


class ConfigurationError(BatchflowError):
    """The app or worker is set up wrongly (a bad config value, a second ``init_app``)."""


class UnknownHandler(BatchflowError):
    """No handler is registered under the requested name.

    Its message is for the person who asked ("This job is not available."); what a developer
    needs to fix it is :attr:`developer_message`, which the web layer logs (and shows in debug
    mode only) and a worker logs.

    :param name: the handler name asked for.
    :param worker_knows: in a worker, the names it has: the fix is then the worker's imports.
    """

    http_status = 404

    def __init__(self, name: str, worker_knows: list[str] | None = None) -> None:
        super().__init__(_("This job is not available."))
        self.name = name
        #: How to fix it: for the log and the developer's debug page, never for an end user.
        self.developer_message = (
            f"No job handler is registered as {name!r}. Register one with "
            f"@registry.register({name!r}) in a module your app and worker both import."
        )
        if worker_knows is not None:
            self.developer_message = (
                f"no handler named {name!r} is registered in this worker; import the module that "
                "registers it in the worker's app (the module `celery -A` loads, e.g. worker.py, "
                "calls create_app(): create_app must import myapp.jobs, or wherever "
                f"@registry.register({name!r}) is). This worker knows: "
                f"{', '.join(worker_knows) or 'no handlers at all'}."
            )


class InvalidParams(BatchflowError):
    """The parameters or ids a job was started with are not acceptable.

    :param message: what is wrong, for the person who sent them.
    :param errors: per-field messages, when the parameters came from a form.
    """

    http_status = 400

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


class TooManyItems(InvalidParams):
    """More ids were sent than ``BATCHFLOW_MAX_IDS`` allows."""

    http_status = 413


class PermissionDenied(BatchflowError):
    """The handler's permission hook refused the current user."""

    http_status = 403


class JobNotFound(BatchflowError, NotFound):
    """No such job, or not one the current user may see: the two are one answer on purpose."""

    http_status = 404

    def __init__(self, job_id: str = "") -> None:
        text = _("No such job. It may have expired, or the link is wrong.")
        BatchflowError.__init__(self, text)
        NotFound.__init__(self, text)
        self.job_id = job_id

    def __str__(self) -> str:
        # werkzeug's HTTPException would prefix "404 Not Found: "; users see just the sentence.
        return str(self.description)


class InvalidTransition(BatchflowError):
    """The job cannot do that now (stop a finished job, resume a running one).

    :param reason: a sentence for the user saying why.
    """

    http_status = 409

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unavailable(BatchflowError):
    """Redis or the Celery broker does not answer; nothing was created.

    Its message is for the person who asked: what is down, in words that name no address. What an
    operator needs (the driver's error, with the server's host and port, and the setting to check)
    is :attr:`developer_message`, which the web layer logs (and shows in debug mode only) and the
    CLI prints.
    """

    http_status = 503

    def __init__(self, message: str, developer_message: str | None = None) -> None:
        super().__init__(message)
        #: The cause and the fix: for the log, the CLI and the debug page, never for an end user.
        self.developer_message = developer_message or message

    @classmethod
    def redis(cls, exc: Exception) -> Unavailable:
        """Redis failed with ``exc`` (a connection or timeout error of redis-py)."""
        if "No connection available" in str(exc) or "Too many connections" in str(exc):
            return cls(
                N_("The server is too busy to answer; nothing was changed."),
                "Every Redis connection of this process is busy. Raise the pool size with "
                "?max_connections=N in BATCHFLOW_REDIS_URL.",
            )
        return cls(
            N_("Redis does not answer; nothing was changed."),
            f"Redis does not answer ({exc}). Check that it runs and that "
            "BATCHFLOW_REDIS_URL points at it.",
        )


class LimitReached(BatchflowError):
    """Too many at once: the owner's active jobs, or their open event streams (HTTP 429).

    :param message: what the limit is and what to do, for the person.
    :param retry_after: seconds after which trying again may succeed (the ``Retry-After`` header).
    :param details: more fields of the JSON error body (the owner's running job ids...).
    """

    http_status = 429

    def __init__(
        self, message: str, *, retry_after: int = 5, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.details = dict(details or {})
        self.headers = {"Retry-After": str(retry_after)}


class UserError(Exception):
    """Raise from a handler when the message is meant for the person watching the job: it is
    shown on the page, in the status JSON and in the per-id error report as written (so write
    nothing there a user must not read).

    Any other exception a handler raises (in ``create_job``, ``continue_job``, ``change``,
    ``undo``, ``cleanup_job`` or a callback) is shown as "Something went wrong (ref 7f3a9c2e).";
    its message and traceback go to the worker's log (logger ``batchflow``) under that
    reference, and admins (the ``can_admin`` hook) see its message beside the generic one.
    """


def refuse(code: SignalCode, job_id: str, status: str, what: str) -> None:
    """Raise what a refused request (``what``: stop, cancel, continue...) means for its caller;
    nothing for a code that is not a refusal.

    :raises JobNotFound: no such job.
    :raises InvalidTransition: not now, saying why.
    """
    if code is SignalCode.MISSING:
        raise JobNotFound(job_id)
    if code is SignalCode.TERMINAL:
        raise InvalidTransition(
            _(
                "The job has already ended (%(status)s); there is nothing to %(what)s.",
                status=status,
                what=what,
            )
        )
    if code is SignalCode.REFUSED:
        raise InvalidTransition(
            _("The job cannot %(what)s while it is %(status)s.", what=what, status=status)
        )
    if code is SignalCode.ENDING:
        raise InvalidTransition(
            _("The job is finishing its last step; it is too late to %(what)s.", what=what)
        )
