"""Overload audits in the browser: node-1's Defender reports a flooding source
through the Defender endpoint; the audits page shows and filters it, and Radar
shows it on the source node, not on any edge."""

from __future__ import annotations

import time
from typing import Any

import pytest
from radarpage import ARTIFACTS, sign_in, wait_radar
from radarserver import RadarConsole
from test_radar_ui import click_element

from cnnf.model.records import EndpointInfo, ReportBatch, overload_audit

pytestmark = pytest.mark.browser

MESSAGE = ("overload: the admission limit (1000 new connections/s per source) dropped "
           "52,311 SYNs from shop/web:1.4 (web-1) in 20 s")


@pytest.fixture
def flooded(console: RadarConsole) -> RadarConsole:
    web1 = EndpointInfo(kind="container", address="10.88.1.2", image="shop/web:1.4",
                        container="web-1", namespace="shop", host="node-1",
                        labels={"app": "web"})
    event = overload_audit(time.time() - 60, web1, host="node-1", dropped=52_311, seconds=20,
                           rate=1000, reporter="node-1")
    with console.client(console.defenders["node-1"]) as defender:
        r = defender.post("/api/v1/defender/reports",
                          json=ReportBatch(batch_id="flood-1", audits=[event])
                          .model_dump(mode="json"))
        r.raise_for_status()
    return console


def test_the_audits_page_shows_and_filters_an_overload_audit(page: Any,
                                                             flooded: RadarConsole) -> None:
    sign_in(page, flooded, "#/audits")
    row = page.locator("#audits tbody tr.overload")
    row.wait_for()
    assert page.locator("#audits tbody tr").count() == 3  # and the two seeded rule audits
    cells = [c.strip() for c in row.locator("td").all_text_contents()]
    assert cells[1:] == ["overload", "blocked", "admission limit",
                         "shop/web:1.4 (web-1) on node-1", "host node-1", "—", "52,311", MESSAGE,
                         ""]  # no Radar link: an overload audit has no edge
    assert row.locator("td .badge.overload").count() == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "audits-overload.png"))

    page.select_option("#audit-filters select[name=type]", "overload")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#audits tbody tr').length === 1")
    assert page.locator("#audits tbody tr.overload").count() == 1
    assert page.text_content("#audit-pager") == "1\u20131 of 1"  # an en dash
    page.select_option("#audit-filters select[name=type]", "container")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#audits tbody tr').length === 2")
    assert page.locator("#audits tbody tr.overload").count() == 0


def test_radar_shows_an_overload_audit_on_its_source_node_only(page: Any,
                                                               flooded: RadarConsole) -> None:
    sign_in(page, flooded)
    wait_radar(page)
    edges = page.evaluate("window.cnnfRadar.cy.edges().map(e => e.id())")
    assert not [e for e in edges if "host:" in e], edges  # no edge to the flooded host

    click_element(page, "image:shop/web:1.4")
    panel = page.locator("#panel")
    panel.wait_for(state="visible")
    item = panel.locator(".audit-list li.overload")
    item.wait_for()
    assert "52,311 SYNs dropped on node-1" in item.text_content()
    assert MESSAGE in item.text_content()
    page.screenshot(path=str(ARTIFACTS / "radar-node-overload.png"))

    # The edge from the same image shows connection audits only.
    click_element(page, "image:shop/web:1.4->image:shop/api:2.0")
    page.wait_for_function("document.querySelector('#panel h2').textContent"
                           " === 'shop/web:1.4 → shop/api:2.0'")
    panel.locator("p.muted:has-text('No audits.'), .audit-list").first.wait_for()
    assert panel.locator(".audit-list li.overload").count() == 0
