"""The Defender runtime's pure parts, without a kernel: the verdict workers'
decide object, the address sets per mode, the cluster inventory mapping,
configuration errors, JSON lines output and the metrics collector."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cnnf.defender import core
from cnnf.defender.agent import (
    MAX_BATCH_RECORDS,
    SPOOF_REPORT_INTERVAL,
    UNIDENTIFIED,
    UNNAMED_HOLD_SECONDS,
    Agent,
    InventoryUpdate,
    PolicyUpdate,
    VerdictDecide,
    _remote_identities,
    in_kernel,
    verdict_from_detail,
)
from cnnf.defender.config import ConfigError, DefenderConfig, parse_labels, parse_listen
from cnnf.defender.datapath import AddressSet, DatapathStats, Decision, PacketInfo
from cnnf.defender.datapath.backend import Port
from cnnf.defender.datapath.workers import OUTSIDE_REST_NAME
from cnnf.defender.discovery.identity import DiscoveredContainer
from cnnf.defender.inventory import Inventory
from cnnf.defender.metrics import DefenderCollector, Figures
from cnnf.defender.outputs import JsonLinesOutput
from cnnf.defender.spool import Spool
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
)
from cnnf.model.records import ClusterInventory, HostInfo, WorkloadInfo
from cnnf.policy.engine import compile_policy

NODE = HostIdentity(name="node-1", addresses=("10.0.0.1",))
WEB = ContainerIdentity(image="shop/web:1.0", name="web-1", namespace="shop", host="node-1")
DB = ContainerIdentity(image="shop/db:13", name="db-1", namespace="shop", host="node-2")

POLICY = Policy(
    container_enabled=True,
    default_effect=Effect.ALLOW,
    objects=(
        ContainerObject(name="web", selector=ContainerSelector(images=("shop/web",))),
        ContainerObject(name="db", selector=ContainerSelector(images=("shop/db",))),
        DnsObject(name="partner", domains=("api.partner.example",)),
    ),
    container_rules=(
        Rule(id=1, name="web-db", src="web", dst="db", ports=5432, effect=Effect.ALERT),
        Rule(id=2, name="web-db-rest", src="web", dst="db", effect=Effect.PREVENT),
        Rule(id=3, name="web-partner", src="web", dst="partner", ports=443,
             effect=Effect.PREVENT),
    ),
    revision=3,
)
INV = InventoryUpdate(NODE, (("10.1.0.2", WEB),), (("10.2.0.5", DB),))


def packet(dst: str, port: int, domains: tuple[str, ...] = ()) -> PacketInfo:
    return PacketInfo(4, "10.1.0.2", dst, 40000, port, dst_domains=domains)


@pytest.mark.parametrize(
    ("pkt", "block_mode", "decision", "rule"),
    [
        (packet("10.2.0.5", 5432), BlockMode.RESET, Decision.ACCEPT_AUDIT, 1),
        (packet("10.2.0.5", 22), BlockMode.RESET, Decision.REJECT, 2),
        (packet("10.2.0.5", 22), BlockMode.DROP, Decision.DROP, 2),
        (packet("198.51.100.7", 443, ("api.partner.example",)), BlockMode.RESET,
         Decision.REJECT, 3),
        (packet("198.51.100.7", 443), BlockMode.RESET, Decision.ACCEPT, None),
    ],
)
def test_verdict_decide_maps_verdicts_to_datapath_decisions(
    pkt: PacketInfo, block_mode: BlockMode, decision: Decision, rule: int | None
) -> None:
    decide = VerdictDecide(POLICY.model_copy(update={"block_mode": block_mode}), INV)
    out = decide(pkt)
    assert out.decision == decision
    # The detail crosses a process boundary in the worker's report batches as
    # plain values, and turns back into the very verdict the engine gave.
    assert isinstance(out.detail, tuple)
    verdict = verdict_from_detail(pickle.loads(pickle.dumps(out.detail)))
    expected = decide.decider.decide(pkt.src, pkt.dst, pkt.dport, pkt.dst_domains).verdict
    assert verdict == expected
    assert verdict.rule_id == rule and verdict.revision == 3


def test_updates_swap_policy_and_inventory() -> None:
    decide = VerdictDecide(POLICY, InventoryUpdate(NODE, (), ()))
    assert decide(packet("10.2.0.5", 22)).decision == Decision.ACCEPT  # nobody known yet
    decide.update(pickle.loads(pickle.dumps(INV)))  # messages are pickled to the workers
    assert decide(packet("10.2.0.5", 22)).decision == Decision.REJECT
    decide.update(PolicyUpdate(POLICY.model_copy(update={"container_rules": ()})))
    assert decide(packet("10.2.0.5", 22)).decision == Decision.ACCEPT
    decide.update("something else")  # ignored
    assert decide(packet("10.2.0.5", 22)).decision == Decision.ACCEPT


def test_unnamed_addresses_of_the_container_networks_are_dropped_until_named() -> None:
    node = HostIdentity(name="node-1", addresses=("10.0.0.1", "10.1.0.1"))
    nets = ("10.1.0.0/24",)
    remote = (("10.2.0.5", DB),)
    decide = VerdictDecide(POLICY, InventoryUpdate(node, (("10.1.0.2", WEB),), remote, nets))
    assert len(decide.pending) == 253  # .1 is the host's own (the bridge)
    out = decide(PacketInfo(4, "10.1.0.9", "10.2.0.5", 40000, 22))
    assert (out.decision, out.detail) == (Decision.DROP, UNIDENTIFIED)
    out = decide(PacketInfo(4, "198.51.100.7", "10.1.0.9", 40000, 80))  # inbound to it
    assert (out.decision, out.detail) == (Decision.DROP, UNIDENTIFIED)
    assert decide(packet("10.2.0.5", 22)).decision == Decision.REJECT  # web is named
    assert decide(PacketInfo(4, "10.1.0.1", "10.1.0.2", 40000, 80)).decision == Decision.ACCEPT
    late = ContainerIdentity(image="shop/web:1.0", name="web-2", host="node-1")
    decide.update(InventoryUpdate(node, (("10.1.0.2", WEB), ("10.1.0.9", late)), remote, nets))
    assert decide(PacketInfo(4, "10.1.0.9", "10.2.0.5", 40000, 22)).decision == Decision.REJECT


def test_unnamed_addresses_are_held_for_a_bounded_time_then_decided() -> None:
    node = HostIdentity(name="node-1", addresses=("10.0.0.1", "10.1.0.1"))
    now = [100.0]
    decide = VerdictDecide(POLICY, InventoryUpdate(node, (), (), ("10.1.0.0/24",)),
                           clock=lambda: now[0])
    syn = PacketInfo(4, "10.1.0.9", "10.2.0.5", 40000, 22)
    assert decide(syn).decision == Decision.DROP
    now[0] += UNNAMED_HOLD_SECONDS  # retransmissions inside the hold: still held
    assert decide(syn).decision == Decision.DROP
    now[0] += 0.5  # never named: decided as an unknown address (default effect)
    out = decide(syn)
    assert out.decision == Decision.ACCEPT and out.detail != UNIDENTIFIED
    other = PacketInfo(4, "10.1.0.10", "10.2.0.5", 40000, 22)
    assert decide(other).decision == Decision.DROP  # each address has its own hold


def test_inventory_changes_do_not_extend_an_unnamed_addresss_hold() -> None:
    """Other workloads starting and stopping (a crash-looping pod, the Console's
    cluster pushes) send inventory updates all the time: the hold of an
    address still unnamed keeps its start, so it ends after the hold anyway."""
    node = HostIdentity(name="node-1", addresses=("10.0.0.1", "10.1.0.1"))
    nets = ("10.1.0.0/24",)
    now = [100.0]
    decide = VerdictDecide(POLICY, InventoryUpdate(node, (), (), nets), clock=lambda: now[0])
    syn = PacketInfo(4, "10.1.0.9", "10.2.0.5", 40000, 22)
    assert decide(syn).decision == Decision.DROP
    for i in range(4):  # a change every second, someone else each time
        now[0] += 1.0
        other = ContainerIdentity(image="shop/job:1", name=f"job-{i}", host="node-1")
        decide.update(InventoryUpdate(node, ((f"10.1.0.{20 + i}", other),), (), nets))
    out = decide(syn)  # 4 s after its first SYN: decided, as an unknown address
    assert out.decision == Decision.ACCEPT and out.detail != UNIDENTIFIED
    # named, then gone again: a new hold starts for the address's next owner
    decide.update(InventoryUpdate(node, (("10.1.0.9", WEB),), (), nets))
    decide.update(InventoryUpdate(node, (), (), nets))
    assert decide(syn).decision == Decision.DROP


@pytest.mark.parametrize(
    ("discovery_ok", "fail_closed", "held"),
    [(True, False, True), (False, False, False), (False, True, True), (True, True, True)],
)
def test_unnamed_addresses_are_held_only_while_discovery_works_or_fail_closed(
    tmp_path: Path, discovery_ok: bool, fail_closed: bool, held: bool
) -> None:
    """With the engine unreachable and fail-open, a Defender must not drop every
    new connection of the container networks: they are decided as unknown."""
    a = agent(tmp_path, fail_closed=fail_closed)
    a.node = HostIdentity(name="node-1", addresses=("10.0.0.1", "10.1.0.1"))
    a.container_nets = ("10.1.0.0/24",)
    a.discovery_ok = discovery_ok
    decide = VerdictDecide(POLICY, a._inventory_update())
    out = decide(PacketInfo(4, "10.1.0.9", "10.2.0.5", 40000, 22))
    assert (out.detail == UNIDENTIFIED) is held


def test_remote_identities_skip_this_host_and_map_every_address() -> None:
    inv = ClusterInventory(
        revision=4,
        hosts=[HostInfo(name="node-1", addresses=["10.0.0.1"]),
               HostInfo(name="node-2", addresses=["10.0.0.2", "10.2.0.1"], labels={"z": "b"})],
        containers=[WorkloadInfo(address="10.1.0.2", image="shop/web:1.0", host="node-1"),
                    WorkloadInfo(address="10.2.0.5", image="shop/db:13", name="db-1",
                                 namespace="shop", host="node-2", labels={"app": "db"})],
    )
    got = dict(_remote_identities(inv, "node-1"))
    assert set(got) == {"10.0.0.2", "10.2.0.1", "10.2.0.5"}
    host = got["10.0.0.2"]
    assert isinstance(host, HostIdentity) and host.labels == (("z", "b"),)
    db = got["10.2.0.5"]
    assert isinstance(db, ContainerIdentity)
    assert (db.image, db.name, db.namespace, db.labels) == ("shop/db:13", "db-1", "shop",
                                                            (("app", "db"),))
    assert _remote_identities(None, "node-1") == ()


# What a --cluster-inventory file names as the engine stored it.
CLUSTER_FILE = json.dumps({
    "revision": 2,
    "hosts": [{"name": "node-2", "addresses": ["10.0.0.2"]}],
    "containers": [
        {"address": "10.2.0.5", "image": "docker.io/shop/db:13", "name": "db-1",
         "host": "node-2"},
        {"address": "10.2.0.6", "image": "localhost/shop/web:1.0", "name": "web-2",
         "host": "node-2"},
    ],
})


def test_a_cluster_inventory_naming_engine_prefixes_matches_the_selectors() -> None:
    """docker.io/shop/db:13 in the file is shop/db:13, as discovery names it, so the
    selector shop/db matches it (it used to fall to the default effect)."""
    remote = _remote_identities(ClusterInventory.model_validate_json(CLUSTER_FILE), "node-1")
    images = {a: i.image for a, i in remote if isinstance(i, ContainerIdentity)}
    assert images == {"10.2.0.5": "shop/db:13", "10.2.0.6": "shop/web:1.0"}
    decider = core.Decider(compile_policy(POLICY), Inventory.build(
        NODE, (("10.1.0.2", WEB),), remote))
    d = decider.decide("10.1.0.2", "10.2.0.5", 5432)
    assert (d.action, d.verdict.rule_id) == (core.Action.ACCEPT, 1)  # web-db: alert
    d = decider.decide("10.1.0.2", "10.2.0.5", 22)
    assert (d.action, d.verdict.rule_id) == (core.Action.REJECT, 2)
    assert d.attempt.dst.container is not None
    assert d.attempt.dst.container.image == "shop/db:13"


def agent(tmp_path: Path, fail_closed: bool = False) -> Agent:
    pol = tmp_path / "policy.yaml"
    pol.write_text("apiVersion: cnnf/v1\nkind: Policy\nspec: {}\n")
    return Agent(DefenderConfig(policy_file=pol, state_dir=tmp_path / "state",
                                hostname="node-1", docker_host="unix:///nonexistent",
                                fail_closed=fail_closed))


def discovered(ident: ContainerIdentity, addr: str, host_network: bool = False) -> (
        DiscoveredContainer):
    return DiscoveredContainer(ident, (addr,), host_network, True, 1)


@pytest.mark.parametrize(
    ("modes", "local", "hostset", "cluster"),
    [
        ((False, False), set(), set(), set()),
        ((True, False), {"10.1.0.2"}, set(), {"10.1.0.2", "10.2.0.5"}),
        ((False, True), set(), {"10.0.0.1"}, {"10.0.0.1", "10.0.0.2"}),
        ((True, True), {"10.1.0.2"}, {"10.0.0.1"},
         {"10.1.0.2", "10.2.0.5", "10.0.0.1", "10.0.0.2"}),
    ],
)
def test_address_sets_follow_the_mode_switches(
    tmp_path: Path, modes: tuple[bool, bool], local: set[str], hostset: set[str],
    cluster: set[str],
) -> None:
    container, host = modes
    a = agent(tmp_path)
    a.node = NODE
    a.set_policy(Policy(container_enabled=container, host_enabled=host))
    a._on_snapshot([discovered(WEB, "10.1.0.2"),
                    discovered(ContainerIdentity(image="infra/agent:1"), "10.0.0.1",
                               host_network=True)])  # host network: counts as the host
    a.set_cluster(ClusterInventory(
        revision=1, hosts=[HostInfo(name="node-2", addresses=["10.0.0.2"])],
        containers=[WorkloadInfo(address="10.2.0.5", image="shop/db:13", host="node-2")]))
    sets = a.wanted_sets()
    assert sets[AddressSet.LOCAL] == local
    assert sets[AddressSet.HOST] == hostset
    assert sets[AddressSet.CLUSTER] == cluster
    assert set(a.inventory.containers) == {"10.1.0.2"}
    report = a.inventory_report()
    assert [c.address for c in report.containers] == ["10.1.0.2"]
    assert report.protected == len(local | hostset)
    a.container_nets = ("10.1.0.0/30",)  # queued before discovery names them
    sets = a.wanted_sets()
    assert sets[AddressSet.LOCAL] == (local | {"10.1.0.1"} if container else set())
    # The report made after the change still counts workloads by identity: the
    # network's unnamed addresses are held, not protected workloads.
    report = a.inventory_report()
    assert report.protected == len(local | hostset)
    assert [c.address for c in report.containers] == ["10.1.0.2"]


def test_block_mode_option_overrides_the_policy(tmp_path: Path) -> None:
    pol = tmp_path / "p.yaml"
    pol.write_text("apiVersion: cnnf/v1\nkind: Policy\nspec: {blockMode: reset}\n")
    a = Agent(DefenderConfig(policy_file=pol, state_dir=tmp_path / "s", block_mode="drop"))
    a.set_policy(Policy(block_mode=BlockMode.RESET))
    assert a.compiled.policy.block_mode is BlockMode.DROP
    assert a.policy.block_mode is BlockMode.RESET  # what the policy says stays visible


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of --policy"),
        ({"policy_file": "P", "console": "http://c"}, "exactly one of --policy"),
        ({"console": "ftp://c"}, "--console 'ftp://c'"),
        ({"policy_file": "missing.yaml"}, "missing.yaml': no such file"),
        ({"policy_file": "P", "queues": 0}, "--queues 0"),
        ({"policy_file": "P", "block_mode": "tarpit"}, "--block-mode 'tarpit'"),
        ({"policy_file": "P", "repair_interval": 0.1}, "--repair-interval 0.1"),
        ({"policy_file": "P", "netns": "no-such-ns-cnnf"}, "--netns 'no-such-ns-cnnf'"),
        ({"policy_file": "P", "hostname": ""}, "--hostname"),
    ],
)
def test_config_errors_name_the_option_and_value(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    pol = tmp_path / "P"
    pol.write_text("")
    if kwargs.get("policy_file") == "P":
        kwargs["policy_file"] = pol
    elif "policy_file" in kwargs:
        kwargs["policy_file"] = tmp_path / str(kwargs["policy_file"])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        DefenderConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "expected"),
    [(["zone=a", "role=web"], {"zone": "a", "role": "web"}), (["k="], {"k": ""})],
)
def test_labels_parse(values: list[str], expected: dict[str, str]) -> None:
    assert parse_labels(values) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), (":9464", ("0.0.0.0", 9464)),
     ("[::1]:9464", ("::1", 9464))],
)
def test_listen_parse(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("bad", ["9464", "host:", "host:99999", "host:x"])
def test_bad_listen(bad: str) -> None:
    with pytest.raises(ConfigError, match=f"--metrics '{bad}'"):
        parse_listen(bad)


@pytest.mark.parametrize("bad", ["novalue", "=v", "a b=c"])
def test_bad_labels(bad: str) -> None:
    with pytest.raises(ConfigError, match=f"--label '{bad}'"):
        parse_labels([bad])


def test_json_lines_output(tmp_path: Path) -> None:
    rec = core.Recorder(reporter="node-1", fold_window=0)
    decide = VerdictDecide(POLICY, INV)
    d = decide.decider.decide("10.1.0.2", "10.2.0.5", 22)
    rec.record(d, decide.compiled, 100.0)
    flows, audits = rec.drain(200.0, final=True)
    out = JsonLinesOutput(str(tmp_path / "o.jsonl"))
    assert out.write(flows, audits) == 2
    out.close()
    lines = [json.loads(ln) for ln in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [ln["record"] for ln in lines] == ["flow", "audit"]
    assert lines[1]["type"] == "container" and lines[1]["blocked"] is True
    assert lines[0]["rule_name"] == "web-db-rest" and lines[0]["src"]["container"] == "web-1"


def test_metrics_collector_exposes_the_figures() -> None:
    registry = CollectorRegistry()
    registry.register(DefenderCollector(lambda: Figures(
        verdicts={"accept": 5, "reject": 2}, protected=3, policy_revision=7, flows=4)))
    text = generate_latest(registry).decode()
    assert 'cnnf_defender_verdicts_total{decision="accept"} 5.0' in text
    assert 'cnnf_defender_verdicts_total{decision="reject"} 2.0' in text
    assert "cnnf_defender_protected_workloads 3.0" in text
    assert "cnnf_defender_policy_revision 7.0" in text
    assert "cnnf_defender_flows_total 4.0" in text
    assert "cnnf_defender_unidentified_dropped_total 0.0" in text


def test_metrics_collector_exposes_the_engine_state() -> None:
    registry = CollectorRegistry()
    registry.register(DefenderCollector(lambda: Figures(
        engine_up=0, engine_outages=2, engine_outage_seconds=3.5)))
    text = generate_latest(registry).decode()
    assert "cnnf_defender_engine_up 0.0" in text
    assert "cnnf_defender_engine_outages_total 2.0" in text
    assert "cnnf_defender_engine_outage_seconds 3.5" in text


def test_status_and_figures_carry_the_engine_state(tmp_path: Path) -> None:
    now = [1_000.0]
    a = agent(tmp_path)
    a.discovery.engine.clock = lambda: now[0]
    a.datapath = SimpleNamespace(  # type: ignore[assignment]
        stats=lambda: DatapathStats([], []), workers=SimpleNamespace(pids=[]))
    a.discovery.engine.back()  # the first resync
    where = {"runtime": "docker", "endpoint": "unix:///nonexistent"}
    assert a.status()["engine"] == {"up": True, "since": 1_000.0, "outages": 0, **where}
    f = a.figures()
    assert (f.engine_up, f.engine_outages, f.engine_outage_seconds) == (1, 0, 0.0)
    a.discovery.engine.down("unreachable", "connection refused")
    now[0] = 1_004.0
    assert a.status()["engine"] == {"up": False, "since": 1_000.0, "outages": 1, **where}
    f = a.figures()
    assert (f.engine_up, f.engine_outages, f.engine_outage_seconds) == (0, 1, 4.0)


def test_policy_file_without_revision_gets_the_load_count(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a._load_policy_file(initial=True)
    assert a.policy.revision == 1
    path = a.config.policy_file
    assert path is not None
    path.write_text("apiVersion: cnnf/v1\nkind: Policy\nspec: {containerEnabled: true}\n")
    a._load_policy_file(initial=False)
    assert a.policy.revision == 2 and a.policy.container_enabled
    path.write_text("apiVersion: cnnf/v1\nkind: Policy\nspec: {revision: 40}\n")
    a._load_policy_file(initial=False)
    assert a.policy.revision == 40
    path.write_text("apiVersion: cnnf/v1\nkind: Policy\nspec: {containerEnabled: maybe}\n")
    a._load_policy_file(initial=False)  # invalid: logged, the previous policy stays
    assert a.policy.revision == 40


def test_a_port_scan_is_spooled_in_batches_the_console_accepts(tmp_path: Path) -> None:
    pol = tmp_path / "p.yaml"
    pol.write_text("apiVersion: cnnf/v1\nkind: Policy\nspec: {}\n")
    a = Agent(DefenderConfig(policy_file=pol, state_dir=tmp_path / "s"))
    a.spool = Spool(tmp_path / "spool")
    a.inventory = Inventory.build(a.node, [("10.1.0.2", WEB)])
    decider = core.Decider(a.compiled, a.inventory)
    ports = range(1, 2 * MAX_BATCH_RECORDS + 2)
    for port in ports:  # one distinct flow per port
        a.recorder.observe(decider, "10.1.0.2", "10.1.0.9", port, now=1.0)
    a.spool.add_dropped(7)
    a.flush()
    batches = [a.spool.load(item) for item in a.spool.pending()]
    assert [len(b.flows) for b in batches if b] == [MAX_BATCH_RECORDS, MAX_BATCH_RECORDS, 1]
    assert sorted(f.port for b in batches if b for f in b.flows) == list(ports)
    assert [b.dropped for b in batches if b] == [7, 0, 0]  # counted once


def test_started_without_the_console_it_uses_the_saved_policy_and_cluster(
    tmp_path: Path,
) -> None:
    from cnnf.defender.link import ConsoleLink

    state = tmp_path / "state"
    link = ConsoleLink("http://127.0.0.1:9", state, hostname="node-1")
    link.save_policy(4, POLICY)
    cluster = ClusterInventory(revision=7, hosts=[HostInfo(name="node-2", addresses=["10.9.0.2"])],
                               containers=[WorkloadInfo(address="10.2.0.5", image="shop/db:13",
                                                        name="db-1", host="node-2")])
    link.save_cluster(cluster)
    link.close()
    (state / "credential").write_text("cnnfd_x d1\n")
    a = Agent(DefenderConfig(console="http://127.0.0.1:9", state_dir=state))
    a._initial_policy()  # nothing listens on port 9
    assert a.policy.revision == 4 and a.policy.container_enabled
    assert a.cluster == cluster
    # so a connection from node-2's container is left to node-2's Defender
    assert "10.2.0.5" in a._inventory_update().inventory().cluster_container_addresses()


@pytest.mark.parametrize("ipv6", [True, False])
def test_addresses_the_sets_cannot_hold_are_left_out(tmp_path: Path, ipv6: bool) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text("apiVersion: cnnf/v1\nkind: Policy\nspec: {}\n")
    a = Agent(DefenderConfig(policy_file=pol, state_dir=tmp_path / "state", hostname="node-1",
                             docker_host="unix:///nonexistent", ipv6=ipv6))
    a.node = NODE
    a.set_policy(Policy(container_enabled=True, host_enabled=True))
    a.set_cluster(ClusterInventory(
        revision=1, hosts=[HostInfo(name="node-2", addresses=["10.0.0.2", "fd00::2", "n/a"])],
        containers=[WorkloadInfo(address=addr, image="shop/db:13", host="node-2")
                    for addr in ("10.2.0.5", "fd00::5", "zzz", "10.2.0.300")]))
    cluster = a.wanted_sets()[AddressSet.CLUSTER]
    v6 = {"fd00::2", "fd00::5"} if ipv6 else set()
    assert cluster == {"10.0.0.1", "10.0.0.2", "10.2.0.5"} | v6


def test_reports_are_batched_less_often_while_the_console_is_away(tmp_path: Path) -> None:
    from cnnf.defender.agent import OFFLINE_REPORT_INTERVAL
    from cnnf.defender.link import ConsoleLink, LinkRunner

    a = agent(tmp_path)
    assert a.report_interval() == a.config.report_interval  # standalone
    link = ConsoleLink("http://127.0.0.1:9", tmp_path / "link", hostname="node-1")
    a.runner = LinkRunner(link, Spool(tmp_path / "spool"), on_policy=lambda r, p: None,
                          on_inventory=lambda inv: None)
    assert a.report_interval() == OFFLINE_REPORT_INTERVAL  # not connected (yet)
    a.runner.connected = True
    assert a.report_interval() == a.config.report_interval
    link.close()
    # The README's arithmetic: the spool's default bound of 1,000 batches, one
    # batch per interval while the Console is away, lasts over eight hours.
    bound = Spool(tmp_path / "default-spool").max_files
    assert bound == 1000 and bound * OFFLINE_REPORT_INTERVAL > 8 * 3600


def test_a_named_remote_workload_in_a_pending_pool_is_not_held() -> None:
    """A --container-net may be a pool spanning nodes (Calico): another node's
    pod named by the cluster inventory is decided at once, not held as unnamed."""
    node = HostIdentity(name="node-1", addresses=("10.0.0.1",))
    pool = ("192.168.0.0/16",)
    remote = (("192.168.7.5", DB),)
    decide = VerdictDecide(POLICY, InventoryUpdate(node, (("192.168.1.2", WEB),), remote, pool))
    assert "192.168.7.5" not in decide.pending and "192.168.9.9" in decide.pending
    out = decide(PacketInfo(4, "192.168.7.5", "192.168.1.2", 40000, 80))
    assert out.detail != UNIDENTIFIED
    assert decide(PacketInfo(4, "192.168.9.9", "192.168.1.2", 40000, 80)).detail == UNIDENTIFIED


def test_a_pods_images_travel_only_when_there_are_several() -> None:
    """Consoles and Defenders of the previous release refuse unknown fields:
    a workload with one image is sent exactly as before."""
    one = WorkloadInfo(address="10.1.0.2", image="shop/web:1.0")
    assert "images" not in one.model_dump_json()
    pod = WorkloadInfo.of("10.1.0.3", ContainerIdentity(
        "shop/web:1.0", images=("docker.io/mesh/proxy:1.2",)))
    assert pod.images == ["shop/web:1.0", "mesh/proxy:1.2"]
    back = WorkloadInfo.model_validate_json(pod.model_dump_json()).identity()
    assert back.all_images == ("shop/web:1.0", "mesh/proxy:1.2")


def test_an_engine_outage_is_logged_again_every_minute(tmp_path: Path) -> None:
    """A wrong socket path is logged once when discovery first fails; a
    reminder every minute keeps an operator from missing that nothing is named."""
    from structlog.testing import capture_logs

    now = [1_000.0]
    a = agent(tmp_path)
    a.discovery.engine.clock = lambda: now[0]
    a.discovery.engine.down("unreachable", "connection refused")
    reminders = []
    with capture_logs() as logs:
        for _ in range(30):  # 150 s of repair checks, every 5 s
            now[0] += 5
            a._remind_engine_down()
        reminders = [x for x in logs if x["event"].startswith("container engine still")]
    assert [r["outage_s"] for r in reminders] == [60, 120]
    assert reminders[0]["unnamed"] == "decided as unknown addresses"
    a.discovery.engine.back()
    with capture_logs() as logs:
        now[0] += 100
        a._remind_engine_down()
    assert logs == []


def test_forged_source_drops_are_reported_per_port_at_most_every_ten_seconds(
    tmp_path: Path,
) -> None:
    """The kernel's per-port counters -> an overload audit (anti-spoofing) per
    port at once, then at most one per SPOOF_REPORT_INTERVAL with what came
    meanwhile; a port whose counters restarted (rebound) counts from 0."""
    a = agent(tmp_path)
    counters: dict[str, int] = {}
    a.datapath = SimpleNamespace(  # type: ignore[assignment]
        backend=SimpleNamespace(spoof_counters=lambda: dict(counters)))
    web = ContainerIdentity(image="shop/web:1.0", name="web", host="node-1")
    a._port_owner = {"veth1": discovered(web, "10.1.0.2")}

    def audits() -> list[tuple[str, int, str]]:
        return [(e.rule_name, e.count, e.src.container)
                for e in a.recorder.drain(0, final=True)[1]]

    counters["veth1"] = 5
    a.poll_spoofed(100.0)
    assert audits() == [("anti-spoofing", 5, "web")] and a.spoofed == 5
    counters["veth1"] = 12
    a.poll_spoofed(105.0)
    assert audits() == []  # within the interval: kept for the next report
    counters["veth1"] = 3  # rebound: the rule's counter restarted
    a.poll_spoofed(100.0 + SPOOF_REPORT_INTERVAL)
    assert audits() == [("anti-spoofing", 7 + 3, "web")] and a.spoofed == 15
    a.poll_spoofed(200.0)
    assert audits() == []  # nothing new: nothing reported


def test_a_waiting_room_line_is_tightened_as_the_kernel_keys_it() -> None:
    """An address or an outside prefix as it is; the outside sources' shared
    line: every outside source (the whole space: the outside rule's one limit);
    nothing that the kernel cannot hold (so none is reported tightened)."""
    assert in_kernel("10.64.1.2", "203.0.113.0/24", "2001:db8::/64") == [
        "10.64.1.2", "203.0.113.0/24", "2001:db8::/64"]
    assert in_kernel(OUTSIDE_REST_NAME) == ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"]
    assert in_kernel("unknown") == []


def test_forged_source_drops_of_a_port_gone_since_are_audited_by_its_owner_at_stop(
    tmp_path: Path,
) -> None:
    """Drops read while the port was bound keep its owner: a short-lived
    attacker container gone before the next report is still named, and what
    is pending when the Defender stops is reported then, not lost."""
    a = agent(tmp_path)
    counters: dict[str, int] = {"veth1": 5}
    a.datapath = SimpleNamespace(  # type: ignore[assignment]
        backend=SimpleNamespace(spoof_counters=lambda: dict(counters)))
    web = ContainerIdentity(image="shop/web:1.0", name="web", host="node-1")
    a._port_owner = {"veth1": discovered(web, "10.1.0.2")}
    a.poll_spoofed(100.0)
    assert [e.count for e in a.recorder.drain(0, final=True)[1]] == [5]
    counters["veth1"] = 9
    a.poll_spoofed(103.0)  # within the interval: pending
    a._port_owner = {}  # the container stopped: unbound
    del counters["veth1"]
    a.poll_spoofed(104.0)
    assert a.recorder.drain(0, final=True)[1] == []
    a.poll_spoofed(105.0, final=True)  # stopping
    assert [(e.rule_name, e.count, e.src.container) for e in
            a.recorder.drain(0, final=True)[1]] == [("anti-spoofing", 4, "web")]


def test_a_veth_name_reused_by_a_new_container_is_bound_to_it_alone(tmp_path: Path) -> None:
    """podman names veths veth0, veth1...: a container that stopped (its stop
    not seen yet) and a new one both claim veth0. Both are looked up again;
    the gone one's namespace has no veth0 any more, so only the new one's
    address is bound (the old address is not left usable by the newcomer)."""
    a = agent(tmp_path)
    a.policy = a.policy.model_copy(update={"container_enabled": True})
    bound: list[list[Port]] = []
    a.datapath = SimpleNamespace(  # type: ignore[assignment]
        backend=SimpleNamespace(ports=dict, set_ports=lambda ports: bound.append(list(ports)),
                                spoof_counters=dict))
    old = DiscoveredContainer(ContainerIdentity(image="shop/old:1", name="old", id="o"),
                              ("10.1.0.2",), False, True, 101)
    new = DiscoveredContainer(ContainerIdentity(image="shop/new:1", name="new", id="n"),
                              ("10.1.0.3",), False, True, 102)
    a.local = {"10.1.0.2": old, "10.1.0.3": new}
    a._port_cache = {"o": ((101, ("10.1.0.2",)), [Port("veth0", frozenset({"10.1.0.2"}))])}
    looked_up: list[str] = []

    def resolve(c: DiscoveredContainer) -> list[Port]:  # the namespaces as they are now
        looked_up.append(c.identity.name)
        return [Port("veth0", frozenset(c.addresses))] if c is new else []

    a._resolve_ports = resolve  # type: ignore[method-assign]
    a.bind_ports()
    assert sorted(looked_up) == ["new", "new", "old"]
    assert bound == [[Port("veth0", frozenset({"10.1.0.3"}))]]
    assert a._port_owner["veth0"] is new


def test_stop_takes_no_lock_so_a_signal_handler_cannot_deadlock(tmp_path: Path) -> None:
    """SIGTERM's handler calls ``Agent.stop`` on the main thread, which may be inside
    ``stop_event.wait`` holding the event's lock: stop must not take that lock
    (setting the event there hung a Defender on SIGTERM in the lab). Here the
    lock is held as the waiting main thread holds it; stop must return, and the
    loop must then end at once."""
    a = agent(tmp_path)
    done = threading.Event()

    def as_the_handler() -> None:
        with a.stop_event._cond:  # type: ignore[attr-defined]  # held, as inside wait()
            a.stop()
        done.set()

    t = threading.Thread(target=as_the_handler, daemon=True)
    t.start()
    assert done.wait(5), "Agent.stop blocked on stop_event's lock"
    a.loop()  # returns: the stop request is seen at the first turn
