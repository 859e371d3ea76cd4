"""The lab for real: namespaces, Podman containers, DNS, Docker API (root needed).

One session-scoped ``shop`` lab (named ``cnnftest`` so it never collides with
a user's lab) serves every test here; its finalizer takes it down and checks
that nothing is left. Traffic only flows between the lab's own namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from typer.testing import CliRunner

from cnnf.cli import app
from cnnf.lab import Lab, LabError, Traffic, load_topology, parse_topology, system
from cnnf.lab import lab as lab_module
from cnnf.lab.topology import Container

pytestmark = pytest.mark.lab

LAB = "cnnftest"
TINY = "cnnftiny"


def _cmd(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def snapshot(lab: str) -> dict[str, Any]:
    """What a lab may leave behind, in the root namespace and on disk."""
    return {
        "lab namespaces": sorted(n for n in system.netns_list() if n.startswith(f"cnnf-{lab}-")),
        "root links": sorted(
            line.split(":")[1].strip().split("@")[0]
            for line in _cmd("ip", "-o", "link").splitlines()
        ),
        "root routes": _cmd("ip", "route", "show", "table", "all"),
        "root iptables filter": _cmd("iptables", "-w", "-S"),
        "root iptables nat": _cmd("iptables", "-w", "-t", "nat", "-S"),
        "lab processes": system.pids_with_cmdline(f"/cnnf-lab/{lab}/"),
        "lab mounts": system.mounts_under(f"/run/cnnf-lab/{lab}", f"/var/lib/cnnf-lab/{lab}"),
        "lab dirs": [
            d for d in (f"/run/cnnf-lab/{lab}", f"/var/lib/cnnf-lab/{lab}") if os.path.exists(d)
        ],
    }


def what_remains(lab: Lab) -> list[str]:
    """Things of ``lab`` (read while it was up) still present."""
    out = [f"namespace {n}" for n in lab.plan.netns if system.netns_exists(n)]
    for c in lab.state["containers"].values():
        if system.alive(c["pid"]):
            out.append(f"process {c['pid']} of container {c['name']}")
        if c["sandbox"] and os.path.exists(c["sandbox"]):
            out.append(f"sandbox {c['sandbox']}")
    out += [f"process {pid}" for pid in lab.state["pids"].values() if system.alive(pid)]
    return out


@pytest.fixture(scope="session")
def shop() -> Iterator[Lab]:
    if os.geteuid() != 0 or shutil.which("podman") is None:
        pytest.skip("the lab needs root and podman")
    before = snapshot(LAB)
    lab = Lab.up("shop", name=LAB)
    try:
        yield lab
    finally:
        Lab.down(LAB)
        assert what_remains(lab) == []
        assert snapshot(LAB) == before


def test_containers_connect_on_one_host_and_across_hosts(shop: Lab) -> None:
    local = shop.connect("frontend", "api", 8080)
    assert local.outcome == "connected", local
    assert shop.container("frontend").host == shop.container("api").host
    across = shop.connect("api", "payments", 9090)
    assert across.outcome == "connected", across
    assert shop.container("api").host != shop.container("payments").host
    assert across.address == shop.container("payments").address
    assert across.source_address == shop.container("api").address


def test_far_end_sees_the_real_container_address_across_hosts(shop: Lab) -> None:
    with subprocess.Popen(
        shop.probe_command("db", "listen", "7777", "--timeout", "10"),
        stdout=subprocess.PIPE,
        text=True,
    ) as listener:
        assert listener.stdout is not None
        assert json.loads(listener.stdout.readline()) == {"listening": 7777}
        assert shop.connect("api", "db", 7777).ok
        accepted = json.loads(listener.stdout.readline())
    assert accepted["outcome"] == "accepted"
    assert accepted["peer"] == shop.container("api").address  # routed, not NATed


def test_connect_to_a_closed_port_is_refused(shop: Lab) -> None:
    result = shop.connect("frontend", "payments", 22)
    assert result.outcome == "refused", result
    assert shop.connect("api", "db", 5433).outcome == "refused"
    assert shop.connect("api", "node-2", 22).outcome == "refused"  # a host, by name


def test_container_resolves_partner_through_lab_dns(shop: Lab) -> None:
    assert shop.resolve("payments", "api.partner.example") == ["203.0.113.20"]
    result = shop.connect("payments", "api.partner.example", 443)
    assert result.outcome == "connected", result
    assert result.address == "203.0.113.20"
    assert shop.connect("payments", "unknown.partner.example", 443).outcome == "dns-error"
    resolv = shop.exec("payments", ["cat", "/etc/resolv.conf"])
    assert "nameserver 203.0.113.53" in resolv.stdout


def test_each_docker_api_lists_exactly_its_hosts_containers(shop: Lab) -> None:
    topology = load_topology("shop")
    for host in ("node-1", "node-2"):
        client = docker.DockerClient(base_url=shop.docker_host(host))
        try:
            found = {c.name: c for c in client.containers.list()}
        finally:
            client.close()
        expected = {c.name for c in topology.containers_on(host)}
        assert set(found) == expected
        for name, c in found.items():
            declared = topology.container(name)
            assert c.labels["io.kubernetes.pod.namespace"] == declared.namespace
            assert c.labels["io.kubernetes.pod.name"] == declared.pod_name
            assert c.labels["io.kubernetes.container.name"] == name
            assert c.labels["app"] == declared.labels["app"]
            addresses = [n["IPAddress"] for n in c.attrs["NetworkSettings"]["Networks"].values()]
            assert addresses == [shop.container(name).address]
            assert c.attrs["Config"]["Image"] == f"docker.io/{declared.image}"


def test_exec_runs_inside_the_container(shop: Lab) -> None:
    proc = shop.exec("api", ["hostname"])
    assert proc.returncode == 0
    assert proc.stdout.strip() == "api"


def test_no_lab_route_leads_out_of_the_lab(shop: Lab) -> None:
    root_routes = _cmd("ip", "route", "show", "table", "all")
    assert "10.64." not in root_routes and "203.0.113." not in root_routes
    for ns in shop.plan.netns:
        routes = _cmd("ip", "-n", ns, "route", "show")
        if ns == shop.plan.router_netns:
            assert "default" not in routes
    # No link joins the root namespace to a lab namespace or a lab container.
    sandboxes = [Path(c["sandbox"]).name for c in shop.state["containers"].values()]
    for line in _cmd("ip", "-o", "link").splitlines():
        assert f"link-netns cnnf-{LAB}-" not in line
        assert not any(f"link-netns {s}" in line for s in sandboxes)
    # The router knows no way to addresses outside the lab.
    probe = subprocess.run(
        ["ip", "-n", shop.plan.router_netns, "route", "get", "192.0.2.2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode != 0


def test_traffic_patterns_run_from_the_containers(shop: Lab) -> None:
    reports: list[str] = []
    counts = Traffic(shop).run(2.5, every=1.0, report=lambda t: reports.append(t.summary()))
    assert counts["frontend->api:8080"]["connected"] >= 2
    assert counts["api->payments:9090"]["connected"] >= 1
    assert counts["payments->api.partner.example:443"]["connected"] >= 1
    assert counts["lateral-frontend-ssh"]["refused"] >= 1
    assert counts["lateral-frontend-ssh"]["connected"] == 0
    assert len(reports) >= 2


def test_traffic_stops_once_the_caller_has_what_it_waits_for(shop: Lab) -> None:
    # 2 a second: a whole minute would be about 120 (a few more come as the workers stop)
    counts = Traffic(shop).run(60, until=lambda t: t.counts["frontend->api:8080"]["connected"] >= 3)
    assert 3 <= counts["frontend->api:8080"]["connected"] <= 20, counts
    # true from the start: no poll at all, only what the workers sent as they stopped
    counts = Traffic(shop).run(60, until=lambda t: True)
    assert counts["frontend->api:8080"]["connected"] <= 10, counts


def test_cli_status_and_connect(shop: Lab) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["lab", "status", "--name", LAB, "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert [h["name"] for h in status["hosts"]] == ["node-1", "node-2"]
    assert {c["state"] for h in status["hosts"] for c in h["containers"]} == {"running"}
    result = runner.invoke(app, ["lab", "connect", "worker", "db", "5432", "--name", LAB])
    assert result.exit_code == 0 and ": connected in" in result.output
    result = runner.invoke(app, ["lab", "connect", "worker", "db", "1", "--name", LAB])
    assert result.exit_code == 1 and ": refused in" in result.output
    result = runner.invoke(app, ["lab", "connect", "nobody", "db", "1", "--name", LAB])
    assert result.exit_code == 2 and "no container 'nobody'" in result.output


TINY_TOPOLOGY = {
    "name": "tiny",
    "hosts": [{"name": "h1"}, {"name": "h2"}],
    "containers": [
        {"name": "web", "host": "h1", "image": "tiny/web:1", "namespace": "t", "ports": [80]},
        {"name": "db", "host": "h2", "image": "tiny/db:1", "namespace": "t", "ports": [5432]},
    ],
    "external": [
        {
            "name": "out",
            "subnet": "198.51.100.0/24",
            "servers": [
                {
                    "name": "svc",
                    "address": "198.51.100.7",
                    "ports": [443],
                    "dns": ["svc.tiny.example"],
                }
            ],
        }
    ],
    "dnsServer": "198.51.100.53",
}


def test_second_lab_coexists_and_down_leaves_nothing(shop: Lab) -> None:
    before = snapshot(TINY)
    tiny = Lab.up(parse_topology(TINY_TOPOLOGY), name=TINY)
    try:
        assert tiny.plan.index != shop.plan.index
        assert tiny.container("web").address != shop.container("frontend").address
        # Addresses are the same on every run of a lab.
        assert tiny.container("web").address == str(
            ipaddress.ip_network(tiny.plan.hosts["h1"].subnet)[2]
        )
        assert tiny.connect("web", "db", 5432).ok
        assert tiny.connect("web", "svc.tiny.example", 443).ok
        assert shop.connect("frontend", "api", 8080).ok  # the first lab still works
        client = docker.DockerClient(base_url=tiny.docker_host("h1"))
        try:
            assert [c.name for c in client.containers.list()] == ["web"]
        finally:
            client.close()
    finally:
        Lab.down(TINY)
    assert what_remains(tiny) == []
    assert snapshot(TINY) == before
    assert Lab.down(TINY) == []  # idempotent
    assert shop.connect("frontend", "api", 8080).ok


@pytest.mark.parametrize(
    ("failure", "reported"),
    [(LabError("injected failure"), "failed (injected failure)"),
     (KeyboardInterrupt(), "failed (KeyboardInterrupt)")],  # Ctrl-C
)  # fmt: skip
def test_failure_halfway_through_up_removes_what_it_created(
    shop: Lab, monkeypatch: pytest.MonkeyPatch, failure: BaseException, reported: str
) -> None:
    before = snapshot(TINY)
    real = lab_module.Lab._run_container

    def failing(self: Lab, h: Any, c: Any) -> None:
        if c.name == "db":
            raise failure
        real(self, h, c)

    monkeypatch.setattr(lab_module.Lab, "_run_container", failing)
    progress: list[str] = []
    with pytest.raises(type(failure)):
        Lab.up(parse_topology(TINY_TOPOLOGY), name=TINY, progress=progress.append)
    assert any(f"{reported}; removing what was created" in p for p in progress), progress
    assert snapshot(TINY) == before
    assert not Path("/run/cnnf-lab", TINY).exists()


def test_up_cleans_leftovers_of_a_crashed_run(shop: Lab) -> None:
    before = snapshot(TINY)
    first = Lab.up(parse_topology(TINY_TOPOLOGY), name=TINY)
    try:
        # A crash that lost the runtime state: namespaces, containers, engines remain.
        Path(first.plan.state_dir, "state.json").unlink()
        progress: list[str] = []
        second = Lab.up(parse_topology(TINY_TOPOLOGY), name=TINY, progress=progress.append)
        assert any("removed leftovers of an earlier run" in p for p in progress)
        assert what_remains(first) == [] or set(what_remains(first)) <= {
            f"namespace {n}" for n in second.plan.netns
        }
        assert second.connect("web", "db", 5432).ok
    finally:
        Lab.down(TINY)
    assert snapshot(TINY) == before


def test_without_root_it_says_so() -> None:
    code = "from cnnf.cli import main; main()"
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", code, "lab", "up", "shop"],
        capture_output=True, text=True, check=False, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "the lab needs root" in proc.stderr


def test_without_podman_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LabError) as info:
        system.preflight()
    assert "podman" in str(info.value)
    assert "apt-get install podman runc busybox-static dnsmasq-base" in str(info.value)


def test_started_container_is_announced_on_its_hosts_docker_api(shop: Lab) -> None:
    client = docker.DockerClient(base_url=shop.docker_host("node-2"))
    try:
        t0 = int(time.time()) - 1
        info = shop.start_container(
            Container(name="late", host="node-2", image="shop/late:0.1", namespace="shop-data",
                      labels={"app": "late"}, ports=[7070])
        )  # fmt: skip
        try:
            assert shop.connect("frontend", "late", 7070).ok
            events = client.events(
                since=t0, until=int(time.time()) + 1, decode=True,
                filters={"type": "container", "event": "start"},
            )  # fmt: skip
            started = [e["Actor"]["Attributes"] for e in events]
            assert any(a.get("name") == "late" and a.get("app") == "late" for a in started)
            assert "late" in {c.name for c in client.containers.list()}
            assert info.address.startswith("10.")
        finally:
            shop.remove_container("late")
        assert "late" not in {c.name for c in client.containers.list()}
    finally:
        client.close()
