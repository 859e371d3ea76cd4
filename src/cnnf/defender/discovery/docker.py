"""Discovery through the Docker Engine API (Docker, or Podman's compatible service).

``DockerDiscovery.snapshot()`` lists running containers; ``watch()`` follows the
engine's events and calls back on every start, stop and network change, with a
full resync after every (re)connection. When the engine is unreachable the last
inventory is kept and the connection is retried with backoff.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import structlog

from cnnf.defender.discovery.identity import DiscoveredContainer, container_from_inspect

log = structlog.get_logger(__name__)

DOCKER_SOCKET = "/var/run/docker.sock"
PODMAN_SOCKET = "/run/podman/podman.sock"

# Container events after which the container set or its addresses may differ.
_RELEVANT = {"start", "restart", "die", "stop", "kill", "destroy", "remove", "connect",
             "disconnect", "pause", "unpause", "died", "cleanup"}


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
    def __init__(self, base_url: str, host: str, cluster: str = "", timeout: float = 10.0) -> None:
        self.base_url = base_url
        self.host = host
        self.cluster = cluster
        self.timeout = timeout
        self._client: docker.DockerClient | None = None

    def _connect(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.base_url, timeout=self.timeout)
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

    def watch(
        self,
        on_snapshot: Callable[[list[DiscoveredContainer]], None],
        on_start: Callable[[DiscoveredContainer], None],
        stop: threading.Event,
        max_backoff: float = 10.0,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        """Follow events until ``stop`` is set. ``on_start`` is called as soon as a
        container starts (so its address is protected before it connects);
        ``on_snapshot`` with the full list after every resync; ``on_error`` when
        the engine cannot be reached (the last inventory is kept)."""
        backoff = 0.5
        stream: list[Any] = []  # the current event stream, closed by one thread at stop
        threading.Thread(target=self._close_on_stop, args=(stop, stream), daemon=True).start()
        while not stop.is_set():
            try:
                client = self._connect()
                since = int(time.time())
                on_snapshot(self.snapshot())
                backoff = 0.5
                events = client.api.events(decode=True, since=since,
                                           filters={"type": "container"})
                stream[:] = [events]
                if stop.is_set():  # stop came between the check and the stream
                    break
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
            except Exception as exc:  # the engine went away: keep the last inventory
                if stop.is_set():
                    break
                log.warning("docker engine unreachable; keeping the last inventory",
                            docker_host=self.base_url, error=str(exc), retry_in=backoff)
                if on_error is not None:
                    on_error(exc)
                self.close()
                stop.wait(backoff)
                backoff = min(backoff * 2, max_backoff)

    @staticmethod
    def _close_on_stop(stop: threading.Event, stream: list[Any]) -> None:
        stop.wait()
        for events in list(stream):
            close = getattr(events, "close", None)
            if close is not None:
                close()
