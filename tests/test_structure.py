"""The house rules that keep the code readable, checked on every run: modules and functions of a
size one can hold in mind, no module reading another's private names, and one vocabulary for the
job hash shared by Python and Lua."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from batchflow import scripts, streams
from batchflow.schema import (
    LUA_TERMINAL,
    AdmitCode,
    ClaimCode,
    F,
    Kind,
    Phase,
    Signal,
    SignalCode,
    Status,
)

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "batchflow"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _tree(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_and_functions_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES, f"split {path.name}"
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}: {node.name} is {length} lines"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_reads_another_objects_private_names(path):
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level:
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{path.name} imports {private} from .{node.module}"
        if isinstance(node, ast.Attribute) and re.match(r"_[^_]", node.attr):
            owner = node.value
            mine = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            assert mine, f"{path.name}:{node.lineno} reads {ast.unparse(node)}"


def test_the_lua_scripts_speak_the_schemas_vocabulary():
    """Every quoted word in the scripts is a field of the hash, a status, a signal, a phase, a
    kind or a return code defined in schema.py: a field renamed in Python cannot drift in Lua."""
    known = set(F.names())
    for vocabulary in (Status, Signal, Phase, Kind, ClaimCode, SignalCode, AdmitCode):
        known |= {member.value for member in vocabulary}
    known |= {"lost", "requeue", "skip", "handler"}  # RECOVER's and COMMIT's own codes
    modules = (scripts, streams)
    texts = [getattr(module, name) for module in modules for name in dir(module) if name.isupper()]
    assert streams.ACQUIRE in texts
    used = {
        word for text in texts if isinstance(text, str) for word in re.findall(r"'([a-z_]+)'", text)
    }
    assert used, "no script found"
    assert used <= known, f"words in the Lua scripts that schema.py does not define: {used - known}"


def test_the_scripts_take_the_terminal_set_from_status():
    assert LUA_TERMINAL == "{canceled = true, completed = true, failed = true, stopped = true}"
    for name in ("CLAIM", "COMMIT", "RENEW", "SIGNAL", "RECOVER"):
        text = getattr(scripts, name)
        assert text.startswith(f"local TERMINAL = {LUA_TERMINAL}")
        assert "'completed' or" not in text  # no second, hand-written copy of the set


def test_the_benchmarks_still_import():
    """bench/ is not run by the suite (it measures, it does not assert), but it must not rot."""
    import subprocess
    import sys

    root = PACKAGE.parent
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--help"], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_scripts_that_publish_change_the_job_only_through_the_recording_helpers():
    """An event carries the fields its script changed (``hset``/``hincrby`` record them): a
    direct HSET or HINCRBY on the job hash would change a field no follower hears about."""
    for name in ("CLAIM", "COMMIT", "RENEW", "SIGNAL", "REOPEN"):
        text = getattr(scripts, name)
        body = text[text.index("local function publish") :]
        body = body.replace("redis.call('HINCRBY', job, 'events', 1)", "")  # the event's number
        direct = re.findall(r"redis\.call\(\s*'(HSET|HINCRBY|HDEL)', job\b", body)
        assert not direct, (name, direct)
        assert "publish(job, ARGV[" in body, name
