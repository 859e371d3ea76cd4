"""Topology validation and the address plan (pure; no root needed)."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from cnnf.lab.plan import make_plan, plan_conflicts
from cnnf.lab.topology import TopologyError, load_topology, parse_topology

BASE: dict[str, Any] = {
    "name": "tiny",
    "hosts": [{"name": "h1"}, {"name": "h2", "labels": {"zone": "b"}}],
    "containers": [
        {"name": "web", "host": "h1", "image": "acme/web:1.0", "ports": [80]},
        {"name": "db", "host": "h2", "image": "acme/db:2", "ports": [5432]},
    ],
    "external": [
        {
            "name": "net",
            "subnet": "198.51.100.0/24",
            "servers": [
                {
                    "name": "partner",
                    "address": "198.51.100.20",
                    "ports": [443],
                    "dns": ["api.x.example"],
                }
            ],
        }
    ],
    "dnsServer": "198.51.100.53",
    "traffic": [{"source": "web", "destination": "db", "port": 5432, "rate": 2}],
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """BASE with the value at a dotted path (list indexes as numbers) replaced."""
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return doc


def test_base_is_valid() -> None:
    t = parse_topology(copy.deepcopy(BASE))
    assert [h.name for h in t.hosts] == ["h1", "h2"]
    assert t.dns_records() == {"api.x.example": "198.51.100.20"}


@pytest.mark.parametrize(
    "image", ["acme/web:1.0", "db:13", "a__b/x-y--z:v1_rc.2", "localhost/web:1",
              "registry.example:5000/team/web:1"],
)  # fmt: skip
def test_image_references_podman_accepts(image: str) -> None:
    assert parse_topology(with_change("containers.0.image", image)).containers[0].image == image


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        (with_change("containers.1.host", "h3"), "containers[1].host", "unknown host 'h3'"),
        (with_change("containers.1.name", "web"), "containers[1].name", "duplicate container name"),
        (with_change("hosts.1.name", "h1"), "hosts[1].name", "duplicate host name"),
        (with_change("containers.0.ports", [80, 70000]), "containers[0].ports", "bad port 70000"),
        (with_change("containers.0.ports", [0]), "containers[0].ports", "bad port 0"),
        (with_change("containers.0.ports", [80, 80]), "containers[0].ports", "duplicate port 80"),
        (
            with_change("containers.0.ports", [0, 80, 70000, 80]),
            "containers[0].ports",
            "bad port 0: must be 1-65535; bad port 70000: must be 1-65535; duplicate port 80",
        ),
        (with_change("traffic.0.port", 0), "traffic[0].port", "greater than or equal to 1"),
        (with_change("containers.0.image", "NoTag"), "containers[0].image", "bad image"),
        # References Podman refuses (it would fail halfway through `up`).
        (with_change("containers.0.image", "acme//web:1"), "containers[0].image", "bad image"),
        (with_change("containers.0.image", "acme/-web:1"), "containers[0].image", "bad image"),
        (with_change("containers.0.image", "a..b/web:1"), "containers[0].image", "bad image"),
        (with_change("containers.0.image", "acme/web:-1"), "containers[0].image", "bad image"),
        (with_change("containers.0.name", "Web_1"), "containers[0].name", "bad name"),
        (with_change("traffic.0.source", "ghost"), "traffic[0].source", "unknown container"),
        (
            with_change("traffic.0.destination", "ghost"),
            "traffic[0].destination",
            "unknown destination",
        ),
        (with_change("traffic.0.rate", 0), "traffic[0].rate", "greater than 0"),
        (with_change("name", "my-lab"), "name", "bad lab name"),
        (with_change("dnsServer", "10.0.0.53"), "dnsServer", "not in any external subnet"),
        (with_change("dnsServer", None), "dnsServer", "no dnsServer is set"),
        (
            with_change("external.0.servers.0.address", "192.0.2.1"),
            "external[0].servers[0].address",
            "not a host address of 198.51.100.0/24",
        ),
        (
            with_change("external.0.servers.0.address", "198.51.100.1"),
            "external[0].servers[0].address",
            "reserved for the lab router",
        ),
        (with_change("external.0.subnet", "198.51.100.0/33"), "external[0].subnet", "bad subnet"),
        (
            with_change("hosts.1.subnet", "198.51.100.128/25"),
            "external[0].subnet",
            "overlaps 198.51.100.128/25 (hosts[1].subnet)",
        ),
        (with_change("hosts.0.colour", "red"), "hosts[0].colour", "Extra inputs are not permitted"),
        (with_change("hosts", []), "hosts", "at least 1 item"),
    ],
)
def test_errors_name_path_and_problem(doc: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(doc, source="t.yaml")
    assert any(e.path == path and message in e.message for e in info.value.errors), (
        info.value.errors
    )
    assert str(info.value).startswith("t.yaml: invalid topology")


def test_all_errors_reported_at_once() -> None:
    doc = with_change("containers.1.host", "h9")
    doc["containers"].append({"name": "web", "host": "h1", "image": "acme/web:1.0"})
    with pytest.raises(TopologyError) as info:
        parse_topology(doc)
    paths = {e.path for e in info.value.errors}
    assert {"containers[1].host", "containers[2].name"} <= paths


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(with_change("containers.0.host", "nowhere")))
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert str(path) in str(info.value)
    assert "containers[0].host: unknown host 'nowhere'" in str(info.value)

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("hosts: [\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(bad_yaml)
    with pytest.raises(TopologyError, match="no such file"):
        load_topology(tmp_path / "missing.yaml")
    with pytest.raises(TopologyError, match="shipped: kube, shop"):
        load_topology("no-such-topology")


def test_shipped_shop_topology() -> None:
    t = load_topology("shop")
    assert {c.name for c in t.containers} == {
        "frontend",
        "api",
        "payments",
        "db",
        "cache",
        "worker",
    }
    assert {c.namespace for c in t.containers} == {"shop-web", "shop-data"}
    hosts = {c.name: c.host for c in t.containers}
    kinds = {
        hosts[p.source] == hosts.get(p.destination) for p in t.traffic if p.destination in hosts
    }
    assert kinds == {True, False}  # some flows stay on a host, some cross hosts
    assert t.dns_records()["api.partner.example"] == "203.0.113.20"


def test_plan_names_and_addresses() -> None:
    t = parse_topology(copy.deepcopy(BASE))
    p0, p1 = make_plan(t, "tiny", 0), make_plan(t, "other", 1)
    assert p0.router_netns == "cnnf-tiny-router"
    assert p0.hosts["h1"].netns == "cnnf-tiny-h1"
    assert p0.hosts["h1"].subnet == "10.64.1.0/24"
    assert p0.hosts["h2"].underlay_ip == "10.64.0.12"
    assert p1.hosts["h1"].subnet == "10.65.1.0/24"
    assert all(len(h.router_link) <= 15 for h in p0.hosts.values())
    assert p0.hosts["h1"].router_link != p1.hosts["h1"].router_link
    assert p0.external["net"].addresses == ("198.51.100.20", "198.51.100.53")
    assert p0.dns_netns == "cnnf-tiny-x-net"
    container_nets = [
        ipaddress.ip_network(h.subnet) for h in (*p0.hosts.values(), *p1.hosts.values())
    ]
    assert not any(
        a.overlaps(b) for i, a in enumerate(container_nets) for b in container_nets[i + 1 :]
    )
    assert plan_conflicts(p0) == []


def test_plan_conflict_with_derived_underlay() -> None:
    t = parse_topology(with_change("hosts.0.subnet", "10.64.0.0/16"))
    conflicts = plan_conflicts(make_plan(t, "tiny", 0))
    assert any("overlaps underlay" in c for c in conflicts)


# ---- containerd hosts and pods ----------------------------------------------

KUBE: dict[str, Any] = {
    "name": "k",
    "hosts": [{"name": "n1", "runtime": "containerd"}, {"name": "n2", "runtime": "containerd"}],
    "containers": [
        {"name": "web", "pod": "web-1", "host": "n1", "image": "k/web:1", "namespace": "shop",
         "labels": {"app": "web"}, "ports": [80]},
        {"name": "log", "pod": "web-1", "host": "n1", "image": "k/log:1", "namespace": "shop",
         "ports": [9000]},
        {"name": "db", "host": "n2", "image": "k/db:1", "namespace": "data", "ports": [5432]},
    ],
    "traffic": [{"source": "web-1", "destination": "db", "port": 5432}],
}  # fmt: skip


def kube_with(index: int, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(KUBE)
    doc["containers"][index].update(changes)
    return doc


def test_pods_group_containers_and_take_pod_names_in_traffic() -> None:
    t = parse_topology(copy.deepcopy(KUBE))
    assert {h.name: h.runtime for h in t.hosts} == {"n1": "containerd", "n2": "containerd"}
    assert {p: [c.name for c in cs] for p, cs in t.pods().items()} == {
        "web-1": ["web", "log"], "db": ["db"]
    }  # fmt: skip
    assert t.traffic[0].source == "web-1"
    assert parse_topology(copy.deepcopy(BASE)).hosts[0].runtime == "podman"  # the default


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        ({**copy.deepcopy(KUBE), "hosts": [{"name": "n1", "runtime": "docker"}, {"name": "n2"}]},
         "hosts[0].runtime", "'podman' or 'containerd'"),
        (kube_with(1, host="n2"), "containers[1].host", "pod 'web-1' (containers[0]) runs on 'n1'"),
        (kube_with(1, namespace="other"), "containers[1].namespace", "is in 'shop'"),
        (kube_with(1, labels={"app": "log"}), "containers[1].labels.app", "has app='web'"),
        (kube_with(1, ports=[80]), "containers[1].ports", "port 80 is already served"),
        (kube_with(2, pod="log"), "containers[2].pod", "name of another container"),
    ],
)  # fmt: skip
def test_pod_errors_name_path_and_problem(doc: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(doc, source="k.yaml")
    assert any(e.path == path and message in e.message for e in info.value.errors), (
        info.value.errors
    )


def test_shipped_kube_topology() -> None:
    t = load_topology("kube")
    assert {h.runtime for h in t.hosts} == {"containerd"}
    pods = t.pods()
    assert len(pods) >= 5 and any(len(cs) > 1 for cs in pods.values())  # sidecars
    assert len({cs[0].namespace for cs in pods.values()}) >= 3
    assert all("app" in cs[0].labels and "tier" in cs[0].labels for cs in pods.values())
    hosts = {c.name: c.host for c in t.containers}
    assert {hosts[p.source] == hosts.get(p.destination) for p in t.traffic
            if p.destination in hosts} == {True, False}  # fmt: skip
    assert t.external and t.dns_server


def test_plan_of_a_containerd_host() -> None:
    p = make_plan(parse_topology(copy.deepcopy(KUBE)), "kt", 2)
    n1 = p.hosts["n1"]
    assert n1.runtime == "containerd"
    assert n1.cri_sock == "/run/cnnf-lab/kt/n1/containerd.sock"
    assert n1.containerd_root == "/var/lib/cnnf-lab/kt/n1/containerd"
    assert n1.subnet == "10.66.1.0/24"  # the node's routed pod CIDR
