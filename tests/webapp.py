"""A host Flask app for web tests: batchflow mounted beside the app's own page."""

from __future__ import annotations

from typing import Any

from flask import Flask, render_template_string, request

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
        **make_config(prefix, files_dir, **config),
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

    @app.get("/app")
    def app_page() -> str:
        """A page of the host app with its own layout that starts jobs two ways."""
        return render_template_string(HOST_PAGE)

    return app


HOST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Host app</title>
<meta name="csrf-token" content="{{ csrf_token() }}">
<meta name="batchflow-prefix" content="{{ batchflow_prefix }}">
<link rel="stylesheet" href="{{ url_for('batchflow.static', filename='batchflow/batchflow.css') }}">
<script src="{{ url_for('batchflow.static', filename='batchflow/batchflow.js') }}" defer></script>
</head><body style="font-family: sans-serif; margin: 2rem">
<h1>Contacts</h1>
<form method="post" action="{{ url_for('batchflow.start', handler='report') }}">
  <input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
  <input type="hidden" name="rows" value="{{ request.args.get('rows', '4000') }}">
  <input type="hidden" name="sleep" value="{{ request.args.get('sleep', '0.001') }}">
  <input type="hidden" name="redirect_url" value="/app">
  <button id="export">Export contacts as CSV</button>
</form>
<button id="rebuild" data-batchflow-start="rebuild" data-batchflow-modal
        data-batchflow-params='{"n": 40, "sleep": 0.05}'>Rebuild the index</button>
<button id="twice" type="button">Follow two jobs here</button>
<div id="inline"></div>
</body></html>
"""
