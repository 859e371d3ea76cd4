"""What the verdict loop hands to ``decide()`` and what it gets back.

Parsing is pure: :func:`parse_packet` reads the IPv4/IPv6 and TCP/UDP headers of
a queued packet (NFQUEUE payloads start at the network header).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from enum import IntEnum

TCP = 6
UDP = 17
# IPv6 extension headers we step over to find the transport header.
_IPV6_EXT = frozenset({0, 43, 60})
_IPV6_FRAGMENT = 44


class Decision(IntEnum):
    """The datapath's verdict on one queued SYN."""

    ACCEPT = 0
    ACCEPT_AUDIT = 1  # accepted like ACCEPT; the caller raises the audit
    REJECT = 2  # refused at once with a TCP reset (block mode "reset")
    DROP = 3  # silently dropped (block mode "drop"): the client times out


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """The addresses and ports of a queued packet.

    ``dst_domains`` holds the DNS names the datapath saw resolving to ``dst``
    (filled by the verdict loop from its :class:`~cnnf.defender.datapath.dns.DnsCache`).
    """

    family: int  # 4 or 6
    src: str
    dst: str
    sport: int
    dport: int
    proto: int = TCP
    dst_domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision plus whatever the caller wants to see again in the reports
    (e.g. the policy verdict); ``decide()`` may return this instead of a bare
    :class:`Decision`."""

    decision: Decision
    detail: object = None


def transport_offset(payload: bytes) -> tuple[int, int, int] | None:
    """(family, protocol, offset of the transport header), or None if unparsable."""
    if len(payload) < 20:
        return None
    version = payload[0] >> 4
    if version == 4:
        ihl = (payload[0] & 0x0F) * 4
        if ihl < 20 or len(payload) < ihl + 4:
            return None
        return 4, payload[9], ihl
    if version == 6:
        if len(payload) < 44:
            return None
        nxt, off = payload[6], 40
        while nxt in _IPV6_EXT or nxt == _IPV6_FRAGMENT:
            if len(payload) < off + 8:
                return None
            length = 8 if nxt == _IPV6_FRAGMENT else (payload[off + 1] + 1) * 8
            nxt, off = payload[off], off + length
        if len(payload) < off + 4:
            return None
        return 6, nxt, off
    return None


def parse_packet(payload: bytes) -> PacketInfo | None:
    """Parse the IP and TCP/UDP headers; None for anything else or a short packet."""
    found = transport_offset(payload)
    if found is None:
        return None
    family, proto, off = found
    if proto not in (TCP, UDP):
        return None
    if family == 4:
        src = socket.inet_ntop(socket.AF_INET, payload[12:16])
        dst = socket.inet_ntop(socket.AF_INET, payload[16:20])
    else:
        src = socket.inet_ntop(socket.AF_INET6, payload[8:24])
        dst = socket.inet_ntop(socket.AF_INET6, payload[24:40])
    sport = (payload[off] << 8) | payload[off + 1]
    dport = (payload[off + 2] << 8) | payload[off + 3]
    return PacketInfo(family, src, dst, sport, dport, proto)


def udp_payload(payload: bytes) -> bytes | None:
    """The UDP payload of an IP packet (for DNS answers), or None."""
    found = transport_offset(payload)
    if found is None or found[1] != UDP or len(payload) < found[2] + 8:
        return None
    return payload[found[2] + 8 :]
