"""What every discovery backend shares: the interface the Agent conducts,
and the state of the container engine (or runtime) it reads.

Two backends implement :class:`Discovery`: the Docker Engine API
(:mod:`cnnf.defender.discovery.docker`: Docker, or Podman's service) and the
Kubernetes CRI (:mod:`cnnf.defender.discovery.cri`: containerd, CRI-O).
:func:`cnnf.defender.discovery.runtime.make_discovery` picks one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from cnnf.defender.discovery.identity import DiscoveredContainer

log = structlog.get_logger(__name__)

RETRY_INTERVAL = 0.5  # at most one reconnection attempt per this many seconds

UNREACHABLE = "unreachable"  # connection refused, socket gone, connection reset
UNRESPONSIVE = "unresponsive"  # connected, but a request timed out
ENGINE_ERROR = "error"  # it answered, with an error


@dataclass
class EngineState:
    """Whether the container engine answers. The watch loop marks it up after
    every resync; the watch loop and the liveness check mark it down. Each
    change is logged once: "container engine unreachable" when it goes, with
    the reason, and "container engine back" with the outage's length."""

    endpoint: str = ""  # the socket or URL
    runtime: str = ""  # docker | cri
    clock: Callable[[], float] = time.time
    up: bool = False
    since: float = 0.0  # UNIX time of the last change (0: not reached yet)
    outages: int = 0
    reason: str = ""  # of the current or last outage
    known: bool = False  # reached or failed at least once
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def down(self, reason: str, error: str = "") -> bool:
        """The engine failed; True (and one log line) if it was up or not known yet."""
        with self._lock:
            if self.known and not self.up:
                return False
            self.up, self.known, self.since = False, True, self.clock()
            self.outages += 1
            self.reason = reason
        log.warning("container engine unreachable", reason=reason, error=error,
                    endpoint=self.endpoint, runtime=self.runtime)
        return True

    def back(self) -> float | None:
        """A resync succeeded: the outage's length in seconds if there was one
        (logged), else None (already up, or reached for the first time)."""
        with self._lock:
            if self.up:
                return None
            now = self.clock()
            outage = max(0.0, now - self.since) if self.known else None
            self.up, self.known, self.since = True, True, now
        if outage is not None:
            log.info("container engine back", outage_s=round(outage, 3),
                     endpoint=self.endpoint, runtime=self.runtime, reason=self.reason)
        return outage

    def outage_seconds(self) -> float:
        """The current outage's length so far (0 while up or not reached yet)."""
        with self._lock:
            if self.up or not self.known:
                return 0.0
            return max(0.0, self.clock() - self.since)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"up": self.up, "since": self.since, "outages": self.outages}


class Discovery(Protocol):
    """A source of the host's running workloads (containers or pods).

    ``snapshot()`` lists them (raising when the engine cannot be read);
    ``watch()`` follows changes until ``stop`` is set: ``on_start`` as soon as
    a workload starts (so it is protected before it connects), ``on_snapshot``
    with the full list after every resync and change, ``on_error`` when the
    engine cannot be reached (the last inventory is kept). ``engine`` tells
    whether it answers."""

    kind: str  # docker | cri
    engine: EngineState

    @property
    def endpoint(self) -> str: ...

    def snapshot(self) -> list[DiscoveredContainer]: ...

    def watch(
        self,
        on_snapshot: Callable[[list[DiscoveredContainer]], None],
        on_start: Callable[[DiscoveredContainer], None],
        stop: threading.Event,
        on_error: Callable[[Exception], None] | None = None,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None: ...

    def outage_reason(self, exc: BaseException) -> str:
        """Why a request failed: UNREACHABLE, UNRESPONSIVE or ENGINE_ERROR."""
        ...

    def describe(self, exc: BaseException) -> str:
        """A failed request in one line, for the log."""
        ...

    def close(self) -> None: ...
