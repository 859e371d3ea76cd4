"""Discovery through the Kubernetes CRI (containerd, CRI-O): pods, named by
their namespace, name and labels, and their containers' images.

A pod's containers share one network namespace and its addresses, so one
identity stands for the pod (:func:`pod_identity`): its namespace, pod name
and labels (the pod's, as the kubelet gave them to the runtime, with the
``io.kubernetes.pod.*`` labels it adds), its main container's name and image,
and every running container's image (``images``): an image selector matches
the pod when it matches any of them. Containers that do not run (exited init
containers, a sidecar that never started) do not count: a pod is what runs in
it. The main container is the running one the pod's
``kubectl.kubernetes.io/default-container`` annotation names, else the first
running one created.

A pod is named once its sandbox is ready and at least one of its containers
runs: until then nothing in it can connect, and its address is held back as
a not yet named container address (so a rule by image is never decided on a
pod whose images are not known yet). Host-network pods are the host.

Changes are found by a resync every :data:`POLL_INTERVAL`, and at once on
each event of ``GetContainerEvents`` where the runtime has it (containerd 1.6
answers UNIMPLEMENTED; CRI-O sends events only with ``enable_pod_events``).
Every poll is a request with a timeout: a runtime that stops answering is
marked down at the next one.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from cnnf.cri import (
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    NAMESPACE_NODE,
    CriClient,
    endpoint,
    socket_path,
)
from cnnf.defender.discovery.base import (
    ENGINE_ERROR,
    RETRY_INTERVAL,
    UNREACHABLE,
    UNRESPONSIVE,
    EngineState,
)
from cnnf.defender.discovery.identity import DiscoveredContainer
from cnnf.model import ContainerIdentity, make_labels, normalise_image

log = structlog.get_logger(__name__)

POLL_INTERVAL = 0.2  # seconds between polls on runtimes without container events
EVENTS_RESYNC_INTERVAL = 1.0  # an event stream that ended is opened again at most this often
REQUEST_TIMEOUT = 2.0  # a runtime slower than this to answer is unresponsive
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"


def cri_outage_reason(exc: BaseException) -> str:
    """Why a CRI request failed (see :mod:`cnnf.defender.discovery.base`)."""
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        if code == grpc.StatusCode.UNAVAILABLE:
            return UNREACHABLE
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return UNRESPONSIVE
        return ENGINE_ERROR
    if isinstance(exc, OSError):
        return UNREACHABLE
    return ENGINE_ERROR


def _is_image_id(ref: str) -> bool:
    """``sha256:<hex>`` or a bare 64-digit hex id: not a name a rule can use."""
    tail = ref.removeprefix("sha256:")
    return ref.startswith("sha256:") or (len(tail) == 64 and all(
        ch in "0123456789abcdef" for ch in tail))


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What a pod sandbox's status says that does not change while it lives."""

    id: str
    name: str
    namespace: str
    uid: str
    labels: tuple[tuple[str, str], ...]
    annotations: dict[str, str]
    addresses: tuple[str, ...]
    host_network: bool

    @classmethod
    def of(cls, status: Any) -> PodInfo:
        addresses: list[str] = []
        for ip in (status.network.ip, *(a.ip for a in status.network.additional_ips)):
            if ip and ip not in addresses:
                addresses.append(ip)
        mode = status.linux.namespaces.options.network
        return cls(id=status.id, name=status.metadata.name,
                   namespace=status.metadata.namespace, uid=status.metadata.uid,
                   labels=make_labels(dict(status.labels)),
                   annotations=dict(status.annotations), addresses=tuple(addresses),
                   host_network=mode == NAMESPACE_NODE)


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """One container of a pod, with its image by name."""

    id: str
    name: str
    image: str
    state: int
    created_at: float  # UNIX seconds
    started_at: float = 0.0  # UNIX seconds (0: unknown)


def pod_identity(pod: PodInfo, containers: Iterable[ContainerInfo], host: str,
                 cluster: str = "") -> DiscoveredContainer | None:
    """The pod as one workload (its running containers), or None while none of
    its containers runs."""
    running = sorted((c for c in containers if c.state == CONTAINER_RUNNING),
                     key=lambda c: (c.created_at, c.name))
    if not running:
        return None
    wanted = pod.annotations.get(DEFAULT_CONTAINER_ANNOTATION, "")
    main = next((c for c in running if c.name == wanted), running[0])
    images = list(dict.fromkeys([main.image, *(c.image for c in running)]))
    starts = [c.started_at for c in running if c.started_at > 0]
    identity = ContainerIdentity(
        image=main.image, name=main.name, labels=pod.labels, namespace=pod.namespace,
        cluster=cluster, host=host, id=pod.id, pod=pod.name,
        images=tuple(images) if len(images) > 1 else ())
    return DiscoveredContainer(identity=identity, addresses=pod.addresses,
                               host_network=pod.host_network, running=True, pid=0,
                               started_at=min(starts) if starts else 0.0)


class CriDiscovery:
    """Pods through a runtime's CRI socket (``unix:///run/containerd/containerd.sock``)."""

    kind = "cri"

    def __init__(
        self,
        socket: str,
        host: str,
        cluster: str = "",
        timeout: float = REQUEST_TIMEOUT,
        *,
        poll_interval: float = POLL_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = endpoint(socket)
        self.host = host
        self.cluster = cluster
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.engine = EngineState(endpoint=self.target, runtime=self.kind, clock=clock)
        self.events: bool | None = None  # GetContainerEvents answered (None: not known yet)
        self._next_stream = 0.0  # monotonic time before which no stream is opened again
        self.runtime_version = ""  # "containerd 1.6.20" once reached
        self._client: CriClient | None = None
        self._pods: dict[str, PodInfo] = {}  # ready pods' statuses, by sandbox id
        self._containers: dict[str, ContainerInfo] = {}  # by container id
        self._lock = threading.Lock()  # snapshot() from the watch loop and the Agent

    @property
    def endpoint(self) -> str:
        return self.target

    @staticmethod
    def outage_reason(exc: BaseException) -> str:
        return cri_outage_reason(exc)

    def describe(self, exc: BaseException) -> str:
        """A failed request in one line, with a hint when the socket is missing."""
        if not isinstance(exc, grpc.RpcError) or not callable(getattr(exc, "code", None)):
            return str(exc)
        text = f"{exc.code().name}: {exc.details()}"
        path = socket_path(self.target)
        if not os.path.exists(path):
            text += (f" (no socket {path}: is the runtime running, and is --cri-socket "
                     "right? containerd: /run/containerd/containerd.sock, CRI-O: "
                     "/run/crio/crio.sock)")
        return text

    def _connect(self) -> CriClient:
        if self._client is None:
            self._client = CriClient(self.target, timeout=self.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def version(self) -> str:
        v = self._connect().version()
        self.runtime_version = f"{v.runtime_name} {v.runtime_version}".strip()
        return self.runtime_version

    # -- reading -------------------------------------------------------------------

    def snapshot(self) -> list[DiscoveredContainer]:
        """Every pod with a running container. Raises ``grpc.RpcError``."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> list[DiscoveredContainer]:
        client = self._connect()
        pods = client.list_pods(ready_only=True)
        listed = client.list_containers()
        ready = {p.id for p in pods}
        for gone in set(self._pods) - ready:
            del self._pods[gone]
        by_pod: dict[str, list[ContainerInfo]] = {}
        seen: set[str] = set()
        for c in listed:
            if c.pod_sandbox_id not in ready:
                continue
            seen.add(c.id)
            info = self._container(client, c)
            if info is not None:
                by_pod.setdefault(c.pod_sandbox_id, []).append(info)
        for gone in set(self._containers) - seen:
            del self._containers[gone]
        found: list[DiscoveredContainer] = []
        for p in pods:
            if p.id not in by_pod:
                continue  # nothing runs in it yet
            pod = self._pods.get(p.id)
            if pod is None:
                try:
                    pod = PodInfo.of(client.pod_status(p.id))
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        continue  # removed between the list and the status
                    raise
                self._pods[p.id] = pod
            d = pod_identity(pod, by_pod[p.id], self.host, self.cluster)
            if d is not None:
                found.append(d)
        return found

    def _container(self, client: CriClient, c: Any) -> ContainerInfo | None:
        """The container with its image by name: from the list when it names it,
        else (kubelets pass the image's id) from the container's status, asked
        once per container. A running container's start time comes from its
        status too."""
        known = self._containers.get(c.id)
        if known is not None and known.state == c.state:
            return known
        image = next((i for i in (c.image.user_specified_image, c.image.image)
                      if i and not _is_image_id(i)), "")
        started = known.started_at if known is not None else 0.0
        if not image or (c.state in (CONTAINER_RUNNING, CONTAINER_EXITED) and not started):
            try:
                status = client.container_status(c.id)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None  # removed between the list and the status
                raise
            if not image:
                image = next((i for i in (status.image.user_specified_image, status.image.image,
                                          status.image_ref, c.image_ref)
                              if i and not _is_image_id(i)), c.image.image or c.image_ref)
            started = status.started_at / 1e9
        info = ContainerInfo(id=c.id, name=c.metadata.name, image=normalise_image(image),
                             state=c.state, created_at=c.created_at / 1e9, started_at=started)
        self._containers[c.id] = info
        return info

    # -- following -----------------------------------------------------------------

    def watch(
        self,
        on_snapshot: Callable[[list[DiscoveredContainer]], None],
        on_start: Callable[[DiscoveredContainer], None],
        stop: threading.Event,
        on_error: Callable[[Exception], None] | None = None,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        """Follow the runtime until ``stop`` is set (see the module's docstring).
        ``on_start`` is called for every pod a poll finds new, before
        ``on_snapshot`` gets the whole list; ``on_snapshot`` is called after
        every (re)connection and after every change."""
        kick = threading.Event()  # set by the event stream: resync now
        stream: list[Any] = []
        threading.Thread(target=self._cancel_on_stop, args=(stop, stream, kick), daemon=True,
                         name="cnnf-discovery-stop").start()
        last_attempt = float("-inf")
        while not stop.wait(max(0.0, last_attempt + retry_interval - time.monotonic())):
            last_attempt = time.monotonic()
            try:
                if not self.runtime_version:
                    log.info("container runtime", runtime=self.version(), endpoint=self.target)
                found = self.snapshot()
                self.engine.back()
                on_snapshot(found)
                self._follow(found, on_snapshot, on_start, stop=stop, kick=kick, stream=stream)
            except Exception as exc:  # the runtime went away: keep the last inventory
                if stop.is_set():
                    break
                self.engine.down(self.outage_reason(exc), self.describe(exc))
                if on_error is not None:
                    on_error(exc)
                self._cancel(stream)
                self.close()

    def _follow(
        self,
        found: list[DiscoveredContainer],
        on_snapshot: Callable[[list[DiscoveredContainer]], None],
        on_start: Callable[[DiscoveredContainer], None],
        *,
        stop: threading.Event,
        kick: threading.Event,
        stream: list[Any],
    ) -> None:
        """Resync every poll interval, and at once when the event stream says
        something changed: events only make discovery quicker, a missed event
        or a silent stream never makes it slower than polling."""
        last = {d.identity.id: d for d in found}
        while not stop.is_set():
            self._start_events(stream, kick, stop)  # again if it ended
            kick.wait(self.poll_interval)
            kick.clear()
            if stop.is_set():
                return
            found = self.snapshot()
            now = {d.identity.id: d for d in found}
            if now == last:
                continue
            for pod_id, d in now.items():
                if last.get(pod_id) != d:
                    on_start(d)
            last = now
            on_snapshot(found)

    def _start_events(self, stream: list[Any], kick: threading.Event,
                      stop: threading.Event) -> None:
        """Open the runtime's container event stream, if it has one; every
        event sets ``kick``. A stream that ends before its first event
        (UNIMPLEMENTED on containerd 1.6; CRI-O with pod events off closes it
        at once) means no events: polling only, from then on; unless it ended
        because the runtime went away (UNAVAILABLE), which says nothing of its
        events. One that ends later is opened again at most once per
        EVENTS_RESYNC_INTERVAL."""
        now = time.monotonic()
        if self.events is False or stream or stop.is_set() or now < self._next_stream:
            return
        assert self._client is not None
        self._next_stream = now + EVENTS_RESYNC_INTERVAL
        events = self._client.events()
        stream[:] = [events]

        def read() -> None:
            seen = False
            error = ""
            gone = False  # the runtime went away: no answer about its events
            unimplemented = False  # an answer, whatever it said before (a downgrade)
            try:
                for _ in events:
                    if not seen and not self.events:
                        log.info("following the runtime's container events",
                                 endpoint=self.target)
                    seen = True
                    self.events = True
                    kick.set()
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED:
                    return  # stopping, or the connection is being replaced
                error = f"{exc.code().name}: {exc.details()}"
                gone = exc.code() == grpc.StatusCode.UNAVAILABLE
                unimplemented = exc.code() == grpc.StatusCode.UNIMPLEMENTED
            finally:
                with contextlib.suppress(ValueError):
                    stream.remove(events)
            if stop.is_set():
                return
            if unimplemented or (not seen and not self.events and not gone):
                self.events = False
                log.info("the runtime has no container events: polling",
                         interval_s=self.poll_interval, endpoint=self.target, answer=error)
            else:
                log.info("container event stream ended; opened again within "
                         f"{EVENTS_RESYNC_INTERVAL:g} s", error=error)
            kick.set()  # resync now

        threading.Thread(target=read, name="cnnf-discovery-events", daemon=True).start()

    @staticmethod
    def _cancel(stream: list[Any]) -> None:
        for events in list(stream):
            with contextlib.suppress(Exception):
                events.cancel()
        stream.clear()

    @classmethod
    def _cancel_on_stop(cls, stop: threading.Event, stream: list[Any],
                        kick: threading.Event) -> None:
        stop.wait()
        cls._cancel(stream)
        kick.set()  # the follow loop waits on it for up to a poll interval
