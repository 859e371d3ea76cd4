"""The lab's address plan and the names of everything it creates (pure, no I/O).

Lab number ``index`` (0 for the first lab running, 1 for the next, ...) owns
``10.(64+index).0.0/16``: the underlay is ``.0.0/24`` (router ``.0.1``, host k
``.0.(11+k)``) and host k's container subnet is ``.(1+k).0/24`` unless the
topology names one. Two labs therefore never share container addresses, and a
Console that sees both can still tell their workloads apart.

Every namespace is called ``cnnf-<lab>-...``. Links are created directly inside
the lab's namespaces (never in the root namespace), under short names derived
from a hash so they stay within the kernel's 15-character limit.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field

from cnnf.lab.topology import Topology

MAX_LABS = 64
STATE_ROOT = "/run/cnnf-lab"
STORAGE_ROOT = "/var/lib/cnnf-lab"
BRIDGE = "cnnfbr0"
UPLINK = "cnnf-ul0"  # the host's (or external namespace's) end of its link to the router


def short_hash(*parts: str, size: int = 8) -> str:
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:size]


def prefix(lab: str) -> str:
    return f"cnnf-{lab}-"


@dataclass(frozen=True)
class HostPlan:
    name: str
    netns: str
    underlay_ip: str
    subnet: str
    gateway: str
    router_link: str  # the link's name inside the router namespace
    network: str  # the Podman network's name
    storage: str  # Podman --root
    runroot: str  # Podman --runroot
    tmpdir: str
    network_dir: str
    docker_sock: str
    # A containerd host (Kubernetes-like node): everything of its containerd
    # under run_dir (runtime state, sockets, config, CNI) and containerd_root.
    runtime: str = "podman"
    run_dir: str = ""
    containerd_root: str = ""

    @property
    def cri_sock(self) -> str:
        """containerd's socket (the CRI and containerd's own API)."""
        return f"{self.run_dir}/containerd.sock"

    def podman_args(self) -> list[str]:
        return [
            "--root", self.storage,
            "--runroot", self.runroot,
            "--tmpdir", self.tmpdir,
            "--network-config-dir", self.network_dir,
            "--runtime", "runc",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            "--storage-driver", "overlay",
        ]  # fmt: skip


@dataclass(frozen=True)
class ExternalPlan:
    name: str
    netns: str
    subnet: str
    router_ip: str  # the router's address on this subnet (the external namespace's gateway)
    router_link: str
    addresses: tuple[str, ...]  # server addresses (and the DNS server's) in this namespace


@dataclass(frozen=True)
class Plan:
    lab: str
    index: int
    router_netns: str
    underlay: str
    router_ip: str
    state_dir: str
    storage_dir: str
    hosts: dict[str, HostPlan] = field(default_factory=dict)
    external: dict[str, ExternalPlan] = field(default_factory=dict)
    dns_server: str | None = None
    dns_netns: str | None = None

    @property
    def netns(self) -> list[str]:
        return [self.router_netns, *(h.netns for h in self.hosts.values())] + [
            e.netns for e in self.external.values()
        ]


def make_plan(topology: Topology, lab: str, index: int) -> Plan:
    """Derive every name and address of lab ``lab`` (number ``index``) from a topology."""
    if not 0 <= index < MAX_LABS:
        raise ValueError(f"lab index {index} out of range 0-{MAX_LABS - 1}")
    if len(topology.hosts) > 200:
        raise ValueError("at most 200 hosts per lab")
    base = 64 + index
    underlay = ipaddress.IPv4Network(f"10.{base}.0.0/24")
    state = f"{STATE_ROOT}/{lab}"
    storage = f"{STORAGE_ROOT}/{lab}"
    hosts: dict[str, HostPlan] = {}
    for k, h in enumerate(topology.hosts):
        subnet = h.subnet or ipaddress.IPv4Network(f"10.{base}.{1 + k}.0/24")
        hosts[h.name] = HostPlan(
            name=h.name,
            netns=f"{prefix(lab)}{h.name}",
            underlay_ip=str(underlay.network_address + 11 + k),
            subnet=str(subnet),
            gateway=str(subnet.network_address + 1),
            router_link=f"h{short_hash(lab, h.name)}",
            network=f"{prefix(lab)}{h.name}",
            storage=f"{storage}/{h.name}/storage",
            runroot=f"{state}/{h.name}/runroot",
            tmpdir=f"{state}/{h.name}/tmp",
            network_dir=f"{storage}/{h.name}/networks",
            docker_sock=f"{state}/{h.name}/docker.sock",
            runtime=h.runtime,
            run_dir=f"{state}/{h.name}",
            containerd_root=f"{storage}/{h.name}/containerd",
        )
    external: dict[str, ExternalPlan] = {}
    dns_netns = None
    for e in topology.external:
        addresses = [str(s.address) for s in e.servers]
        netns = f"{prefix(lab)}x-{e.name}"
        if topology.dns_server is not None and topology.dns_server in e.subnet:
            addresses.append(str(topology.dns_server))
            dns_netns = netns
        external[e.name] = ExternalPlan(
            name=e.name,
            netns=netns,
            subnet=str(e.subnet),
            router_ip=str(next(e.subnet.hosts())),
            router_link=f"x{short_hash(lab, 'ext', e.name)}",
            addresses=tuple(addresses),
        )
    return Plan(
        lab=lab,
        index=index,
        router_netns=f"{prefix(lab)}router",
        underlay=str(underlay),
        router_ip=str(underlay.network_address + 1),
        state_dir=state,
        storage_dir=storage,
        hosts=hosts,
        external=external,
        dns_server=str(topology.dns_server) if topology.dns_server else None,
        dns_netns=dns_netns,
    )


def plan_conflicts(plan: Plan) -> list[str]:
    """Subnets of the plan that overlap each other (a host subnet set in the topology
    may collide with the derived underlay or with another lab's range)."""
    nets = [("underlay", ipaddress.IPv4Network(plan.underlay))]
    nets += [(f"host {h.name}", ipaddress.IPv4Network(h.subnet)) for h in plan.hosts.values()]
    nets += [
        (f"external {e.name}", ipaddress.IPv4Network(e.subnet)) for e in plan.external.values()
    ]
    out = []
    for i in range(len(nets)):
        for j in range(i + 1, len(nets)):
            if nets[i][1].overlaps(nets[j][1]):
                out.append(f"{nets[j][0]} subnet {nets[j][1]} overlaps {nets[i][0]} {nets[i][1]}")
    return out
