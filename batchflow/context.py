"""What batchflow's web modules share: one app's state, and who is asking in this request.

:mod:`.extension` builds a :class:`State` per app; :mod:`.views` and :mod:`.cli` read it through
:func:`get_state`. This module imports no other web module, so imports run one way only:
``extension`` imports ``views`` and ``cli``, and all three import this.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from typing import Any, NoReturn

from celery import Celery
from flask import (
    Flask,
    abort,
    current_app,
    has_app_context,
    has_request_context,
    request,
    session,
)

from .config import Settings
from .engine import Engine
from .exceptions import ConfigurationError, PermissionDenied
from .i18n import connect
from .i18n import gettext as _
from .registry import Registry
from .schema import WAITING_STATUSES
from .state import JobState

#: ``identity() -> str | None``: the current user's id, called in requests; None means "not
#: allowed to use jobs".
Identity = Callable[[], str | None]
#: ``can_admin(user_id) -> bool``: may this user see and act on everyone's jobs.
AdminCheck = Callable[[str], bool]

_SESSION_KEY = "batchflow_anon"


@dataclasses.dataclass
class State:
    """What one app's batchflow holds, in ``app.extensions["batchflow"]``: what ``init_app``
    built, and the options given to ``BatchFlow(...)``, so that one blueprint serves every app.

    :param settings: the app's ``BATCHFLOW_*`` settings, validated.
    :param engine: starts, reads and signals the app's jobs.
    :param celery: the Celery app that runs them.
    :param identity: the app's identity hook.
    :param can_admin: the app's admin check.
    :param csrf: whether batchflow checks the CSRF token on its own POST routes.
    """

    settings: Settings
    engine: Engine
    celery: Celery
    identity: Identity
    can_admin: AdminCheck
    csrf: bool

    @property
    def registry(self) -> Registry:
        return self.engine.registry


def get_state(app: Flask | None = None) -> State:
    """``app``'s batchflow state (default: the current app's).

    :raises ConfigurationError: batchflow was not set up on the app.
    """
    app = app or current_app
    try:
        return app.extensions["batchflow"]  # type: ignore[no-any-return]
    except KeyError:
        raise ConfigurationError(
            "batchflow is not set up on this app: call BatchFlow().init_app(app)."
        ) from None


def flask_login_user() -> Any | None:
    """Flask-Login's ``current_user`` when the app uses Flask-Login (signed in or not), else
    None. Flask-Login is imported only then: it is not a dependency of batchflow."""
    if getattr(current_app, "login_manager", None) is None:
        return None
    from flask_login import current_user

    return current_user


def default_identity() -> str:
    """The current user's id: Flask-Login's ``current_user`` when the app uses it, else an
    anonymous id kept in the signed session (so each browser sees only its own jobs)."""
    user = flask_login_user()
    if user is not None and user.is_authenticated:
        return f"user:{user.get_id()}"
    if _SESSION_KEY not in session:
        session[_SESSION_KEY] = secrets.token_urlsafe(12)
    return f"anon:{session[_SESSION_KEY]}"


def default_load_user(owner: str) -> Any | None:
    """A job's owner as a user object, in its worker (which runs steps inside the app's
    context): with Flask-Login, what the app's ``user_loader`` returns for an owner who was
    signed in (``user:<id>``, the default identity), else the login manager's anonymous user;
    without Flask-Login, None."""
    manager = getattr(current_app, "login_manager", None)
    if manager is None:
        return None
    if owner.startswith("user:"):
        loader = getattr(manager, "_user_callback", None)  # set by @login_manager.user_loader
        if loader is None:
            raise ConfigurationError(
                "Flask-Login has no user_loader: register one (@login_manager.user_loader), or "
                "give BatchFlow(load_user=...)."
            )
        user = loader(owner.removeprefix("user:"))
        if user is not None:
            return user
    return manager.anonymous_user()


def forget_anonymous_identity_at_login(app: Flask) -> None:
    """With Flask-Login, drop the anonymous identity from the session when a user logs in on
    ``app`` (``BATCHFLOW_FORGET_ANON_AT_LOGIN``): the jobs started before logging in stay with
    the anonymous id, and a later logout starts a fresh one. Without Flask-Login, nothing to do.
    """
    try:
        from flask_login import user_logged_in
    except ImportError:
        return

    def forget(sender: Flask, **extra: Any) -> None:
        session.pop(_SESSION_KEY, None)

    user_logged_in.connect(forget, app, weak=False)


def current_identity() -> str:
    """The current user's id, from the app's identity hook.

    :raises PermissionDenied: the hook says nobody is signed in.
    """
    user = get_state().identity()
    if not user:
        raise PermissionDenied(_("Sign in to use jobs."))
    return str(user)


def connect_translations() -> None:
    """Give :mod:`batchflow.i18n` the request's locale and the app's own translations from
    Flask-Babel, for an app that set it up (``Babel(app)``); English otherwise."""
    try:
        import flask_babel
    except ImportError:
        return

    def request_locale() -> str | None:
        if not has_request_context() or "babel" not in current_app.extensions:
            return None
        found = flask_babel.get_locale()
        return str(found) if found else None

    def app_gettext(text: str, code: str) -> str:
        if not has_app_context() or "babel" not in current_app.extensions:
            return text
        with flask_babel.force_locale(code):  # a worker has no request to select one
            return str(flask_babel.gettext(text))

    connect(request_locale, app_gettext)


def existing_identity() -> str | None:
    """The current user's id if they have one already: unlike :func:`current_identity`, an
    anonymous visitor gets no anonymous id (and no session cookie) from this; None for them."""
    state = get_state()
    if state.identity is default_identity:
        user = flask_login_user()
        if not (user is not None and user.is_authenticated) and _SESSION_KEY not in session:
            return None
    return str(state.identity() or "") or None


def is_admin(user: str) -> bool:
    """Whether the app's admin check lets ``user`` see and act on everyone's jobs."""
    return bool(get_state().can_admin(user))


def permission_subject() -> Any:
    """What a handler's permission hook receives: Flask-Login's user if the app uses
    Flask-Login, else the identity string.

    :raises PermissionDenied: no Flask-Login, and the identity hook says nobody is signed in.
    """
    user = flask_login_user()
    return user if user is not None else current_identity()


def nobody_works(state: JobState, *, wait: bool = False) -> bool:
    """Whether ``state``'s job needs a worker while no worker consuming the app's queue is seen
    (read at most every two seconds per process; ``wait``: read now if older, else the answer
    on hand: see :meth:`Fleet.anyone_serves`)."""
    if state.status.value not in WAITING_STATUSES:
        return False
    app = get_state()
    return not app.engine.fleet.anyone_serves(app.settings.queue, wait=wait)


def unknown_page() -> NoReturn:
    """The 404 of a URL no route matches (the app's own 404 page, if it has one), for a page
    that is not there for this user (the admin page, the metrics): the request forgets its
    route, so that batchflow's error page and headers, which a matched route gets, do not tell
    the two apart."""
    request.url_rule = None
    abort(404)
