"""The Defender's Prometheus endpoint: a collector that reads the running
agent's figures at scrape time (no bookkeeping on the verdict path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cnnf.defender.datapath.workers import MAX_WAIT


@dataclass
class Figures:
    """What the agent exposes (filled by the agent when scraped)."""

    verdicts: dict[str, int] = field(default_factory=dict)  # decision -> count
    protected: int = 0
    policy_revision: int = 0
    queue_waiting: int = 0
    queue_dropped: int = 0
    flows: int = 0
    audits: int = 0
    repairs: int = 0
    last_protect_gap_ms: float = 0.0
    spool_batches: int = 0
    console_connected: int = 0
    unidentified_dropped: int = 0  # SYNs of containers not named yet (retransmitted)
    engine_up: int = 0  # 1 while the container engine answers
    engine_outages: int = 0  # times it stopped answering
    engine_outage_seconds: float = 0.0  # the current outage so far (0 while up)
    queue_user_dropped: int = 0  # the verdict loop's socket buffer overflowed
    fastpath_entries: int = 0  # cached verdicts in the kernel
    fastpath_hits: dict[str, int] = field(default_factory=dict)  # verdict -> repeats answered
    # SYNs dropped as overload, all sources: by the per-source admission limit,
    # and by the verdict loop beyond a source's fair share (that part: verdict_shed)
    admission_dropped: int = 0
    verdict_shed: int = 0
    spoofed_dropped: int = 0  # packets with a forged source from a workload's port
    spoof_ports: int = 0  # workload ports bound to their addresses
    # the top sources: (address, name, SYNs dropped)
    admission_top: list[tuple[str, str, int]] = field(default_factory=list)
    overload: int = 0  # 1 while an overload episode lasts
    admission_tightened: int = 0  # sources whose limit is a tenth: the loop could not keep up
    observed_waiting: int = 0  # observed connections (conntrack) not evaluated yet
    observed_dropped: int = 0  # observed connections dropped: more than observation keeps up with
    observed_top: list[tuple[str, str, int]] = field(default_factory=list)  # by source
    observed_overruns: int = 0  # times the kernel lost conntrack events (ENOBUFS)
    observed_restarts: int = 0  # conntrack processes found ended and started again
    observed_unparsed: int = 0  # lines of conntrack's output not understood


class DefenderCollector(Collector):
    def __init__(self, figures: Callable[[], Figures]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Any]:
        f = self.figures()
        v = CounterMetricFamily("cnnf_defender_verdicts", "SYN verdicts by decision",
                                labels=["decision"])
        for decision, n in sorted(f.verdicts.items()):
            v.add_metric([decision], n)
        yield v
        fp = CounterMetricFamily("cnnf_defender_fastpath_hits", "repeat SYNs the kernel "
                                 "answered from a cached verdict", labels=["verdict"])
        for verdict, n in sorted(f.fastpath_hits.items()):
            fp.add_metric([verdict], n)
        yield fp
        top = GaugeMetricFamily("cnnf_defender_admission_dropped_by_source", "SYNs the "
                                "admission limit or the verdict loop dropped as overload, "
                                "top sources (all time)",
                                labels=["source", "name"])
        for address, name, n in f.admission_top:
            top.add_metric([address, name], n)
        yield top
        obs = GaugeMetricFamily("cnnf_defender_observed_dropped_by_source", "observed "
                                "connections dropped unrecorded, top sources (all time; "
                                "'outside': clients no Defender knows)",
                                labels=["source", "name"])
        for address, name, n in f.observed_top:
            obs.add_metric([address, name], n)
        yield obs
        for name, doc, value in (
            ("protected_workloads", "addresses in the protected sets", f.protected),
            ("policy_revision", "revision of the enforced policy", f.policy_revision),
            ("queue_waiting", "SYNs waiting in the queues", f.queue_waiting),
            ("queue_kernel_dropped", "SYNs the kernel dropped (queue full)", f.queue_dropped),
            ("last_protect_gap_ms", "container start to protected, last one (ms)",
             f.last_protect_gap_ms),
            ("spool_batches", "report batches waiting for the console", f.spool_batches),
            ("console_connected", "1 while the console link is up", f.console_connected),
            ("fastpath_entries", "verdicts cached in the kernel", f.fastpath_entries),
            ("overload", "1 while the admission limit or the verdict loop is dropping "
             "SYNs as overload", f.overload),
            ("admission_tightened", "sources whose admission limit is tightened to a tenth "
             "because the verdict loop could not keep up with them", f.admission_tightened),
            ("observed_waiting", "observed connections (enforcement off) waiting to be "
             "recorded", f.observed_waiting),
            ("engine_up", "1 while the container engine answers", f.engine_up),
            ("spoof_ports", "protected containers' ports bound to their addresses "
             "(anti-spoofing)", f.spoof_ports),
            ("engine_outage_seconds", "length of the current container engine outage "
             "(0 while up)", f.engine_outage_seconds),
        ):
            yield GaugeMetricFamily(f"cnnf_defender_{name}", doc, value=value)
        for name, doc, value in (
            ("flows", "flow records produced", f.flows),
            ("audits", "audit events produced", f.audits),
            ("repairs", "kernel state repairs", f.repairs),
            ("queue_user_dropped", "SYNs lost because the verdict loop's socket buffer "
             "was full", f.queue_user_dropped),
            ("admission_dropped", "SYNs dropped as overload: by the per-source admission "
             "limit, or by the verdict loop beyond their source's fair share",
             f.admission_dropped),
            ("verdict_shed", "SYNs the verdict loop dropped undecided: its waiting room "
             f"full (the source holding the most loses), or waiting over {MAX_WAIT:g} s",
             f.verdict_shed),
            ("spoofed_dropped", "packets from a protected container's port with a source "
             "address not its own, dropped by anti-spoofing", f.spoofed_dropped),
            ("unidentified_dropped", "SYNs of containers not named yet, dropped once",
             f.unidentified_dropped),
            ("observed_dropped", "observed connections (enforcement off) dropped "
             "unrecorded: more than observation keeps up with", f.observed_dropped),
            ("observed_overruns", "times the kernel lost observed connections "
             "(conntrack event buffer overrun)", f.observed_overruns),
            ("observed_restarts", "conntrack observation processes found ended and "
             "started again", f.observed_restarts),
            ("observed_unparsed", "lines of conntrack's event output not understood "
             "(connections not observed)", f.observed_unparsed),
            ("engine_outages", "times the container engine became unreachable or "
             "unresponsive", f.engine_outages),
        ):
            yield CounterMetricFamily(f"cnnf_defender_{name}", doc, value=value)


def serve_metrics(host: str, port: int, figures: Callable[[], Figures]) -> Any:
    registry = CollectorRegistry()
    registry.register(DefenderCollector(figures))
    return start_http_server(port, addr=host, registry=registry)
