"""The Defender's datapath: the kernel-facing part of enforcement and observation.

Everything here does I/O (iptables, ipset, NFQUEUE, conntrack); the decision
itself comes from the caller as ``decide(packet) -> Decision | Outcome``, so the
datapath knows nothing about policy. All kernel state lives in one network
namespace (``netns``: a name under ``/run/netns``, a path, or None for the
current one) and is owned by tag: chains ``CNNF-*``, rules in built-in chains
commented ``cnnf``, ipsets ``cnnf-*``.

How the Defender uses it::

    dp = Datapath(DatapathConfig(queues=2, block_mode="reset", fail_open=True),
                  decide=decider, netns=None)
    report = dp.start()              # binds the queues, then installs the rules
    log(report.notes)                # e.g. "set net.bridge.bridge-nf-call-iptables=1 ..."
    dp.backend.add_address(AddressSet.LOCAL, "10.88.0.5")     # container starting
    dp.backend.set_addresses(AddressSet.CLUSTER, all_protected) # from the Console
    dp.workers.broadcast(new_snapshot)   # -> decider.update(new_snapshot) in each worker
    every few seconds: log(dp.check_and_repair())   # rules, sets, dead workers
    every second: for r in dp.workers.reports(): record flow / audit
    dp.domains_for("93.184.216.34")  # names seen in DNS answers to protected workloads
    dp.stats()                       # queue statistics and verdict counters
    dp.stop()                        # on SIGTERM/SIGINT: unbind, remove everything
    cleanup(netns)                   # `cnnf defender cleanup` after a crash

Parts, usable on their own:

- :class:`~cnnf.defender.datapath.backend.FirewallBackend` (protocol) and
  :class:`~cnnf.defender.datapath.iptables.IptablesBackend`: rules and sets.
  LOCAL = protected containers here, HOST = this host's addresses (when host
  protection is on), CLUSTER = protected workloads anywhere (superset of both).
  SYNs of NEW connections are queued outbound from LOCAL/HOST and inbound to
  LOCAL/HOST from sources outside CLUSTER, so each attempt is decided once.
  The disabled mode keeps the rules with empty LOCAL and HOST sets (nothing is
  queued) and observes with :class:`ConntrackObserver`.
- :class:`~cnnf.defender.datapath.workers.VerdictWorkers`: one forked process
  per queue; ``decide`` runs there, on a parsed :class:`PacketInfo`. ``decide``
  should answer from an immutable snapshot; replace the snapshot by
  ``broadcast()``-ing it (workers call ``decide.update(message)``). Reports
  (:class:`Report`) come back in batches; counters live in shared memory. A
  restarted worker starts from the ``decide`` it was forked with: broadcast the
  current snapshot again after ``restart_dead()``.
- :class:`~cnnf.defender.datapath.dns.DnsWatcher` / :class:`DnsCache`: names from
  DNS answers, recorded (here and in every worker) before the answer is accepted.
- :class:`~cnnf.defender.datapath.conntrack.ConntrackObserver`: NEW connection
  events when nothing is enforced.
- :func:`queue_stats` and :class:`VerdictCounters`: ``status`` and metrics.
- :func:`probe` / :func:`select_backend`: what the namespace supports (the
  NFQUEUE target, ipset, br_netfilter, the nft ``queue`` statement).

Errors: :class:`DatapathError` (a :class:`~cnnf.errors.CnnfError`) names the
command or call that failed; :class:`QueueBusyError` when another process holds
a queue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from cnnf.defender.datapath.backend import (
    FASTPATH_GRACE,
    HEARTBEAT_TIMEOUT,
    AddressSet,
    DatapathConfig,
    FastEntry,
    FastVerdict,
    FirewallBackend,
    InstallReport,
)
from cnnf.defender.datapath.conntrack import ConntrackObserver, ObservedConnection
from cnnf.defender.datapath.dns import DnsCache, DnsRecord, DnsWatcher, parse_dns_answer
from cnnf.defender.datapath.iptables import IptablesBackend, cleanup
from cnnf.defender.datapath.netns import DatapathError, NetnsRef
from cnnf.defender.datapath.nfqueue import QueueBusyError
from cnnf.defender.datapath.packet import Decision, Outcome, PacketInfo, parse_packet
from cnnf.defender.datapath.probe import Capabilities, probe, select_backend
from cnnf.defender.datapath.stats import QueueStats, VerdictCounters, parse_queue_stats
from cnnf.defender.datapath.workers import Decide, Report, VerdictWorkers


def queue_stats(netns: str | NetnsRef | None = None) -> list[QueueStats]:
    """The bound NFQUEUE queues of a namespace (all owners, not just ours)."""
    ref = NetnsRef.of(netns)
    try:
        return parse_queue_stats(ref.proc_net("netfilter/nfnetlink_queue"))
    except (OSError, DatapathError):
        return []  # the file appears once nfnetlink_queue is loaded


@dataclass(frozen=True, slots=True)
class DatapathStats:
    queues: list[QueueStats]
    counters: list[VerdictCounters]  # per SYN queue

    @property
    def total(self) -> VerdictCounters:
        return sum(self.counters, VerdictCounters())


class Datapath:
    """Backend + verdict workers + DNS watcher, started and stopped together."""

    def __init__(
        self,
        config: DatapathConfig,
        decide: Decide,
        netns: str | NetnsRef | None = None,
        *,
        backend: FirewallBackend | None = None,
        dns_cache: DnsCache | None = None,
        report: bool = True,
    ) -> None:
        self.config = config
        self.netns = NetnsRef.of(netns)
        self.backend: FirewallBackend = backend or IptablesBackend(config, self.netns)
        self.workers = VerdictWorkers(config, decide, self.netns, report=report)
        self.dns_cache = dns_cache or DnsCache()
        self.dns: DnsWatcher | None = None
        # Set by the caller to hear of DNS answers itself (records, the addresses
        # that gained a name): it then passes them on to the workers.
        self.on_dns: Callable[[list[DnsRecord], set[str]], None] | None = None
        if config.dns:
            self.dns = DnsWatcher(config.dns_queue, self.dns_cache, self.netns,
                                  on_answer=self._dns_answer)

    def _dns_answer(self, records: list[DnsRecord], gained: set[str]) -> None:
        if self.on_dns is not None:
            self.on_dns(records, gained)
        else:
            self.workers.dns_update(records)

    def start(self) -> InstallReport:
        """Bind the queues first (so fail-closed rules never lack a listener), then
        install the rules; on failure, undo everything and raise."""
        installing = False
        try:
            self.workers.start()  # fork before any thread of ours exists
            if self.dns is not None:
                self.dns.start()
            installing = True
            report = self.backend.install()
            self.backend.heartbeat()  # the fast path is on; the caller keeps it so
            return report
        except BaseException:
            with contextlib.suppress(DatapathError):
                if installing:
                    # fail-closed: whatever refuses now (an earlier run's rules) stays
                    self.stop(keep_rules=not self.config.fail_open)
                else:
                    # e.g. the queue is bound by another Defender: its rules and
                    # sets are not ours to remove.
                    if self.dns is not None:
                        self.dns.stop()
                    self.workers.stop()
            raise

    def stop(self, *, keep_rules: bool = False) -> list[str]:
        """Unbind every queue and remove every rule and set; idempotent.
        ``keep_rules`` (a fail-closed stop): the rules stay and refuse new
        connections of protected workloads; only cached verdicts go."""
        if self.dns is not None:
            self.dns.stop()
        self.workers.stop()
        if keep_rules:
            return self.backend.stop_refusing()
        return self.backend.remove()

    def check_and_repair(self) -> list[str]:
        """Restart dead workers, put back missing rules and sets; what was repaired."""
        restarted = self.workers.restart_dead()
        if restarted and len(self.dns_cache):
            self.workers.dns_update(self.dns_cache.snapshot())  # reseed the new replicas
        return restarted + self.backend.check_and_repair()

    def check(self) -> list[str]:
        """Whether the datapath is up, from its own state: every verdict worker
        running, each SYN queue bound in the kernel, the backend's rules, chains
        and sets in place. Returns the problems (empty: up); changes nothing."""
        problems = self.workers.dead()
        bound = {q.queue for q in queue_stats(self.netns)}
        problems += [f"queue {self.config.queue_num + i} not bound"
                     for i in range(self.config.queues)
                     if self.config.queue_num + i not in bound]
        try:
            problems += self.backend.check()
        except DatapathError as exc:
            problems.append(f"rules not readable: {exc}")
        return problems

    def domains_for(self, address: str) -> tuple[str, ...]:
        return self.dns_cache.domains_for(address)

    def stats(self) -> DatapathStats:
        return DatapathStats(queue_stats(self.netns), self.workers.counters())


__all__ = [
    "FASTPATH_GRACE",
    "HEARTBEAT_TIMEOUT",
    "AddressSet",
    "Capabilities",
    "ConntrackObserver",
    "Datapath",
    "DatapathConfig",
    "DatapathError",
    "DatapathStats",
    "Decide",
    "Decision",
    "DnsCache",
    "DnsRecord",
    "DnsWatcher",
    "FastEntry",
    "FastVerdict",
    "FirewallBackend",
    "InstallReport",
    "IptablesBackend",
    "NetnsRef",
    "ObservedConnection",
    "Outcome",
    "PacketInfo",
    "QueueBusyError",
    "QueueStats",
    "Report",
    "VerdictCounters",
    "VerdictWorkers",
    "cleanup",
    "parse_dns_answer",
    "parse_packet",
    "parse_queue_stats",
    "probe",
    "queue_stats",
    "select_backend",
]
