"""The Defenders page's "Datapath" column in Debian's chromium: what each
Defender last reported of its own datapath check, through the real
inventory endpoint (up; down with what is wrong; never reported)."""

from __future__ import annotations

from typing import Any

import pytest
from radarpage import sign_in
from radarserver import RadarConsole

from cnnf.model.records import DatapathState, HostInfo, InventoryReport

pytestmark = pytest.mark.browser

DOWN = ["verdict worker for queue 0 not running", "queue 0 not bound",
        "ipv4 missing: -A FORWARD -m comment --comment cnnf -j CNNF-FORWARD"]


def _report(console: RadarConsole, host: str, datapath: DatapathState | None) -> None:
    report = InventoryReport(host=HostInfo(name=host, addresses=[]), version="0.1.0",
                             datapath=datapath)
    with console.client(console.defenders[host]) as defender:
        defender.post("/api/v1/defender/inventory",
                      json=report.model_dump(mode="json")).raise_for_status()


def test_the_defenders_page_shows_each_datapath_as_reported(
        page: Any, console: RadarConsole) -> None:
    # the shop's two Defenders (enrolled by the fixture) report their checks
    _report(console, "node-1", DatapathState(up=True))
    _report(console, "node-2", DatapathState(up=False, problems=DOWN))
    with console.client() as api:
        listed = {d["hostname"]: d for d in api.get("/api/v1/defenders").json()}
    assert (listed["node-1"]["datapathUp"], listed["node-1"]["datapathProblems"]) == (True, [])
    assert (listed["node-2"]["datapathUp"], listed["node-2"]["datapathProblems"]) == (False, DOWN)
    sign_in(page, console, "#/defenders")
    page.wait_for_selector("#defenders tr[data-host='node-2'] td.datapath .badge")
    assert page.locator("#defenders thead th").nth(3).text_content() == "Datapath"
    up = page.locator("#defenders tr[data-host='node-1'] td.datapath")
    assert up.text_content() == "up"
    down = page.locator("#defenders tr[data-host='node-2'] td.datapath")
    assert down.locator(".badge.datapath-down").text_content() == "down"
    assert down.locator("li").all_text_contents() == DOWN
    # a later report without the check keeps the last answer; a report that
    # says up again clears what was wrong
    _report(console, "node-2", None)
    with console.client() as api:
        listed = {d["hostname"]: d for d in api.get("/api/v1/defenders").json()}
    assert (listed["node-2"]["datapathUp"], listed["node-2"]["datapathProblems"]) == (False, DOWN)
    _report(console, "node-2", DatapathState(up=True))
    page.reload()
    page.wait_for_selector("#defenders tr[data-host='node-2'] td.datapath .badge.datapath-up")
    assert page.locator("#defenders tr[data-host='node-2'] td.datapath li").count() == 0
