"""Radar on the picture of `make demo TOPOLOGY=kube`: its starter policy, its
pods (web and checkout with a sidecar) and its flows. A node counts pods, not
containers; the panel lists them; no edge label covers a node's name."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from radarpage import ARTIFACTS, sign_in, wait_radar
from radarserver import RadarConsole, serve
from test_radar_geometry_ui import assert_clear, geometry
from test_radar_ui import click_element

from cnnf.console.services.records import FlowRecord
from cnnf.model.records import HostInfo, WorkloadInfo

pytestmark = pytest.mark.browser

POLICY = Path(__file__).resolve().parents[2] / "examples/demo-kube-policy.yaml"
WEB = "web-7d4b9c6f5-x2k8p"


@pytest.fixture
def console(tmp_path: Path) -> Iterator[RadarConsole]:
    """The kube demo's picture alone (this module's pages open on it)."""
    with serve(tmp_path) as c:
        with c.client() as api:
            api.post("/api/v1/policy/import",
                     json=yaml.safe_load(POLICY.read_text())).raise_for_status()

        # (pod, image, namespace, host, address, app, sidecar images) as the demo runs them.
        pods = [
            (WEB, "kube/web:1.0", "storefront", "node-1", "10.65.1.2", "web",
             ["kube/log-agent:0.3"]),
            ("cart-5f6d8b7c9-q4w2z", "kube/cart:2.3", "storefront", "node-1", "10.65.1.3",
             "cart", []),
            ("redis-0", "kube/redis:7", "data", "node-1", "10.65.1.4", "redis", []),
            ("checkout-6c8f9d7b5-m3n7r", "kube/checkout:1.7", "payments", "node-2", "10.65.2.2",
             "checkout", ["kube/proxy:1.2"]),
            ("postgres-0", "kube/postgres:15", "data", "node-2", "10.65.2.3", "postgres", []),
            ("metrics-agent-9k2lp", "kube/metrics-agent:0.9", "monitoring", "node-2",
             "10.65.2.4", "metrics-agent", []),
        ]
        c.report_inventory(
            hosts=[HostInfo(name="node-1", addresses=["10.10.0.1"]),
                   HostInfo(name="node-2", addresses=["10.10.0.2"])],
            containers=[WorkloadInfo(address=address, image=image, name=app, namespace=ns,
                                     pod=pod, host=host, labels={"app": app},
                                     images=[image, *sidecars] if sidecars else [])
                        for pod, image, ns, host, address, app, sidecars in pods])
        now = datetime.now(UTC)

        def flow(src: str, dst: str, port: int, verdict: str = "observed",
                 rule: tuple[int, str] = (0, "")) -> FlowRecord:
            return FlowRecord(src=f"image:kube/{src}", dst=dst if ":" in dst else
                              f"image:kube/{dst}", port=port, verdict=verdict, rule_id=rule[0],
                              rule_name=rule[1], count=10, first_seen=now - timedelta(hours=1),
                              last_seen=now - timedelta(minutes=1))

        lateral = (6, "web-lateral")
        c.add_flows([
            flow("web", "cart", 8080, "allow", (1, "web-to-cart")),
            flow("cart", "redis", 6379, "allow", (2, "cart-to-redis")),
            flow("cart", "checkout", 9090, "allow", (3, "cart-to-checkout")),
            flow("checkout", "postgres", 5432, "allow", (4, "checkout-to-postgres")),
            flow("checkout", "dns:api.payments.example", 443, "alert", (5, "checkout-to-gateway")),
            flow("metrics-agent", "web", 80), flow("metrics-agent", "cart", 8080),
            flow("web", "postgres", 5432, "prevent", lateral),
            flow("web", "checkout", 22, "prevent", lateral),
            flow("web", "redis", 6379, "prevent", lateral),
        ])
        yield c


def test_nodes_count_pods_and_the_panel_lists_them(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    labels = page.evaluate("""() => Object.fromEntries(window.cnnfRadar.cy.nodes('[kind = "image"]')
        .map((n) => [n.id(), n.data('label')]))""")
    assert labels["image:kube/web:1.0"] == "kube/web:1.0\n1 pod"  # a pod of two containers
    assert labels["image:kube/checkout:1.7"] == "kube/checkout:1.7\n1 pod"
    assert labels["image:kube/cart:2.3"] == "kube/cart:2.3\n1 pod"
    click_element(page, "image:kube/web:1.0")
    page.locator("#panel").wait_for(state="visible")
    runtime = page.locator("#runtime")
    assert runtime.locator("#pods").evaluate("(li) => li.firstChild.textContent") == "Pods: 1"
    assert runtime.locator("#pods li").all_text_contents() == [
        f"{WEB} (kube/web:1.0 + kube/log-agent:0.3)"]
    assert "Containers:" not in (runtime.text_content() or "")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "radar-kube-node-web.png"))
    # A pod of one container: its name alone (the node names its image).
    click_element(page, "image:kube/cart:2.3")
    page.locator("#runtime #pods li:has-text('cart-5f6d8b7c9-q4w2z')").wait_for()
    assert runtime.locator("#pods li").all_text_contents() == ["cart-5f6d8b7c9-q4w2z"]


@pytest.mark.parametrize("size", [(1500, 900), (1600, 1000), (1280, 800)])
def test_no_edge_label_covers_a_node_another_label_a_title_or_a_line(
        page: Any, console: RadarConsole, size: tuple[int, int]) -> None:
    page.set_viewport_size({"width": size[0], "height": size[1]})
    sign_in(page, console)
    wait_radar(page)
    g = geometry(page, f"radar-kube-{size[0]}")
    assert_clear(g)
    assert len(g["titles"]) == 4  # storefront, data, payments, monitoring


def test_no_edge_label_covers_a_node_or_another_label(page: Any, console: RadarConsole) -> None:
    sign_in(page, console)
    wait_radar(page)
    clashes = page.evaluate("""() => {
      const cy = window.cnnfRadar.cy;
      const hit = (a, b) => a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2;
      const nodes = cy.nodes().filter((n) => !n.isParent()).map((n) => [n.id(),
        n.boundingBox({ includeLabels: true, includeOverlays: false })]);
      const labels = cy.edges().map((e) => [e.id(),
        e.boundingBox({ includeNodes: false, includeEdges: false, includeLabels: true })]);
      const out = [];
      labels.forEach(([id, box], i) => {
        for (const [n, nbox] of nodes) if (hit(box, nbox)) out.push(`${id} covers ${n}`);
        for (const [other, obox] of labels.slice(i + 1)) {
          if (hit(box, obox)) out.push(`${id} covers ${other}`);
        }
      });
      return out;
    }""")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "radar-kube.png"))
    assert clashes == []
