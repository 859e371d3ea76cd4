"""The iptables backend: iptables/ip6tables (1.8, nf_tables backend) with the
NFQUEUE target, ipset for the protected addresses and the fast path, and (for
fail-closed) one native nftables chain.

Rules (filter table, per family; L = local set, H = host set, C = cluster set,
SYN = ``-p tcp --syn -m conntrack --ctstate NEW,UNTRACKED``)::

    CNNF-FORWARD  (heartbeat fresh) -> CNNF-SPOOF              anti-spoofing, first
                  REJECT tcp-reset for the reject mark      (block mode reset)
                  SYN from L -> CNNF-QUEUE                   outbound, containers
                  SYN to L, source not in C -> CNNF-QUEUE    inbound, containers
                  UDP replies from port 53 to L -> DNS queue (dns on; always bypass)
    CNNF-INPUT    (heartbeat fresh) -> CNNF-SPOOF; mark REJECT; SYN from L -> CNNF-QUEUE
                  (container to this host); SYN to H, source not in C -> CNNF-QUEUE;
                  UDP from 53 to H -> DNS queue
    CNNF-OUTPUT   mark REJECT; SYN from H -> CNNF-QUEUE;
                  SYN to L, source not in C -> CNNF-QUEUE; UDP from 53 to L -> DNS queue
    CNNF-SPOOF    per protected container's port (the host end of its veth:
                  ``-m physdev --physdev-in`` on a bridge, ``-i`` when routed):
                  its own addresses (and IPv6 link-local) return, anything
                  else from the port -> DROP (that rule's counter: the port's
                  forged packets)
    CNNF-QUEUE    while the heartbeat set cnnf-alive is fresh: the fast path,
                  (src, dport, dst) in cnnf-fpa -> ACCEPT,
                  in cnnf-fpr -> REJECT tcp-reset, in cnnf-fpd -> DROP;
                  then admission: above the per-source hashlimit -> CNNF-OVERLOAD
                  (sources in C: per address, since a queued SYN from C is
                  an outbound one of this host's workloads, C holding other
                  hosts' too; any other source: per /24 or /64, in tables of
                  their own), and for
                  sources in cnnf-busy (the verdict loop could not keep up
                  with them) above a tenth of it -> CNNF-OVERLOAD (outside
                  ones: a tenth for all of them together);
                  (fail-closed) set the pending mark; NFQUEUE --queue-bypass
    CNNF-OVERLOAD add the source to cnnf-over (packet counters); DROP

Fail-closed adds the nftables table ``inet cnnf``: base chains after the
filter table's (priority filter + 10) that reject with a TCP reset any SYN still
carrying the pending mark, which only a SYN that bypassed the queue (no verdict
process) does; the verdict loop clears the mark on the SYNs it accepts.

Under a flood, in both failure modes (a busy Defender is never "no Defender":
nothing is accepted undecided, only a queue with no process bound is bypassed):

0. a protected container can only send from its own addresses (CNNF-SPOOF):
   a forged source address (a neighbour's, to be decided as the neighbour, or
   random ones, to get a limit and a line per forged source) is dropped first
   and counted per port;
1. repeats of decided triples are answered here from the fast-path sets;
2. a source above ``admission_rate`` new SYNs a second is dropped here and
   counted per source in ``cnnf-over`` (overload). This host's sources have a
   bucket each; sources from elsewhere, which no rule here can check, share
   one per /24 (/64), in separate tables: forged outside sources can fill
   those tables (65,536 buckets; a new bucket's SYNs are then dropped by
   hashlimit, never let through), never the local ones;
3. what is admitted is read at once by the verdict worker into its fair waiting
   room (:mod:`cnnf.defender.datapath.fairqueue`: a bounded FIFO per line,
   decided round robin; a line per local address, per outside prefix, 16 of
   those at most and one more shared by the rest), so another source's SYN
   never waits behind the flooder's; the flooder's SYNs beyond its share are
   dropped by the worker and counted against it (overload too);
4. when the worker falls behind even so (it decides a source's SYNs over
   0.2 s after reading them, or its room is full and it drops the oldest SYNs
   of the source holding the most: a Defender short of CPU), the
   Defender puts that source in ``cnnf-busy`` and its limit becomes a tenth
   (``busy_rate``) for as long as it goes on flooding: its flood is then
   dropped here, before the queue, and the others' SYNs, at their full rate,
   still get through.
   Why in the kernel too: reading a SYN in Python costs a fraction of deciding
   it, but not nothing; in the lab, with the worker held to 2 % of a core, the
   worker could not even read the 1,000 a second admitted from one source.

With no Defender (killed; heartbeat lapsed within 3 s) the fast path, the
admission limits and anti-spoofing stop with the heartbeat: fail-open then
lets SYNs through as with no firewall (a dead Defender's port bindings could
name an interface another container reused meanwhile), fail-closed refuses
every new connection (forged or not).

Seen in the root test (tests/defender/datapath/test_datapath_root.py, c1
scanning c2, the worker under a CPU quota) before the waiting room: at 10 % of
a core 4 to 7 of c2's 130 to 180 connections timed out; at 2 % all 16 did, the
kernel queue full of c1's SYNs (``/proc/net/netfilter/nfnetlink_queue``: 4,096
waiting, 645 and 900 ``queue_dropped``).

Each built-in chain gets one jump, first, commented ``cnnf``. Every change of
rules goes through one ``iptables-restore --noflush`` transaction per family:
an install flushes and refills an earlier run's chains in the same transaction
(no moment without rules), and the sets an earlier run left are refilled by
``swap``.
"""

from __future__ import annotations

import ipaddress
import itertools
import shlex
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable

from cnnf.defender.datapath.backend import (
    BUSY_TIMEOUT,
    CHAIN_PREFIX,
    FASTPATH_GRACE,
    HEARTBEAT_TIMEOUT,
    OUTSIDE_PREFIX,
    SET_PREFIX,
    TAG,
    AddressSet,
    DatapathConfig,
    FastEntry,
    FastVerdict,
    InstallReport,
    Port,
    alive_set,
    bound_set,
    busy_outside_set,
    busy_set,
    overload_outside_set,
    overload_set,
)
from cnnf.defender.datapath.netns import DatapathError, NetnsRef

BUILTIN = ("FORWARD", "INPUT", "OUTPUT")
QUEUE_CHAIN = f"{CHAIN_PREFIX}QUEUE"
SPOOF_CHAIN = f"{CHAIN_PREFIX}SPOOF"
OVERLOAD_CHAIN = f"{CHAIN_PREFIX}OVERLOAD"
NFT_TABLE = "inet cnnf"  # fail-closed: rejects SYNs that bypassed the queue

_TOOLS = {
    4: ("iptables", "iptables-save", "iptables-restore"),
    6: ("ip6tables", "ip6tables-save", "ip6tables-restore"),
}
_SET_FAMILY = {4: "inet", 6: "inet6"}
# Room for a large cluster's protected workloads (the default maxelem is 65536).
_SET_SIZE = "hashsize 1024 maxelem 1048576"
_OVERLOAD_SIZE = "hashsize 1024 maxelem 65536"
_HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}  # every address
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


def _twin(name: str) -> str:
    """The temporary set swapped with ``name`` (filled, then swapped in)."""
    return f"{SET_PREFIX}tmp-{name[len(SET_PREFIX):]}"


def _builtin_rules(saved: str) -> dict[str, list[str]]:
    """The filter table's built-in chains -> their rules, in order."""
    out: dict[str, list[str]] = {b: [] for b in BUILTIN}
    table = ""
    for raw in saved.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:]
        elif table == "filter" and line.startswith("-A "):
            chain = line.split()[1]
            if chain in out:
                out[chain].append(line)
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
    """iptables + ipset (+ one nftables table when fail-closed), in ``netns``."""

    name = "iptables"

    def __init__(self, config: DatapathConfig | None = None, netns: str | NetnsRef | None = None):
        self.config = config or DatapathConfig()
        self.netns = NetnsRef.of(netns)
        self._members: dict[str, set[str]] = {
            w.set_name(f): set() for w in AddressSet for f in self.config.families
        }
        self._ports: dict[str, Port] = {}
        self._expected: dict[int, list[str]] = {}
        self._nft_reject = False  # the fail-closed reject table is installed
        self._lock = threading.RLock()

    # -- rules ------------------------------------------------------------------

    def _queue_target(self) -> str:
        c = self.config
        if c.queues == 1:
            target = f"-j NFQUEUE --queue-num {c.queue_num}"
        else:
            target = f"-j NFQUEUE --queue-balance {c.queue_num}:{c.queue_num + c.queues - 1}"
        # No verdict process: bypass (fail-open: accepted; fail-closed: the nft
        # table rejects it). Without nft, fail-closed cannot reject: drop.
        bypass = c.fail_open or self._nft_reject
        return target + (" --queue-bypass" if bypass else "")

    def rules(self, family: int) -> list[str]:
        """The ``iptables-restore`` lines (filter table) this backend installs."""
        c = self.config
        local, host, cluster = (w.set_name(family) for w in AddressSet)
        # UNTRACKED too: a SYN a NOTRACK rule exempted from conntrack is still new
        syn = "-p tcp --syn -m conntrack --ctstate NEW,UNTRACKED"
        q = f"-j {QUEUE_CHAIN}"
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
        chains = [*BUILTIN, QUEUE_CHAIN[len(CHAIN_PREFIX):], SPOOF_CHAIN[len(CHAIN_PREFIX):]]
        if c.admission_rate:
            chains.append(OVERLOAD_CHAIN[len(CHAIN_PREFIX):])
        lines = [f":{CHAIN_PREFIX}{b} - [0:0]" for b in chains]
        alive = f"-m set --match-set {alive_set(family)} src"
        for builtin, (out_rule, in_rule, dns_set) in plan.items():
            chain = f"{CHAIN_PREFIX}{builtin}"
            if builtin != "OUTPUT":
                # First of all: a packet from a workload's port whose source is
                # not the workload's address (forged) goes, whatever it is.
                lines.append(f"-A {chain} -m set --match-set {bound_set(family)} src "
                             f"-j {SPOOF_CHAIN}")
            if c.block_mode == "reset":
                mark = f"{c.reject_mark:#x}/{c.reject_mark:#x}"
                lines.append(
                    f"-A {chain} -p tcp --syn -m mark --mark {mark} -j REJECT "
                    "--reject-with tcp-reset"
                )
            lines.append(f"-A {chain} {syn} {out_rule}")
            lines.append(f"-A {chain} {syn} {in_rule}")
            if c.dns:
                # Only replies to a query the workload sent: an unsolicited
                # "answer" (forged by another workload) teaches no name.
                lines.append(
                    f"-A {chain} -p udp --sport 53 -m conntrack --ctstate ESTABLISHED "
                    f"-m set --match-set {dns_set} dst {dnsq}"
                )
        # Cached verdicts and the admission limit work only while the Defender's
        # heartbeat is fresh: a dead Defender leaves the queue's failure mode.
        if c.fastpath:
            for fv, target in ((FastVerdict.ACCEPT, "-j ACCEPT"),
                               (FastVerdict.REJECT, "-p tcp -j REJECT --reject-with tcp-reset"),
                               (FastVerdict.DROP, "-j DROP")):
                lines.append(
                    f"-A {QUEUE_CHAIN} {alive} -m set --match-set {fv.set_name(family)} "
                    f"src,dst,dst {target}")
        if c.admission_rate:
            over, overo = overload_set(family), overload_outside_set(family)
            # Queued SYNs from CLUSTER come from this host's workloads (outbound;
            # inbound ones from CLUSTER are not queued here), whose source
            # addresses the anti-spoofing rule vouches for: each its own bucket.
            # Any other source may be forged: buckets per /24 (/64), in tables
            # of their own, so forged sources filling a table (65,536 buckets:
            # then a new bucket's SYNs are dropped) never touch the local ones.
            local = f"-m set --match-set {cluster} src"
            outside = f"-m set ! --match-set {cluster} src"
            prefix = f"--hashlimit-srcmask {OUTSIDE_PREFIX[family]}"
            busy = f"-m set --match-set {busy_set(family)} src"
            size = "--hashlimit-htable-size 4096 --hashlimit-htable-max 65536"
            full = (f"-m hashlimit --hashlimit-above {c.admission_rate}/sec "
                    f"--hashlimit-burst {c.admission_burst} --hashlimit-mode srcip")
            tight = (f"-m hashlimit --hashlimit-above {c.busy_rate}/sec "
                     f"--hashlimit-burst {2 * c.busy_rate} --hashlimit-mode srcip")
            lines += [
                f"-A {QUEUE_CHAIN} {alive} {local} {full} "
                f"--hashlimit-name {self._hashlimit_name(family)} {size} -j {OVERLOAD_CHAIN}",
                f"-A {QUEUE_CHAIN} {alive} {outside} {full} {prefix} "
                f"--hashlimit-name {self._hashlimit_name(family, outside=True)} {size} "
                f"-j {OVERLOAD_CHAIN}",
                # The sources the verdict loop could not keep up with: a tenth.
                f"-A {QUEUE_CHAIN} {alive} {local} {busy} {tight} "
                f"--hashlimit-name {self._hashlimit_name(family, busy=True)} {size} "
                f"-j {OVERLOAD_CHAIN}",
                # Outside sources (any number of prefixes, forged or a botnet)
                # the loop could not keep up with share ONE such limit.
                f"-A {QUEUE_CHAIN} {alive} {outside} "
                f"-m set --match-set {busy_outside_set(family)} src -m hashlimit --hashlimit-above "
                f"{c.busy_rate}/sec --hashlimit-burst {2 * c.busy_rate} "
                f"--hashlimit-name {self._hashlimit_name(family, busy=True, outside=True)} "
                f"{size} -j {OVERLOAD_CHAIN}",
                # Count per source: the add counts the first packet too (the
                # reader subtracts it); an existing entry is left as it is.
                f"-A {OVERLOAD_CHAIN} {local} -j SET --add-set {over} src",
                f"-A {OVERLOAD_CHAIN} {local} -m set --match-set {over} src -j DROP",
                f"-A {OVERLOAD_CHAIN} -j SET --add-set {overo} src",
                f"-A {OVERLOAD_CHAIN} -m set --match-set {overo} src -j DROP",
                f"-A {OVERLOAD_CHAIN} -j DROP",
            ]
        if not c.fail_open and self._nft_reject:
            pending = f"{c.pending_mark:#x}"
            lines.append(f"-A {QUEUE_CHAIN} -j MARK --set-xmark {pending}/{pending}")
        lines.append(f"-A {QUEUE_CHAIN} {self._queue_target()}")
        lines += self._spoof_rules(family)
        lines += [f"-I {b} 1 -m comment --comment {TAG} -j {CHAIN_PREFIX}{b}" for b in BUILTIN]
        return lines

    def _hashlimit_name(self, family: int, busy: bool = False, outside: bool = False) -> str:
        """Named after its settings: a rule replaced in place keeps its table's
        settings from creation, so other settings need another table (at most
        15 characters)."""
        c = self.config
        kind = ("b" if busy else "") + ("o" if outside else "")
        rate = f"busy {c.busy_rate}" if busy else f"{c.admission_rate}/{c.admission_burst}"
        if outside:
            rate += f" /{OUTSIDE_PREFIX[family]}"
        digest = zlib.crc32(rate.encode())
        return f"cnnf{kind}{family}-{digest:08x}"

    def _save(self, family: int) -> str:
        return self.netns.run(_TOOLS[family][1]).stdout

    def _restore(self, family: int, script: str) -> None:
        if script.strip():
            self.netns.run(_TOOLS[family][2], "--noflush", input=script)

    def _remove_rules(self, family: int) -> list[str]:
        state = _tagged_state(self._save(family))
        self._restore(family, _removal_script(state))
        return [f"ipv{family} {t}: {ln}" for t, lines in state.items() for ln in lines]

    def _install_rules(self, family: int) -> list[str]:
        """One transaction that leaves the rules as wanted; returns the lines of an
        earlier run that it replaced.

        Chains that exist are flushed and refilled, and a jump that is already
        first stays: deleting and re-creating chains lets SYNs through unqueued
        while the transaction commits (seen in the lab with iptables 1.8.9,
        nf_tables), flushing and refilling a chain does not. A jump that is not
        first (another tool inserted rules above it) is moved back to the top."""
        saved = self._save(family)
        state = _tagged_state(saved)
        mine = state.get("filter", [])
        have = {ln[1:] for ln in mine if ln.startswith(":")}
        wanted = self.rules(family)
        chains = [ln[1:].split()[0] for ln in wanted if ln.startswith(":")]
        jumps = {b: f"-A {b} -m comment --comment {TAG} -j {CHAIN_PREFIX}{b}" for b in BUILTIN}
        script = ["*filter"]
        script += [f"-F {c}" if c in have else f":{c} - [0:0]" for c in chains]
        stale = sorted(have - set(chains))
        script += [f"-F {c}" for c in stale]
        script += [ln for ln in wanted if ln.startswith("-A ")]
        builtin_rules = _builtin_rules(saved)
        for builtin, jump in jumps.items():
            rules = builtin_rules.get(builtin, [])
            at = [i for i, ln in enumerate(rules) if ln == jump]
            if at != [0]:  # missing, doubled or not first: exactly one, first
                script += [f"-D {builtin} {i + 1}" for i in reversed(at)]
                script += [ln for ln in wanted if ln.startswith(f"-I {builtin} ")]
        # Anything else of ours in the built-in chains (an older layout) goes.
        script += [f"-D {ln[3:]}" for ln in mine if ln.startswith("-A ")
                   and not ln.startswith(f"-A {CHAIN_PREFIX}") and ln not in jumps.values()]
        script += [f"-X {c}" for c in stale]
        others = {t: lines for t, lines in state.items() if t != "filter"}
        self._restore(family, _removal_script(others) + "\n".join([*script, "COMMIT"]) + "\n")
        self._expected[family] = _tagged_state(self._save(family)).get("filter", [])
        return [f"ipv{family} {t}: {ln}" for t, lines in state.items() for ln in lines]

    # -- the fail-closed reject table (nftables) -------------------------------------

    def _nft_script(self) -> str:
        mark = f"{self.config.pending_mark:#x}"
        chains = "".join(
            f"  chain {hook} {{ type filter hook {hook} priority 10; policy accept;\n"
            f"    meta mark & {mark} == {mark} tcp flags & (syn | ack) == syn"
            " reject with tcp reset\n  }\n"
            for hook in ("forward", "input", "output")
        )
        # Create-then-delete-then-create: one transaction, whether or not it existed.
        return f"table {NFT_TABLE}\ndelete table {NFT_TABLE}\ntable {NFT_TABLE} {{\n{chains}}}\n"

    def _nft_remove(self) -> bool:
        """Delete the reject table if it exists; whether it did."""
        if not self._nft_present():
            return False
        self.netns.run("nft", "delete", "table", *NFT_TABLE.split())
        return True

    def _nft_present(self) -> bool:
        try:
            return self.netns.run("nft", "list", "table", *NFT_TABLE.split(),
                                  check=False).returncode == 0
        except DatapathError:
            return False

    # -- sets -------------------------------------------------------------------

    def _set_specs(self) -> dict[str, str]:
        """Every set this configuration uses -> its ``create`` options."""
        c = self.config
        specs: dict[str, str] = {}
        for family in c.families:
            fam = _SET_FAMILY[family]
            for w in AddressSet:
                specs[w.set_name(family)] = f"hash:ip family {fam} {_SET_SIZE}"
            if c.fastpath:
                timeout = int(c.fastpath_ttl) + FASTPATH_GRACE
                for fv in FastVerdict:
                    specs[fv.set_name(family)] = (
                        f"hash:ip,port,ip family {fam} hashsize 4096 maxelem {c.fastpath_max} "
                        f"timeout {timeout} counters")
            specs[alive_set(family)] = f"hash:net family {fam} timeout {HEARTBEAT_TIMEOUT}"
            specs[bound_set(family)] = f"hash:net family {fam} timeout {HEARTBEAT_TIMEOUT}"
            if c.admission_rate:
                specs[overload_set(family)] = f"hash:ip family {fam} {_OVERLOAD_SIZE} counters"
                specs[overload_outside_set(family)] = (
                    f"hash:ip family {fam} netmask {OUTSIDE_PREFIX[family]} {_OVERLOAD_SIZE} "
                    "counters")
                specs[busy_set(family)] = (
                    f"hash:ip family {fam} {_OVERLOAD_SIZE} timeout {BUSY_TIMEOUT}")
                specs[busy_outside_set(family)] = (
                    f"hash:net family {fam} {_OVERLOAD_SIZE} timeout {BUSY_TIMEOUT}")
        return specs

    def _set_names(self) -> list[str]:
        out = self.netns.run("ipset", "list", "-n").stdout
        return [n for n in out.split() if n.startswith(SET_PREFIX)]

    def _fill_script(self, names: Iterable[str], existing: set[str]) -> list[str]:
        """Give each set its wanted members: a new set is created filled; an
        existing one (a running set, or an earlier run's that rules still use)
        gets a filled twin swapped in, so it is never empty in between."""
        specs = self._set_specs()
        script: list[str] = []
        for name in names:
            members = sorted(self._members.get(name, ()))
            if name not in existing:
                script.append(f"create {name} {specs[name]}")
                script += [f"add {name} {a} -exist" for a in members]
                continue
            tmp = _twin(name)
            script += [f"create {tmp} {specs[name]} -exist", f"flush {tmp}"]
            script += [f"add {tmp} {a} -exist" for a in members]
            script += [f"swap {tmp} {name}", f"destroy {tmp}"]
        return script

    def _create_sets(self, names: Iterable[str]) -> None:
        script = self._fill_script(names, set(self._set_names()))
        if script:
            self._ipset_restore(script)

    def _ipset_restore(self, script: list[str]) -> None:
        """``ipset restore``, again if a set was busy (a swap fails while anyone
        lists the set); the scripts are safe to run twice."""
        for attempt in range(5):
            try:
                self.netns.run("ipset", "restore", input="\n".join(script) + "\n")
                return
            except DatapathError as exc:
                busy = "busy" in str(exc).lower() or "in use" in str(exc)
                if attempt == 4 or not busy:
                    raise
                time.sleep(0.05 * (attempt + 1))

    # -- the backend API --------------------------------------------------------

    def install(self) -> InstallReport:
        """Install rules and sets, replacing an earlier run's without a moment in
        between: sets are refilled by swap, rules replaced in one transaction per
        family. Sets of an earlier run that cannot be swapped (another type) are
        the one case that needs a removal first; the report says so."""
        with self._lock:
            report = InstallReport()
            report.notes.append(self.netns.run("iptables", "-V").stdout.strip())
            for family in self.config.families:
                self._bridge_sysctl(family, report)
            before = set(self._set_names())
            twins = sorted(n for n in before if n.startswith(f"{SET_PREFIX}tmp-"))
            if twins:  # a crash between filling a twin and swapping it: refilled anew
                self.netns.run("ipset", "restore", input="".join(f"destroy {n}\n" for n in twins))
                before -= set(twins)
            try:
                self._create_sets(self._set_specs())
            except DatapathError as exc:
                report.removed_leftovers += self.remove()
                report.notes.append(
                    f"an earlier run's sets could not be refilled in place ({exc}); "
                    "they were removed first, leaving a moment without rules")
                before = set()
                self._create_sets(self._set_specs())
            report.removed_leftovers += [f"ipset {n} (refilled)" for n in sorted(before)]
            # Stale sets of an earlier configuration (e.g. IPv6 then, not now) go
            # after the rules that use them.
            stale = sorted(before - set(self._set_specs()))
            wants_nft = not self.config.fail_open
            if wants_nft:
                try:
                    # Created only when missing: replacing the table would
                    # unregister its hooks, and the kernel drops every queued
                    # packet when a hook goes (its content is fixed anyway).
                    if not self._nft_present():
                        self.netns.run("nft", "-f", "-", input=self._nft_script())
                    self._nft_reject = True
                except DatapathError as exc:
                    self._nft_reject = False
                    report.notes.append(
                        f"nftables reject table not installed ({exc}): with no verdict "
                        "process, SYNs are dropped, not refused with a reset")
            for family in (4, 6):
                if family in self.config.families:
                    report.removed_leftovers += self._install_rules(family)
                else:
                    report.removed_leftovers += self._remove_rules(family)
            if not wants_nft and self._nft_remove():
                report.removed_leftovers.append(f"nft table {NFT_TABLE}")
            if stale:
                self.netns.run("ipset", "restore",
                               input="".join(f"destroy {n}\n" for n in stale))
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
            if self._nft_remove():
                removed.append(f"nft table {NFT_TABLE}")
            self._nft_reject = False
            names = self._set_names()
            if names:
                self.netns.run("ipset", "restore", input="".join(f"destroy {n}\n" for n in names))
            removed += [f"ipset {n}" for n in names]
            self._expected.clear()
            return removed

    def heartbeat(self) -> None:
        self._beat(alive_set, bound_set)

    def heartbeat_ports(self) -> None:
        self._beat(bound_set)

    def _beat(self, *sets: Callable[[int], str]) -> None:
        lines = [f"add {name(f)} {net} timeout {HEARTBEAT_TIMEOUT} -exist"
                 for name in sets for f in self.config.families for net in _HALVES[f]]
        self.netns.run("ipset", "restore", input="\n".join(lines) + "\n")

    def busy(self, sources: Iterable[str], on: bool) -> None:
        if not self.config.admission_rate:
            return
        lines = []
        for a in sources:
            try:  # an address (this host's), or an outside prefix ("10.1.2.0/24")
                net = ipaddress.ip_network(a, strict=False)
            except ValueError as exc:
                raise DatapathError(f"not an address or prefix: {a!r}") from exc
            if net.version not in self.config.families:
                continue
            host = "/" not in a
            name = (busy_set if host else busy_outside_set)(net.version)
            lines.append(f"add {name} {a} timeout {BUSY_TIMEOUT} -exist" if on
                         else f"del {name} {a} -exist")
        if lines:
            self.netns.run("ipset", "restore", input="\n".join(lines) + "\n")

    def heartbeat_stop(self) -> None:
        self.netns.run("ipset", "restore", input="".join(
            f"flush {alive_set(f)}\n" for f in self.config.families))

    def stop_refusing(self) -> list[str]:
        with self._lock:
            done: list[str] = []
            self.heartbeat_stop()
            # no Defender to rebind a reused interface name: bindings stop
            self.netns.run("ipset", "restore", input="".join(
                f"flush {bound_set(f)}\n" for f in self.config.families))
            if self.config.fastpath:
                self.fastpath_replace(())
                done.append("cached verdicts removed")
            if self._nft_reject:
                done.append("rules kept: new connections of protected workloads are refused "
                            "with a TCP reset until the next start or `cnnf defender cleanup`")
            else:
                done.append("rules kept: new connections of protected workloads are dropped "
                            "until the next start or `cnnf defender cleanup`")
            return done

    def check(self) -> list[str]:
        """What is missing or altered now, without changing anything (the same
        comparison ``check_and_repair`` makes before it repairs)."""
        with self._lock:
            if not self._expected:
                return ["rules not installed"]
            problems: list[str] = []
            present = set(self._set_names())
            missing_sets = [n for n in self._set_specs() if n not in present]
            problems += [f"ipset {n} missing" for n in missing_sets]
            for name in self._members:
                if name in missing_sets:
                    continue
                lost = self._members[name] - self._set_members(name)
                if lost:
                    problems.append(f"ipset {name}: {len(lost)} member(s) missing")
            if self._nft_reject and not self._nft_present():
                problems.append(f"nft table {NFT_TABLE} (fail-closed reject) missing")
            for family in self.config.families:
                expected = self._expected.get(family, [])
                saved = self._save(family)
                current = _tagged_state(saved).get("filter", [])
                gone = Counter(expected) - Counter(current)
                extra = Counter(current) - Counter(expected)
                problems += [f"ipv{family} missing: {ln}" for ln in gone.elements()]
                problems += [f"ipv{family} unexpected: {ln}" for ln in extra.elements()]
                problems += [
                    f"ipv{family} jump to {CHAIN_PREFIX}{b} is not first in {b}"
                    for b, rules in _builtin_rules(saved).items()
                    if f"-A {b} -m comment --comment {TAG} -j {CHAIN_PREFIX}{b}" in rules
                    and not rules[0].endswith(f"-j {CHAIN_PREFIX}{b}")]
            return problems

    def check_and_repair(self) -> list[str]:
        with self._lock:
            if not self._expected:
                return []
            repaired: list[str] = []
            present = set(self._set_names())
            missing_sets = [n for n in self._set_specs() if n not in present]
            if missing_sets:
                self._create_sets(missing_sets)
                repaired += [
                    f"ipset {n} (recreated with {len(self._members.get(n, ()))} members)"
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
            if self._nft_reject and not self._nft_present():
                self.netns.run("nft", "-f", "-", input=self._nft_script())
                repaired.append(f"nft table {NFT_TABLE} (fail-closed reject) put back")
            for family in self.config.families:
                expected = self._expected.get(family, [])
                saved = self._save(family)
                current = _tagged_state(saved).get("filter", [])
                # our jump must come first: rules above it decide before we do
                buried = [b for b, rules in _builtin_rules(saved).items()
                          if f"-A {b} -m comment --comment {TAG} -j {CHAIN_PREFIX}{b}" in rules
                          and not rules[0].endswith(f"-j {CHAIN_PREFIX}{b}")]
                if sorted(current) != sorted(expected) or buried:
                    gone = Counter(expected) - Counter(current)
                    extra = Counter(current) - Counter(expected)
                    self._install_rules(family)
                    repaired += [f"ipv{family} missing: {ln}" for ln in gone.elements()]
                    repaired += [f"ipv{family} unexpected: {ln}" for ln in extra.elements()]
                    repaired += [f"ipv{family} jump to {CHAIN_PREFIX}{b} moved back to the top "
                                 f"of {b}" for b in buried]
            return repaired

    def _set_members(self, name: str) -> set[str]:
        out = self.netns.run("ipset", "save", name, check=False).stdout
        return {ln.split()[2] + (" nomatch" if " nomatch" in ln else "")
                for ln in out.splitlines() if ln.startswith("add ")}

    # -- anti-spoofing ------------------------------------------------------------

    def _spoof_rules(self, family: int) -> list[str]:
        """CNNF-SPOOF: per port, its own addresses (and IPv6 link-local ones for
        ICMPv6 only: neighbour discovery) return; any other source is dropped, counted
        by the port's last rule. (ipset's ``hash:net,iface`` with ``physdev:``
        entries never matched a bridged packet here: xt_physdev it is.)"""
        lines = []
        for port in sorted(self._ports.values(), key=lambda p: p.interface):
            dev = (f"-m physdev --physdev-in {port.interface}" if port.bridged
                   else f"-i {port.interface}")
            own = sorted(a for a in port.addresses if address_family(a) == family)
            if family == 6:  # neighbour discovery only: not a source for anything else
                lines.append(f"-A {SPOOF_CHAIN} {dev} -s fe80::/10 -p ipv6-icmp -j RETURN")
            if len(own) == 1:
                lines.append(f"-A {SPOOF_CHAIN} {dev} ! -s {own[0]} -j DROP")
                continue
            lines += [f"-A {SPOOF_CHAIN} {dev} -s {a} -j RETURN" for a in own]
            lines.append(f"-A {SPOOF_CHAIN} {dev} -j DROP")
        return lines

    def set_ports(self, ports: Iterable[Port]) -> None:
        by_name = {p.interface: p for p in ports}
        for p in by_name.values():
            for a in p.addresses:
                address_family(a)  # an IP address, or DatapathError
        with self._lock:
            if by_name == self._ports:
                return
            self._ports = by_name
            if self._expected:  # installed: one transaction per family, as always
                for family in self.config.families:
                    self._install_rules(family)

    def ports(self) -> dict[str, Port]:
        with self._lock:
            return dict(self._ports)

    def spoof_counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for family in self.config.families:
            saved = self.netns.run(_TOOLS[family][1], "-c", "-t", "filter").stdout
            for line in saved.splitlines():
                if f"-A {SPOOF_CHAIN} " not in line or not line.endswith("-j DROP"):
                    continue
                counts, _, rule = line.partition(" ")
                tokens = rule.split()
                flag = "--physdev-in" if "--physdev-in" in tokens else "-i"
                name = tokens[tokens.index(flag) + 1]
                out[name] = out.get(name, 0) + int(counts.strip("[]").split(":")[0])
        return out

    def _name(self, which: AddressSet, address: str) -> tuple[str, str]:
        which, family = AddressSet(which), address_family(address)
        if family not in self.config.families:
            raise DatapathError(f"IPv6 is off in this datapath: cannot add {address}")
        return which.set_name(family), str(ipaddress.ip_address(address))

    def _wanted(self, which: AddressSet, addresses: Iterable[str]) -> dict[str, set[str]]:
        which = AddressSet(which)
        wanted: dict[str, set[str]] = {which.set_name(f): set() for f in self.config.families}
        for address in addresses:
            name, addr = self._name(which, address)
            wanted[name].add(addr)
        return wanted

    def stage(self, which: AddressSet, addresses: Iterable[str]) -> None:
        wanted = self._wanted(which, addresses)
        with self._lock:
            self._members.update(wanted)

    def set_addresses(self, which: AddressSet, addresses: Iterable[str]) -> None:
        wanted = self._wanted(which, addresses)
        with self._lock:
            self._members.update(wanted)
            self._create_sets(wanted)

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

    # -- the fast path ------------------------------------------------------------

    def _fp_names(self) -> list[str]:
        if not self.config.fastpath:
            return []
        return [fv.set_name(f) for f in self.config.families for fv in FastVerdict]

    def fastpath_add(self, entries: Iterable[FastEntry], timeout: float) -> None:
        lines = [f"add {fv.set_name(address_family(src))} {src},tcp:{port},{dst} "
                 f"timeout {max(1, int(timeout))} -exist" for fv, src, port, dst in entries]
        if lines and self.config.fastpath:
            with self._lock:
                self.netns.run("ipset", "restore", input="\n".join(lines) + "\n")

    def fastpath_replace(
        self, keep: Iterable[tuple[FastEntry, float]]
    ) -> dict[FastEntry, int]:
        names = self._fp_names()
        if not names:
            return {}
        specs = self._set_specs()
        by_set: dict[str, list[str]] = {n: [] for n in names}
        for (fv, src, port, dst), timeout in keep:
            by_set[fv.set_name(address_family(src))].append(
                f"{src},tcp:{port},{dst} timeout {max(1, int(timeout))}")
        with self._lock:
            script: list[str] = []
            for name in names:
                tmp = _twin(name)
                script += [f"create {tmp} {specs[name]} -exist", f"flush {tmp}"]
                script += [f"add {tmp} {e} -exist" for e in by_set[name]]
                script.append(f"swap {tmp} {name}")
            self._ipset_restore(script)
            # The swapped-out sets hold the final counters of what they matched.
            final: dict[FastEntry, int] = {}
            for name in names:
                final.update(_fast_counters(self.netns.run("ipset", "save", _twin(name)).stdout))
            self.netns.run("ipset", "restore", input="".join(
                f"destroy {_twin(n)}\n" for n in names))
            return final

    def fastpath_counters(self) -> dict[FastEntry, int]:
        out: dict[FastEntry, int] = {}
        with self._lock:
            for name in self._fp_names():
                out.update(_fast_counters(self.netns.run("ipset", "save", name,
                                                         check=False).stdout))
        return out

    def overload_counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if not self.config.admission_rate:
            return out
        for family in self.config.families:
            # a failed read raises (the caller skips the round): an empty one would
            # say every source left the set, and its count would be taken again
            saved = "".join(self.netns.run("ipset", "save", name).stdout
                            for name in (overload_set(family), overload_outside_set(family)))
            for name, member, packets in saved_counters(saved):
                key = (f"{member.split('/')[0]}/{OUTSIDE_PREFIX[family]}"
                       if name == overload_outside_set(family) else member)
                # the SET target's add counted the first packet once more
                out[key] = max(0, packets - 1)
        return out

    def overload_forget(self, addresses: Iterable[str]) -> None:
        lines = []
        for a in addresses:
            try:
                net = ipaddress.ip_network(a, strict=False)
            except ValueError:
                continue  # the outside sources' shared line: never in a set
            if "/" in a:  # an outside prefix
                lines.append(f"del {overload_outside_set(net.version)} "
                             f"{net.network_address} -exist")
            else:
                lines.append(f"del {overload_set(net.version)} {a} -exist")
        if lines and self.config.admission_rate:
            self.netns.run("ipset", "restore", input="\n".join(lines) + "\n")


def saved_counters(saved: str) -> list[tuple[str, str, int]]:
    """``ipset save`` of sets with counters -> (set, member, packets) per entry."""
    out = []
    for line in saved.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] == "add" and "packets" in parts:
            out.append((parts[1], parts[2], int(parts[parts.index("packets") + 1])))
    return out


def _fast_counters(saved: str) -> dict[FastEntry, int]:
    """``ipset save`` of a fast-path set -> entry -> packets."""
    out: dict[FastEntry, int] = {}
    for name, member, packets in saved_counters(saved):
        # cnnf-fpa4 / cnnf-tmp-fpa4 -> the verdict letter before the family digit
        src, proto_port, dst = member.split(",")
        out[(FastVerdict(name[-2]), src, int(proto_port.split(":")[1]), dst)] = packets
    return out


def cleanup(netns: str | NetnsRef | None = None) -> list[str]:
    """Remove every CNNF rule, chain, set and table from a namespace (after a crash,
    or after a fail-closed Defender stopped and left its rules refusing)."""
    return IptablesBackend(DatapathConfig(), netns).remove()
