"""Observation beside enforcement, for real (root, the lab ``cnnfobs``): with
containers enforced and hosts not, a flood of new connections from a host (each
one observed through conntrack and evaluated) does not stall the Defender: its
status keeps being written and the containers' blocked connections made during
the flood get their audits; and a host's connection to another host's container
is recorded once, by the Defender that queued and blocked it, not also as
observed and "not enforced" by the source's Defender.

With hosts enforced and containers observed, a container's connection
masqueraded to its host's address on the way to another host is recorded once,
by its own Defender, with the container's identity (the other host's datapath
sees a protected host and does not queue it). A container flooding observation
(a port scan: every SYN a distinct connection) cannot push another container's
connections out: they are recorded, and the flood's excess is dropped, counted
against the flooder and logged. A conntrack process that dies is started again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.defender.lab.test_defender_lab import CNNF, Cluster, poll, running_cluster

from cnnf.lab.lab import PROBE

pytestmark = pytest.mark.lab

LAB = "cnnfobs"
FLOOD_SECONDS = 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(LAB, tmp_path_factory.mktemp("observe"), "hping3")


def audits(c: Cluster, src: str, dst: str, port: int) -> list[dict[str, Any]]:
    return [a for d in c.defenders for a in d.records("audit")
            if a["src"].get("container") == src and a["dst"].get("container") == dst
            and a["port"] == port]


def test_a_flood_of_observed_connections_starves_no_enforced_audit(cluster: Cluster) -> None:
    c = cluster
    n1 = c.lab.address_of("node-1")
    assert n1 is not None
    d2 = c.d2
    assert poll(lambda: ((d2.status() or {}).get("observation") or {}).get("running"), 10)
    before = len(audits(c, "worker", "db", 5432))
    # node-2's host (not enforced: observed by node-2's Defender, each SYN a new
    # connection) SYNs node-1 at about 5,000 a second
    flood = subprocess.Popen(["nsenter", f"--net={c.lab.netns('node-2')}", "timeout",
                              str(FLOOD_SECONDS), "hping3", "-S", "-p", "9", "-i", "u200", n1],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        updated = []
        for _ in range(3):  # the main loop writes its status every second, flood or not
            time.sleep(1.5)
            updated.append(float((d2.status() or {})["updated"]))
        assert updated[0] < updated[1] < updated[2] and time.time() - updated[2] < 3, updated
        for i in range(4):  # worker -> db: no rule, the default prevents (node-2's Defender)
            assert c.connect("worker", "db", 5432).outcome == "refused", i
        # their audits are out while the flood still runs
        assert poll(lambda: sum(a["count"] for a in audits(c, "worker", "db", 5432)[before:]
                                if a["blocked"]) == 4, FLOOD_SECONDS - 7), (
            audits(c, "worker", "db", 5432)[before:])
        assert flood.poll() is None  # (the flood was on all along)
    finally:
        flood.wait(FLOOD_SECONDS + 10)
    # the flood was observed (and recorded as far as observation kept up)
    flooded = [f for f in d2.records("flow") if f["port"] == 9 and f["mode"] == "observed"]
    assert sum(f["count"] for f in flooded) > 0
    obs = (d2.status() or {})["observation"]
    assert set(obs) == {"running", "waiting", "dropped", "overruns", "restarts", "unparsed",
                        "top"}, obs
    # and what was taken was recorded: nothing is left waiting once it is over
    assert poll(lambda: ((d2.status() or {})["observation"])["waiting"] == 0, 30)
    out = subprocess.run([CNNF, "defender", "status", "--netns", d2.netns, "--state-dir",
                          str(d2.state)], capture_output=True, text=True, check=True).stdout
    dropped = (d2.status() or {})["observation"]["dropped"]
    assert (f"observation (conntrack, enforcement off for a kind): 0 connection(s) waiting "
            f"to be recorded, {dropped} dropped") in out, out


def test_a_hosts_connection_to_another_hosts_container_is_recorded_once(
        cluster: Cluster) -> None:
    c = cluster
    api = c.lab.address_of("api")
    n2 = c.lab.address_of("node-2")
    assert api is not None and n2 is not None
    out = subprocess.run(["nsenter", f"--net={c.lab.netns('node-2')}", sys.executable, PROBE,
                          "connect", api, "8080", "--timeout", "2"],
                         capture_output=True, text=True, check=True).stdout
    # node-1 queued it (api is enforced, node-2's host is no protected workload):
    # no rule, the default prevents
    assert json.loads(out.splitlines()[-1])["outcome"] == "refused"

    def recorded(kind: str) -> list[tuple[str, str, Any]]:
        return [(d.host, r.get("mode", ""), r.get("blocked"))
                for d in c.defenders for r in d.records(kind)
                if r["src"].get("address") == n2 and r["dst"].get("container") == "api"
                and r["port"] == 8080]
    assert poll(lambda: recorded("flow") and recorded("audit"), 10)
    time.sleep(2)  # a second record (node-2's, "observed") would be out by now
    assert [(h, m) for h, m, _ in recorded("flow")] == [("node-1", "enforced")]
    assert [(h, b) for h, _, b in recorded("audit")] == [("node-1", True)]


def flows_from(c: Cluster, src: str, dst_address: str, port: int) -> list[dict[str, Any]]:
    return [f for d in c.defenders for f in d.records("flow")
            if f["src"].get("container") == src and f["dst"].get("address") == dst_address
            and f["port"] == port]


def test_a_masqueraded_containers_connection_is_recorded_once_with_its_identity(
        cluster: Cluster) -> None:
    c = cluster
    rev = c.apply(containerEnabled=False, hostEnabled=True)  # mixed: hosts enforced
    c.share_inventory()
    n1, n2 = c.lab.address_of("node-1"), c.lab.address_of("node-2")
    frontend = c.lab.address_of("frontend")
    assert n1 and n2 and frontend
    node1 = ["nsenter", f"--net={c.lab.netns('node-1')}", "iptables", "-w", "-t", "nat"]
    masq = ["POSTROUTING", "-s", frontend, "-d", n2, "-p", "tcp", "-m", "comment",
            "--comment", "cnnf-test masquerade", "-j", "MASQUERADE"]
    subprocess.run([*node1, "-I", *masq[:1], "1", *masq[1:]], check=True)
    try:
        for i in range(3):  # frontend -> node-2's host; node-2 sees node-1's address
            with subprocess.Popen(["nsenter", f"--net={c.lab.netns('node-2')}",
                                   sys.executable, PROBE, "listen", "7001", "--timeout", "5"],
                                  stdout=subprocess.PIPE, text=True) as server:
                assert server.stdout is not None
                assert json.loads(server.stdout.readline())["listening"] == 7001
                assert c.connect("frontend", "node-2", 7001).ok, i
                peer = json.loads(server.stdout.readline())
            assert n1 in json.dumps(peer), peer  # masqueraded
    finally:
        subprocess.run([*node1, "-D", *masq], check=True)
    # recorded by node-1's Defender (its source's), as the frontend, three times
    assert poll(lambda: sum(f["count"] for f in flows_from(c, "frontend", n2, 7001)) >= 3, 15)
    time.sleep(2)  # a second record (node-2's) would be out by now
    flows = flows_from(c, "frontend", n2, 7001)
    assert sum(f["count"] for f in flows) == 3, flows
    assert {(f["reporter"], f["mode"], f["revision"], f["src"]["image"], f["dst"]["host"],
             f["would_effect"]) for f in flows} == {
        ("node-1", "observed", rev, "shop/frontend:1.0", "node-2", "prevent")}
    # and nowhere as node-1's host
    assert not [r for d in c.defenders for r in d.records("flow")
                if r["src"].get("address") == n1 and r["port"] == 7001]


def test_a_flooding_container_cannot_push_out_another_ones_observed_connections(
        cluster: Cluster) -> None:
    import urllib.request

    c = cluster
    rev = c.apply(containerEnabled=False, hostEnabled=False)
    d1 = c.d1
    cache, frontend = c.lab.address_of("cache"), c.lab.address_of("frontend")
    assert cache and frontend
    flood_seconds = 8
    # frontend scans cache (a distinct connection per SYN) at 10,000 a second
    flood = subprocess.Popen(["nsenter", f"--net=/proc/{c.lab.container_pid('frontend')}/ns/net",
                              "timeout", str(flood_seconds), "hping3", "-S", "-p", "++1",
                              "-i", "u100", cache],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        for i in range(5):  # api's real connections, while the flood goes on
            assert c.connect("api", "cache", 6379).ok, i
        assert flood.poll() is None  # (the flood was on all along)
    finally:
        flood.wait(flood_seconds + 10)

    def api_cache() -> list[dict[str, Any]]:
        return [f for f in d1.records("flow") if f["revision"] == rev
                and f["src"].get("container") == "api" and f["dst"].get("container") == "cache"
                and f["port"] == 6379]
    # every one recorded, with what the policy would do (rule 2 alerts)
    assert poll(lambda: sum(f["count"] for f in api_cache()) == 5, 30), api_cache()
    assert {(f["mode"], f["would_effect"], f["would_rule_id"]) for f in api_cache()} == {
        ("observed", "alert", 2)}
    # the flood's excess dropped, counted against the frontend and logged
    obs = (d1.status() or {})["observation"]
    assert obs["dropped"] > 0, obs
    assert obs["top"][0]["address"] == frontend and obs["top"][0]["dropped"] > 0, obs
    logged = [e for e in map(json.loads, re.findall(r"^\{.*\}$", d1.log.read_text(), re.M))
              if e.get("event", "").startswith("observed connections dropped")]
    assert logged and logged[0]["source"] == frontend and logged[0]["dropped"] > 0, logged
    with urllib.request.urlopen(f"http://127.0.0.1:{c.metrics_port}/metrics",
                                timeout=5) as resp:
        metrics = resp.read().decode()
    m = re.search(r"^cnnf_defender_observed_dropped_total ([0-9.e+]+)$", metrics, re.M)
    assert m and float(m[1]) > 0, metrics
    # and what was taken was recorded: nothing is left waiting once it is over
    assert poll(lambda: ((d1.status() or {})["observation"])["waiting"] == 0, 30)


def test_a_conntrack_process_that_dies_is_started_again(cluster: Cluster) -> None:
    c = cluster
    rev = c.apply(containerEnabled=False, hostEnabled=False)
    d1 = c.d1
    assert d1.proc is not None
    pids = subprocess.run(["pgrep", "-P", str(d1.proc.pid), "-x", "conntrack"],
                          capture_output=True, text=True, check=False).stdout.split()
    assert pids, "no conntrack process under the Defender"
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    assert poll(lambda: (d1.status() or {})["observation"]["restarts"] >= 1
                and (d1.status() or {})["observation"]["running"], 15), d1.status()
    assert "conntrack observation had stopped: started again" in d1.log.read_text()
    assert c.connect("api", "cache", 6379).ok
    assert poll(lambda: [f for f in d1.records("flow") if f["revision"] == rev
                         and f["src"].get("container") == "api" and f["port"] == 6379], 15)
