"""Observation without enforcement: connection-tracking NEW events.

Runs ``conntrack -E -e NEW -p tcp -o timestamp`` (one per address family) in the
datapath's namespace and reports each new TCP connection. Why the conntrack
tool and not pyroute2: pyroute2's ``NFCTSocket`` offers dump, get and flush but
no event subscription API (we would bind the multicast groups ourselves and
rely on its private message classes), while the tool's event output is stable,
line-buffered and ships with the ``conntrack`` package the datapath already
needs. Conntrack only tracks a namespace's traffic when something there uses
it: the datapath's rules (``-m conntrack``) do, even with empty sets, so keep
them installed in the disabled mode, with the sets empty.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cnnf.defender.datapath.netns import DatapathError, NetnsRef

_EVENT = re.compile(
    r"^(?:\[(?P<ts>\d+\.\d+)\]\s+)?\s*\[NEW\]\s+tcp\s+\d+\s+\d+\s+\S+\s+"
    r"src=(?P<src>\S+) dst=(?P<dst>\S+) sport=(?P<sport>\d+) dport=(?P<dport>\d+)"
)


@dataclass(frozen=True, slots=True)
class ObservedConnection:
    """A new TCP connection seen by connection tracking (original direction)."""

    src: str
    dst: str
    sport: int
    dport: int
    time: float  # seconds since the epoch (the kernel event's timestamp)


def parse_event(line: str, now: float = 0.0) -> ObservedConnection | None:
    """Parse one ``conntrack -E -o timestamp`` line; None if it is not a TCP NEW."""
    m = _EVENT.match(line)
    if m is None:
        return None
    ts = float(m["ts"]) if m["ts"] else now
    return ObservedConnection(m["src"], m["dst"], int(m["sport"]), int(m["dport"]), ts)


class ConntrackObserver:
    """Calls ``on_connection`` (from a reader thread) for every new TCP connection."""

    def __init__(
        self,
        on_connection: Callable[[ObservedConnection], None],
        netns: str | NetnsRef | None = None,
        *,
        ipv6: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.on_connection = on_connection
        self.netns = NetnsRef.of(netns)
        self.families = ("ipv4", "ipv6") if ipv6 else ("ipv4",)
        self.clock = clock
        self._procs: list[subprocess.Popen[str]] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for family in self.families:
            argv = self.netns.argv(
                "conntrack", "-E", "-f", family, "-e", "NEW", "-p", "tcp", "-o", "timestamp"
            )
            try:
                proc = subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            except FileNotFoundError as exc:
                self.stop()
                raise DatapathError("conntrack: command not found (install conntrack)") from exc
            self._procs.append(proc)
            thread = threading.Thread(
                target=self._read, args=(proc,), name=f"cnnf-conntrack-{family}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = parse_event(line, self.clock())
            if event is not None:
                self.on_connection(event)

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def stop(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for thread in self._threads:
            thread.join(5)  # the reader ends at EOF, once the process is gone
        for proc in self._procs:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        self._threads.clear()
