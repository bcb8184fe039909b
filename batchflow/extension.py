"""The Flask extension: ``BatchFlow()`` with ``init_app(app)``, and the worker's Celery app."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from celery import Celery
from flask import Flask, current_app, session
from flask_wtf.csrf import CSRFProtect

from .config import DEFAULTS, Settings
from .engine import Engine
from .exceptions import ConfigurationError
from .registry import Registry
from .registry import registry as default_registry
from .store import Store
from .tasks import make_celery

Identity = Callable[[], str | None]
AdminCheck = Callable[[str], bool]

_SESSION_KEY = "batchflow_anon"


def default_identity() -> str:
    """The current user's id: Flask-Login's ``current_user`` when the app uses it, else an
    anonymous id kept in the signed session (so each browser sees only its own jobs)."""
    login_manager = getattr(current_app, "login_manager", None)
    if login_manager is not None:
        from flask_login import current_user

        if current_user.is_authenticated:
            return f"user:{current_user.get_id()}"
    if _SESSION_KEY not in session:
        import secrets

        session[_SESSION_KEY] = secrets.token_urlsafe(12)
    return f"anon:{session[_SESSION_KEY]}"


@dataclasses.dataclass
class State:
    """What one app's batchflow holds: in ``app.extensions["batchflow"]``."""

    extension: BatchFlow
    settings: Settings
    engine: Engine
    celery: Celery

    @property
    def registry(self) -> Registry:
        return self.engine.registry


class BatchFlow:
    """Long-running jobs for a Flask app.

    :param app: the app, or None to call :meth:`init_app` later (app factories).
    :param registry: the handlers jobs may name (default: the module-level ``registry``).
    :param url_prefix: where the blueprint is mounted.
    :param identity: ``identity() -> str | None``: the current user's id, called in requests;
        None means "not allowed to use jobs" (401). Default: :func:`default_identity`.
    :param can_admin: ``can_admin(user_id) -> bool``: may this user see and act on everyone's jobs.
    :param csrf: protect batchflow's POST routes with Flask-WTF's CSRF check (keep it on unless the
        app already protects every view with ``CSRFProtect``).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        registry: Registry | None = None,
        url_prefix: str = "/jobs",
        identity: Identity | None = None,
        can_admin: AdminCheck | None = None,
        csrf: bool = True,
    ) -> None:
        self.registry = registry or default_registry
        self.url_prefix = url_prefix
        self.identity = identity or default_identity
        self.can_admin = can_admin or (lambda user: False)
        self.csrf = csrf
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read ``BATCHFLOW_*`` config, connect to Redis, build the Celery app, mount the blueprint.

        :raises ConfigurationError: a bad setting, or batchflow set up on this app twice.
        """
        if "batchflow" in app.extensions:
            raise ConfigurationError(
                "batchflow is already set up on this app: call init_app(app) once, "
                "or BatchFlow(app) without init_app."
            )
        for key, value in DEFAULTS.items():
            # Flask config wins, then the environment (the same keys), then the default.
            app.config.setdefault(key, os.environ.get(key, value))
        settings = Settings.from_mapping(app.config)
        store = Store.from_url(settings.redis_url, settings.key_prefix)
        engine = Engine(settings, store, self.registry)
        celery = make_celery(
            engine,
            main=app.import_name,
            context=app.app_context,
            config=app.config.get("BATCHFLOW_CELERY"),
        )
        app.extensions["batchflow"] = State(self, settings, engine, celery)

        from .views import make_blueprint

        app.register_blueprint(make_blueprint(self), url_prefix=self.url_prefix)
        if self.csrf and "csrf" not in app.extensions:
            # Protect batchflow's routes (its blueprint calls protect()); the app's own views stay
            # as they were unless the app turned the global check on itself.
            app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
            CSRFProtect(app)
        from .cli import cli

        app.cli.add_command(cli)

    @staticmethod
    def state(app: Flask | None = None) -> State:
        """This app's batchflow state.

        :raises ConfigurationError: batchflow was not set up on the app.
        """
        app = app or current_app
        try:
            return app.extensions["batchflow"]  # type: ignore[no-any-return]
        except KeyError:
            raise ConfigurationError(
                "batchflow is not set up on this app: call BatchFlow().init_app(app)."
            ) from None

    def engine(self, app: Flask | None = None) -> Engine:
        """The app's engine: start jobs, read them, signal them, from any code."""
        return self.state(app).engine

    def make_celery(self, app: Flask) -> Celery:
        """The Celery app that runs this Flask app's jobs; a worker module exposes it::

            # worker/__init__.py  ->  celery -A worker worker
            celery = batchflow.make_celery(create_app())

        Tasks run inside ``app.app_context()``.
        """
        return self.state(app).celery

    def start(self, handler: str, *, owner: str, app: Flask | None = None, **kwargs: Any) -> str:
        """Start a job from code (a CLI command, another task); see :meth:`Engine.start`."""
        return self.engine(app).start(handler, owner=owner, **kwargs)
