"""Browser test fixtures: a seeded Console on loopback, Debian's chromium driven
by Playwright (never a downloaded browser), one page per test that fails the
test on any JavaScript error and leaves a screenshot in test-artifacts/."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from radarserver import ADMIN, RadarConsole, seed_shop, serve

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
CLIENT_ERROR = re.compile(
    r"Failed to load resource: the server responded with a status of 4\d\d")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


@pytest.fixture(scope="session")
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
        # The browser logs every 4xx answer; tests provoke those on purpose (a bad
        # password, an invalid import) and the page shows them. 5xx stay errors.
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


def sign_in(page: Any, console: RadarConsole, hash_: str = "#/radar", query: str = "") -> None:
    page.goto(f"{console.url}/{query}{hash_}")
    page.fill("input[name=username]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    page.click("form#login button[type=submit]")


def wait_radar(page: Any, renders: int = 1) -> None:
    page.wait_for_function(
        f"window.cnnfRadar && window.cnnfRadar.ready && window.cnnfRadar.renders >= {renders}")


__all__ = ["ARTIFACTS", "shutil", "sign_in", "wait_radar"]
