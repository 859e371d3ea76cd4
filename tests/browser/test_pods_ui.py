"""Kubernetes pods in the browser: a Defender on a Kubernetes node (node-3)
reports two replicas of a pod with a sidecar, a container of the same image
in no pod, and an audit between two pods; the audits page names the pods, and
Radar's node counts pods apart from containers and its panel lists the pods
with their images."""

from __future__ import annotations

import time
from typing import Any

import pytest
from radarpage import ARTIFACTS, sign_in, wait_radar
from radarserver import RadarConsole
from test_radar_ui import click_element

from cnnf.model import Effect
from cnnf.model.records import (
    AuditEvent,
    AuditType,
    EndpointInfo,
    HostInfo,
    ReportBatch,
    WorkloadInfo,
)

pytestmark = pytest.mark.browser

WEB = "web-7d4b9c6f5-x2k8p"
SIDECAR = ["kube/web:1.0", "kube/log-agent:0.3"]


@pytest.fixture
def pods(console: RadarConsole) -> RadarConsole:
    def web(pod: str, address: str) -> WorkloadInfo:
        return WorkloadInfo(address=address, image="kube/web:1.0", name="web",
                            namespace="storefront", pod=pod, host="node-3",
                            labels={"app": "web"}, images=SIDECAR)

    console.report_inventory(
        hosts=[HostInfo(name="node-3", addresses=["10.10.0.3"])],
        containers=[web(WEB, "10.65.1.2"), web(WEB, "fd00:65::2"),  # its second address
                    web("web-7d4b9c6f5-q9z7w", "10.65.1.5"),
                    WorkloadInfo(address="10.88.3.9", image="kube/web:1.0", name="web-debug",
                                 id="d9", host="node-3")])
    src = EndpointInfo(kind="container", address="10.65.1.2", image="kube/web:1.0",
                       container="web", namespace="storefront", pod=WEB, host="node-3")
    dst = EndpointInfo(kind="container", address="10.65.2.3", image="kube/postgres:15",
                       container="postgres", namespace="data", pod="postgres-0", host="node-4")
    event = AuditEvent(time=time.time() - 60, type=AuditType.CONTAINER, effect=Effect.PREVENT,
                       blocked=True, rule_id=3, rule_name="web-not-db", src=src, dst=dst,
                       port=5432, message="blocked connection", reporter="node-3")
    with console.client(console.defenders["node-3"]) as defender:
        r = defender.post("/api/v1/defender/reports",
                          json=ReportBatch(batch_id="pods-1", audits=[event])
                          .model_dump(mode="json"))
        r.raise_for_status()
    return console


def test_the_audits_page_names_the_pods(page: Any, pods: RadarConsole) -> None:
    sign_in(page, pods, "#/audits")
    row = page.locator("#audits tbody tr:has-text('web-not-db')")
    row.wait_for()
    cells = [c.strip() for c in row.locator("td").all_text_contents()]
    assert cells[4:6] == [f"kube/web:1.0 ({WEB} in storefront) on node-3",
                          "kube/postgres:15 (postgres-0 in data) on node-4"]
    # Containers that are no pod keep their container names.
    seeded = page.locator("#audits tbody tr:has-text('api-db') td").nth(4)
    assert seeded.text_content() == "shop/api:2.0 (api-1) on node-1"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "audits-pods.png"))


def test_radar_lists_a_nodes_pods_with_their_images(page: Any, pods: RadarConsole) -> None:
    sign_in(page, pods)
    wait_radar(page)
    # A pod is one workload (two containers, two addresses here): counted once.
    label = page.evaluate(
        "() => window.cnnfRadar.cy.getElementById('image:kube/web:1.0').data('label')")
    assert label == "kube/web:1.0\n2 pods · 1 container"
    click_element(page, "image:kube/web:1.0")
    panel = page.locator("#panel")
    panel.wait_for(state="visible")
    runtime = panel.locator("#runtime")
    assert runtime.locator("#pods").evaluate("(li) => li.firstChild.textContent") == "Pods: 2"
    assert runtime.locator("#pods li").all_text_contents() == [
        "web-7d4b9c6f5-q9z7w (kube/web:1.0 + kube/log-agent:0.3)",
        f"{WEB} (kube/web:1.0 + kube/log-agent:0.3)"]
    assert (runtime.locator("#containers").evaluate("(li) => li.firstChild.textContent")
            == "Containers: 1")
    assert runtime.locator("#containers li").all_text_contents() == ["web-debug"]
    assert "Namespaces: storefront" in (runtime.text_content() or "")
    page.screenshot(path=str(ARTIFACTS / "radar-node-pods.png"))
