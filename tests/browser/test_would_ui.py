"""What the policy *would* do, in Debian's chromium: staged rules on the rules
page (marked, promoted in one click), the staged default effect and the
enforcement-off warning on the Settings page, "would" verdicts on Radar's
edges and in the audits, and no "Create rule" on a port a rule already covers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from radarpage import sign_in, wait_radar
from radarserver import RadarConsole
from test_radar_ui import click_element, graph_state

from cnnf.console.services.records import AuditRecord, FlowRecord
from cnnf.model import Effect

pytestmark = pytest.mark.browser


def _would_picture(console: RadarConsole) -> None:
    """A staged rule (5: web must not reach db) and what Defenders reported:
    web -> db seen while rule 5 is staged (would prevent), web -> api seen with
    container enforcement off (rule 1 allows it: no hole)."""
    with console.client() as api:
        api.post("/api/v1/rules/container", json={
            "id": 5, "name": "web-not-db", "src": "web", "dst": "db", "ports": [5432],
            "effect": "prevent", "staged": True}).raise_for_status()
    now = datetime.now(UTC)
    seen = {"first_seen": now - timedelta(minutes=5), "last_seen": now - timedelta(minutes=1)}
    console.add_flows([
        FlowRecord(src="image:shop/web", dst="image:shop/db", port=5432, verdict="observed",
                   would="prevent", would_rule_id=5, would_rule_name="web-not-db", count=3,
                   **seen),
        FlowRecord(src="image:shop/web", dst="image:shop/api", port=8080, verdict="allow",
                   rule_id=1, rule_name="web-api", mode="observed", count=2, **seen),
    ])
    console.add_audits([AuditRecord(
        time=now - timedelta(minutes=1), rule_id=5, rule_name="web-not-db", blocked=False,
        effect=Effect.PREVENT, would=True, src_image="shop/web:1.4", dst_image="shop/db:15",
        port=5432, count=3, msg="would block connection ... (not enforced: staged)")])


def test_radar_shows_would_verdicts_apart_from_what_happened(page: Any,
                                                             console: RadarConsole) -> None:
    _would_picture(console)
    sign_in(page, console)
    wait_radar(page)
    edges = graph_state(page)["edges"]
    assert edges["image:shop/web:1.4->image:shop/db:15"]["label"] == "5432 would prevent"
    assert edges["image:shop/web:1.4->image:shop/db:15"]["hole"] is False
    click_element(page, "image:shop/web:1.4->image:shop/db:15")
    panel = page.locator("#panel")
    panel.wait_for(state="visible")
    row = panel.locator("table.ports tbody tr").first
    assert row.locator("td").nth(1).text_content() == "observed would prevent #5"
    assert row.locator(".badge.would").get_attribute("title") == "rule #5, not enforced"
    assert panel.locator("#create-rule").count() == 0  # a staged rule covers it
    assert "#5 web-not-db" in panel.locator("a.rule-link").all_text_contents()
    # its audit in the panel: what would have happened, not an "alert"
    badge = panel.locator(".audit-list li .badge").first
    badge.wait_for()
    assert (badge.text_content(), badge.get_attribute("class")) == ("would prevent",
                                                                    "badge would")
    # seen with enforcement off, allowed by rule 1: no grey port, no "Create rule"
    page.keyboard.press("Escape")
    click_element(page, "image:shop/web:1.4->image:shop/api:2.0")
    panel.locator("h2:has-text('shop/web:1.4 → shop/api:2.0')").wait_for()
    # 1200 enforced connections and 2 seen with enforcement off, all allowed by rule 1
    row = panel.locator("table.ports tbody tr").first
    assert [row.locator("td").nth(i).text_content() for i in range(4)] == [
        "8080", "allowed", "seen (2 not enforced)", "1202"]
    assert panel.locator("#create-rule").count() == 0


def test_a_staged_rule_is_marked_and_promoted_from_the_rules_page(
        page: Any, console: RadarConsole) -> None:
    _would_picture(console)
    page.on("dialog", lambda d: d.accept())
    sign_in(page, console, "#/rules/container")
    staged = page.locator("#rules tr[data-id='5']")
    staged.locator(".badge.staged").wait_for()
    assert "staged" in (staged.get_attribute("class") or "")
    assert page.locator("#rules tr[data-id='1'] button.promote").count() == 0
    # the policy changes after the page was read: the promote is refused,
    # saying why, and the page shows the policy as it is now
    with console.client() as api:
        revision = api.get("/api/v1/policy").json()["revision"]
        api.put("/api/v1/rules/container/5", json={
            "name": "web-not-db", "src": "web", "dst": "db", "ports": [5432, 5433],
            "effect": "prevent", "staged": True}).raise_for_status()
    staged.locator("button.promote").click()
    error = page.locator("#rules-error")
    error.wait_for(state="visible")
    assert error.text_content() == (f"the policy is at revision {revision + 1}, not "
                                    f"{revision}: it changed meanwhile (review it and try "
                                    "again)")
    page.wait_for_function(
        "document.querySelector(\"#rules tr[data-id='5']\").textContent.includes('5433')")
    with console.client() as api:
        assert api.get("/api/v1/rules/container/5").json()["staged"] is True
    page.locator("#rules tr[data-id='5'] button.promote").click()
    page.wait_for_function(
        "!document.querySelector(\"#rules tr[data-id='5'] .badge.staged\")")
    assert page.locator("#rules tr[data-id='5'] td").nth(8).text_content() == "enabled"
    with console.client() as api:
        rule = api.get("/api/v1/rules/container/5").json()
    assert (rule["staged"], rule["effect"]) == (False, "prevent")
    # a new rule can be staged from the editor
    page.click("#add-rule")
    page.fill("#rule-form input[name=name]", "web-not-cache")
    page.select_option("#rule-form select[name=src]", "web")
    page.select_option("#rule-form select[name=dst]", "cache")
    page.select_option("#rule-form select[name=effect]", "prevent")
    page.check("#rule-form input[name=staged]")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules tr[data-id='6'] .badge.staged")
    with console.client() as api:
        assert api.get("/api/v1/rules/container/6").json()["staged"] is True


def test_settings_warn_while_enforcement_is_off_and_promote_the_staged_default(
        page: Any, console: RadarConsole) -> None:
    page.on("dialog", lambda d: d.accept())
    with console.client() as api:  # the shop starts with both switches off
        s = api.get("/api/v1/settings").json()
    assert (s["containerEnabled"], s["hostEnabled"]) == (False, False)
    sign_in(page, console, "#/settings")
    warning = page.locator("#enforcement-warning")
    warning.wait_for()
    assert "Enforcement is off for container and host rules" in warning.text_content()
    assert "prevent rules and a prevent default are not enforced" in warning.text_content()
    page.check("#settings input[name=containerEnabled]")
    page.wait_for_function("document.querySelector('#enforcement-warning').textContent"
                           ".includes('off for host rules')")
    page.check("#settings input[name=hostEnabled]")
    page.wait_for_selector("#enforcement-warning", state="hidden")
    page.select_option("#settings select[name=stagedDefaultEffect]", "prevent")
    page.click("#settings button[type=submit]")
    page.wait_for_selector("#settings-message:has-text('Saved')")
    with console.client() as api:
        s = api.get("/api/v1/settings").json()
    assert (s["containerEnabled"], s["hostEnabled"], s["defaultEffect"],
            s["stagedDefaultEffect"]) == (True, True, "allow", "prevent")
    # the policy changes after the page was read: the promote is refused (it
    # sends the revision the settings were read at), saying why
    with console.client() as api:
        revision = api.get("/api/v1/policy").json()["revision"]
        api.put("/api/v1/settings", json={**s, "blockMode": "drop"}).raise_for_status()
    page.click("#promote-default")
    page.wait_for_selector("#settings-message:has-text('changed meanwhile')")
    assert page.text_content("#settings-message") == (
        f"the policy is at revision {revision + 1}, not {revision}: it changed meanwhile "
        "(review it and try again)")
    page.wait_for_function(
        "document.querySelector('#settings select[name=blockMode]').value === 'drop'")
    with console.client() as api:
        assert api.get("/api/v1/settings").json()["stagedDefaultEffect"] == "prevent"
    page.click("#promote-default")
    page.wait_for_selector("#settings-message:has-text('Default effect is now prevent')")
    assert page.input_value("#settings select[name=defaultEffect]") == "prevent"
    assert page.input_value("#settings select[name=stagedDefaultEffect]") == ""
    with console.client() as api:
        s = api.get("/api/v1/settings").json()
    assert (s["defaultEffect"], s["stagedDefaultEffect"]) == ("prevent", None)


def test_audits_mark_and_filter_would_audits(page: Any, console: RadarConsole) -> None:
    _would_picture(console)
    sign_in(page, console, "#/audits")
    page.wait_for_selector("#audits tbody tr td:has-text('web-not-db')")
    row = page.locator("#audits tbody tr:has-text('web-not-db')")
    assert row.locator(".badge.would").text_content() == "would prevent"
    page.select_option("#audit-filters select[name=would]", "true")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#audits tbody tr').length === 1")
    assert "web-not-db" in page.text_content("#audits tbody")
    page.select_option("#audit-filters select[name=would]", "false")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_function(
        "!document.querySelector('#audits tbody').textContent.includes('web-not-db')")
