"""A workload's port on this host: the host-side end of its veth, found from
the workload's own network namespace (for anti-spoofing, :class:`Port`).

Podman (netavark or CNI) and the CNI bridge plugin of Kubernetes nodes give a
container one veth: its ``eth0`` inside, the peer on this host enslaved to a
bridge (br_netfilter shows it as the packet's physical input device); routed
setups leave the peer unbridged (the packet's input device). The container's
``eth0`` names its peer's interface index (``link_index``) and the peer names
the container's back, which is how the pair is matched (an index alone may
exist in several namespaces).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cnnf.defender.datapath.backend import Port
from cnnf.defender.datapath.netns import DatapathError, NetnsRef


def match_ports(inner: list[dict[str, Any]], outer: list[dict[str, Any]],
                addresses: Iterable[str],
                inner_addresses: list[dict[str, Any]] | None = None) -> list[Port]:
    """``ip -j -d link show`` inside the workload and here -> the workload's
    ports here. Each may send from those of ``addresses`` (the runtime's) that
    its own inner interface holds (``ip -j addr show`` inside: ``inner_addresses``),
    so a workload with two veths cannot use one's address on the other; all of
    them when none is on it (the runtime named addresses the links do not show).
    Pure."""
    by_index = {o.get("ifindex"): o for o in outer}
    ports = []
    allowed = frozenset(addresses)
    on_link: dict[Any, set[str]] = {}
    for x in inner_addresses or ():
        on_link[x.get("ifindex")] = {str(a.get("local")) for a in x.get("addr_info") or ()}
    for link in inner:
        peer_index = link.get("link_index")
        if peer_index is None or "link_netnsid" not in link:
            continue  # not a pair with an end in another namespace
        peer = by_index.get(peer_index)
        if peer is None or peer.get("link_index") != link.get("ifindex"):
            continue
        info = peer.get("linkinfo") or {}
        if info.get("info_kind") != "veth":
            continue
        bridged = info.get("info_slave_kind") == "bridge"
        own = allowed & on_link.get(link.get("ifindex"), set())
        ports.append(Port(str(peer["ifname"]), frozenset(own) or allowed, bridged))
    return ports


def _links(netns: NetnsRef, what: str = "link") -> list[dict[str, Any]]:
    out = netns.run("ip", "-j", "-d", what, "show").stdout
    try:
        links = json.loads(out or "[]")
    except ValueError as exc:
        raise DatapathError(f"ip -j link: not JSON: {out[:200]!r}") from exc
    return [x for x in links if isinstance(x, dict)]


def workload_ports(workload: NetnsRef, addresses: Iterable[str], here: NetnsRef) -> list[Port]:
    """The ports in ``here`` of the workload whose namespace is ``workload``
    (e.g. ``NetnsRef("/proc/PID/ns/net")``); raises :class:`DatapathError`
    when a namespace cannot be read (the workload is gone)."""
    return match_ports(_links(workload), _links(here), addresses, _links(workload, "addr"))
