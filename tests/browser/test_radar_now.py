"""Radar as an operator reads it, in Debian's chromium against the seeded "shop"
Console: current verdicts before history, holes turned into rules with the
objects that exist, line colours, hover, the details panel, drill-downs,
vulnerability reports uploaded from the page, the keyboard, and contrast.

Everything is asserted from what the page drew (``window.cnnfRadar.cy``: data
and computed styles) or shows (the panel's text), after real clicks and keys.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from radarpage import sign_in, wait_radar
from radarserver import RadarConsole
from test_radar_ui import GREY, ORANGE, YELLOW, click_element, graph_state, rgb

from cnnf.console.services.records import FlowRecord

pytestmark = pytest.mark.browser

WEB_DB = "image:shop/web:1.4->image:shop/db:15"


def _flow(src: str, dst: str, port: int, verdict: str = "observed", *, rule: int = 0,
          count: int = 4) -> FlowRecord:
    now = datetime.now(UTC)
    return FlowRecord(src=src, dst=dst, port=port, verdict=verdict, rule_id=rule,
                      count=count, first_seen=now - timedelta(hours=2), last_seen=now)


def _settings(console: RadarConsole, **changes: Any) -> None:
    with console.client() as api:
        settings = api.get("/api/v1/settings").json()
        api.put("/api/v1/settings", json={**settings, **changes}).raise_for_status()


def _redraw(page: Any) -> None:
    """Draw the graph again now (a filter change refetches at once)."""
    renders = page.evaluate("window.cnnfRadar.renders")
    page.click("#radar-filters button:has-text('Fit')")
    page.evaluate("() => { const s = document.querySelector('select[name=window]');"
                  " s.value = '7d'; s.dispatchEvent(new Event('change')); }")
    wait_radar(page, renders + 1)


def test_a_rule_added_for_a_hole_turns_the_port_and_keeps_the_history(
        page: Any, console: RadarConsole) -> None:
    console.add_flows([_flow("image:shop/web", "image:shop/db", 5432)])
    sign_in(page, console)
    wait_radar(page)
    edge = graph_state(page)["edges"][WEB_DB]
    assert (edge["label"], edge["hole"], edge["lineColor"]) == ("5432 observed", True, rgb(GREY))
    with console.client() as api:
        api.post("/api/v1/rules/container", json={
            "name": "no-web-db", "src": "web", "dst": "db", "ports": [5432],
            "effect": "prevent"}).raise_for_status()
    _redraw(page)
    edge = graph_state(page)["edges"][WEB_DB]
    assert (edge["label"], edge["verdict"], edge["hole"]) == ("5432 blocked", "blocked", False)
    assert (edge["lineColor"], edge["labelBg"]) == (rgb(ORANGE), rgb(ORANGE))
    click_element(page, WEB_DB)
    panel = page.locator("#panel")
    panel.wait_for(state="visible")
    now_row = panel.locator("#ports-now tbody tr")
    assert now_row.count() == 1
    assert [now_row.locator("td").nth(i).text_content() for i in (0, 1, 2, 3)] == [
        "5432", "blocked", "seen", "4"]
    assert "no-web-db" in (now_row.locator("td a").get_attribute("title") or "")
    assert panel.locator("#create-rule").count() == 0
    assert "covered by a rule now" in panel.locator("#covered").text_content()
    # The history says what happened then: seen with no rule.
    history = panel.locator("#port-history")
    assert history.get_attribute("open") is not None  # it differs from now: shown open
    cells = history.locator("tbody tr td")
    assert [cells.nth(i).text_content() for i in (0, 1, 2, 3)] == ["5432", "observed", "4",
                                                                   "no rule"]


def test_setting_the_default_effect_back_turns_yellow_holes_grey(
        page: Any, console: RadarConsole) -> None:
    # Seen while the default effect was "alert": audited, no rule.
    console.add_flows([_flow("image:shop/cache", "image:shop/db", 5432, "alert")])
    _settings(console, defaultEffect="alert")
    sign_in(page, console)
    wait_radar(page)
    edge = graph_state(page)["edges"]["image:shop/cache:7->image:shop/db:15"]
    assert (edge["label"], edge["lineColor"], edge["hole"]) == ("5432 alert", rgb(YELLOW), True)
    _settings(console, defaultEffect="allow")
    _redraw(page)
    edge = graph_state(page)["edges"]["image:shop/cache:7->image:shop/db:15"]
    assert (edge["label"], edge["lineColor"], edge["hole"]) == ("5432 observed", rgb(GREY), True)


def test_a_hole_between_two_objects_reuses_them_not_a_broader_one(
        page: Any, console: RadarConsole) -> None:
    console.add_flows([_flow("image:shop/web", "image:shop/db", 5432)])
    with console.client() as api:
        # Selects web, api and cache: never proposed for a rule about web alone.
        api.post("/api/v1/objects", json={"name": "shop-all", "kind": "container",
                                          "selector": {"namespaces": ["shop"]}}
                 ).raise_for_status()
        objects_before = {o["name"] for o in api.get("/api/v1/objects").json()}
    sign_in(page, console)
    wait_radar(page)
    click_element(page, WEB_DB)
    page.click("#create-rule")
    form = page.locator("#rule-form")
    assert form.locator("select[name=src]").input_value() == "web"
    assert form.locator("select[name=dst]").input_value() == "db"
    assert form.locator("input[name=name]").input_value() == "web-to-db-5432"
    assert "selects this and" in form.locator("select[name=src] option[value=shop-all]"
                                              ).text_content()
    form.locator("button[value=prevent]").click()
    page.wait_for_selector("#rule-created")
    with console.client() as api:
        assert {o["name"] for o in api.get("/api/v1/objects").json()} == objects_before
        new = [r for r in api.get("/api/v1/rules/container").json()
               if r["name"] == "web-to-db-5432"]
    assert [(r["src"], r["dst"], r["ports"], r["effect"]) for r in new] == [
        ("web", "db", [5432], "prevent")]
    page.wait_for_function("(id) => window.cnnfRadar.cy.getElementById(id).data('verdict')"
                           " === 'blocked'", arg=WEB_DB)


def test_lines_by_worst_verdict_blocked_widest(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    widths = page.evaluate("""() => { const out = {};
      window.cnnfRadar.cy.edges().forEach(e => { out[e.data('verdict')] =
        parseFloat(e.style('width')); }); return out; }""")
    assert widths["blocked"] > widths["alert"] > widths["observed"] > widths["allowed"]


def test_hover_highlights_a_nodes_neighbours(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    pos = page.evaluate("""() => { const cy = window.cnnfRadar.cy;
      const n = cy.getElementById('image:shop/db:15');
      const box = cy.container().getBoundingClientRect();
      const p = n.renderedPosition(); return {x: box.left + p.x, y: box.top + p.y}; }""")
    page.mouse.move(pos["x"], pos["y"])
    page.wait_for_function("window.cnnfRadar.cy.getElementById('image:shop/db:15').hasClass('hl')")
    classes = page.evaluate("""() => { const cy = window.cnnfRadar.cy, out = {};
      cy.elements().forEach(e => { out[e.id()] = e.hasClass('hl') ? 'hl'
        : e.hasClass('faded') ? 'faded' : ''; }); return out; }""")
    assert classes["image:shop/api:2.0"] == "hl"  # api -> db
    assert classes["image:shop/api:2.0->image:shop/db:15"] == "hl"
    assert classes["image:shop/web:1.4"] == "faded"
    assert classes["image:shop/web:1.4->image:shop/api:2.0"] == "faded"
    page.mouse.move(2, 2)
    page.wait_for_function("window.cnnfRadar.cy.elements('.faded, .hl').length === 0")


def test_the_panel_sits_beside_the_graph_and_escape_closes_it(page: Any,
                                                               console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    width = page.evaluate("document.getElementById('graph').getBoundingClientRect().width")
    click_element(page, "image:shop/db:15")
    page.locator("#panel").wait_for(state="visible")
    graph = page.evaluate("document.getElementById('graph').getBoundingClientRect().toJSON()")
    panel = page.evaluate("document.getElementById('panel').getBoundingClientRect().toJSON()")
    assert graph["right"] <= panel["left"] + 1
    # Fitted again: every node is inside the narrower graph.
    inside = page.evaluate("""() => { const cy = window.cnnfRadar.cy;
      return cy.nodes().every(n => { const b = n.renderedBoundingBox();
        return b.x1 >= -1 && b.y1 >= -1 && b.x2 <= cy.width() + 1
          && b.y2 <= cy.height() + 1; }); }""")
    assert inside
    page.keyboard.press("Escape")
    page.locator("#panel").wait_for(state="hidden")
    assert page.evaluate(
        "document.getElementById('graph').getBoundingClientRect().width") == width


def test_an_image_node_drills_down_to_each_container(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    click_element(page, "image:shop/web:1.4")
    drill = page.locator("#panel #workloads")
    drill.locator("summary").click()
    rows = {r.locator("td").nth(0).text_content(): [r.locator("td").nth(i).text_content()
                                                   for i in range(1, 5)]
            for r in drill.locator("tbody tr").all()}
    none = "\N{EN DASH}"  # no pod
    assert rows == {"web-1": [none, "shop", "node-1", "10.88.1.2"],
                    "web-2": [none, "shop", "node-2", "10.88.1.3"],
                    "web-3": [none, "shop", "node-1", "10.88.1.4"]}


def test_the_internet_node_lists_what_it_saw(page: Any, console: RadarConsole) -> None:
    console.add_flows([_flow("image:shop/api", "dns:cdn.example", 443)])
    sign_in(page, console)
    wait_radar(page)
    click_element(page, "internet")
    seen = page.locator("#panel #seen")
    seen.wait_for()
    assert seen.locator("li").all_text_contents() == ["203.0.113.50", "cdn.example"]
    assert "Addresses and names seen: 2" in seen.text_content()


def test_a_search_with_no_match_says_so(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    assert page.locator("#radar-empty").is_hidden()
    page.fill("input[name=q]", "no-such-thing")
    page.wait_for_selector("#radar-empty:visible")
    assert page.text_content("#radar-empty") == "No node matches “no-such-thing”."
    page.fill("input[name=q]", "")
    page.wait_for_selector("#radar-empty", state="hidden")


def test_host_view_says_when_host_enforcement_is_off(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    page.select_option("select[name=view]", "host")
    wait_radar(page, 2)
    note = page.locator("#enforcement-note")
    assert note.is_visible()
    assert note.text_content().startswith("Host enforcement is off")
    g = graph_state(page)
    assert g["edges"]["host:node-1->host:node-2"]["label"] == "22 allowed"
    _settings(console, hostEnabled=True)
    _redraw(page)
    assert note.is_hidden()


def _trivy(tmp_path: Path, artifact: str, severities: list[str]) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"SchemaVersion": 2, "ArtifactName": artifact, "Results": [
        {"Target": artifact, "Vulnerabilities": [
            {"VulnerabilityID": f"CVE-2026-{100 + i}", "PkgName": "openssl",
             "InstalledVersion": "3.0.1", "FixedVersion": "3.0.9", "Severity": s}
            for i, s in enumerate(severities)]}]}))
    return path


def test_upload_a_trivy_report_for_a_node_and_see_its_cves(page: Any, console: RadarConsole,
                                                          tmp_path: Path) -> None:
    sign_in(page, console)
    wait_radar(page)
    click_element(page, "image:shop/cache:7")
    panel = page.locator("#panel")
    panel.locator("#trivy-file").set_input_files(
        str(_trivy(tmp_path, "docker.io/shop/cache:7", ["CRITICAL", "LOW"])))
    panel.locator("#trivy-form button[type=submit]").click()
    page.wait_for_selector("#trivy-message.ok")
    assert page.text_content("#trivy-message") == (
        "Report stored for shop/cache:7: 1 critical, 1 low.")
    page.wait_for_function("window.cnnfRadar.cy.getElementById('image:shop/cache:7')"
                           ".data('severity') === 'critical'")
    cves = page.locator("#panel #cves tbody tr")
    cves.first.wait_for()
    assert [r.locator("td").nth(0).text_content() for r in cves.all()] == [
        "CVE-2026-100", "CVE-2026-101"]
    assert cves.first.locator("td").nth(4).text_content() == "3.0.9"


def test_a_report_for_another_image_is_stored_only_when_asked(
        page: Any, console: RadarConsole, tmp_path: Path) -> None:
    sign_in(page, console)
    wait_radar(page)
    click_element(page, "image:shop/cache:7")
    page.set_input_files("#trivy-file", str(_trivy(tmp_path, "shop/db:15", ["HIGH"])))
    page.click("#trivy-form button[type=submit]")
    page.wait_for_selector("#trivy-confirm")
    assert "This report scanned shop/db:15, not shop/cache:7." in page.text_content(
        "#trivy-message")
    with console.client() as api:  # nothing stored yet
        assert api.get("/api/v1/overlays/image/shop/cache:7").json()["worst"] == "none"
    page.click("#trivy-confirm")
    page.wait_for_selector("#trivy-message.ok")
    with console.client() as api:
        assert api.get("/api/v1/overlays/image/shop/cache:7").json()["worst"] == "high"
        assert api.get("/api/v1/overlays/image/shop/db:15").json()["worst"] == "critical"
    # A file that is no JSON is refused on the page, nothing sent.
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    page.set_input_files("#trivy-file", str(bad))
    page.click("#trivy-form button[type=submit]")
    page.wait_for_selector("#trivy-message.error:has-text('bad.json is not JSON')")


def test_the_graph_is_usable_by_keyboard(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    page.focus("#graph")
    page.keyboard.press("ArrowRight")
    first = page.get_attribute("#graph", "data-focused")
    assert first and not first.startswith("group:")
    assert page.evaluate("(id) => window.cnnfRadar.cy.getElementById(id).selected()", first)
    assert page.text_content("#radar-focus")
    # Walk the nodes to shop/api, then its edges to the one to the database.
    for _ in range(20):
        if page.get_attribute("#graph", "data-focused") == "image:shop/api:2.0":
            break
        page.keyboard.press("ArrowRight")
    assert page.get_attribute("#graph", "data-focused") == "image:shop/api:2.0"
    for _ in range(10):
        page.keyboard.press("ArrowDown")
        if page.get_attribute("#graph", "data-focused") == (
                "image:shop/api:2.0->image:shop/db:15"):
            break
    assert page.text_content("#radar-focus") == (
        "Edge shop/api:2.0 to shop/db:15: 5432 alert")
    page.keyboard.press("Enter")
    page.locator("#panel").wait_for(state="visible")
    assert page.text_content("#panel h2") == "shop/api:2.0 → shop/db:15"
    page.keyboard.press("Escape")
    page.locator("#panel").wait_for(state="hidden")
    assert page.evaluate("document.activeElement.id") == "graph"


def _contrast(a: str, b: str) -> float:
    def lum(colour: str) -> float:
        parts = [int(x) / 255 for x in colour[colour.index("(") + 1:-1].split(",")[:3]]
        lin = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in parts]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_label_and_badge_text_contrast_is_at_least_4_5(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    labels = page.evaluate("""() => window.cnnfRadar.cy.edges().map(e => [e.data('verdict'),
      e.style('color'), e.style('text-background-color')])""")
    assert {v for v, _, _ in labels} == {"allowed", "alert", "blocked", "observed"}
    for verdict, fg, bg in labels:
        assert _contrast(fg, bg) >= 4.5, (verdict, fg, bg)
    click_element(page, "image:monitoring/agent:1->image:shop/api:2.0")
    page.locator("#panel .badge").first.wait_for()
    badges = page.evaluate("""() => [...document.querySelectorAll('.badge')].map(b => {
      const s = getComputedStyle(b); return [b.textContent, s.color, s.backgroundColor]; })""")
    assert badges
    for text, fg, bg in badges:
        assert _contrast(fg, bg) >= 4.5, (text, fg, bg)


def test_edge_labels_overlap_no_node_and_no_other_label(page: Any,
                                                        console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    overlaps = page.evaluate("""() => {
      const cy = window.cnnfRadar.cy, boxes = [];
      const hit = (a, b) => a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2;
      cy.nodes().filter(n => !n.isParent()).forEach(n => boxes.push(
        [n.id(), n.boundingBox({includeLabels: true, includeOverlays: false})]));
      const labels = [];
      cy.edges().forEach(e => labels.push([e.id(), e.boundingBox({includeNodes: false,
        includeEdges: false, includeLabels: true})]));
      const out = [];
      labels.forEach(([id, box], i) => {
        boxes.forEach(([n, b]) => { if (hit(box, b)) out.push([id, n]); });
        labels.slice(i + 1).forEach(([other, b]) => { if (hit(box, b)) out.push([id, other]); });
      });
      return out; }""")
    assert overlaps == []


def test_rules_page_shows_hit_counts_from_the_stored_flows(page: Any,
                                                          console: RadarConsole) -> None:
    # Rule 1 (web-api) decided 1,200 seeded connections and 5 more now; rule 2
    # 340; rule 4 (web-cache) none.
    console.add_flows([_flow("image:shop/web", "image:shop/api", 8080, "allow", rule=1,
                             count=5)])
    sign_in(page, console, "#/rules/container")
    page.wait_for_selector("#rules td.hits[data-rule='4']")
    page.wait_for_function("[...document.querySelectorAll('#rules td.hits')]"
                           ".every(c => c.textContent !== '…')")
    hits = {c.get_attribute("data-rule"): c.text_content()
            for c in page.locator("#rules td.hits").all()}
    assert hits == {"1": "1,205", "2": "340", "3": "7", "4": "0"}
    assert "recorded as decided by the rule" in page.text_content("#hits-note")


def test_rules_reorder_by_keyboard(page: Any, console: RadarConsole) -> None:
    sign_in(page, console, "#/rules/container")
    page.wait_for_selector("#rules tbody tr[data-id='3']")
    page.focus("#rules tr[data-id='3'] td.handle")
    page.keyboard.press("ArrowUp")
    page.wait_for_function("[...document.querySelectorAll('#rules tbody tr')]"
                           ".map(r => r.dataset.id).join() === '1,3,2,4'")
    # The handle keeps the focus: the rule moves on.
    assert page.evaluate("document.activeElement.closest('tr').dataset.id") == "3"
    page.keyboard.press("ArrowUp")
    page.wait_for_function("[...document.querySelectorAll('#rules tbody tr')]"
                           ".map(r => r.dataset.id).join() === '3,1,2,4'")
    page.keyboard.press("ArrowUp")  # already first: nothing moves
    page.keyboard.press("ArrowDown")
    page.wait_for_function("[...document.querySelectorAll('#rules tbody tr')]"
                           ".map(r => r.dataset.id).join() === '1,3,2,4'")
    with console.client() as api:
        assert [r["id"] for r in api.get("/api/v1/rules/container").json()] == [1, 3, 2, 4]
