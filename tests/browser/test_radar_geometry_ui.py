"""Radar's geometry as drawn, in Debian's chromium, from Cytoscape's rendered
bounding boxes and edge paths: in the demo's shop picture (and with observe-mode
labels, the longest), no edge label covers a node or another label, no other
edge's line runs through a label, sources sit left of their destinations, and
groups do not overlap."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from radarpage import ARTIFACTS, sign_in, wait_radar
from radarserver import RadarConsole, serve

from cnnf.console.services.records import FlowRecord
from cnnf.model.records import HostInfo, WorkloadInfo

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
  // the line as the renderer strokes it: its points (rscratch.allpts), joined
  // by straight pieces or by quadratic curves (a pair of edges, a bent edge),
  // as Cytoscape's drawEdgePath does; the curves sampled
  const path = (e) => {
    const rs = e._private.rscratch, a = rs.allpts, at = (i) => ({x: a[i], y: a[i + 1]});
    const out = [at(0)];
    if (['bezier', 'self', 'compound', 'multibezier'].includes(rs.edgeType)) {
      for (let i = 2; i + 3 < a.length; i += 4) {
        const p0 = out[out.length - 1], c = at(i), p2 = at(i + 2);
        for (let k = 1; k <= 16; k++) {
          const t = k / 16, u = 1 - t;
          out.push({x: u * u * p0.x + 2 * u * t * c.x + t * t * p2.x,
                    y: u * u * p0.y + 2 * u * t * c.y + t * t * p2.y});
        }
      }
    } else {
      for (let i = 2; i + 1 < a.length; i += 2) out.push(at(i));
    }
    return out;
  };
  const nodes = cy.nodes().filter(n => !n.isParent()).map(n => [n.id(),
    n.boundingBox({includeLabels: true, includeOverlays: false})]);
  const labels = cy.edges().filter(e => e.data('label')).map(e => [e.id(),
    e.boundingBox({includeNodes: false, includeEdges: false, includeLabels: true})]);
  const out = {covers: [], lines: [], backwards: [], groups: [],
               curved: cy.edges().filter(e => e.controlPoints()).length};
  labels.forEach(([id, box], i) => {
    for (const [n, b] of nodes) if (hit(box, b)) out.covers.push(`${id} covers ${n}`);
    for (const [o, b] of labels.slice(i + 1)) if (hit(box, b)) out.covers.push(`${id} covers ${o}`);
    cy.edges().forEach(e => {
      if (e.id() === id) return;
      const pts = path(e);
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
  // A group's title: its label, drawn above its box (text-valign top).
  out.titles = cy.nodes().filter(n => n.isParent()).map(n => {
    const body = n.boundingBox({includeLabels: false});
    const t = n.boundingBox({includeNodes: false, includeEdges: false, includeLabels: true,
                             includeOverlays: false});
    return {id: n.id(), text: n.data('label'), x1: t.x1, x2: t.x2, y1: t.y1, y2: t.y2,
            bodyTop: body.y1, bodyX: (body.x1 + body.x2) / 2, bodyX1: body.x1, bodyX2: body.x2};
  });
  out.titleCovers = [];
  labels.forEach(([id, box]) => {
    for (const t of out.titles) if (hit(box, t)) out.titleCovers.push(`${id} covers ${t.text}`);
  });
  // no line, straight or curved, runs through a group's title
  out.titleLines = [];
  cy.edges().forEach(e => {
    const pts = path(e);
    for (const t of out.titles) {
      if (pts.some((p, k) => k > 0 && crosses(pts[k - 1], p, t))) {
        out.titleLines.push(`${e.id()} runs through the title ${t.text}`);
      }
    }
  });
  return out;
}"""


def geometry(page: Any, name: str) -> dict[str, Any]:
    found: dict[str, Any] = page.evaluate(GEOMETRY)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    # the title boxes are the titles: text wide, at the top of the group's box:
    # centred over it, slid along it (clear of the lines) with at least half
    # of it over the box, or beside a top corner, a few pixels from it
    for t in found["titles"]:
        width = t["x2"] - t["x1"]
        assert width > 3 * len(t["text"]), t
        assert t["y1"] < t["y2"] <= t["bodyTop"] + 1, t
        over = min(t["x2"], t["bodyX2"]) - max(t["x1"], t["bodyX1"])
        beside = min(abs(t["x2"] - t["bodyX1"]), abs(t["x1"] - t["bodyX2"])) <= 12
        assert (abs((t["x1"] + t["x2"]) / 2 - t["bodyX"]) < 2 or over >= width / 2 - 1
                or beside), t
    return found


def assert_clear(g: dict[str, Any], lines: bool = True) -> None:
    """No edge label covers a node, a label or a group's title; groups apart;
    with ``lines``, no other edge's line runs through a label or a group's title."""
    assert g["covers"] == []
    assert g["titleCovers"] == []
    assert g["groups"] == []
    if lines:
        assert g["lines"] == []
        assert g["titleLines"] == []


@pytest.mark.parametrize("size", [(1600, 1000), (1280, 800)])
def test_the_shop_is_drawn_with_no_label_covered_or_crossed(
        page: Any, console: RadarConsole, size: tuple[int, int]) -> None:
    page.set_viewport_size({"width": size[0], "height": size[1]})
    sign_in(page, console)
    wait_radar(page)
    g = geometry(page, f"radar-geometry-{size[0]}")
    assert_clear(g)
    assert {t["text"] for t in g["titles"]} == {"namespace: shop", "namespace: data",
                                                "namespace: monitoring"}
    # the shop has no cycle: every edge runs left to right
    assert g["backwards"] == []
    # each node at a place of its own, sources left of their destinations (the
    # layout's; Cytoscape's set-up layout, told to move none, put none at one place)
    places = page.evaluate("""() => window.cnnfRadar.cy.nodes().filter(n => !n.isParent())
      .map(n => [Math.round(n.position('x')), Math.round(n.position('y'))].join(','))""")
    assert len(set(places)) == len(places) > 5


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
    g = geometry(page, "radar-geometry-observe")
    assert_clear(g)


DEMO_POLICY = Path(__file__).resolve().parents[2] / "examples/demo-policy.yaml"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[RadarConsole]:
    """The picture of `make demo` (docs/radar-demo.png): its starter policy, the
    shop-web and shop-data namespaces and the flows its traffic makes. There,
    api -> db's "5432 allowed" covered the title "namespace: shop-data"."""
    (tmp_path / "demo").mkdir()
    with serve(tmp_path / "demo") as c:  # beside the page fixture's Console
        with c.client() as api:
            api.post("/api/v1/policy/import",
                     json=yaml.safe_load(DEMO_POLICY.read_text())).raise_for_status()
        pods = [("frontend", "shop-web", "node-1"), ("api", "shop-web", "node-1"),
                ("worker", "shop-data", "node-2"), ("cache", "shop-data", "node-2"),
                ("db", "shop-data", "node-2"), ("payments", "shop-data", "node-2")]
        c.report_inventory(
            hosts=[HostInfo(name="node-1", addresses=["10.10.0.1"]),
                   HostInfo(name="node-2", addresses=["10.10.0.2"])],
            containers=[WorkloadInfo(address=f"10.88.0.{i + 2}", image=f"shop/{app}:1.0",
                                     name=app, namespace=ns, host=host, labels={"app": app})
                        for i, (app, ns, host) in enumerate(pods)])
        now = datetime.now(UTC)

        def flow(src: str, dst: str, port: int, verdict: str = "observed",
                 rule: tuple[int, str] = (0, "")) -> FlowRecord:
            return FlowRecord(src=f"image:shop/{src}", dst=dst if ":" in dst else
                              f"image:shop/{dst}", port=port, verdict=verdict,
                              rule_id=rule[0], rule_name=rule[1], count=10,
                              first_seen=now - timedelta(minutes=10),
                              last_seen=now - timedelta(minutes=1))

        lateral = (5, "frontend-to-data")
        c.add_flows([
            flow("frontend", "api", 8080, "allow", (1, "frontend-to-api")),
            flow("api", "payments", 9090, "allow", (2, "api-to-payments")),
            flow("api", "db", 5432, "allow", (3, "api-to-db")),
            flow("api", "cache", 6379),
            flow("worker", "db", 5432),
            flow("worker", "addr:93.184.216.34", 80, "alert", (4, "worker-to-internet")),
            flow("payments", "addr:198.51.100.7", 443),
            flow("frontend", "cache", 6379, "prevent", lateral),
            flow("frontend", "db", 5432, "prevent", lateral),
            flow("frontend", "payments", 22, "prevent", lateral),
        ])
        yield c


@pytest.mark.parametrize("size", [(1600, 1000), (1280, 800), (1500, 900)])
def test_the_demo_is_drawn_with_no_label_over_a_group_title_or_a_line(
        page: Any, demo: RadarConsole, size: tuple[int, int]) -> None:
    page.set_viewport_size({"width": size[0], "height": size[1]})
    sign_in(page, demo)
    wait_radar(page)
    g = geometry(page, f"radar-geometry-demo-{size[0]}")
    assert {t["text"] for t in g["titles"]} == {"namespace: shop-web",
                                                "namespace: shop-data"}
    # docs/radar-demo.png had "5432 blocked"'s line through the label "9090 allowed"
    assert_clear(g)
