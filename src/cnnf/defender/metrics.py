"""The Defender's Prometheus endpoint: a collector that reads the running
agent's figures at scrape time (no bookkeeping on the verdict path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


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
        for name, doc, value in (
            ("protected_workloads", "addresses in the protected sets", f.protected),
            ("policy_revision", "revision of the enforced policy", f.policy_revision),
            ("queue_waiting", "SYNs waiting in the queues", f.queue_waiting),
            ("queue_kernel_dropped", "SYNs the kernel dropped (queue full)", f.queue_dropped),
            ("last_protect_gap_ms", "container start to protected, last one (ms)",
             f.last_protect_gap_ms),
            ("spool_batches", "report batches waiting for the console", f.spool_batches),
            ("console_connected", "1 while the console link is up", f.console_connected),
        ):
            yield GaugeMetricFamily(f"cnnf_defender_{name}", doc, value=value)
        for name, doc, value in (
            ("flows", "flow records produced", f.flows),
            ("audits", "audit events produced", f.audits),
            ("repairs", "kernel state repairs", f.repairs),
            ("unidentified_dropped", "SYNs of containers not named yet, dropped once",
             f.unidentified_dropped),
        ):
            yield CounterMetricFamily(f"cnnf_defender_{name}", doc, value=value)


def serve_metrics(host: str, port: int, figures: Callable[[], Figures]) -> Any:
    registry = CollectorRegistry()
    registry.register(DefenderCollector(figures))
    return start_http_server(port, addr=host, registry=registry)
