"""Which discovery backend a Defender uses: ``--runtime auto|docker|cri``.

``auto`` probes containerd's CRI socket, CRI-O's, then the Docker and Podman
sockets. A containerd socket whose CRI plugin is disabled (Docker's own
containerd) does not count: the probe asks it for the CRI version. When both a
CRI runtime and a Docker API answer (a Docker host whose containerd has its
CRI plugin on), the one that runs workloads wins (pods first). An explicit
``--cri-socket`` or ``--docker-host`` (or ``$DOCKER_HOST``) decides ``auto``
without probing. When nothing answers (the runtime is starting), an existing
Docker or Podman socket wins over an existing CRI socket (on Docker hosts
containerd's socket is there too), else a CRI socket, else the Docker socket;
the log line says which and why. Give ``--runtime`` to decide for certain.
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


def _has_pods(path: str, timeout: float = PROBE_TIMEOUT) -> bool:
    try:
        with CriClient(path, timeout=timeout) as client:
            return bool(client.list_pods(ready_only=True))
    except grpc.RpcError:
        return False


def _has_containers(path: str, timeout: float = PROBE_TIMEOUT) -> bool:
    import docker

    try:
        client = docker.APIClient(base_url=f"unix://{path}", timeout=timeout)
        try:
            return bool(client.containers(all=False))
        finally:
            client.close()
    except Exception:  # an engine that does not answer the list: no workloads seen
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
    cri = next((p for p in cri_sockets if cri_answers(p)), None)
    if runtime == "cri":
        if cri is not None:
            return "cri", endpoint(cri), "answered"
        existing = [p for p in cri_sockets if Path(p).exists()]
        return "cri", endpoint(existing[0] if existing else cri_sockets[0]), "default"
    dock = next((p for p in docker_sockets if docker_answers(p)), None)
    if cri is not None and dock is not None:
        if not _has_pods(cri) and _has_containers(dock):
            return "docker", f"unix://{dock}", "answered, and runs containers (the CRI no pods)"
        return "cri", endpoint(cri), "answered (a Docker API too)"
    if cri is not None:
        return "cri", endpoint(cri), "answered"
    if dock is not None:
        return "docker", f"unix://{dock}", "answered"
    for path in (*docker_sockets, *cri_sockets):
        if Path(path).exists():
            kind = "cri" if path in cri_sockets else "docker"
            return kind, endpoint(path), "exists, not answering yet"
    return "docker", f"unix://{docker_sockets[0]}", "default: nothing found"


def make_discovery(runtime: str, cri_socket: str | None, docker_host: str | None,
                   host: str, cluster: str = "") -> Discovery:
    kind, target, why = choose(runtime, cri_socket, docker_host)
    (log.warning if why.startswith(("exists", "default")) and runtime == "auto"
     else log.info)("discovery", runtime=kind, endpoint=target, chosen=why, asked=runtime)
    if kind == "cri":
        return CriDiscovery(target, host, cluster)
    return DockerDiscovery(target, host, cluster)
