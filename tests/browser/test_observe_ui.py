"""Observe mode in Debian's chromium: with container enforcement off, Radar says
what happened ("seen") apart from what the policy would do ("would prevent"),
in the label, the side panel and the legend; with enforcement on again the
same port reads its current verdict ("blocked")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from radarpage import sign_in, wait_radar
from radarserver import RadarConsole
from test_radar_ui import click_element, graph_state

from cnnf.console.services.records import FlowRecord

pytestmark = pytest.mark.browser

EDGE = "image:shop/web:1.4->image:shop/db:15"


def _web_to_db_seen_unenforced(console: RadarConsole) -> None:
    """Rule 5 refuses web -> db 5432; the shop's container enforcement is off, and
    the Defender saw web connect to db three times (not enforced, would prevent)."""
    with console.client() as api:
        api.post("/api/v1/rules/container", json={
            "id": 5, "name": "web-not-db", "src": "web", "dst": "db", "ports": [5432],
            "effect": "prevent"}).raise_for_status()
        assert api.get("/api/v1/settings").json()["containerEnabled"] is False
    now = datetime.now(UTC)
    console.add_flows([FlowRecord(
        src="image:shop/web", dst="image:shop/db", port=5432, verdict="allow", rule_id=5,
        rule_name="web-not-db", would="prevent", would_rule_id=5, would_rule_name="web-not-db",
        mode="observed", count=3, first_seen=now - timedelta(minutes=2),
        last_seen=now - timedelta(minutes=1))])


def test_with_enforcement_off_a_prevented_port_reads_seen_would_prevent(
        page: Any, console: RadarConsole) -> None:
    _web_to_db_seen_unenforced(console)
    sign_in(page, console)
    wait_radar(page)
    edge = graph_state(page)["edges"][EDGE]
    assert (edge["label"], edge["verdict"], edge["hole"]) == (
        "5432 seen, would prevent", "blocked", False)
    # api -> lan 443: refused while enforcement was on (recorded enforced): what happened
    assert graph_state(page)["edges"]["image:shop/api:2.0->subnet:lan"]["label"] == "443 blocked"
    assert "Container enforcement is off" in page.text_content("#enforcement-note")
    assert "seen, would prevent" in page.text_content("#legend")
    click_element(page, EDGE)
    panel = page.locator("#panel")
    panel.wait_for(state="visible")
    row = panel.locator("#ports-now tbody tr").first
    cells = [row.locator("td").nth(i).text_content() for i in range(4)]
    assert cells == ["5432", "seen would prevent #5", "seen, not enforced", "3"]
    assert row.locator(".badge.would").get_attribute("title") == (
        "rule #5, not enforced: enforcement is off")
    assert panel.locator("#edge-summary .badge").all_text_contents() == ["seen", "would prevent"]
    assert "Enforcement is off: connections the policy would prevent went through" in (
        panel.locator("#edge-not-enforced").text_content() or "")
    assert panel.locator("#create-rule").count() == 0  # rule 5 covers it


def test_with_enforcement_on_again_the_port_reads_its_current_verdict(
        page: Any, console: RadarConsole) -> None:
    _web_to_db_seen_unenforced(console)
    with console.client() as api:
        settings = api.get("/api/v1/settings").json()
        api.put("/api/v1/settings", json={**settings, "containerEnabled": True}
                ).raise_for_status()
    sign_in(page, console)
    wait_radar(page)
    assert graph_state(page)["edges"][EDGE]["label"] == "5432 blocked"
    assert page.locator("#enforcement-note").is_hidden()
    click_element(page, EDGE)
    panel = page.locator("#panel")
    panel.wait_for(state="visible")
    row = panel.locator("#ports-now tbody tr").first
    assert row.locator("td").nth(1).text_content() == "blocked"
    assert panel.locator("#edge-not-enforced").count() == 0
    assert panel.locator("#edge-summary .badge").all_text_contents() == ["blocked"]
    # what the three connections got then stays in the history
    history = panel.locator("#port-history tbody tr").first
    assert "not enforced" in (history.text_content() or "")
