"""`pip install .` into a new virtualenv gives a working package with its pages."""

from __future__ import annotations

import os
import subprocess
import sys
import venv

import pytest

from tests.helpers import ROOT

CHECK = """
import os, sys, batchflow
from batchflow import views
assert batchflow.__file__.startswith(sys.prefix), batchflow.__file__
for folder, name in [(views.TEMPLATES, "batchflow/progress.html"),
                     (views.TEMPLATES, "batchflow/base.html"),
                     (views.STATIC, "batchflow/batchflow.js"),
                     (views.STATIC, "batchflow/batchflow.css")]:
    assert folder.startswith(sys.prefix) and os.path.isfile(os.path.join(folder, name)), name
assert os.path.isfile(os.path.join(os.path.dirname(batchflow.__file__), "py.typed"))
from flask import Flask
from batchflow import BatchFlow
app = Flask("x"); app.config.update(SECRET_KEY="k")
BatchFlow(app)
with app.test_client() as c:
    r = c.get("/jobs/static/batchflow/batchflow.js"); assert r.status_code == 200; r.close()
    page = c.get("/jobs/start/nothing-here"); assert page.status_code == 404, page.status_code
    assert "No job handler" in page.text
print("ok")
"""


@pytest.mark.slow
def test_pip_install_into_a_new_virtualenv_ships_templates_and_static(tmp_path):
    env_dir = tmp_path / "venv"
    # System site-packages provide the dependencies (no download); batchflow itself is installed
    # from this checkout as a regular, non-editable install, and must win over any other copy.
    venv.create(env_dir, with_pip=True, system_site_packages=True)
    python = str(env_dir / "bin" / "python")
    build = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", ROOT],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [python, "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok"
    assert sys.prefix != str(env_dir)
