"""Handlers by name. A request names a registered handler; nothing is ever imported from a name."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .exceptions import ConfigurationError, InvalidParams, UnknownHandler
from .files import FileJob
from .handlers import Handler, ItemsJob, TaskJob
from .i18n import gettext as _
from .ids import check_ids
from .imports import ImportJob
from .job import Job
from .schema import Kind

H = TypeVar("H", bound=type[Handler])
Permission = Callable[[Any], bool]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class HandlerSpec:
    """A registered handler: its name, class and optional permission hook, and whether the
    hook is asked again before each step (``recheck_permission``)."""

    name: str
    handler_class: type[Handler]
    permission: Permission | None = None
    recheck_permission: bool = False

    @property
    def kind(self) -> Kind:
        return Kind(self.handler_class.kind)

    def allows(self, user: Any) -> bool:
        """Whether ``user`` may start this job (True when there is no permission hook)."""
        return self.permission is None or bool(self.permission(user))

    def withdrawn(self, job: Job) -> str | None:
        """With ``recheck_permission``: a message saying why the job stops, if its owner
        (``job.user``, else the owner's id, as the hook sees a request's user) may no longer run
        it; else None."""
        if not self.recheck_permission or self.permission is None:
            return None
        subject = job.user if job.user is not None else job.owner
        if self.allows(subject):
            return None
        return "Stopped: the job's owner is no longer allowed to run it; the work done is kept."

    def create(self) -> Handler:
        return self.handler_class()

    def items_source(self, ids: Iterable[Any] | None, max_ids: int) -> tuple[list[str] | None, str]:
        """Where a new job of this handler gets its work: the ids posted with the start (checked,
        at most ``max_ids``) and ``"request"``; else None and ``"handler"`` (its ``items()``),
        ``"source"`` (it walks a source) or ``""``.

        :raises InvalidParams: ids for a handler that takes none, or none for one that needs them.
        """
        cls = self.handler_class
        if self.kind is not Kind.ITEMS:
            if ids is not None:
                raise InvalidParams(_("Handler %(name)r does not take ids.", name=self.name))
            return None, "source" if cls.walks_source() else ""
        if ids is None:
            if cls.walks_source():
                return None, "source"
            if issubclass(cls, ItemsJob) and cls.items is not ItemsJob.items:
                return None, "handler"
            raise InvalidParams(
                _("Handler %(name)r needs a list of ids to work on.", name=self.name)
            )
        return check_ids(ids, max_ids), "request"


class Registry:
    """Maps handler names to handler classes.

    Use the module-level :data:`registry`, or your own instance passed to ``BatchFlow``.
    """

    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}

    def register(
        self, name: str, *, permission: Permission | None = None, recheck_permission: bool = False
    ) -> Callable[[H], H]:
        """Class decorator: register a handler class under ``name``.

        :param name: lowercase letters, digits, ``-`` and ``_``; it appears in URLs.
        :param permission: ``permission(user) -> bool``, checked in the request that starts a job.
        :param recheck_permission: ask ``permission`` again in the worker before each step, about
            the job's owner (``job.user``): a permission withdrawn while the job runs stops it,
            keeping the work done, with a message saying why.
        :raises ConfigurationError: a bad name, a name taken by another class, a class that
            lacks a method its settings need, or ``recheck_permission`` without ``permission``.
        """

        def decorator(cls: H) -> H:
            self.add(name, cls, permission=permission, recheck_permission=recheck_permission)
            return cls

        return decorator

    def add(
        self,
        name: str,
        cls: type[Handler],
        *,
        permission: Permission | None = None,
        recheck_permission: bool = False,
    ) -> None:
        """Register ``cls`` under ``name`` (the non-decorator form of :meth:`register`)."""
        if recheck_permission and permission is None:
            raise ConfigurationError(
                f"Handler {name!r}: recheck_permission=True needs a permission hook to ask "
                "(permission=...)."
            )
        if not NAME_RE.match(name):
            raise ConfigurationError(
                f"Handler name {name!r} is not allowed: use 1-64 lowercase letters, digits, "
                "'-' or '_', starting with a letter or digit."
            )
        if not (isinstance(cls, type) and issubclass(cls, Handler)):
            raise ConfigurationError(f"{cls!r} is not a batchflow Handler subclass.")
        _check_complete(cls)
        existing = self._specs.get(name)
        if existing and existing.handler_class.__qualname__ != cls.__qualname__:
            raise ConfigurationError(
                f"Handler name {name!r} is already registered to "
                f"{existing.handler_class.__qualname__}; pick another name."
            )
        self._specs[name] = HandlerSpec(name, cls, permission, recheck_permission)

    def get(self, name: str) -> HandlerSpec:
        """The handler registered as ``name``.

        :raises UnknownHandler: nothing is registered under that name.
        """
        spec = self._specs.get(name) if isinstance(name, str) else None
        if spec is None:
            raise UnknownHandler(str(name)[:80])
        return spec

    def find(self, name: str) -> HandlerSpec | None:
        """The handler registered as ``name``, or None."""
        return self._specs.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return sorted(self._specs)

    def allowed(self, user: Any) -> list[HandlerSpec]:
        """The handlers ``user`` may start (each one's permission hook asked, as a start asks
        it), by name."""
        return [spec for spec in sorted(self, key=lambda s: s.name) if spec.allows(user)]


def _overrides(cls: type, base: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(base, method)


def _check_complete(cls: type[Handler]) -> None:
    name = cls.__qualname__
    limit = cls.max_active_jobs
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigurationError(
            f"{name}.max_active_jobs must be a whole number >= 0 (0 = no limit), or None for "
            "the owner-wide BATCHFLOW_MAX_ACTIVE_JOBS."
        )
    if issubclass(cls, ImportJob) and not _overrides(cls, ImportJob, "apply"):
        raise ConfigurationError(f"{name} must define apply(values, job).")
    if issubclass(cls, ItemsJob):
        if not any(_overrides(cls, ItemsJob, m) for m in ("change", "change_batch")):
            raise ConfigurationError(
                f"{name} must define change(item, job) (or change_batch(items, job))."
            )
        if cls.can_cancel and not _overrides(cls, ItemsJob, "undo"):
            raise ConfigurationError(f"{name} sets can_cancel but defines no undo(item_id, job).")
        _check_lanes(cls)
    elif issubclass(cls, TaskJob):
        if not _overrides(cls, TaskJob, "run"):
            raise ConfigurationError(f"{name} must define run(job).")
    elif issubclass(cls, FileJob) and cls.walks_source():
        pass  # it writes the rows of its source's entries
    else:
        if not _overrides(cls, FileJob if issubclass(cls, FileJob) else Handler, "continue_job"):
            raise ConfigurationError(
                f"{name} must define continue_job(job, batch_size)"
                + (", or source(job)." if issubclass(cls, FileJob) else ".")
            )
        if cls.can_cancel and not _overrides(cls, Handler, "undo_job"):
            raise ConfigurationError(f"{name} sets can_cancel but defines no undo_job().")


def _check_lanes(cls: type[ItemsJob]) -> None:
    name, lanes, most = cls.__qualname__, cls.lanes, cls.max_lanes
    whole = [n for n in (lanes, most) if n is not None]
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in whole):
        raise ConfigurationError(f"{name}.lanes and .max_lanes must be whole numbers >= 1.")
    if most is not None and most < lanes:
        raise ConfigurationError(f"{name}.max_lanes ({most}) is less than its lanes ({lanes}).")
    if cls.walks_source() and max(whole) > 1:
        raise ConfigurationError(
            f"{name} walks a source: its job runs in one chain of steps (lanes cut a job's ids)."
        )


#: The default registry that ``@registry.register(...)`` adds to.
registry = Registry()
