"""Radar and the policy pages in Debian's chromium, against a seeded Console.

The graph is asserted from the page's own state (``window.cnnfRadar.cy``, the
Cytoscape instance: elements, their data and their computed styles); every test
leaves a screenshot in test-artifacts/browser/ and fails on any JavaScript error.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from radarpage import ARTIFACTS, sign_in, wait_radar
from radarserver import RadarConsole

from cnnf.console.services.records import FlowRecord
from cnnf.model.records import HostInfo, WorkloadInfo

pytestmark = pytest.mark.browser

GREY, YELLOW, ORANGE, GREEN = "#616161", "#f9c20a", "#b94a00", "#2e7d32"


def rgb(hex_colour: str) -> str:
    h = hex_colour.lstrip("#")
    return "rgb({},{},{})".format(*(int(h[i:i + 2], 16) for i in (0, 2, 4)))


def graph_state(page: Any) -> dict[str, Any]:
    """Nodes and edges as drawn: data plus the computed styles that carry meaning."""
    return page.evaluate("""() => {
      const cy = window.cnnfRadar.cy;
      const nodes = {}, edges = {};
      cy.nodes().forEach(n => { nodes[n.id()] = {kind: n.data('kind'), label: n.data('label'),
        parent: n.data('parent') || null, bg: n.style('background-color')}; });
      cy.edges().forEach(e => { edges[e.id()] = {label: e.data('label'),
        line: e.style('line-style'), labelBg: e.style('text-background-color'),
        lineColor: e.style('line-color'),
        verdict: e.data('verdict'), hole: e.data('hole')}; });
      return {nodes, edges};
    }""")


def click_element(page: Any, element_id: str) -> None:
    """A real mouse click where Cytoscape drew the node (centre) or edge (midpoint)."""
    pos = page.evaluate("""(id) => {
      const cy = window.cnnfRadar.cy; const el = cy.getElementById(id);
      if (el.empty()) throw new Error('no element ' + id);
      const box = cy.container().getBoundingClientRect();
      const p = el.isEdge() ? el.renderedMidpoint() : el.renderedPosition();
      return {x: box.left + p.x, y: box.top + p.y};
    }""", element_id)
    page.mouse.click(pos["x"], pos["y"])


def test_login_refuses_a_bad_password_then_shows_radar(page: Any, console: RadarConsole) -> None:
    page.goto(console.url + "/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "wrong")
    page.click("form#login button[type=submit]")
    page.wait_for_selector("#login-error:has-text('wrong user name or password')")
    sign_in(page, console)
    wait_radar(page)
    # confirmed by /auth/me once Radar is drawn (a request started first held up
    # its first render); shown from the sign-in until then
    assert page.text_content("#who") == "admin (admin)"
    page.wait_for_load_state("networkidle")
    assert page.text_content("#who") == "admin (admin)"
    assert page.is_visible("#legend")


def test_signing_out_then_in_as_another_user_never_shows_the_first(
        page: Any, console: RadarConsole) -> None:
    with console.client() as api:
        api.post("/api/v1/users", json={"name": "ops", "role": "auditor",
                                        "password": "a-long-enough-password"}).raise_for_status()
    sign_in(page, console)
    wait_radar(page)
    page.click("#logout")
    page.wait_for_selector("form#login")
    assert page.text_content("#who") == ""
    sign_in(page, console, credentials=("ops", "a-long-enough-password"))
    page.wait_for_selector("#top:not([hidden])")
    assert page.text_content("#who") == "ops (auditor)"
    wait_radar(page)
    page.wait_for_load_state("networkidle")
    assert page.text_content("#who") == "ops (auditor)"


def test_a_reload_shows_who_is_signed_in_before_radar_or_auth_me_answer(
        page: Any, console: RadarConsole) -> None:
    with console.client() as api:
        api.post("/api/v1/users", json={"name": "ops", "role": "auditor",
                                        "password": "a-long-enough-password"}).raise_for_status()
    sign_in(page, console, credentials=("ops", "a-long-enough-password"))
    wait_radar(page)
    page.wait_for_load_state("networkidle")
    # Hold Radar's data and who-am-I: the name must come from the tab's own
    # memory of the sign-in, before either answers.
    held: list[Any] = []

    def hold(route: Any) -> None:  # a bound builtin (held.append) is refused by Playwright
        held.append(route)

    page.route("**/api/v1/radar*", hold)
    page.route("**/api/v1/auth/me", hold)
    page.reload()
    page.wait_for_selector("#top:not([hidden])")
    page.wait_for_function("document.querySelector('#who').textContent !== ''",
                           timeout=5000)
    assert page.text_content("#who") == "ops (auditor)"
    # remembered, not yet confirmed: marked so
    assert page.get_attribute("#who", "aria-busy") == "true"
    assert "unconfirmed" in (page.get_attribute("#who", "class") or "")
    assert page.evaluate("window.cnnfRadar.ready") is False  # Radar not drawn yet
    assert page.evaluate("window.cnnfRadar.renders") == 0
    # the graph is busy while its data is held, and says so to the keyboard
    assert page.get_attribute("#graph", "aria-busy") == "true"
    page.focus("#graph")
    page.keyboard.press("ArrowRight")
    assert (page.text_content("#radar-focus") or "").startswith("Radar is loading")
    for route in held:  # released before the handlers go (unroute lets held routes go on)
        route.continue_()
    page.unroute("**/api/v1/radar*")
    page.unroute("**/api/v1/auth/me")
    wait_radar(page)
    page.wait_for_load_state("networkidle")
    assert page.text_content("#who") == "ops (auditor)"
    assert page.get_attribute("#who", "aria-busy") is None
    assert page.get_attribute("#graph", "aria-busy") is None
    # An admin changes the role: the next reload shows the remembered role
    # (marked unconfirmed), then the one /auth/me gives.
    with console.client() as api:
        api.patch("/api/v1/users/ops", json={"role": "operator"}).raise_for_status()
    page.reload()
    wait_radar(page)
    page.wait_for_function(
        "document.querySelector('#who').textContent === 'ops (operator)'", timeout=5000)
    assert page.get_attribute("#who", "aria-busy") is None
    # Signed out: no name left for the next reload of this tab.
    page.click("#logout")
    page.wait_for_selector("form#login")
    page.reload()
    page.wait_for_selector("form#login")
    assert page.text_content("#who") == ""
    assert page.evaluate("sessionStorage.getItem('cnnf.who')") is None


def test_container_view_nodes_edges_line_styles_and_port_colours(page: Any,
                                                                 console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    g = graph_state(page)
    n, e = g["nodes"], g["edges"]
    assert {k for k, v in n.items() if v["kind"] == "image"} == {
        "image:shop/web:1.4", "image:shop/api:2.0", "image:shop/db:15", "image:shop/cache:7",
        "image:monitoring/agent:1"}
    assert n["image:shop/web:1.4"]["label"] == "shop/web:1.4\n3 containers"
    assert n["image:shop/db:15"]["parent"] == "group:namespace:data"
    assert {n[x]["kind"] for x in ("subnet:lan", "dns:payments", "internet")} == {
        "subnet", "dns", "internet"}
    # Node colour follows the worst vulnerability.
    assert n["image:shop/db:15"]["bg"] == rgb("#7f0000")  # critical
    assert n["image:shop/api:2.0"]["bg"] == rgb("#d32f2f")  # high
    assert n["image:shop/web:1.4"]["bg"] == rgb("#fb8c00")  # medium
    assert n["image:shop/cache:7"]["bg"] == rgb("#43a047")  # none

    expected = {  # edge: (line style, label, label colour)
        "image:shop/web:1.4->image:shop/api:2.0": ("solid", "8080 allowed", GREEN),
        "image:shop/api:2.0->image:shop/db:15": ("solid", "5432 alert", YELLOW),
        "image:shop/api:2.0->subnet:lan": ("solid", "443 blocked", ORANGE),
        "image:monitoring/agent:1->image:shop/api:2.0": ("solid", "9100,9101 observed", GREY),
        "image:shop/api:2.0->dns:payments": ("solid", "443 observed", GREY),
        "image:shop/web:1.4->internet": ("solid", "443 observed", GREY),
        "image:shop/web:1.4->image:shop/cache:7": ("dotted", "6379 allowed", GREEN),
    }
    got = {k: (v["line"], v["label"], v["labelBg"]) for k, v in e.items()}
    assert got == {k: (line, label, rgb(c)) for k, (line, label, c) in expected.items()}
    # Lines take the colour of the edge's worst current verdict, seen or not.
    assert {k: v["lineColor"] for k, v in e.items()} == {k: rgb(c) for k, (_, _, c) in
                                                         expected.items()}


def test_group_by_host_and_host_view(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    page.select_option("select[name=group]", "host")
    wait_radar(page, 2)
    n = graph_state(page)["nodes"]
    assert n["image:shop/web:1.4"]["parent"] == "group:host:node-1"
    assert n["group:host:node-2"]["kind"] == "group"
    page.select_option("select[name=view]", "host")
    wait_radar(page, 3)
    g = graph_state(page)
    assert {k for k, v in g["nodes"].items() if v["kind"] == "host"} == {"host:node-1",
                                                                          "host:node-2"}
    assert g["edges"]["host:node-1->host:node-2"]["label"] == "22 allowed"
    assert g["edges"]["host:node-1->host:node-2"]["line"] == "solid"
    assert g["edges"]["host:node-2->host:node-1"]["line"] == "dotted"


def test_filters_narrow_the_graph(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    page.select_option("select[name=verdict]", "observed")
    page.wait_for_function("window.cnnfRadar.cy.edges().length === 3")
    assert all(v["hole"] for v in graph_state(page)["edges"].values())
    page.select_option("select[name=verdict]", "")
    page.fill("input[name=namespace]", "data")
    page.wait_for_function("window.cnnfRadar.cy.nodes('[kind = \"image\"]').length === 1")
    page.fill("input[name=namespace]", "")
    page.fill("input[name=q]", "cache")
    page.wait_for_function("""() => { const ids = window.cnnfRadar.cy.edges().map(e => e.id());
      return ids.length === 1 && ids[0] === 'image:shop/web:1.4->image:shop/cache:7'; }""")


def test_edge_click_shows_ports_rule_counts_and_audits(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    click_element(page, "image:shop/api:2.0->image:shop/db:15")
    panel = page.locator("#panel")
    panel.wait_for(state="visible")
    assert panel.locator("h2").text_content() == "shop/api:2.0 → shop/db:15"
    row = panel.locator("table.ports tbody tr").first
    assert row.locator("td").nth(0).text_content() == "5432"
    assert row.locator("td").nth(1).text_content() == "alert"
    assert row.locator("td").nth(3).text_content() == "340"
    link = panel.locator("a.rule-link")
    assert link.text_content() == "#2 api-db"
    assert link.get_attribute("href") == "#/rules/container?edit=2"
    panel.locator(".audit-list li").first.wait_for()
    assert "api-db" in panel.locator(".audit-list").text_content()
    assert "Connections: 340" in panel.text_content()
    # The rule link opens the rule's editor.
    link.click()
    page.wait_for_selector("#rule-form input[name=name]")
    assert page.input_value("#rule-form input[name=name]") == "api-db"


def test_node_click_shows_the_overlay(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    click_element(page, "image:shop/db:15")
    panel = page.locator("#panel")
    panel.wait_for(state="visible")
    vulns = {r.locator("td").nth(0).text_content(): r.locator("td").nth(1).text_content()
             for r in panel.locator("#vulns tbody tr").all()}
    assert vulns == {"critical": "1", "high": "1", "medium": "0", "low": "0", "unknown": "0"}
    assert "critical" in panel.locator("#vulns caption").text_content()
    assert panel.locator("#compliance").text_content() == "12 passed · 2 failed"
    runtime = panel.locator("#runtime").text_content()
    assert "Containers: 1" in runtime and "Namespaces: data" in runtime
    assert "Hosts: node-2" in runtime and "app=db" in runtime
    panel.locator(".audit-list li").first.wait_for()


def test_create_rule_from_a_grey_edge(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    hole = "image:monitoring/agent:1->image:shop/api:2.0"
    click_element(page, hole)
    page.click("#create-rule")
    form = page.locator("#rule-form")
    assert form.locator("input[name=ports]").input_value() == "9100,9101"
    # The existing "api" object selects shop/api: reused; no object selects the
    # agent: a new one, named after the image.
    assert form.locator("select[name=src]").input_value() == "agent"
    assert form.locator("select[name=dst]").input_value() == "api"
    assert form.locator("input[name=name]").input_value() == "agent-to-api-9100-9101"
    form.locator("button[value=allow]").click()
    page.wait_for_selector("#rule-created")
    with console.client() as api:
        rules = api.get("/api/v1/rules/container").json()
        objects = {o["name"]: o for o in api.get("/api/v1/objects").json()}
    new = [r for r in rules if r["src"] == "agent"]
    assert len(new) == 1
    assert (new[0]["name"], new[0]["dst"], new[0]["ports"], new[0]["effect"]) == (
        "agent-to-api-9100-9101", "api", [9100, 9101], "allow")
    assert "image-shop-api" not in objects
    selector = objects["agent"]["selector"]
    assert selector["images"] == ["monitoring/agent"]
    assert not any(v for k, v in selector.items() if k != "images")
    # Radar shows the new rule on the edge, the ports allowed now, no hole left.
    page.wait_for_function(
        "(id) => window.cnnfRadar.cy.getElementById(id).data('rules').length === 1", arg=hole)
    edge = graph_state(page)["edges"][hole]
    assert (edge["label"], edge["hole"], edge["lineColor"]) == ("9100,9101 allowed", False,
                                                                rgb(GREEN))
    assert page.locator("#panel #create-rule").count() == 0


def test_live_updates_show_new_edges_without_reload(page: Any, console: RadarConsole) -> None:
    sign_in(page, console, query="?poll=300")
    wait_radar(page)
    now = datetime.now(UTC)
    console.add_flows([FlowRecord(src="image:shop/cache", dst="image:shop/db", port=5432,
                                  verdict="observed", count=1, first_seen=now, last_seen=now)])
    page.wait_for_function("window.cnnfRadar.cy.getElementById("
                           "'image:shop/cache:7->image:shop/db:15').nonempty()")
    page.wait_for_selector("#live:has-text('new data at')")


def test_large_groups_collapse_and_expand(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    page.evaluate("() => { window.cnnfRadar.cy.getElementById('group:namespace:shop')"
                  ".emit('dbltap'); }")
    page.wait_for_function(
        "window.cnnfRadar.cy.getElementById('group:namespace:shop').data('kind') === 'collapsed'")
    e = graph_state(page)["edges"]
    merged = e["merged:group:namespace:shop->dns:payments"]
    assert merged["label"] == "1 edges: 443 observed"
    click_element(page, "group:namespace:shop")
    page.click("#toggle-group")
    page.wait_for_function(
        "window.cnnfRadar.cy.getElementById('group:namespace:shop').data('kind') === 'group'")


def test_above_300_nodes_groups_of_more_than_8_start_collapsed(page: Any,
                                                               console: RadarConsole) -> None:
    """The README: above 300 nodes, groups of more than 8 start collapsed. A
    namespace of 310 images (one container each), one of 9 and one of 8, beside
    the shop: only the first two start collapsed."""
    sizes = {"big": 310, "nine": 9, "eight": 8}
    containers = [WorkloadInfo(address=f"10.9.{i // 250}.{i % 250 + 1}",
                               image=f"{ns}/svc{k}:1", name=f"{ns}-{k}", namespace=ns,
                               host="node-9")
                  for i, (ns, k) in enumerate((ns, k) for ns, n in sizes.items()
                                              for k in range(n))]
    console.report_inventory([HostInfo(name="node-9", addresses=["10.9.255.1"])], containers)
    sign_in(page, console)
    wait_radar(page)
    kinds = page.evaluate("""() => {
      const cy = window.cnnfRadar.cy, out = {};
      cy.nodes('[kind = "group"], [kind = "collapsed"]').forEach(n => {
        out[n.id()] = n.data('kind'); });
      return {kinds: out, nodes: window.cnnfRadar.data.nodes.length};
    }""")
    assert kinds["nodes"] > 300
    groups = kinds["kinds"]
    assert groups["group:namespace:big"] == "collapsed"
    assert groups["group:namespace:nine"] == "collapsed"
    assert groups["group:namespace:eight"] == "group"
    assert page.locator("#live").inner_text()  # the status line is up


def test_polls_redraw_only_when_the_graph_changed(page: Any, console: RadarConsole) -> None:
    """Radar polls; unchanged, the endpoint answers 304 and nothing is redrawn;
    a change is drawn on the next poll."""
    answers: list[int] = []
    page.on("response", lambda r: answers.append(r.status)
            if "/api/v1/radar" in r.url else None)
    sign_in(page, console, query="?poll=300")
    wait_radar(page)
    renders = page.evaluate("window.cnnfRadar.renders")
    # a positive signal that polls happened: three 304 answers after the render
    seen = len(answers)
    deadline = time.monotonic() + 15
    while answers[seen:].count(304) < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert answers[seen:].count(304) >= 3, answers
    assert page.evaluate("window.cnnfRadar.renders") == renders
    now = datetime.now(UTC)
    console.add_flows([FlowRecord(src="image:shop/cache", dst="image:shop/db", port=5432,
                                  verdict="observed", count=1, first_seen=now, last_seen=now)])
    page.wait_for_function(f"window.cnnfRadar.renders === {renders + 1}")
    assert 200 in answers[seen:]


def test_a_bad_import_shows_the_error_and_changes_nothing(page: Any,
                                                          console: RadarConsole) -> None:
    with console.client() as api:
        before = api.get("/api/v1/policy").json()
    sign_in(page, console, "#/transfer")
    bad = {"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {
        "objects": [{"name": "x", "kind": "subnet", "cidrs": ["300.1.2.0/24"]}],
        "containerRules": [{"id": 1, "name": "r", "src": "nope", "dst": "x"}]}}
    page.fill("textarea[name=document]", json.dumps(bad))
    page.click("#import-preview-button")
    page.wait_for_selector("#import-preview ul.errors li")
    errors = page.text_content("#import-preview")
    assert "300.1.2.0/24" in errors
    assert page.is_disabled("#import-apply")
    with console.client() as api:
        assert api.get("/api/v1/policy").json() == before
    # A valid document previews as a diff and applies only on confirmation.
    good = {"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {"containerEnabled": True}}
    page.fill("textarea[name=document]", json.dumps(good))
    page.click("#import-preview-button")
    page.wait_for_selector("#import-preview:has-text('containerEnabled false → true')")
    with console.client() as api:
        assert api.get("/api/v1/policy").json() == before
    page.click("#import-apply")
    page.wait_for_selector("#import-preview:has-text('Applied')")
    with console.client() as api:
        assert api.get("/api/v1/settings").json()["containerEnabled"] is True


def test_objects_page_shows_validation_errors_at_the_field(page: Any,
                                                           console: RadarConsole) -> None:
    sign_in(page, console, "#/objects")
    page.click("#add-object")
    page.fill("#object-form input[name=name]", "office")
    page.select_option("#object-form select[name=kind]", "subnet")
    page.fill("#object-form input[name=cidrs]", "10.0.0.0/8, banana")
    page.click("#object-form button[type=submit]")
    error = page.locator("#object-form input[name=cidrs] + .field-error")
    error.wait_for()
    assert "banana" in error.text_content()
    page.fill("#object-form input[name=cidrs]", "10.0.0.0/8")
    page.click("#object-form button[type=submit]")
    page.wait_for_selector("#objects tr[data-name=office]")
    # Deleting an object a rule uses is refused with the API's reason.
    page.on("dialog", lambda d: d.accept())
    page.click("#objects tr[data-name=lan] button.danger")
    page.wait_for_selector("#objects-error:has-text('api-lan')")


def test_rules_page_add_reorder_delete(page: Any, console: RadarConsole) -> None:
    sign_in(page, console, "#/rules/container")
    page.wait_for_selector("#rules tbody tr[data-id='4']")
    page.click("#add-rule")
    page.fill("#rule-form input[name=name]", "bad-port")
    page.select_option("#rule-form select[name=src]", "web")
    page.select_option("#rule-form select[name=dst]", "db")
    page.fill("#rule-form input[name=ports]", "99999")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rule-form input[name=ports] + .field-error")
    page.fill("#rule-form input[name=ports]", "5432")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules tbody tr[data-id='5']")
    page.drag_and_drop("#rules tr[data-id='5'] td.handle", "#rules tr[data-id='1'] td.handle")
    page.wait_for_function("document.querySelector('#rules tbody tr').dataset.id === '5'")
    with console.client() as api:
        assert [r["id"] for r in api.get("/api/v1/rules/container").json()] == [5, 1, 2, 3, 4]
    page.on("dialog", lambda d: d.accept())
    page.click("#rules tr[data-id='5'] button.danger")
    page.wait_for_function("!document.querySelector(\"#rules tr[data-id='5']\")")
    page.click("a[href='#/rules/host']")
    page.wait_for_selector("#rules tbody tr[data-id='1']:has-text('ssh')")


def test_settings_and_audits_pages(page: Any, console: RadarConsole) -> None:
    sign_in(page, console, "#/settings")
    page.check("#settings input[name=hostEnabled]")
    page.select_option("#settings select[name=defaultEffect]", "alert")
    page.click("#settings button[type=submit]")
    page.wait_for_selector("#settings-message:has-text('Saved')")
    with console.client() as api:
        s = api.get("/api/v1/settings").json()
    assert (s["hostEnabled"], s["defaultEffect"]) == (True, "alert")

    page.click("a[href='#/audits']")
    page.wait_for_selector("#audits tbody tr td:has-text('api-db')")
    assert page.locator("#audits tbody tr").count() == 2
    page.select_option("#audit-filters select[name=blocked]", "true")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#audits tbody tr').length === 1")
    assert "api-lan" in page.text_content("#audits tbody")
    with page.expect_download() as info:
        page.click("#audits-csv")
    path = ARTIFACTS / "audits.csv"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    info.value.save_as(str(path))
    lines = path.read_text().splitlines()
    assert lines[0].startswith("Time,Type,RuleName,Block,")
    assert len(lines) == 2 and "api-lan" in lines[1]

    page.click("a[href='#/transfer']")
    with page.expect_download() as info:
        page.click("#export-native")
    exported = json.loads(Path(info.value.path()).read_text())
    assert exported["kind"] == "Policy"
