"""Helpers for the browser tests: Debian's chromium, signing in, waiting for Radar."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from radarserver import ADMIN, RadarConsole

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
# The browser logs every 4xx answer; tests provoke those on purpose (a bad
# password, an invalid import) and the page shows them. 5xx stay errors.
CLIENT_ERROR = re.compile(
    r"Failed to load resource: the server responded with a status of 4\d\d")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


def sign_in(page: Any, console: RadarConsole, hash_: str = "#/radar", query: str = "",
            credentials: tuple[str, str] = ADMIN) -> None:
    page.goto(f"{console.url}/{query}{hash_}")
    page.fill("input[name=username]", credentials[0])
    page.fill("input[name=password]", credentials[1])
    page.click("form#login button[type=submit]")


def wait_radar(page: Any, renders: int = 1) -> None:
    page.wait_for_function(
        f"window.cnnfRadar && window.cnnfRadar.ready && window.cnnfRadar.renders >= {renders}")

