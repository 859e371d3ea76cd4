"""Observation beside enforcement, for real (root, the lab ``cnnfobs``): with
containers enforced and hosts not, a flood of new connections from a host (each
one observed through conntrack and evaluated) does not stall the Defender: its
status keeps being written and the containers' blocked connections made during
the flood get their audits; and a host's connection to another host's container
is recorded once, by the Defender that queued and blocked it, not also as
observed and "not enforced" by the source's Defender."""

from __future__ import annotations

import json
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
    assert set(obs) == {"running", "waiting", "dropped"}, obs
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
