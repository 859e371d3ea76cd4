"""The firewall backend seam: what any backend (iptables today) must do.

Kernel state is owned by tag. A backend installs only chains named ``CNNF-*``,
rules in built-in chains carrying the comment ``cnnf``, and sets named ``cnnf-*``;
removal finds them by those tags, so it works after a crash without knowing the
configuration of the run that installed them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

TAG = "cnnf"
CHAIN_PREFIX = "CNNF-"
SET_PREFIX = "cnnf-"
# Kernel timeout of a fast-path entry beyond its TTL: the Defender removes
# entries at their TTL itself (reading their final counters); the kernel's own
# timeout only matters when no Defender is left to do so.
FASTPATH_GRACE = 30
# The fast path answers only while the Defender's heartbeat (an ipset entry it
# refreshes every second) is younger than this: a dead Defender's cached
# verdicts stop within it, and its SYNs meet the queue's failure mode.
HEARTBEAT_TIMEOUT = 3


class AddressSet(StrEnum):
    """The address sets the rules match on.

    - ``LOCAL``: protected workloads (containers) on this host;
    - ``HOST``: this host's own addresses, when host protection is on;
    - ``CLUSTER``: protected workloads anywhere in the cluster. The caller keeps
      CLUSTER a superset of LOCAL and HOST: inbound SYNs from a CLUSTER member
      are not queued here because the source's own Defender evaluates them.
    """

    LOCAL = "local"
    HOST = "host"
    CLUSTER = "cluster"

    def set_name(self, family: int) -> str:
        return f"{SET_PREFIX}{self.value}{family}"


@dataclass(frozen=True, slots=True)
class DatapathConfig:
    """How the rules are built.

    ``queue_num``..``queue_num + queues - 1`` receive SYNs (``--queue-balance``
    when ``queues`` > 1), ``dns_queue`` receives DNS answers (``dns`` on).

    Failure modes. A full queue always drops (the kernel's queue fail-open flag
    is never set: a busy Defender is not an absent one). With no verdict process
    bound, the SYN rules bypass the queue; ``fail_open`` then lets the SYN
    through, and fail-closed (``fail_open`` off) refuses it with a TCP reset from
    a native nftables chain that runs after ours and rejects SYNs still carrying
    ``pending_mark`` (set just before the queue; the verdict loop clears it).

    ``admission_rate``: SYNs per second and source address that the fast path
    does not answer, let into the queue (``hashlimit``, burst
    ``admission_burst``); above it they are dropped in the kernel and counted
    per source. 0 turns the limit off. For the sources the Defender names
    with ``busy(sources, True)`` (the verdict loop dropped their SYNs: it could
    not keep up with them), the limit is ``busy_rate`` (a tenth, burst twice
    that) instead: their flood is then mostly dropped in the kernel, before the
    queue, whatever CPU the loop gets; other sources keep the full rate.

    ``fastpath``: decided (source, destination port, destination) triples are
    kept in kernel sets (accept, reject, drop) with packet counters, so repeats
    never reach the queue; an entry's kernel timeout is ``fastpath_ttl`` plus
    ``FASTPATH_GRACE``. Both the fast path and the admission limit work only
    while the caller's heartbeat (``heartbeat()``) is younger than
    ``HEARTBEAT_TIMEOUT``.

    ``block_mode`` "reset": a REJECT ``--reject-with tcp-reset`` rule for packets
    carrying ``reject_mark`` sits before the queue rule; the verdict loop sets
    the mark and repeats the hook. "drop": the loop drops the SYN.
    """

    queue_num: int = 4200
    queues: int = 1
    dns_queue: int = 4299
    fail_open: bool = True
    block_mode: Literal["reset", "drop"] = "reset"
    reject_mark: int = 0x20000000
    pending_mark: int = 0x40000000
    queue_maxlen: int = 4096  # packets waiting per queue; beyond, the kernel drops
    dns: bool = True
    ipv6: bool = True
    admission_rate: int = 1000
    admission_burst: int = 2000
    fastpath: bool = True
    fastpath_ttl: float = 60.0
    fastpath_max: int = 200_000  # entries per set and family

    def __post_init__(self) -> None:
        if not 1 <= self.queues <= 64:
            raise ValueError(f"queues must be 1..64, not {self.queues}")
        last = self.queue_num + self.queues - 1
        if self.queue_num < 0 or last > 65535:
            raise ValueError(f"queue numbers {self.queue_num}..{last} out of 0..65535")
        if self.dns and self.queue_num <= self.dns_queue <= last:
            raise ValueError(f"dns_queue {self.dns_queue} overlaps the SYN queues")
        if self.queue_maxlen < 1:
            raise ValueError("queue_maxlen must be at least 1")
        for name in ("reject_mark", "pending_mark"):
            bit = getattr(self, name)
            if bit <= 0 or bit & (bit - 1) or bit > 0xFFFFFFFF:
                raise ValueError(f"{name} must be a single bit of the 32-bit mark")
        if self.reject_mark == self.pending_mark:
            raise ValueError("reject_mark and pending_mark must differ")
        if self.admission_rate < 0 or self.admission_burst < 1:
            raise ValueError("admission_rate must be >= 0 and admission_burst >= 1")
        if self.fastpath_ttl <= 0 or self.fastpath_max < 1:
            raise ValueError("fastpath_ttl must be > 0 and fastpath_max >= 1")

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.ipv6 else (4,)

    @property
    def busy_rate(self) -> int:
        """The per-source admission limit while the verdict loop is behind."""
        return max(1, self.admission_rate // 10)


@dataclass(slots=True)
class InstallReport:
    """What ``install()`` did: leftovers removed, sysctls it changed, notes to log."""

    removed_leftovers: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class FastVerdict(StrEnum):
    """What a fast-path entry does with a repeat SYN of its triple."""

    ACCEPT = "a"
    REJECT = "r"  # TCP reset
    DROP = "d"

    def set_name(self, family: int) -> str:
        return f"{SET_PREFIX}fp{self.value}{family}"


# (verdict, source address, destination port, destination address)
FastEntry = tuple[FastVerdict, str, int, str]


def alive_set(family: int) -> str:
    """Holds the whole address space while the Defender's heartbeat is fresh."""
    return f"{SET_PREFIX}alive{family}"


def bound_set(family: int) -> str:
    """Holds the whole address space while the Defender process lives (renewed
    by its heartbeat thread even when its main loop stalls or its fast path is
    paused): anti-spoofing works while it is fresh, so it never lapses while
    the verdict workers decide."""
    return f"{SET_PREFIX}bound{family}"


def busy_set(family: int) -> str:
    """The sources the verdict loop could not keep up with (it dropped their
    SYNs beyond their share): their admission limit is ``busy_rate``."""
    return f"{SET_PREFIX}busy{family}"


def busy_outside_set(family: int) -> str:
    """The outside prefixes (or halves of the address space: every outside
    source) the verdict loop could not keep up with: together, ``busy_rate``."""
    return f"{SET_PREFIX}busyo{family}"


# A source's tightened limit lasts this long unless renewed (the Defender renews
# it every second while the source goes on flooding).
BUSY_TIMEOUT = 5


def overload_outside_set(family: int) -> str:
    """Outside sources' prefixes (/24, /64: ``hash:ip netmask``) whose SYNs the
    admission limit dropped, with packet counters: forged outside sources are
    counted by the prefix they are limited by, not one entry each."""
    return f"{SET_PREFIX}overo{family}"


# The source prefix by which sources from outside the host (whose addresses the
# kernel cannot check) share an admission limit and a line in the waiting room.
OUTSIDE_PREFIX = {4: 24, 6: 64}


@dataclass(frozen=True, slots=True)
class Port:
    """A protected workload's port on this host: its host-side interface (a
    bridge port when ``bridged``: matched as the physical input device through
    br_netfilter; else a routed interface) and the addresses it may send from."""

    interface: str
    addresses: frozenset[str]
    bridged: bool = True

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,15}", self.interface):
            raise ValueError(f"not an interface name: {self.interface!r}")


def overload_set(family: int) -> str:
    """Sources whose SYNs the admission limit dropped, with packet counters."""
    return f"{SET_PREFIX}over{family}"


class FirewallBackend(Protocol):
    """A way to steer new TCP SYNs of protected workloads to NFQUEUE."""

    name: str
    config: DatapathConfig

    def install(self) -> InstallReport:
        """Remove leftovers of an earlier run, then install rules and (empty) sets."""
        ...

    def remove(self) -> list[str]:
        """Remove every tagged rule, chain and set; idempotent; returns what went."""
        ...

    def check(self) -> list[str]:
        """What is missing or altered now (rules, chains, sets), changing nothing;
        empty: everything the backend installed is in place."""
        ...

    def check_and_repair(self) -> list[str]:
        """Put back missing or altered rules and sets; returns what was repaired."""
        ...

    def set_addresses(self, which: AddressSet, addresses: Iterable[str]) -> None:
        """Replace a set's members atomically (IPv4 and IPv6 split by family)."""
        ...

    def add_address(self, which: AddressSet, address: str) -> None: ...

    def remove_address(self, which: AddressSet, address: str) -> None: ...

    def addresses(self, which: AddressSet) -> frozenset[str]:
        """The members the backend means to have (what repair restores)."""
        ...

    def stage(self, which: AddressSet, addresses: Iterable[str]) -> None:
        """Set a set's members before ``install()`` (no kernel change): the rules
        then go in with their sets already filled."""
        ...

    def fastpath_add(self, entries: Iterable[FastEntry], timeout: float) -> None:
        """Add decided triples; each expires in the kernel after ``timeout`` s."""
        ...

    def fastpath_replace(
        self, keep: Iterable[tuple[FastEntry, float]]
    ) -> dict[FastEntry, int]:
        """Swap in new fast-path sets holding only ``keep`` (entry, kernel timeout),
        with zeroed counters, in one atomic step per set; returns the final
        packet counters of every entry of the sets swapped out."""
        ...

    def fastpath_counters(self) -> dict[FastEntry, int]:
        """Packets matched so far by each fast-path entry."""
        ...

    def overload_counters(self) -> dict[str, int]:
        """Source address -> SYNs the admission limit dropped (since it was added)."""
        ...

    def overload_forget(self, addresses: Iterable[str]) -> None:
        """Remove sources from the overload sets (their counts restart)."""
        ...

    def heartbeat(self) -> None:
        """Keep the fast path and the admission limit on for another
        ``HEARTBEAT_TIMEOUT`` seconds."""
        ...

    def busy(self, sources: Iterable[str], on: bool) -> None:
        """Tighten (on) the admission limit of ``sources`` to ``busy_rate`` for
        ``BUSY_TIMEOUT`` seconds (again: renewed); off: back to the rate now."""
        ...

    def set_ports(self, ports: Iterable[Port]) -> None:
        """Replace every workload port's anti-spoofing binding at once: a packet
        from a port whose source is not one of that port's addresses is dropped
        (first, before anything else; while the heartbeat is fresh)."""
        ...

    def ports(self) -> dict[str, Port]:
        """The ports bound now, by interface."""
        ...

    def spoof_counters(self) -> dict[str, int]:
        """Interface -> packets dropped for a forged source address (since bound)."""
        ...

    def heartbeat_ports(self) -> None:
        """Keep anti-spoofing on for another ``HEARTBEAT_TIMEOUT`` seconds (also
        done by ``heartbeat()``); for a live Defender whose fast path is paused."""
        ...

    def heartbeat_stop(self) -> None:
        """Turn them off now (the kernel then queues every SYN)."""
        ...

    def stop_refusing(self) -> list[str]:
        """Fail-closed stop: keep the rules (no verdict process: refused), drop the
        cached verdicts; returns what was done."""
        ...
