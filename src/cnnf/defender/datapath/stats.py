"""Queue statistics from ``/proc/net/netfilter/nfnetlink_queue``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One bound queue, as the kernel reports it."""

    queue: int
    portid: int  # netlink port of the process bound to it
    waiting: int  # packets queued, waiting for a verdict
    copy_mode: int  # 0 none, 1 meta, 2 packet
    copy_range: int
    dropped: int  # dropped by the kernel: queue full (and not fail-open)
    user_dropped: int  # the netlink socket buffer was full
    id_sequence: int  # the last packet id: packets queued so far


def parse_queue_stats(text: str) -> list[QueueStats]:
    """Parse the proc file; lines that do not have the nine columns are skipped."""
    out = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 8 or not all(c.isdigit() for c in cols[:8]):
            continue
        out.append(QueueStats(*(int(c) for c in cols[:8])))
    return out


@dataclass(frozen=True, slots=True)
class VerdictCounters:
    """What the verdict loop decided, per decision (and handler errors)."""

    accepted: int = 0
    audited: int = 0
    rejected: int = 0
    dropped: int = 0
    errors: int = 0
    reports_lost: int = 0  # reports dropped because nobody read them
    shed: int = 0  # dropped undecided: beyond a source's fair share (fairqueue)
    waiting: int = 0  # SYNs read and waiting in the workers' fair waiting rooms now
    full_reads: int = 0  # reads that found more waiting in the kernel than one turn takes

    @property
    def total(self) -> int:
        return self.accepted + self.audited + self.rejected + self.dropped + self.errors

    def __add__(self, other: VerdictCounters) -> VerdictCounters:
        return VerdictCounters(
            self.accepted + other.accepted,
            self.audited + other.audited,
            self.rejected + other.rejected,
            self.dropped + other.dropped,
            self.errors + other.errors,
            self.reports_lost + other.reports_lost,
            self.shed + other.shed,
            self.waiting + other.waiting,
            self.full_reads + other.full_reads,
        )
