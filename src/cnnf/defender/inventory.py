"""The address -> identity map a Defender resolves connection ends with.

Local containers come from discovery on this host; ``remote`` is the
cluster-wide map the Console sends back (other hosts' containers and hosts).
Pure data: no I/O, replaced whole when anything changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cnnf.model import ContainerIdentity, Endpoint, HostIdentity

Identity = ContainerIdentity | HostIdentity


def _frozen(d: Mapping[str, Identity] | None = None) -> Mapping[str, Identity]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True, slots=True)
class Inventory:
    node: HostIdentity
    containers: Mapping[str, ContainerIdentity] = field(default_factory=_frozen)  # type: ignore[arg-type]
    remote: Mapping[str, Identity] = field(default_factory=_frozen)

    @classmethod
    def build(
        cls,
        node: HostIdentity,
        containers: Iterable[tuple[str, ContainerIdentity]] = (),
        remote: Iterable[tuple[str, Identity]] = (),
    ) -> Inventory:
        return cls(node, MappingProxyType(dict(containers)), _remote_mapping(remote))

    def identity(self, address: str) -> Identity | None:
        if address in self.node.addresses:
            return self.node
        found = self.containers.get(address)
        if found is not None:
            return found
        return self.remote.get(address)

    def endpoint(self, address: str, domains: tuple[str, ...] = ()) -> Endpoint:
        ident = self.identity(address)
        if isinstance(ident, ContainerIdentity):
            return Endpoint(address=address, container=ident, domains=domains)
        if isinstance(ident, HostIdentity):
            return Endpoint(address=address, host=ident, domains=domains)
        return Endpoint(address=address, domains=domains)

    def local_container_addresses(self) -> frozenset[str]:
        return frozenset(self.containers)

    def cluster_container_addresses(self) -> frozenset[str]:
        remote = (a for a, i in self.remote.items() if isinstance(i, ContainerIdentity))
        return frozenset(self.containers) | frozenset(remote)

    def cluster_host_addresses(self) -> frozenset[str]:
        remote = (a for a, i in self.remote.items() if isinstance(i, HostIdentity))
        return frozenset(self.node.addresses) | frozenset(remote)


_last_remote: list[Any] = [None, None]  # (the tuple, its mapping)


def _remote_mapping(remote: Iterable[tuple[str, Identity]]) -> MappingProxyType[str, Identity]:
    """The remote identities as a mapping; one mapping for the same tuple
    built again (every inventory of one cluster inventory shares it)."""
    last, mapping = _last_remote
    if remote is last and mapping is not None:
        return mapping  # type: ignore[no-any-return]
    mapping = MappingProxyType(dict(remote))
    if isinstance(remote, tuple):
        _last_remote[:] = [remote, mapping]
    return mapping
