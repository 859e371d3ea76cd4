"""Pure parts of the datapath: packet and DNS parsing, caches, stats, rule text."""

from __future__ import annotations

import socket
import struct
import subprocess

import dns.message
import dns.rrset
import pytest
from structlog.testing import capture_logs

from cnnf.defender.datapath import (
    AddressSet,
    DatapathConfig,
    DnsCache,
    DnsRecord,
    FastVerdict,
    IptablesBackend,
    PacketInfo,
    parse_dns_answer,
    parse_packet,
    parse_queue_stats,
)
from cnnf.defender.datapath.backend import Port
from cnnf.defender.datapath.conntrack import ConntrackObserver, ObservedConnection, parse_event
from cnnf.defender.datapath.iptables import (
    _builtin_rules,
    _fast_counters,
    _removal_script,
    _tagged_state,
    saved_counters,
)
from cnnf.defender.datapath.packet import udp_payload


def ipv4(src: str, dst: str, proto: int, l4: bytes, ihl: int = 5) -> bytes:
    opts = b"\x01" * ((ihl - 5) * 4)
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        20 + len(opts) + len(l4),
        0,
        0,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return head + opts + l4


def ipv6(src: str, dst: str, nxt: int, l4: bytes, ext: bytes = b"") -> bytes:
    head = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(ext) + len(l4),
        0 if ext else nxt,
        64,
        socket.inet_pton(socket.AF_INET6, src),
        socket.inet_pton(socket.AF_INET6, dst),
    )
    return head + ext + l4


def tcp_syn(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


HOP_BY_HOP_TO_TCP = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # next header TCP, 8 bytes, PadN


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            ipv4("10.0.0.1", "10.0.0.2", 6, tcp_syn(40000, 80)),
            PacketInfo(4, "10.0.0.1", "10.0.0.2", 40000, 80),
        ),
        (
            ipv4("10.0.0.1", "10.0.0.2", 6, tcp_syn(1, 65535), ihl=7),
            PacketInfo(4, "10.0.0.1", "10.0.0.2", 1, 65535),
        ),
        (
            ipv6("fd00::1", "fd00::2", 6, tcp_syn(5555, 443)),
            PacketInfo(6, "fd00::1", "fd00::2", 5555, 443),
        ),
        (
            ipv6("fd00::1", "fd00::2", 6, tcp_syn(5555, 443), HOP_BY_HOP_TO_TCP),
            PacketInfo(6, "fd00::1", "fd00::2", 5555, 443),
        ),
        (
            ipv4("10.0.0.53", "10.0.0.2", 17, udp(53, 3333, b"x")),
            PacketInfo(4, "10.0.0.53", "10.0.0.2", 53, 3333, proto=17),
        ),
        (ipv4("10.0.0.1", "10.0.0.2", 1, b"\x08\x00\x00\x00"), None),  # ICMP
        (ipv4("10.0.0.1", "10.0.0.2", 6, tcp_syn(1, 2))[:22], None),  # truncated
        (b"\x50" + bytes(40), None),  # not IPv4/IPv6
        (b"", None),
    ],
)
def test_parse_packet(payload: bytes, expected: PacketInfo | None) -> None:
    assert parse_packet(payload) == expected


def dns_response(qname: str, answers: list[tuple[str, str, str]]) -> bytes:
    query = dns.message.make_query(qname, "A")
    resp = dns.message.make_response(query)
    for name, rdtype, value in answers:
        resp.answer.append(dns.rrset.from_text(name, 300, "IN", rdtype, value))
    return resp.to_wire()


def test_parse_dns_answer_follows_cnames() -> None:
    wire = dns_response(
        "www.shop.example.",
        [
            ("www.shop.example.", "CNAME", "edge.cdn.example."),
            ("edge.cdn.example.", "A", "10.78.0.2"),
            ("edge.cdn.example.", "AAAA", "fd78::2"),
        ],
    )
    assert parse_dns_answer(wire) == [
        DnsRecord("10.78.0.2", ("edge.cdn.example", "www.shop.example"), 300),
        DnsRecord("fd78::2", ("edge.cdn.example", "www.shop.example"), 300),
    ]


@pytest.mark.parametrize(
    "wire",
    [dns.message.make_query("a.example.", "A").to_wire(), b"", b"\x00garbage"],
    ids=["query", "empty", "garbage"],
)
def test_parse_dns_answer_ignores_non_answers(wire: bytes) -> None:
    assert parse_dns_answer(wire) == []


def test_udp_payload_of_dns_answer() -> None:
    wire = dns_response("a.example.", [("a.example.", "A", "10.0.0.9")])
    packet = ipv4("10.0.0.53", "10.0.0.2", 17, udp(53, 4444, wire))
    assert udp_payload(packet) == wire
    assert udp_payload(ipv4("10.0.0.1", "10.0.0.2", 6, tcp_syn(1, 2))) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_dns_cache_expires_and_is_bounded() -> None:
    clock = FakeClock()
    cache = DnsCache(clock, min_ttl=10, max_addresses=2)
    cache.record([DnsRecord("10.0.0.1", ("a.example",), 5)])  # min_ttl lifts 5 to 10
    clock.now += 3
    cache.record([DnsRecord("10.0.0.1", ("b.example",), 100)])
    assert cache.domains_for("10.0.0.1") == ("a.example", "b.example")
    clock.now += 8  # a.example expired at +10
    assert cache.domains_for("10.0.0.1") == ("b.example",)
    assert cache.domains_for("10.9.9.9") == ()
    cache.record([DnsRecord("10.0.0.2", ("c.example",), 60)])
    cache.record([DnsRecord("10.0.0.3", ("d.example",), 60)])  # evicts the oldest: .1
    assert len(cache) == 2
    assert cache.domains_for("10.0.0.1") == ()
    clock.now += 1000
    assert cache.domains_for("10.0.0.3") == ()


def test_parse_queue_stats() -> None:
    text = " 4200  10208     3 2   128     1     2        9  1\n 4201 77 0 2 128 0 0 0 1\nbad\n"
    stats = parse_queue_stats(text)
    assert [
        (s.queue, s.portid, s.waiting, s.dropped, s.user_dropped, s.id_sequence) for s in stats
    ] == [(4200, 10208, 3, 1, 2, 9), (4201, 77, 0, 0, 0, 0)]


def test_parse_conntrack_event() -> None:
    line = (
        "[1795945427.613170]\t    [NEW] tcp      6 120 SYN_SENT src=10.77.0.2 dst=10.77.0.3 "
        "sport=43568 dport=8080 [UNREPLIED] src=10.77.0.3 dst=10.77.0.2 sport=8080 "
        "dport=43568\n"
    )
    assert parse_event(line) == ObservedConnection(
        "10.77.0.2", "10.77.0.3", 43568, 8080, 1795945427.61317, "10.77.0.2"
    )
    # masqueraded: the far end sees the host's address (the reply's destination)
    masq = parse_event(
        "[1.5]  [NEW] tcp      6 120 SYN_SENT src=10.1.0.2 dst=10.0.0.2 sport=5 dport=80 "
        "[UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=80 dport=61000\n")
    assert masq is not None and (masq.src, masq.reply_dst) == ("10.1.0.2", "10.0.0.1")
    assert parse_event(
        "    [NEW] tcp      6 120 SYN_SENT src=fd77::2 dst=fd77::3 sport=1 dport=2 [UNREPLIED]",
        now=5.0,
    ) == ObservedConnection("fd77::2", "fd77::3", 1, 2, 5.0)
    assert parse_event("[1.0] [NEW] udp 17 30 src=1.1.1.1 dst=2.2.2.2 sport=1 dport=2") is None


EVENT = ("[NEW] tcp      6 120 SYN_SENT src=10.77.0.2 dst=10.77.0.3 sport=43568 dport=8080 "
         "[UNREPLIED] src=10.77.0.3 dst=10.77.0.2 sport=8080 dport=43568\n")


@pytest.mark.parametrize(
    ("stamp", "when"),
    [
        # conntrack-tools: printf("[%-8ld.%-6ld]\t", tv.tv_sec, tv.tv_usec): the
        # microseconds left-aligned, padded with spaces (not zeros) to 6 digits
        ("[1795945427.613170]", 1795945427.613170),
        ("[1795945427.61317 ]", 1795945427.061317),
        ("[1795945427.5     ]", 1795945427.000005),
        ("[1795945427.0     ]", 1795945427.0),
        ("[1795945427.999999]", 1795945427.999999),
        ("[12345   .42    ]", 12345.000042),  # seconds padded too (%-8ld)
    ],
)
def test_parse_conntrack_timestamp_microseconds_space_padded(stamp: str, when: float) -> None:
    ev = parse_event(f"{stamp}\t    {EVENT}")
    assert ev is not None and ev.time == pytest.approx(when, abs=1e-7)
    assert (ev.src, ev.dst, ev.dport) == ("10.77.0.2", "10.77.0.3", 8080)


def test_conntrack_reader_counts_and_throttles_lines_not_understood() -> None:
    """The reader, fed by a real process: a line that is no event is counted and
    logged once (not once per line), and the events around it still arrive."""
    seen: list[ObservedConnection] = []
    observer = ConntrackObserver(seen.append, None, ipv6=False)
    text = (f"[1795945427.61317 ]\t{EVENT}"
            + "[NEW] something conntrack never printed before\n" * 50
            + "\n"  # blank lines are no loss
            + f"[1795945428.7     ]\t{EVENT}")
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(text)
    proc.stdin.close()
    with capture_logs() as logs:
        observer._read(proc)
    proc.wait()
    proc.stdout.close()
    assert [e.time for e in seen] == [pytest.approx(1795945427.061317),
                                      pytest.approx(1795945428.000007)]
    assert observer.unparsed == 50
    # the first logged, the rest summed up once at the end (not once per line)
    warned = [e for e in logs if e["event"].startswith("conntrack output not understood")]
    assert len(warned) == 2 and warned[0]["line"].startswith("[NEW] something")
    assert (warned[0]["since_last"], warned[1]["since_last"], warned[1]["total"]) == (1, 49, 50)


# conntrack-tools' ENOBUFS warning (src/conntrack.c), three lines each time
ENOBUFS = ("WARNING: We have hit ENOBUFS! We are losing events.\n"
           "This message means that the current netlink socket buffer size is too small.\n"
           "Please, check --buffer-size in conntrack(8) manpage.\n")


def test_conntrack_warnings_are_counted_and_logged_throttled() -> None:
    """A flood of overruns (and of any other warning) from a real process: each
    counted, logged once and summed up at the end, not once per line."""
    observer = ConntrackObserver(lambda ev: None, None, ipv6=False)
    text = ("NOTICE: Netlink socket buffer size has been set to 33554432 bytes.\n"
            + ENOBUFS * 200 + "something else went wrong\n" * 30)
    proc = subprocess.Popen(["sh", "-c", "cat >&2"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(text)
    proc.stdin.close()
    with capture_logs() as logs:
        observer._read_errors(proc)
    proc.wait()
    proc.stderr.close()
    assert observer.overruns == 200
    warned = [(e["event"][:25], e.get("since_last"), e.get("message")) for e in logs
              if e["log_level"] == "warning"]
    assert warned == [
        ("conntrack events lost in ", 1, None),
        ("conntrack", 1, "something else went wrong"),
        ("conntrack events lost in ", 199, None),
        ("conntrack", 29, None),
    ]


def _rules(config: DatapathConfig, nft_reject: bool = False) -> str:
    backend = IptablesBackend(config)
    backend._nft_reject = nft_reject  # what install() sets when the nft table went in
    return "\n".join(backend.rules(4))


@pytest.mark.parametrize(
    ("config", "nft", "present", "absent"),
    [
        (
            DatapathConfig(),
            False,
            [
                "-A CNNF-QUEUE -j NFQUEUE --queue-num 4200 --queue-bypass",
                "-p tcp --syn -m mark --mark 0x20000000/0x20000000 -j REJECT "
                "--reject-with tcp-reset",
                "-p tcp --syn -m conntrack --ctstate NEW,UNTRACKED -m set --match-set "
                "cnnf-local4 src -j CNNF-QUEUE",
                "--queue-num 4299 --queue-bypass",
                # cached verdicts, while the Defender's heartbeat is fresh
                "-A CNNF-QUEUE -m set --match-set cnnf-alive4 src -m set --match-set cnnf-fpa4 "
                "src,dst,dst -j ACCEPT",
                "-A CNNF-QUEUE -m set --match-set cnnf-alive4 src -m set --match-set cnnf-fpr4 "
                "src,dst,dst -p tcp -j REJECT --reject-with tcp-reset",
                "-A CNNF-QUEUE -m set --match-set cnnf-alive4 src -m set --match-set cnnf-fpd4 "
                "src,dst,dst -j DROP",
                # the admission limit, also only while the heartbeat is fresh:
                # per address for this host's sources (in the cluster set; their
                # addresses checked by anti-spoofing), per /24 for the others
                "-A CNNF-QUEUE -m set --match-set cnnf-alive4 src -m set --match-set "
                "cnnf-cluster4 src -m hashlimit --hashlimit-above 1000/sec --hashlimit-burst "
                "2000 --hashlimit-mode srcip --hashlimit-name cnnf4-",
                "-A CNNF-QUEUE -m set --match-set cnnf-alive4 src -m set ! --match-set "
                "cnnf-cluster4 src -m hashlimit --hashlimit-above 1000/sec --hashlimit-burst "
                "2000 --hashlimit-mode srcip --hashlimit-srcmask 24 --hashlimit-name cnnfo4-",
                # a tenth of it while the Defender says its verdict loop is behind
                "-A CNNF-QUEUE -m set --match-set cnnf-alive4 src -m set --match-set "
                "cnnf-cluster4 src -m set --match-set cnnf-busy4 src -m hashlimit "
                "--hashlimit-above 100/sec --hashlimit-burst 200 --hashlimit-mode srcip "
                "--hashlimit-name cnnfb4-",
                # (outside sources: one limit for all those the loop is behind for)
                "-A CNNF-QUEUE -m set --match-set cnnf-alive4 src -m set ! --match-set "
                "cnnf-cluster4 src -m set --match-set cnnf-busyo4 src -m hashlimit "
                "--hashlimit-above 100/sec --hashlimit-burst 200 --hashlimit-name cnnfbo4-",
                # anti-spoofing, first in FORWARD and INPUT
                "-A CNNF-FORWARD -m set --match-set cnnf-bound4 src -j CNNF-SPOOF",
                "-A CNNF-INPUT -m set --match-set cnnf-bound4 src -j CNNF-SPOOF",
                # counted per source here, per /24 outside (a netmask set)
                "-A CNNF-OVERLOAD -m set --match-set cnnf-cluster4 src -j SET --add-set "
                "cnnf-over4 src",
                "-A CNNF-OVERLOAD -m set --match-set cnnf-cluster4 src -m set --match-set "
                "cnnf-over4 src -j DROP",
                "-A CNNF-OVERLOAD -j SET --add-set cnnf-overo4 src",
                "-A CNNF-OVERLOAD -m set --match-set cnnf-overo4 src -j DROP",
            ],
            ["--queue-balance", "MARK"],
        ),
        (
            # fail-closed: no verdict process -> bypass, marked pending; nft resets it
            DatapathConfig(fail_open=False, block_mode="drop", dns=False),
            True,
            ["-A CNNF-QUEUE -j MARK --set-xmark 0x40000000/0x40000000",
             "-A CNNF-QUEUE -j NFQUEUE --queue-num 4200 --queue-bypass"],
            ["-m mark --mark", "4299"],
        ),
        (
            # fail-closed without nftables: no bypass (dropped), nothing to mark
            DatapathConfig(fail_open=False, dns=False),
            False,
            ["-A CNNF-QUEUE -j NFQUEUE --queue-num 4200\n"],
            ["--queue-bypass", "MARK"],
        ),
        (
            DatapathConfig(admission_rate=0, fastpath=False),
            False,
            ["-A CNNF-QUEUE -j NFQUEUE --queue-num 4200 --queue-bypass"],
            ["hashlimit", "CNNF-OVERLOAD", "cnnf-fp"],
        ),
        (DatapathConfig(queues=2), False, ["--queue-balance 4200:4201 --queue-bypass"], []),
    ],
)
def test_rules_follow_config(
    config: DatapathConfig, nft: bool, present: list[str], absent: list[str]
) -> None:
    text = _rules(config, nft) + "\n"
    for s in present:
        assert s in text
    for s in absent:
        assert s not in text


def test_the_admission_table_is_named_after_its_settings() -> None:
    # (a rule replaced in place keeps its table, and the table its settings)
    names = {IptablesBackend(DatapathConfig(admission_rate=r, admission_burst=b))
             ._hashlimit_name(4) for r, b in ((1000, 2000), (1000, 2000), (500, 2000),
                                              (1000, 1000))}
    assert len(names) == 3 and all(len(n) <= 15 for n in names)


def test_the_queue_chain_checks_the_fast_path_then_admission_then_queues() -> None:
    rules = [r for r in _rules(DatapathConfig(fail_open=False), True).splitlines()
             if r.startswith("-A CNNF-QUEUE")]
    kinds = ["fpa4" in rules[0], "fpr4" in rules[1], "fpd4" in rules[2],
             "hashlimit" in rules[3] and "srcmask" not in rules[3],
             "hashlimit" in rules[4] and "srcmask 24" in rules[4],
             "cnnf-busy4" in rules[5] and "hashlimit" in rules[5],
             "cnnf-busyo4" in rules[6] and "--hashlimit-mode" not in rules[6],
             "MARK" in rules[7], "NFQUEUE" in rules[8]]
    assert kinds == [True] * 9 and len(rules) == 9


def test_anti_spoofing_comes_first_in_forward_and_input_not_output() -> None:
    for family in (4, 6):
        rules = IptablesBackend(DatapathConfig()).rules(family)
        for chain in ("FORWARD", "INPUT"):
            mine = [r for r in rules if r.startswith(f"-A CNNF-{chain} ")]
            assert mine[0] == (f"-A CNNF-{chain} -m set --match-set cnnf-bound{family} src "
                               "-j CNNF-SPOOF"), mine
        assert not any("spoof" in r for r in rules if r.startswith("-A CNNF-OUTPUT"))


def test_ports_become_anti_spoofing_rules() -> None:
    b = IptablesBackend(DatapathConfig())
    b.set_ports([Port("veth3", frozenset({"10.88.0.5", "fd00::5"})),
                 Port("cali1", frozenset({"10.1.0.9", "10.1.0.10"}), bridged=False),
                 Port("veth4", frozenset({"10.88.0.6"}))])
    spoof = [r for r in b.rules(4) if r.startswith("-A CNNF-SPOOF")]
    assert spoof == [
        "-A CNNF-SPOOF -i cali1 -s 10.1.0.10 -j RETURN",
        "-A CNNF-SPOOF -i cali1 -s 10.1.0.9 -j RETURN",
        "-A CNNF-SPOOF -i cali1 -j DROP",
        "-A CNNF-SPOOF -m physdev --physdev-in veth3 ! -s 10.88.0.5 -j DROP",
        "-A CNNF-SPOOF -m physdev --physdev-in veth4 ! -s 10.88.0.6 -j DROP",
    ]
    spoof6 = [r for r in b.rules(6) if r.startswith("-A CNNF-SPOOF")]
    assert spoof6 == [
        "-A CNNF-SPOOF -i cali1 -s fe80::/10 -p ipv6-icmp -j RETURN",
        "-A CNNF-SPOOF -i cali1 -j DROP",  # no IPv6 address: none of its own
        "-A CNNF-SPOOF -m physdev --physdev-in veth3 -s fe80::/10 -p ipv6-icmp -j RETURN",
        "-A CNNF-SPOOF -m physdev --physdev-in veth3 ! -s fd00::5 -j DROP",
        "-A CNNF-SPOOF -m physdev --physdev-in veth4 -s fe80::/10 -p ipv6-icmp -j RETURN",
        "-A CNNF-SPOOF -m physdev --physdev-in veth4 -j DROP",
    ]


@pytest.mark.parametrize("name", ["", "a b", "veth0,x", "x" * 16, "eth0\nadd", "v:1"])
def test_a_port_needs_an_interface_name(name: str) -> None:
    with pytest.raises(ValueError, match="not an interface name"):
        Port(name, frozenset())


def test_rules_queue_outbound_and_unprotected_inbound() -> None:
    rules = IptablesBackend(DatapathConfig(dns=False)).rules(6)
    fwd = [r for r in rules if r.startswith("-A CNNF-FORWARD") and "-j CNNF-QUEUE" in r]
    assert len(fwd) == 2
    assert "--match-set cnnf-local6 src" in fwd[0]
    assert "--match-set cnnf-local6 dst -m set ! --match-set cnnf-cluster6 src" in fwd[1]
    assert all("--syn -m conntrack --ctstate NEW,UNTRACKED" in r for r in fwd)
    assert ("-m set --match-set cnnf-alive6 src -m set --match-set cnnf-fpa6 src,dst,dst "
            "-j ACCEPT") in "\n".join(rules)
    jumps = [r for r in rules if r.startswith("-I ")]
    assert jumps == [
        f"-I {b} 1 -m comment --comment cnnf -j CNNF-{b}" for b in ("FORWARD", "INPUT", "OUTPUT")
    ]
    assert AddressSet.CLUSTER.set_name(6) == "cnnf-cluster6"


def test_removal_script_finds_only_tagged_state() -> None:
    saved = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [3:120]
:CNNF-FORWARD - [0:0]
:OTHER - [0:0]
-A FORWARD -m comment --comment cnnf -j CNNF-FORWARD
-A FORWARD -m comment --comment "cnnf other" -j OTHER
-A FORWARD -j OTHER
-A CNNF-FORWARD -p tcp -j NFQUEUE --queue-num 4200
COMMIT
"""
    state = _tagged_state(saved)
    assert state == {
        "filter": [
            ":CNNF-FORWARD",
            "-A FORWARD -m comment --comment cnnf -j CNNF-FORWARD",
            "-A CNNF-FORWARD -p tcp -j NFQUEUE --queue-num 4200",
        ]
    }
    assert _removal_script(state) == (
        "*filter\n-D FORWARD -m comment --comment cnnf -j CNNF-FORWARD\n"
        "-F CNNF-FORWARD\n-X CNNF-FORWARD\nCOMMIT\n"
    )
    assert _removal_script({}) == ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queues": 0}, "queues must be 1..64, not 0"),
        ({"queues": 65}, "queues must be 1..64, not 65"),
        ({"queue_num": 65535, "queues": 2}, r"queue numbers 65535..65536 out of 0..65535"),
        ({"queue_num": 4290, "queues": 10}, "dns_queue 4299 overlaps the SYN queues"),
        ({"reject_mark": 3}, "reject_mark must be a single bit"),
        ({"reject_mark": 0}, "reject_mark must be a single bit"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DatapathConfig(**kwargs)  # type: ignore[arg-type]


def test_dns_cache_snapshot_seeds_a_replica() -> None:
    clock = FakeClock()
    cache = DnsCache(clock, min_ttl=10)
    cache.record([DnsRecord("10.0.0.1", ("a.example", "b.example"), 100)])
    cache.record([DnsRecord("fd00::1", ("c.example",), 1)])
    clock.now += 50
    replica = DnsCache(clock, min_ttl=0)
    replica.record(cache.snapshot())
    assert replica.domains_for("10.0.0.1") == ("a.example", "b.example")
    assert replica.domains_for("fd00::1") == ()  # expired before the snapshot
    clock.now += 52
    assert replica.domains_for("10.0.0.1") == ()  # the remaining TTL was kept


def test_set_counters_are_read_from_ipset_save() -> None:
    saved = """create cnnf-tmp-fpa6 hash:ip,port,ip family inet6 timeout 90 counters
add cnnf-tmp-fpa6 fd77::2,tcp:8081,fd77::3 timeout 80 packets 7 bytes 560
add cnnf-fpr4 10.77.0.2,tcp:22,10.77.0.3 timeout 12 packets 0 bytes 0
add cnnf-over4 10.77.0.9 packets 5001 bytes 200040
add cnnf-local4 10.77.0.2
"""
    assert saved_counters(saved) == [("cnnf-tmp-fpa6", "fd77::2,tcp:8081,fd77::3", 7),
                                     ("cnnf-fpr4", "10.77.0.2,tcp:22,10.77.0.3", 0),
                                     ("cnnf-over4", "10.77.0.9", 5001)]
    fast = _fast_counters("\n".join(saved.splitlines()[:3]))
    assert fast == {(FastVerdict.ACCEPT, "fd77::2", 8081, "fd77::3"): 7,
                    (FastVerdict.REJECT, "10.77.0.2", 22, "10.77.0.3"): 0}
    rules = _builtin_rules("""*nat
-A FORWARD -j X
*filter
:FORWARD ACCEPT [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -m comment --comment cnnf -j CNNF-FORWARD
-A CNNF-FORWARD -j ACCEPT
-A INPUT -m comment --comment cnnf -j CNNF-INPUT
COMMIT
""")
    assert rules == {"FORWARD": ["-A FORWARD -j DOCKER-USER",
                                 "-A FORWARD -m comment --comment cnnf -j CNNF-FORWARD"],
                     "INPUT": ["-A INPUT -m comment --comment cnnf -j CNNF-INPUT"],
                     "OUTPUT": []}


def test_dns_cache_says_which_addresses_gained_a_name_and_when_names_end() -> None:
    now = [0.0]
    cache = DnsCache(lambda: now[0], min_ttl=10)
    assert cache.record([DnsRecord("1.2.3.4", ("a.example",), 30)]) == {"1.2.3.4"}
    assert cache.record([DnsRecord("1.2.3.4", ("a.example",), 30)]) == set()  # nothing new
    now[0] = 5.0
    assert cache.record([DnsRecord("1.2.3.4", ("b.example",), 5),
                         DnsRecord("5.6.7.8", ("a.example",), 60)]) == {"1.2.3.4", "5.6.7.8"}
    assert cache.expiry("1.2.3.4", ("a.example", "b.example")) == 15.0  # b: min_ttl 10
    assert cache.expiry("1.2.3.4", ("c.example",)) is None
    now[0] = 31.0  # a.example lapsed: learning it again is a gain
    assert cache.record([DnsRecord("1.2.3.4", ("a.example",), 30)]) == {"1.2.3.4"}
