"""The Defender's decision logic, played without sockets: addresses in, actions
and records out."""

from __future__ import annotations

import pytest

from cnnf.defender.core import Action, Decider, Recorder
from cnnf.defender.discovery.identity import container_from_inspect
from cnnf.defender.inventory import Inventory
from cnnf.model import (
    BlockMode,
    ContainerIdentity,
    ContainerObject,
    ContainerSelector,
    DnsObject,
    Effect,
    HostIdentity,
    Policy,
    Rule,
    SubnetObject,
)
from cnnf.policy.engine import compile_policy

NODE = HostIdentity(name="node-1", addresses=("10.0.0.1",))
WEB = ContainerIdentity(image="shop/web:1.0", name="web-1", namespace="shop", host="node-1")
DB = ContainerIdentity(image="shop/db:13", name="db-1", namespace="shop", host="node-2")
INV = Inventory.build(NODE, containers=[("10.1.0.2", WEB)], remote=[("10.2.0.5", DB)])


def policy(block_mode: BlockMode = BlockMode.RESET, default: Effect = Effect.ALLOW) -> Policy:
    return Policy(
        container_enabled=True,
        default_effect=default,
        block_mode=block_mode,
        objects=(
            ContainerObject(name="web", selector=ContainerSelector(images=("shop/web",))),
            ContainerObject(name="db", selector=ContainerSelector(images=("shop/db",))),
            SubnetObject(name="internet", cidrs=("203.0.113.0/24",)),
            DnsObject(name="partner", domains=("*.partner.example",)),
        ),
        container_rules=(
            Rule(id=1, name="web-db-sql", src="web", dst="db", ports=5432, effect=Effect.ALERT),
            Rule(id=2, name="web-db-other", src="web", dst="db", effect=Effect.PREVENT),
            Rule(id=3, name="web-internet", src="web", dst="internet", effect=Effect.PREVENT),
            Rule(id=4, name="web-partner", src="web", dst="partner", ports=443),
        ),
        revision=7,
    )


@pytest.mark.parametrize(
    ("dst", "port", "mode", "action", "rule"),
    [
        ("10.2.0.5", 5432, BlockMode.RESET, Action.ACCEPT, 1),
        ("10.2.0.5", 22, BlockMode.RESET, Action.REJECT, 2),
        ("10.2.0.5", 22, BlockMode.DROP, Action.DROP, 2),
        ("203.0.113.9", 80, BlockMode.RESET, Action.REJECT, 3),
        ("198.51.100.1", 80, BlockMode.RESET, Action.ACCEPT, None),
    ],
)
def test_decide(dst: str, port: int, mode: BlockMode, action: Action, rule: int | None) -> None:
    d = Decider(compile_policy(policy(mode)), INV).decide("10.1.0.2", dst, port)
    assert d.action is action
    assert d.verdict.rule_id == rule
    assert d.verdict.revision == 7


def test_domains_from_dns_answers_reach_the_engine() -> None:
    names = {"198.51.100.7": ("api.partner.example",)}
    decider = Decider(compile_policy(policy(default=Effect.PREVENT)), INV,
                      lambda a: names.get(a, ()))
    assert decider.decide("10.1.0.2", "198.51.100.7", 443).verdict.rule_id == 4
    unnamed = decider.decide("10.1.0.2", "198.51.100.8", 443)
    assert unnamed.action is Action.REJECT and not unnamed.verdict.matched


def test_recorder_aggregates_flows_and_folds_audits_within_window() -> None:
    compiled = compile_policy(policy())
    decider = Decider(compiled, INV)
    rec = Recorder(reporter="node-1", fold_window=5.0)
    first = rec.record(decider.decide("10.1.0.2", "10.2.0.5", 22), compiled, now=100.0)
    assert first is not None and first.blocked and first.rule_name == "web-db-other"
    assert first.src.image == "shop/web:1.0" and first.dst.container == "db-1"
    assert rec.record(decider.decide("10.1.0.2", "10.2.0.5", 22), compiled, now=102.0) is None
    rec.record(decider.decide("10.1.0.2", "10.2.0.5", 5432), compiled, now=103.0)
    rec.record(decider.decide("10.1.0.2", "203.0.113.9", 80), compiled, now=103.5)

    flows, audits = rec.drain(now=104.0)
    assert audits == []  # every window is still open
    by_rule = {f.rule_id: f for f in flows}
    assert (by_rule[2].count, by_rule[2].first_seen, by_rule[2].last_seen) == (2, 100.0, 102.0)
    assert by_rule[1].effect is Effect.ALERT

    # a repeat after the window opens a new audit; the old one closes with its count
    rec.record(decider.decide("10.1.0.2", "10.2.0.5", 22), compiled, now=106.0)
    _, audits = rec.drain(now=106.5)
    assert [(a.rule_id, a.count) for a in audits] == [(2, 2)]
    _, audits = rec.drain(now=200.0, final=True)
    assert sorted((a.rule_id, a.count) for a in audits) == [(1, 1), (2, 1), (3, 1)]
    internet = next(a for a in audits if a.rule_id == 3)
    assert internet.dst_subnet == "203.0.113.0/24" and internet.dst.kind == "address"
    assert "blocked connection from shop/web:1.0" in internet.message


def test_inventory_resolves_host_container_remote_and_unknown() -> None:
    assert INV.endpoint("10.0.0.1").host == NODE
    assert INV.endpoint("10.1.0.2").container == WEB
    assert INV.endpoint("10.2.0.5").container == DB
    unknown = INV.endpoint("192.0.2.1", ("x.example",))
    assert unknown.kind == "address" and unknown.domains == ("x.example",)
    assert INV.cluster_container_addresses() == {"10.1.0.2", "10.2.0.5"}


def test_identity_from_podman_inspect_with_kubernetes_labels() -> None:
    attrs = {
        "Id": "abc123",
        "Name": "/shop-api-7f9c",
        "Config": {
            "Image": "docker.io/shop/api:2.1",
            "Labels": {
                "io.kubernetes.pod.namespace": "shop-web",
                "io.kubernetes.pod.name": "api-7f9c",
                "io.kubernetes.container.name": "api",
                "app": "api",
            },
        },
        "State": {"Running": True, "Pid": 4242},
        "HostConfig": {"NetworkMode": "bridge"},
        "NetworkSettings": {"Networks": {"lab": {"IPAddress": "10.1.0.9",
                                                  "GlobalIPv6Address": ""}}},
    }
    found = container_from_inspect(attrs, host="node-1", cluster="c1")
    ident = found.identity
    assert (ident.image_name, ident.image_tag) == ("shop/api", "2.1")
    assert ident.name == "api" and ident.namespace == "shop-web" and ident.pod == "api-7f9c"
    assert ident.label("app") == "api" and ident.host == "node-1" and ident.cluster == "c1"
    assert found.addresses == ("10.1.0.9",) and found.running and found.pid == 4242
    assert not found.host_network
