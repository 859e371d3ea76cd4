"""The kube lab for real: containerd nodes, pods created through the CRI (root needed).

One session-scoped ``kube`` lab (named ``kubet``) serves the tests here; its
finalizer takes it down and checks that nothing is left: no process, mount,
network namespace, cgroup or file. Traffic only flows between the lab's own
namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cnnf.cli import app
from cnnf.cri import CriClient
from cnnf.lab import Lab, LabError, Traffic, parse_topology, system
from cnnf.lab import containerd as node_module
from cnnf.lab.topology import Container

pytestmark = pytest.mark.lab

LAB = "kubet"
CRASH = "kubetc"


def _cmd(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def snapshot(lab: str) -> dict[str, Any]:
    """What a containerd lab may leave behind, in the root namespace, on disk and
    in the cgroup hierarchies."""
    dirs = (f"/run/cnnf-lab/{lab}", f"/var/lib/cnnf-lab/{lab}")
    return {
        "lab namespaces": sorted(n for n in system.netns_list() if n.startswith(f"cnnf-{lab}-")),
        "cni namespaces": sorted(n for n in system.netns_list() if n.startswith("cni-")),
        "root links": sorted(
            line.split(":")[1].strip().split("@")[0]
            for line in _cmd("ip", "-o", "link").splitlines()
        ),
        "root routes": _cmd("ip", "route", "show", "table", "all"),
        "lab processes": system.pids_with_cmdline(f"/cnnf-lab/{lab}/"),
        "pod processes": node_module.cgroup_pids(lab),
        "pod cgroups": node_module.cgroup_dirs(lab),
        "lab mounts": system.mounts_under(*dirs),
        "lab dirs": [d for d in dirs if os.path.exists(d)],
    }


def what_remains(lab: Lab) -> list[str]:
    """Things of ``lab`` (read while it was up) still present."""
    out = [f"namespace {n}" for n in lab.plan.netns if system.netns_exists(n)]
    for c in lab.state["containers"].values():
        if c["pid"] and system.alive(c["pid"]):
            out.append(f"process {c['pid']} of container {c['name']}")
        if c["sandbox"] and os.path.exists(c["sandbox"]):
            out.append(f"pod netns {c['sandbox']}")
    for p in lab.state.get("pods", {}).values():
        if p["pid"] and system.alive(p["pid"]):
            out.append(f"sandbox process {p['pid']} of pod {p['name']}")
    out += [f"process {pid}" for pid in lab.state["pids"].values() if system.alive(pid)]
    return out


@pytest.fixture(scope="session")
def kube() -> Iterator[Lab]:
    if os.geteuid() != 0 or shutil.which("containerd") is None:
        pytest.skip("the kube lab needs root and containerd")
    Lab.down(LAB)
    before = snapshot(LAB)
    lab = Lab.up("kube", name=LAB)
    try:
        yield lab
    finally:
        Lab.down(LAB)
        assert what_remains(lab) == []
        assert snapshot(LAB) == before


def _in(address: str, subnet: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(subnet)


def test_status_prints_each_nodes_cri_socket(kube: Lab) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["lab", "status", "--name", LAB])
    assert result.exit_code == 0, result.output
    for host in ("node-1", "node-2"):
        assert f"  cri: unix:///run/cnnf-lab/{LAB}/{host}/containerd.sock" in result.output
    assert "docker:" not in result.output
    result = runner.invoke(app, ["lab", "status", "--name", LAB, "--json"])
    status = json.loads(result.output)
    assert {h["runtime"] for h in status["hosts"]} == {"containerd"}
    assert {c["state"] for h in status["hosts"] for c in h["containers"]} == {"running"}
    assert kube.cri_socket("node-1") == status["hosts"][0]["criSocket"]
    with pytest.raises(LabError, match="serves no Docker API"):
        kube.docker_host("node-1")


def test_the_cri_lists_the_pods_as_a_kubelet_made_them(kube: Lab) -> None:
    for host in ("node-1", "node-2"):
        declared = {p: cs for p, cs in kube.topology.pods().items() if cs[0].host == host}
        with CriClient(kube.cri_socket(host)) as cri:
            pods = {p.metadata.name: p for p in cri.list_pods(ready_only=True)}
            assert set(pods) == set(declared)
            for name, containers in declared.items():
                pod = pods[name]
                assert pod.metadata.namespace == containers[0].namespace
                assert pod.labels["app"] == containers[0].labels["app"]
                assert pod.labels["io.kubernetes.pod.name"] == name
                status = cri.pod_status(pod.id)
                assert status.network.ip == kube.address_of(name)
                running = cri.list_containers(pod.id, running_only=True)
                assert sorted(c.metadata.name for c in running) == sorted(
                    c.name for c in containers
                )
                for c in running:
                    assert c.labels["io.kubernetes.pod.namespace"] == containers[0].namespace
                    assert c.labels["io.kubernetes.container.name"] == c.metadata.name
                    # As from a kubelet: the image by ID; the status names it.
                    assert c.image.image.startswith("sha256:")
                    named = cri.container_status(c.id).image.image
                    assert named == kube.container(c.metadata.name).image


def test_pods_get_addresses_in_their_nodes_pod_subnet(kube: Lab) -> None:
    seen: dict[str, str] = {}
    for name, containers in kube.topology.pods().items():
        host = kube.plan.hosts[containers[0].host]
        address = kube.address_of(name)
        assert address and _in(address, host.subnet), (name, address)
        assert address != host.gateway
        # The containers of a pod share its network namespace and address.
        assert {kube.container(c.name).address for c in containers} == {address}
        assert address not in seen, (name, seen)
        seen[address] = name


def test_pod_to_pod_across_nodes_sees_the_real_address(kube: Lab) -> None:
    assert kube.container("cart").host != kube.container("checkout").host
    result = kube.connect("cart", "checkout", 9090)
    assert result.ok, result
    assert result.source_address == kube.address_of("cart-5f6d8b7c9-q4w2z")
    # By pod name, to a sidecar's port, and a closed port.
    assert kube.connect("web-7d4b9c6f5-x2k8p", "checkout-6c8f9d7b5-m3n7r", 15001).ok
    assert kube.connect("web", "checkout", 22).outcome == "refused"
    assert kube.connect("web", "redis", 6379).ok  # on one node
    with subprocess.Popen(
        kube.probe_command("postgres-0", "listen", "7777", "--timeout", "10"),
        stdout=subprocess.PIPE,
        text=True,
    ) as listener:
        assert listener.stdout is not None
        assert json.loads(listener.stdout.readline()) == {"listening": 7777}
        assert kube.connect("web", "postgres", 7777).ok
        accepted = json.loads(listener.stdout.readline())
    assert accepted["peer"] == kube.address_of("web")  # routed, not NATed


def test_pods_resolve_and_reach_the_external_network(kube: Lab) -> None:
    assert kube.resolve("checkout", "api.payments.example") == ["203.0.113.30"]
    assert kube.connect("checkout", "api.payments.example", 443).ok


def test_exec_runs_in_the_pods_containers(kube: Lab) -> None:
    proc = kube.exec("web-7d4b9c6f5-x2k8p", ["hostname"])
    assert (proc.returncode, proc.stdout.strip()) == (0, "web-7d4b9c6f5-x2k8p")
    # The pod name reaches its main container, a container name that container.
    assert "httpd -p 80" in kube.exec("web-7d4b9c6f5-x2k8p", ["ps"]).stdout
    assert "httpd" not in kube.exec("web-log", ["ps"]).stdout
    assert "nameserver 203.0.113.53" in kube.exec("cart", ["cat", "/etc/resolv.conf"]).stdout
    assert kube.exec("cart", ["sh", "-c", "exit 3"]).returncode == 3
    result = CliRunner().invoke(app, ["lab", "exec", "redis-0", "--name", LAB, "--", "hostname"])
    assert result.exit_code == 0 and "redis-0" in result.output


def test_traffic_patterns_run_from_the_pods(kube: Lab) -> None:
    counts = Traffic(kube).run(2.5, every=1.0)
    assert counts["web->cart:8080"]["connected"] >= 2
    assert counts["checkout->postgres:5432"]["connected"] >= 1
    assert counts["metrics->cart-5f6d8b7c9-q4w2z:8080"]["connected"] >= 1
    assert counts["lateral-web-checkout-ssh"]["refused"] >= 1
    assert counts["lateral-web-checkout-ssh"]["connected"] == 0


def test_pod_churn_and_address_reuse(kube: Lab) -> None:
    subnet = kube.plan.hosts["node-2"].subnet
    names = [f"churn-{i}" for i in range(30)]
    started: dict[str, str] = {}
    try:
        for i, name in enumerate(names):
            info = kube.start_container(
                Container(name=name, host="node-2", image="kube/job:1", namespace="batch",
                          pod=f"{name}-x{i}", labels={"app": "job", "tier": "batch"},
                          ports=[8000])
            )  # fmt: skip
            started[name] = info.address
            assert _in(info.address, subnet) and info.pod == f"{name}-x{i}"
        assert len(set(started.values())) == 30
        assert kube.connect("web", "churn-7", 8000).ok
        assert kube.connect("churn-29", "cart", 8080).ok
        with CriClient(kube.cri_socket("node-2")) as cri:
            assert len([p for p in cri.list_pods() if p.metadata.namespace == "batch"]) == 30
    finally:
        for name in started:
            kube.remove_pod(name)
    with CriClient(kube.cri_socket("node-2")) as cri:
        assert [p for p in cri.list_pods() if p.metadata.namespace == "batch"] == []
    gone = kube.connect("web", started["churn-7"], 8000, timeout=0.5)
    assert gone.outcome in ("unreachable", "timeout"), gone
    # A new pod, another identity, at a freed address.
    reused = started["churn-7"]
    info = kube.start_pod(
        [Container(name="other", host="node-2", image="kube/other:2", namespace="batch",
                   labels={"app": "other"}, ports=[8000])],
        address=reused,
    )[0]  # fmt: skip
    try:
        assert info.address == reused
        assert kube.connect("web", "other", 8000).ok
        with pytest.raises(LabError, match="in use"):
            kube.start_pod([Container(name="clash", host="node-2", image="kube/other:2")],
                           address=reused)  # fmt: skip
    finally:
        kube.remove_pod("other")
    assert "other" not in kube.state["containers"]


def test_multi_container_pod_started_and_removed_together(kube: Lab) -> None:
    pod = [
        Container(name="app", host="node-1", image="kube/app:1", namespace="extra",
                  pod="app-1", labels={"app": "app"}, ports=[8081]),
        Container(name="app-side", host="node-1", image="kube/side:1", namespace="extra",
                  pod="app-1", ports=[8082]),
    ]  # fmt: skip
    infos = kube.start_pod(pod)
    try:
        assert infos[0].address == infos[1].address
        assert kube.connect("redis", "app-1", 8081).ok
        assert kube.connect("redis", "app-side", 8082).ok
        assert kube.pod("app-side")["containers"] == ["app", "app-side"]
    finally:
        kube.remove_pod("app-1")
    with pytest.raises(LabError, match="no container 'app-side'"):
        kube.container("app-side")


def test_down_after_a_crash_leaves_nothing(kube: Lab) -> None:
    """containerd and its shims killed (-9), the state file lost: ``down`` still
    finds the pods' processes, mounts, namespaces and cgroups by name."""
    topology = parse_topology({
        "name": "crash",
        "hosts": [{"name": "n1", "runtime": "containerd"}],
        "containers": [
            {"name": "a", "host": "n1", "image": "kube/a:1", "ports": [80]},
            {"name": "b", "host": "n1", "image": "kube/b:1", "pod": "a"},
            {"name": "c", "host": "n1", "image": "kube/c:1"},
        ],
    })  # fmt: skip
    Lab.down(CRASH)
    before = snapshot(CRASH)
    crashed = Lab.up(topology, name=CRASH)
    try:
        assert crashed.plan.index != kube.plan.index
        assert crashed.connect("c", "a", 80).ok
        assert node_module.cgroup_pids(CRASH)
        for pid in system.pids_with_cmdline(f"/cnnf-lab/{CRASH}/"):
            os.kill(pid, signal.SIGKILL)  # containerd and the shims: the pods stay
        Path(crashed.plan.state_dir, "state.json").unlink()
        assert node_module.cgroup_pids(CRASH)
    finally:
        removed = Lab.down(CRASH)
    assert "pod cgroups" in removed
    assert what_remains(crashed) == []
    assert snapshot(CRASH) == before
    assert Lab.down(CRASH) == []  # idempotent
    assert kube.connect("web", "cart", 8080).ok  # the other lab is untouched
