"""containerd lab hosts: Kubernetes-like nodes without a kubelet.

A containerd host runs Debian's ``containerd`` inside the host's network
namespace, with everything of its own under the lab's directories::

    /run/cnnf-lab/L/<host>/containerd.sock      the CRI (and containerd's API)
    /run/cnnf-lab/L/<host>/containerd.toml      its config (below)
    /run/cnnf-lab/L/<host>/containerd/          state: task bundles, pod netns, shm
    /run/cnnf-lab/L/<host>/cni/                 the CNI conflist (bridge + host-local)
    /run/cnnf-lab/L/<host>/cni-ipam/            host-local's address leases
    /run/cnnf-lab/L/<host>/pods/                container logs, as a kubelet keeps them
    /var/lib/cnnf-lab/L/<host>/containerd/      root: content store, overlay snapshots

Pods get their address from the host's container subnet (the lab router routes
it to the host, as a CNI's routed pod CIDR) on the bridge ``cnnfpod0``. Their
network namespaces are kept under containerd's state directory (not in
/run/netns), and their cgroups under ``/cnnf-lab/L/<host>/`` in every
hierarchy, so ``down`` finds everything of a lab by name, also after a crash.

Pods are created through the CRI as a kubelet creates them (:class:`Node`):
``RunPodSandbox`` with the pod's metadata, labels, DNS, log directory and
cgroup parent, then ``CreateContainer`` (the image by its ID, as a kubelet
passes it) and ``StartContainer`` for each container; removal is
``StopPodSandbox`` then ``RemovePodSandbox``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnf.lab import system
from cnnf.lab.image import PAUSE_IMAGE, qualified
from cnnf.lab.plan import HostPlan
from cnnf.lab.system import LabError, run
from cnnf.lab.topology import Container

CNI_BIN_DIR = "/usr/lib/cni"
CNI_PLUGINS = ("bridge", "host-local", "loopback")
POD_BRIDGE = "cnnfpod0"
CGROUP_ROOT = "/cnnf-lab"
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for the CRI's images and containers
# Plugins a lab node never uses; skipping them makes containerd start sooner.
DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
)
STATES = {0: "created", 1: "running", 2: "exited", 3: "unknown"}  # CRI ContainerState


def preflight() -> None:
    """Fail early, and clearly, when a tool a containerd host needs is missing."""
    missing = [t for t in ("containerd", "ctr") if shutil.which(t) is None]
    missing_pkgs = ["containerd"] if missing else []
    if any(not os.access(f"{CNI_BIN_DIR}/{p}", os.X_OK) for p in CNI_PLUGINS):
        missing_pkgs.append("containernetworking-plugins")
    if missing_pkgs:
        raise LabError(
            "containerd hosts need Debian packages that are missing: "
            f"{', '.join(missing_pkgs)}; install them with "
            f"`apt-get install {' '.join(missing_pkgs)}`"
        )


def cgroup_parent(lab: str, host: str, uid: str) -> str:
    """A pod's cgroup parent (a kubelet's would be /kubepods/.../pod<uid>)."""
    return f"{CGROUP_ROOT}/{lab}/{host}/pod{uid}"


def _toml(value: object) -> str:
    # The config holds strings, booleans and lists of strings: JSON's notation
    # of those is TOML's too.
    return json.dumps(value)


@dataclass(frozen=True)
class Paths:
    """Where one containerd host keeps its files."""

    h: HostPlan

    @property
    def config(self) -> str:
        return f"{self.h.run_dir}/containerd.toml"

    @property
    def state(self) -> str:
        return f"{self.h.run_dir}/containerd"

    @property
    def cni_conf_dir(self) -> str:
        return f"{self.h.run_dir}/cni"

    @property
    def ipam_dir(self) -> str:
        return f"{self.h.run_dir}/cni-ipam"

    @property
    def pod_logs(self) -> str:
        return f"{self.h.run_dir}/pods"


def config_toml(h: HostPlan, sandbox_image: str = PAUSE_IMAGE) -> str:
    """containerd's config for host ``h`` (version 2, the CRI plugin)."""
    p = Paths(h)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f"root = {_toml(h.containerd_root)}",
        f"state = {_toml(p.state)}",
        f"disabled_plugins = {_toml(list(DISABLED_PLUGINS))}",
        "",
        "[grpc]",
        f"  address = {_toml(h.cri_sock)}",
        "[ttrpc]",
        f"  address = {_toml(h.cri_sock + '.ttrpc')}",
        "[debug]",
        f"  address = {_toml(h.run_dir + '/containerd-debug.sock')}",
        "",
        f"[{cri}]",
        f"  sandbox_image = {_toml(sandbox_image)}",
        # A negative oom_score_adj is refused on these machines: without this,
        # RunPodSandbox fails with "can't get final child's PID from pipe: EOF".
        "  restrict_oom_score_adj = true",
        # Pod network namespaces under the state directory, not in /run/netns.
        "  netns_mounts_under_state_dir = true",
        "  enable_selinux = false",
        f"[{cri}.cni]",
        f"  bin_dir = {_toml(CNI_BIN_DIR)}",
        f"  conf_dir = {_toml(p.cni_conf_dir)}",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        "",
    ]
    return "\n".join(lines)


def cni_conflist(h: HostPlan) -> dict[str, Any]:
    """The pod network: a bridge with the host's container subnet, routed (no NAT),
    addresses from host-local (leases kept under the lab's directory)."""
    return {
        "cniVersion": "1.0.0",
        "name": h.network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": POD_BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # routed: the far end sees the pod's own address
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": Paths(h).ipam_dir,
                    "ranges": [[{"subnet": h.subnet, "gateway": h.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


def prepare(h: HostPlan) -> list[str]:
    """Write host ``h``'s files; the command that starts its containerd."""
    p = Paths(h)
    for d in (h.containerd_root, p.state, p.cni_conf_dir, p.ipam_dir, p.pod_logs):
        os.makedirs(d, exist_ok=True)
    Path(p.config).write_text(config_toml(h))
    Path(p.cni_conf_dir, "10-cnnf-lab.conflist").write_text(
        json.dumps(cni_conflist(h), indent=2) + "\n"
    )
    return ["containerd", "--config", p.config]


def ctr(h: HostPlan, *args: str, timeout: float = 60) -> str:
    """containerd's own client, in the CRI's namespace of host ``h``'s containerd."""
    return run(["ctr", "--address", h.cri_sock, "--namespace", K8S_NAMESPACE, *args],
               timeout=timeout).stdout  # fmt: skip


def import_images(h: HostPlan, archive: Path) -> None:
    ctr(h, "images", "import", str(archive))


@dataclass
class PodRecord:
    """What the lab keeps of a pod it started (in its state file)."""

    name: str
    host: str
    namespace: str
    uid: str
    id: str = ""
    address: str = ""
    pid: int = 0
    netns: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    containers: list[str] = field(default_factory=list)


class Node:
    """The CRI of one containerd host, used as a kubelet uses it."""

    def __init__(self, lab: str, h: HostPlan, dns_server: str | None = None) -> None:
        from cnnf.cri import CriClient

        self.lab = lab
        self.h = h
        self.dns_server = dns_server
        self.client = CriClient(h.cri_sock, timeout=60)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready(self) -> bool:
        import grpc

        try:
            self.client.version(timeout=1)
        except grpc.RpcError:
            return False
        return True

    def sandbox_config(self, pod: PodRecord) -> Any:
        from cnnf.cri import NAMESPACE_CONTAINER, pod_config

        cfg = pod_config(
            pod.name, pod.namespace, pod.uid, pod.labels,
            log_directory=f"{Paths(self.h).pod_logs}/{pod.namespace}_{pod.name}_{pod.uid}",
        )  # fmt: skip
        cfg.linux.cgroup_parent = cgroup_parent(self.lab, self.h.name, pod.uid)
        # A kubelet's defaults: the pod's network and IPC, each container's own PIDs.
        cfg.linux.security_context.namespace_options.pid = NAMESPACE_CONTAINER
        if self.dns_server:
            cfg.dns_config.servers.append(self.dns_server)
        return cfg

    def _next_address(self, address: str) -> None:
        """Make host-local hand out ``address`` next: its allocator goes round the
        range from the address it reserved last (so a freed address comes back
        only after the whole range; a test of address reuse wants it now)."""
        subnet = ipaddress.IPv4Network(self.h.subnet)
        ip = ipaddress.IPv4Address(address)
        if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address,
                                      ipaddress.IPv4Address(self.h.gateway)):  # fmt: skip
            raise LabError(f"{address} is not a pod address of {self.h.subnet} on {self.h.name}")
        leases = Path(Paths(self.h).ipam_dir, self.h.network)
        leases.mkdir(parents=True, exist_ok=True)
        with open(leases / "lock", "a") as lock:  # host-local's own lock
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (leases / address).exists():
                raise LabError(f"{address} is in use on {self.h.name}")
            (leases / "last_reserved_ip.0").write_text(str(ip - 1))

    def run_pod(
        self, name: str, namespace: str, labels: dict[str, str],
        containers: Sequence[Container], image_ids: dict[str, str], *, address: str | None = None,
    ) -> PodRecord:  # fmt: skip
        """Start a pod with ``containers`` (each serving its ports with busybox
        httpd), at ``address`` if given (it must be free)."""
        from cnnf.cri import NAMESPACE_CONTAINER, pb

        pod = PodRecord(name=name, host=self.h.name, namespace=namespace,
                        uid=str(uuid.uuid4()), labels=dict(labels))  # fmt: skip
        sandbox = self.sandbox_config(pod)
        if address:
            self._next_address(address)
        pod.id = self.client.run_pod(sandbox)
        try:
            for c in containers:
                image = qualified(c.image)
                services = "".join(f"httpd -p {p} -h /www; " for p in c.ports)
                config = pb.ContainerConfig(
                    metadata=pb.ContainerMetadata(name=c.name, attempt=0),
                    # A kubelet names the image by the ID it resolved the name to.
                    image=pb.ImageSpec(image=image_ids.get(image, image),
                                       user_specified_image=c.image),
                    command=["sh", "-c", f"{services}exec sleep 2147483647"],
                    labels={
                        "io.kubernetes.container.name": c.name,
                        "io.kubernetes.pod.name": name,
                        "io.kubernetes.pod.namespace": namespace,
                        "io.kubernetes.pod.uid": pod.uid,
                    },
                    annotations={"io.kubernetes.container.restartCount": "0"},
                    log_path=f"{c.name}/0.log",
                )
                config.linux.security_context.namespace_options.pid = NAMESPACE_CONTAINER
                cid = self.client.create_container(pod.id, config, sandbox)
                self.client.start_container(cid)
                pod.containers.append(c.name)
            status = self.pod_status(pod.id)
            if address and status["address"] != address:
                raise LabError(f"pod {name!r} got {status['address']}, not {address}")
        except BaseException:
            with contextlib.suppress(Exception):
                self.remove_pod(pod.id)
            raise
        pod.address = status["address"]
        pod.pid = status["pid"]
        pod.netns = status["netns"]
        self._announce(pod)
        return pod

    def _announce(self, pod: PodRecord) -> None:
        """A gratuitous ARP from the new pod, as newer CNI bridge plugins send
        (Debian's 1.1 does not): the node and the pods beside it may still hold
        the MAC address of a removed pod that had this address, and would send it
        there for up to a minute."""
        if pod.netns and pod.address:
            run(["nsenter", f"--net={pod.netns}", system.BUSYBOX, "arping", "-U", "-c", "1",
                 "-w", "1", "-I", "eth0", pod.address], check=False, timeout=10)  # fmt: skip

    def pod_status(self, pod_id: str) -> dict[str, Any]:
        """The pod's address, sandbox pid and network namespace file."""
        from cnnf.cri import pb

        resp = self.client.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
            timeout=self.client.timeout,
        )
        info = json.loads(resp.info.get("info", "{}"))
        netns = ""
        for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                netns = ns.get("path", "")
        return {"address": resp.status.network.ip, "pid": int(info.get("pid", 0)),
                "netns": netns, "state": resp.status.state}  # fmt: skip

    def containers(self, pod_id: str = "") -> list[Any]:
        return self.client.list_containers(pod_id)

    def container_pid(self, container_id: str) -> int:
        from cnnf.cri import pb

        resp = self.client.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=container_id, verbose=True),
            timeout=self.client.timeout,
        )
        return int(json.loads(resp.info.get("info", "{}")).get("pid", 0))

    def remove_pod(self, pod_id: str, address: str = "") -> None:
        """As a kubelet deletes a pod: stop its sandbox (its containers with it),
        remove it. The node forgets the pod's MAC address (a new pod may get its
        IP address)."""
        self.client.stop_pod(pod_id)
        self.client.remove_pod(pod_id)
        if address:
            run(["ip", "neigh", "del", address, "dev", POD_BRIDGE], netns=self.h.netns,
                check=False)  # fmt: skip

    def remove_all_pods(self) -> int:
        pods = self.client.list_pods()
        if pods:
            with ThreadPoolExecutor(max_workers=min(4, len(pods))) as pool:
                list(pool.map(lambda p: self.remove_pod(p.id), pods))
        return len(pods)


def remove_pods(lab: str, h: HostPlan) -> int:
    """Remove every pod of a host's containerd, if it still answers (``down``);
    how many there were. A containerd that is gone leaves its pods to the
    process, mount and cgroup sweep."""
    if not system.socket_ready(h.cri_sock):
        return 0
    try:
        with Node(lab, h) as node:
            node.client.timeout = 20
            return node.remove_all_pods()
    except Exception:  # a half-dead containerd: down's sweep takes its pods
        return 0


def cgroup_dirs(lab: str) -> list[str]:
    """The lab's pod cgroup directories in every hierarchy, deepest first."""
    found: list[str] = []
    for point in system.cgroup_mounts():
        top = f"{point}{CGROUP_ROOT}/{lab}"
        for root, dirs, _ in os.walk(top):
            found += [os.path.join(root, d) for d in dirs]
        if os.path.isdir(top):
            found.append(top)
    return sorted(found, key=lambda d: d.count("/"), reverse=True)


def remove_cgroups(lab: str) -> int:
    """rmdir the lab's (emptied) pod cgroups; how many were removed."""
    n = 0
    for d in cgroup_dirs(lab):
        with contextlib.suppress(OSError):
            os.rmdir(d)
            n += 1
    for point in system.cgroup_mounts():
        with contextlib.suppress(OSError):  # still used by another lab: kept
            os.rmdir(f"{point}{CGROUP_ROOT}")
    return n


def cgroup_pids(lab: str) -> list[int]:
    """Processes in the lab's pod cgroups (a pod's processes outlive a killed shim)."""
    pids: set[int] = set()
    for d in cgroup_dirs(lab):
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in Path(d, "cgroup.procs").read_text().split()}
    return sorted(pids)
