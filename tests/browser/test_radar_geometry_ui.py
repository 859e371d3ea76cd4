"""Radar's geometry as drawn, in Debian's chromium, from Cytoscape's rendered
bounding boxes and edge paths: in the demo's shop picture (and with observe-mode
labels, the longest), no edge label covers a node or another label, no other
edge's line runs through a label, sources sit left of their destinations, and
groups do not overlap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from radarpage import ARTIFACTS, sign_in, wait_radar
from radarserver import RadarConsole

from cnnf.console.services.records import FlowRecord

pytestmark = pytest.mark.browser

GEOMETRY = """() => {
  const cy = window.cnnfRadar.cy;
  const hit = (a, b) => a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2;
  // the segment p-q through the box (Liang-Barsky), written here on its own
  const crosses = (p, q, box) => {
    let t0 = 0, t1 = 1; const dx = q.x - p.x, dy = q.y - p.y;
    for (const [num, den] of [[p.x - box.x1, -dx], [box.x2 - p.x, dx],
                              [p.y - box.y1, -dy], [box.y2 - p.y, dy]]) {
      if (den === 0) { if (num < 0) return false; continue; }
      const t = num / den;
      if (den < 0) { if (t > t1) return false; if (t > t0) t0 = t; }
      else { if (t < t0) return false; if (t < t1) t1 = t; }
    }
    return true;
  };
  const path = (e) => {
    const pts = [e.sourceEndpoint(), ...(e.controlPoints() || e.segmentPoints() || []),
                 e.targetEndpoint()];
    return pts;  // straight edges: their two ends
  };
  const nodes = cy.nodes().filter(n => !n.isParent()).map(n => [n.id(),
    n.boundingBox({includeLabels: true, includeOverlays: false})]);
  const labels = cy.edges().filter(e => e.data('label')).map(e => [e.id(),
    e.boundingBox({includeNodes: false, includeEdges: false, includeLabels: true})]);
  const out = {covers: [], lines: [], backwards: [], groups: [], curved: 0};
  labels.forEach(([id, box], i) => {
    for (const [n, b] of nodes) if (hit(box, b)) out.covers.push(`${id} covers ${n}`);
    for (const [o, b] of labels.slice(i + 1)) if (hit(box, b)) out.covers.push(`${id} covers ${o}`);
    cy.edges().forEach(e => {
      if (e.id() === id) return;
      const pts = path(e);
      if (e.controlPoints()) out.curved += 1;
      if (pts.some((p, k) => k > 0 && crosses(pts[k - 1], p, box))) {
        out.lines.push(`${e.id()} runs through the label of ${id}`);
      }
    });
  });
  cy.edges().forEach(e => {
    if (e.source().position('x') >= e.target().position('x')) out.backwards.push(e.id());
  });
  const parents = cy.nodes().filter(n => n.isParent()).map(n => [n.id(), n.boundingBox()]);
  parents.forEach(([id, box], i) => {
    for (const [o, b] of parents.slice(i + 1)) if (hit(box, b)) out.groups.push(`${id} ${o}`);
  });
  return out;
}"""


def _geometry(page: Any, name: str) -> dict[str, Any]:
    found: dict[str, Any] = page.evaluate(GEOMETRY)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    return found


@pytest.mark.parametrize("size", [(1600, 1000), (1280, 800)])
def test_the_shop_is_drawn_with_no_label_covered_or_crossed(
        page: Any, console: RadarConsole, size: tuple[int, int]) -> None:
    page.set_viewport_size({"width": size[0], "height": size[1]})
    sign_in(page, console)
    wait_radar(page)
    g = _geometry(page, f"radar-geometry-{size[0]}")
    assert g["covers"] == []
    assert g["lines"] == []
    assert g["groups"] == []
    # the shop has no cycle: every edge runs left to right
    assert g["backwards"] == []


def test_long_observe_mode_labels_are_placed_clear_too(page: Any,
                                                       console: RadarConsole) -> None:
    # more edges into db and api, some with the long "seen, would prevent" words
    with console.client() as api:
        api.post("/api/v1/rules/container", json={
            "id": 5, "name": "web-not-db", "src": "web", "dst": "db", "ports": [5432, 5433],
            "effect": "prevent"}).raise_for_status()
    now = datetime.now(UTC)
    seen = {"first_seen": now - timedelta(minutes=3), "last_seen": now - timedelta(minutes=1)}
    console.add_flows([
        FlowRecord(src="image:shop/web", dst="image:shop/db", port=port, verdict="allow",
                   rule_id=5, rule_name="web-not-db", would="prevent", would_rule_id=5,
                   mode="observed", count=2, **seen) for port in (5432, 5433)
    ] + [
        FlowRecord(src="image:shop/cache", dst="image:shop/db", port=5432, verdict="observed",
                   count=1, **seen),
        FlowRecord(src="image:monitoring/agent", dst="image:shop/db", port=9187,
                   verdict="observed", count=4, **seen),
    ])
    sign_in(page, console)
    wait_radar(page)
    labels = page.evaluate("() => window.cnnfRadar.cy.edges().map(e => e.data('label'))")
    assert "5432,5433 seen, would prevent" in labels
    g = _geometry(page, "radar-geometry-observe")
    assert g["covers"] == []
    assert g["lines"] == []
    assert g["groups"] == []
