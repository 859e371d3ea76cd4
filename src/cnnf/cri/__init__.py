"""A client of the Kubernetes Container Runtime Interface (``runtime.v1``).

The messages and the service are CNNF's own subset of the CRI, in ``cri.proto``
beside this file, compiled by grpcio-tools the first time this package is
imported (a quarter of a second; nothing generated is kept in the tree).
:data:`pb` holds the message classes, :class:`CriClient` the calls CNNF makes.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

_lock = threading.Lock()


def _compile() -> tuple[Any, Any]:
    # protoc resolves "cnnf/cri/cri.proto" against sys.path: put the directory
    # that holds the cnnf package there while it compiles (an editable install
    # imports cnnf through a finder, not through a sys.path entry).
    root = str(Path(__file__).resolve().parent.parent.parent)
    with _lock:
        added = root not in sys.path
        if added:
            sys.path.append(root)
        try:
            return grpc.protos_and_services("cnnf/cri/cri.proto")  # type: ignore[no-any-return]
        finally:
            if added:
                sys.path.remove(root)


pb, _services = _compile()

CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CRIO_SOCKET = "/run/crio/crio.sock"
DEFAULT_TIMEOUT = 10.0  # seconds, for every unary call
# Answers may be large: the kubelet copies every pod's annotations (up to 256
# KiB each) into its sandbox, and a list returns them all. gRPC's default
# limit (4 MiB) would let a tenant with a few such pods make every list fail;
# the kubelet allows 16 MiB, and 110 pods of 256 KiB are 28 MiB.
MAX_MESSAGE_BYTES = 128 * 1024 * 1024

# Enum values, named as in the CRI.
SANDBOX_READY = 0
SANDBOX_NOTREADY = 1
CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN = 0, 1, 2, 3
NAMESPACE_POD, NAMESPACE_CONTAINER, NAMESPACE_NODE = 0, 1, 2


def endpoint(socket: str) -> str:
    """``/run/x.sock`` or ``unix:///run/x.sock`` -> the gRPC target ``unix:///run/x.sock``."""
    if socket.startswith("unix://"):
        return socket
    if "://" in socket:
        raise ValueError(f"CRI endpoint {socket!r}: only unix sockets are supported")
    return "unix://" + socket


def socket_path(socket: str) -> str:
    """The file of a unix endpoint (``unix:///run/x.sock`` -> ``/run/x.sock``)."""
    return endpoint(socket).removeprefix("unix://")


class CriClient:
    """One gRPC channel to a runtime's CRI socket. Every call raises
    :class:`grpc.RpcError` on failure (``UNAVAILABLE`` when nothing listens)."""

    def __init__(self, socket: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = endpoint(socket)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.target, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self.runtime = _services.RuntimeServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _t(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    # --- reading ---

    def version(self, timeout: float | None = None) -> Any:
        return self.runtime.Version(pb.VersionRequest(version="v1"), timeout=self._t(timeout))

    def list_pods(self, ready_only: bool = False, timeout: float | None = None) -> list[Any]:
        flt = pb.PodSandboxFilter()
        if ready_only:
            flt.state.state = SANDBOX_READY
        resp = self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=flt),
                                           timeout=self._t(timeout))
        return list(resp.items)

    def pod_status(self, pod_id: str, timeout: float | None = None) -> Any:
        return self.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                             timeout=self._t(timeout)).status

    def list_containers(self, pod_id: str = "", running_only: bool = False,
                        timeout: float | None = None) -> list[Any]:
        flt = pb.ContainerFilter(pod_sandbox_id=pod_id)
        if running_only:
            flt.state.state = CONTAINER_RUNNING
        resp = self.runtime.ListContainers(pb.ListContainersRequest(filter=flt),
                                           timeout=self._t(timeout))
        return list(resp.containers)

    def container_status(self, container_id: str, timeout: float | None = None) -> Any:
        return self.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=container_id), timeout=self._t(timeout)).status

    def events(self) -> Any:
        """The runtime's container event stream (no timeout; cancel it to end
        it). Raises ``UNIMPLEMENTED`` on runtimes without it (containerd 1.6)."""
        return self.runtime.GetContainerEvents(pb.GetEventsRequest())

    # --- what a kubelet does (the lab) ---

    def run_pod(self, config: Any, timeout: float | None = None) -> str:
        resp = self.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                          timeout=self._t(timeout))
        return str(resp.pod_sandbox_id)

    def create_container(self, pod_id: str, config: Any, sandbox_config: Any,
                         timeout: float | None = None) -> str:
        resp = self.runtime.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config,
                                      sandbox_config=sandbox_config),
            timeout=self._t(timeout))
        return str(resp.container_id)

    def start_container(self, container_id: str, timeout: float | None = None) -> None:
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id),
                                    timeout=self._t(timeout))

    def stop_container(self, container_id: str, grace: int = 0,
                       timeout: float | None = None) -> None:
        self.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id,
                                                           timeout=grace),
                                   timeout=self._t(timeout))

    def remove_container(self, container_id: str, timeout: float | None = None) -> None:
        self.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id),
                                     timeout=self._t(timeout))

    def stop_pod(self, pod_id: str, timeout: float | None = None) -> None:
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                    timeout=self._t(timeout))

    def remove_pod(self, pod_id: str, timeout: float | None = None) -> None:
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                      timeout=self._t(timeout))

    def exec_sync(self, container_id: str, cmd: list[str], exec_timeout: int = 0,
                  timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run ``cmd`` in a container; (exit code, stdout, stderr)."""
        resp = self.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=exec_timeout),
            timeout=self._t(timeout) + exec_timeout)
        return int(resp.exit_code), bytes(resp.stdout), bytes(resp.stderr)


def pod_config(name: str, namespace: str, uid: str,
               labels: Mapping[str, str] | None = None, *,
               annotations: Mapping[str, str] | None = None, host_network: bool = False,
               log_directory: str = "", hostname: str = "") -> Any:
    """A ``PodSandboxConfig`` as a kubelet writes it: attempt 0, the pod's labels
    plus the ``io.kubernetes.pod.*`` labels kubelets add."""
    all_labels = {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                  "io.kubernetes.pod.uid": uid, **(labels or {})}
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
        hostname=hostname or ("" if host_network else name),
        log_directory=log_directory,
        labels=all_labels, annotations=dict(annotations or {}))
    if host_network:
        cfg.linux.security_context.namespace_options.network = NAMESPACE_NODE
    return cfg
