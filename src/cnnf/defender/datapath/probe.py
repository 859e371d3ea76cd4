"""What the kernel and tools of a namespace support, to pick a backend.

The iptables backend needs the NFQUEUE target and the ``set`` match. The nft
native ``queue`` statement is probed too (``nft -c``: checked by the kernel,
never committed): where it exists an nftables backend could replace iptables
behind :class:`~cnnf.defender.datapath.backend.FirewallBackend`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnf.defender.datapath.backend import CHAIN_PREFIX, DatapathConfig, FirewallBackend
from cnnf.defender.datapath.iptables import IptablesBackend
from cnnf.defender.datapath.netns import DatapathError, NetnsRef

_PROBE_CHAIN = f"{CHAIN_PREFIX}PROBE"


@dataclass(frozen=True, slots=True)
class Capabilities:
    iptables: str  # "iptables v1.8.9 (nf_tables)", "" if missing
    nfqueue_target: bool
    nft_queue: bool
    ipset: bool
    br_netfilter: bool

    @property
    def iptables_backend_ok(self) -> bool:
        return bool(self.iptables) and self.nfqueue_target and self.ipset


def probe(netns: str | NetnsRef | None = None) -> Capabilities:
    ref = NetnsRef.of(netns)

    def ok(*cmd: str, input: str | None = None) -> bool:
        try:
            return ref.run(*cmd, input=input, check=False).returncode == 0
        except DatapathError:  # the tool is missing
            return False

    try:
        version = ref.run("iptables", "-V").stdout.strip()
    except DatapathError:
        version = ""
    # A real rule in a tagged chain (removed at once; cleanup() would catch it).
    nfqueue = bool(version) and ok(
        "iptables-restore",
        "--noflush",
        input=f"*filter\n:{_PROBE_CHAIN} - [0:0]\n"
        f"-A {_PROBE_CHAIN} -p tcp -j NFQUEUE --queue-num 65535 --queue-bypass\nCOMMIT\n",
    )
    if nfqueue:
        ref.run(
            "iptables-restore",
            "--noflush",
            input=f"*filter\n-F {_PROBE_CHAIN}\n-X {_PROBE_CHAIN}\nCOMMIT\n",
        )
    nft_queue = ok(
        "nft",
        "-c",
        "add table inet cnnfprobe; "
        "add chain inet cnnfprobe c { type filter hook forward priority 0; }; "
        "add rule inet cnnfprobe c queue num 1 bypass",
    )
    return Capabilities(
        iptables=version,
        nfqueue_target=nfqueue,
        nft_queue=nft_queue,
        ipset=ok("ipset", "list", "-n"),
        br_netfilter=ok("sysctl", "-n", "net.bridge.bridge-nf-call-iptables"),
    )


def select_backend(
    config: DatapathConfig, netns: str | NetnsRef | None = None
) -> tuple[FirewallBackend, Capabilities]:
    """The backend to use here, or a DatapathError saying what is missing."""
    caps = probe(netns)
    if not caps.iptables_backend_ok:
        missing = [
            name
            for name, have in (
                ("iptables", bool(caps.iptables)),
                ("the NFQUEUE target", caps.nfqueue_target),
                ("ipset", caps.ipset),
            )
            if not have
        ]
        raise DatapathError(
            f"no usable firewall backend: missing {', '.join(missing)} "
            "(install the iptables and ipset packages; the kernel needs nfnetlink_queue)"
        )
    return IptablesBackend(config, netns), caps
