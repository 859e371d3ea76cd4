"""CRI discovery's pure parts: a pod as one identity, the choice of backend.
The real runtime (containerd through its CRI socket) is in
tests/defender/lab/test_defender_kube.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from cnnf.cri import CONTAINER_CREATED, CONTAINER_EXITED, CONTAINER_RUNNING, pb, pod_config
from cnnf.defender.config import ConfigError, DefenderConfig
from cnnf.defender.discovery.cri import ContainerInfo, PodInfo, _is_image_id, pod_identity
from cnnf.defender.discovery.runtime import choose


def status(*, ip: str = "10.244.1.5", extra: tuple[str, ...] = (), host_network: bool = False,
           annotations: dict[str, str] | None = None) -> PodInfo:
    """A PodSandboxStatus as the runtime sends it, parsed."""
    cfg = pod_config("api-5c7b4", "shop", "uid-1", {"app": "api", "tier": "backend"},
                     annotations=annotations, host_network=host_network)
    st = pb.PodSandboxStatus(id="pod-1", metadata=cfg.metadata, labels=cfg.labels,
                             annotations=cfg.annotations)
    st.network.ip = ip
    st.network.additional_ips.extend(pb.PodIP(ip=x) for x in extra)
    st.linux.namespaces.options.network = cfg.linux.security_context.namespace_options.network
    return PodInfo.of(pb.PodSandboxStatus.FromString(st.SerializeToString()))


def container(name: str, image: str, created: float, state: int = CONTAINER_RUNNING,
              started: float = 0.0) -> ContainerInfo:
    return ContainerInfo(id=f"c-{name}", name=name, image=image, state=state,
                         created_at=created, started_at=started)


def test_a_pod_is_one_identity_named_by_namespace_pod_labels_and_images() -> None:
    pod = status(extra=("fd00::5",))
    d = pod_identity(pod, [container("proxy", "mesh/proxy:1.2", 2.0, started=2.1),
                           container("api", "shop/api:2.1", 1.0, started=1.5)], "node-1", "c1")
    assert d is not None
    i = d.identity
    assert (i.namespace, i.pod, i.name, i.image, i.host, i.cluster, i.id) == (
        "shop", "api-5c7b4", "api", "shop/api:2.1", "node-1", "c1", "pod-1")
    assert i.images == ("shop/api:2.1", "mesh/proxy:1.2")  # the main image first
    assert dict(i.labels)["app"] == "api"
    assert dict(i.labels)["io.kubernetes.pod.namespace"] == "shop"  # as the kubelet adds it
    assert d.addresses == ("10.244.1.5", "fd00::5")
    assert not d.host_network
    assert d.started_at == 1.5  # the first container that runs


def test_the_default_container_annotation_names_the_main_container() -> None:
    pod = status(annotations={"kubectl.kubernetes.io/default-container": "api"})
    d = pod_identity(pod, [container("init-proxy", "mesh/proxy:1.2", 1.0),
                           container("api", "shop/api:2.1", 2.0)], "node-1")
    assert d is not None and (d.identity.name, d.identity.image) == ("api", "shop/api:2.1")
    assert d.identity.images == ("shop/api:2.1", "mesh/proxy:1.2")


def test_one_image_is_the_plain_identity() -> None:
    d = pod_identity(status(), [container("api", "shop/api:2.1", 1.0)], "node-1")
    assert d is not None and d.identity.images == () and d.identity.all_images == (
        "shop/api:2.1",)


def test_a_pod_with_no_running_container_is_not_named_yet() -> None:
    """Nothing in it can connect yet, and its images may not all be known: its
    address stays a not yet named one (held back by the datapath)."""
    assert pod_identity(status(), [], "node-1") is None
    assert pod_identity(status(), [container("api", "shop/api:2.1", 1.0, CONTAINER_CREATED)],
                        "node-1") is None
    assert pod_identity(status(), [container("api", "shop/api:2.1", 1.0, CONTAINER_EXITED)],
                        "node-1") is None


def test_only_running_containers_make_the_pod() -> None:
    """An exited init container, or a container that never starts, adds no
    image (a pod creator could otherwise match an allow rule with an image
    that never runs) and is never the main container."""
    d = pod_identity(status(annotations={"kubectl.kubernetes.io/default-container": "init"}),
                     [container("init", "shop/payments:1.4", 0.5, CONTAINER_EXITED),
                      container("api", "shop/api:2.1", 1.0),
                      container("never", "shop/db:13", 2.0, CONTAINER_CREATED)], "node-1")
    assert d is not None
    assert (d.identity.name, d.identity.image, d.identity.images) == ("api", "shop/api:2.1", ())


def test_a_host_network_pod_is_the_host() -> None:
    d = pod_identity(status(host_network=True, ip="192.0.2.10"),
                     [container("defender", "cnnf:0.1.0", 1.0)], "node-1")
    assert d is not None and d.host_network


@pytest.mark.parametrize(("ref", "is_id"), [
    ("sha256:" + "a" * 64, True),
    ("a" * 64, True),
    ("shop/api:2.1", False),
    ("docker.io/shop/api@sha256:" + "b" * 64, False),
])
def test_image_ids_are_not_names(ref: str, is_id: bool) -> None:
    assert _is_image_id(ref) is is_id


@contextmanager
def listening(path: Path) -> Iterator[None]:
    """A unix socket that accepts connections and speaks no protocol."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen(8)
        yield


def test_choose_takes_what_it_is_told() -> None:
    assert choose("cri", "/x/c.sock") == ("cri", "unix:///x/c.sock", "given")
    assert choose("auto", "unix:///x/c.sock") == ("cri", "unix:///x/c.sock", "given")
    assert choose("docker", None, "unix:///x/d.sock")[:2] == ("docker", "unix:///x/d.sock")
    assert choose("auto", None, "unix:///x/d.sock")[:2] == ("docker", "unix:///x/d.sock")
    with pytest.raises(ValueError, match="--runtime 'k8s': expected one of auto, docker, cri"):
        choose("k8s")


def test_auto_probes_in_order_and_skips_what_does_not_answer_the_cri(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    cri = (str(tmp_path / "containerd.sock"), str(tmp_path / "crio.sock"))
    dockers = (str(tmp_path / "docker.sock"), str(tmp_path / "podman.sock"))
    kw = {"cri_sockets": cri, "docker_sockets": dockers}
    assert choose("auto", **kw) == ("docker", f"unix://{dockers[0]}",  # type: ignore[arg-type]
                                    "default: nothing found")
    assert choose("cri", **kw) == ("cri", f"unix://{cri[0]}", "default")  # type: ignore[arg-type]
    # Nothing answers yet (the runtime is starting): on a Docker host containerd's
    # socket exists too, so an existing Docker socket wins.
    Path(cri[0]).touch()
    assert choose("auto", **kw) == ("cri", f"unix://{cri[0]}",  # type: ignore[arg-type]
                                    "exists, not answering yet")
    Path(dockers[0]).touch()
    assert choose("auto", **kw) == ("docker", f"unix://{dockers[0]}",  # type: ignore[arg-type]
                                    "exists, not answering yet")
    Path(cri[0]).unlink()
    Path(dockers[0]).unlink()
    with listening(Path(dockers[1])):
        assert choose("auto", **kw) == (  # type: ignore[arg-type]
            "docker", f"unix://{dockers[1]}", "answered")
        # A containerd socket that does not answer the CRI (Docker's own
        # containerd has its CRI plugin disabled) is passed over.
        with listening(Path(cri[0])):
            assert choose("auto", **kw)[:2] == (  # type: ignore[arg-type]
                "docker", f"unix://{dockers[1]}")


@pytest.mark.parametrize(("kw", "message"), [
    ({"runtime": "k8s"}, "--runtime 'k8s': expected auto, docker or cri"),
    ({"runtime": "docker", "cri_socket": "/run/c.sock"}, "--cri-socket is for --runtime cri"),
    ({"runtime": "cri", "docker_host": "unix:///d.sock"}, "--docker-host is for --runtime docker"),
    ({"cri_socket": "/run/c.sock", "docker_host": "unix:///d.sock"}, "not both"),
    ({"cri_socket": "tcp://1.2.3.4:1"}, "--cri-socket 'tcp://1.2.3.4:1': expected a unix socket"),
    ({"container_nets": ("10.244.1.0/33",)}, "--container-net '10.244.1.0/33': expected a CIDR"),
    ({"container_nets": ("fd00:10:244::/64",)}, "--container-net 'fd00:10:244::/64': only IPv4"),
    ({"container_nets": ("10.244.0.0/15",)}, "--container-net '10.244.0.0/15': only IPv4"),
])
def test_bad_runtime_options_are_refused(tmp_path: Path, kw: dict[str, object],
                                         message: str) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("{}")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        DefenderConfig(policy_file=policy, **kw)  # type: ignore[arg-type]


def test_a_missing_socket_is_named_with_a_hint(tmp_path: Path) -> None:
    from cnnf.defender.discovery.cri import CriDiscovery

    d = CriDiscovery(f"unix://{tmp_path}/node1/containerd.sock", "node-1", timeout=1.0)
    try:
        with pytest.raises(grpc.RpcError) as info:
            d.snapshot()
        text = d.describe(info.value)
        assert text.startswith("UNAVAILABLE: ")
        assert f"no socket {tmp_path}/node1/containerd.sock" in text and "--cri-socket" in text
        assert d.outage_reason(info.value) == "unreachable"
    finally:
        d.close()
