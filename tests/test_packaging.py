"""`pip install .` into a new virtualenv gives a working package with its pages; the library's
import graph keeps its layers apart."""

from __future__ import annotations

import ast
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
    assert "This job is not available." in page.text
print("ok")
"""


@pytest.mark.slow
def test_pip_install_into_a_new_virtualenv_ships_templates_and_static(tmp_path, built_wheel):
    env_dir = tmp_path / "venv"
    # System site-packages provide the dependencies (no download); batchflow itself is installed
    # from the wheel of this checkout as a regular install, and must win over any other copy.
    # This interpreter's pip installs into the new environment (--python), which spares the new
    # environment a pip of its own (ensurepip takes seconds).
    venv.create(env_dir, with_pip=False, system_site_packages=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            str(built_wheel),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [python, "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok"
    assert sys.prefix != str(env_dir)


# -- the import graph: layers, and no cycles ----------------------------------------------------

LIBRARY = os.path.join(ROOT, "batchflow")
# The layers below the web: they must run in a worker or a script without Flask or Celery.
NON_WEB = (
    "schema display config exceptions keys store scripts events job state handlers registry "
    "engine steps heartbeat maintenance"
).split()
WEB = {"extension", "views", "context", "cli"}
NOT_BELOW_THE_WEB = {"flask", "flask_wtf", "flask_login", "werkzeug", "celery"}


def _imports(path: str, package: str) -> set[str]:
    """Every module ``path`` imports, as an absolute dotted name (relative imports resolved
    against ``package``; ``from a import b`` counts ``a`` and ``a.b``). Imports under
    ``if TYPE_CHECKING:`` and inside functions count too: a layer must not lean on them."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _library_graph() -> dict[str, set[str]]:
    """batchflow's modules (``__init__`` for the package itself) and the ones each imports."""
    modules = {name[:-3] for name in os.listdir(LIBRARY) if name.endswith(".py")}
    graph: dict[str, set[str]] = {}
    for module in modules:
        edges = set()
        for name in _imports(os.path.join(LIBRARY, f"{module}.py"), "batchflow"):
            parts = name.split(".")
            if parts[0] != "batchflow":
                continue
            if len(parts) == 1:
                edges.add("__init__")
            elif parts[1] in modules:
                edges.add(parts[1])
        graph[module] = edges - {module}
    return graph


def test_the_layers_below_the_web_import_no_web_framework_and_no_web_module():
    present = [m for m in NON_WEB if os.path.isfile(os.path.join(LIBRARY, f"{m}.py"))]
    assert {"engine", "store", "job", "handlers"} <= set(present)
    graph = _library_graph()
    wrong = {}
    for module in present:
        imported = _imports(os.path.join(LIBRARY, f"{module}.py"), "batchflow")
        frameworks = {
            name
            for name in imported
            if name.split(".")[0] in NOT_BELOW_THE_WEB
            and not (module == "exceptions" and name.split(".")[0] == "werkzeug")
        }
        web = graph[module] & (WEB | {"__init__"})
        if frameworks or web:
            wrong[module] = sorted(frameworks | web)
    assert wrong == {}, "imports a layer below the web must not make"


#: The layers, top to bottom (docs/DESIGN.md): a module imports only from its own layer or below.
LAYERS = [
    {"__init__", "extension", "views", "intake", "pages", "cli", "context", "uploads", "importing"}
    | {"toasts", "operations", "admin", "metrics"},
    {"tasks", "gcfreeze", "workers"},  # Celery
    {"engine", "steps", "heartbeat", "maintenance", "notify", "lanes"},  # engine
    # handlers
    {"registry", "imports", "files", "handlers", "failures", "job", "buffer", "state", "work"}
    | {"sources", "sql", "csvsource", "xlsx"},
    {"store", "admission", "streams", "inbox", "keys", "scripts", "events", "paging"}  # store
    | {"redisconn", "records", "lua", "fleet", "census", "history", "meter"},
    {"schema", "display", "formats", "config", "exceptions", "ids"}  # vocabulary
    | {"notices", "mail", "webhooks", "words", "i18n", "redisurl", "logs"},
]


def test_every_module_imports_only_its_own_layer_or_below():
    graph = _library_graph()
    rank = {module: depth for depth, layer in enumerate(LAYERS) for module in layer}
    assert set(graph) <= set(rank), f"put {set(graph) - set(rank)} in a layer"
    upward = {
        module: sorted(m for m in imported if rank[m] < rank[module])
        for module, imported in graph.items()
        if any(rank[m] < rank[module] for m in imported)
    }
    assert upward == {}, "imports from a layer above"


def test_the_library_has_no_import_cycle_and_never_imports_its_demo():
    graph = _library_graph()
    for module in graph:
        imported = _imports(os.path.join(LIBRARY, f"{module}.py"), "batchflow")
        assert not {n for n in imported if n.split(".")[0] == "batchflow_demo"}, module
    assert "views" in graph["extension"] and "extension" not in graph["views"]
    # Depth-first search; a module met again while still on the path closes a cycle.
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_demo_uses_only_the_public_api():
    import batchflow

    folder = os.path.join(ROOT, "batchflow_demo")
    used: dict[str, set[str]] = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
                assert not [m for m in modules if m.startswith("batchflow.")], (name, modules)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if node.module.split(".")[0] == "batchflow":
                    assert node.module == "batchflow", f"{name} imports from {node.module}"
                    used.setdefault(name, set()).update(a.name for a in node.names)
    assert used, "the demo should use batchflow"
    for name, names in used.items():
        assert names <= set(batchflow.__all__), (name, names - set(batchflow.__all__))
