"""The firewall backend seam: what any backend (iptables today) must do.

Kernel state is owned by tag. A backend installs only chains named ``CNNF-*``,
rules in built-in chains carrying the comment ``cnnf``, and sets named ``cnnf-*``;
removal finds them by those tags, so it works after a crash without knowing the
configuration of the run that installed them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

TAG = "cnnf"
CHAIN_PREFIX = "CNNF-"
SET_PREFIX = "cnnf-"


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
    ``fail_open``: ``--queue-bypass`` on the SYN rules and the kernel fail-open
    flag on the queues; off = fail-closed (no listener or a full queue drops).
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
    queue_maxlen: int = 4096  # packets waiting per queue before the kernel fails open/closed
    dns: bool = True
    ipv6: bool = True

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
        if self.reject_mark <= 0 or self.reject_mark & (self.reject_mark - 1):
            raise ValueError("reject_mark must be a single bit")

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.ipv6 else (4,)


@dataclass(slots=True)
class InstallReport:
    """What ``install()`` did: leftovers removed, sysctls it changed, notes to log."""

    removed_leftovers: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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
