"""Browser test fixtures: a seeded Console on loopback, Debian's chromium driven
by Playwright (never a downloaded browser), one page per test that fails the
test on any JavaScript error and leaves a screenshot in test-artifacts/."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from radarpage import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, CLIENT_ERROR
from radarserver import RadarConsole, seed_shop, serve


# Module scope, not session: sync Playwright keeps an event loop running in this
# thread while it is open, which would break later tests that run their own loop.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/bootstrap.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[RadarConsole]:
    """A fresh Console with the "shop" picture (each test may change it)."""
    static = Path(__file__).resolve().parents[2] / "src/cnnf/console/static/index.html"
    if not static.is_file():
        pytest.fail("the web UI is not built: run scripts/bootstrap.sh")
    with serve(tmp_path) as c:
        seed_shop(c)
        yield c


@pytest.fixture
def page(browser: Any, console: RadarConsole, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1500, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []

    def on_console(message: Any) -> None:
        # 4xx answers the tests provoke on purpose are logged by the browser too.
        if message.type == "error" and not CLIENT_ERROR.match(message.text):
            errors.append(f"console.{message.type}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        finally:
            context.close()
    assert errors == [], f"JavaScript errors: {errors}"
