"""CRI discovery against a runtime: :class:`CriDiscovery`, unmodified, reads
an in-process gRPC server that implements CNNF's ``RuntimeService``
(``cnnf/cri/cri.proto``) on a unix socket. The server is a fake runtime with a
small scripted state of pod sandboxes and containers; its container event
stream can be missing (containerd 1.6), close at once (CRI-O with pod events
off), stay open and send an event on every change, or fail after one event.
The real runtime (containerd 1.6, polling only) is in
tests/defender/lab/test_defender_kube.py.

No assertion is on time: each test waits for what it expects, polling with a
generous deadline, and counts requests where the point is how often."""

from __future__ import annotations

import gc
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

from cnnf.cri import (
    CONTAINER_CREATED,
    CONTAINER_RUNNING,
    MAX_MESSAGE_BYTES,
    NAMESPACE_NODE,
    SANDBOX_NOTREADY,
    SANDBOX_READY,
    _services,
    pb,
    pod_config,
)
from cnnf.defender.discovery.base import UNREACHABLE
from cnnf.defender.discovery.cri import EVENTS_RESYNC_INTERVAL, CriDiscovery
from cnnf.defender.discovery.identity import DiscoveredContainer

WAIT = 10.0  # seconds: the deadline of every wait for something expected
NO_EVENTS_LOG = "the runtime has no container events: polling"

# How the fake runtime answers GetContainerEvents.
UNIMPLEMENTED = "unimplemented"  # containerd 1.6
CLOSES = "closes"  # ends at once with OK: CRI-O with enable_pod_events off
HOLDS = "holds"  # stays open, one event per change
FAILS = "fails"  # one event, then UNKNOWN


def poll(check: Callable[[], Any], timeout: float = WAIT, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def image_id(n: int) -> str:
    return f"sha256:{n:064x}"


class FakeRuntime(_services.RuntimeServiceServicer):  # type: ignore[misc]  # compiled at import
    """A runtime's CRI answers from scripted state. Every change sends one
    event on each open event stream (in HOLDS mode)."""

    def __init__(self, events: str = UNIMPLEMENTED) -> None:
        self.events = events
        self.lock = threading.Lock()
        self.pods: dict[str, Any] = {}  # PodSandboxStatus by id
        self.containers: dict[str, Any] = {}  # Container, as listed, by id
        self.statuses: dict[str, Any] = {}  # ContainerStatus by container id
        self.vanished: set[str] = set()  # listed, but their status answers NOT_FOUND
        self.calls: Counter[str] = Counter()
        self.status_calls: Counter[str] = Counter()  # ContainerStatus, by container id
        self.streams: list[queue.Queue[Any]] = []  # one per open event stream
        self.streams_ended = 0  # event streams whose RPC ended (seen by the server)
        self._clock = 1_700_000_000 * 10**9  # nanoseconds; each object a second later

    # -- the script --------------------------------------------------------------------

    def _ns(self) -> int:
        self._clock += 10**9
        return self._clock

    def add_pod(self, pod_id: str, name: str, namespace: str = "shop", *, ip: str = "",
                extra_ips: tuple[str, ...] = (), labels: dict[str, str] | None = None,
                annotations: dict[str, str] | None = None, host_network: bool = False,
                ready: bool = True) -> None:
        cfg = pod_config(name, namespace, f"uid-{pod_id}", labels, annotations=annotations,
                         host_network=host_network)
        st = pb.PodSandboxStatus(
            id=pod_id, metadata=cfg.metadata, state=SANDBOX_READY if ready else SANDBOX_NOTREADY,
            created_at=self._ns(), labels=cfg.labels, annotations=cfg.annotations)
        st.network.ip = ip
        st.network.additional_ips.extend(pb.PodIP(ip=x) for x in extra_ips)
        st.linux.namespaces.options.network = NAMESPACE_NODE if host_network else 0
        with self.lock:
            self.pods[pod_id] = st
        self.changed(pod_id)

    def add_container(self, pod_id: str, name: str, image: str, state: int = CONTAINER_RUNNING,
                      *, listed_by_id: int = 0) -> str:
        """A container of ``image``; ``listed_by_id``: ListContainers gives the
        image's id (``sha256:...``), as kubelets pass it, and only
        ContainerStatus names the image."""
        cid = f"{pod_id}-{name}"
        created = self._ns()
        listed = image_id(listed_by_id) if listed_by_id else image
        c = pb.Container(id=cid, pod_sandbox_id=pod_id, metadata=pb.ContainerMetadata(name=name),
                         image=pb.ImageSpec(image=listed), image_ref=listed, state=state,
                         created_at=created)
        st = pb.ContainerStatus(
            id=cid, metadata=c.metadata, state=state, created_at=created,
            started_at=created + 500_000_000 if state == CONTAINER_RUNNING else 0,
            image=pb.ImageSpec(image=image),
            image_ref=f"{image.split(':', maxsplit=1)[0]}@{image_id(listed_by_id or 1)}")
        with self.lock:
            self.containers[cid] = c
            self.statuses[cid] = st
        self.changed(cid)
        return cid

    def changed(self, what: str) -> None:
        event = pb.ContainerEventResponse(container_id=what, container_event_type=1,
                                          created_at=time.time_ns())
        with self.lock:
            for q in self.streams:
                q.put(event)

    # -- RuntimeService --------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self.lock:
            self.calls[name] += 1

    def Version(self, request: Any, context: Any) -> Any:
        self._count("Version")
        return pb.VersionResponse(version="0.1.0", runtime_name="fake",
                                  runtime_version="1.0", runtime_api_version="v1")

    def ListPodSandbox(self, request: Any, context: Any) -> Any:
        self._count("ListPodSandbox")
        with self.lock:
            pods = list(self.pods.values())
        if request.filter.HasField("state"):
            pods = [p for p in pods if p.state == request.filter.state.state]
        return pb.ListPodSandboxResponse(items=[
            pb.PodSandbox(id=p.id, metadata=p.metadata, state=p.state, created_at=p.created_at,
                          labels=p.labels, annotations=p.annotations) for p in pods])

    def PodSandboxStatus(self, request: Any, context: Any) -> Any:
        self._count("PodSandboxStatus")
        with self.lock:
            st = self.pods.get(request.pod_sandbox_id)
            gone = request.pod_sandbox_id in self.vanished
        if st is None or gone:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"an error occurred when try to find sandbox {request.pod_sandbox_id!r}")
        return pb.PodSandboxStatusResponse(status=st)

    def ListContainers(self, request: Any, context: Any) -> Any:
        self._count("ListContainers")
        with self.lock:
            return pb.ListContainersResponse(containers=list(self.containers.values()))

    def ContainerStatus(self, request: Any, context: Any) -> Any:
        self._count("ContainerStatus")
        with self.lock:
            self.status_calls[request.container_id] += 1
            st = self.statuses.get(request.container_id)
            gone = request.container_id in self.vanished
        if st is None or gone:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"an error occurred when try to find container {request.container_id!r}")
        return pb.ContainerStatusResponse(status=st)

    def GetContainerEvents(self, request: Any, context: Any) -> Iterator[Any]:
        self._count("GetContainerEvents")
        if self.events == UNIMPLEMENTED:
            context.set_code(grpc.StatusCode.UNIMPLEMENTED)
            context.set_details("unknown method GetContainerEvents for service runtime.v1")
            return
        if self.events == CLOSES:
            return
        if self.events == FAILS:
            yield pb.ContainerEventResponse(container_id="x", created_at=time.time_ns())
            context.set_code(grpc.StatusCode.UNKNOWN)
            context.set_details("the event stream broke")
            return
        q: queue.Queue[Any] = queue.Queue()

        def ended() -> None:
            with self.lock:
                self.streams_ended += 1
            q.put(None)

        context.add_callback(ended)
        with self.lock:
            self.streams.append(q)
        try:
            while context.is_active():
                try:
                    event = q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if event is None:
                    return
                yield event
        finally:
            with self.lock:
                self.streams.remove(q)

    def open_streams(self) -> int:
        with self.lock:
            return len(self.streams)


@dataclass
class Watch:
    """watch() in its thread, and what it called back."""

    discovery: CriDiscovery
    stop: threading.Event = field(default_factory=threading.Event)
    snapshots: list[list[str]] = field(default_factory=list)  # pod names, sorted
    started: list[DiscoveredContainer] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    thread: threading.Thread | None = None

    def run(self) -> Watch:
        self.thread = threading.Thread(
            target=self.discovery.watch,
            args=(lambda found: self.snapshots.append(sorted(d.identity.pod for d in found)),
                  self.started.append, self.stop),
            kwargs={"on_error": self.errors.append, "retry_interval": 0.2}, daemon=True)
        self.thread.start()
        return self

    def started_pods(self) -> list[str]:
        return [d.identity.pod for d in self.started]

    def last(self) -> list[str] | None:
        return self.snapshots[-1] if self.snapshots else None


class Rig:
    """Fake runtimes served one at a time on one socket, and the discoveries
    and watches reading it; all of it ended at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "cri.sock")
        self.server: grpc.Server | None = None
        self.discoveries: list[CriDiscovery] = []
        self.watches: list[Watch] = []

    def serve(self, fake: FakeRuntime) -> FakeRuntime:
        assert self.server is None
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        _services.add_RuntimeServiceServicer_to_server(fake, self.server)
        self.server.add_insecure_port(f"unix://{self.path}")
        self.server.start()
        return fake

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait(WAIT)
            self.server = None

    def discovery(self, **kwargs: Any) -> CriDiscovery:
        d = CriDiscovery(self.path, "node-1", "c1", **kwargs)
        self.discoveries.append(d)
        return d

    def watch(self, **kwargs: Any) -> Watch:
        w = Watch(self.discovery(**kwargs))
        self.watches.append(w)
        return w.run()

    def close(self) -> None:
        for w in self.watches:
            w.stop.set()
        for w in self.watches:
            assert w.thread is not None
            w.thread.join(WAIT)
            assert not w.thread.is_alive(), "watch() did not end when stopped"
            w.errors.clear()  # they hold the failed requests' frames
        for d in self.discoveries:
            d.close()
        self.stop_server()
        gc.collect()  # a channel left open shows here, as a ResourceWarning of this test


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    # capture_logs() swaps structlog's global configuration: a logger cached by
    # an earlier configuration would not be captured.
    structlog.reset_defaults()
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def shop(events: str = UNIMPLEMENTED) -> FakeRuntime:
    """One ready pod with one running container."""
    fake = FakeRuntime(events)
    fake.add_pod("p-web", "web-7d4b9", ip="10.244.1.5", labels={"app": "web"})
    fake.add_container("p-web", "web", "docker.io/shop/web:1.0")
    return fake


# --- snapshot ---------------------------------------------------------------------


def test_snapshot_names_ready_pods_with_a_running_container(rig: Rig) -> None:
    fake = rig.serve(FakeRuntime())
    fake.add_pod("p-api", "api-5c7b4", ip="10.244.1.5", extra_ips=("fd00::5",),
                 labels={"app": "api", "tier": "backend"})
    # Kubelets pass images by id: only ContainerStatus names them.
    fake.add_container("p-api", "api", "docker.io/shop/api:2.1", listed_by_id=1)
    fake.add_container("p-api", "proxy", "mesh/proxy:1.2", listed_by_id=2)
    fake.add_pod("p-node", "node-exporter-x", "monitoring", ip="192.168.0.7", host_network=True)
    fake.add_container("p-node", "exporter", "prom/node-exporter:1.7")
    fake.add_pod("p-new", "new-1", ip="10.244.1.6")  # nothing runs in it yet
    fake.add_container("p-new", "new", "shop/new:1.0", CONTAINER_CREATED, listed_by_id=3)
    fake.add_pod("p-old", "old-1", ip="10.244.1.7", ready=False)  # stopped sandbox
    fake.add_container("p-old", "old", "shop/old:1.0")
    d = rig.discovery()

    found = {c.identity.pod: c for c in d.snapshot()}

    assert sorted(found) == ["api-5c7b4", "node-exporter-x"]
    api = found["api-5c7b4"]
    i = api.identity
    assert (i.namespace, i.pod, i.id, i.host, i.cluster) == (
        "shop", "api-5c7b4", "p-api", "node-1", "c1")
    assert (i.name, i.image) == ("api", "shop/api:2.1")  # the first created, by name
    assert i.images == ("shop/api:2.1", "mesh/proxy:1.2")
    labels = dict(i.labels)
    assert labels["app"] == "api" and labels["tier"] == "backend"
    assert labels["io.kubernetes.pod.namespace"] == "shop"
    assert api.addresses == ("10.244.1.5", "fd00::5")
    assert not api.host_network and api.running
    first = fake.statuses["p-api-api"]
    assert api.started_at == first.started_at / 1e9  # from the container's status
    node = found["node-exporter-x"]
    assert node.host_network and node.addresses == ("192.168.0.7",)
    assert node.identity.namespace == "monitoring"

    # Each container's status was asked once: its image by name, its start.
    # The CREATED container listed by id was resolved too (it has no name otherwise).
    assert fake.status_calls == {"p-api-api": 1, "p-api-proxy": 1, "p-node-exporter": 1,
                                 "p-new-new": 1}
    # The stopped sandbox was not asked about, nor its container.
    assert fake.calls["PodSandboxStatus"] == 3

    # A second snapshot asks nothing again for the same containers and pods.
    again = {c.identity.pod: c for c in d.snapshot()}
    assert again == found
    assert sum(fake.status_calls.values()) == 4
    assert fake.calls["PodSandboxStatus"] == 3
    assert fake.calls["ListPodSandbox"] == fake.calls["ListContainers"] == 2


def test_a_container_that_starts_is_asked_about_again_and_names_its_pod(rig: Rig) -> None:
    fake = rig.serve(FakeRuntime())
    fake.add_pod("p-new", "new-1", ip="10.244.1.6")
    cid = fake.add_container("p-new", "new", "shop/new:1.0", CONTAINER_CREATED, listed_by_id=3)
    d = rig.discovery()
    assert d.snapshot() == []
    with fake.lock:
        fake.containers[cid].state = CONTAINER_RUNNING
        fake.statuses[cid].state = CONTAINER_RUNNING
        fake.statuses[cid].started_at = fake.statuses[cid].created_at + 10**9
    (c,) = d.snapshot()
    assert (c.identity.pod, c.identity.image) == ("new-1", "shop/new:1.0")
    assert c.started_at == fake.statuses[cid].started_at / 1e9
    assert fake.status_calls[cid] == 2  # once per state it was seen in
    d.snapshot()
    assert fake.status_calls[cid] == 2


def test_a_pod_or_container_removed_between_list_and_status_is_skipped(rig: Rig) -> None:
    fake = rig.serve(FakeRuntime())
    fake.add_pod("p-web", "web-1", ip="10.244.1.5")
    fake.add_container("p-web", "web", "shop/web:1.0")
    fake.add_pod("p-gone", "gone-1", ip="10.244.1.6")  # the pod's status: NOT_FOUND
    fake.add_container("p-gone", "gone", "shop/gone:1.0")
    fake.add_pod("p-two", "two-1", ip="10.244.1.7")  # one of its containers: NOT_FOUND
    fake.add_container("p-two", "main", "shop/main:1.0")
    fake.add_container("p-two", "sidecar", "mesh/proxy:1.2", listed_by_id=9)
    fake.add_pod("p-lone", "lone-1", ip="10.244.1.8")  # its only container: NOT_FOUND
    fake.add_container("p-lone", "lone", "shop/lone:1.0")
    fake.vanished |= {"p-gone", "p-two-sidecar", "p-lone-lone"}
    d = rig.discovery()

    found = {c.identity.pod: c for c in d.snapshot()}

    assert sorted(found) == ["two-1", "web-1"]
    assert found["two-1"].identity.image == "shop/main:1.0"
    assert found["two-1"].identity.images == ()  # the sidecar is not known
    assert fake.calls["PodSandboxStatus"] == 3  # p-lone has nothing running: not asked

    # What vanished is no longer listed either: the next snapshot is the same.
    with fake.lock:
        for pod in ("p-gone", "p-lone"):
            del fake.pods[pod]
        for cid in ("p-gone-gone", "p-two-sidecar", "p-lone-lone"):
            del fake.containers[cid]
    assert sorted(c.identity.pod for c in d.snapshot()) == ["two-1", "web-1"]


def test_a_list_larger_than_grpcs_default_limit_is_read(rig: Rig) -> None:
    """The kubelet copies a pod's annotations (up to 256 KiB) into its sandbox,
    and ListPodSandbox returns them all: 20 such pods exceed gRPC's default
    4 MiB limit of a received message."""
    fake = rig.serve(FakeRuntime())
    for n in range(20):
        fake.add_pod(f"p-{n}", f"big-{n}", ip=f"10.244.2.{n + 1}",
                     annotations={"example.com/blob": f"{n}" * 250_000})
        fake.add_container(f"p-{n}", "app", "shop/big:1.0")
    request = pb.ListPodSandboxRequest()
    size = fake.ListPodSandbox(request, None).ByteSize()
    assert 4 * 1024 * 1024 < size < MAX_MESSAGE_BYTES
    fake.calls.clear()
    # The premise: a channel with gRPC's defaults cannot read this answer.
    with (grpc.insecure_channel(f"unix://{rig.path}") as channel,
          pytest.raises(grpc.RpcError) as refused):
        _services.RuntimeServiceStub(channel).ListPodSandbox(request, timeout=WAIT)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    found = rig.discovery(timeout=WAIT).snapshot()

    assert sorted(c.identity.pod for c in found) == sorted(f"big-{n}" for n in range(20))


# --- watch: the event stream --------------------------------------------------------


def test_without_container_events_the_runtime_is_polled(rig: Rig) -> None:
    """containerd 1.6 answers GetContainerEvents with UNIMPLEMENTED."""
    fake = rig.serve(shop(UNIMPLEMENTED))
    with capture_logs() as logs:
        w = rig.watch()
        assert poll(lambda: w.last() == ["web-7d4b9"]), w.snapshots
        assert poll(lambda: [e for e in logs if e["event"] == NO_EVENTS_LOG])
        fake.add_pod("p-api", "api-5c7b4", ip="10.244.1.6")
        fake.add_container("p-api", "api", "shop/api:2.1")
        assert poll(lambda: w.started_pods() == ["api-5c7b4"]), w.started_pods()
        assert poll(lambda: w.last() == ["api-5c7b4", "web-7d4b9"]), w.snapshots
        # A few more polls: the stream is not asked for again, nothing more is logged.
        lists = fake.calls["ListPodSandbox"]
        assert poll(lambda: fake.calls["ListPodSandbox"] >= lists + 5)
    assert w.discovery.events is False
    (no_events,) = [e for e in logs if e["event"] == NO_EVENTS_LOG]
    assert no_events["answer"].startswith("UNIMPLEMENTED")
    assert fake.calls["GetContainerEvents"] == 1
    assert w.errors == [] and w.discovery.engine.up
    assert w.discovery.runtime_version == "fake 1.0"
    (started,) = w.started
    assert (started.identity.image, started.addresses) == ("shop/api:2.1", ("10.244.1.6",))


def test_a_stream_that_ends_at_once_means_no_events_and_is_not_reopened(rig: Rig) -> None:
    """CRI-O with enable_pod_events off ends the stream at once, with OK."""
    fake = rig.serve(shop(CLOSES))
    w = rig.watch()
    assert poll(lambda: w.discovery.events is False)
    lists = fake.calls["ListPodSandbox"]
    # Two seconds of polling (two EVENTS_RESYNC_INTERVALs): the stream stays closed.
    assert poll(lambda: fake.calls["ListPodSandbox"] >= lists + 5)
    time.sleep(2 * EVENTS_RESYNC_INTERVAL)
    assert fake.calls["GetContainerEvents"] == 1
    assert w.discovery.events is False
    fake.add_pod("p-api", "api-5c7b4", ip="10.244.1.6")
    fake.add_container("p-api", "api", "shop/api:2.1")
    assert poll(lambda: w.started_pods() == ["api-5c7b4"])  # polled


def test_an_open_event_stream_reports_a_new_pod_at_once(rig: Rig) -> None:
    """With a poll interval longer than the test, only the event can make the
    new pod known."""
    fake = rig.serve(shop(HOLDS))
    w = rig.watch(poll_interval=60.0)
    assert poll(lambda: w.last() == ["web-7d4b9"])
    assert poll(lambda: fake.open_streams() == 1)
    assert w.discovery.events is None  # no event yet: not known
    fake.add_pod("p-api", "api-5c7b4", ip="10.244.1.6", labels={"app": "api"})
    fake.add_container("p-api", "api", "shop/api:2.1")
    assert poll(lambda: w.started_pods() == ["api-5c7b4"]), w.started_pods()
    assert poll(lambda: w.last() == ["api-5c7b4", "web-7d4b9"]), w.snapshots
    assert w.discovery.events is True
    assert fake.calls["GetContainerEvents"] == 1  # the one stream is still open


def test_a_failing_event_stream_is_reopened_at_most_once_per_resync_interval(
    rig: Rig
) -> None:
    fake = rig.serve(shop(FAILS))
    w = rig.watch()
    assert poll(lambda: fake.calls["GetContainerEvents"] >= 2), "not reopened"
    assert w.discovery.events is True
    opened = fake.calls["GetContainerEvents"]
    time.sleep(3.0)
    # About one per EVENTS_RESYNC_INTERVAL (1 s): 3, with room for a late count.
    assert fake.calls["GetContainerEvents"] - opened <= 5, fake.calls
    fake.add_pod("p-api", "api-5c7b4", ip="10.244.1.6")
    fake.add_container("p-api", "api", "shop/api:2.1")
    assert poll(lambda: w.started_pods() == ["api-5c7b4"])
    assert w.discovery.engine.up and w.errors == []


# --- watch: outages and stop ---------------------------------------------------------


@pytest.mark.parametrize("events", [UNIMPLEMENTED, HOLDS])
def test_a_runtime_that_goes_away_is_marked_down_and_read_again_when_back(
    rig: Rig, events: str
) -> None:
    fake = rig.serve(shop(events))
    w = rig.watch()
    d = w.discovery
    assert poll(lambda: w.last() == ["web-7d4b9"] and d.engine.up)
    if events == HOLDS:
        assert poll(lambda: fake.open_streams() == 1)

    rig.stop_server()

    assert poll(lambda: w.errors), "on_error was not called"
    assert poll(lambda: not d.engine.up)
    assert d.engine.reason == UNREACHABLE and d.engine.outages == 1
    assert all(isinstance(e, grpc.RpcError) for e in w.errors)
    assert poll(lambda: len(w.errors) >= 3), "not retried"  # and still down
    assert not d.engine.up and d.engine.outages == 1

    # Back, on the same socket, with a pod more.
    back = shop(events)
    back.add_pod("p-api", "api-5c7b4", ip="10.244.1.6")
    back.add_container("p-api", "api", "shop/api:2.1")
    seen = len(w.snapshots)
    rig.serve(back)

    assert poll(lambda: d.engine.up), "not reconnected"
    assert poll(lambda: len(w.snapshots) > seen)
    assert w.snapshots[seen] == ["api-5c7b4", "web-7d4b9"]  # the first after the outage
    assert d.engine.outages == 1
    if events == HOLDS:
        # The stream ended with UNAVAILABLE before it had sent an event: that
        # says nothing of the runtime's events, and the new runtime's are followed.
        assert poll(lambda: back.open_streams() == 1), (
            f"no event stream after the outage (events={d.events})")
        assert d.events is None
    else:
        assert back.calls["GetContainerEvents"] == 0  # no events is known: polled


@pytest.mark.parametrize("events", [UNIMPLEMENTED, HOLDS])
def test_stop_ends_watch_and_its_event_stream(rig: Rig, events: str) -> None:
    fake = rig.serve(shop(events))
    # A poll interval longer than the test: stop must not wait for it.
    w = rig.watch(poll_interval=60.0)
    assert poll(lambda: w.last() == ["web-7d4b9"])
    if events == HOLDS:
        assert poll(lambda: fake.open_streams() == 1)
    else:
        assert poll(lambda: w.discovery.events is False)

    w.stop.set()

    assert w.thread is not None
    w.thread.join(WAIT)
    assert not w.thread.is_alive(), "watch() did not end when stopped"
    if events == HOLDS:
        assert poll(lambda: fake.streams_ended == 1 and fake.open_streams() == 0), (
            "the event stream was not cancelled")
