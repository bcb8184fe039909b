"""A host Flask app for web tests: batchflow mounted beside the app's own page."""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from batchflow import BatchFlow
from batchflow.extension import default_identity
from tests.handlers import make_registry
from tests.helpers import broker_options, make_config


def identity() -> str:
    """Tests pick the user with a header; browsers get the default anonymous session id."""
    return request.headers.get("X-Test-User") or default_identity()


def create_app(prefix: str, files_dir: str, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test-secret",
        BATCHFLOW_CELERY=broker_options(prefix),
        **make_config(prefix, files_dir),
        **config,
    )
    BatchFlow(
        app,
        registry=make_registry(),
        identity=identity,
        can_admin=lambda user: user == "root-admin",
    )

    @app.get("/")
    def home() -> str:
        return "<h1>The host app</h1>"

    return app
