"""How a handler's exception is shown: a :class:`~batchflow.UserError`'s text as written to
everyone; anything else as a generic sentence with a reference, its real text and traceback in
the log (and, for admins, in the job's ``error_detail``) under that reference."""

from __future__ import annotations

import dataclasses
import logging
import secrets

from .exceptions import UserError
from .i18n import N_, Message

log = logging.getLogger("batchflow")

#: What everyone but an admin sees for an exception that is not a UserError.
GENERIC_ERROR = N_("Something went wrong (ref %(ref)s).")


def error_message(exc: BaseException) -> str:
    """The text a user sees for an exception: its message, or its class name if it has none."""
    text = str(exc).strip()
    return text if text else type(exc).__name__


@dataclasses.dataclass(frozen=True)
class Failure:
    """An exception a handler raised, as each audience sees it.

    :param shown: for everyone: a :class:`UserError`'s text as written, else
        :data:`GENERIC_ERROR` with the reference, kept as a :class:`~batchflow.i18n.Message`
        (shown in each reader's language: see :func:`batchflow.i18n.shown`).
    :param detail: the real text, ``"ref <ref>: <Class>: <message>"``, for the log and for
        admins; empty for a UserError (nothing is hidden).
    :param ref: the reference that ties ``shown`` to the log entry; empty for a UserError.
    """

    shown: str
    detail: str = ""
    ref: str = ""


def describe_failure(exc: BaseException, where: str, *, item: bool = False) -> Failure:
    """What to show for ``exc``, raised by a handler at ``where`` (``"job <id> (<handler>)"``...),
    after logging it: anything but a UserError goes to the ``batchflow`` logger with its
    traceback under a fresh reference (an error, or a warning for one bad id of an item job)."""
    if isinstance(exc, UserError):
        return Failure(error_message(exc))
    ref = secrets.token_hex(4)
    text = getattr(exc, "developer_message", None) or error_message(exc)
    detail = f"{type(exc).__name__}: {text}"
    level = logging.WARNING if item else logging.ERROR
    # An exception made but never raised (a worker without the job's handler) has no traceback:
    # its one line would only repeat the person's message under the real one.
    trace = exc if exc.__traceback__ is not None else None
    log.log(level, "%s raised (ref %s): %s", where, ref, detail, exc_info=trace)
    return Failure(Message(GENERIC_ERROR, ref=ref).stored(), f"ref {ref}: {detail}", ref)
