"""The Defender runtime: discovery + inventory + policy + datapath + recorder + outputs.

Threads and processes::

    main thread     start the datapath (forks the verdict workers), then every
                    0.1 s: verdict reports -> Recorder; every report interval:
                    flows/audits -> JSON lines and the spool; every repair
                    interval: check_and_repair(); the policy file and the
                    cluster inventory file are watched; the status file written
    discovery       Docker API events: on_start protects a container at once
    link (managed)  policy and inventory long-polls, uplink (see link.py)
    conntrack       observed connections while either mode is disabled
    workers         one process per queue; decide = :class:`VerdictDecide`

The workers' ``decide`` is updated by broadcasting :class:`PolicyUpdate` and
:class:`InventoryUpdate` messages (plain picklable data; each worker compiles
the policy itself). The same object in this process is updated too, so a
worker restarted by the repair check forks with the current state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import json
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import structlog

from cnnf import __version__
from cnnf.defender import core
from cnnf.defender.config import DefenderConfig
from cnnf.defender.datapath import (
    AddressSet,
    ConntrackObserver,
    Datapath,
    DatapathConfig,
    Decision,
    DnsRecord,
    FastVerdict,
    NetnsRef,
    ObservedConnection,
    Outcome,
    PacketInfo,
)
from cnnf.defender.datapath.backend import BUSY_TIMEOUT, Port
from cnnf.defender.datapath.netns import DatapathError
from cnnf.defender.datapath.ports import workload_ports
from cnnf.defender.datapath.workers import OUTSIDE_REST_NAME
from cnnf.defender.discovery.base import Discovery
from cnnf.defender.discovery.identity import DiscoveredContainer
from cnnf.defender.discovery.runtime import make_discovery
from cnnf.defender.fastpath import FastPathTable
from cnnf.defender.inventory import Identity, Inventory
from cnnf.defender.metrics import Figures, serve_metrics
from cnnf.defender.observation import ObservationQueue, ObservationScope, is_outside
from cnnf.defender.outputs import JsonLinesOutput
from cnnf.defender.overload import OverloadReport, OverloadTracker
from cnnf.defender.verdictcache import VerdictCache
from cnnf.errors import PolicyValidationError
from cnnf.model import (
    BlockMode,
    ConnectionAttempt,
    ContainerIdentity,
    Effect,
    HostIdentity,
    Policy,
    Verdict,
    make_labels,
)
from cnnf.model.attempt import Endpoint
from cnnf.model.records import MAX_BATCH_RECORDS as BATCH_RECORDS_LIMIT
from cnnf.model.records import (
    ClusterInventory,
    DatapathState,
    HostInfo,
    InventoryReport,
    WorkloadInfo,
    endpoint_name,
    overload_audit,
    spoof_audit,
)
from cnnf.model.rule import RuleKind
from cnnf.policy.document import load_policy
from cnnf.policy.engine import CompiledPolicy, compile_policy

log = structlog.get_logger(__name__)


# ---------------------------------------------------------------- the verdict side


@dataclass(frozen=True, slots=True)
class PolicyUpdate:
    policy: Policy
    epoch: int = 0  # the fast path's epoch (see cnnf.defender.fastpath)


@dataclass(frozen=True, slots=True)
class CacheEpoch:
    """A new fast-path epoch without another change (a DNS answer)."""

    epoch: int


@dataclass(frozen=True, slots=True)
class InventoryUpdate:
    node: HostIdentity
    containers: tuple[tuple[str, ContainerIdentity], ...]
    remote: tuple[tuple[str, Identity], ...]
    # This host's container networks (CIDRs): their addresses are queued even
    # before discovery names them, so a container that connects before the
    # runtime's start event arrives is not let through unevaluated.
    container_nets: tuple[str, ...] = ()
    epoch: int = 0
    # Which inventory this is: verdicts carry it back, so each is recorded with
    # the identities it was decided with, even when a pod is gone (or its
    # address reused) by the time the main loop records it.
    generation: int = 0

    def inventory(self) -> Inventory:
        return Inventory.build(self.node, self.containers, self.remote)

    def identities(self) -> dict[str, Identity]:
        """address -> identity, as :meth:`Inventory.identity` resolves it."""
        out: dict[str, Identity] = dict(self.remote)
        out.update(self.containers)
        out.update((a, self.node) for a in self.node.addresses)
        return out

    def pending(self) -> frozenset[str]:
        """Addresses of the container networks that are not this host's own nor
        another host's known workloads (a --container-net may be a pool that
        spans nodes)."""
        return (expand_networks(self.container_nets) - frozenset(self.node.addresses)
                - frozenset(a for a, _ in self.remote))


UNIDENTIFIED = "unidentified"
# How long SYNs of a container address discovery has not named are held back
# (dropped; TCP retransmits them) before they are decided as an unknown address.
# Long enough for the runtime's start event (about 0.2 s with Podman), short
# enough that an address discovery never names is not cut off for good.
UNNAMED_HOLD_SECONDS = 3.0
# Inventories kept for recording verdicts decided under them: every one of the
# last INVENTORY_HISTORY_SECONDS (a verdict waits about a second in the
# workers' reports), and at least the last INVENTORY_HISTORY_MIN, at most
# INVENTORY_HISTORY_MAX (then a verdict is recorded with the newest).
INVENTORY_HISTORY_SECONDS = 10.0
ENGINE_REMINDER_SECONDS = 60.0  # an engine outage is logged again this often
INVENTORY_HISTORY_MIN = 16
INVENTORY_HISTORY_MAX = 4096
MAX_EXPANDED_PREFIX = 16  # container networks larger than a /16 are not pre-queued
# Records per report batch (flows, and audits: the Console refuses more): a port
# scan yields thousands of distinct flows in one flush, and one batch must stay
# well below the Console's body limit (4 MiB).
MAX_BATCH_RECORDS = BATCH_RECORDS_LIMIT
# With the Console away, one batch per this many seconds: the spool's 1,000
# batches then hold over eight hours instead of 17 minutes of reports.
OFFLINE_REPORT_INTERVAL = 30.0
# Seconds between reads of the kernel's fast-path and admission counters.
KERNEL_POLL_INTERVAL = 1.0
# Forged-source drops: one log line and one audit per port at most this often.
SPOOF_REPORT_INTERVAL = 10.0
# SYNs of one source the verdict loop dropped or decided late (in one turn of
# the main loop) that get its admission limit tightened.
BUSY_MIN_SHED = 10
# How often the datapath is checked (read only) for "datapath up" (the Console's
# Defenders page); a change is reported at once. Repairs run on their own interval.
DATAPATH_CHECK_INTERVAL = 2.0
# Observation (conntrack, enforcement off for a kind) must never starve
# enforcement: the events waiting are bounded (a flood's excess is dropped and
# counted), and each main-loop turn evaluates at most this many of them, for at
# most this long; the rest wait for the next turn. Repeats of a connection
# waiting are folded into it (not bounded), one source may hold at most
# OBSERVED_SOURCE_MAX distinct connections waiting, and a full queue makes room
# for a newcomer at the largest source's expense: flooding sources cannot push
# the others' connections out (see cnnf.defender.observation).
OBSERVED_QUEUE_MAX = 20_000
OBSERVED_SOURCE_MAX = 2_000
OBSERVED_TAKE_CHUNK = 64  # entries taken between two looks at the clock
OBSERVED_BATCH_MAX = 2_000
OBSERVED_BATCH_SECONDS = 0.02
OBSERVED_DROP_LOG_SECONDS = 60.0  # dropped observations are logged at most this often
# A main loop that did not turn for this long stops the heartbeat (the kernel's
# cached verdicts then lapse: nothing would invalidate or count them).
LOOP_STALL_SECONDS = 10.0
# Decisions the fast path may hold (alerts always reach the verdict loop, so
# every alerted connection is audited by it).
FAST_VERDICTS = {Decision.ACCEPT: FastVerdict.ACCEPT, Decision.REJECT: FastVerdict.REJECT,
                 Decision.DROP: FastVerdict.DROP}
FAST_ACTIONS = {FastVerdict.ACCEPT: core.Action.ACCEPT, FastVerdict.REJECT: core.Action.REJECT,
                FastVerdict.DROP: core.Action.DROP}


@functools.lru_cache(maxsize=8)
def in_kernel(*lines: str) -> list[str]:
    """The verdict workers' lines -> what the kernel's tightened limit is keyed
    by: an address or an outside prefix as it is; the outside sources' shared
    line -> the whole address space (every outside source, together); anything
    else (not IP) -> nothing."""
    out: list[str] = []
    for line in lines:
        if line == OUTSIDE_REST_NAME:
            out += ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"]
            continue
        try:
            ipaddress.ip_network(line, strict=False)
        except ValueError:
            continue
        out.append(line)
    return out


def expand_networks(nets: tuple[str, ...]) -> frozenset[str]:
    out: set[str] = set()
    for cidr in nets:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version == 4 and net.prefixlen >= MAX_EXPANDED_PREFIX:
            out.update(str(a) for a in net.hosts())
    return frozenset(out)


# A staged ("would") verdict: effect, matched, rule id, rule name, rule kind.
WouldDetail = tuple[str, bool, "int | None", "str | None", "str | None"]
VerdictDetail = tuple[str, int, bool, "int | None", "str | None", "str | None",
                      "WouldDetail | None", int, int]


def verdict_detail(v: Verdict, epoch: int = 0, generation: int = 0) -> VerdictDetail:
    """The verdict as a tuple of plain values (its "would" part too), the
    fast-path epoch and the inventory generation it was decided under: it
    crosses from the worker to the main process with every report, and plain
    tuples pickle several times faster than the dataclasses (the attempt is
    rebuilt from the packet there, with that generation's identities). The
    first seven values are the verdict (what a cached verdict keeps)."""
    w = v.would
    would: WouldDetail | None = None if w is None else (
        w.effect.value, w.matched, w.rule_id, w.rule_name,
        None if w.rule_kind is None else w.rule_kind.value)
    return (v.effect.value, v.revision, v.matched, v.rule_id, v.rule_name,
            None if v.rule_kind is None else v.rule_kind.value, would, epoch, generation)


def verdict_from_detail(d: tuple[Any, ...]) -> Verdict:
    w = d[6]
    would = None if w is None else Verdict(
        effect=Effect(w[0]), revision=d[1], matched=w[1], rule_id=w[2], rule_name=w[3],
        rule_kind=None if w[4] is None else RuleKind(w[4]))
    return Verdict(effect=Effect(d[0]), revision=d[1], matched=d[2], rule_id=d[3],
                   rule_name=d[4], rule_kind=None if d[5] is None else RuleKind(d[5]),
                   would=would)


class VerdictDecide:
    """``decide(packet)`` for the verdict workers: the pure Decider over the
    latest (compiled policy, inventory) snapshot. The detail of each outcome is
    the verdict (:func:`verdict_detail`), recorded by the main process."""

    def __init__(
        self,
        policy: Policy,
        inventory: InventoryUpdate,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.compiled = compile_policy(policy)
        self.inventory = inventory.inventory()
        self.pending = inventory.pending()
        self.decider = core.Decider(self.compiled, self.inventory)
        self.clock = clock
        self.epoch = inventory.epoch
        self.generation = inventory.generation
        self._held_since: dict[str, float] = {}  # unnamed address -> first SYN held

    def update(self, message: object) -> None:
        if isinstance(message, PolicyUpdate):
            self.compiled = compile_policy(message.policy)
            self.epoch = max(self.epoch, message.epoch)
        elif isinstance(message, InventoryUpdate):
            self.inventory = message.inventory()
            self.pending = message.pending()
            # An address still unnamed keeps its hold's start: inventory
            # changes (another pod starting) must not extend it forever.
            named = self.inventory.containers
            self._held_since = {a: t for a, t in self._held_since.items()
                                if a not in named and a in self.pending}
            self.epoch = max(self.epoch, message.epoch)
            self.generation = message.generation
        elif isinstance(message, CacheEpoch):
            # epochs only grow (a message sent before a later change may come later)
            self.epoch = max(self.epoch, message.epoch)
            return
        else:
            return
        self.decider = core.Decider(self.compiled, self.inventory)

    def __call__(self, packet: PacketInfo) -> Outcome:
        pending = self.pending
        if pending:
            known = self.inventory.containers
            unnamed = (packet.src if packet.src in pending and packet.src not in known
                       else packet.dst if packet.dst in pending and packet.dst not in known
                       else None)
            if unnamed is not None and self._hold(unnamed):
                # A container discovery has not named yet (it started a moment
                # ago): drop this SYN; TCP retransmits it in about a second and
                # the retransmission is decided with the container's identity.
                return Outcome(Decision.DROP, UNIDENTIFIED)
        d = self.decider.decide(packet.src, packet.dst, packet.dport, packet.dst_domains)
        if d.action is core.Action.ACCEPT:
            decision = Decision.ACCEPT_AUDIT if d.verdict.effect.audits else Decision.ACCEPT
        elif d.action is core.Action.REJECT:
            decision = Decision.REJECT
        else:
            decision = Decision.DROP
        return Outcome(decision, verdict_detail(d.verdict, self.epoch, self.generation))

    def _hold(self, address: str) -> bool:
        """Hold an unnamed address's SYNs for :data:`UNNAMED_HOLD_SECONDS`, then
        let them be decided as an unknown address."""
        now = self.clock()
        if len(self._held_since) > 10_000:
            self._held_since.clear()
        first = self._held_since.setdefault(address, now)
        return now - first <= UNNAMED_HOLD_SECONDS


# ---------------------------------------------------------------- helpers


def host_addresses(netns: NetnsRef) -> tuple[str, ...]:
    """Global unicast addresses of the namespace's interfaces (not loopback)."""
    out = netns.run("ip", "-o", "addr", "show").stdout
    found: list[str] = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] not in ("inet", "inet6"):
            continue
        addr = parts[3].split("/")[0]
        ip = ipaddress.ip_address(addr)
        if ip.is_loopback or ip.is_link_local or ip.is_multicast:
            continue
        if addr not in found:
            found.append(addr)
    return tuple(found)


def container_networks(netns: NetnsRef) -> tuple[str, ...]:
    """IPv4 networks of the namespace's bridges (Docker's and Podman's container
    networks), e.g. ``("10.88.0.0/16",)``."""
    bridges = set()
    for line in netns.run("ip", "-o", "link", "show", "type", "bridge").stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            bridges.add(parts[1].strip().split("@")[0])
    nets: list[str] = []
    for line in netns.run("ip", "-o", "-4", "addr", "show").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] in bridges and parts[2] == "inet":
            net = str(ipaddress.ip_interface(parts[3]).network)
            if net not in nets:
                nets.append(net)
    return tuple(sorted(nets))


def _within(address: str, nets: tuple[str, ...]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(n, strict=False) for n in nets)


def _remote_identities(
    cluster: ClusterInventory | None, hostname: str
) -> tuple[tuple[str, Identity], ...]:
    if cluster is None:
        return ()
    out: list[tuple[str, Identity]] = []
    for h in cluster.hosts:
        if h.name == hostname:
            continue
        ident = HostIdentity(name=h.name, labels=make_labels(h.labels),
                             addresses=tuple(h.addresses), cluster=h.cluster)
        out += [(a, ident) for a in h.addresses]
    for c in cluster.containers:
        if c.host == hostname:
            continue
        out.append((c.address, c.identity()))
    return tuple(out)


def _logged(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """``fn``, with its exceptions logged instead of raised (a thread's callback)."""
    def call(arg: Any) -> None:
        try:
            fn(arg)
        except Exception as exc:
            log.error("applying a discovery event failed; the next event or resync "
                      "retries", callback=fn.__name__, error=str(exc))
    return call


def load_cluster_inventory(path: Path) -> ClusterInventory:
    return ClusterInventory.model_validate_json(path.read_bytes())


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


# ---------------------------------------------------------------- the agent


class Agent:
    """One Defender. ``run()`` blocks until ``stop()`` (SIGTERM/SIGINT)."""

    def __init__(self, config: DefenderConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.netns = NetnsRef.of(config.netns)
        self.stop_event = threading.Event()
        self._stop_requested = False  # set by stop() (a signal handler): no lock
        self._lock = threading.RLock()
        self.policy = Policy()
        self.compiled: CompiledPolicy = compile_policy(self.policy)
        self.node = HostIdentity(name=config.hostname, labels=make_labels(config.host_labels),
                                 cluster=config.cluster)
        self.local: dict[str, DiscoveredContainer] = {}
        self.cluster: ClusterInventory | None = None
        self.inventory = Inventory.build(self.node)
        self.recorder = core.Recorder(reporter=config.hostname, fold_window=config.audit_window)
        self.observed = ObservationQueue(OBSERVED_QUEUE_MAX, OBSERVED_SOURCE_MAX)
        self._observed_logged = (0.0, 0)  # (when, the count then) of the last drop log
        self.observer_restarts = 0  # conntrack processes found ended and started again
        self._observed_lock = threading.Lock()
        self.gaps_ms: deque[float] = deque(maxlen=1000)
        self.container_nets: tuple[str, ...] = ()
        # Unnamed container addresses are held back only while discovery works,
        # or always with --fail-closed: with the engine down and fail-open, new
        # connections are decided as unknown addresses instead of all dropped.
        self.discovery_ok = False
        self.unidentified = 0
        self._unidentified_seen: set[str] = set()
        self._unusable_logged: set[str] = set()
        self.flows_out = 0
        self.audits_out = 0
        self.repairs = 0
        # The datapath's problems at its last check (empty: up; None: not checked).
        self.datapath_problems: list[str] | None = None
        self.started = 0.0
        self.output = JsonLinesOutput(config.output) if config.output else None
        self.datapath: Datapath | None = None
        self.decide: VerdictDecide | None = None
        self.observer: ConntrackObserver | None = None
        self.discovery: Discovery = make_discovery(config.runtime, config.cri_socket,
                                                   config.docker_host, config.hostname,
                                                   config.cluster)
        self._threads: list[threading.Thread] = []
        self._policy_key: tuple[int, int, int] | None = None
        self._file_loads = 0
        self._cluster_key: tuple[int, int, int] | None = None
        self._metrics: Any = None
        # The kernel fast path (cached verdicts, from start()) and the admission
        # limit's overloads.
        self.cache: VerdictCache | None = None
        self._shared: dict[tuple[object, ...], tuple[object, ...]] = {}  # verdict details
        self._identities: dict[str, Identity] = {}  # as last sent to the workers
        self._generation = 0  # of the inventory last sent to the workers
        self._reminded = 0.0  # the engine outage's length at the last reminder
        self._remote_of: ClusterInventory | None = None
        self._remote_ids: tuple[tuple[str, Identity], ...] = ()
        # recent ones by generation, with when they were sent
        self._inventories: dict[int, tuple[Inventory, float]] = {}
        self._sent_nets: tuple[str, ...] = ()
        self.overload = OverloadTracker()
        # SYNs the verdict workers dropped beyond a source's fair share, per
        # source, not yet fed to the overload tracker
        self._shed: dict[str, int] = {}
        # Sources whose admission limit is tightened (the verdict loop could not
        # keep up with them) -> when they last flooded; their shed SYNs since
        # the last check, and the admission counters at the last kernel poll.
        self.tightened: dict[str, float] = {}
        self._shed_recent: dict[str, int] = {}
        self._over_prev: dict[str, int] = {}
        self._loop_turned = time.monotonic()  # the main loop's last turn (heartbeat)
        # Anti-spoofing: container key -> ((pid, addresses), its ports) as last
        # resolved; the port counters at the last poll; forged-source drops not
        # reported yet, and when each port's were last reported.
        self._ports_lock = threading.Lock()
        self._port_cache: dict[str, tuple[tuple[int, tuple[str, ...]], list[Port]]] = {}
        self._port_owner: dict[str, DiscoveredContainer] = {}
        self._spoof_prev: dict[str, int] = {}
        self._spoof_pending: dict[str, tuple[int, DiscoveredContainer | None]] = {}
        self._spoof_reported: dict[str, float] = {}
        self.spoofed = 0  # packets dropped for a forged source address, in all
        self._sent_locals: frozenset[str] | None = None
        self.link: Any = None
        self.runner: Any = None
        self.spool: Any = None
        self.config.state_dir.mkdir(parents=True, exist_ok=True)

    # -- policy ------------------------------------------------------------------

    def _effective(self, policy: Policy) -> Policy:
        if self.config.block_mode is None:
            return policy
        return policy.model_copy(update={"block_mode": BlockMode(self.config.block_mode)})

    def set_policy(self, policy: Policy, source: str = "") -> None:
        """Swap the policy in everywhere (workers, sets, observation mode)."""
        with self._lock:
            old = self.policy
            self.policy = policy
            eff = self._effective(policy)
            before = self._context()
            self.compiled = compile_policy(eff)
            # The cached verdicts leave the kernel before any worker decides
            # with the new policy.
            epoch = self.cache.invalidate_all(before) if self.cache is not None else 0
            self._shared.clear()
            self._broadcast(PolicyUpdate(eff, epoch))
            # Observation starts before the sets shrink (enforcement turned
            # off): no connection is then neither queued nor observed.
            self._apply_mode(start_only=True)
            self._apply_sets()
            self._apply_mode()
        if old.container_enabled != policy.container_enabled:
            self.bind_ports()
        log.info("policy applied", source=source, revision=policy.revision,
                 container_enabled=policy.container_enabled, host_enabled=policy.host_enabled,
                 container_rules=len(policy.container_rules), host_rules=len(policy.host_rules),
                 previous_revision=old.revision)

    def _load_policy_file(self, initial: bool) -> None:
        path = self.config.policy_file
        assert path is not None
        key = _file_key(path)
        if key == self._policy_key:
            return
        self._policy_key = key
        try:
            policy = load_policy(path.read_text(), source=str(path))
        except (OSError, UnicodeDecodeError, PolicyValidationError) as exc:
            if initial:
                raise
            log.error("policy reload failed; keeping the previous policy", file=str(path),
                      revision=self.policy.revision, error=str(exc))
            return
        self._file_loads += 1
        if policy.revision == 0:
            # A file without a revision: number the loads, so that verdicts and
            # flows say which version of the file decided them.
            policy = policy.model_copy(update={"revision": self._file_loads})
        self.set_policy(policy, source=str(path))

    def _load_cluster_file(self) -> None:
        path = self.config.cluster_inventory
        if path is None:
            return
        key = _file_key(path)
        if key == self._cluster_key:
            return
        self._cluster_key = key
        try:
            inv = load_cluster_inventory(path)
        except (OSError, ValueError) as exc:
            log.error("cluster inventory file unreadable; keeping the previous one",
                      file=str(path), error=str(exc))
            return
        self.set_cluster(inv)

    def set_cluster(self, inv: ClusterInventory) -> None:
        with self._lock:
            self.cluster = inv
            self._publish_inventory()
        log.info("cluster inventory applied", revision=inv.revision, hosts=len(inv.hosts),
                 containers=len(inv.containers))

    # -- inventory and sets ------------------------------------------------------------

    def _inventory_update(self) -> InventoryUpdate:
        return InventoryUpdate(
            self.node,
            tuple((a, c.identity) for a, c in sorted(self.local.items())),
            self._remote(),
            self.container_nets if self.discovery_ok or self.config.fail_closed else (),
            self._epoch(),
            self._generation,
        )

    def _remote(self) -> tuple[tuple[str, Identity], ...]:
        """The other hosts' workloads, made once per cluster inventory (the same
        tuple for every generation: the inventories kept share its mapping)."""
        if self._remote_of is not self.cluster:
            self._remote_of = self.cluster
            self._remote_ids = _remote_identities(self.cluster, self.config.hostname)
        return self._remote_ids

    def _broadcast(self, message: object) -> None:
        if self.decide is not None:
            self.decide.update(message)
        if self.datapath is not None:
            self.datapath.workers.broadcast(message)

    def _send_inventory(self, update: InventoryUpdate) -> None:
        """Make ``update`` the inventory everywhere (lock held). Addresses whose
        identity it changes lose their cached verdicts first: the workers get
        the update with a new fast-path epoch and the kernel's entries for them
        go before the lock is released (a container stop, start, IP reuse)."""
        identities = update.identities()
        if self.cache is not None:
            # the entries go first, counted with the identities they had
            if update.container_nets != self._sent_nets:
                update = dataclasses.replace(
                    update, epoch=self.cache.invalidate_all(self._context()))
            else:
                old = self._identities
                changed = [a for a in identities.keys() | old.keys()
                           if identities.get(a) != old.get(a)]
                if changed:
                    update = dataclasses.replace(
                        update, epoch=self.cache.invalidate(changed, self._context()))
        self._identities, self._sent_nets = identities, update.container_nets
        self._generation += 1
        update = dataclasses.replace(update, generation=self._generation)
        self.inventory = update.inventory()
        self._remember(update.generation, self.inventory)
        self._broadcast(update)

    def _remember(self, generation: int, inventory: Inventory) -> None:
        """Keep the recent inventories by generation, for recording verdicts."""
        now = time.monotonic()
        self._inventories[generation] = (inventory, now)
        while len(self._inventories) > INVENTORY_HISTORY_MIN:
            oldest = next(iter(self._inventories))
            if (len(self._inventories) <= INVENTORY_HISTORY_MAX
                    and now - self._inventories[oldest][1] < INVENTORY_HISTORY_SECONDS):
                break
            del self._inventories[oldest]

    def _epoch(self) -> int:
        return self.cache.epoch if self.cache is not None else 0

    def _publish_inventory(self) -> None:
        self._send_inventory(self._inventory_update())
        self._apply_sets()
        if self.runner is not None:
            self.runner.set_inventory(self.inventory_report())

    def wanted_sets(self) -> dict[AddressSet, frozenset[str]]:
        p = self.policy
        inv = self.inventory
        usable = self._usable
        local = usable(inv.local_container_addresses()) if p.container_enabled else frozenset()
        if p.container_enabled and self.container_nets:
            pending = (expand_networks(self.container_nets) - frozenset(self.node.addresses)
                       - inv.remote.keys())
            local |= pending
        host = usable(frozenset(self.node.addresses)) if p.host_enabled else frozenset()
        cluster = set(local | host)
        if p.container_enabled:
            cluster |= usable(inv.cluster_container_addresses() - local)
        if p.host_enabled:
            cluster |= usable(inv.cluster_host_addresses() - host)
        return {AddressSet.LOCAL: local, AddressSet.HOST: host,
                AddressSet.CLUSTER: frozenset(cluster)}

    def _usable(self, addresses: set[str] | frozenset[str]) -> frozenset[str]:
        """The addresses the sets can hold. One that is no IP address (another
        Defender's report, through the Console) or IPv6 with ``--no-ipv6`` is left
        out and logged once; it made every later set update fail, so new
        containers went unprotected."""
        out = []
        for a in addresses:
            try:
                ok = ipaddress.ip_address(a).version == 4 or self.config.ipv6
            except ValueError:
                ok = False
            if ok:
                out.append(a)
            elif a not in self._unusable_logged:
                self._unusable_logged.add(a)
                log.warning("address left out of the protected sets", address=a,
                            reason="IPv6 is off" if ":" in a else "not an IP address")
        return frozenset(out)

    def _apply_sets(self) -> None:
        # (taken before the kernel changes: an observed connection is classified
        # by the sets, identities and policy in force when it happened)
        since = time.time()
        wanted = self.wanted_sets()
        if self.datapath is not None:
            backend = self.datapath.backend
            for which, addrs in wanted.items():
                if backend.addresses(which) != addrs:
                    backend.set_addresses(which, addrs)
            # Named containers and the host only: a network's unassigned
            # addresses (in LOCAL while pending) get no line of their own, so
            # a container not bound yet cannot forge them into many lines.
            named = (self._usable(self.inventory.local_container_addresses())
                     if self.policy.container_enabled else frozenset())
            self._send_locals(named | wanted[AddressSet.HOST])
        self.observed.set_scope(ObservationScope(wanted[AddressSet.CLUSTER], self.inventory,
                                                 self.compiled, since))

    def _send_locals(self, addresses: frozenset[str]) -> None:
        """The verdict workers' waiting room gives each of these a line of its
        own (their addresses are vouched for by anti-spoofing); other sources
        wait by prefix."""
        if self.datapath is not None and addresses != self._sent_locals:
            self.datapath.workers.set_local_sources(addresses)
            self._sent_locals = addresses

    def bind_ports(self) -> None:
        """Anti-spoofing: bind each protected container's port (the host end of
        its veth) to its addresses; a packet from the port with another source
        address is then dropped in the kernel. Resolved once per container
        start (its process id); with containers unprotected, nothing is bound."""
        if self.datapath is None:
            return
        with self._lock:
            enabled = self.policy.container_enabled
            containers = {c.identity.id or f"pid {c.pid}": c for c in self.local.values()}
        with self._ports_lock:
            cache: dict[str, tuple[tuple[int, tuple[str, ...]], list[Port]]] = {}
            merged: dict[str, Port] = {}
            owner: dict[str, DiscoveredContainer] = {}
            for key, c in containers.items() if enabled else ():
                sig = (c.pid, tuple(sorted(c.addresses)))
                have = self._port_cache.get(key)
                found = have[1] if have is not None and have[0] == sig else self._resolve_ports(c)
                cache[key] = (sig, found)
            # An interface name claimed twice: a container gone (its stop not
            # seen yet) and a new one given its freed veth name. Resolve the
            # claimants again: the gone one's namespace no longer has it.
            claims: dict[str, list[str]] = {}
            for key, (_, found) in cache.items():
                for port in found:
                    claims.setdefault(port.interface, []).append(key)
            for keys in (k for k in claims.values() if len(k) > 1):
                for key in keys:
                    c = containers[key]
                    cache[key] = (cache[key][0], self._resolve_ports(c))
            for key, (_, found) in cache.items():
                c = containers[key]
                for port in found:
                    before = merged.get(port.interface)
                    addresses = port.addresses | (before.addresses if before else frozenset())
                    merged[port.interface] = Port(port.interface, addresses, port.bridged)
                    owner[port.interface] = c
            self._port_cache = cache
            backend = self.datapath.backend
            before_ports = backend.ports()
            changed = before_ports != merged
            if changed:
                # rebinding restarts every port's counter: take what they hold
                # first (named after their owners then)
                with contextlib.suppress(DatapathError):
                    self._fold_spoofed(backend.spoof_counters())
            self._port_owner = owner
            try:
                backend.set_ports(merged.values())
                if changed:
                    self._spoof_prev = {}
            except DatapathError as exc:  # the next change or repair tries again
                log.error("anti-spoofing: ports not bound", error=str(exc)[:300])
                self._port_cache = {}
                return
        gone = sorted(set(before_ports) - set(merged))
        added = sorted(i for i in merged if before_ports.get(i) != merged[i])
        if gone or added:
            log.info("anti-spoofing: ports bound to their containers' addresses",
                     bound=[f"{i} ({owner[i].identity.name}: "
                            f"{', '.join(sorted(merged[i].addresses))})" for i in added],
                     unbound=gone, ports=len(merged))

    def _container_of(self, key: str) -> DiscoveredContainer | None:
        return next((c for c in self.local.values()
                     if (c.identity.id or f"pid {c.pid}") == key), None)

    def _resolve_ports(self, c: DiscoveredContainer) -> list[Port]:
        if not c.pid:
            log.warning("anti-spoofing: the runtime gives no process id for this container; "
                        "its port is not bound (its packets' source addresses are not "
                        "checked)", container=c.identity.name, addresses=list(c.addresses))
            return []
        try:
            found = workload_ports(NetnsRef(f"/proc/{c.pid}/ns/net"), c.addresses, self.netns)
        except DatapathError as exc:
            log.warning("anti-spoofing: the container's port could not be found (it may "
                        "have stopped)", container=c.identity.name, error=str(exc)[:300])
            return []
        if not found:
            log.warning("anti-spoofing: no veth of this container ends in this namespace; "
                        "its source addresses are not checked", container=c.identity.name,
                        addresses=list(c.addresses))
        return found

    def _fold_spoofed(self, counters: dict[str, int]) -> None:
        """Per-port counters read now -> the drops since the last read, pending
        a report, with the port's owner now (it may be gone by the report)."""
        for iface, n in counters.items():
            prev = self._spoof_prev.get(iface, 0)
            delta = n - prev if n >= prev else n  # rebound: its counters restarted
            if delta > 0:
                count, owner = self._spoof_pending.get(iface, (0, None))
                self._spoof_pending[iface] = (count + delta,
                                              self._port_owner.get(iface) or owner)
                self.spoofed += delta
        self._spoof_prev = counters

    def poll_spoofed(self, now: float, *, final: bool = False) -> None:
        """Forged-source drops per port -> one log line and one audit per port
        and SPOOF_REPORT_INTERVAL at most (a flood of forged packets costs the
        kernel's counters only); ``final`` (stopping): everything pending."""
        assert self.datapath is not None
        with self._ports_lock:
            self._fold_spoofed(self.datapath.backend.spoof_counters())
            pending = list(self._spoof_pending.items())
        for iface, (n, c) in pending:
            last = self._spoof_reported.get(iface)
            if not final and last is not None and now - last < SPOOF_REPORT_INTERVAL:
                continue
            with self._ports_lock:
                # (a rebinding may have added to it meanwhile: kept for the next)
                left = self._spoof_pending.pop(iface, (n, c))[0] - n
                if left > 0:
                    self._spoof_pending[iface] = (left, c)
            self._spoof_reported[iface] = now
            seconds = SPOOF_REPORT_INTERVAL if last is None else now - last
            name = c.identity.name if c is not None else "(not known)"
            log.warning("anti-spoofing: dropped packets with a forged source address from "
                        "a container's port", interface=iface, container=name, packets=n)
            if c is not None and c.addresses:
                # the port's owner as bound (it may have left the inventory since)
                src = self.recorder.info(Endpoint(address=c.addresses[0], container=c.identity))
                self.recorder.add_audit(spoof_audit(
                    self.clock(), src, host=self.config.hostname, dropped=n,
                    seconds=max(seconds, KERNEL_POLL_INTERVAL), interface=iface,
                    reporter=self.config.hostname))
        for iface in [i for i in self._spoof_reported if i not in self._spoof_prev
                      and i not in self._spoof_pending]:
            del self._spoof_reported[iface]

    def _apply_mode(self, *, start_only: bool = False) -> None:
        """Observe with conntrack while anything is not enforced (either switch
        off): connections of the unenforced kind are recorded from it."""
        if self.datapath is None:
            return
        observe = not (self.policy.container_enabled and self.policy.host_enabled)
        if start_only and not observe:
            return
        if observe and self.observer is None:
            # (kept running while one switch is on: the other kind's connections)
            self.observer = ConntrackObserver(self._on_observed, self.netns,
                                              ipv6=self.config.ipv6)
            self.observer.start()
            log.info("enforcement off (containers or hosts): observing connections (conntrack)")
        elif not observe and self.observer is not None:
            self.observer.stop()
            self.observer = None
            log.info("enforcement on for containers and hosts: conntrack observation stopped")

    def _repair_observer(self) -> None:
        """A conntrack process that ended (killed, or failed under a flood) is
        started again: observation must not stop for good, unnoticed."""
        with self._lock:
            observer = self.observer
            if observer is None or observer.running:
                return
            codes = observer.exit_codes()
            observer.stop()
            self.observer = None
            self.observer_restarts += 1
            log.warning("conntrack observation had stopped: started again (connections "
                        "made meanwhile were not observed)", exit_codes=codes,
                        restarts=self.observer_restarts)
            self._apply_mode()

    def _on_discovery_error(self, exc: Exception) -> None:
        with self._lock:
            if self.discovery_ok:
                self.discovery_ok = False
                self._publish_inventory()

    def _on_snapshot(self, found: list[DiscoveredContainer]) -> None:
        local = {a: c for c in found if not c.host_network for a in c.addresses}
        with self._lock:
            recovered = not self.discovery_ok
            self.discovery_ok = True
            if {a: c.identity for a, c in local.items()} == {
                    a: c.identity for a, c in self.local.items()}:
                if recovered:
                    self._publish_inventory()
                return
            added = set(local) - set(self.local)
            removed = set(self.local) - set(local)
            self.local = local
            self._publish_inventory()
            now = self.clock()
        log.info("inventory changed", containers=len(local), added=sorted(added),
                 removed=sorted(removed))
        self.bind_ports()
        self._networks_for(added)
        # A resync can see a container before its own start event arrives.
        for c in {local[a].identity.id or a: local[a] for a in added}.values():
            self._protected(c, now)

    def _on_start(self, c: DiscoveredContainer) -> None:
        """A container is starting: protect its addresses now, before it connects."""
        if c.host_network or not c.addresses:
            return
        with self._lock:
            if all(self.local.get(a) == c for a in c.addresses):
                return
            for a in c.addresses:
                self.local[a] = c
            # workers know the identity before the set has it
            self._send_inventory(self._inventory_update())
            if self.policy.container_enabled and self.datapath is not None:
                for a in c.addresses:
                    self.datapath.backend.add_address(AddressSet.LOCAL, a)
                    self.datapath.backend.add_address(AddressSet.CLUSTER, a)
                self._send_locals(self._sent_locals | frozenset(c.addresses)
                                  if self._sent_locals is not None else frozenset(c.addresses))
            now = self.clock()
            if self.runner is not None:
                self.runner.set_inventory(self.inventory_report())
        self.bind_ports()
        self._protected(c, now)
        self._networks_for(c.addresses)

    def _networks_for(self, added: Iterable[str]) -> None:
        """A network that appeared after the start (a CNI makes its bridge with
        the node's first pod): queue its addresses from now on."""
        if any(not _within(a, self.container_nets) for a in added):
            self._refresh_container_networks()

    def _protected(self, c: DiscoveredContainer, now: float) -> None:
        """Record and log the start-to-protected gap of a container just added."""
        # Only containers started while we run have a gap worth the name.
        gap = (now - c.started_at) * 1000 if c.started_at >= self.started > 0 else None
        if gap is not None:
            self.gaps_ms.append(gap)
        log.info("container protected" if self.policy.container_enabled else "container seen",
                 container=c.identity.name, image=c.identity.image, addresses=list(c.addresses),
                 start_to_protected_ms=None if gap is None else round(gap, 1))

    def protected_addresses(self) -> tuple[list[str], list[str]]:
        """(containers, host addresses) protected now, by identity (the LOCAL set
        also holds the container networks' not yet named addresses)."""
        p = self.policy
        containers = sorted(self.local) if p.container_enabled else []
        hosts = sorted(self.node.addresses) if p.host_enabled else []
        return containers, hosts

    def inventory_report(self) -> InventoryReport:
        n = self.node
        containers, hosts = self.protected_addresses()
        return InventoryReport(
            host=HostInfo(name=n.name, addresses=list(n.addresses), labels=dict(n.labels),
                          cluster=n.cluster),
            containers=[WorkloadInfo.of(a, c.identity) for a, c in sorted(self.local.items())],
            version=__version__,
            protected=len(containers) + len(hosts),
            datapath=None if self.datapath_problems is None else DatapathState(
                up=not self.datapath_problems,
                problems=[p[:300] for p in self.datapath_problems[:20]]),
        )

    def check_datapath(self) -> None:
        """Check the datapath's kernel state (changing nothing); a change of
        "up" or of what is wrong goes to the Console with the next inventory."""
        if self.datapath is None:
            return
        try:
            problems = self.datapath.check()
        except Exception as exc:
            problems = [f"datapath check failed: {exc}"]
        if problems == self.datapath_problems:
            return
        if problems:
            log.error("datapath down", problems=problems)
        elif self.datapath_problems:
            log.info("datapath up again")
        with self._lock:
            self.datapath_problems = problems
            if self.runner is not None:
                self.runner.set_inventory(self.inventory_report())

    # -- start ----------------------------------------------------------------------

    def _initial_policy(self) -> None:
        if self.config.policy_file is not None:
            self._load_policy_file(initial=True)
            return
        from cnnf.defender.link import ConsoleLink, LinkError
        from cnnf.defender.spool import Spool

        assert self.config.console is not None
        self.link = ConsoleLink(self.config.console, self.config.state_dir,
                                hostname=self.config.hostname,
                                enrollment_token=self.config.token, ca=self.config.ca)
        self.spool = Spool(self.config.state_dir / "spool")
        policy = self.link.saved_policy()
        self.cluster = self.link.saved_cluster()  # replaced by the Console's when it answers
        try:
            self.link.enroll()
            got = self.link.fetch_policy(-1, 0)
            if got is not None:
                revision, policy = got
                policy = policy.model_copy(update={"revision": revision})
                self.link.save_policy(revision, policy)
        except LinkError as exc:
            log.warning("console unreachable at start; using the saved policy",
                        console=self.config.console, error=str(exc),
                        saved=policy is not None)
        if policy is not None:
            self.set_policy(policy, source="console")

    def _start_link(self) -> None:
        if self.link is None:
            return
        from cnnf.defender.link import LinkRunner

        self.runner = LinkRunner(
            self.link, self.spool,
            on_policy=lambda rev, p: self.set_policy(
                p.model_copy(update={"revision": rev}), source="console"),
            on_inventory=self.set_cluster,
            policy_revision=self.policy.revision if self.link.policy_file.exists() else -1,
        )
        self.runner.set_inventory(self.inventory_report())
        self.runner.start()

    def start(self) -> None:
        self.started = self.clock()
        self.node = HostIdentity(name=self.config.hostname,
                                 labels=make_labels(self.config.host_labels),
                                 addresses=host_addresses(self.netns), cluster=self.config.cluster)
        self._initial_policy()  # a bad policy file fails the start before anything else
        self.container_nets = self._container_networks()
        self._load_cluster_file()
        try:
            found = self.discovery.snapshot()
            self.discovery_ok = True
        except Exception as exc:  # the engine may come later; watch() retries
            # logged once, as every outage ("container engine unreachable")
            self.discovery.engine.down(self.discovery.outage_reason(exc),
                                       self.discovery.describe(exc))
            found = []
        self.local = {a: c for c in found if not c.host_network for a in c.addresses}
        first = self._inventory_update()
        self.inventory = first.inventory()
        self._remember(first.generation, self.inventory)
        self._identities, self._sent_nets = first.identities(), first.container_nets
        eff = self._effective(self.policy)
        self.decide = VerdictDecide(eff, first)
        c = self.config
        dp_config = DatapathConfig(
            queue_num=c.queue_num, queues=c.queues, fail_open=not c.fail_closed,
            block_mode="reset", ipv6=c.ipv6, dns=c.dns, admission_rate=c.admission_rate,
            admission_burst=c.admission_burst, fastpath=c.fastpath, fastpath_ttl=c.fastpath_ttl,
        )
        datapath = Datapath(dp_config, self.decide, self.netns)
        datapath.on_dns = self._on_dns
        # The rules go in with their sets already filled: no moment in which a
        # protected workload is not in them (an earlier run's sets are swapped).
        for which, addrs in self.wanted_sets().items():
            datapath.backend.stage(which, addrs)
        report = datapath.start()
        self.datapath = datapath  # only now is the kernel state ours to remove
        if c.fastpath:
            self.cache = VerdictCache(FastPathTable(c.fastpath_ttl, dp_config.fastpath_max),
                                      datapath.backend)
        for item in report.removed_leftovers:
            log.warning("replaced leftover kernel state of an earlier run", item=item)
        for note in report.notes:
            log.info(note)
        self._apply_sets()
        self.bind_ports()
        self._apply_mode()
        self.check_datapath()
        log.info("defender started", hostname=self.config.hostname, netns=self.config.netns,
                 queues=self.config.queues, fail_open=not self.config.fail_closed,
                 admission_rate=c.admission_rate or None,
                 fastpath_ttl=c.fastpath_ttl if c.fastpath else None,
                 block_mode=eff.block_mode.value, host_addresses=list(self.node.addresses),
                 containers=len(self.local), revision=self.policy.revision,
                 container_enabled=self.policy.container_enabled,
                 host_enabled=self.policy.host_enabled)
        self._loop_turned = time.monotonic()
        beat = threading.Thread(target=self._heartbeat, name="cnnf-heartbeat", daemon=True)
        beat.start()
        self._threads.append(beat)
        # The callbacks never raise into discovery: a failure of ours (an ipset
        # command) is not the engine's, and must not end the discovery thread.
        t = threading.Thread(target=self.discovery.watch, name="cnnf-discovery", daemon=True,
                             args=(_logged(self._on_snapshot), _logged(self._on_start),
                                   self.stop_event),
                             kwargs={"on_error": _logged(self._on_discovery_error)})
        t.start()
        self._threads.append(t)
        self._start_link()
        if self.config.metrics is not None:
            host, port = self.config.metrics
            self._metrics = serve_metrics(host, port, self.figures)
            log.info("metrics endpoint", listen=f"{host}:{port}")

    # -- main loop --------------------------------------------------------------------

    def run(self) -> None:
        self.start()
        try:
            self.loop()
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask the main loop to end. Safe from a signal handler: it takes no lock (the
        handler runs on the main thread, which may be inside ``stop_event.wait``
        holding the event's lock: setting the event there deadlocked a Defender on
        SIGTERM); the loop sees the request within a turn and ``shutdown`` sets
        ``stop_event`` for the other threads."""
        self._stop_requested = True

    def report_interval(self) -> float:
        """Seconds between report batches: longer while the Console is unreachable,
        so flows aggregate over more time and the spool's batch bound lasts hours
        of outage instead of minutes."""
        if self.runner is not None and not self.runner.connected:
            return max(self.config.report_interval, OFFLINE_REPORT_INTERVAL)
        return self.config.report_interval

    def loop(self) -> None:
        now = time.monotonic()
        next_report = now + self.config.report_interval
        next_repair = now + self.config.repair_interval
        next_status = now
        next_watch = now + 0.5
        next_kernel = now + KERNEL_POLL_INTERVAL
        next_check = now + DATAPATH_CHECK_INTERVAL
        while not self._stop_requested and not self.stop_event.wait(0.05):
            self._loop_turned = time.monotonic()
            self.collect()
            if self.config.admission_rate:
                try:
                    self._tighten_if_behind()
                except Exception as exc:
                    log.error("admission limit not tightened", error=str(exc))
            now = time.monotonic()
            if now >= next_kernel:
                next_kernel = now + KERNEL_POLL_INTERVAL
                self.poll_kernel()
            if now >= next_watch:
                next_watch = now + 0.5
                if self.config.policy_file is not None:
                    self._load_policy_file(initial=False)
                self._load_cluster_file()
            # The Console back: the next batch within the short interval again.
            next_report = min(next_report, now + self.report_interval())
            if now >= next_report:
                next_report = now + self.report_interval()
                self.flush()
            if now >= next_repair:
                next_repair = now + self.config.repair_interval
                self.repair()
                next_check = now  # what the repair left
            if now >= next_check:
                next_check = now + DATAPATH_CHECK_INTERVAL
                self.check_datapath()
            if now >= next_status:
                next_status = now + 1.0
                self.write_status()

    def collect(self) -> None:
        """Verdict reports and observed connections -> the recorder."""
        assert self.datapath is not None
        compiled = self.compiled
        inv = self.inventory
        offers: list[tuple[FastVerdict, tuple[str, int, str], object, int, float | None]] = []
        for r in self.datapath.workers.reports():
            if r.detail == UNIDENTIFIED:
                self._on_unidentified(r.packet)
                continue
            if not isinstance(r.detail, tuple):
                continue
            p = r.packet
            verdict = verdict_from_detail(r.detail)
            # the identities it was decided with (the pod may be gone by now)
            decided = self._inventories.get(r.detail[8], (inv, 0.0))[0]
            attempt = ConnectionAttempt(decided.endpoint(p.src),
                                        decided.endpoint(p.dst, p.dst_domains), p.dport)
            action = (core.Action.ACCEPT if not verdict.blocked
                      else core.Action.DROP if r.decision == Decision.DROP
                      else core.Action.REJECT)
            decision = core.Decision(action, verdict, attempt)
            self.recorder.record(decision, compiled, r.time)
            fast = FAST_VERDICTS.get(r.decision)
            if fast is not None and self.cache is not None:
                # The cached record is the whole verdict, its staged ("would")
                # part too: every repeat the kernel answers is recorded with it,
                # so would verdicts are counted as exactly as the others (a
                # policy change, staging included, invalidates every entry first).
                # Compact: entries live for the TTL, and a scan makes thousands.
                # The identities are looked up again when repeats are counted
                # (a change of either end's identity removes the entry first).
                detail = self._shared.setdefault(r.detail[:7], r.detail[:7])
                key = (sys.intern(p.src), p.dport, sys.intern(p.dst))
                # a verdict decided with DNS names ends when the first of them does
                until = (self.datapath.dns_cache.expiry(p.dst, p.dst_domains)
                         if p.dst_domains else None)
                offers.append((fast, key, (detail, p.dst_domains), r.detail[7], until))
        if offers and self.cache is not None:
            with self._lock:
                self.cache.offer(offers, time.monotonic())
        for source, n in self.datapath.workers.shed().items():
            self._shed[source] = self._shed.get(source, 0) + n
            self._shed_recent[source] = self._shed_recent.get(source, 0) + n
        for source, n in self.datapath.workers.late().items():
            self._shed_recent[source] = self._shed_recent.get(source, 0) + n
        self._record_fast()
        self._collect_observed()

    def _on_observed(self, ev: ObservedConnection) -> None:
        """A new connection conntrack saw (from its reader threads). Never blocks.
        Classified at once, with the sets, identities and policy in force when it
        happened: one that is not this Defender's to record (a verdict loop queued
        it, another Defender records it) is not queued; a repeat of one waiting
        is folded into it; over a bound (in all, or for its source) it is
        dropped and counted, logged at most once a minute with the source."""
        source = self.observed.offer(ev)
        if source is None:
            return
        now = time.monotonic()
        with self._observed_lock:
            dropped_total = self.observed.stats.dropped
            when, then = self._observed_logged
            if when and now - when < OBSERVED_DROP_LOG_SECONDS:
                return
            self._observed_logged = (now, dropped_total)
        log.warning("observed connections dropped: more than observation keeps up with "
                    "(not recorded; enforcement is not affected)",
                    dropped=dropped_total - then, total=dropped_total, source=source,
                    from_source=self.observed.stats.dropped_by.get(source, 0),
                    waiting=len(self.observed), limit=OBSERVED_QUEUE_MAX,
                    per_source=OBSERVED_SOURCE_MAX)

    @property
    def observed_dropped(self) -> int:
        return self.observed.stats.dropped

    def _collect_observed(self, *, budget: float = OBSERVED_BATCH_SECONDS,
                          limit: int = OBSERVED_BATCH_MAX) -> int:
        """Connections conntrack saw with enforcement off for their kind -> flows,
        evaluated against the policy and named with the identities in force when
        they happened (what it would do), each connection once in the cluster
        (see :meth:`ObservationScope.owner`; the others were never queued). At
        most ``limit`` entries (a connection and its repeats), one source after
        the other, for at most ``budget`` seconds, per call: the rest wait for
        the next turn of the main loop, so a flood of observed connections
        cannot stall enforcement's reports, the flushes to the Console or the
        status. Returns how many entries were taken."""
        assert self.datapath is not None
        deciders: dict[int, core.Decider] = {}
        deadline = time.monotonic() + budget
        taken = 0
        while taken < limit:
            batch = self.observed.take(min(OBSERVED_TAKE_CHUNK, limit - taken))
            if not batch:
                break
            taken += len(batch)
            for p in batch:
                decider = deciders.get(id(p.scope))
                if decider is None:
                    decider = deciders[id(p.scope)] = core.Decider(p.scope.policy,
                                                                   p.scope.inventory)
                self.recorder.observe(decider, p.src, p.dst, p.port, now=p.last, first=p.first,
                                      count=p.count, domains=self.datapath.domains_for(p.dst))
            if time.monotonic() >= deadline:
                break
        return taken

    # -- the kernel fast path and the admission limit ------------------------------------

    def _record_fast(self) -> None:
        """Repeats the kernel answered -> flows (and audits of prevented ones),
        each with the inventory and policy in force when it was counted."""
        if self.cache is None:
            return
        now = self.clock()
        for cached, n, context in self.cache.drain():
            inv, compiled = cast("tuple[Inventory, CompiledPolicy]", context)
            detail, domains = cast("tuple[VerdictDetail, tuple[str, ...]]", cached.record)
            src, port, dst = cached.key
            attempt = ConnectionAttempt(inv.endpoint(src), inv.endpoint(dst, domains), port)
            decision = core.Decision(FAST_ACTIONS[cached.verdict], verdict_from_detail(detail),
                                     attempt)
            self.recorder.record(decision, compiled, now, count=n)

    def _context(self) -> tuple[Inventory, CompiledPolicy]:
        return self.inventory, self.compiled

    def _on_dns(self, records: list[DnsRecord], gained: set[str]) -> None:
        """A DNS answer (called before it is let through). Addresses that gained a
        name lose their cached verdicts, and the workers get the names and the
        new epoch in one message, so none decides with the new epoch and the old
        names."""
        assert self.datapath is not None
        with self._lock:
            then = None
            if gained and self.cache is not None:
                then = CacheEpoch(self.cache.invalidate(gained, self._context()))
                if self.decide is not None:
                    self.decide.update(then)
            self.datapath.workers.dns_update(records, then)

    def poll_kernel(self) -> None:
        """Read the fast path's counters (expiring old entries) and the admission
        limit's drops per source."""
        assert self.datapath is not None
        backend = self.datapath.backend
        now = time.monotonic()
        try:
            if self.cache is not None:
                reading = self.cache.read()  # a few ipset saves: not under the lock
                with self._lock:
                    self.cache.apply(reading, self._context())
                    self.cache.expire(now, self._context())
            counters = backend.overload_counters() if self.config.admission_rate else {}
            shed, self._shed = self._shed, {}
            for report in self.overload.update(counters, now, shed):
                self._on_overload(report)
            if self.config.admission_rate:
                self._renew_tightened(counters)
                idle = self.overload.idle_sources(now)
                if idle:
                    backend.overload_forget(idle)
                    self.overload.forget(idle)  # only once they left the kernel set
        except Exception as exc:  # a bad reading must not stop the main loop
            log.error("kernel counters not read", error=str(exc))
        try:
            self.poll_spoofed(now)
        except Exception as exc:
            log.error("anti-spoofing counters not read", error=str(exc))

    def _tighten_if_behind(self) -> None:
        """The sources the verdict loop dropped SYNs of (its waiting room was
        full and they held the most, or their SYNs waited over a second) or
        decided late (over LATE after reading them): it cannot keep up with
        them; they get a tenth of the admission rate in the
        kernel, at once (checked every turn of the main loop): their flood is
        then dropped before the queue, whatever CPU the loop gets, and the other
        sources keep their full rate."""
        assert self.datapath is not None
        recent, self._shed_recent = self._shed_recent, {}
        new = [a for a, n in recent.items() if n >= BUSY_MIN_SHED and a not in self.tightened
               and in_kernel(a)]
        now = time.monotonic()
        for a in recent:
            if a in self.tightened:
                self.tightened[a] = now
        if not new:
            return
        self.datapath.backend.busy(in_kernel(*new), True)
        for a in new:
            self.tightened[a] = now
        log.warning("overload: the verdict loop cannot keep up with these sources; their "
                    "admission limit is tightened",
                    limit_per_source=DatapathConfig(
                        admission_rate=self.config.admission_rate).busy_rate,
                    sources=self._named((a, recent[a]) for a in new))

    def _renew_tightened(self, counters: dict[str, int]) -> None:
        """Every kernel poll: a tightened source that still floods (the limit
        dropped its SYNs since the last poll, or the loop did) stays tightened;
        one that stopped for ``BUSY_TIMEOUT`` gets the full rate back (the
        kernel entry lapses by itself, too, if this is not called)."""
        assert self.datapath is not None
        now = time.monotonic()
        for a in self.tightened:
            if counters.get(a, 0) > self._over_prev.get(a, 0):
                self.tightened[a] = now
        self._over_prev = dict(counters)
        renew = [a for a, t in self.tightened.items() if now - t < BUSY_TIMEOUT]
        done = [a for a in self.tightened if a not in renew]
        backend = self.datapath.backend
        if renew:
            backend.busy(in_kernel(*renew), True)
        if done:
            backend.busy(in_kernel(*done), False)
            for a in done:
                del self.tightened[a]
            log.warning("overload: flooding stopped; the admission limit is back to the "
                        "full rate", limit_per_source=self.config.admission_rate,
                        sources=[endpoint_name(self.recorder.info(self.inventory.endpoint(a)))
                                 for a in done])

    def _heartbeat(self) -> None:
        """Keep the kernel's cached verdicts and admission limit on while this
        process lives (its own thread: a busy main loop must not switch them
        off). They stop within ``HEARTBEAT_TIMEOUT`` seconds of a crash."""
        assert self.datapath is not None
        failing = False
        while not self.stop_event.wait(1.0):
            # Anti-spoofing stays on while this process lives, whatever the main
            # loop or the fast path do: the workers decide by source address.
            try:
                self.datapath.backend.heartbeat_ports()
            except Exception as exc:
                log.error("anti-spoofing heartbeat failed", error=str(exc))
            # Not for a main loop that stopped turning (its invalidations and
            # counts would stop too), nor while a cache rebuild is failing.
            wedged = time.monotonic() - self._loop_turned > LOOP_STALL_SECONDS
            if wedged or (self.cache is not None and self.cache.dirty):
                if not failing:
                    log.error("fast path and admission limit paused: "
                              + ("the main loop is stalled" if wedged
                                 else "the cached verdicts could not be replaced"))
                failing = True
                continue
            try:
                self.datapath.backend.heartbeat()
            except Exception as exc:
                if not failing:
                    log.error("fast path heartbeat failed; cached verdicts lapse and every "
                              "SYN goes to the verdict loop", error=str(exc))
                failing = True
                continue
            if failing:
                log.info("fast path heartbeat back")
            failing = False

    def _named(self, counts: Iterable[tuple[str, int]]) -> list[str]:
        """``image (container): n`` per source address, for log lines."""
        return [f"{endpoint_name(self.recorder.info(self.inventory.endpoint(a)))}: {n}"
                for a, n in counts]

    def _on_overload(self, report: OverloadReport) -> None:
        """Log the episode (rate-limited by the tracker) and raise one overload
        audit per top source."""
        rate = self.config.admission_rate
        top = self._named(report.dropped.items())
        by_loop = report.shed_total
        if report.ended:
            log.warning("overload ended", lasted_s=round(time.monotonic() - report.started, 1),
                        dropped=report.episode, by_verdict_loop=report.episode_shed,
                        top_sources=self._named(self.overload.top()))
        elif report.first:
            log.warning("overload: the admission limit is dropping new connections"
                        if by_loop < report.total else
                        "overload: the verdict loop is dropping new connections it cannot "
                        "keep up with",
                        limit_per_source=rate, dropped=report.total,
                        by_verdict_loop=by_loop, top_sources=top)
        else:
            log.warning("overload continues", seconds=round(report.seconds, 1),
                        dropped=report.total, by_verdict_loop=by_loop, top_sources=top)
        now = self.clock()
        busy_rate = DatapathConfig(admission_rate=rate).busy_rate if rate else 0
        for address, n in report.dropped.items():
            src = self.recorder.info(self.inventory.endpoint(address))
            self.recorder.add_audit(overload_audit(
                now, src, host=self.config.hostname, dropped=n,
                seconds=max(report.seconds, KERNEL_POLL_INTERVAL), rate=rate,
                reporter=self.config.hostname, shed=report.shed.get(address, 0),
                tightened=busy_rate if address in self.tightened else 0))

    def _on_unidentified(self, p: PacketInfo) -> None:
        self.unidentified += 1
        addr = p.src if p.src not in self.inventory.containers else p.dst
        if addr not in self._unidentified_seen and len(self._unidentified_seen) < 10000:
            self._unidentified_seen.add(addr)
            log.info("dropped a SYN of a container not discovered yet; TCP retransmits it",
                     address=addr, src=p.src, dst=p.dst, port=p.dport)

    def flush(self, final: bool = False) -> None:
        flows, audits = self.recorder.drain(self.clock(), final=final)
        self.flows_out += len(flows)
        self.audits_out += len(audits)
        if self.output is not None:
            self.output.write(flows, audits)
        if self.spool is not None:
            dropped = self.spool.take_dropped()
            if flows or audits or dropped:
                from cnnf.model.records import ReportBatch

                n = MAX_BATCH_RECORDS
                for i in range(0, max(len(flows), len(audits), 1), n):
                    self.spool.put(ReportBatch(batch_id=uuid.uuid4().hex, flows=flows[i:i + n],
                                               audits=audits[i:i + n], dropped=dropped))
                    dropped = 0
                if self.runner is not None:
                    self.runner.flush_soon()

    def _remind_engine_down(self) -> None:
        """Every minute of an outage, say again that workloads are not named
        (a wrong socket path would otherwise say so once, at the start)."""
        engine = self.discovery.engine
        outage = engine.outage_seconds()
        if outage < ENGINE_REMINDER_SECONDS:
            self._reminded = 0.0
            return
        if outage - self._reminded >= ENGINE_REMINDER_SECONDS:
            self._reminded = outage
            log.warning("container engine still unreachable: new workloads are not named",
                        outage_s=round(outage), endpoint=self.discovery.endpoint,
                        runtime=self.discovery.kind, reason=engine.reason,
                        unnamed=("held, then decided as unknown addresses"
                                 if self.config.fail_closed else
                                 "decided as unknown addresses"))

    def _container_networks(self) -> tuple[str, ...]:
        """The bridges' networks and the --container-net ones."""
        return tuple(sorted(set(container_networks(self.netns)) |
                            set(self.config.container_nets)))

    def _refresh_container_networks(self) -> None:
        try:
            nets = self._container_networks()
        except Exception as exc:
            log.warning("container networks not read", error=str(exc))
            return
        if nets != self.container_nets:
            log.info("container networks changed", networks=list(nets))
            with self._lock:
                self.container_nets = nets
                self._publish_inventory()

    def repair(self) -> None:
        assert self.datapath is not None
        self._refresh_container_networks()
        self._remind_engine_down()
        self._repair_observer()
        self.bind_ports()  # (cached: no work unless a binding failed)
        try:
            repaired = self.datapath.check_and_repair()
        except Exception as exc:
            log.error("repair check failed", error=str(exc))
            return
        if not repaired:
            return
        self.repairs += len(repaired)
        for item in repaired:
            log.warning("repaired kernel state", item=item)
        if any(r.startswith("verdict worker") for r in repaired):
            with self._lock:  # restarted workers: resend the current snapshot
                self._broadcast(PolicyUpdate(self._effective(self.policy), self._epoch()))
                self._broadcast(self._inventory_update())

        if self.cache is not None and any("cnnf-fp" in r for r in repaired):
            with self._lock:  # a fast-path set was recreated empty: start afresh
                self._broadcast(CacheEpoch(self.cache.invalidate_all(self._context())))

    # -- status and metrics -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        assert self.datapath is not None
        stats = self.datapath.stats()
        total = stats.total
        sets = self.wanted_sets()
        protected = []
        containers, hosts = self.protected_addresses()
        for a in containers:
            c = self.local.get(a)
            i = c.identity if c else None
            protected.append({"address": a, "kind": "pod" if i and i.pod else "container",
                              "name": i.name if i else "",
                              "image": i.image if i else "",
                              "pod": f"{i.namespace}/{i.pod}" if i and i.pod else "",
                              "images": list(i.all_images) if i else []})
        protected += [{"address": a, "kind": "host", "name": self.node.name, "image": ""}
                      for a in hosts]
        gaps = list(self.gaps_ms)
        spool = self.spool.size() if self.spool is not None else (0, 0)
        return {
            "pid": os.getpid(),
            "worker_pids": self.datapath.workers.pids,
            "hostname": self.config.hostname,
            "netns": self.config.netns,
            "started": self.started,
            "updated": self.clock(),
            "mode": {"container": self.policy.container_enabled,
                     "host": self.policy.host_enabled},
            "policy_revision": self.policy.revision,
            "block_mode": self._effective(self.policy).block_mode.value,
            "fail_open": not self.config.fail_closed,
            "queues": [self.config.queue_num + i for i in range(self.config.queues)],
            "protected": protected,
            "cluster_protected": len(sets[AddressSet.CLUSTER]),
            "container_networks": list(self.container_nets),
            "unidentified_dropped": self.unidentified,
            "cluster_revision": self.cluster.revision if self.cluster is not None else None,
            "containers": len(self.local),
            "counters": {
                "accepted": total.accepted, "audited": total.audited,
                "rejected": total.rejected, "dropped": total.dropped, "errors": total.errors,
                "reports_lost": total.reports_lost, "shed": total.shed,
            },
            "flows": self.flows_out,
            "audits": self.audits_out,
            "repairs": self.repairs,
            "datapath": None if self.datapath_problems is None else {
                "up": not self.datapath_problems, "problems": list(self.datapath_problems)},
            "start_to_protected_ms": {
                "count": len(gaps),
                "last": round(gaps[-1], 1) if gaps else None,
                "max": round(max(gaps), 1) if gaps else None,
            },
            "console": None if self.link is None else {
                "url": self.config.console,
                "connected": bool(self.runner and self.runner.connected),
                "spool_batches": spool[0], "spool_bytes": spool[1],
            },
            "engine": {**self.discovery.engine.as_dict(), "runtime": self.discovery.kind,
                       "endpoint": self.discovery.endpoint},
            "fastpath": None if self.cache is None else {
                "entries": len(self.cache), "ttl": self.config.fastpath_ttl,
                "hits": self._fast_hit_counts(),
            },
            # conntrack observation (either enforcement switch off): connections
            # waiting, those dropped because observation could not keep up, and
            # the sources that lost the most (outside clients, no Defender knows
            # them: by /24 or /64 prefix, "outside" for those beyond 256 prefixes)
            "observation": {
                "running": self.observer is not None and self.observer.running,
                "waiting": self.observed.waiting, "dropped": self.observed_dropped,
                # kernel-side losses (bursts over the event buffer) and restarts
                "overruns": self.observer.overruns if self.observer is not None else 0,
                "restarts": self.observer_restarts,
                # lines of conntrack's output not understood (connections lost)
                "unparsed": self.observer.unparsed if self.observer is not None else 0,
                "top": [{"address": a, "name": self._source_label(a) if not is_outside(a) else "",
                         "dropped": n} for a, n in self.observed.top()],
            },
            "admission": {
                "rate": self.config.admission_rate, "dropped": self.overload.total,
                "by_verdict_loop": self.overload.shed_total,
                "tightened": sorted(self.tightened),
                "tightened_rate": DatapathConfig(
                    admission_rate=self.config.admission_rate).busy_rate,
                "overload": self.overload.active,
                "top": [{"address": a, "name": self._source_label(a), "dropped": n}
                        for a, n in self.overload.top()],
            },
            "anti_spoofing": {
                "ports": len(self._port_owner), "dropped": self.spoofed,
                "unbound": sorted({c.identity.name for key, (_, found) in
                                   self._port_cache.items() if not found
                                   for c in [self._container_of(key)] if c is not None}),
            },
        }

    def write_status(self) -> None:
        try:
            data = self.status()
        except Exception as exc:
            log.warning("status not written", error=str(exc))
            return
        path = self.config.status_file
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
        # What this Defender would push to a Console (InventoryReport): standalone
        # Defenders' files merged make a --cluster-inventory file.
        inv = self.config.state_dir / "inventory.json"
        tmp = inv.with_suffix(".tmp")
        tmp.write_text(self.inventory_report().model_dump_json(indent=2))
        os.replace(tmp, inv)

    def figures(self) -> Figures:
        assert self.datapath is not None
        stats = self.datapath.stats()
        t = stats.total
        return Figures(
            verdicts={"accept": t.accepted, "alert": t.audited, "reject": t.rejected,
                      "drop": t.dropped, "error": t.errors},
            protected=sum(map(len, self.protected_addresses())),
            policy_revision=self.policy.revision,
            queue_waiting=sum(q.waiting for q in stats.queues),
            queue_dropped=sum(q.dropped for q in stats.queues),
            flows=self.flows_out, audits=self.audits_out, repairs=self.repairs,
            last_protect_gap_ms=self.gaps_ms[-1] if self.gaps_ms else 0.0,
            spool_batches=self.spool.size()[0] if self.spool is not None else 0,
            console_connected=int(bool(self.runner and self.runner.connected)),
            unidentified_dropped=self.unidentified,
            engine_up=int(self.discovery.engine.up),
            engine_outages=self.discovery.engine.outages,
            engine_outage_seconds=self.discovery.engine.outage_seconds(),
            queue_user_dropped=sum(q.user_dropped for q in stats.queues),
            fastpath_entries=len(self.cache) if self.cache is not None else 0,
            fastpath_hits=self._fast_hit_counts(),
            admission_dropped=self.overload.total,
            verdict_shed=t.shed,
            spoofed_dropped=self.spoofed,
            spoof_ports=len(self._port_owner),
            admission_top=[(a, self._source_label(a), n) for a, n in self.overload.top(10)],
            overload=int(self.overload.active),
            admission_tightened=len(self.tightened),
            observed_waiting=self.observed.waiting,
            observed_dropped=self.observed_dropped,
            observed_top=[(a, self._source_label(a) if not is_outside(a) else "", n)
                          for a, n in self.observed.top(10)],
            observed_overruns=self.observer.overruns if self.observer is not None else 0,
            observed_restarts=self.observer_restarts,
            observed_unparsed=self.observer.unparsed if self.observer is not None else 0,
        )

    def _fast_hit_counts(self) -> dict[str, int]:
        hits = self.cache.hits if self.cache is not None else dict.fromkeys(FastVerdict, 0)
        return {v.name.lower(): n for v, n in hits.items()}

    def _source_label(self, address: str) -> str:
        ident = self.inventory.identity(address)
        return ident.name if ident is not None else ""

    # -- stop ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Remove every rule, set and queue binding; flush what was recorded."""
        self.stop_event.set()
        if self.runner is not None:
            self.runner.stop(timeout=0.2)  # daemon threads; a long-poll may be in flight
        if self.observer is not None:
            self.observer.stop()
            self.observer = None
        removed: list[str] = []
        if self.datapath is not None:
            with contextlib.suppress(Exception):
                self.poll_kernel()  # what the fast path answered since the last read
            with contextlib.suppress(Exception):
                self.poll_spoofed(time.monotonic(), final=True)  # nothing left unreported
            with contextlib.suppress(Exception):
                self.collect()
            try:
                removed = self.datapath.stop(keep_rules=self.config.fail_closed)
            except Exception as exc:
                log.error("removing kernel state failed; run `cnnf defender cleanup`",
                          error=str(exc))
        self.flush(final=True)
        if self.link is not None and self.spool is not None:
            with contextlib.suppress(Exception):
                self.link.deliver(self.spool)
            self.link.close()
        if self._metrics is not None:
            server = self._metrics[0] if isinstance(self._metrics, tuple) else self._metrics
            with contextlib.suppress(Exception):
                server.shutdown()
        self.discovery.close()
        if self.output is not None:
            self.output.close()
        if self.datapath is None:
            log.info("defender stopped before its datapath started; no kernel state touched")
            return
        self.config.status_file.unlink(missing_ok=True)
        (self.config.state_dir / "inventory.json").unlink(missing_ok=True)
        if self.config.fail_closed:
            log.warning("defender stopped; fail-closed: its rules stay and refuse new "
                        "connections of protected workloads until the next start or "
                        "`cnnf defender cleanup`", done=removed)
        else:
            log.info("defender stopped; kernel state removed", removed=len(removed))
