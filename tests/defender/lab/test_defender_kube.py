"""The Defender on Kubernetes-like nodes: the ``kube`` lab (containerd, pods
created through the CRI as a kubelet creates them), one ``cnnf defender run
--runtime cri`` per node (root, the lab).

Rules here are written by namespace and pod label, as Kubernetes users write
them, and one by a sidecar's image. One lab named ``cnnfkub`` serves the module.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.defender.lab.test_defender_lab import (
    CNNF,
    Cluster,
    Defender,
    console_process,
    poll,
    running_cluster,
)

from cnnf.lab.topology import Container

pytestmark = pytest.mark.lab

LAB = "cnnfkub"

OBJECTS: list[dict[str, Any]] = [
    {"kind": "container", "name": "storefront", "selector": {"namespaces": ["storefront"]}},
    {"kind": "container", "name": "data", "selector": {"namespaces": ["data"]}},
    {"kind": "container", "name": "web", "selector": {"labels": ["app=web"]}},
    {"kind": "container", "name": "cart", "selector": {"labels": ["app=cart"]}},
    {"kind": "container", "name": "redis", "selector": {"labels": ["app=redis"]}},
    {"kind": "container", "name": "checkout", "selector": {"labels": ["app=checkout"]}},
    {"kind": "container", "name": "postgres", "selector": {"labels": ["app=postgres"]}},
    {"kind": "container", "name": "meshed", "selector": {"images": ["kube/proxy"]}},
    {"kind": "container", "name": "loaders",
     "selector": {"namespaces": ["batch-*"], "labels": ["app=loader"]}},
]

RULES: list[dict[str, Any]] = [
    {"id": 1, "name": "web-to-cart", "src": "web", "dst": "cart", "ports": [8080],
     "effect": "allow"},
    {"id": 2, "name": "cart-to-redis", "src": "cart", "dst": "redis", "ports": [6379],
     "effect": "alert"},
    {"id": 3, "name": "storefront-not-data", "src": "storefront", "dst": "data",
     "ports": ["*"], "effect": "prevent"},
    {"id": 4, "name": "cart-to-checkout", "src": "cart", "dst": "checkout", "ports": [9090],
     "effect": "allow"},
    {"id": 5, "name": "meshed-to-postgres", "src": "meshed", "dst": "postgres",
     "ports": [5432], "effect": "allow"},
    {"id": 6, "name": "loaders-to-redis", "src": "loaders", "dst": "redis", "ports": [6379],
     "effect": "allow"},
]


def kube_policy(revision: int, rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {
        "revision": revision, "containerEnabled": True, "hostEnabled": False,
        "defaultEffect": "prevent", "blockMode": "reset", "objects": OBJECTS,
        "containerRules": RULES if rules is None else rules, "hostRules": []}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(LAB, tmp_path_factory.mktemp("kube"), topology="kube",
                               policy_doc=kube_policy(1))


def records(c: Cluster, kind: str, src_pod: str, port: int) -> list[dict[str, Any]]:
    return [r for d in c.defenders for r in d.records(kind)
            if r["src"].get("pod") == src_pod and r["port"] == port]


WEB_POD = "web-7d4b9c6f5-x2k8p"
CART_POD = "cart-5f6d8b7c9-q4w2z"


def test_pods_are_named_by_namespace_pod_labels_and_images(cluster: Cluster) -> None:
    inv = {w.pod: w for w in cluster.d1.inventory().containers}
    web = inv[WEB_POD]
    assert (web.namespace, web.name, web.image, web.labels["app"]) == (
        "storefront", "web", "kube/web:1.0", "web")
    assert web.images == ["kube/web:1.0", "kube/log-agent:0.3"]  # main container first
    assert web.address == cluster.lab.container("web").address
    assert {w.pod for w in cluster.d2.inventory().containers} >= {
        "checkout-6c8f9d7b5-m3n7r", "postgres-0", "metrics-agent-9k2lp"}
    status = cluster.d1.status() or {}
    assert status["engine"]["runtime"] == "cri" and status["engine"]["up"]


def test_allow_alert_and_prevent_by_namespace_and_label(cluster: Cluster) -> None:
    c = cluster
    assert c.connect("web", "cart", 8080).ok  # allow, by label
    assert c.connect(CART_POD, "redis-0", 6379).ok  # alert: allowed and audited
    refused = c.connect("web", "redis", 6379)  # storefront -> data: prevent, by namespace
    assert refused.outcome == "refused", refused
    across = c.connect("cart", "postgres", 5432)  # the same rule, across nodes
    assert across.outcome == "refused", across
    (alert,) = poll(lambda: records(c, "audit", CART_POD, 6379))
    assert (alert["rule_name"], alert["blocked"]) == ("cart-to-redis", False)
    assert (alert["src"]["namespace"], alert["dst"]["pod"], alert["dst"]["namespace"]) == (
        "storefront", "redis-0", "data")
    (prevent,) = poll(lambda: records(c, "audit", WEB_POD, 6379))
    assert (prevent["rule_name"], prevent["blocked"]) == ("storefront-not-data", True)
    assert prevent["src"]["image"] == "kube/web:1.0" and prevent["src"]["container"] == "web"
    assert poll(lambda: [r for r in records(c, "audit", CART_POD, 5432) if r["blocked"]])
    (flow,) = poll(lambda: records(c, "flow", WEB_POD, 8080))
    assert (flow["effect"], flow["rule_id"], flow["dst"]["pod"]) == ("allow", 1, CART_POD)


def test_a_sidecars_image_selects_its_pod(cluster: Cluster) -> None:
    """checkout's pod carries a kube/proxy sidecar: a rule by that image covers
    the pod's connections (they share its address)."""
    c = cluster
    assert c.connect("checkout", "postgres", 5432).ok
    (f,) = poll(lambda: records(c, "flow", "checkout-6c8f9d7b5-m3n7r", 5432))
    assert (f["rule_name"], f["src"]["image"]) == ("meshed-to-postgres", "kube/checkout:1.7")
    refused = c.connect("metrics", "postgres", 5432)  # no rule: the default, prevent
    assert refused.outcome == "refused", refused


def batch_pod(i: int, app: str) -> list[Container]:
    """A pod in a namespace of its own: flows fold by image and namespace."""
    return [Container(name=f"job-{i}", pod=f"job-{i}-{app}", host="node-1",
                      image="kube/job:1", namespace=f"batch-{i}", labels={"app": app})]


def test_short_lived_pods_connecting_at_start_are_each_evaluated(cluster: Cluster) -> None:
    """30 pods, each connecting the moment its container runs, then removed:
    those the policy allows (app=loader -> redis) get through, those it does
    not (app=job) are refused, and each is audited or recorded under its own
    pod name: nothing gets through unevaluated or under another pod's name."""
    c = cluster
    outcomes: dict[str, str] = {}
    for i in range(30):
        app = "loader" if i % 2 else "job"
        c.lab.start_pod(batch_pod(i, app))
        try:
            outcomes[f"job-{i}-{app}"] = c.connect(f"job-{i}", "redis", 6379, timeout=4).outcome
        finally:
            c.lab.remove_pod(f"job-{i}")
    allowed = {p for p in outcomes if p.endswith("-loader")}
    assert {p for p, o in outcomes.items() if o == "connected"} == allowed, outcomes
    assert all(o == "refused" for p, o in outcomes.items() if p not in allowed), outcomes

    def decided() -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        for d in c.defenders:
            for r in d.records("flow"):
                if r["port"] == 6379 and r["src"].get("namespace", "").startswith("batch-"):
                    seen.setdefault(r["src"]["pod"], set()).add(r["effect"])
        return seen

    assert poll(lambda: len(decided()) == 30, 15), decided()
    for pod, effects in decided().items():
        assert effects == ({"allow"} if pod in allowed else {"prevent"}), (pod, effects)
    unknown = [r for d in c.defenders for r in d.records("flow")
               if r["port"] == 6379 and r["src"]["kind"] == "address"]
    assert unknown == []  # none decided as an unnamed address


def test_a_reused_pod_address_gets_the_new_pods_verdict(cluster: Cluster) -> None:
    """A loader pod's allowed connection is cached per (address, port); its
    address goes to a job pod at once: the job pod's first SYN is refused."""
    c = cluster
    first = c.lab.start_pod(batch_pod(100, "loader"))[0]
    try:
        for _ in range(3):
            assert c.connect("job-100", "redis", 6379).ok
    finally:
        c.lab.remove_pod("job-100")
    second = c.lab.start_pod(batch_pod(101, "job"), address=first.address)[0]
    try:
        assert second.address == first.address
        result = c.connect("job-101", "redis", 6379, timeout=4)
        assert result.outcome == "refused", result
        (a,) = poll(lambda: records(c, "audit", "job-101-job", 6379))
        assert a["blocked"] and a["src"]["address"] == first.address
    finally:
        c.lab.remove_pod("job-101")


def test_managed_defenders_enforce_a_policy_change_on_both_nodes(
        cluster: Cluster, tmp_path: Path) -> None:
    """A real Console and one managed Defender per kube node: the Console's
    inventory and audits name pods and namespaces, and a policy change made
    through the Console is enforced on both nodes."""
    c = cluster
    for d in c.defenders:
        if d.proc is not None:
            d.stop()
    with console_process(tmp_path) as (url, token, http):
        defenders = [Defender(c.lab, h, tmp_path, c.policy_file, c.cluster_file,
                              console=(url, token)) for h in ("node-1", "node-2")]
        try:
            def apply(rules: list[dict[str, Any]]) -> int:
                r = http.post("/api/v1/policy/import", json=kube_policy(0, rules))
                assert r.status_code == 200 and r.json()["applied"], r.text
                return int(r.json()["revision"])

            revision = apply(RULES)
            for d in defenders:
                d.start()
            for d in defenders:
                d.wait_revision(revision)

            def pods() -> set[tuple[str, str]]:
                inv = http.get("/api/v1/inventory").json()
                return {(w["namespace"], w["pod"]) for w in inv["containers"]}

            assert poll(lambda: {("storefront", WEB_POD), ("payments", "checkout-6c8f9d7b5-m3n7r"),
                                 ("data", "postgres-0")} <= pods(), 20), pods()
            # each node's Defender must know the other's pods before cross-node checks
            assert poll(lambda: all((d.status() or {}).get("cluster_revision") for d in defenders))
            assert c.connect("cart", "checkout", 9090).ok  # node-1 -> node-2, allowed
            assert c.connect("checkout", "postgres", 5432).ok  # on node-2, by the sidecar

            # The change: cart may no longer reach checkout, checkout no longer postgres.
            changed = apply([r for r in RULES if r["id"] not in (4, 5)])
            for d in defenders:
                d.wait_revision(changed)
            assert c.connect("cart", "checkout", 9090).outcome == "refused"
            assert c.connect("checkout", "postgres", 5432).outcome == "refused"

            def audits(pod: str) -> list[dict[str, Any]]:
                page = http.get("/api/v1/audits", params={"limit": 200, "blocked": True}).json()
                return [a for a in page["items"] if a["srcPod"] == pod]

            (a, *_) = poll(lambda: audits("checkout-6c8f9d7b5-m3n7r"), 15)
            assert (a["srcNamespace"], a["dstPod"], a["dstNamespace"], a["dstContainer"]) == (
                "payments", "postgres-0", "data", "postgres")
        finally:
            for d in defenders:
                if d.proc is not None:
                    d.stop()
    for d in c.defenders:
        d.start()
    c.share_inventory()


def test_status_names_the_runtime(cluster: Cluster) -> None:
    out = subprocess.run([CNNF, "defender", "status", "--state-dir", str(cluster.d1.state)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert f"container engine (cri {cluster.lab.cri_socket('node-1')}): up since" in out.stdout
    assert (f"pod       storefront/{WEB_POD} (web) kube/web:1.0, kube/log-agent:0.3"
            in out.stdout), out.stdout
    data = json.loads((cluster.d1.state / "status.json").read_text())
    assert data["engine"]["endpoint"] == cluster.lab.cri_socket("node-1")
    assert time.time() - data["engine"]["since"] < 3600
