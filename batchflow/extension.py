"""The Flask extension: ``BatchFlow()`` with ``init_app(app)``, and the worker's Celery app."""

from __future__ import annotations

import os
import warnings
from typing import Any

from celery import Celery
from flask import Flask
from flask_wtf.csrf import CSRFProtect

from .admin import admin  # noqa: F401 - the admin page joins the blueprint
from .cli import cli
from .config import DEFAULTS, Settings
from .context import (
    AdminCheck,
    Identity,
    State,
    connect_translations,
    default_identity,
    default_load_user,
    forget_anonymous_identity_at_login,
    get_state,
)
from .engine import Engine
from .exceptions import ConfigurationError
from .job import UserLoader
from .metrics import metrics  # noqa: F401 - GET /metrics joins the blueprint
from .notify import EmailAddress, NotifyHooks, OnNotify, default_email_address
from .operations import health  # noqa: F401 - the operators' routes join the blueprint
from .redisurl import REDIS_URL_FORMS, shown_url
from .registry import Registry
from .registry import registry as default_registry
from .store import Store
from .tasks import make_celery
from .views import blueprint

__all__ = ["BatchFlow", "State", "default_identity", "default_load_user"]


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
    :param load_user: ``load_user(owner) -> user or None``: a job's owner (the identity hook's
        answer when it started) as the app's user object, ``job.user`` in its steps; called in
        the worker, inside the app's context. Default: :func:`default_load_user` (Flask-Login's
        ``user_loader``).
    :param on_notify: ``on_notify(notice)``, called in the worker once per job ending (at least
        once: again after a crash) with a :class:`~batchflow.notices.Notice`, for channels of
        the app's own (chat, push). An exception is retried with backoff.
    :param email_address: ``email_address(user) -> str or None``: where a job's owner (the
        ``load_user`` answer) gets notification emails. Default: the user's ``email``.
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
        load_user: UserLoader = None,
        on_notify: OnNotify | None = None,
        email_address: EmailAddress = default_email_address,
    ) -> None:
        self.registry = registry or default_registry
        self.url_prefix = url_prefix
        self.identity = identity or default_identity
        self.can_admin = can_admin or (lambda user: False)
        self.csrf = csrf
        self.load_user = load_user or default_load_user
        self.on_notify = on_notify
        self.email_address = email_address
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read ``BATCHFLOW_*`` config, connect to Redis, build the Celery app, mount the blueprint.

        The options given to ``BatchFlow(...)`` are copied into the app's :class:`State`, which
        the blueprint's views read: one ``BatchFlow`` may serve several apps.

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
        self._check_secret_key(app)
        try:
            store = Store.from_url(
                settings.redis_url,
                settings.key_prefix,
                settings.redis_timeout,
                replicas=settings.redis_wait_replicas,
                replica_timeout=settings.redis_wait_timeout,
            )
        except ValueError as exc:  # what redis-py refuses beyond what Settings checks
            raise ConfigurationError(
                f"BATCHFLOW_REDIS_URL {shown_url(settings.redis_url)!r} is not usable: {exc}. "
                f"Expected {REDIS_URL_FORMS}."
            ) from None
        hooks = NotifyHooks(self.on_notify, self.email_address, self.url_prefix)
        engine = Engine(settings, store, self.registry, self.load_user, hooks)
        celery = make_celery(
            engine,
            main=app.import_name,
            context=app.app_context,
            config=app.config.get("BATCHFLOW_CELERY"),
        )
        app.extensions["batchflow"] = State(
            settings=settings,
            engine=engine,
            celery=celery,
            identity=self.identity,
            can_admin=self.can_admin,
            csrf=self.csrf,
        )
        app.register_blueprint(blueprint, url_prefix=self.url_prefix)
        if self.csrf and "csrf" not in app.extensions:
            # Protect batchflow's routes (its blueprint calls protect()); the app's own views stay
            # as they were unless the app turned the global check on itself.
            app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
            CSRFProtect(app)
        app.cli.add_command(cli)
        connect_translations()
        if settings.forget_anon_at_login:
            forget_anonymous_identity_at_login(app)

    def _check_secret_key(self, app: Flask) -> None:
        """ConfigurationError unless the app has the secret batchflow needs: the signed session
        keeps the anonymous identity (the default identity hook), and Flask-WTF signs the CSRF
        tokens with it."""
        needs_session = self.identity is default_identity
        needs_csrf = self.csrf and not app.config.get("WTF_CSRF_SECRET_KEY")
        if (needs_session or needs_csrf) and not app.config.get("SECRET_KEY"):
            why = "the session that says whose jobs are whose" if needs_session else "CSRF tokens"
            raise ConfigurationError(
                f"Set SECRET_KEY on the app before init_app: batchflow signs {why} with it "
                "(a long random string, the same in every web process, kept out of the code)."
            )

    @staticmethod
    def state(app: Flask | None = None) -> State:
        """This app's batchflow state (default: the current app's).

        :raises ConfigurationError: batchflow was not set up on the app.
        """
        return get_state(app)

    def engine(self, app: Flask | None = None) -> Engine:
        """The app's engine: start jobs, read them, signal them, from any code."""
        return self.state(app).engine

    def celery(self, app: Flask) -> Celery:
        """The Celery app that ``init_app`` built to run this Flask app's jobs; a worker module
        exposes it::

            # worker/__init__.py  ->  celery -A worker worker
            celery = batchflow.celery(create_app())

        Tasks run inside ``app.app_context()``.

        :raises ConfigurationError: batchflow was not set up on the app.
        """
        return self.state(app).celery

    def make_celery(self, app: Flask) -> Celery:
        """Deprecated name of :meth:`celery` (it builds nothing: ``init_app`` did)."""
        warnings.warn(
            "BatchFlow.make_celery(app) is renamed BatchFlow.celery(app).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.celery(app)

    def start(self, handler: str, *, owner: str, app: Flask | None = None, **kwargs: Any) -> str:
        """Start a job from code (a CLI command, another task); see :meth:`Engine.start`."""
        return self.engine(app).start(handler, owner=owner, **kwargs)
