"""Which line of the waiting room a queued SYN waits in (pure), and how a
workload's port is found from ``ip -j -d link`` (pure)."""

from __future__ import annotations

import ipaddress
import struct
from types import SimpleNamespace
from typing import Any

from cnnf.defender.datapath.backend import DatapathConfig, Port
from cnnf.defender.datapath.ports import match_ports
from cnnf.defender.datapath.workers import (
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
