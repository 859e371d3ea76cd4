"""Discovery through the Docker Engine API (Docker, or Podman's compatible service).

``DockerDiscovery.snapshot()`` lists running containers; ``watch()`` follows the
engine's events and calls back on every start, stop and network change, with a
full resync after every (re)connection. When the engine is unreachable the last
inventory is kept and the connection is retried every half second, so the
inventory is current again within a second of the engine coming back.

The event stream never times out by itself: an engine that stops answering
(stopped with SIGSTOP, wedged) would leave it open and silent. While the engine
is up, a liveness check pings it every second from a client of its own with a
short timeout, and on failure closes the stream, so the watch loop reconnects.
:class:`EngineState` says whether the engine answers, since when and how many
outages there were; its transitions are logged once each way.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import requests
import structlog
import urllib3

from cnnf.defender.discovery.base import (
    ENGINE_ERROR,
    RETRY_INTERVAL,
    UNREACHABLE,
    UNRESPONSIVE,
    EngineState,
)
from cnnf.defender.discovery.identity import DiscoveredContainer, container_from_inspect

log = structlog.get_logger(__name__)

DOCKER_SOCKET = "/var/run/docker.sock"
PODMAN_SOCKET = "/run/podman/podman.sock"

# Container events after which the container set or its addresses may differ.
_RELEVANT = {"start", "restart", "die", "stop", "kill", "destroy", "remove", "connect",
             "disconnect", "pause", "unpause", "died", "cleanup"}

PING_INTERVAL = 1.0  # the liveness check's period while the engine is up
PING_TIMEOUT = 2.0  # an engine slower than this to answer /_ping is unresponsive


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: requests and urllib3 keep the original in
    ``args`` as well as in ``__cause__``/``__context__``."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (e.__cause__, e.__context__, *e.args) if isinstance(x, BaseException)]


def outage_reason(exc: BaseException) -> str:
    """Why a request to the engine failed: :data:`UNRESPONSIVE` (a timeout),
    :data:`UNREACHABLE` (no connection) or :data:`ENGINE_ERROR`."""
    causes = list(_causes(exc))
    timeouts = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, socket.timeout)
    if any(isinstance(e, timeouts) for e in causes):
        return UNRESPONSIVE
    if any(isinstance(e, requests.exceptions.HTTPError) for e in causes):  # an answer
        return ENGINE_ERROR
    for e in causes:
        # requests' own exceptions are OSErrors too: only its ConnectionError counts.
        if isinstance(e, requests.exceptions.ConnectionError | urllib3.exceptions.ProtocolError):
            return UNREACHABLE
        if isinstance(e, OSError) and not isinstance(e, requests.exceptions.RequestException):
            return UNREACHABLE  # refused, no such socket, permission denied, reset
    return ENGINE_ERROR


def default_docker_host(explicit: str | None = None) -> str:
    """``--docker-host``, else ``$DOCKER_HOST``, else the Docker socket, else Podman's."""
    if explicit:
        return explicit
    env = os.environ.get("DOCKER_HOST")
    if env:
        return env
    for path in (DOCKER_SOCKET, PODMAN_SOCKET):
        if Path(path).exists():
            return f"unix://{path}"
    return f"unix://{DOCKER_SOCKET}"


class DockerDiscovery:
    """Discovery through the Docker Engine API (Docker, or Podman's service)."""

    kind = "docker"

    def __init__(
        self,
        base_url: str,
        host: str,
        cluster: str = "",
        timeout: float = 10.0,
        *,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url
        self.host = host
        self.cluster = cluster
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.engine = EngineState(endpoint=base_url, runtime=self.kind, clock=clock)
        self._client: docker.DockerClient | None = None
        self._api_version = ""  # negotiated by the last connection; the pings use it

    def _connect(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.base_url, timeout=self.timeout)
            self._api_version = self._client.api.api_version
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def snapshot(self) -> list[DiscoveredContainer]:
        """Every running container, inspected. Raises ``docker.errors.DockerException``."""
        client = self._connect()
        found = []
        for c in client.api.containers(all=False):
            try:
                attrs = client.api.inspect_container(c["Id"])
            except docker.errors.NotFound:
                continue  # gone between list and inspect
            d = container_from_inspect(attrs, self.host, self.cluster)
            if d.running:
                found.append(d)
        return found

    def inspect(self, container_id: str) -> DiscoveredContainer | None:
        try:
            attrs = self._connect().api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        return container_from_inspect(attrs, self.host, self.cluster)

    @property
    def endpoint(self) -> str:
        return self.base_url

    @staticmethod
    def outage_reason(exc: BaseException) -> str:
        return outage_reason(exc)

    @staticmethod
    def describe(exc: BaseException) -> str:
        return str(exc)

    def probe(self) -> None:
        """Connect once to the engine's unix socket and hang up: raises ``OSError``
        when it refuses or is gone. Reconnection attempts and pings start with it
        because the docker SDK leaves the socket of a failed connection to the
        garbage collector (a ResourceWarning on every retry of an outage)."""
        if not self.base_url.startswith("unix://"):
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.ping_timeout)
            sock.connect(self.base_url.removeprefix("unix://"))

    def _failed(self, exc: Exception, on_error: Callable[[Exception], None] | None) -> None:
        self.engine.down(outage_reason(exc), str(exc))
        if on_error is not None:
            on_error(exc)

    def watch(
        self,
        on_snapshot: Callable[[list[DiscoveredContainer]], None],
        on_start: Callable[[DiscoveredContainer], None],
        stop: threading.Event,
        on_error: Callable[[Exception], None] | None = None,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        """Follow events until ``stop`` is set. ``on_start`` is called as soon as a
        container starts (so its address is protected before it connects);
        ``on_snapshot`` with the full list after every resync; ``on_error`` when
        the engine cannot be reached or stops answering (the last inventory is
        kept). Reconnection attempts start at most every ``retry_interval``."""
        stream: list[Any] = []  # the current event stream, closed by one thread at stop
        threading.Thread(target=self._close_on_stop, args=(stop, stream), daemon=True,
                         name="cnnf-discovery-stop").start()
        threading.Thread(target=self._check_liveness, args=(stop, stream, on_error),
                         daemon=True, name="cnnf-discovery-ping").start()
        last_attempt = float("-inf")
        while not stop.wait(max(0.0, last_attempt + retry_interval - time.monotonic())):
            last_attempt = time.monotonic()
            try:
                self.probe()
                client = self._connect()
                since = int(time.time())
                found = self.snapshot()
                self.engine.back()
                on_snapshot(found)
                events = client.api.events(decode=True, since=since,
                                           filters={"type": "container"})
                stream[:] = [events]
                try:
                    # Not when stopping, or when the liveness check failed while
                    # the request for the stream waited (it has no timeout): the
                    # check found no stream to close then.
                    if not stop.is_set() and self.engine.up:
                        self._follow(events, on_snapshot, on_start, stop)
                finally:
                    stream.clear()
                    self._release(events)
                # The stream ended (the engine went away, or the liveness check
                # closed it): resync, which finds out whether the engine answers;
                # after a failed check, on fresh connections.
                if not self.engine.up:
                    self.close()
            except Exception as exc:  # the engine went away: keep the last inventory
                if stop.is_set():
                    break
                self._failed(exc, on_error)
                self.close()

    def _follow(
        self,
        events: Iterable[dict[str, Any]],
        on_snapshot: Callable[[list[DiscoveredContainer]], None],
        on_start: Callable[[DiscoveredContainer], None],
        stop: threading.Event,
    ) -> None:
        for ev in events:
            if stop.is_set():
                break
            action = str(ev.get("Action") or ev.get("status") or "").split(":")[0]
            if action not in _RELEVANT:
                continue
            if action in ("start", "restart", "connect", "unpause"):
                cid = ev.get("id") or (ev.get("Actor") or {}).get("ID")
                found = self.inspect(cid) if cid else None
                if found is not None and found.running:
                    on_start(found)
            on_snapshot(self.snapshot())

    def _check_liveness(
        self, stop: threading.Event, stream: list[Any],
        on_error: Callable[[Exception], None] | None,
    ) -> None:
        """Ping the engine while it is up; when a ping fails, mark it down and
        close the event stream (the watch loop then reconnects)."""
        client: docker.APIClient | None = None
        try:
            while not stop.wait(self.ping_interval):
                if not self.engine.up:
                    continue  # the watch loop is reconnecting
                try:
                    if client is None or client.api_version != self._api_version:
                        if client is not None:
                            client.close()
                        client = docker.APIClient(base_url=self.base_url,
                                                  version=self._api_version or None,
                                                  timeout=self.ping_timeout)
                    self.probe()
                    client.ping()
                except Exception as exc:
                    if stop.is_set():
                        break
                    self._failed(exc, on_error)
                    self._interrupt(stream)
                    if client is not None:
                        client.close()  # a fresh connection for the next ping
                        client = None
        finally:
            if client is not None:
                client.close()

    @staticmethod
    def _interrupt(stream: list[Any]) -> None:
        """From another thread: end the event stream the watch loop is reading
        (the SDK shuts its socket down)."""
        for events in list(stream):
            close = getattr(events, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # it may have ended already
                    close()

    @classmethod
    def _release(cls, events: Any) -> None:
        """In the watch loop, after the stream ended: close its connection too.
        The SDK closes the socket only of a stream still open, and the
        connection of a stream is never returned to the pool, so closing the
        client would not close it either."""
        cls._interrupt([events])
        response = getattr(events, "_response", None)
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()

    @classmethod
    def _close_on_stop(cls, stop: threading.Event, stream: list[Any]) -> None:
        stop.wait()
        cls._interrupt(stream)
