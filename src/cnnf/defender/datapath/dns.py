"""DNS names of destination addresses, learnt from the DNS answers to protected
workloads.

The DNS answers (UDP from port 53 to a protected address) are queued to the DNS
queue; :class:`DnsWatcher` parses each one with dnspython, records every name
(the question, CNAME aliases and the final owner) against the A/AAAA addresses
in its :class:`DnsCache`, hands the same records to ``on_answer`` (the verdict
workers' replicas) and only then accepts the packet, so the client's first SYN
after the lookup already carries the name. Only replies to the workload's own
queries are queued (conntrack ESTABLISHED). With no Defender the queue is
bypassed; a full DNS queue drops the answer (the client asks again), as a
full SYN queue does: an answer let through unseen would leave a DNS rule
unmatched.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype

from cnnf.defender.datapath.netns import NetnsRef
from cnnf.defender.datapath.nfqueue import NF_ACCEPT, QueueLoop
from cnnf.defender.datapath.packet import udp_payload

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """``names`` resolve to ``address`` for ``ttl`` seconds."""

    address: str
    names: tuple[str, ...]
    ttl: int


def _name(n: dns.name.Name) -> str:
    return n.to_text(omit_final_dot=True).lower()


def parse_dns_answer(wire: bytes) -> list[DnsRecord]:
    """The address records of a DNS response; [] for queries or garbage."""
    try:
        msg = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError):
        return []
    if not msg.flags & dns.flags.QR:
        return []
    aliases: dict[str, set[str]] = {}  # cname target -> names pointing at it
    for rrset in msg.answer:
        if rrset.rdtype == dns.rdatatype.CNAME:
            for rd in rrset:
                aliases.setdefault(_name(rd.target), set()).add(_name(rrset.name))
    out = []
    for rrset in msg.answer:
        if rrset.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
            continue
        names, todo = set(), [_name(rrset.name)]
        while todo:
            n = todo.pop()
            if n not in names:
                names.add(n)
                todo.extend(aliases.get(n, ()))
        for rd in rrset:
            out.append(DnsRecord(rd.address, tuple(sorted(names)), int(rrset.ttl)))
    return out


MAX_NAMES = 64  # names kept per address


class DnsCache:
    """address -> DNS names, each expiring after its TTL (at least ``min_ttl``:
    clients keep using an address a little past the TTL). Bounded: beyond
    ``max_addresses`` the oldest addresses are forgotten."""

    def __init__(
        self, clock: Clock = time.monotonic, min_ttl: float = 60.0, max_addresses: int = 100_000
    ) -> None:
        self._clock = clock
        self.min_ttl = min_ttl
        self.max_addresses = max_addresses
        self._by_address: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self._by_address)

    def record(self, records: Iterable[DnsRecord]) -> set[str]:
        """Add the records; returns the addresses that gained a name they did not
        have (live) before: verdicts decided for them may now differ."""
        now = self._clock()
        gained: set[str] = set()
        for r in records:
            names = self._by_address.pop(r.address, {})  # re-insert: newest last
            expiry = now + max(float(r.ttl), self.min_ttl)
            for n in r.names[:MAX_NAMES]:
                if n not in names and len(names) >= MAX_NAMES:
                    continue  # bounded: answers naming one address a thousand ways
                if names.get(n, 0.0) <= now:
                    gained.add(r.address)
                names[n] = max(expiry, names.get(n, 0.0))
            self._by_address[r.address] = names
        while len(self._by_address) > self.max_addresses:
            del self._by_address[next(iter(self._by_address))]
        return gained

    def snapshot(self) -> list[DnsRecord]:
        """The live entries, with their remaining TTL (to seed a new replica)."""
        now = self._clock()
        out = []
        for address, names in list(self._by_address.items()):
            by_ttl: dict[int, list[str]] = {}
            for n, exp in names.items():
                if exp > now:
                    by_ttl.setdefault(int(exp - now) + 1, []).append(n)
            out += [DnsRecord(address, tuple(sorted(ns)), ttl) for ttl, ns in by_ttl.items()]
        return out

    def expiry(self, address: str, names: Iterable[str]) -> float | None:
        """When the first of ``names`` stops resolving to ``address`` (this cache's
        clock), or None if none of them is known for it."""
        known = self._by_address.get(address) or {}
        times = [known[n] for n in names if n in known]
        return min(times) if times else None

    def domains_for(self, address: str) -> tuple[str, ...]:
        """The names currently known to resolve to ``address`` (sorted)."""
        names = self._by_address.get(address)
        if not names:
            return ()
        now = self._clock()
        live = tuple(sorted(n for n, exp in names.items() if exp > now))
        if len(live) != len(names):
            if live:
                self._by_address[address] = {n: names[n] for n in live}
            else:
                self._by_address.pop(address, None)
        return live


class DnsWatcher:
    """Runs the DNS queue in a thread (inside ``netns``) feeding a :class:`DnsCache`."""

    def __init__(
        self,
        queue_num: int,
        cache: DnsCache,
        netns: str | NetnsRef | None = None,
        on_answer: Callable[[list[DnsRecord], set[str]], None] | None = None,
    ) -> None:
        self.queue_num = queue_num
        self.cache = cache
        self.netns = NetnsRef.of(netns)
        self.on_answer = on_answer
        self.answers = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _handle(self, payload: bytes, _mark: int) -> tuple[int, int | None]:
        wire = udp_payload(payload)
        records = parse_dns_answer(wire) if wire else []
        if records:
            gained = self.cache.record(records)
            if self.on_answer is not None:  # before the answer is let through
                self.on_answer(records, gained)
            self.answers += 1
        return NF_ACCEPT, None

    def _run(self) -> None:
        try:
            self.netns.enter()
            loop = QueueLoop(self.queue_num, self._handle, error_verdict=NF_ACCEPT,
                             copy_range=0xFFFF)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([loop], [], [], 0.2)
                if ready:
                    loop.process()
        finally:
            loop.close()

    def start(self) -> None:
        """Bind the DNS queue; raises (e.g. QueueBusyError) if that fails."""
        self._thread = threading.Thread(target=self._run, name="cnnf-dns", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
