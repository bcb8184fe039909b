"""The batchflow demo: a Flask app whose pages start real jobs.

``batchflow demo`` runs it with a Redis and a Celery worker of its own (see :mod:`.cli`). To run
the parts yourself, as ``docker-compose.yml`` does::

    gunicorn -k gthread --threads 32 'batchflow_demo:create_app()'
    celery -A batchflow_demo worker        # or: celery -A worker worker, from the repository

It is an app like yours: it uses only what ``from batchflow import ...`` offers.

Settings come from ``create_app(config)``, then the environment, then the defaults below. Besides
batchflow's own ``BATCHFLOW_*`` keys (``BATCHFLOW_REDIS_URL``...) the demo reads:

==================================  ============================================================
``BATCHFLOW_DEMO_DATA``             folder of the demo's SQLite files (and of the exported files,
                                    unless ``BATCHFLOW_FILES_DIR`` says otherwise)
``BATCHFLOW_DEMO_CONTACTS``         rows in the contacts export (100,000)
``BATCHFLOW_DEMO_ROW_COST``         seconds of pretend work per exported row, standing in for a
                                    database read (0.00015: the export takes about 15 s; 0: about
                                    1 s)
``BATCHFLOW_DEMO_POSTS``            posts created in a new SQLite file (5,000)
``BATCHFLOW_DEMO_ITEM_DELAY``       seconds of pretend work per post, so there is progress to watch
                                    (0.002: the archive and the index take about 10 s each)
``BATCHFLOW_DEMO_IMPORT_ROW_COST``  seconds of pretend work per imported row (0.05: the sample
                                    file's 200 rows take about 10 s)
``FLASK_SECRET_KEY``                signs the session that says whose jobs are whose (random per
                                    process when unset: set it when several processes serve)
==================================  ============================================================
"""

from __future__ import annotations

import os
import secrets
import tempfile
import types
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, render_template, send_from_directory, url_for

from batchflow import BatchFlow, ConfigurationError, Message

from .icon import favicon
from .importer import SAMPLE_FOLDER, SAMPLE_NAME, SAMPLE_ROWS, imported_contacts
from .jobs import LOCKED_EVERY, posts, registry
from .lang import N_, set_up_languages
from .outbox import read_outbox

#: The demo's one person, as the worker sees a job's owner: the demo has no sign-in, and its
#: notification emails go to this address (into the outbox folder, not over SMTP).
DEMO_USER = types.SimpleNamespace(email="you@demo.invalid")

#: The languages the demo's pages speak, as its navigation offers them.
DEMO_LANGUAGES = (("en", "English"), ("de", "Deutsch"), ("fr", "Français"))

#: The demo's extension, with the demo's own registry (not the global one).
batchflow = BatchFlow(registry=registry, load_user=lambda owner: DEMO_USER)

DEMO_DEFAULTS: dict[str, Any] = {
    "BATCHFLOW_KEY_PREFIX": "batchflow-demo",
    "BATCHFLOW_DEMO_DATA": os.path.join(tempfile.gettempdir(), "batchflow-demo"),
    "BATCHFLOW_DEMO_CONTACTS": 100_000,
    "BATCHFLOW_DEMO_ROW_COST": 0.00015,
    "BATCHFLOW_DEMO_POSTS": 5_000,
    "BATCHFLOW_DEMO_ITEM_DELAY": 0.002,
    "BATCHFLOW_DEMO_IMPORT_ROW_COST": 0.05,
    # Email when a job ends, written to the outbox folder (shown at /outbox), not sent.
    "BATCHFLOW_NOTIFY_EMAIL": True,
    "BATCHFLOW_BASE_URL": "http://127.0.0.1:5000",
    "MAIL_DEFAULT_SENDER": "batchflow demo <demo@demo.invalid>",
}
# Read from the environment here because the demo derives other settings from them; init_app
# reads every other BATCHFLOW_* key from the environment itself.
_FROM_ENVIRONMENT = (
    *DEMO_DEFAULTS,
    "BATCHFLOW_FILES_DIR",
    "BATCHFLOW_QUEUE",
    "BATCHFLOW_MAIL_OUTBOX",
)
_NUMBERS = {
    "BATCHFLOW_DEMO_CONTACTS": (int, 0),
    "BATCHFLOW_DEMO_ROW_COST": (float, 0.0),
    "BATCHFLOW_DEMO_POSTS": (int, 1),
    "BATCHFLOW_DEMO_ITEM_DELAY": (float, 0.0),
    "BATCHFLOW_DEMO_IMPORT_ROW_COST": (float, 0.0),
}


def _settings(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The demo's ``BATCHFLOW_*`` settings: ``config``, then the environment, then defaults."""
    values: dict[str, Any] = dict(DEMO_DEFAULTS)
    values.update({name: os.environ[name] for name in _FROM_ENVIRONMENT if name in os.environ})
    values.update(config or {})
    for name, (kind, minimum) in _NUMBERS.items():
        try:
            values[name] = kind(values[name])
        except (TypeError, ValueError):
            raise ConfigurationError(f"{name} must be a number, not {values[name]!r}.") from None
        if values[name] < minimum:
            raise ConfigurationError(f"{name} must be at least {minimum}.")
    values.setdefault("BATCHFLOW_FILES_DIR", os.path.join(values["BATCHFLOW_DEMO_DATA"], "files"))
    values.setdefault(
        "BATCHFLOW_MAIL_OUTBOX", os.path.join(values["BATCHFLOW_DEMO_DATA"], "outbox")
    )
    prefix = str(values["BATCHFLOW_KEY_PREFIX"])
    # The demo's Celery queue and broker keys live under its key prefix too, so that it shares a
    # Redis with other apps without touching their keys (it never flushes anything).
    values.setdefault("BATCHFLOW_QUEUE", prefix)
    values.setdefault(
        "BATCHFLOW_CELERY",
        {
            "broker_transport_options": {"global_keyprefix": f"{prefix}:broker:"},
            "worker_send_task_events": False,
        },
    )
    return values


def _about(seconds: float) -> Message:
    """How long a job's pretend work takes, in words (in the reader's language, where shown)."""
    if seconds < 3:
        return Message(N_("a few seconds"))
    return Message(N_("about %(count)s seconds"), count=round(seconds))


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The demo app: a home page that starts the jobs, and batchflow's pages at ``/jobs``.

    :param config: Flask config to apply last (for tests and the ``demo`` command).
    """
    app = Flask(__name__)
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY and friends
    app.config.update(_settings(config))
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = secrets.token_hex(32)
    batchflow.init_app(app)
    speaks = set_up_languages(app, app.config["BATCHFLOW_DEMO_DATA"])

    @app.context_processor
    def home_link() -> dict[str, Any]:
        # The link back to the demo's home on batchflow's pages too (their base.html shows it).
        return {
            "batchflow_home": {"url": url_for("index"), "text": "Demo"},
            # The languages to switch to (none without Flask-Babel: English only).
            "demo_languages": DEMO_LANGUAGES if speaks else (),
        }

    @app.get("/favicon.ico")
    def icon() -> Response:
        response = Response(favicon(), mimetype="image/vnd.microsoft.icon")
        response.cache_control.max_age = 86400
        return response

    @app.get(f"/samples/{SAMPLE_NAME}")
    def sample() -> Response:
        # The file to try the import with: a download, not a page.
        return send_from_directory(
            SAMPLE_FOLDER, SAMPLE_NAME, mimetype="text/csv", as_attachment=True
        )

    @app.get("/outbox")
    def outbox() -> str:
        folder = app.config["BATCHFLOW_MAIL_OUTBOX"]
        return render_template("demo/outbox.html", mails=read_outbox(folder), folder=folder)

    @app.get("/")
    def index() -> str:
        owner = batchflow.identity()
        recent = batchflow.engine(app).jobs(owner, limit=5) if owner else []
        stats = posts().stats()
        config = app.config
        return render_template(
            "demo/index.html",
            posts=stats,
            contacts=config["BATCHFLOW_DEMO_CONTACTS"],
            row_cost_ms=config["BATCHFLOW_DEMO_ROW_COST"] * 1000,
            item_delay_ms=config["BATCHFLOW_DEMO_ITEM_DELAY"] * 1000,
            export_time=_about(
                config["BATCHFLOW_DEMO_CONTACTS"] * config["BATCHFLOW_DEMO_ROW_COST"]
            ),
            posts_time=_about(stats["total"] * config["BATCHFLOW_DEMO_ITEM_DELAY"]),
            locked_every=LOCKED_EVERY,
            imported=imported_contacts().count(),
            import_row_cost_ms=config["BATCHFLOW_DEMO_IMPORT_ROW_COST"] * 1000,
            sample_url=url_for("sample"),
            sample_rows=SAMPLE_ROWS,
            import_time=_about(SAMPLE_ROWS * config["BATCHFLOW_DEMO_IMPORT_ROW_COST"]),
            recent=[
                {**state.to_dict(), "url": url_for("batchflow.progress", job_id=state.id)}
                for state in recent
            ],
        )

    return app


def __getattr__(name: str) -> Any:
    # ``celery -A batchflow_demo worker`` asks this module for ``celery``: build the demo app and
    # its Celery app on first use, so that importing the module has no side effects.
    if name == "celery":
        celery = batchflow.celery(create_app())
        globals()["celery"] = celery
        return celery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
