"""Bring a lab up and down, and act inside it.

Layout of lab ``L`` (see :mod:`cnnf.lab.plan` for names and addresses)::

    cnnf-L-router    bridge cnnfbr0 (underlay, router address .1) + one link per
                     external network; routes to every host's container subnet
    cnnf-L-<host>    link cnnf-ul0 to the bridge; its own Podman engine
                     (storage /var/lib/cnnf-lab/L/<host>, runtime /run/cnnf-lab/L/<host>),
                     a Podman bridge network, the Docker API on docker.sock;
                     or, on a host with ``runtime: containerd``, its own containerd
                     with the CRI on containerd.sock and pods on a CNI bridge
                     (see :mod:`cnnf.lab.containerd`)
    cnnf-L-x-<net>   an external network's servers (busybox httpd) and the lab DNS
                     server (dnsmasq)

Nothing is created in the root namespace: links are made inside the lab's
namespaces, and no lab namespace has a route that leads out of the lab.
The state file ``/run/cnnf-lab/L/state.json`` records the topology, the lab's
number and what was started; ``down`` also finds leftovers by name, so it
cleans up after a crashed run.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cnnf.lab import containerd, system
from cnnf.lab.image import oci_archive, qualified, rootfs_tarball
from cnnf.lab.plan import (
    BRIDGE,
    MAX_LABS,
    STATE_ROOT,
    STORAGE_ROOT,
    UPLINK,
    HostPlan,
    Plan,
    make_plan,
    plan_conflicts,
    prefix,
)
from cnnf.lab.system import LabError, run
from cnnf.lab.topology import (
    Container,
    Topology,
    check_lab_name,
    load_topology,
    parse_topology,
)
from cnnf.model.identity import K8S_CONTAINER_LABEL, K8S_NAMESPACE_LABEL, K8S_POD_LABEL

Progress = Callable[[str], None]
PROBE = str(Path(__file__).with_name("probe.py"))
LAB_LABEL = "cnnf.lab"
POD_FIELDS = ("name", "namespace", "uid", "id", "address", "labels", "containers")


def _quiet(_: str) -> None:
    pass


@dataclass
class ConnectResult:
    """The outcome of one TCP connect made from inside a container."""

    source: str
    destination: str
    port: int
    outcome: str  # connected | refused | reset | timeout | unreachable | dns-error | error
    ms: float
    address: str = ""
    source_address: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "connected"

    def __str__(self) -> str:
        where = f"{self.destination}:{self.port}"
        if self.address and self.address != self.destination:
            where += f" ({self.address})"
        extra = f" - {self.error}" if self.error and self.outcome != "timeout" else ""
        outcome = "timed out" if self.outcome == "timeout" else self.outcome
        return f"{self.source} -> {where}: {outcome} in {self.ms:.1f} ms{extra}"


@dataclass
class ContainerInfo:
    name: str
    host: str
    id: str
    pid: int
    address: str
    image: str
    labels: dict[str, str] = field(default_factory=dict)
    sandbox: str = ""
    pod: str = ""  # containerd hosts: the pod's name and sandbox id
    pod_id: str = ""


def podman_args_for(lab: str, host: str) -> list[str]:
    """Podman's global options for ``host`` of ``lab`` (deterministic from names)."""
    return host_paths(lab, host).podman_args()


def host_paths(lab: str, host: str) -> HostPlan:
    """The directories and sockets of ``host`` of ``lab`` (deterministic from names;
    no addresses: for ``down``, which may have no state file to read them from)."""
    return HostPlan(
        name=host,
        netns="",
        underlay_ip="",
        subnet="",
        gateway="",
        router_link="",
        network="",
        storage=f"{STORAGE_ROOT}/{lab}/{host}/storage",
        runroot=f"{STATE_ROOT}/{lab}/{host}/runroot",
        tmpdir=f"{STATE_ROOT}/{lab}/{host}/tmp",
        network_dir=f"{STORAGE_ROOT}/{lab}/{host}/networks",
        docker_sock="",
        run_dir=f"{STATE_ROOT}/{lab}/{host}",
        containerd_root=f"{STORAGE_ROOT}/{lab}/{host}/containerd",
    )


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    os.makedirs(STATE_ROOT, exist_ok=True)
    with open(f"{STATE_ROOT}/.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def running_labs() -> dict[str, int]:
    """Names of labs with a state file, and their numbers."""
    out: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(STATE_ROOT)):
            with contextlib.suppress(OSError, ValueError, KeyError):
                out[name] = int(
                    json.loads(Path(f"{STATE_ROOT}/{name}/state.json").read_text())["index"]
                )
    return out


class Lab:
    """A lab that is up: its topology, address plan and state."""

    def __init__(self, name: str, topology: Topology, plan: Plan, state: dict[str, Any]) -> None:
        self.name = name
        self.topology = topology
        self.plan = plan
        self.state = state
        self._lock = threading.RLock()  # containerd hosts are set up in parallel

    # ---- opening, up, down -------------------------------------------------

    @classmethod
    def open(cls, name: str = "shop") -> Lab:
        """The running lab ``name`` (LabError if it is not up)."""
        try:
            check_lab_name(name)
        except ValueError as exc:
            raise LabError(str(exc)) from None
        path = Path(f"{STATE_ROOT}/{name}/state.json")
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(
                f"lab {name!r} is not up (no {path}); start it with `cnnf lab up`"
            ) from None
        topology = parse_topology(state["topology"], source=str(path))
        return cls(name, topology, make_plan(topology, name, int(state["index"])), state)

    @classmethod
    def up(
        cls,
        topology: Topology | str | Path,
        name: str | None = None,
        progress: Progress = _quiet,
    ) -> Lab:
        """Create the lab; on any failure remove what was created and raise."""
        system.preflight()
        topo = topology if isinstance(topology, Topology) else load_topology(topology)
        if any(h.runtime == "containerd" for h in topo.hosts):
            containerd.preflight()
        name = name or topo.name
        try:
            check_lab_name(name)
        except ValueError as exc:
            raise LabError(str(exc)) from None
        t0 = time.monotonic()

        def step(msg: str) -> None:
            progress(f"[{time.monotonic() - t0:5.1f}s] {msg}")

        leftovers = cls.down(name, progress=_quiet)
        if leftovers:
            step(f"removed leftovers of an earlier run: {', '.join(leftovers)}")
        with _registry_lock():
            used = set(running_labs().values())
            index = next((i for i in range(MAX_LABS) if i not in used), None)
            if index is None:
                raise LabError(f"too many labs running (at most {MAX_LABS})")
            plan = make_plan(topo, name, index)
            conflicts = plan_conflicts(plan)
            if conflicts:
                raise LabError("address plan conflicts: " + "; ".join(conflicts))
            state: dict[str, Any] = {
                "lab": name,
                "index": index,
                "status": "starting",
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "topology": topo.model_dump(mode="json", by_alias=True),
                "pids": {},
                "containers": {},
            }
            lab = cls(name, topo, plan, state)
            os.makedirs(plan.state_dir, exist_ok=True)
            lab._save()
        try:
            lab._build(step)
        except BaseException as exc:
            with contextlib.suppress(Exception):  # e.g. the terminal went away
                step(f"failed ({str(exc) or type(exc).__name__}); removing what was created")
            cls.down(name, progress=_quiet)
            if isinstance(exc, LabError):
                raise
            if isinstance(exc, Exception):
                raise LabError(f"lab {name!r} could not be started: {exc}") from exc
            raise
        lab.state["status"] = "up"
        lab._save()
        step(f"lab {name!r} is up")
        return lab

    @staticmethod
    def down(name: str = "shop", progress: Progress = _quiet) -> list[str]:
        """Remove everything lab ``name`` created (idempotent); returns what was removed."""
        system.preflight()
        try:
            check_lab_name(name)
        except ValueError as exc:
            raise LabError(str(exc)) from None
        removed: list[str] = []
        state_dir = f"{STATE_ROOT}/{name}"
        storage_dir = f"{STORAGE_ROOT}/{name}"
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(Path(f"{state_dir}/state.json").read_text())
        namespaces = [n for n in system.netns_list() if n.startswith(prefix(name))]

        # 1. Containers, through each host's own engine (so netavark tears down
        #    their networking and podman unmounts their storage).
        hosts = set()
        for d in (storage_dir, state_dir):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                hosts |= {h for h in os.listdir(d) if os.path.isdir(f"{d}/{h}")}
        # containerd hosts (in parallel): their pods through the CRI, as a kubelet
        # deletes them.
        nodes = [host_paths(name, h) for h in sorted(hosts)]
        nodes = [h for h in nodes if os.path.isdir(h.containerd_root) or os.path.exists(h.cri_sock)]
        if nodes:
            with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
                counts = list(pool.map(functools.partial(containerd.remove_pods, name), nodes))
            for h, n in zip(nodes, counts, strict=True):
                if n:
                    removed.append(f"{n} pod(s) on {h.name}")
                progress(f"removed pods of {h.name}")
        for host in sorted(hosts):
            if not os.path.isdir(f"{storage_dir}/{host}/storage"):
                continue
            ns = f"{prefix(name)}{host}"
            if not system.netns_exists(ns):
                # Never let netavark tear down networking in the root namespace:
                # give it an empty namespace of the lab's (deleted below).
                run(["ip", "netns", "add", ns])
                namespaces.append(ns)
            proc = run(
                ["podman", *podman_args_for(name, host), "rm", "--all", "--force", "--time", "0"],
                netns=ns,
                check=False,
                timeout=60,
            )
            n = len(proc.stdout.split())
            if n:
                removed.append(f"{n} container(s) on {host}")
            # Also drops the network's address bucket in Podman's shared IPAM database.
            run(["podman", *podman_args_for(name, host), "network", "rm", "--force", ns],
                netns=ns, check=False, timeout=60)  # fmt: skip
            progress(f"removed containers of {host}")
        for c in state.get("containers", {}).values():
            if c.get("sandbox"):
                system.remove_netns_file(c["sandbox"])

        # 2. Processes: engines, DNS and external servers, anything else in the
        #    lab's namespaces or running from its directories.
        pids = set(system.pids_with_cmdline(f"/cnnf-lab/{name}/"))
        pids |= set(containerd.cgroup_pids(name))  # pods whose containerd is gone
        for ns in namespaces:
            pids |= set(system.netns_pids(ns))
        if pids:
            system.kill_all(pids)
            removed.append(f"{len(pids)} process(es)")
            progress(f"stopped {len(pids)} process(es)")

        # 3. Namespaces (their links, bridges, addresses, routes and iptables
        #    rules go with them).
        for ns in namespaces:
            run(["ip", "netns", "delete", ns], check=False)
        if namespaces:
            removed.append(f"{len(namespaces)} namespace(s)")
            progress(f"deleted {len(namespaces)} namespace(s)")

        # 4. Storage and runtime directories.
        if system.unmount_under(state_dir, storage_dir):
            removed.append("mounts")
        for d in (storage_dir, state_dir):
            if os.path.exists(d):
                run(["rm", "-rf", "--one-file-system", d], check=False)
                removed.append(d)
        if containerd.remove_cgroups(name):
            removed.append("pod cgroups")
        progress(f"lab {name!r} is down")
        return removed

    # ---- building -------------------------------------------------------------

    def _save(self) -> None:
        with self._lock:
            path = Path(self.plan.state_dir) / "state.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True))
            os.replace(tmp, path)

    def _build(self, step: Progress) -> None:
        plan, topo = self.plan, self.topology
        step(
            f"lab {self.name!r}: {len(plan.hosts)} host(s), {len(topo.containers)} container(s), "
            f"underlay {plan.underlay}"
        )
        for ns in plan.netns:
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        system.sysctl(plan.router_netns, net__ipv4__ip_forward="1")

        # Router: the underlay bridge.
        r = plan.router_netns
        run(["ip", "-n", r, "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "-n", r, "addr", "add", f"{plan.router_ip}/24", "dev", BRIDGE])
        run(["ip", "-n", r, "link", "set", BRIDGE, "up"])
        for h in plan.hosts.values():
            self._link(r, h.router_link, h.netns, f"{h.underlay_ip}/24")
            run(["ip", "-n", r, "link", "set", h.router_link, "master", BRIDGE])
            run(["ip", "-n", r, "route", "add", h.subnet, "via", h.underlay_ip])
            system.sysctl(h.netns, net__ipv4__ip_forward="1")
            run(["ip", "-n", h.netns, "route", "add", "default", "via", plan.router_ip])
            for other in plan.hosts.values():
                if other.name != h.name:
                    run(
                        [
                            "ip",
                            "-n",
                            h.netns,
                            "route",
                            "add",
                            other.subnet,
                            "via",
                            other.underlay_ip,
                        ]
                    )
        step(f"router and underlay {plan.underlay} with {len(plan.hosts)} host namespace(s)")

        # External networks, their servers and the lab DNS server.
        www = Path(plan.state_dir) / "www"
        www.mkdir(parents=True, exist_ok=True)
        (www / "index.html").write_text("cnnf lab external server\n")
        for e in plan.external.values():
            prefixlen = e.subnet.split("/")[1]
            run(["ip", "-n", r, "link", "add", e.router_link, "type", "veth",
                 "peer", "name", UPLINK, "netns", e.netns])  # fmt: skip
            run(["ip", "-n", r, "addr", "add", f"{e.router_ip}/{prefixlen}", "dev", e.router_link])
            run(["ip", "-n", r, "link", "set", e.router_link, "up"])
            for a in e.addresses:
                run(["ip", "-n", e.netns, "addr", "add", f"{a}/{prefixlen}", "dev", UPLINK])
            run(["ip", "-n", e.netns, "link", "set", UPLINK, "up"])
            run(["ip", "-n", e.netns, "route", "add", "default", "via", e.router_ip])
        for ext, server in topo.servers():
            netns = plan.external[ext.name].netns
            for port in server.ports:
                self._spawn(
                    f"httpd:{server.name}:{port}",
                    netns,
                    [
                        system.BUSYBOX,
                        "httpd",
                        "-f",
                        "-p",
                        f"{server.address}:{port}",
                        "-h",
                        str(www),
                    ],
                )
        if plan.dns_server and plan.dns_netns:
            records = [f"--host-record={n},{a}" for n, a in sorted(topo.dns_records().items())]
            self._spawn(
                "dnsmasq",
                plan.dns_netns,
                ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                 "--no-hosts", "--bind-interfaces", f"--listen-address={plan.dns_server}",
                 f"--pid-file={plan.state_dir}/dnsmasq.pid", *records],
            )  # fmt: skip
        if plan.external:
            step(
                f"external networks {', '.join(e.subnet for e in plan.external.values())}"
                + (f", lab DNS {plan.dns_server}" if plan.dns_server else "")
            )

        # containerd hosts first: their daemons start while the Podman hosts are set up.
        nodes = [h for h in plan.hosts.values() if h.runtime == "containerd"]
        for h in nodes:
            self._spawn(f"containerd:{h.name}", h.netns, containerd.prepare(h))

        # Podman hosts: engine, images, network, Docker API, containers.
        tarball = rootfs_tarball() if topo.containers else None
        for h in plan.hosts.values():
            if h.runtime != "podman":
                continue
            for d in (h.storage, h.runroot, h.tmpdir, h.network_dir):
                os.makedirs(d, exist_ok=True)
            containers = topo.containers_on(h.name)
            for image in sorted({c.image for c in containers}):
                self._podman(
                    h, ["import", "--change", 'CMD ["/bin/sh"]', str(tarball), qualified(image)]
                )
            self._podman(h, ["network", "create", "--disable-dns", "--subnet", h.subnet,
                             "--gateway", h.gateway, h.network])  # fmt: skip
            # Routed, not NATed: the far end must see the container's own address.
            run(["iptables", "-w", "-t", "nat", "-I", "POSTROUTING", "1", "-s", h.subnet,
                 "-m", "comment", "--comment", f"cnnf-lab {self.name}: no NAT", "-j", "RETURN"],
                netns=h.netns)  # fmt: skip
            self._spawn(
                f"docker:{h.name}",
                h.netns,
                [
                    "podman",
                    *h.podman_args(),
                    "system",
                    "service",
                    "--time=0",
                    f"unix://{h.docker_sock}",
                ],
            )
            for c in containers:
                self._run_container(h, c)
            step(
                f"{h.name}: {h.underlay_ip}, containers {h.subnet}: "
                + (", ".join(c.name for c in containers) or "none")
            )

        # containerd hosts: images into the CRI's namespace, then the pods; the
        # hosts in parallel (each containerd does its own work).
        if nodes:
            with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
                futures = [pool.submit(self._start_node, h, step) for h in nodes]
            for f in futures:
                f.result()
            step("CRI sockets ready")

        podman_hosts = [h for h in plan.hosts.values() if h.runtime == "podman"]
        for h in podman_hosts:
            system.wait_for(
                functools.partial(_socket_ready, h.docker_sock), 30, f"the Docker API of {h.name}"
            )
        self._refresh_containers()
        if podman_hosts:
            step("Docker API sockets ready")

    def _link(self, router: str, router_end: str, netns: str, address: str) -> None:
        run(["ip", "-n", router, "link", "add", router_end, "type", "veth",
             "peer", "name", UPLINK, "netns", netns])  # fmt: skip
        run(["ip", "-n", router, "link", "set", router_end, "up"])
        run(["ip", "-n", netns, "addr", "add", address, "dev", UPLINK])
        run(["ip", "-n", netns, "link", "set", UPLINK, "up"])

    def _spawn(self, key: str, netns: str, cmd: list[str]) -> None:
        """Start a daemon in a lab namespace. It outlives this process (the CLI
        exits after ``up``), so it is spawned in its own session, not as a Popen
        that would want to be waited for; ``down`` stops it."""
        log = f"{self.plan.state_dir}/{key.replace(':', '-')}.log"
        argv = ["nsenter", f"--net={system.NETNS_DIR}/{netns}", *cmd]
        path = shutil.which(argv[0]) or argv[0]
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        pid = os.posix_spawn(path, argv, dict(os.environ), file_actions=actions, setsid=True)
        self.state["pids"][key] = pid
        self._save()

    def _podman(self, h: HostPlan, args: list[str], timeout: float = 60) -> str:
        return run(["podman", *h.podman_args(), *args], netns=h.netns, timeout=timeout).stdout

    def _run_container(self, h: HostPlan, c: Container) -> None:
        # Fixed addresses (.2, .3, ... in topology order), so a lab's addresses are
        # the same on every run: Podman's IPAM would otherwise keep counting up
        # across runs (its database is shared by all engines on the machine).
        taken = {
            str(v["address"]) for v in self.state["containers"].values() if v["host"] == h.name
        }
        subnet = ipaddress.IPv4Network(h.subnet)
        address = next((str(a) for a in list(subnet.hosts())[1:] if str(a) not in taken), None)
        if address is None:
            raise LabError(f"no free address left in {h.subnet} on {h.name}")
        labels = {
            K8S_NAMESPACE_LABEL: c.namespace,
            K8S_POD_LABEL: c.pod_name,
            K8S_CONTAINER_LABEL: c.name,
            LAB_LABEL: self.name,
            **c.labels,
        }
        services = "".join(f"httpd -p {p} -h /www; " for p in c.ports)
        args = [
            "run", "--detach", "--name", c.name, "--hostname", c.name,
            "--network", h.network, "--ip", address,
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
        ]  # fmt: skip
        if self.plan.dns_server:
            args += ["--dns", self.plan.dns_server]
        for k, v in sorted(labels.items()):
            args += ["--label", f"{k}={v}"]
        args += [qualified(c.image), "sh", "-c", f"{services}exec sleep 2147483647"]
        self._podman(h, args)
        self.state["containers"][c.name] = {"host": h.name, "address": address}

    def _node(self, h: HostPlan) -> containerd.Node:
        return containerd.Node(self.name, h, self.plan.dns_server)

    def _import_images(self, h: HostPlan, images: list[str]) -> None:
        """Import images (and the pause image) into a containerd host, unless there."""
        with self._lock:
            known = dict(self.state.setdefault("images", {}).get(h.name, {}))
        if known and all(qualified(i) in known for i in images):
            return
        archive, ids = oci_archive(images)
        containerd.import_images(h, archive)
        with self._lock:
            self.state["images"].setdefault(h.name, {}).update(ids)
            self._save()

    def _start_node(self, h: HostPlan, step: Progress) -> None:
        """Images and pods of a containerd host (one thread per host during ``up``).
        Pods start one after the other, so they get the same addresses on every run."""
        system.wait_for(functools.partial(_cri_ready, self.name, h), 30, f"the CRI of {h.name}")
        self._import_images(h, [c.image for c in self.topology.containers_on(h.name)])
        pods = {p: cs for p, cs in self.topology.pods().items() if cs[0].host == h.name}
        for containers in pods.values():
            self._run_pod(h, containers)
        step(f"{h.name}: {h.underlay_ip}, pods {h.subnet}: " + (", ".join(pods) or "none"))

    def _run_pod(
        self, h: HostPlan, containers: list[Container], address: str | None = None
    ) -> None:
        """Start a pod of ``containers`` (they name the same pod) on a containerd host."""
        main = containers[0]
        labels: dict[str, str] = {}
        for c in containers:
            labels.update(c.labels)
        with self._lock:
            images = dict(self.state["images"][h.name])
        with self._node(h) as node:
            pod = node.run_pod(main.pod_name, main.namespace, labels, containers, images,
                               address=address)  # fmt: skip
            ids = {c.metadata.name: c.id for c in node.containers(pod.id)}
            # The containers' own pids (for what_remains-style checks).
            pids = {c.name: node.container_pid(ids[c.name]) if c.name in ids else 0
                    for c in containers}  # fmt: skip
        records = {}
        for c in containers:
            info = ContainerInfo(
                name=c.name,
                host=h.name,
                id=ids.get(c.name, ""),
                pid=pids[c.name],
                address=pod.address,
                image=qualified(c.image),
                labels={
                    **labels,
                    K8S_NAMESPACE_LABEL: pod.namespace,
                    K8S_POD_LABEL: pod.name,
                    K8S_CONTAINER_LABEL: c.name,
                },
                sandbox=pod.netns,
                pod=pod.name,
                pod_id=pod.id,
            )
            records[c.name] = asdict(info)
        with self._lock:
            self.state.setdefault("pods", {})[pod.name] = asdict(pod)
            self.state["containers"].update(records)
            self._save()

    def start_pod(
        self, containers: list[Container], address: str | None = None
    ) -> list[ContainerInfo]:
        """Start one more pod on a containerd host: ``containers`` all name the same
        pod (``pod``, or the one container's name), host and namespace; the first
        is its main container. CNI (host-local) gives it the next address of the
        host's pod subnet, or ``address`` (which must be free: to reuse the
        address of a removed pod at once). ``down`` removes it with the others."""
        if not containers:
            raise LabError("a pod needs at least one container")
        main = containers[0]
        h = self._host(main.host)
        if h.runtime != "containerd":
            raise LabError(f"host {h.name!r} runs Podman: pods need a containerd host")
        pods = self.state.setdefault("pods", {})
        if main.pod_name in pods or main.pod_name in self.state["containers"]:
            raise LabError(f"lab {self.name!r} already has a pod or container {main.pod_name!r}")
        for c in containers:
            if c.name in self.state["containers"]:
                raise LabError(f"lab {self.name!r} already has a container {c.name!r}")
            if (c.pod_name, c.host, c.namespace) != (main.pod_name, main.host, main.namespace):
                raise LabError(f"container {c.name!r} is not of pod {main.pod_name!r} on "
                               f"{main.host} in namespace {main.namespace!r}")  # fmt: skip
        self._import_images(h, [c.image for c in containers])
        self._run_pod(h, containers, address)
        with self._lock:
            extra = self.state.setdefault("extra", {})
            for c in containers:
                extra[c.name] = c.model_dump(mode="json", by_alias=True)
            self._save()
        return [self.container(c.name) for c in containers]

    def remove_pod(self, name: str) -> None:
        """Delete a pod (by its name or a container's) as a kubelet does:
        StopPodSandbox, then RemovePodSandbox."""
        c = self.container(name)
        if not c.pod_id:
            raise LabError(f"{name!r} is not in a pod of a containerd host")
        with self._node(self.plan.hosts[c.host]) as node:
            node.remove_pod(c.pod_id, c.address)
        with self._lock:
            pod = self.state["pods"].pop(c.pod, {})
            for n in pod.get("containers", [c.name]):
                self.state["containers"].pop(n, None)
                self.state.get("extra", {}).pop(n, None)
            self._save()

    def pod(self, name: str) -> dict[str, Any]:
        """A pod the lab started on a containerd host (by its name or a container's):
        name, host, namespace, uid, id, address, pid (its sandbox), netns, labels,
        containers."""
        c = self.container(name)
        if not c.pod_id:
            raise LabError(f"{name!r} is not in a pod of a containerd host")
        return dict(self.state["pods"][c.pod])

    def start_container(self, container: Container) -> ContainerInfo:
        """Start one more container on a lab host (e.g. to test discovery of new
        containers); ``down`` removes it with the others. On a containerd host it
        runs in a pod of its own (:meth:`start_pod`)."""
        if container.name in self.state["containers"]:
            raise LabError(f"lab {self.name!r} already has a container {container.name!r}")
        h = self._host(container.host)
        if h.runtime == "containerd":
            return self.start_pod([container])[0]
        self._podman(h, ["import", "--change", 'CMD ["/bin/sh"]', str(rootfs_tarball()),
                         qualified(container.image)])  # fmt: skip
        self._run_container(h, container)
        self.state.setdefault("extra", {})[container.name] = container.model_dump(
            mode="json", by_alias=True
        )
        self._refresh_containers()
        return self.container(container.name)

    def remove_container(self, name: str) -> None:
        """Stop and remove a container (``podman rm --force``); on a containerd
        host, remove its pod (:meth:`remove_pod`)."""
        c = self.container(name)
        if c.pod_id:
            self.remove_pod(name)
            return
        self._podman(self.plan.hosts[c.host], ["rm", "--force", "--time", "0", name])
        self.state.get("extra", {}).pop(name, None)
        self._refresh_containers()

    def _containers_on(self, host: str) -> list[Container]:
        extra = [Container.model_validate(c) for c in self.state.get("extra", {}).values()]
        return [*self.topology.containers_on(host), *(c for c in extra if c.host == host)]

    def _refresh_containers(self) -> None:
        out: dict[str, Any] = {
            k: v for k, v in self.state["containers"].items() if v.get("pod_id")
        }  # containerd hosts' containers are recorded when their pod starts
        for h in self.plan.hosts.values():
            if h.runtime != "podman":
                continue
            names = [c.name for c in self._containers_on(h.name)]
            if not names:
                continue
            data = json.loads(self._podman(h, ["inspect", "--type", "container", *names]))
            for item in data:
                nets = item["NetworkSettings"]["Networks"]
                info = ContainerInfo(
                    name=item["Name"],
                    host=h.name,
                    id=item["Id"],
                    pid=int(item["State"]["Pid"]),
                    address=nets.get(h.network, {}).get("IPAddress", ""),
                    image=item["ImageName"],
                    labels=item["Config"]["Labels"] or {},
                    sandbox=item["NetworkSettings"].get("SandboxKey", ""),
                )
                out[info.name] = asdict(info)
        self.state["containers"] = out
        self._save()

    # ---- using a running lab --------------------------------------------------

    def docker_host(self, host: str) -> str:
        """The Docker API URL of ``host``'s engine (``unix:///run/cnnf-lab/...``)."""
        h = self._host(host)
        if h.runtime != "podman":
            raise LabError(f"host {host!r} runs {h.runtime}, which serves no Docker API "
                           "(its CRI socket: Lab.cri_socket)")  # fmt: skip
        return f"unix://{h.docker_sock}"

    def cri_socket(self, host: str) -> str:
        """The CRI endpoint of a containerd host (``unix:///run/cnnf-lab/L/<host>/containerd.sock``)."""
        h = self._host(host)
        if h.runtime != "containerd":
            raise LabError(f"host {host!r} runs {h.runtime}, which serves no CRI "
                           "(its Docker API: Lab.docker_host)")  # fmt: skip
        return f"unix://{h.cri_sock}"

    def runtime(self, host: str) -> str:
        """``podman`` or ``containerd``."""
        return self._host(host).runtime

    def netns(self, host: str) -> str:
        """Path of a lab host's network namespace (for ``nsenter --net=``)."""
        return f"{system.NETNS_DIR}/{self._host(host).netns}"

    def podman(self, host: str) -> list[str]:
        """The command prefix that talks to ``host``'s engine."""
        return ["nsenter", f"--net={self.netns(host)}", "podman", *self._host(host).podman_args()]

    def _host(self, host: str) -> HostPlan:
        try:
            return self.plan.hosts[host]
        except KeyError:
            raise LabError(
                f"lab {self.name!r} has no host {host!r} (hosts: {', '.join(self.plan.hosts)})"
            ) from None

    def container(self, name: str) -> ContainerInfo:
        """A container by its name, or a pod's main container by the pod's name."""
        containers = self.state["containers"]
        data = containers.get(name)
        if data is None:
            pod = self.state.get("pods", {}).get(name)
            if pod and pod["containers"]:
                data = containers.get(pod["containers"][0])
            else:  # Podman: the first container labelled with that pod name
                data = next((c for c in containers.values()
                             if c.get("labels", {}).get(K8S_POD_LABEL) == name), None)  # fmt: skip
        if data is None:
            pods = self.state.get("pods", {})
            raise LabError(
                f"lab {self.name!r} has no container {name!r} "
                f"(containers: {', '.join(containers)}"
                + (f"; pods: {', '.join(pods)})" if pods else ")")
            )
        return ContainerInfo(**data)

    def container_pid(self, name: str) -> int:
        """The live pid of a container's first process (it changes if the container restarts)."""
        c = self.container(name)
        h = self.plan.hosts[c.host]
        if c.pod_id:
            import grpc

            try:
                with self._node(h) as node:
                    pid = node.container_pid(c.id)
            except grpc.RpcError as exc:
                raise LabError(f"container {c.name!r}: {exc.details()}") from None
            if pid <= 0:
                raise LabError(f"container {c.name!r} is not running")
            return pid
        out = self._podman(
            h, ["inspect", "--type", "container", "--format", "{{.State.Pid}}", c.name]
        )
        pid = int(out.strip() or 0)
        if pid <= 0:
            raise LabError(f"container {name!r} is not running")
        return pid

    def exec(
        self, container: str, cmd: list[str], *, capture: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside ``container`` (``podman exec``; a pod's main container
        or a named one through the CRI's ExecSync on a containerd host)."""
        c = self.container(container)
        if c.pod_id:
            import grpc

            try:
                with self._node(self.plan.hosts[c.host]) as node:
                    code, out, err = node.client.exec_sync(c.id, cmd, timeout=600)
            except grpc.RpcError as exc:
                raise LabError(f"exec in {c.name!r}: {exc.details()}") from None
            stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
            if not capture:
                sys.stdout.write(stdout)
                sys.stderr.write(stderr)
                sys.stdout.flush()
            return subprocess.CompletedProcess(cmd, code, stdout, stderr)
        full = [*self.podman(c.host), "exec", container, *cmd]
        return subprocess.run(full, capture_output=capture, text=True, check=False)

    def address_of(self, target: str) -> str | None:
        """The address of a container, pod, host or server name (None: a DNS name or
        an address)."""
        if target in self.state["containers"]:
            return str(self.state["containers"][target]["address"])
        for c in self.state["containers"].values():  # a pod's name
            if c.get("labels", {}).get(K8S_POD_LABEL) == target:
                return str(c["address"])
        if target in self.plan.hosts:
            return self.plan.hosts[target].underlay_ip
        for _, s in self.topology.servers():
            if s.name == target:
                return str(s.address)
        return None

    def probe_command(self, source: str, *args: str) -> list[str]:
        """Command that runs the probe helper inside container ``source``'s network namespace."""
        pid = self.container_pid(source)
        return ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, PROBE, *args]

    def connect(
        self, source: str, destination: str, port: int, timeout: float = 2.0
    ) -> ConnectResult:
        """One real TCP connect from inside container ``source``."""
        if not 1 <= port <= 65535:
            raise LabError(f"bad port {port}: must be 1-65535")
        if not timeout > 0:  # 0 would make the socket non-blocking; NaN, negative: invalid
            raise LabError(f"bad timeout {timeout}: must be a number of seconds above 0")
        address = self.address_of(destination) or destination
        args = ["connect", address, str(port), "--timeout", str(timeout)]
        if self.plan.dns_server:
            args += ["--dns", self.plan.dns_server]
        proc = subprocess.run(
            self.probe_command(source, *args), capture_output=True, text=True,
            timeout=timeout + 30, check=False,
        )  # fmt: skip
        if proc.returncode != 0 or not proc.stdout.strip():
            raise LabError(f"connect helper failed: {proc.stderr.strip()}")
        r = json.loads(proc.stdout.splitlines()[-1])
        return ConnectResult(
            source=source,
            destination=destination,
            port=port,
            outcome=r["outcome"],
            ms=float(r["ms"]),
            address=r.get("address", ""),
            source_address=r.get("source", ""),
            error=r.get("error", ""),
        )

    def resolve(self, source: str, name: str) -> list[str]:
        """Resolve ``name`` through the lab DNS server, from inside container ``source``."""
        proc = subprocess.run(
            self.probe_command(source, "resolve", name, "--dns", self.plan.dns_server or ""),
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        r = json.loads(proc.stdout.splitlines()[-1]) if proc.stdout.strip() else {}
        if "addresses" not in r:
            raise LabError(r.get("error") or f"resolve helper failed: {proc.stderr.strip()}")
        return list(r["addresses"])

    def host_identity(self, host: str) -> dict[str, Any]:
        """What a Defender on ``host`` would report about the host itself."""
        h = self._host(host)
        return {
            "name": host,
            "labels": dict(self.topology.host(host).labels),
            "addresses": [h.underlay_ip, h.gateway],
        }

    def _node_status(self, h: HostPlan) -> dict[str, Any]:
        import grpc

        live: dict[str, str] = {}
        try:
            with self._node(h) as node:
                node.client.timeout = 10
                for c in node.containers():
                    live[c.metadata.name] = containerd.STATES.get(c.state, "unknown")
        except grpc.RpcError:
            pass  # containerd is gone: every container shows as missing
        names = [c.name for c in self._containers_on(h.name)]
        pods = self.state.get("pods", {})
        return {
            "name": h.name,
            "netns": h.netns,
            "labels": dict(self.topology.host(h.name).labels),
            "address": h.underlay_ip,
            "subnet": h.subnet,
            "runtime": h.runtime,
            "criSocket": f"unix://{h.cri_sock}",
            "pods": [
                {k: p[k] for k in POD_FIELDS} for p in pods.values() if p["host"] == h.name
            ],
            "containers": [
                {**self.state["containers"].get(n, {"name": n}), "state": live.get(n, "missing")}
                for n in names
            ],
        }

    def status(self) -> dict[str, Any]:
        """Hosts, addresses, containers (live state), servers and sockets of the lab."""
        hosts = []
        for h in self.plan.hosts.values():
            live: dict[str, str] = {}
            if h.runtime == "containerd":
                hosts.append(self._node_status(h))
                continue
            proc = run(["podman", *h.podman_args(), "ps", "--all", "--format", "json"],
                       check=False, timeout=30)  # fmt: skip
            with contextlib.suppress(ValueError):
                for item in json.loads(proc.stdout or "[]"):
                    live[item["Names"][0]] = item["State"]
            hosts.append({
                "name": h.name,
                "netns": h.netns,
                "labels": dict(self.topology.host(h.name).labels),
                "address": h.underlay_ip,
                "subnet": h.subnet,
                "runtime": h.runtime,
                "dockerHost": f"unix://{h.docker_sock}",
                "containers": [
                    {
                        **self.state["containers"].get(c.name, {}),
                        "state": live.get(c.name, "missing"),
                    }
                    for c in self._containers_on(h.name)
                ],
            })  # fmt: skip
        return {
            "lab": self.name,
            "index": self.plan.index,
            "status": self.state.get("status"),
            "started": self.state.get("started"),
            "router": {"netns": self.plan.router_netns, "address": self.plan.router_ip},
            "underlay": self.plan.underlay,
            "dnsServer": self.plan.dns_server,
            "hosts": hosts,
            "external": [
                {
                    "network": e.name,
                    "subnet": str(e.subnet),
                    "server": s.name,
                    "address": str(s.address),
                    "ports": s.ports,
                    "dns": s.dns,
                }
                for e, s in self.topology.servers()
            ],
        }


def _socket_ready(path: str) -> bool:
    return system.socket_ready(path)


def _cri_ready(lab: str, h: HostPlan) -> bool:
    if not system.socket_ready(h.cri_sock):
        return False
    with containerd.Node(lab, h) as node:
        return node.ready()
