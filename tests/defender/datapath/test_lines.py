"""Which line of the waiting room a queued SYN waits in (pure), and how a
workload's port is found from ``ip -j -d link`` (pure)."""

from __future__ import annotations

import ipaddress
import struct
import time
from types import SimpleNamespace
from typing import Any

from cnnf.defender.datapath.backend import DatapathConfig, Port
from cnnf.defender.datapath.packet import Decision
from cnnf.defender.datapath.ports import match_ports
from cnnf.defender.datapath.workers import (
    LATE_BACKLOG,
    OUTSIDE_LINES,
    OUTSIDE_REST,
    LocalSources,
    _address,
    _Worker,
)


def syn(src: str, dst: str = "10.77.0.3") -> bytes:
    """An IP header (enough for the line: version and source)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, s.packed, d.packed)
    return struct.pack("!IHBB16s16s", 6 << 28, 20, 6, 64, s.packed, d.packed)


def worker(*local: str) -> _Worker:
    pool = SimpleNamespace(config=DatapathConfig(), decide=lambda p: None)
    w = _Worker(0, pool, None)  # type: ignore[arg-type]
    w.apply(LocalSources(frozenset(local)))
    return w


def test_a_local_source_waits_in_its_own_line_outside_ones_by_prefix() -> None:
    w = worker("10.77.0.2", "10.77.0.4", "fd77::2")
    lines = {a: _address(w.line(syn(a))) for a in (
        "10.77.0.2", "10.77.0.4", "10.9.1.5", "10.9.1.77", "10.9.2.5", "fd77::2",
        "2001:db8:0:1::5", "2001:db8:0:1::ffff")}
    assert lines == {
        "10.77.0.2": "10.77.0.2", "10.77.0.4": "10.77.0.4",  # same /24, own lines
        "10.9.1.5": "10.9.1.0/24", "10.9.1.77": "10.9.1.0/24", "10.9.2.5": "10.9.2.0/24",
        "fd77::2": "fd77::2",
        "2001:db8:0:1::5": "2001:db8:0:1::/64", "2001:db8:0:1::ffff": "2001:db8:0:1::/64"}


def test_forged_outside_sources_get_a_bounded_number_of_lines() -> None:
    """Thousands of forged sources: OUTSIDE_LINES prefixes of their own, the rest
    one shared line; a local source's SYN still comes within a round of them."""
    w = worker("10.77.0.2")
    now = 0.0
    for i in range(5000):
        src = str(ipaddress.ip_address(0x0B000000 + i * 256))  # a new /24 each
        w.room.push(w.line(syn(src)), i, now)
    w.room.push(w.line(syn("10.77.0.2")), -1, now)
    assert len(w.outside) == OUTSIDE_LINES
    assert len(w.room._queues) == OUTSIDE_LINES + 2  # their lines, the rest's, the local one
    # the room is full (2,048): what went was the shared line's, never the local one
    assert w.room.waiting(OUTSIDE_REST) == len(w.room) - OUTSIDE_LINES - 1
    assert w.room.waiting(b"\x0a\x4d\x00\x02") == 1
    order = [w.room.pop(now)[0] for _ in range(OUTSIDE_LINES + 2)]
    assert -1 in order
    # a line of their own is given again once an earlier one is empty
    while w.room.pop(now)[0] is not None:
        pass
    assert w.line(syn("12.0.0.1")) != OUTSIDE_REST


def test_names_of_lines() -> None:
    assert _address(OUTSIDE_REST) == "other sources outside this host"
    assert _address(b"\x0a\x00\x00\x01") == "10.0.0.1"


LINKS_IN: list[dict[str, Any]] = [
    {"ifindex": 1, "ifname": "lo", "linkinfo": None},
    {"ifindex": 2, "ifname": "eth0", "link_index": 23, "link_netnsid": 0,
     "linkinfo": {"info_kind": "veth"}},
]
LINKS_HERE: list[dict[str, Any]] = [
    {"ifindex": 1, "ifname": "lo"},
    {"ifindex": 22, "ifname": "veth9", "link_index": 2, "link_netnsid": 3,
     "linkinfo": {"info_kind": "veth", "info_slave_kind": "bridge"}},  # another pair's
    {"ifindex": 23, "ifname": "veth1", "link_index": 2, "link_netnsid": 1,
     "linkinfo": {"info_kind": "veth", "info_slave_kind": "bridge"}},
]


def test_the_port_is_the_peer_of_the_workloads_veth() -> None:
    assert match_ports(LINKS_IN, LINKS_HERE, ["10.88.0.5"]) == [
        Port("veth1", frozenset({"10.88.0.5"}), bridged=True)]
    routed = [dict(x, linkinfo={"info_kind": "veth"}) if x["ifindex"] == 23 else x
              for x in LINKS_HERE]
    assert match_ports(LINKS_IN, routed, ["10.88.0.5"]) == [
        Port("veth1", frozenset({"10.88.0.5"}), bridged=False)]


def test_no_port_when_the_peer_is_not_here_or_not_a_veth() -> None:
    # index 23 here is another interface (its peer index differs): not ours
    other = [dict(x, link_index=7) if x["ifindex"] == 23 else x for x in LINKS_HERE]
    assert match_ports(LINKS_IN, other, ["10.88.0.5"]) == []
    assert match_ports(LINKS_IN, [x for x in LINKS_HERE if x["ifindex"] != 23], ["a"]) == []
    dummy = [dict(x, linkinfo={"info_kind": "macvlan"}) if x["ifindex"] == 23 else x
             for x in LINKS_HERE]
    assert match_ports(LINKS_IN, dummy, ["10.88.0.5"]) == []


def test_late_counts_only_against_a_line_with_a_backlog_of_its_own() -> None:
    """A stall (GC, a big snapshot, the host busy) makes every waiting SYN late;
    only a line still holding LATE_BACKLOG behind it is one the loop cannot keep
    up with (the agent tightens it), not a source with a few SYNs waiting."""
    pool = SimpleNamespace(config=DatapathConfig(), decide=lambda p: Decision.ACCEPT,
                           _counters=[0] * 64, _generation=SimpleNamespace(value=0),
                           report=False)
    w = _Worker(0, pool, None)  # type: ignore[arg-type]
    w.apply(LocalSources(frozenset({"10.77.0.2", "10.77.0.3"})))
    verdicts: list[int] = []
    w.loop = SimpleNamespace(verdict=lambda pid, v, mark=None: verdicts.append(pid))  # type: ignore[assignment]
    then = time.monotonic() - 0.3  # waited past LATE, not past MAX_WAIT
    few, many = syn("10.77.0.2"), syn("10.77.0.3")
    for i in range(20):
        w.room.push(w.line(few), (i, few, 0, then, w.line(few)), then)
    for i in range(20, 20 + 3 * LATE_BACKLOG):
        w.room.push(w.line(many), (i, many, 0, then, w.line(many)), then)
    w.decide_some(40)
    assert len(verdicts) == 40
    assert set(w.late) == {ipaddress.ip_address("10.77.0.3").packed}


def test_a_port_may_send_only_from_the_addresses_on_its_own_link() -> None:
    """Two veths: each port is bound to the runtime's addresses that its own
    inner interface holds, not to every address of the workload."""
    inner = [*LINKS_IN, {"ifindex": 3, "ifname": "eth1", "link_index": 24, "link_netnsid": 0,
                         "linkinfo": {"info_kind": "veth"}}]
    here = [*LINKS_HERE, {"ifindex": 24, "ifname": "veth2", "link_index": 3, "link_netnsid": 1,
                          "linkinfo": {"info_kind": "veth", "info_slave_kind": "bridge"}}]
    addrs = [{"ifindex": 2, "addr_info": [{"family": "inet", "local": "10.88.0.5"}]},
             {"ifindex": 3, "addr_info": [{"family": "inet", "local": "10.89.0.5"},
                                          {"family": "inet6", "local": "fe80::1"}]}]
    assert match_ports(inner, here, ["10.88.0.5", "10.89.0.5"], addrs) == [
        Port("veth1", frozenset({"10.88.0.5"})), Port("veth2", frozenset({"10.89.0.5"}))]
