"""The Defender's configuration: one object, built once from the command line.

Validation happens here, at the edge, with messages that name the option and
the bad value (:class:`ConfigError`); the runtime trusts what it gets.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cnnf.errors import CnnfError

DEFAULT_STATE_DIR = Path("/var/lib/cnnf/defender")

_LABEL = re.compile(r"^[A-Za-z0-9_.\-/]+=.*$")


class ConfigError(CnnfError):
    """A bad Defender option; the message names the option and the value."""


def default_state_dir(netns: str | None) -> Path:
    """``/var/lib/cnnf/defender``, or a sub-directory per namespace so that several
    Defenders (one per lab host) on one machine keep apart."""
    if not netns:
        return DEFAULT_STATE_DIR
    return DEFAULT_STATE_DIR / f"netns-{Path(netns).name}"


def parse_labels(values: list[str] | tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        if not _LABEL.match(v):
            raise ConfigError(f"--label {v!r}: expected KEY=VALUE")
        k, _, val = v.partition("=")
        out[k] = val
    return out


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics {value!r}: expected HOST:PORT (e.g. 127.0.0.1:9464)")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class DefenderConfig:
    """Everything ``cnnf defender run`` was told.

    Exactly one policy source: ``policy_file`` (standalone) or ``console``
    (managed; ``token`` is needed only until the first enrollment succeeded).
    ``block_mode`` None means "as the policy says". ``cluster_inventory`` is a
    ``ClusterInventory`` JSON file for standalone Defenders that should know the
    other hosts' workloads (what a Console would send).
    """

    policy_file: Path | None = None
    console: str | None = None
    token: str | None = None
    ca: Path | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    docker_host: str | None = None
    runtime: str = "auto"  # auto | docker | cri
    cri_socket: str | None = None
    # Networks whose addresses are queued before discovery names them, beside
    # the bridges' networks (a CNI without a bridge: Calico, Cilium).
    container_nets: tuple[str, ...] = ()
    hostname: str = field(default_factory=socket.gethostname)
    host_labels: dict[str, str] = field(default_factory=dict)
    cluster: str = ""
    netns: str | None = None
    block_mode: Literal["reset", "drop"] | None = None
    fail_closed: bool = False
    queues: int = 1
    queue_num: int = 4200
    output: str | None = None  # a file path, or "-" for stdout
    metrics: tuple[str, int] | None = None
    repair_interval: float = 5.0
    report_interval: float = 1.0
    audit_window: float = 5.0
    cluster_inventory: Path | None = None
    ipv6: bool = True
    dns: bool = True
    admission_rate: int = 1000  # new connections/s per source into the queue; 0: off
    fastpath: bool = True
    fastpath_ttl: float = 60.0

    def __post_init__(self) -> None:
        if (self.policy_file is None) == (self.console is None):
            raise ConfigError("give exactly one of --policy FILE (standalone) "
                              "or --console URL (managed)")
        if self.console is not None:
            urls = [u.strip() for u in self.console.split(",")]
            for u in urls:
                if not u.startswith(("http://", "https://")):
                    raise ConfigError(f"--console {self.console!r}: {u!r} is not an http:// "
                                      f"or https:// URL (several replicas: URL,URL,...)")
        if self.policy_file is not None and not self.policy_file.is_file():
            raise ConfigError(f"--policy {str(self.policy_file)!r}: no such file")
        if self.ca is not None and not self.ca.is_file():
            raise ConfigError(f"--ca {str(self.ca)!r}: no such file")
        if not 1 <= self.queues <= 16:
            raise ConfigError(f"--queues {self.queues}: expected 1 to 16")
        if self.block_mode not in (None, "reset", "drop"):
            raise ConfigError(f"--block-mode {self.block_mode!r}: expected reset or drop")
        if not 0.5 <= self.repair_interval <= 3600:
            raise ConfigError(f"--repair-interval {self.repair_interval}: expected 0.5 to 3600 s")
        if not 0 <= self.audit_window <= 3600:
            raise ConfigError(f"--audit-window {self.audit_window}: expected 0 to 3600 s")
        if self.netns is not None:
            path = Path(self.netns if "/" in self.netns else f"/run/netns/{self.netns}")
            if not path.exists():
                raise ConfigError(f"--netns {self.netns!r}: no such network namespace ({path})")
        if self.cluster_inventory is not None and not self.cluster_inventory.is_file():
            raise ConfigError(f"--cluster-inventory {str(self.cluster_inventory)!r}: no such file")
        if not 0 <= self.admission_rate <= 1_000_000:
            raise ConfigError(f"--admission-rate {self.admission_rate}: expected 0 (off) to "
                              "1000000 new connections per second and source")
        if not 1 <= self.fastpath_ttl <= 86400:
            raise ConfigError(f"--fastpath-ttl {self.fastpath_ttl}: expected 1 to 86400 s")
        if not self.hostname:
            raise ConfigError("--hostname: must not be empty")
        if self.runtime not in ("auto", "docker", "cri"):
            raise ConfigError(f"--runtime {self.runtime!r}: expected auto, docker or cri")
        if self.runtime == "docker" and self.cri_socket:
            raise ConfigError("--cri-socket is for --runtime cri (or auto), not docker")
        if self.runtime == "cri" and self.docker_host:
            raise ConfigError("--docker-host is for --runtime docker (or auto), not cri")
        if self.cri_socket and self.docker_host:
            raise ConfigError("give --cri-socket or --docker-host, not both")
        if self.cri_socket and not (self.cri_socket.startswith("/")
                                    or self.cri_socket.startswith("unix:///")):
            raise ConfigError(f"--cri-socket {self.cri_socket!r}: expected a unix socket "
                              "(/run/containerd/containerd.sock or unix:///...)")
        for net in self.container_nets:
            try:
                parsed = ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"--container-net {net!r}: expected a CIDR such as "
                                  "10.244.1.0/24") from None
            if parsed.version != 4 or parsed.prefixlen < 16:
                # what the datapath can queue before discovery names an address
                raise ConfigError(f"--container-net {net!r}: only IPv4 networks of /16 "
                                  "or smaller can be queued before their addresses are "
                                  "named (give the node's own pod CIDR, e.g. 10.244.1.0/24)")

    @property
    def admission_burst(self) -> int:
        """hashlimit allows bursts of at most 10,000."""
        return max(1, min(10_000, 2 * self.admission_rate))

    @property
    def managed(self) -> bool:
        return self.console is not None

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"
