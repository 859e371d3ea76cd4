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

import structlog

from cnnf.defender.datapath.netns import DatapathError, NetnsRef

log = structlog.get_logger(__name__)

# The event socket's receive buffer: a burst of new connections larger than it
# (while the reader is busy) is lost in the kernel (ENOBUFS). 16 MiB holds
# about 100,000 NEW events.
BUFFER_BYTES = 16 * 1024 * 1024
LOG_SECONDS = 60.0  # the tool's warnings and unparsed lines: logged at most this often

# conntrack prints the timestamp as printf("[%-8ld.%-6ld]\t", tv_sec, tv_usec):
# the microseconds left-aligned, padded with trailing spaces, not zeros
# ("[1795945427.61317 ]" is 61,317 microseconds past the second).
_EVENT = re.compile(
    r"^(?:\[\s*(?P<sec>\d+)\s*\.(?P<usec>\d+)\s*\]\s+)?\s*\[NEW\]\s+tcp\s+\d+\s+\d+\s+\S+\s+"
    r"src=(?P<src>\S+) dst=(?P<dst>\S+) sport=(?P<sport>\d+) dport=(?P<dport>\d+)"
    r"(?:\s+\[UNREPLIED\])?(?:\s+src=\S+ dst=(?P<rdst>\S+))?"
)


class _Throttled:
    """A warning that may come once per event of a flood: logged the first time,
    then at most once per LOG_SECONDS with how many came since (and once more at
    the end, by :meth:`close`, for those not logged yet)."""

    def __init__(self, event: str) -> None:
        self.event = event
        self.count = 0
        self._since = 0  # since the last log line
        self._logged: float | None = None

    def hit(self, **fields: object) -> None:
        self.count += 1
        self._since += 1
        now = time.monotonic()
        if self._logged is None or now - self._logged >= LOG_SECONDS:
            self._logged = now
            self._log(**fields)

    def close(self) -> None:
        if self._since:
            self._log()

    def _log(self, **fields: object) -> None:
        log.warning(self.event, total=self.count, since_last=self._since, **fields)
        self._since = 0


# conntrack's ENOBUFS warning is three lines; only the first says ENOBUFS.
_ENOBUFS_MORE = ("This message means that the current netlink socket buffer size",
                 "Please, check --buffer-size")


@dataclass(frozen=True, slots=True)
class ObservedConnection:
    """A new TCP connection seen by connection tracking (original direction)."""

    src: str
    dst: str
    sport: int
    dport: int
    # Seconds since the epoch when conntrack read the event (its -o timestamp
    # is gettimeofday() at print, not the kernel's time): late by the backlog
    # in the event socket's buffer (at most BUFFER_BYTES, about 100,000 events,
    # beyond it events are lost) and the pipe to the reader; the reader drains
    # about 100,000 a second, so at most about a second under a flood.
    time: float
    # The reply direction's destination: the source as the far end sees it
    # (the host's address when the source is masqueraded); "" if not reported.
    reply_dst: str = ""


def parse_event(line: str, now: float = 0.0) -> ObservedConnection | None:
    """Parse one ``conntrack -E -o timestamp`` line; None if it is not a TCP NEW."""
    m = _EVENT.match(line)
    if m is None:
        return None
    ts = int(m["sec"]) + int(m["usec"]) / 1e6 if m["sec"] else now
    return ObservedConnection(m["src"], m["dst"], int(m["sport"]), int(m["dport"]), ts,
                              m["rdst"] or "")


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
        # Times the kernel dropped events (the tool's ENOBUFS warnings): how many
        # connections went unobserved is not known, only that some did.
        self.overruns = 0
        # Lines of the tool's output that are no TCP NEW event (it is asked for
        # nothing else): a format this parser does not know; counted, logged
        # at most once a minute.
        self.unparsed = 0

    def start(self) -> None:
        for family in self.families:
            argv = self.netns.argv(
                "conntrack", "-E", "-f", family, "-e", "NEW", "-p", "tcp", "-o", "timestamp",
                "-b", str(BUFFER_BYTES),
            )
            try:
                proc = subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            except FileNotFoundError as exc:
                self.stop()
                raise DatapathError("conntrack: command not found (install conntrack)") from exc
            self._procs.append(proc)
            for target, what in ((self._read, ""), (self._read_errors, "-errors")):
                thread = threading.Thread(
                    target=target, args=(proc,), name=f"cnnf-conntrack-{family}{what}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        unparsed = _Throttled("conntrack output not understood: connections not observed")
        for line in proc.stdout:
            event = parse_event(line, self.clock())
            if event is not None:
                self.on_connection(event)
            elif line.strip():
                self.unparsed += 1
                unparsed.hit(line=line.strip()[:200])
        unparsed.close()

    def _read_errors(self, proc: subprocess.Popen[str]) -> None:
        """The tool's warnings, read as they come: unread, they would fill the
        pipe and stop the tool (a flood makes one per overrun)."""
        assert proc.stderr is not None
        overruns = _Throttled("conntrack events lost in the kernel (a burst larger than "
                              "its buffer): some connections were not observed")
        other = _Throttled("conntrack")
        for line in proc.stderr:
            text = line.strip()
            if "ENOBUFS" in text:
                self.overruns += 1
                overruns.hit()
            elif not text or text.startswith(_ENOBUFS_MORE):
                continue  # the rest of the ENOBUFS warning
            elif text.startswith("NOTICE: Netlink socket buffer size"):
                log.debug("conntrack", message=text)  # -b taken, once per start
            else:
                other.hit(message=text[:200])
        overruns.close()
        other.close()

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def exit_codes(self) -> list[int | None]:
        return [p.poll() for p in self._procs]

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
