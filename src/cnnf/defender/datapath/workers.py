"""The verdict loop: one worker process per SYN queue.

Each worker is forked from the caller (so ``decide`` is inherited, not pickled),
moves into the datapath's network namespace, binds its queue and then, for each
queued SYN: parses it into a :class:`PacketInfo` (with the destination's DNS
names from its replica :class:`DnsCache`), calls ``decide(packet)`` and issues the
kernel verdict. Nothing else happens on that path: counters live in shared
memory and reports are sent in batches.

Fairness. A worker does not decide SYNs in the kernel queue's order: it reads
the queue first (cheap: the source address is all it looks at) into a
:class:`~cnnf.defender.datapath.fairqueue.FairQueue`, one bounded FIFO per
source, and decides round robin over the sources, a few SYNs per turn between
reads. So a source flooding new connections (a port scan: the admission limit
lets 1,000 a second of them in) cannot push another source's SYN out of the
kernel queue or make it wait behind its own, however little CPU the worker
gets; when the room is full the source holding the most loses its oldest, and
a SYN that waited over MAX_WAIT is dropped: never accepted, in either failure
mode (overload is not "no Defender"), counted in the ``shed`` slot and per
source (:meth:`VerdictWorkers.shed`), which the Defender reports as overload
and answers by tightening that source's admission limit in the kernel.

Control: :meth:`VerdictWorkers.broadcast` sends a message to every worker; DNS
records update the replica cache, any other message is passed to
``decide.update(message)`` if ``decide`` has that method (e.g. a new compiled
policy snapshot or address map). A broadcast bumps a shared generation counter
after writing, and a worker reads pending messages before deciding whenever the
counter moved, so a SYN arriving after ``broadcast()`` returned is decided with
the message applied.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import ipaddress
import multiprocessing
import queue
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from cnnf.defender.datapath.backend import DatapathConfig
from cnnf.defender.datapath.dns import DnsCache, DnsRecord
from cnnf.defender.datapath.fairqueue import FairQueue
from cnnf.defender.datapath.netns import DatapathError, NetnsRef
from cnnf.defender.datapath.nfqueue import NF_ACCEPT, NF_DROP, NF_REPEAT, QueueBusyError, QueueLoop
from cnnf.defender.datapath.packet import TCP, Decision, Outcome, PacketInfo, parse_packet
from cnnf.defender.datapath.stats import VerdictCounters

Decide = Callable[[PacketInfo], Decision | Outcome]
# accepted, audited, rejected, dropped, errors, reports lost, shed, waiting, full reads
_SLOTS = 9
_ERRORS = 4
_LOST = 5
_SHED = 6
_WAITING = 7
_FULL_READS = 8
# Per turn of a worker's loop: read up to READ_BATCH queued SYNs (all that wait,
# usually), then decide up to DECIDE_BATCH of those waiting, round robin. Reading
# costs a fraction of deciding, so the kernel queue stays short even when the
# worker gets less CPU than the admitted SYNs need.
READ_BATCH = 256
DECIDE_BATCH = 32
# SYNs waiting in the worker: a SYN held here still counts against the kernel
# queue's length (``queue_maxlen``), so the room is kept below it (half of it,
# at most 2,048). No source has a bound of its own below that: a burst of a
# healthy source waits (and is decided within milliseconds); only a full room
# pushes out SYNs, of the source holding the most.
ROOM = 2048
# A source's line: beyond it, its oldest SYN is dropped, but only once that SYN
# waited LATE (the loop is behind for the source): a healthy loop's burst waits.
PER_SOURCE = 128
MAX_WAIT = 1.0  # seconds: a SYN older than its client's first retry is dropped
LATE = 0.2  # seconds from read to decision that mean the loop is behind for the source
LATE_BACKLOG = 32  # ... if the source still has this many waiting behind it
SHED_SOURCES = 1024  # distinct sources counted per report batch (forged ones: the rest unnamed)
# Sources outside this host may be forged: they wait by /24 (/64) prefix, and at
# most OUTSIDE_LINES prefixes have a line of their own; the others share one
# (OUTSIDE_REST). So forged sources can neither grow the room's bookkeeping nor
# out-number this host's workloads in the round robin; a workload's own address
# (vouched for by the anti-spoofing rule) is its line.
OUTSIDE_LINES = 16
OUTSIDE_REST = b"\x00o*"
OUTSIDE_REST_NAME = "other sources outside this host"
_OUTSIDE = {4: (b"\x00o4", 3), 6: (b"\x00o6", 8)}
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Report:
    """One decided SYN: the packet, the decision, ``Outcome.detail``, wall time."""

    packet: PacketInfo
    decision: Decision
    detail: object
    time: float
    queue: int


@dataclass(frozen=True, slots=True)
class DnsUpdate:
    records: tuple[DnsRecord, ...]
    then: object = None  # passed to ``decide.update`` once the names are in

@dataclass(frozen=True, slots=True)
class LocalSources:
    """The addresses of this host's workloads and of the host (their SYNs wait
    by address; any other source's by prefix)."""

    addresses: frozenset[str]


def _address(raw: bytes) -> str:
    """A waiting-room line's name: an address, an outside prefix, or the
    outside sources' shared line."""
    if raw == OUTSIDE_REST:
        return OUTSIDE_REST_NAME
    for family, (tag, size) in _OUTSIDE.items():
        if raw.startswith(tag) and len(raw) == len(tag) + size:
            full = raw[len(tag):] + bytes((4 if family == 4 else 16) - size)
            return f"{ipaddress.ip_address(full)}/{size * 8}"
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return "unknown"  # not IP: cannot happen for queued SYNs


def _die_with_parent() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _Worker:
    """The state of one worker process (lives only in the child)."""

    def __init__(
        self,
        index: int,
        pool: VerdictWorkers,
        control: Connection,
    ) -> None:
        self.index = index
        self.pool = pool
        self.control = control
        self.config = pool.config
        self.decide = pool.decide
        self.cache = DnsCache()
        self.seen_gen = 0
        self.pending: list[Report] = []
        self.last_flush = time.monotonic()
        # Never accept what was not decided: a broken packet or decide() drops
        # (TCP retransmits), in both failure modes.
        self.fail_verdict = NF_DROP
        self.pending_mark = self.config.pending_mark
        self.base = index * _SLOTS
        self.reject_mark = self.config.reject_mark
        self.reset = self.config.block_mode == "reset"
        self.running = True
        total = max(1, min(ROOM, self.config.queue_maxlen // 2))
        self.locals: frozenset[bytes] = frozenset()
        self.outside: set[bytes] = set()  # outside prefixes with a line of their own
        self.room: FairQueue[tuple[int, bytes, int, float, bytes]] = FairQueue(
            per_source=min(PER_SOURCE, total), total=total, max_wait=MAX_WAIT, patience=LATE)
        self.shed: dict[bytes, int] = {}  # source -> SYNs dropped undecided, not yet sent
        self.late: dict[bytes, int] = {}  # source -> SYNs decided over LATE after their read
        self.loop: QueueLoop | None = None

    def apply(self, message: Any) -> None:
        if message is None:
            self.running = False
        elif isinstance(message, LocalSources):
            self.locals = frozenset(ipaddress.ip_address(a).packed for a in message.addresses)
        elif isinstance(message, DnsUpdate):
            self.cache.record(message.records)
            if message.then is not None:
                self.apply(message.then)
        else:
            update = getattr(self.decide, "update", None)
            if update is not None:
                update(message)

    def drain_control(self) -> None:
        while self.control.poll():
            self.apply(self.control.recv())
            self.seen_gen += 1

    def handle(self, payload: bytes, mark: int) -> tuple[int, int | None]:
        counters = self.pool._counters
        if self.pool._generation.value != self.seen_gen:
            self.drain_control()
        if mark & self.reject_mark:
            # Repeated with our mark but the REJECT rule is gone: never loop.
            counters[self.base + Decision.DROP] += 1
            return NF_DROP, None
        packet = parse_packet(payload)
        if packet is None or packet.proto != TCP:
            counters[self.base + _ERRORS] += 1
            return self.fail_verdict, None
        if len(self.cache):
            domains = self.cache.domains_for(packet.dst)
            if domains:
                packet = PacketInfo(
                    packet.family,
                    packet.src,
                    packet.dst,
                    packet.sport,
                    packet.dport,
                    packet.proto,
                    domains,
                )
        try:
            result = self.decide(packet)
            if isinstance(result, Outcome):
                decision, detail = Decision(result.decision), result.detail
            else:
                decision, detail = Decision(result), None
        except Exception:  # a broken decide() must not take the datapath down
            counters[self.base + _ERRORS] += 1
            return self.fail_verdict, None
        counters[self.base + decision] += 1
        if self.pool.report:
            self.pending.append(
                Report(packet, decision, detail, time.time(), self.config.queue_num + self.index)
            )
        if decision <= Decision.ACCEPT_AUDIT:
            if mark & self.pending_mark:  # fail-closed: decided, so not refused later
                return NF_ACCEPT, mark & ~self.pending_mark
            return NF_ACCEPT, None
        if decision == Decision.REJECT and self.reset:
            return NF_REPEAT, mark | self.reject_mark
        return NF_DROP, None

    def line(self, payload: bytes) -> bytes:
        """The room's line for a SYN: a local source's address, else its outside
        prefix (one of OUTSIDE_LINES at most, the rest share OUTSIDE_REST)."""
        version = payload[0] >> 4 if payload else 0
        source = payload[12:16] if version == 4 else payload[8:24] if version == 6 else b""
        if source in self.locals or version not in _OUTSIDE:
            return source
        tag, size = _OUTSIDE[version]
        key = tag + source[:size]
        if key in self.outside:
            return key
        if len(self.outside) >= OUTSIDE_LINES:
            self.outside = {k for k in self.outside if self.room.waiting(k)}
            if len(self.outside) >= OUTSIDE_LINES:
                return OUTSIDE_REST
        self.outside.add(key)
        return key

    def receive(self, packet_id: int, payload: bytes, mark: int) -> None:
        """A SYN read from the kernel queue: it waits in the room, in its line."""
        key = self.line(payload)
        now = time.monotonic()
        for src, (pid, _, _, _, _) in self.room.push(key, (packet_id, payload, mark, now, key),
                                                      now):
            self._shed(src, pid)

    def _shed(self, source: bytes, packet_id: int) -> None:
        assert self.loop is not None
        self.loop.verdict(packet_id, NF_DROP)
        self.pool._counters[self.base + _SHED] += 1
        if source in self.shed or len(self.shed) < SHED_SOURCES:
            self.shed[source] = self.shed.get(source, 0) + 1

    def decide_some(self, n: int) -> None:
        """Decide up to ``n`` waiting SYNs, one source after the other."""
        loop = self.loop
        assert loop is not None
        room = self.room
        for _ in range(n):
            now = time.monotonic()
            item, stale = room.pop(now)
            for src, (pid, _, _, _, _) in stale:
                self._shed(src, pid)
            if item is None:
                return
            packet_id, payload, mark, read_at, key = item
            if (now - read_at > LATE and room.waiting(key) >= LATE_BACKLOG
                    and (key in self.late or len(self.late) < SHED_SOURCES)):
                # decided late with a backlog of its own: the loop is not keeping
                # up with this line (a stall with a fair backlog is nobody's flood)
                self.late[key] = self.late.get(key, 0) + 1
            try:
                verdict, new_mark = self.handle(payload, mark)
            except Exception:  # never leave a packet without a verdict
                self.pool._counters[self.base + _ERRORS] += 1
                verdict, new_mark = NF_DROP, None
            loop.verdict(packet_id, verdict, new_mark)

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if (self.pending or self.shed or self.late) and (
                force or len(self.pending) >= 256 or now - self.last_flush > 0.02):
            try:
                self.pool._reports.put_nowait((self.pending, self.shed, self.late))
            except queue.Full:
                # Nobody reads the reports: lose them rather than stall verdicts
                # (the shed counts wait for the next batch; at most SHED_SOURCES
                # sources are named in it, the rest count in the shed total only).
                self.pool._counters[self.base + _LOST] += len(self.pending)
                self.pending = []
                self.last_flush = now
                return
            self.pending = []
            self.shed = {}
            self.late = {}
            self.last_flush = now

    def run(self, status: Connection) -> None:
        try:
            self.pool.netns.enter()
            loop = QueueLoop(
                self.config.queue_num + self.index,
                None,
                defer=self.receive,
                error_verdict=NF_DROP,
                maxlen=self.config.queue_maxlen,
            )
        except DatapathError as exc:
            status.send((type(exc).__name__, str(exc)))
            return
        self.loop = loop
        status.send(("ok", ""))
        fds = [loop.fileno(), self.control.fileno()]
        room = self.room
        try:
            while self.running:
                ready, _, _ = select.select(fds, [], [], 0 if len(room) else 0.05)
                if self.control.fileno() in ready:
                    self.drain_control()
                if fds[0] in ready and loop.process(READ_BATCH) >= READ_BATCH:
                    # more waits in the kernel than one turn reads: the Defender
                    # tightens the admission limit (behind)
                    self.pool._counters[self.base + _FULL_READS] += 1
                if len(room):
                    self.decide_some(DECIDE_BATCH)
                self.pool._counters[self.base + _WAITING] = len(room)
                self.flush(force=not ready and not len(room))
        finally:
            for _, (pid, _, _, _, _) in room.drain():  # stopping: dropped, never accepted
                loop.verdict(pid, NF_DROP)  # (not the source's overload: not counted)
            self.flush(force=True)
            loop.close()


class VerdictWorkers:
    """N worker processes, one per SYN queue ``config.queue_num + i``.

    Workers die with the thread that forked them (``PR_SET_PDEATHSIG``), so a
    Defender killed with -9 leaves no worker holding a queue: fail-open rules
    then let traffic through. Call ``start()`` and ``restart_dead()`` from a
    long-lived thread (the main thread).
    """

    def __init__(
        self,
        config: DatapathConfig,
        decide: Decide,
        netns: str | NetnsRef | None = None,
        *,
        report: bool = True,
    ) -> None:
        self.config = config
        self.decide = decide
        self.netns = NetnsRef.of(netns)
        self.report = report
        self._ctx = multiprocessing.get_context("fork")
        self._counters = self._ctx.RawArray(ctypes.c_uint64, config.queues * _SLOTS)
        self._generation = self._ctx.RawValue(ctypes.c_uint64, 0)
        self._reports: Any = self._ctx.Queue(maxsize=4096)
        self._procs: list[Any] = [None] * config.queues
        self._controls: list[Connection | None] = [None] * config.queues
        self._lock = threading.Lock()
        self._shed_by_source: dict[bytes, int] = {}
        self._late_by_source: dict[bytes, int] = {}
        self._locals: frozenset[str] = frozenset()  # as last set

    def _spawn(self, index: int) -> None:
        recv_end, send_end = self._ctx.Pipe(duplex=False)
        status_recv, status_send = self._ctx.Pipe(duplex=False)

        def main() -> None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _die_with_parent()
            send_end.close()
            worker = _Worker(index, self, recv_end)
            worker.seen_gen = int(self._generation.value)
            # a restarted worker starts with the local sources, not by prefix
            worker.apply(LocalSources(self._locals))
            worker.run(status_send)

        proc = self._ctx.Process(target=main, name=f"cnnf-verdict-{index}", daemon=True)
        proc.start()
        recv_end.close()
        status_send.close()
        try:
            kind, message = status_recv.recv() if status_recv.poll(10) else ("timeout", "")
        except EOFError:
            kind, message = "died", ""
        status_recv.close()
        if kind != "ok":
            proc.join(1)
            send_end.close()
            queue = self.config.queue_num + index
            if kind == QueueBusyError.__name__:
                raise QueueBusyError(message)
            raise DatapathError(f"verdict worker for queue {queue} failed: {kind} {message}")
        self._procs[index] = proc
        self._controls[index] = send_end

    def start(self) -> None:
        """Fork the workers; each has bound its queue when this returns."""
        try:
            for i in range(self.config.queues):
                self._spawn(i)
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None]

    def dead(self) -> list[str]:
        """The workers that are not running (each one's queue is then unbound)."""
        return [f"verdict worker for queue {self.config.queue_num + i} not running"
                for i, proc in enumerate(self._procs) if proc is None or not proc.is_alive()]

    def restart_dead(self) -> list[str]:
        """Restart workers that died (e.g. killed); returns what was restarted."""
        restarted = []
        for i, proc in enumerate(self._procs):
            if proc is not None and not proc.is_alive():
                proc.join()
                conn = self._controls[i]
                if conn is not None:
                    conn.close()
                self._spawn(i)
                restarted.append(
                    f"verdict worker for queue {self.config.queue_num + i} "
                    f"(exit code {proc.exitcode})"
                )
        return restarted

    def broadcast(self, message: object) -> None:
        """Send a message to every worker (see the module docstring)."""
        with self._lock:
            for conn in self._controls:
                if conn is not None:
                    with contextlib.suppress(OSError):
                        conn.send(message)
            self._generation.value += 1

    def dns_update(self, records: list[DnsRecord], then: object = None) -> None:
        """Names for the workers' caches; ``then``: a message applied right after
        them (with them: no SYN is decided between the two)."""
        self.broadcast(DnsUpdate(tuple(records), then))

    def set_local_sources(self, addresses: frozenset[str]) -> None:
        """This host's workload and host addresses (each waits in a line of its
        own; other sources by prefix)."""
        self._locals = frozenset(addresses)
        self.broadcast(LocalSources(self._locals))

    def counters(self) -> list[VerdictCounters]:
        """Per queue, in queue order."""
        c = self._counters
        return [
            VerdictCounters(*(int(c[i * _SLOTS + k]) for k in range(_SLOTS)))
            for i in range(self.config.queues)
        ]

    def reports(self) -> list[Report]:
        """Reports sent so far by the workers (batched every 20 ms or 256 reports).
        The SYNs they dropped undecided come along: :meth:`shed`."""
        out: list[Report] = []
        while True:
            try:
                reports, shed, late = self._reports.get_nowait()
            except queue.Empty:
                return out
            out.extend(reports)
            for source, n in shed.items():
                self._shed_by_source[source] = self._shed_by_source.get(source, 0) + n
            for source, n in late.items():
                self._late_by_source[source] = self._late_by_source.get(source, 0) + n

    def late(self) -> dict[str, int]:
        """Source address -> SYNs decided more than LATE after they were read
        (the loop is not keeping up with that source), since the last call."""
        out = {_address(raw): n for raw, n in self._late_by_source.items()}
        self._late_by_source = {}
        return out

    def shed(self) -> dict[str, int]:
        """Source address -> SYNs the workers dropped undecided (more waiting
        than the source's share, or waiting too long) since the last call, as
        far as :meth:`reports` has read their batches."""
        out: dict[str, int] = {}
        for raw, n in self._shed_by_source.items():
            address = _address(raw)
            out[address] = out.get(address, 0) + n
        self._shed_by_source = {}
        return out

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers (their queues are unbound when they exit)."""
        with self._lock:
            for conn in self._controls:
                if conn is not None:
                    with contextlib.suppress(OSError):
                        conn.send(None)
        for i, proc in enumerate(self._procs):
            if proc is None:
                continue
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn = self._controls[i]
            if conn is not None:
                conn.close()
            self._procs[i] = None
            self._controls[i] = None
