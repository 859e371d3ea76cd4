"""Radar's graph builder: tables of policy + inventory + flows -> nodes and edges."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from cnnf.console.radar import Overlay, RadarQuery, build_graph, compact_ports, verdict_class
from cnnf.model import Policy
from cnnf.model.records import HostInfo, WorkloadInfo
from cnnf.policy.document import load_policy

T0 = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 2, 4, 0, tzinfo=UTC)


@dataclass
class Flow:
    src: str
    dst: str
    port: int
    verdict: str = "observed"
    rule_id: int = 0
    rule_name: str = ""
    count: int = 1
    kind: str = "container"
    first_seen: datetime = T0
    last_seen: datetime = T1
    would: str = ""
    would_rule_id: int = 0
    mode: str = "enforced"


POLICY = load_policy({
    "apiVersion": "cnnf/v1", "kind": "Policy",
    "spec": {
        "objects": [
            {"name": "web", "kind": "container", "selector": {"images": ["shop/web*"]}},
            {"name": "api", "kind": "container", "selector": {"images": ["shop/api*"]}},
            {"name": "db", "kind": "container", "selector": {"images": ["shop/db*"]}},
            {"name": "nodes", "kind": "host", "selector": {"hosts": ["node-*"]}},
            {"name": "lan", "kind": "subnet", "cidrs": ["192.0.2.0/24"]},
            {"name": "payments", "kind": "dns", "domains": ["*.pay.example"]},
        ],
        "containerRules": [
            {"id": 1, "name": "web-api", "src": "web", "dst": "api", "ports": [8080],
             "effect": "allow"},
            {"id": 2, "name": "api-db", "src": "api", "dst": "db", "ports": [5432],
             "effect": "alert"},
            {"id": 3, "name": "no-lan", "src": "api", "dst": "lan", "ports": ["*"],
             "effect": "prevent"},
            {"id": 4, "name": "off", "src": "web", "dst": "db", "ports": [1],
             "effect": "allow", "disabled": True},
        ],
        "hostRules": [
            {"id": 1, "name": "ssh", "src": "nodes", "dst": "nodes", "ports": [22]},
        ],
    },
})

HOSTS = [HostInfo(name="node-1", addresses=["10.1.0.1"]),
         HostInfo(name="node-2", addresses=["10.1.0.2"], labels={"zone": "b"})]


def c(image: str, address: str, ns: str = "shop", host: str = "node-1",
      name: str = "") -> WorkloadInfo:
    return WorkloadInfo(address=address, image=image, name=name or address, namespace=ns,
                        host=host, labels={"app": image.rsplit("/", maxsplit=1)[-1]})


CONTAINERS = [
    c("shop/web:1", "10.88.0.2"), c("shop/web:1", "10.88.0.3", host="node-2"),
    c("shop/web:1", "10.88.0.4", host="node-2"),
    c("shop/api:2", "10.88.0.5"), c("shop/db:3", "10.88.0.6", ns="data", host="node-2"),
]


def graph(flows: list[Flow] | None = None, **query: Any) -> dict[str, Any]:
    return build_graph(POLICY, hosts=HOSTS, containers=CONTAINERS, flows=flows or [],
                       overlays={("image", "shop/db"): Overlay({"high": 2, "low": 5},
                                                               {"failed": 1, "passed": 9}),
                                 ("host", "node-2"): Overlay({}, {})},
                       query=RadarQuery(**query))


def nodes(g: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in g["nodes"]}


def edges(g: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in g["edges"]}


@pytest.mark.parametrize(("verdict", "rule_id", "expected"), [
    ("allow", 3, "allowed"),
    ("allow", 0, "observed"),
    ("observed", 0, "observed"),
    ("alert", 2, "alert"),
    ("alert", 0, "alert"),  # default effect alert: audited, drawn yellow
    ("prevent", 3, "blocked"),
    ("prevent", 0, "blocked"),
])
def test_verdict_class(verdict: str, rule_id: int, expected: str) -> None:
    assert verdict_class(verdict, rule_id) == expected


@pytest.mark.parametrize(("ports", "label"), [
    ([("80", "allowed")], "80 allowed"),
    ([("443", "allowed"), ("80", "allowed")], "80,443 allowed"),
    ([("80", "allowed"), ("22", "blocked")], "22 blocked · 80 allowed"),
    ([("80", "observed"), ("22", "alert")], "22 alert · 80 observed"),
    ([(str(p), "observed") for p in (5, 4, 3, 2, 1)], "1,2,3 +2 observed"),
    ([("*", "blocked"), ("8000-8080", "blocked"), ("22", "blocked")], "22,8000-8080,* blocked"),
    ([("80", "allowed"), ("80", "allowed")], "80 allowed"),
])
def test_compact_ports(ports: list[tuple[str, Any]], label: str) -> None:
    assert compact_ports(ports) == label


def test_container_view_nodes_groups_and_externals() -> None:
    g = graph()
    n = nodes(g)
    assert set(n) == {"image:shop/web:1", "image:shop/api:2", "image:shop/db:3",
                      "subnet:lan", "dns:payments"}
    web = n["image:shop/web:1"]
    assert web["containers"] == 3
    assert web["hosts"] == ["node-1", "node-2"]
    assert web["parent"] == "group:namespace:shop"
    assert n["image:shop/db:3"]["parent"] == "group:namespace:data"
    assert n["subnet:lan"]["external"] and n["subnet:lan"]["detail"] == "192.0.2.0/24"
    assert n["subnet:lan"]["parent"] is None
    assert [(x["id"], x["children"]) for x in g["groups"]] == [
        ("group:namespace:data", 1), ("group:namespace:shop", 2)]


def test_an_image_node_lists_its_pods_with_their_images() -> None:
    def pod(name: str, address: str, ns: str = "storefront", *images: str) -> WorkloadInfo:
        return WorkloadInfo(address=address, image="kube/web:1.0", name="web", namespace=ns,
                            pod=name, host="node-1", images=list(images))

    sidecar = ("kube/web:1.0", "kube/log-agent:0.3")
    containers = [
        pod("web-7d4b9c6f5-x2k8p", "10.65.1.2", "storefront", *sidecar),
        pod("web-7d4b9c6f5-x2k8p", "fd00::2", "storefront", *sidecar),  # its second address
        pod("web-7d4b9c6f5-q9z7w", "10.65.1.5"),
        WorkloadInfo(address="10.88.0.9", image="kube/web:1.0", name="web-plain", host="node-1"),
    ]
    g = build_graph(POLICY, hosts=HOSTS, containers=containers, flows=[], overlays={},
                    query=RadarQuery())
    web = nodes(g)["image:kube/web:1.0"]
    assert web["pods"] == [
        {"namespace": "storefront", "name": "web-7d4b9c6f5-q9z7w", "host": "node-1",
         "images": ["kube/web:1.0"]},  # a pod of one container: its one image
        {"namespace": "storefront", "name": "web-7d4b9c6f5-x2k8p", "host": "node-1",
         "images": ["kube/web:1.0", "kube/log-agent:0.3"]},
    ]
    # Two pods (one of them with two addresses) and one container in no pod.
    assert (web["podCount"], web["containers"]) == (2, 1)
    assert web["containerNames"] == ["web-plain"]  # pods are listed by pod name
    found = build_graph(POLICY, hosts=HOSTS, containers=containers, flows=[], overlays={},
                        query=RadarQuery(q="q9z7w"))
    assert "image:kube/web:1.0" in nodes(found)
    # Containers that are no pod: by name, and no pods.
    assert nodes(graph())["image:shop/web:1"]["pods"] == []
    assert nodes(graph())["image:shop/web:1"]["podCount"] == 0


def test_workloads_are_counted_once_whatever_their_addresses() -> None:
    def pod(name: str, address: str, host: str) -> WorkloadInfo:
        return WorkloadInfo(address=address, image="kube/cart:2.3", name="cart",
                            namespace="storefront", pod=name, host=host)

    containers = [
        pod("cart-0", "10.65.1.2", "node-1"), pod("cart-0", "fd00::2", "node-1"),
        pod("cart-1", "10.65.2.2", "node-2"),
        # A container in no pod with two addresses, and one more of the same image.
        WorkloadInfo(address="10.88.0.9", image="kube/cart:2.3", name="c1", id="a1",
                     host="node-2"),
        WorkloadInfo(address="fd88::9", image="kube/cart:2.3", name="c1", id="a1", host="node-2"),
        WorkloadInfo(address="10.88.0.10", image="kube/cart:2.3", name="c2", id="a2",
                     host="node-2"),
    ]
    n = nodes(build_graph(POLICY, hosts=HOSTS, containers=containers, flows=[], overlays={},
                          query=RadarQuery()))
    cart = n["image:kube/cart:2.3"]
    assert (cart["podCount"], cart["containers"]) == (2, 2)
    assert [p["name"] for p in cart["pods"]] == ["cart-0", "cart-1"]
    assert cart["containerNames"] == ["c1", "c2"]
    h = nodes(build_graph(POLICY, hosts=HOSTS, containers=containers, flows=[], overlays={},
                          query=RadarQuery(view="host")))
    assert [(h[x]["podCount"], h[x]["containers"]) for x in ("host:node-1", "host:node-2")] == [
        (1, 0), (1, 2)]


@pytest.mark.parametrize(("image", "severity"), [
    ("image:shop/db:3", "high"),  # overlay keyed by name without tag
    ("image:shop/web:1", "unknown"),  # no report
])
def test_node_severity_follows_worst_vulnerability(image: str, severity: str) -> None:
    n = nodes(graph())[image]
    assert n["severity"] == severity
    if severity == "high":
        assert n["vulnerabilities"] == {"high": 2, "low": 5}
        assert n["compliance"] == {"failed": 1, "passed": 9}


@pytest.mark.parametrize(("vulns", "worst"), [
    ({}, "none"), ({"low": 3}, "low"), ({"medium": 1, "low": 9}, "medium"),
    ({"critical": 1, "high": 4}, "critical"), ({"critical": 0, "high": 1}, "high"),
])
def test_overlay_worst(vulns: dict[str, int], worst: str) -> None:
    assert Overlay(vulns).worst == worst


def test_group_by_host_uses_the_host_most_containers_run_on() -> None:
    n = nodes(graph(group="host"))
    assert n["image:shop/web:1"]["parent"] == "group:host:node-2"  # 2 of 3 on node-2
    assert n["image:shop/api:2"]["parent"] == "group:host:node-1"


def test_rules_are_dotted_edges_styled_by_effect_and_disabled_rules_are_left_out() -> None:
    e = edges(graph())
    assert set(e) == {"image:shop/web:1->image:shop/api:2", "image:shop/api:2->image:shop/db:3",
                      "image:shop/api:2->subnet:lan"}
    web_api = e["image:shop/web:1->image:shop/api:2"]
    assert (web_api["line"], web_api["effect"], web_api["verdict"]) == ("dotted", "allow",
                                                                          "allowed")
    assert web_api["label"] == "8080 allowed"
    assert web_api["rules"] == [1]
    assert graph()["rules"]["1"]["name"] == "web-api"
    assert e["image:shop/api:2->image:shop/db:3"]["label"] == "5432 alert"
    assert e["image:shop/api:2->subnet:lan"]["label"] == "* blocked"
    assert not any(x["hole"] for x in e.values())


def test_an_observed_rule_turns_solid_and_a_hole_is_grey() -> None:
    flows = [
        Flow("image:shop/web", "image:shop/api", 8080, "allow", 1, "web-api", count=7),
        Flow("image:shop/web", "image:shop/api", 9090, count=2,
             first_seen=datetime(2026, 1, 1, tzinfo=UTC)),
    ]
    e = edges(graph(flows))["image:shop/web:1->image:shop/api:2"]
    assert e["line"] == "solid" and e["observed"]
    assert e["hole"]
    assert e["verdict"] == "observed"  # worse than allowed
    assert e["label"] == "9090 observed · 8080 allowed"
    assert e["count"] == 9
    assert e["firstSeen"] == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert e["lastSeen"] == T1.timestamp()
    assert [(p["port"], p["verdict"], p["count"], p["ruleId"]) for p in e["ports"]] == [
        ("8080", "allowed", 7, 1), ("9090", "observed", 2, None)]


@pytest.mark.parametrize(("dst", "node"), [
    ("addr:192.0.2.9", "subnet:lan"),  # inside a declared subnet
    ("addr:203.0.113.7", "internet"),  # any other outside address
    ("dns:api.pay.example", "dns:payments"),
    ("dns:other.example", "internet"),
    ("addr:10.88.0.6", "image:shop/db:3"),  # an inventory address names the image
    ("host:node-2", "host:node-2"),
])
def test_flow_destinations_map_to_nodes(dst: str, node: str) -> None:
    g = graph([Flow("image:shop/api", dst, 443)])
    assert f"image:shop/api:2->{node}" in edges(g)
    assert node in nodes(g)


def test_internet_and_hosts_appear_in_the_container_view_only_when_used() -> None:
    n = nodes(graph())
    assert "internet" not in n and "host:node-1" not in n


def test_flows_of_an_image_without_running_containers_make_a_node() -> None:
    n = nodes(graph([Flow("image:old/batch", "image:shop/api", 8080)]))
    assert (n["image:old/batch"]["containers"], n["image:old/batch"]["podCount"]) == (0, 0)


def test_host_view_has_one_node_per_host_and_host_rules() -> None:
    flows = [Flow("host:node-1", "host:node-2", 22, "allow", 1, "ssh", kind="host"),
             Flow("image:shop/web", "image:shop/api", 8080)]  # the other view: ignored
    g = graph(flows, view="host")
    n = nodes(g)
    assert set(n) == {"host:node-1", "host:node-2", "subnet:lan", "dns:payments"}
    assert n["host:node-2"]["labels"] == {"zone": "b"}
    assert n["host:node-2"]["containers"] == 3
    assert n["host:node-2"]["severity"] == "none"
    e = edges(g)
    assert e["host:node-1->host:node-2"]["line"] == "solid"
    assert e["host:node-2->host:node-1"]["line"] == "dotted"
    assert g["groups"] == []


@pytest.mark.parametrize(("query", "expected_nodes", "expected_edges"), [
    ({"namespace": "data"}, {"image:shop/db:3"}, set()),
    ({"host": "node-1"}, {"image:shop/web:1", "image:shop/api:2", "subnet:lan", "internet"},
     {"image:shop/web:1->image:shop/api:2", "image:shop/api:2->subnet:lan",
      "image:shop/web:1->internet"}),
    ({"host": "node-2", "namespace": "shop"}, {"image:shop/web:1", "internet"},
     {"image:shop/web:1->internet"}),
    ({"verdict": "blocked"}, {"image:shop/api:2", "subnet:lan"},
     {"image:shop/api:2->subnet:lan"}),
    ({"verdict": "observed"}, {"image:shop/web:1", "internet"},
     {"image:shop/web:1->internet"}),
    ({"q": "DB"}, {"image:shop/db:3", "image:shop/api:2"},
     {"image:shop/api:2->image:shop/db:3"}),
    ({"q": "nothing-like-this"}, set(), set()),
])
def test_filters(query: dict[str, Any], expected_nodes: set[str],
                 expected_edges: set[str]) -> None:
    g = graph([Flow("image:shop/web", "addr:203.0.113.7", 443)], **query)
    assert set(nodes(g)) == expected_nodes
    assert set(edges(g)) == expected_edges


def test_a_rule_over_many_nodes_is_cut_and_says_so() -> None:
    many = [c(f"team/app{i}:1", f"10.90.{i // 250}.{i % 250 + 1}") for i in range(40)]
    policy = load_policy({"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {
        "objects": [{"name": "all", "kind": "container", "selector": {"images": ["*"]}}],
        "containerRules": [{"id": 9, "name": "mesh", "src": "all", "dst": "all"}],
    }})
    g = build_graph(policy, containers=many)
    assert len(g["edges"]) == 500
    assert g["truncatedRules"] == [9]


# --- current verdicts and history ---------------------------------------------------

def _with(**changes: Any) -> Any:
    return POLICY.model_copy(update=changes)


def _edge(policy: Any, flows: list[Flow], edge_id: str, **query: Any) -> dict[str, Any]:
    g = build_graph(policy, hosts=HOSTS, containers=CONTAINERS, flows=flows,
                    query=RadarQuery(**query))
    return edges(g)[edge_id]


def test_a_hole_that_a_rule_now_covers_takes_the_rules_verdict_and_keeps_its_history() -> None:
    # web -> db 5432 was seen with no rule (grey); a prevent rule was added since.
    doc = POLICY.model_dump(mode="json")
    doc["containerRules"].append({"id": 9, "name": "no-web-db", "src": "web", "dst": "db",
                                   "ports": [5432], "effect": "prevent"})
    policy = Policy.model_validate(doc)
    flows = [Flow("image:shop/web", "image:shop/db", 5432, count=4)]
    e = _edge(policy, flows, "image:shop/web:1->image:shop/db:3")
    assert (e["verdict"], e["hole"], e["label"], e["line"]) == ("blocked", False,
                                                                "5432 blocked", "solid")
    (port,) = e["ports"]
    assert (port["verdict"], port["ruleId"], port["count"]) == ("blocked", 9, 4)
    assert [(h["verdict"], h["count"], h["ruleId"]) for h in port["history"]] == [
        ("observed", 4, None)]
    assert e["rules"] == [9]
    # Without the rule the same flows are a hole again.
    e = _edge(POLICY, flows, "image:shop/web:1->image:shop/db:3")
    assert (e["verdict"], e["hole"], e["label"]) == ("observed", True, "5432 observed")


def test_one_port_seen_under_several_verdicts_is_one_port_with_its_history() -> None:
    # api -> db 5432: alerted by rule 2 before, refused by a default "prevent" at
    # some point, and seen as a hole: today rule 2 decides (alert).
    flows = [Flow("image:shop/api", "image:shop/db", 5432, "alert", 2, "api-db", count=3),
             Flow("image:shop/api", "image:shop/db", 5432, "prevent", 0, "", count=2,
                  first_seen=datetime(2026, 1, 1, tzinfo=UTC)),
             Flow("image:shop/api", "image:shop/db", 5432, count=1)]
    e = _edge(POLICY, flows, "image:shop/api:2->image:shop/db:3")
    (port,) = e["ports"]
    assert (port["verdict"], port["ruleId"], port["count"]) == ("alert", 2, 6)
    assert port["firstSeen"] == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert sorted((h["verdict"], h["count"]) for h in port["history"]) == [
        ("alert", 3), ("blocked", 2), ("observed", 1)]
    assert (e["label"], e["verdict"], e["hole"]) == ("5432 alert", "alert", False)


@pytest.mark.parametrize(("default", "verdict", "label"), [
    ("allow", "observed", "9000 observed"),
    ("alert", "alert", "9000 alert"),
    ("prevent", "blocked", "9000 blocked"),
])
def test_a_port_no_rule_covers_follows_the_current_default_effect(
        default: str, verdict: str, label: str) -> None:
    # Recorded as alerted while the default was "alert"; the default is now `default`.
    from cnnf.model.rule import Effect
    flows = [Flow("image:shop/db", "image:shop/web", 9000, "alert", count=5)]
    e = _edge(_with(default_effect=Effect(default)), flows,
              "image:shop/db:3->image:shop/web:1")
    assert (e["verdict"], e["label"], e["hole"]) == (verdict, label, True)
    assert [h["verdict"] for h in e["ports"][0]["history"]] == ["alert"]


def test_a_recorded_rule_that_no_longer_applies_is_not_drawn_on_the_edge() -> None:
    # A flow recorded under rule 2 (api -> db 5432) on a port rule 2 does not cover.
    flows = [Flow("image:shop/api", "image:shop/db", 6000, "alert", 2, "api-db")]
    e = _edge(POLICY, flows, "image:shop/api:2->image:shop/db:3")
    by_port = {p["port"]: p for p in e["ports"]}
    assert (by_port["6000"]["verdict"], by_port["6000"]["ruleId"]) == ("observed", None)
    assert by_port["6000"]["history"][0]["ruleId"] == 2
    # Rule 2 is drawn on the edge (it covers 5432 there), not seen.
    assert (by_port["5432"]["verdict"], by_port["5432"]["observed"]) == ("alert", False)
    assert e["hole"]


# --- staging: "would" verdicts on top of the current ones ---------------------------

def _staged(rule: dict[str, Any], **changes: Any) -> Policy:
    doc = POLICY.model_dump(mode="json")
    doc["containerRules"].insert(0, rule)
    return Policy.model_validate({**doc, **changes})


NO_WEB_DB = {"id": 9, "name": "no-web-db", "src": "web", "dst": "db", "ports": [5432],
             "effect": "prevent", "staged": True}


def test_a_hole_a_staged_rule_covers_says_what_it_would_do_and_is_no_hole() -> None:
    flows = [Flow("image:shop/web", "image:shop/db", 5432, count=4)]
    g = build_graph(_staged(NO_WEB_DB), hosts=HOSTS, containers=CONTAINERS, flows=flows)
    e = edges(g)["image:shop/web:1->image:shop/db:3"]
    (port,) = e["ports"]
    # the current verdict stays what the rules in force decide (no rule: a hole's
    # grey); the staged rule is the would verdict, and it covers the port
    assert (port["verdict"], port["ruleId"], port["would"], port["wouldRuleId"]) == (
        "observed", None, "blocked", 9)
    assert (e["verdict"], e["label"], e["hole"], e["rules"]) == (
        "observed", "5432 would prevent", False, [9])
    assert g["rules"]["9"]["staged"] is True
    assert [(h["verdict"], h["would"]) for h in port["history"]] == [("observed", None)]
    # promoted: the same flows take the rule's verdict, nothing differs any more
    promoted = _staged({**NO_WEB_DB, "staged": False})
    e = _edge(promoted, flows, "image:shop/web:1->image:shop/db:3")
    assert (e["label"], e["hole"], e["ports"][0]["would"]) == ("5432 blocked", False, None)


def test_a_staged_default_effect_is_a_would_verdict_and_covers_nothing() -> None:
    from cnnf.model.rule import Effect
    flows = [Flow("image:shop/db", "image:shop/web", 9000, count=2),
             Flow("image:shop/web", "image:shop/api", 8080, "allow", 1, "web-api")]
    g = build_graph(_with(staged_default_effect=Effect.PREVENT), hosts=HOSTS,
                    containers=CONTAINERS, flows=flows)
    e = edges(g)["image:shop/db:3->image:shop/web:1"]
    assert (e["ports"][0]["would"], e["ports"][0]["wouldRuleId"]) == ("blocked", None)
    assert (e["label"], e["hole"]) == ("9000 would prevent", True)
    # a port a rule in force decides: the staged default changes nothing there
    e = edges(g)["image:shop/web:1->image:shop/api:2"]
    assert (e["label"], e["ports"][0]["would"]) == ("8080 allowed", None)


def test_a_staged_rule_no_flow_shows_is_drawn_as_what_it_would_do() -> None:
    e = _edge(_staged(NO_WEB_DB), [], "image:shop/web:1->image:shop/db:3")
    assert (e["line"], e["label"], e["hole"]) == ("dotted", "5432 would prevent", False)
    assert [(p["verdict"], p["would"], p["wouldRuleId"], p["observed"]) for p in e["ports"]] == [
        ("blocked", "blocked", 9, False)]


def test_a_staged_rule_behind_a_rule_in_force_changes_nothing() -> None:
    # rule 2 (in force, alert) decides api -> db 5432; a staged rule after it never would
    doc = POLICY.model_dump(mode="json")
    doc["containerRules"].append({"id": 9, "name": "later", "src": "api", "dst": "db",
                                  "ports": [5432], "effect": "prevent", "staged": True})
    flows = [Flow("image:shop/api", "image:shop/db", 5432, "alert", 2, "api-db")]
    e = _edge(Policy.model_validate(doc), flows, "image:shop/api:2->image:shop/db:3")
    assert (e["label"], [p["would"] for p in e["ports"]]) == ("5432 alert", [None])


def test_connections_seen_with_enforcement_off_are_counted_and_kept_in_the_history() -> None:
    # recorded while enforcement was off: allowed (nothing enforced), would prevent
    # by the default; and later, enforced, refused by the default
    flows = [Flow("image:shop/db", "image:shop/web", 9000, count=3, would="prevent",
                  mode="observed"),
             Flow("image:shop/db", "image:shop/web", 9000, "prevent", count=1)]
    from cnnf.model.rule import Effect
    # enforcement is on now: the current verdict is what happens to the next one
    e = _edge(_with(default_effect=Effect.PREVENT, container_enabled=True), flows,
              "image:shop/db:3->image:shop/web:1")
    (port,) = e["ports"]
    assert (port["verdict"], port["would"], port["count"], port["unenforced"],
            port["enforced"], port["seen"]) == ("blocked", None, 4, 3, False, False)
    assert sorted((h["verdict"], h["would"] or "", h["unenforced"])
                  for h in port["history"]) == [("blocked", "", 0), ("observed", "blocked", 3)]
    assert e["label"] == "9000 blocked"


@pytest.mark.parametrize(("effect", "label"), [
    ("prevent", "5432 seen, would prevent"), ("alert", "5432 seen, would alert")])
def test_with_enforcement_off_a_port_says_it_was_seen_and_what_would_happen(
        effect: str, label: str) -> None:
    # Rule 7 refuses (or audits) web -> db; enforcement is off, so the three
    # connections went through: the label says so, the colour stays the rule's.
    doc = POLICY.model_dump(mode="json")
    doc["containerEnabled"] = False
    doc["containerRules"].insert(0, {"id": 7, "name": "web-not-db", "src": "web",
                                     "dst": "db", "ports": [5432], "effect": effect})
    flows = [Flow("image:shop/web", "image:shop/db", 5432, "allow", 7, "web-not-db", count=3,
                  would=effect, would_rule_id=7, mode="observed")]
    policy = Policy.model_validate(doc)
    e = _edge(policy, flows, "image:shop/web:1->image:shop/db:3")
    (port,) = e["ports"]
    verdict = "blocked" if effect == "prevent" else "alert"
    assert (e["label"], e["verdict"], e["hole"]) == (label, verdict, False)
    assert (port["verdict"], port["seen"], port["unenforced"], port["ruleId"]) == (
        verdict, True, 3, 7)
    # the same flows with enforcement on now: the current verdict
    doc["containerEnabled"] = True
    e = _edge(Policy.model_validate(doc), flows, "image:shop/web:1->image:shop/db:3")
    assert (e["label"], e["ports"][0]["seen"]) == (f"5432 {verdict}", False)
    # connections that were all enforced keep what happened, enforcement off or not
    enforced = [Flow("image:shop/web", "image:shop/db", 5432, effect, 7, "web-not-db", count=2)]
    e = _edge(policy, enforced, "image:shop/web:1->image:shop/db:3")
    assert (e["label"], e["ports"][0]["seen"]) == (f"5432 {verdict}", False)
    # a port allowed by a rule, seen unenforced: nothing would differ
    allowed = [Flow("image:shop/web", "image:shop/api", 8080, "allow", 1, "web-api",
                    mode="observed")]
    e = _edge(policy, allowed, "image:shop/web:1->image:shop/api:2")
    assert (e["label"], e["ports"][0]["seen"]) == ("8080 allowed", False)


def test_compact_labels_put_would_verdicts_after_the_current_ones() -> None:
    assert compact_ports([("22", "would prevent"), ("80", "allowed"), ("5432", "blocked"),
                          ("9000", "would alert")]) == (
        "5432 blocked · 80 allowed · 9000 would alert · 22 would prevent")


def test_the_verdict_filter_uses_current_verdicts() -> None:
    flows = [Flow("image:shop/web", "image:shop/api", 8080, "prevent", 0, "", count=2)]
    g = build_graph(POLICY, hosts=HOSTS, containers=CONTAINERS, flows=flows,
                    query=RadarQuery(verdict="blocked"))
    assert "image:shop/web:1->image:shop/api:2" not in edges(g)  # allowed by rule 1 now
    g = build_graph(POLICY, hosts=HOSTS, containers=CONTAINERS, flows=flows,
                    query=RadarQuery(verdict="allowed"))
    assert edges(g)["image:shop/web:1->image:shop/api:2"]["ports"][0]["history"][0][
        "verdict"] == "blocked"


# --- node details -----------------------------------------------------------------------

def test_the_internet_node_lists_the_addresses_and_names_seen() -> None:
    flows = [Flow("image:shop/api", "addr:203.0.113.7", 443),
             Flow("image:shop/web", "dns:other.example", 443),
             Flow("image:shop/web", "addr:192.0.2.9", 443)]  # in "lan": not the internet
    n = nodes(graph(flows))["internet"]
    assert (n["seen"], n["seenCount"]) == (["203.0.113.7", "other.example"], 2)


def test_an_image_node_drills_down_to_each_container() -> None:
    containers = [*CONTAINERS,
                  WorkloadInfo(address="10.88.0.9", image="shop/cache:7", name="cache-0",
                               id="0123456789abcdef0123", namespace="shop", host="node-1"),
                  WorkloadInfo(address="fd00::9", image="shop/cache:7", name="cache-0",
                               id="0123456789abcdef0123", namespace="shop", host="node-1"),
                  WorkloadInfo(address="10.88.0.10", image="shop/cache:7", name="cache",
                               pod="cache-5d9", namespace="shop", host="node-2")]
    g = build_graph(POLICY, hosts=HOSTS, containers=containers)
    assert nodes(g)["image:shop/cache:7"]["workloads"] == [
        {"name": "cache-0", "id": "0123456789ab", "pod": "", "namespace": "shop",
         "host": "node-1", "addresses": ["10.88.0.9", "fd00::9"]},
        {"name": "cache", "id": "", "pod": "cache-5d9", "namespace": "shop", "host": "node-2",
         "addresses": ["10.88.0.10"]}]


def test_nodes_name_the_objects_that_select_all_of_them_narrowest_first() -> None:
    policy = load_policy({"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {"objects": [
        {"name": "api", "kind": "container", "selector": {"images": ["shop/api*"]}},
        {"name": "shop", "kind": "container", "selector": {"namespaces": ["shop"]}},
        {"name": "web-node-1", "kind": "container",  # selects only one of web's containers
         "selector": {"images": ["shop/web*"], "hosts": ["node-1"]}},
        {"name": "nodes", "kind": "host", "selector": {"hosts": ["node-*"]}},
    ]}})
    g = build_graph(policy, hosts=HOSTS, containers=CONTAINERS)
    n = nodes(g)
    assert n["image:shop/api:2"]["objects"] == [{"name": "api", "nodes": 1},
                                                {"name": "shop", "nodes": 2}]
    assert n["image:shop/web:1"]["objects"] == [{"name": "shop", "nodes": 2}]
    assert n["image:shop/db:3"]["objects"] == []
    h = nodes(build_graph(policy, hosts=HOSTS, containers=CONTAINERS,
                          query=RadarQuery(view="host")))
    assert h["host:node-1"]["objects"] == [{"name": "nodes", "nodes": 2}]


@pytest.mark.parametrize(("view", "field", "on"), [
    ("container", "container_enabled", True), ("container", "host_enabled", False),
    ("host", "host_enabled", True), ("host", "container_enabled", False)])
def test_the_graph_says_whether_its_view_is_enforced(view: str, field: str, on: bool) -> None:
    g = build_graph(_with(**{field: True}), hosts=HOSTS, containers=CONTAINERS,
                    query=RadarQuery(view=view))  # type: ignore[arg-type]
    assert g["enforced"] is on
    assert g["defaultEffect"] == "allow"
