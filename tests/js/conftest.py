"""Fixtures for the browser tests: one headless Chromium per module, a fresh fake server and a
fresh browser context per test. A test fails if the page throws an uncaught error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # `import harness`, whatever pytest's import mode

ARTIFACTS = HERE.parent / "artifacts"


from harness import Harness  # noqa: E402

from tests.helpers import launch_chromium  # noqa: E402


# One browser per module, not per session: a sync Playwright left running keeps its event loop
# alive, and every later sync_playwright() in the session (the other browser tests) would fail.
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def harness():
    h = Harness().start()
    yield h
    h.close()


@pytest.fixture
def context_options():
    """Override in a test module (or parametrize) to change the browser context."""
    return {}


@pytest.fixture
def page(browser, context_options):
    options = {"viewport": {"width": 1100, "height": 860}, "device_scale_factor": 1}
    options.update(context_options)
    context = browser.new_context(**options)
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    pg.on("console", lambda m: errors.append(m.text) if m.text.startswith("batchflow:") else None)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def shot():
    """shot(page, name[, locator]) saves tests/artifacts/<name>.png for a human to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def take(pg, name: str, locator=None):
        path = ARTIFACTS / f"{name}.png"
        # animations="disabled" fast-forwards the bar's width transition to its end.
        (locator or pg).screenshot(path=str(path), animations="disabled")
        return path

    return take
