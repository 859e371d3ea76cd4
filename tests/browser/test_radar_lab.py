"""From hole to rule against the lab with live Defenders.

The Console runs as a real process, with one managed Defender per lab host (the
end-to-end cluster of tests/e2e/managed.py, in its own lab). Traffic no rule
covers shows in Radar as a grey (observed) edge; "create rule" on that edge
with effect prevent saves the rule; the Defenders enforce it (a new connect is
refused and its audit reaches the Console); Radar then shows the port blocked
(orange). Screenshots go to test-artifacts/browser/; any JavaScript error fails
the test (the ``page`` fixture).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from radarpage import ARTIFACTS, sign_in, wait_radar
from test_radar_ui import GREY, ORANGE, click_element, graph_state, rgb
from tests.e2e.managed import PASSWORD, ManagedCluster, managed_shop, policy_spec, poll

pytestmark = [pytest.mark.browser, pytest.mark.lab]

LAB = "cnnfbrw"
# worker (node-2) -> payments (node-2, listening on 9090): no rule covers it.
SRC, DST, PORT = "worker", "payments", 9090
EDGE = "image:shop/worker:1.0->image:shop/payments:1.4"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedCluster]:
    with managed_shop(LAB, tmp_path_factory.mktemp("radar-lab")) as c:
        yield c


@pytest.fixture
def console(cluster: ManagedCluster) -> Any:
    """What the ``page`` fixture signs in to: the cluster's Console process."""
    return cluster.console


def port_verdicts(page: Any) -> list[tuple[int, str, bool, int]]:
    """The edge's ports as drawn: (port, verdict, seen in traffic, rule id)."""
    return sorted((int(p["port"]), str(p["verdict"]), bool(p["observed"]), p.get("ruleId") or 0)
                  for p in page.evaluate(
                      "(id) => window.cnnfRadar.cy.getElementById(id).data('ports') || []",
                      EDGE))


def flows(c: ManagedCluster, *verdicts: str) -> list[dict[str, Any]]:
    return [f for f in c.flows(port=PORT) if f["verdict"] in verdicts
            and f["src"].startswith("image:shop/worker") and f["dst"].startswith(
                "image:shop/payments")]


def test_a_rule_created_from_a_grey_edge_is_enforced_by_the_lab(
    page: Any, cluster: ManagedCluster, console: Any,
) -> None:
    c = cluster
    # No rule covers worker -> payments and the default allows: a hole.
    c.wait_applied(c.set_policy({**policy_spec(), "defaultEffect": "allow"}))
    assert c.lab.connect(SRC, DST, PORT).ok
    assert poll(lambda: flows(c, "allow", "observed"), 30), c.flows(port=PORT)

    sign_in(page, console, query="?poll=500", credentials=("admin", PASSWORD))
    wait_radar(page)
    page.wait_for_function("(id) => window.cnnfRadar.cy.getElementById(id).nonempty()", arg=EDGE)
    edge = graph_state(page)["edges"][EDGE]
    assert (edge["line"], edge["label"], edge["labelBg"], edge["hole"]) == (
        "solid", f"{PORT} observed", rgb(GREY), True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "radar_lab_grey_edge.png"))

    click_element(page, EDGE)
    page.click("#create-rule")
    form = page.locator("#rule-form")
    assert form.locator("input[name=ports]").input_value() == str(PORT)
    # The policy's own objects for those images are picked.
    assert form.locator("select[name=src]").input_value() == SRC
    assert form.locator("select[name=dst]").input_value() == DST
    form.locator("button[value=prevent]").click()
    page.wait_for_selector("#rule-created")
    old = {r["id"] for r in policy_spec()["containerRules"]}
    rules = [r for r in c.api.get("/api/v1/rules/container").json() if r["id"] not in old]
    assert [(r["src"], r["dst"], r["ports"], r["effect"]) for r in rules] == [
        (SRC, DST, [PORT], "prevent")]
    rule = rules[0]

    # Both Defenders enforce the new revision: the connect is refused, audited.
    c.wait_applied(c.revision())
    assert c.lab.connect(SRC, DST, PORT).outcome == "refused"
    audits = poll(lambda: [a for a in c.audits(blocked=True)
                           if (a["srcContainer"], a["dstContainer"], a["port"]) ==
                           (SRC, DST, PORT)], 30)
    assert audits, c.audits()
    assert {(a["ruleName"], a["srcImage"], a["dstImage"]) for a in audits} == {
        (rule["name"], "shop/worker:1.0", "shop/payments:1.4")}
    assert poll(lambda: flows(c, "prevent"), 30)

    # Radar (live, no reload) shows the port blocked, in orange, on that edge (the
    # current verdict), and the refused connection itself in the port's history
    # (seen, counted, with the rule) beside the earlier hole.
    page.wait_for_function("""(id) => (window.cnnfRadar.cy.getElementById(id).data('ports')
        || []).some(p => (p.history || []).some(x => x.verdict === 'blocked' && x.count > 0))""",
                           arg=EDGE, timeout=30_000)
    assert port_verdicts(page) == [(PORT, "blocked", True, rule["id"])]
    history = page.evaluate("(id) => window.cnnfRadar.cy.getElementById(id).data('ports')[0]"
                            ".history.map(x => [x.verdict, x.ruleId || 0])", EDGE)
    assert sorted(map(tuple, history)) == [("blocked", rule["id"]), ("observed", 0)]
    # (closed first: a chosen edge is drawn in the selection's blue)
    page.locator("#panel button.close").click()
    page.wait_for_selector("#panel", state="hidden")
    edge = graph_state(page)["edges"][EDGE]
    assert (edge["line"], edge["labelBg"]) == ("solid", rgb(ORANGE)), edge
    assert "blocked" in edge["label"], edge
    click_element(page, EDGE)
    row = page.locator("#panel #ports-now tbody tr").first
    cells = [row.locator("td").nth(i).text_content() for i in range(5)]
    assert cells[:3] == [str(PORT), "blocked", "seen"], cells
    assert cells[4] == f"#{rule['id']}", cells
    then = page.locator("#panel #port-history tbody tr", has_text="blocked").first
    then_cells = [then.locator("td").nth(i).text_content() for i in range(4)]
    assert then_cells == [str(PORT), "blocked", "1", f"#{rule['id']}"], then_cells
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "radar_lab_blocked_edge.png"))
