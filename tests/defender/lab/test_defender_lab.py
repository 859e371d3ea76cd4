"""The Defender for real: one ``cnnf defender run`` subprocess per lab host,
real containers connecting through it (root, the lab).

One session-scoped ``shop`` lab named ``cnnfdef`` serves the module. The two
Defenders share a ``--cluster-inventory`` file built from the inventories they
write (what a Console would merge and send back), so each knows the other
host's protected workloads. Most tests swap the policy file (which also tests
reload without restart) and wait for the Defenders to report the new revision.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.served import free_port

from cnnf.lab import ConnectResult, Lab
from cnnf.lab.lab import PROBE
from cnnf.lab.topology import Container
from cnnf.model.records import ClusterInventory, InventoryReport

pytestmark = pytest.mark.lab

LAB = "cnnfdef"
CNNF = str(Path(sys.executable).with_name("cnnf"))


def poll(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(every)


# ----------------------------------------------------------------- policies

OBJECTS: list[dict[str, Any]] = [
    {"kind": "container", "name": n, "selector": {"images": [f"shop/{n}"]}}
    for n in ("frontend", "api", "cache", "payments", "db", "worker", "late")
] + [
    {"kind": "subnet", "name": "internet", "cidrs": ["203.0.113.0/24"]},
    {"kind": "dns", "name": "partner", "domains": ["api.partner.example"]},
    {"kind": "host", "name": "node-1", "selector": {"hosts": ["node-1"]}},
    {"kind": "host", "name": "node-2", "selector": {"hosts": ["node-2"]}},
]

RULES: list[dict[str, Any]] = [
    {"id": 1, "name": "frontend-to-api", "src": "frontend", "dst": "api", "ports": [8080],
     "effect": "allow"},
    {"id": 2, "name": "api-to-cache", "src": "api", "dst": "cache", "ports": [6379],
     "effect": "alert"},
    {"id": 3, "name": "frontend-not-cache", "src": "frontend", "dst": "cache", "ports": ["*"],
     "effect": "prevent"},
    {"id": 4, "name": "api-to-payments", "src": "api", "dst": "payments",
     "ports": ["9000-9100"], "effect": "alert"},
    {"id": 5, "name": "api-to-db", "src": "api", "dst": "db", "ports": [5432], "effect": "allow"},
    {"id": 6, "name": "frontend-not-payments", "src": "frontend", "dst": "payments",
     "ports": ["*"], "effect": "prevent"},
    {"id": 7, "name": "payments-to-partner", "src": "payments", "dst": "partner",
     "ports": [443], "effect": "allow"},
    {"id": 8, "name": "worker-web", "src": "worker", "dst": "internet", "ports": [80],
     "effect": "allow"},
    {"id": 9, "name": "late-to-api", "src": "late", "dst": "api", "ports": [8080],
     "effect": "alert"},
]


def policy(revision: int, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "revision": revision, "containerEnabled": True, "hostEnabled": False,
        "defaultEffect": "prevent", "blockMode": "reset", "objects": OBJECTS,
        "containerRules": RULES, "hostRules": [],
    }
    body.update(spec)
    return {"apiVersion": "cnnf/v1", "kind": "Policy", "spec": body}


# ----------------------------------------------------------------- Defenders


class Defender:
    """``cnnf defender run`` for one lab host, as a subprocess."""

    def __init__(self, lab: Lab, host: str, workdir: Path, policy_file: Path,
                 cluster_file: Path, *, docker_host: str | None = None,
                 console: tuple[str, str] | None = None) -> None:
        self.lab, self.host = lab, host
        if lab.runtime(host) == "containerd":  # a Kubernetes-like node: pods through the CRI
            self.discovery = ["--runtime", "cri", "--cri-socket", lab.cri_socket(host)]
        else:
            self.discovery = ["--docker-host", docker_host or lab.docker_host(host)]
        self.console = console  # (URL, enrollment token): managed instead of --policy
        self.state = workdir / f"state-{host}"
        self.output = workdir / f"{host}.jsonl"
        self.log = workdir / f"{host}.log"
        self.policy_file, self.cluster_file = policy_file, cluster_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.read_records = 0
        self.metrics_port: int | None = None  # kept across restarts

    @property
    def netns(self) -> str:
        return self.lab.netns(self.host)

    def start(self, *extra: str) -> None:
        source = (["--console", self.console[0], "--token", self.console[1]] if self.console
                  else ["--policy", str(self.policy_file),
                        "--cluster-inventory", str(self.cluster_file)])
        argv = [CNNF, "defender", "run", "--netns", self.netns,
                *self.discovery, "--hostname", self.host, *source,
                "--state-dir", str(self.state), "--output", str(self.output),
                "--audit-window", "0.5", "--repair-interval", "1", "--label", f"lab={LAB}",
                *(("--metrics", f"127.0.0.1:{self.metrics_port}") if self.metrics_port else ()),
                *extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        assert poll(lambda: (self.status() or {}).get("pid") == self.proc.pid  # type: ignore[union-attr]
                    or self.proc.poll() is not None, 30), self.log.read_text()[-2000:]  # type: ignore[union-attr]
        assert self.proc.poll() is None, self.log.read_text()[-2000:]

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.state / "status.json").read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None

    def inventory(self) -> InventoryReport:
        return InventoryReport.model_validate_json((self.state / "inventory.json").read_bytes())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def records(self, kind: str) -> list[dict[str, Any]]:
        if not self.output.exists():
            return []
        # complete lines only: the Defender may be writing the last one
        lines = self.output.read_text().split("\n")[:-1]
        return [r for r in map(json.loads, lines) if r["record"] == kind]

    def wait_revision(self, revision: int) -> None:
        assert poll(lambda: (self.status() or {}).get("policy_revision") == revision, 15), (
            self.log.read_text()[-2000:])

    def kernel_state(self) -> tuple[str, str]:
        ipt = subprocess.run(["nsenter", f"--net={self.netns}", "iptables-save"],
                             capture_output=True, text=True, check=True).stdout
        rules = "\n".join(sorted(ln for ln in ipt.splitlines()
                                 if "CNNF-" in ln or re.search(r'--comment "?cnnf"?( |$)', ln)))
        sets = subprocess.run(["nsenter", f"--net={self.netns}", "ipset", "list", "-n"],
                              capture_output=True, text=True, check=True).stdout
        return rules, "\n".join(sorted(s for s in sets.split() if s.startswith("cnnf")))

    def queues(self) -> str:
        return subprocess.run(["nsenter", f"--net={self.netns}", "cat",
                               "/proc/net/netfilter/nfnetlink_queue"],
                              capture_output=True, text=True, check=False).stdout.strip()


class Cluster:
    def __init__(self, lab: Lab, workdir: Path,
                 policy_doc: dict[str, Any] | None = None) -> None:
        self.lab = lab
        self.workdir = workdir
        self.policy_file = workdir / "policy.json"
        self.cluster_file = workdir / "cluster.json"
        self.revision = 1
        self.write_policy(policy_doc or policy(1))
        self.cluster_file.write_text(ClusterInventory(revision=0).model_dump_json())
        self.d1 = Defender(lab, "node-1", workdir, self.policy_file, self.cluster_file)
        self.d2 = Defender(lab, "node-2", workdir, self.policy_file, self.cluster_file)

    @property
    def defenders(self) -> list[Defender]:
        return [self.d1, self.d2]

    def write_policy(self, doc: dict[str, Any]) -> None:
        tmp = self.policy_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.policy_file)

    def apply(self, **spec: Any) -> int:
        """A new policy revision, applied by both Defenders (no restart)."""
        self.revision += 1
        self.write_policy(policy(self.revision, **spec))
        for d in self.defenders:
            if d.proc is not None:
                d.wait_revision(self.revision)
        return self.revision

    def share_inventory(self) -> None:
        """Merge the Defenders' inventories into the cluster file (the Console's job)."""
        reports = [d.inventory() for d in self.defenders]
        inv = ClusterInventory(revision=int(time.time() * 1000), hosts=[r.host for r in reports],
                               containers=[c for r in reports for c in r.containers])
        tmp = self.cluster_file.with_suffix(".tmp")
        tmp.write_text(inv.model_dump_json())
        os.replace(tmp, self.cluster_file)
        for d in self.defenders:
            assert poll(lambda d=d: (d.status() or {}).get("cluster_revision") == inv.revision,
                        10)

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = s.getsockname()[1]
        self.d1.metrics_port = self.metrics_port
        self.d1.start()
        self.d2.start()
        self.share_inventory()

    def connect(self, src: str, dst: str, port: int, timeout: float = 2.0) -> ConnectResult:
        return self.lab.connect(src, dst, port, timeout=timeout)


def running_cluster(name: str, workdir: Path, *tools: str, topology: str = "shop",
                    policy_doc: dict[str, Any] | None = None) -> Iterator[Cluster]:
    """A lab (``shop`` unless told) named ``name`` with a standalone Defender per
    host; after the module: the Defenders stopped, whatever they left removed (a
    fail-closed stop leaves its rules), the lab down."""
    engine = "containerd" if topology == "kube" else "podman"
    if os.geteuid() != 0 or not all(shutil.which(t) for t in (engine, *tools)):
        pytest.fail(f"the lab needs root and {', '.join((engine, *tools))} (make deps)")
    lab = Lab.up(topology, name=name)
    c = Cluster(lab, workdir, policy_doc)
    try:
        c.start()
        yield c
    finally:
        for d in c.defenders:
            if d.proc is not None:
                d.stop()
            subprocess.run([CNNF, "defender", "cleanup", "--netns", d.netns],
                           capture_output=True, check=False)
        Lab.down(name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(LAB, tmp_path_factory.mktemp("defender"))


def flows(c: Cluster, src: str, dst: str, port: int) -> list[dict[str, Any]]:
    out = []
    for d in c.defenders:
        for r in d.records("flow"):
            if (r["src"].get("container") == src and r["port"] == port
                    and dst in (r["dst"].get("container"), r["dst"].get("address"),
                                r["dst"].get("domain"))):
                out.append(r)
    return out


def audits(c: Cluster, src: str, port: int) -> list[dict[str, Any]]:
    return [r for d in c.defenders for r in d.records("audit")
            if r["src"].get("container") == src and r["port"] == port]


# ----------------------------------------------------------------- tests


def test_allow_alert_prevent_on_one_host(cluster: Cluster) -> None:
    c = cluster
    assert c.connect("frontend", "api", 8080).ok
    assert c.connect("api", "cache", 6379).ok  # alert: allowed and audited
    blocked = c.connect("frontend", "cache", 6379)
    assert blocked.outcome == "refused", blocked  # prevent, reset: refused at once
    assert poll(lambda: flows(c, "frontend", "cache", 6379))
    (f,) = flows(c, "frontend", "cache", 6379)
    assert (f["effect"], f["rule_id"], f["rule_name"], f["mode"]) == (
        "prevent", 3, "frontend-not-cache", "enforced")
    assert f["src"]["image"] == "shop/frontend:1.0" and f["dst"]["namespace"] == "shop-data"
    assert poll(lambda: audits(c, "api", 6379)) and poll(lambda: audits(c, "frontend", 6379))
    (alert,) = audits(c, "api", 6379)
    assert alert["blocked"] is False and alert["rule_name"] == "api-to-cache"
    (prevent,) = audits(c, "frontend", 6379)
    assert prevent["blocked"] is True and prevent["dst"]["container"] == "cache"
    assert flows(c, "frontend", "api", 8080)[0]["effect"] == "allow"


def test_metrics_endpoint(cluster: Cluster) -> None:
    """Expectations from the cluster as it is now, whatever ran before: the
    revision just applied, node-1's running containers."""
    import urllib.request

    c = cluster
    revision = c.apply()  # the base policy (containers enforced), a new revision

    def metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{c.metrics_port}/metrics",
                                    timeout=5) as resp:
            return str(resp.read().decode())

    running = [x for h in c.lab.status()["hosts"] if h["name"] == "node-1"
               for x in h["containers"] if x["state"] == "running"]
    assert running
    def applied() -> str:
        text = metrics()
        return text if f"cnnf_defender_policy_revision {revision}.0" in text else ""

    text = poll(applied)
    assert text, metrics()
    assert 'cnnf_defender_verdicts_total{decision="accept"}' in text
    assert f"cnnf_defender_protected_workloads {len(running)}.0" in text


def test_a_deleted_rule_or_member_is_put_back_and_logged(cluster: Cluster) -> None:
    c = cluster
    d = c.d1
    state = d.kernel_state()
    jump = next(ln for ln in state[0].splitlines() if ln.startswith("-A FORWARD"))
    frontend = c.lab.container("frontend").address
    subprocess.run(["nsenter", f"--net={d.netns}", "iptables", "-D", *shlex.split(jump)[1:]],
                   check=True)
    subprocess.run(["nsenter", f"--net={d.netns}", "ipset", "del", "cnnf-local4", frontend],
                   check=True)
    assert d.kernel_state() != state

    def members() -> list[str]:
        return subprocess.run(["nsenter", f"--net={d.netns}", "ipset", "list", "cnnf-local4"],
                              capture_output=True, text=True, check=True).stdout.split()

    assert poll(lambda: d.kernel_state() == state and frontend in members(), 10)
    assert poll(lambda: "repaired kernel state" in d.log.read_text())
    assert c.connect("frontend", "cache", 6379).outcome == "refused"


def test_a_second_defender_on_the_queue_is_a_clear_error_and_changes_nothing(
    cluster: Cluster,
) -> None:
    c = cluster
    d = c.d1
    state = d.kernel_state()
    proc = subprocess.run(
        [CNNF, "defender", "run", "--netns", d.netns, "--docker-host",
         c.lab.docker_host("node-1"), "--hostname", "node-1", "--policy", str(c.policy_file),
         "--state-dir", str(c.workdir / "second")],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "NFQUEUE 4200 is already bound" in proc.stderr
    assert d.kernel_state() == state
    assert d.proc is not None and d.proc.poll() is None
    assert c.connect("frontend", "cache", 6379).outcome == "refused"


def test_across_hosts_each_attempt_is_evaluated_and_audited_once(cluster: Cluster) -> None:
    c = cluster
    assert c.connect("api", "payments", 9090).ok  # range 9000-9100, alert
    assert c.connect("frontend", "payments", 9090).outcome == "refused"  # '*', prevent
    assert c.connect("api", "db", 5432).ok
    assert poll(lambda: audits(c, "api", 9090) and flows(c, "frontend", "payments", 9090))
    # node-2's Defender saw those SYNs arrive; had it (wrongly) evaluated them, its
    # reports would be out no later than those of a SYN it decides afterwards.
    assert c.connect("payments", "db", 5433).outcome == "refused"  # node-2: default
    assert poll(lambda: [f for f in flows(c, "payments", "db", 5433)
                         if f["reporter"] == "node-2"])
    (f,) = flows(c, "api", "payments", 9090)
    assert f["count"] == 1 and f["reporter"] == "node-1" and f["rule_name"] == "api-to-payments"
    assert f["dst"]["host"] == "node-2" and f["dst"]["image"] == "shop/payments:1.4"
    (a,) = audits(c, "api", 9090)
    assert a["count"] == 1 and a["dst"]["container"] == "payments"
    (blocked,) = flows(c, "frontend", "payments", 9090)
    assert blocked["effect"] == "prevent" and blocked["rule_id"] == 6
    assert flows(c, "api", "db", 5432)[0]["rule_name"] == "api-to-db"


def test_port_outside_the_range_gets_the_default(cluster: Cluster) -> None:
    c = cluster
    refused = c.connect("api", "payments", 22)
    assert refused.outcome == "refused"
    assert poll(lambda: flows(c, "api", "payments", 22))
    (f,) = flows(c, "api", "payments", 22)
    assert f["matched"] is False and f["effect"] == "prevent"


def test_dns_rule_matches_the_name_the_container_resolved(cluster: Cluster) -> None:
    c = cluster
    ok = c.connect("payments", "api.partner.example", 443)
    assert ok.ok, ok
    other = c.connect("payments", "www.example.com", 443)
    assert other.outcome == "refused", other  # same subnet, no rule: default prevent
    assert poll(lambda: flows(c, "payments", "api.partner.example", 443))
    (f,) = flows(c, "payments", "api.partner.example", 443)
    assert f["rule_name"] == "payments-to-partner" and f["dst"]["address"] == "203.0.113.20"


def test_subnet_rule(cluster: Cluster) -> None:
    c = cluster
    assert c.connect("worker", "internet", 80).ok
    assert c.connect("worker", "internet", 443).outcome == "refused"
    assert poll(lambda: flows(c, "worker", "203.0.113.10", 80))
    assert flows(c, "worker", "203.0.113.10", 80)[0]["rule_name"] == "worker-web"


def test_reset_and_drop_as_the_client_sees_them(cluster: Cluster) -> None:
    c = cluster
    reset = c.connect("frontend", "cache", 6379, timeout=3)
    assert reset.outcome == "refused" and reset.ms < 1000, reset
    c.apply(blockMode="drop")
    dropped = c.connect("frontend", "cache", 6379, timeout=1.5)
    assert dropped.outcome == "timeout", dropped
    c.apply()
    assert c.connect("frontend", "cache", 6379).outcome == "refused"


def test_reload_changes_verdicts_and_a_bad_file_keeps_the_policy(cluster: Cluster) -> None:
    c = cluster
    assert c.connect("frontend", "cache", 6379).outcome == "refused"
    rules = [r for r in RULES if r["id"] != 3]
    c.apply(containerRules=[*rules, {**RULES[2], "effect": "allow"}])
    assert c.connect("frontend", "cache", 6379).ok
    c.policy_file.write_text('{"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {"bogus": 1}}')
    assert poll(lambda: "policy reload failed" in c.d1.log.read_text(), 5)
    assert c.connect("frontend", "cache", 6379).ok  # still the previous policy
    assert c.d1.proc is not None and c.d1.proc.poll() is None
    c.apply()
    assert c.connect("frontend", "cache", 6379).outcome == "refused"


def test_disabled_mode_enforces_nothing_but_observes(cluster: Cluster) -> None:
    c = cluster
    before = c.d1.queues()
    c.apply(containerEnabled=False)
    assert poll(lambda: (c.d1.status() or {}).get("protected") == [])
    assert c.connect("frontend", "cache", 6379).ok
    assert c.connect("worker", "internet", 443).ok
    assert c.d1.queues() == before  # nothing was queued
    assert poll(lambda: [f for f in flows(c, "frontend", "cache", 6379)
                         if f["mode"] == "observed"])
    assert poll(lambda: [f for f in flows(c, "worker", "203.0.113.10", 443)
                         if f["mode"] == "observed"])
    c.apply()
    assert c.connect("frontend", "cache", 6379).outcome == "refused"


def test_host_rule(cluster: Cluster) -> None:
    c = cluster
    lab = c.lab
    n2 = lab.address_of("node-2")
    assert n2 is not None
    c.apply(containerEnabled=False, hostEnabled=True, hostRules=[
        {"id": 1, "name": "node1-to-node2", "src": "node-1", "dst": "node-2", "ports": [7001],
         "effect": "allow"}])
    c.share_inventory()
    listeners = [subprocess.Popen(["nsenter", f"--net={lab.netns('node-2')}", sys.executable,
                                   PROBE, "listen", str(p), "--timeout", "15"],
                                  stdout=subprocess.PIPE, text=True) for p in (7001, 7002)]
    try:
        for li in listeners:
            assert li.stdout is not None and "listening" in li.stdout.readline()

        def host_connect(port: int) -> str:
            out = subprocess.run(["nsenter", f"--net={lab.netns('node-1')}", sys.executable,
                                  PROBE, "connect", n2, str(port), "--timeout", "2"],
                                 capture_output=True, text=True, check=True).stdout
            return str(json.loads(out.splitlines()[-1])["outcome"])

        assert host_connect(7001) == "connected"
        assert host_connect(7002) == "refused"
    finally:
        for li in listeners:
            li.kill()
            li.wait()
            if li.stdout is not None:
                li.stdout.close()
    f = poll(lambda: [r for r in c.d1.records("flow") if r["port"] == 7001
                      and r["src"]["kind"] == "host"])
    assert f and f[0]["dst"]["host"] == "node-2" and f[0]["rule_kind"] == "host"
    c.apply()
    c.share_inventory()


def test_container_started_later_is_protected_from_its_first_connection(
    cluster: Cluster,
) -> None:
    c = cluster
    lab = c.lab
    info = lab.start_container(Container(name="late", host="node-1", image="shop/late:0.1",
                                         namespace="shop-web", labels={"app": "late"}))
    try:
        # No rule for late: default prevent. If the SYN beats the runtime's start
        # event, it is dropped once (not yet named) and its retransmission refused.
        first = c.connect("late", "internet", 80, timeout=3)
        assert first.outcome == "refused", first
        assert c.connect("late", "api", 8080).ok
        (f,) = poll(lambda: flows(c, "late", "203.0.113.10", 80))
        assert f["src"]["image"] == "shop/late:0.1" and f["src"]["address"] == info.address
        assert poll(lambda: (c.d1.status() or {})["start_to_protected_ms"]["count"] >= 1)
        assert "start_to_protected_ms" in c.d1.log.read_text()
    finally:
        lab.remove_container("late")
    assert poll(lambda: info.address not in {p["address"] for p in
                                             (c.d1.status() or {}).get("protected", [])})


@pytest.mark.parametrize("fail_closed", [True, False], ids=["fail-closed", "fail-open"])
def test_without_discovery_container_addresses_are_never_let_through_unevaluated(
    cluster: Cluster, tmp_path: Path, fail_closed: bool
) -> None:
    """The engine is unreachable, so nobody on the container networks is named.
    Fail-closed holds their SYNs back; fail-open decides them as unknown
    addresses (here the default, prevent: refused at once, with an audit)."""
    c = cluster
    c.d1.stop()
    blind = Defender(c.lab, "node-1", tmp_path, c.policy_file, c.cluster_file,
                     docker_host=f"unix://{tmp_path}/no-engine.sock")
    blind.start(*(["--fail-closed"] if fail_closed else []))
    try:
        assert (blind.status() or {}).get("container_networks")
        result = c.connect("frontend", "api", 8080, timeout=1.5)
        log = blind.log.read_text()
        assert '"container engine unreachable"' in log
        if fail_closed:
            assert result.outcome == "timeout", result  # held, never waved through
            assert "not discovered yet" in log
        else:
            assert result.outcome == "refused", result  # evaluated: default prevent
            assert poll(lambda: any(
                r["src"]["kind"] == "address" and r["port"] == 8080 and r["blocked"]
                for r in blind.records("audit")), 10), blind.records("audit")
    finally:
        blind.stop()
    c.d1.start()
    assert c.connect("frontend", "api", 8080).ok


def test_kill9_fail_open_restart_without_duplicates(cluster: Cluster) -> None:
    c = cluster
    d = c.d1
    state = d.kernel_state()
    assert "CNNF-FORWARD" in state[0] and "cnnf-local4" in state[1]
    d.stop(signal.SIGKILL)
    assert poll(lambda: "4200" not in d.queues(), 10)
    # fail-open: bypassed, no listener (a cached verdict lapses with the
    # Defender's heartbeat, within 3 s)
    assert poll(lambda: c.connect("frontend", "cache", 6379).ok, 6)
    assert d.kernel_state() == state  # rules stay until a restart or cleanup
    d.start()
    assert d.kernel_state() == state  # leftovers replaced, nothing doubled
    assert poll(lambda: c.connect("frontend", "cache", 6379).outcome == "refused", 10)


def test_kill9_fail_closed_then_cleanup_leaves_nothing(cluster: Cluster) -> None:
    c = cluster
    d = c.d1
    assert d.stop(signal.SIGINT) == 0
    assert d.kernel_state() == ("", "")  # SIGINT removed everything
    assert "4200" not in d.queues()
    d.start()
    assert d.kernel_state() != ("", "")
    assert d.stop(signal.SIGTERM) == 0
    assert d.kernel_state() == ("", "")  # and so does SIGTERM
    d.start("--fail-closed")
    assert c.connect("frontend", "api", 8080).ok
    d.stop(signal.SIGKILL)
    # fail-closed: nobody decides, so refused at once with a reset (not left
    # hanging), once the dead Defender's cached allow lapsed (3 s)
    blocked = poll(lambda: (r := c.connect("frontend", "api", 8080, timeout=1.5))
                   .outcome == "refused" and r, 6)
    assert blocked and blocked.ms < 1000, blocked
    out = subprocess.run([CNNF, "defender", "cleanup", "--netns", d.netns],
                         capture_output=True, text=True, check=True).stdout
    assert "cleanup done" in out
    assert d.kernel_state() == ("", "")
    assert "4200" not in d.queues()
    assert c.connect("frontend", "cache", 6379).ok  # no Defender, nothing enforced
    d.start()
    assert c.connect("frontend", "cache", 6379).outcome == "refused"


def test_status_command_shows_workloads_queues_and_counters(cluster: Cluster) -> None:
    c = cluster
    out = subprocess.run([CNNF, "defender", "status", "--netns", c.d2.netns, "--state-dir",
                          str(c.d2.state)], capture_output=True, text=True, check=True).stdout
    assert "defender: running" in out and "containers enabled" in out
    for name in ("payments", "db", "worker"):
        assert name in out
    assert "queue 4200" in out and "verdicts: accepted" in out
    # Only the state dir: the queues are still those of the Defender's namespace.
    out = subprocess.run([CNNF, "defender", "status", "--state-dir", str(c.d2.state)],
                         capture_output=True, text=True, check=True).stdout
    assert "queue 4200" in out


# ----------------------------------------------------------------- managed by a Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_link import TOKEN, FakeConsole, handler_for  # noqa: E402  (the in-test Console)


def test_managed_defender_enrolls_follows_the_console_and_spools_when_it_is_down(
    cluster: Cluster,
) -> None:
    import threading
    from http.server import ThreadingHTTPServer

    from cnnf.policy.document import load_policy

    c = cluster
    if c.d2.proc is not None:
        c.d2.stop()
    fake = FakeConsole()
    fake.policy, fake.policy_revision = load_policy(policy(100)), 100
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(fake))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    state = c.workdir / "managed"
    d = Defender(c.lab, "node-2", c.workdir, c.policy_file, c.cluster_file)
    d.state, d.output = state, c.workdir / "managed.jsonl"
    base = ["--console", url, "--state-dir", str(state), "--audit-window", "0.5"]

    def start(*extra: str) -> subprocess.Popen[bytes]:
        argv = [CNNF, "defender", "run", "--netns", d.netns, "--docker-host",
                c.lab.docker_host("node-2"), "--hostname", "node-2", *base, *extra]
        with open(d.log, "ab") as log:
            d.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        assert poll(lambda: (d.status() or {}).get("pid") == d.proc.pid, 30), (  # type: ignore[union-attr]
            d.log.read_text()[-2000:])
        return d.proc  # type: ignore[return-value]

    def console_flows(port: int) -> list[Any]:
        return [f for b in list(fake.batches.values()) for f in b.flows
                if f.src.container == "worker" and f.port == port]

    try:
        start("--token", TOKEN)
        d.wait_revision(100)
        assert fake.enrolls == 1 and (state / "credential").exists()
        assert poll(lambda: fake.inventories and {w.name for w in fake.inventories[-1].containers}
                    == {"payments", "db", "worker"})
        assert c.connect("worker", "internet", 443).outcome == "refused"  # default prevent
        assert poll(lambda: console_flows(443), 10)
        assert any(a.port == 443 and a.blocked for b in fake.batches.values() for a in b.audits)

        fake.down = True  # the Console goes away: batches wait in the spool
        assert c.connect("worker", "internet", 80).ok
        assert poll(lambda: ((d.status() or {}).get("console") or {}).get("spool_batches"), 10)
        assert not console_flows(80)
        fake.down = False
        assert poll(lambda: console_flows(80), 15)  # delivered once it is back

        rules = [*RULES, {"id": 10, "name": "worker-https", "src": "worker", "dst": "internet",
                          "ports": [443], "effect": "allow"}]
        fake.set_policy(load_policy(policy(0, containerRules=rules)))  # revision 101
        d.wait_revision(101)
        assert c.connect("worker", "internet", 443).ok
        d.stop()
    finally:
        server.shutdown()
        server.server_close()
    # Restart with the Console unreachable and no token: the saved policy applies.
    start()
    d.wait_revision(101)
    assert c.connect("worker", "internet", 443).ok
    assert "console unreachable at start" in d.log.read_text()
    d.stop()
    assert d.kernel_state() == ("", "")


# ----------------------------------------------------------------- with the real Console


@contextlib.contextmanager
def console_process(tmp_path: Path) -> Iterator[tuple[str, str, Any]]:
    """A real Console (its own process and SQLite store) on a free loopback
    port, an admin logged in: (URL, enrollment token, an authorised client)."""
    import httpx

    data = tmp_path / "console"
    password = "defender-e2e-password"
    subprocess.run([CNNF, "console", "create-user", "admin", "--password-stdin",
                    "--data-dir", str(data)], input=password + "\n", text=True, check=True,
                   capture_output=True)
    token = subprocess.run([CNNF, "console", "enrollment-token", "--data-dir", str(data)],
                           capture_output=True, text=True, check=True).stdout.strip()
    url = f"http://127.0.0.1:{free_port()}"
    with open(tmp_path / "console.log", "wb") as log:
        console = subprocess.Popen([CNNF, "console", "--listen", url[7:], "--data-dir",
                                    str(data), "--log-level", "warning"], stdout=log, stderr=log)
    http = httpx.Client(base_url=url, timeout=10)

    def up() -> bool:
        try:
            return http.get("/api/v1/defenders").status_code == 401
        except httpx.HTTPError:
            return False

    try:
        assert poll(up, 30), (tmp_path / "console.log").read_text()[-2000:]
        login = http.post("/api/v1/auth/login", json={"username": "admin", "password": password})
        assert login.status_code == 200, login.text
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        yield url, token, http
    finally:
        console.terminate()
        console.wait(30)
        http.close()


def test_console_end_to_end_one_defender_per_host(cluster: Cluster, tmp_path: Path) -> None:
    """A real Console (its own process and store) and one managed Defender per lab
    host: enrollment, policy from the Console, the merged cluster inventory, each
    attempt evaluated and audited once, reports in the Console, a policy change."""
    c = cluster
    for d in c.defenders:
        if d.proc is not None:
            d.stop()
    with console_process(tmp_path) as (url, token, http):
        defenders = [Defender(c.lab, h, tmp_path, c.policy_file, c.cluster_file,
                              console=(url, token)) for h in ("node-1", "node-2")]
        try:
            def apply(doc: dict[str, Any]) -> int:
                r = http.post("/api/v1/policy/import", json=doc)
                assert r.status_code == 200 and r.json()["applied"], r.text
                return int(r.json()["revision"])

            revision = apply(policy(0))
            for d in defenders:
                d.start()
            for d in defenders:
                d.wait_revision(revision)
            listed = http.get("/api/v1/defenders").json()
            assert sorted(x["hostname"] for x in listed) == ["node-1", "node-2"]

            def cluster_known() -> bool:
                inv = http.get("/api/v1/inventory").json()
                return len(inv["containers"]) == 6 and all(
                    (d.status() or {}).get("cluster_revision") == inv["revision"]
                    for d in defenders)

            assert poll(cluster_known, 20)

            assert c.connect("api", "payments", 9090).ok  # alert, across hosts
            assert c.connect("frontend", "payments", 9090).outcome == "refused"  # prevent

            def audits_of(rule: str) -> list[dict[str, Any]]:
                page = http.get("/api/v1/audits", params={"rule": rule}).json()
                return list(page["items"])

            assert poll(lambda: audits_of("api-to-payments") and audits_of("frontend-not-payments"),
                        15)
            # A second (wrong) evaluation by node-2's Defender would reach the Console no
            # later than the audit of a SYN node-2 decides afterwards (its reports go in order).
            assert c.connect("payments", "db", 5433).outcome == "refused"  # node-2: default

            def node2_marker() -> list[dict[str, Any]]:
                page = http.get("/api/v1/audits", params={
                    "src_image": "shop/payments*", "dst_image": "shop/db*"}).json()
                return [a for a in page["items"] if a["port"] == 5433 and a["defender"] == "node-2"]

            assert poll(node2_marker, 15)
            (alert,) = audits_of("api-to-payments")
            assert alert["count"] == 1 and alert["blocked"] is False
            (blocked,) = audits_of("frontend-not-payments")
            assert blocked["count"] == 1 and blocked["blocked"] is True
            flows = http.get("/api/v1/flows", params={"port": 9090}).json()["items"]
            assert sorted((f["verdict"], f["count"]) for f in flows) == [
                ("alert", 1), ("prevent", 1)]

            assert c.connect("frontend", "cache", 6379).outcome == "refused"
            rules = [r for r in RULES if r["id"] != 3]
            revision = apply(policy(0, containerRules=[*rules, {**RULES[2], "effect": "allow"}]))
            for d in defenders:
                d.wait_revision(revision)
            assert c.connect("frontend", "cache", 6379).ok
        finally:
            for d in defenders:
                if d.proc is not None:
                    d.stop()
    for d in defenders:
        assert d.kernel_state() == ("", "")
