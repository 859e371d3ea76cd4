"""The lab's topology file: hosts, containers, external networks, traffic patterns.

A topology is validated once, when it is loaded; every problem is reported
with the file, the path inside the document and what is wrong, e.g.
``shop.yaml: containers[2].host: unknown host 'node-3'``.
"""

from __future__ import annotations

import ipaddress
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from cnnf.errors import CnnfError, FieldError

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# Lab names contain no dash so that the prefix ``cnnf-<lab>-`` of one lab is
# never a prefix of another lab's names.
LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
DNS_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
# An image reference as Podman parses it (an optional registry, path components
# separated by '/', a tag), so that a name Podman would refuse halfway through
# `up` is refused here, with its path, instead.
_IMAGE_PART = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_REGISTRY = rf"(?:localhost|{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?)"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
IMAGE_RE = re.compile(
    rf"^(?=.{{1,255}}$)(?:{_REGISTRY}/)?{_IMAGE_PART}(?:/{_IMAGE_PART})*:{_TAG}$"
)


class TopologyError(CnnfError):
    """A topology file is invalid; ``errors`` lists every problem."""

    def __init__(self, errors: list[FieldError], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{head}invalid topology ({len(self.errors)} error(s))\n{lines}")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"bad name {value!r}: use lower-case letters, digits and '-' (at most 32)")
    return value


Port = int


def _check_ports(ports: list[int]) -> list[int]:
    problems = [f"bad port {p}: must be 1-65535" for p in ports if not 1 <= p <= 65535]
    duplicates = sorted({p for p in ports if ports.count(p) > 1})
    if duplicates:
        problems.append(f"duplicate port {', '.join(map(str, duplicates))}")
    if problems:  # every bad port at once, not only the first
        raise ValueError("; ".join(problems))
    return ports


Runtime = Literal["podman", "containerd"]


class Host(_Model):
    """A lab host (a node): a network namespace with its own container engine,
    Podman (the Docker API) or containerd (the CRI, as on a Kubernetes node)."""

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    runtime: Runtime = "podman"
    # The host's container subnet; derived from the lab's address plan when omitted.
    subnet: ipaddress.IPv4Network | None = None

    _name = field_validator("name")(_check_name)


class Container(_Model):
    """One container on a host, with services listening on ``ports``.

    On a containerd host every container runs in a pod (named ``pod``, or after
    the container): containers that name the same pod share it (its network
    namespace, address and labels), the first one listed is its main container.
    """

    name: str
    host: str
    image: str
    namespace: str = "default"
    pod: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    ports: list[int] = Field(default_factory=list)

    _name = field_validator("name")(_check_name)
    _ports = field_validator("ports")(_check_ports)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not IMAGE_RE.match(value):
            raise ValueError(f"bad image {value!r}: use name:tag, e.g. shop/api:2.1")
        return value

    @property
    def pod_name(self) -> str:
        return self.pod or self.name


class Server(_Model):
    """A server on an external network, optionally known by DNS names."""

    name: str
    address: ipaddress.IPv4Address
    ports: list[int] = Field(default_factory=list)
    dns: list[str] = Field(default_factory=list)

    _name = field_validator("name")(_check_name)
    _ports = field_validator("ports")(_check_ports)

    @field_validator("dns")
    @classmethod
    def _dns(cls, names: list[str]) -> list[str]:
        for n in names:
            if not DNS_NAME_RE.match(n):
                raise ValueError(f"bad DNS name {n!r}")
        return names


class External(_Model):
    """An external network (outside the cluster): a subnet with servers."""

    name: str
    subnet: ipaddress.IPv4Network
    servers: list[Server] = Field(default_factory=list)

    _name = field_validator("name")(_check_name)

    @field_validator("subnet", mode="before")
    @classmethod
    def _strict_subnet(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                ipaddress.IPv4Network(value)
            except ValueError as exc:
                raise ValueError(f"bad subnet {value!r}: {exc}") from None
        return value


class Traffic(_Model):
    """A traffic pattern: ``rate`` connects per second from ``source`` to ``destination``."""

    source: str
    destination: str
    port: int = Field(ge=1, le=65535)
    rate: float = Field(default=1.0, gt=0, le=1000)
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"{self.source}->{self.destination}:{self.port}"


class Topology(_Model):
    """A whole lab: hosts, containers on them, external networks, traffic."""

    name: str = "lab"
    description: str = ""
    hosts: list[Host] = Field(min_length=1)
    containers: list[Container] = Field(default_factory=list)
    external: list[External] = Field(default_factory=list)
    # Address of the lab DNS server (dnsmasq); it must lie in an external subnet.
    dns_server: ipaddress.IPv4Address | None = None
    traffic: list[Traffic] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _lab_name(cls, value: str) -> str:
        check_lab_name(value)
        return value

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def container(self, name: str) -> Container:
        for c in self.containers:
            if c.name == name:
                return c
        raise KeyError(name)

    def containers_on(self, host: str) -> list[Container]:
        return [c for c in self.containers if c.host == host]

    def pods(self) -> dict[str, list[Container]]:
        """Containers by pod name, in topology order (the first is the pod's main one)."""
        out: dict[str, list[Container]] = {}
        for c in self.containers:
            out.setdefault(c.pod_name, []).append(c)
        return out

    def runtime(self, host: str) -> Runtime:
        return self.host(host).runtime

    def servers(self) -> list[tuple[External, Server]]:
        return [(e, s) for e in self.external for s in e.servers]

    def dns_records(self) -> dict[str, str]:
        return {n: str(s.address) for _, s in self.servers() for n in s.dns}


def check_lab_name(value: str) -> None:
    if not LAB_NAME_RE.match(value):
        raise ValueError(
            f"bad lab name {value!r}: a lower-case letter, then letters or digits "
            "(at most 12, no '-')"
        )


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _cross_check(t: Topology) -> list[FieldError]:
    errors: list[FieldError] = []
    host_names: set[str] = set()
    for i, h in enumerate(t.hosts):
        if h.name in host_names:
            errors.append(FieldError(f"hosts[{i}].name", f"duplicate host name {h.name!r}"))
        host_names.add(h.name)

    container_names: set[str] = set()
    for i, c in enumerate(t.containers):
        if c.name in container_names:
            errors.append(
                FieldError(f"containers[{i}].name", f"duplicate container name {c.name!r}")
            )
        container_names.add(c.name)
        if c.host not in host_names:
            errors.append(FieldError(f"containers[{i}].host", f"unknown host {c.host!r}"))

    errors += _check_pods(t, container_names)
    pod_names = set(t.pods())

    server_names: set[str] = set()
    subnets: list[tuple[str, ipaddress.IPv4Network]] = [
        (f"hosts[{i}].subnet", h.subnet) for i, h in enumerate(t.hosts) if h.subnet
    ]
    ext_names: set[str] = set()
    for i, e in enumerate(t.external):
        if e.name in ext_names:
            errors.append(FieldError(f"external[{i}].name", f"duplicate network name {e.name!r}"))
        ext_names.add(e.name)
        subnets.append((f"external[{i}].subnet", e.subnet))
        addresses: set[ipaddress.IPv4Address] = set()
        for j, s in enumerate(e.servers):
            path = f"external[{i}].servers[{j}]"
            if s.name in server_names | container_names | host_names | pod_names:
                errors.append(FieldError(f"{path}.name", f"duplicate name {s.name!r}"))
            server_names.add(s.name)
            if s.address not in e.subnet or s.address in (
                e.subnet.network_address,
                e.subnet.broadcast_address,
            ):
                errors.append(
                    FieldError(
                        f"{path}.address", f"{s.address} is not a host address of {e.subnet}"
                    )
                )
            elif s.address == next(e.subnet.hosts()):
                errors.append(
                    FieldError(
                        f"{path}.address",
                        f"{s.address} is reserved for the lab router on {e.subnet}",
                    )
                )
            if s.address in addresses:
                errors.append(FieldError(f"{path}.address", f"duplicate address {s.address}"))
            addresses.add(s.address)

    for a in range(len(subnets)):
        for b in range(a + 1, len(subnets)):
            (pa, na), (pb, nb) = subnets[a], subnets[b]
            if na.overlaps(nb):
                errors.append(FieldError(pb, f"subnet {nb} overlaps {na} ({pa})"))

    records = t.dns_records()
    if t.dns_server is not None:
        if not any(t.dns_server in e.subnet for e in t.external):
            errors.append(FieldError("dnsServer", f"{t.dns_server} is not in any external subnet"))
        elif any(t.dns_server == s.address for _, s in t.servers()):
            errors.append(FieldError("dnsServer", f"{t.dns_server} is a server's address"))
        elif any(t.dns_server == next(e.subnet.hosts()) for e in t.external):
            errors.append(FieldError("dnsServer", f"{t.dns_server} is reserved for the router"))
    elif records:
        errors.append(FieldError("dnsServer", "servers declare DNS names but no dnsServer is set"))

    workloads = container_names | pod_names
    destinations = host_names | workloads | server_names | set(records)
    for i, tr in enumerate(t.traffic):
        if tr.source not in workloads:
            errors.append(
                FieldError(f"traffic[{i}].source", f"unknown container or pod {tr.source!r}")
            )
        if tr.destination not in destinations:
            try:
                ipaddress.IPv4Address(tr.destination)
            except ValueError:
                errors.append(
                    FieldError(
                        f"traffic[{i}].destination",
                        f"unknown destination {tr.destination!r} (not a container, pod, "
                        "host, server, DNS name or IPv4 address)",
                    )
                )
    return errors


def _check_pods(t: Topology, container_names: set[str]) -> list[FieldError]:
    """The containers of a pod on a containerd host share its host, namespace,
    network namespace and labels: they must agree, and a pod name must not name
    a container of another pod (``connect``, ``exec`` take either name)."""
    errors: list[FieldError] = []
    runtimes = {h.name: h.runtime for h in t.hosts}
    first: dict[str, tuple[int, Container]] = {}
    labels: dict[str, dict[str, str]] = {}
    ports: dict[str, set[int]] = {}
    for i, c in enumerate(t.containers):
        pod = c.pod_name
        if pod not in first:
            first[pod] = (i, c)
            labels[pod] = dict(c.labels)
            ports[pod] = set(c.ports)
            if runtimes.get(c.host) == "containerd" and pod in container_names and pod != c.name:
                errors.append(FieldError(f"containers[{i}].pod",
                                         f"pod name {pod!r} is the name of another container"))
            continue
        j, main = first[pod]
        if "containerd" not in (runtimes.get(c.host), runtimes.get(main.host)):
            continue  # Podman: containers only carry the pod's name as a label
        where = f"pod {pod!r} (containers[{j}])"
        if c.host != main.host:
            errors.append(FieldError(f"containers[{i}].host",
                                     f"{c.host!r}, but {where} runs on {main.host!r}"))
        if c.namespace != main.namespace:
            errors.append(FieldError(f"containers[{i}].namespace",
                                     f"{c.namespace!r}, but {where} is in {main.namespace!r}"))
        for k, v in sorted(c.labels.items()):
            if labels[pod].setdefault(k, v) != v:
                errors.append(FieldError(f"containers[{i}].labels.{k}",
                                         f"{v!r}, but {where} has {k}={labels[pod][k]!r}"))
        clash = sorted(ports[pod] & set(c.ports))
        if clash:
            errors.append(FieldError(f"containers[{i}].ports",
                                     f"port {', '.join(map(str, clash))} is already served in "
                                     f"{where} (its containers share one network namespace)"))
        ports[pod] |= set(c.ports)
    return errors


def parse_topology(data: dict[str, Any], *, source: str = "") -> Topology:
    """Validate a topology document (already parsed from YAML)."""
    if not isinstance(data, dict):
        raise TopologyError([FieldError("", "a topology must be a mapping")], source)
    try:
        topology = Topology.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            errors.append(FieldError(_loc(tuple(err["loc"])), msg))
        raise TopologyError(errors, source) from None
    problems = _cross_check(topology)
    if problems:
        raise TopologyError(problems, source)
    return topology


def shipped_topologies() -> list[str]:
    folder = resources.files("cnnf.lab") / "topologies"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_topology(ref: str | Path) -> Topology:
    """Load a topology from a YAML file path or the name of a shipped topology."""
    path = Path(ref)
    try:
        is_path = path.suffix in (".yaml", ".yml") or path.exists()
    except OSError:
        is_path = False
    if is_path:
        if not path.is_file():
            raise TopologyError([FieldError("", "no such file")], str(path))
        text = path.read_text()
        source = str(path)
    else:
        name = str(ref)
        if name not in shipped_topologies():
            raise TopologyError(
                [
                    FieldError(
                        "",
                        f"no topology file or shipped topology named {name!r} "
                        f"(shipped: {', '.join(shipped_topologies())})",
                    )
                ],
                name,
            )
        text = (resources.files("cnnf.lab") / "topologies" / f"{name}.yaml").read_text()
        source = f"{name}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError([FieldError("", f"not valid YAML: {exc}")], source) from None
    return parse_topology(data, source=source)
