"""The iptables backend: iptables/ip6tables (1.8, nf_tables backend) with the
NFQUEUE target, and ipset for the protected addresses.

Rules (filter table, per family; L = local set, H = host set, C = cluster set,
SYN = ``-p tcp --syn -m conntrack --ctstate NEW``, Q = the SYN queue(s))::

    CNNF-FORWARD  REJECT tcp-reset for the reject mark      (block mode reset)
                  SYN from L -> Q                            outbound, containers
                  SYN to L, source not in C -> Q             inbound, containers
                  UDP from port 53 to L -> DNS queue         (dns on; always bypass)
    CNNF-INPUT    mark REJECT; SYN from L -> Q (container to this host);
                  SYN to H, source not in C -> Q; UDP from 53 to H -> DNS queue
    CNNF-OUTPUT   mark REJECT; SYN from H -> Q (this host outbound);
                  SYN to L, source not in C -> Q; UDP from 53 to L -> DNS queue

Each built-in chain gets one jump, first, commented ``cnnf``. All changes go
through ``iptables-restore --noflush`` so each install or repair is atomic.
"""

from __future__ import annotations

import ipaddress
import itertools
import shlex
import threading
from collections import Counter
from collections.abc import Iterable

from cnnf.defender.datapath.backend import (
    CHAIN_PREFIX,
    SET_PREFIX,
    TAG,
    AddressSet,
    DatapathConfig,
    InstallReport,
)
from cnnf.defender.datapath.netns import DatapathError, NetnsRef

BUILTIN = ("FORWARD", "INPUT", "OUTPUT")
_TOOLS = {
    4: ("iptables", "iptables-save", "iptables-restore"),
    6: ("ip6tables", "ip6tables-save", "ip6tables-restore"),
}
_SET_FAMILY = {4: "inet", 6: "inet6"}
# Room for a large cluster's protected workloads (the default maxelem is 65536).
_SET_SIZE = "hashsize 1024 maxelem 1048576"
_BRIDGE_SYSCTL = {4: "net.bridge.bridge-nf-call-iptables", 6: "net.bridge.bridge-nf-call-ip6tables"}


def address_family(address: str) -> int:
    try:
        return ipaddress.ip_address(address).version
    except ValueError as exc:
        raise DatapathError(f"not an IP address: {address!r}") from exc


def _is_tagged(line: str) -> bool:
    """A saved rule line carrying our comment, or one of our chains."""
    if line.startswith((f"-A {CHAIN_PREFIX}", f":{CHAIN_PREFIX}")):
        return True
    if not line.startswith("-A ") or "--comment" not in line:
        return False
    tokens = shlex.split(line)
    return any(a == "--comment" and b == TAG for a, b in itertools.pairwise(tokens))


def _tagged_state(saved: str) -> dict[str, list[str]]:
    """table -> our lines (chain declarations without counters, and rules)."""
    out: dict[str, list[str]] = {}
    table = ""
    for raw in saved.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:]
        elif _is_tagged(line):
            if line.startswith(":"):
                line = line.split()[0]
            out.setdefault(table, []).append(line)
    return out


def _removal_script(state: dict[str, list[str]]) -> str:
    chunks = []
    for table, lines in state.items():
        body = [
            f"-D {ln[3:]}"
            for ln in lines
            if ln.startswith("-A ") and not ln.startswith(f"-A {CHAIN_PREFIX}")
        ]
        chains = [ln[1:] for ln in lines if ln.startswith(":")]
        body += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
        if body:
            chunks.append("\n".join([f"*{table}", *body, "COMMIT"]))
    return "\n".join(chunks) + "\n" if chunks else ""


class IptablesBackend:
    """iptables + ipset, in the network namespace ``netns``."""

    name = "iptables"

    def __init__(self, config: DatapathConfig | None = None, netns: str | NetnsRef | None = None):
        self.config = config or DatapathConfig()
        self.netns = NetnsRef.of(netns)
        self._members: dict[str, set[str]] = {
            w.set_name(f): set() for w in AddressSet for f in self.config.families
        }
        self._expected: dict[int, list[str]] = {}
        self._lock = threading.RLock()

    # -- rules ------------------------------------------------------------------

    def _queue_target(self) -> str:
        c = self.config
        if c.queues == 1:
            target = f"-j NFQUEUE --queue-num {c.queue_num}"
        else:
            target = f"-j NFQUEUE --queue-balance {c.queue_num}:{c.queue_num + c.queues - 1}"
        return target + (" --queue-bypass" if c.fail_open else "")

    def rules(self, family: int) -> list[str]:
        """The ``iptables-restore`` lines (filter table) this backend installs."""
        c = self.config
        local, host, cluster = (w.set_name(family) for w in AddressSet)
        syn = "-p tcp --syn -m conntrack --ctstate NEW"
        q = self._queue_target()
        dnsq = f"-j NFQUEUE --queue-num {c.dns_queue} --queue-bypass"
        not_cluster = f"-m set ! --match-set {cluster} src"
        plan = {
            "FORWARD": [
                f"-m set --match-set {local} src {q}",
                f"-m set --match-set {local} dst {not_cluster} {q}",
                local,
            ],
            "INPUT": [
                f"-m set --match-set {local} src {q}",
                f"-m set --match-set {host} dst {not_cluster} {q}",
                host,
            ],
            "OUTPUT": [
                f"-m set --match-set {host} src {q}",
                f"-m set --match-set {local} dst {not_cluster} {q}",
                local,
            ],
        }
        lines = [f":{CHAIN_PREFIX}{b} - [0:0]" for b in BUILTIN]
        for builtin, (out_rule, in_rule, dns_set) in plan.items():
            chain = f"{CHAIN_PREFIX}{builtin}"
            if c.block_mode == "reset":
                mark = f"{c.reject_mark:#x}/{c.reject_mark:#x}"
                lines.append(
                    f"-A {chain} -p tcp -m mark --mark {mark} -j REJECT --reject-with tcp-reset"
                )
            lines.append(f"-A {chain} {syn} {out_rule}")
            lines.append(f"-A {chain} {syn} {in_rule}")
            if c.dns:
                lines.append(
                    f"-A {chain} -p udp --sport 53 -m set --match-set {dns_set} dst {dnsq}"
                )
        lines += [f"-I {b} 1 -m comment --comment {TAG} -j {CHAIN_PREFIX}{b}" for b in BUILTIN]
        return lines

    def _save(self, family: int) -> str:
        return self.netns.run(_TOOLS[family][1]).stdout

    def _restore(self, family: int, script: str) -> None:
        if script.strip():
            self.netns.run(_TOOLS[family][2], "--noflush", input=script)

    def _remove_rules(self, family: int) -> list[str]:
        state = _tagged_state(self._save(family))
        self._restore(family, _removal_script(state))
        return [f"ipv{family} {t}: {ln}" for t, lines in state.items() for ln in lines]

    def _install_rules(self, family: int) -> None:
        # One transaction: drop whatever of ours is there, then add the rules.
        state = _tagged_state(self._save(family))
        script = _removal_script(state)
        script += "\n".join(["*filter", *self.rules(family), "COMMIT"]) + "\n"
        self._restore(family, script)
        self._expected[family] = _tagged_state(self._save(family)).get("filter", [])

    # -- sets -------------------------------------------------------------------

    def _set_names(self) -> list[str]:
        out = self.netns.run("ipset", "list", "-n").stdout
        return [n for n in out.split() if n.startswith(SET_PREFIX)]

    def _create_sets(self, names: Iterable[str]) -> None:
        script = []
        for name in names:
            family = int(name[-1])
            script.append(f"create {name} hash:ip family {_SET_FAMILY[family]} {_SET_SIZE} -exist")
            script += [f"add {name} {a} -exist" for a in sorted(self._members[name])]
        if script:
            self.netns.run("ipset", "restore", input="\n".join(script) + "\n")

    # -- the backend API --------------------------------------------------------

    def install(self) -> InstallReport:
        with self._lock:
            report = InstallReport(removed_leftovers=self.remove())
            report.notes.append(self.netns.run("iptables", "-V").stdout.strip())
            for family in self.config.families:
                self._bridge_sysctl(family, report)
            self._create_sets(self._members)
            for family in self.config.families:
                self._install_rules(family)
            return report

    def _bridge_sysctl(self, family: int, report: InstallReport) -> None:
        key = _BRIDGE_SYSCTL[family]
        got = self.netns.run("sysctl", "-n", key, check=False)
        if got.returncode != 0:
            self.netns.run("modprobe", "br_netfilter", check=False)
            got = self.netns.run("sysctl", "-n", key, check=False)
        if got.returncode != 0:
            report.notes.append(
                f"{key} is not available (br_netfilter not loaded): "
                "bridged container traffic is NOT filtered"
            )
        elif got.stdout.strip() != "1":
            self.netns.run("sysctl", "-q", "-w", f"{key}=1")
            report.sysctls[key] = "1"
            report.notes.append(f"set {key}=1 so bridged container traffic crosses FORWARD")

    def remove(self) -> list[str]:
        with self._lock:
            removed: list[str] = []
            for family in (4, 6):
                removed += self._remove_rules(family)
            names = self._set_names()
            if names:
                self.netns.run("ipset", "restore", input="".join(f"destroy {n}\n" for n in names))
            removed += [f"ipset {n}" for n in names]
            self._expected.clear()
            return removed

    def check_and_repair(self) -> list[str]:
        with self._lock:
            if not self._expected:
                return []
            repaired: list[str] = []
            present = set(self._set_names())
            missing_sets = [n for n in self._members if n not in present]
            if missing_sets:
                self._create_sets(missing_sets)
                repaired += [
                    f"ipset {n} (recreated with {len(self._members[n])} members)"
                    for n in missing_sets
                ]
            for name in self._members:
                if name in missing_sets:
                    continue
                have = self._set_members(name)
                lost = self._members[name] - have
                if lost:
                    self.netns.run(
                        "ipset", "restore", input="".join(f"add {name} {a} -exist\n" for a in lost)
                    )
                    repaired.append(f"ipset {name}: {len(lost)} member(s) put back")
            for family in self.config.families:
                expected = self._expected.get(family, [])
                current = _tagged_state(self._save(family)).get("filter", [])
                if sorted(current) != sorted(expected):
                    gone = Counter(expected) - Counter(current)
                    extra = Counter(current) - Counter(expected)
                    self._install_rules(family)
                    repaired += [f"ipv{family} missing: {ln}" for ln in gone.elements()]
                    repaired += [f"ipv{family} unexpected: {ln}" for ln in extra.elements()]
            return repaired

    def _set_members(self, name: str) -> set[str]:
        out = self.netns.run("ipset", "save", name, check=False).stdout
        return {ln.split()[2] for ln in out.splitlines() if ln.startswith("add ")}

    def _name(self, which: AddressSet, address: str) -> tuple[str, str]:
        which, family = AddressSet(which), address_family(address)
        if family not in self.config.families:
            raise DatapathError(f"IPv6 is off in this datapath: cannot add {address}")
        return which.set_name(family), str(ipaddress.ip_address(address))

    def set_addresses(self, which: AddressSet, addresses: Iterable[str]) -> None:
        which = AddressSet(which)
        wanted: dict[str, set[str]] = {which.set_name(f): set() for f in self.config.families}
        for address in addresses:
            name, addr = self._name(which, address)
            wanted[name].add(addr)
        with self._lock:
            script = []
            for name, members in wanted.items():
                family = _SET_FAMILY[int(name[-1])]
                tmp = f"{SET_PREFIX}tmp-{name[len(SET_PREFIX) :]}"
                script.append(f"create {tmp} hash:ip family {family} {_SET_SIZE} -exist")
                script.append(f"flush {tmp}")
                script += [f"add {tmp} {a} -exist" for a in sorted(members)]
                script += [
                    f"create {name} hash:ip family {family} {_SET_SIZE} -exist",
                    f"swap {tmp} {name}",
                    f"destroy {tmp}",
                ]
            self.netns.run("ipset", "restore", input="\n".join(script) + "\n")
            self._members.update(wanted)

    def add_address(self, which: AddressSet, address: str) -> None:
        name, addr = self._name(which, address)
        with self._lock:
            self.netns.run("ipset", "add", "-exist", name, addr)
            self._members[name].add(addr)

    def remove_address(self, which: AddressSet, address: str) -> None:
        name, addr = self._name(which, address)
        with self._lock:
            self.netns.run("ipset", "del", "-exist", name, addr)
            self._members[name].discard(addr)

    def addresses(self, which: AddressSet) -> frozenset[str]:
        which = AddressSet(which)
        with self._lock:
            return frozenset().union(
                *(self._members[which.set_name(f)] for f in self.config.families)
            )


def cleanup(netns: str | NetnsRef | None = None) -> list[str]:
    """Remove every CNNF rule, chain and set from a namespace (e.g. after a crash)."""
    return IptablesBackend(DatapathConfig(), netns).remove()
