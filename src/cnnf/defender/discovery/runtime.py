"""Which discovery backend a Defender uses: ``--runtime auto|docker|cri``.

``auto`` takes the first of these that answers: containerd's CRI socket,
CRI-O's, then the Docker and Podman sockets. A containerd socket whose CRI
plugin is disabled (Docker's own containerd) does not count: the probe asks it
for the CRI version. An explicit ``--cri-socket`` or ``--docker-host`` (or
``$DOCKER_HOST``) decides ``auto`` without probing. When nothing answers,
``auto`` picks the first socket that exists (the runtime may be restarting;
discovery retries), else the Docker socket, and says so in its log line.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

import grpc
import structlog

from cnnf.cri import CONTAINERD_SOCKET, CRIO_SOCKET, CriClient, endpoint, socket_path
from cnnf.defender.discovery.base import Discovery
from cnnf.defender.discovery.cri import CriDiscovery
from cnnf.defender.discovery.docker import (
    DOCKER_SOCKET,
    PODMAN_SOCKET,
    DockerDiscovery,
    default_docker_host,
)

log = structlog.get_logger(__name__)

RUNTIMES = ("auto", "docker", "cri")
CRI_SOCKETS = (CONTAINERD_SOCKET, CRIO_SOCKET)
DOCKER_SOCKETS = (DOCKER_SOCKET, PODMAN_SOCKET)
PROBE_TIMEOUT = 1.0


def cri_answers(path: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True if a CRI runtime answers ``Version`` on this socket."""
    if not Path(socket_path(path)).exists():
        return False
    try:
        with CriClient(path, timeout=timeout) as client:
            client.version()
        return True
    except grpc.RpcError:
        return False


def docker_answers(path: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True if something accepts connections on this unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
        return True
    except OSError:
        return False


def choose(runtime: str = "auto", cri_socket: str | None = None,
           docker_host: str | None = None, *,
           cri_sockets: Sequence[str] = CRI_SOCKETS,
           docker_sockets: Sequence[str] = DOCKER_SOCKETS) -> tuple[str, str, str]:
    """(backend, endpoint, why): ``("cri", "unix:///run/containerd/containerd.sock",
    "answered")``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "docker" or (runtime == "auto" and (docker_host or
                                                     (not cri_socket and
                                                      os.environ.get("DOCKER_HOST")))):
        return "docker", default_docker_host(docker_host), "given"
    if cri_socket:
        return "cri", endpoint(cri_socket), "given"
    for path in cri_sockets:
        if cri_answers(path):
            return "cri", endpoint(path), "answered"
    if runtime == "cri":
        existing = [p for p in cri_sockets if Path(p).exists()]
        return "cri", endpoint(existing[0] if existing else cri_sockets[0]), "default"
    for path in docker_sockets:
        if docker_answers(path):
            return "docker", f"unix://{path}", "answered"
    for path in (*cri_sockets, *docker_sockets):
        if Path(path).exists():
            kind = "cri" if path in cri_sockets else "docker"
            return kind, endpoint(path), "exists, not answering yet"
    return "docker", f"unix://{docker_sockets[0]}", "default: nothing found"


def make_discovery(runtime: str, cri_socket: str | None, docker_host: str | None,
                   host: str, cluster: str = "") -> Discovery:
    kind, target, why = choose(runtime, cri_socket, docker_host)
    log.info("discovery", runtime=kind, endpoint=target, chosen=why, asked=runtime)
    if kind == "cri":
        return CriDiscovery(target, host, cluster)
    return DockerDiscovery(target, host, cluster)
