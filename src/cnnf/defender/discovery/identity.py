"""Container identity from Docker Engine API data (Docker and Podman serve the
same shape). Pure: takes the ``inspect`` document, returns what CNNF needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cnnf.model import ContainerIdentity, make_labels
from cnnf.model.identity import K8S_CONTAINER_LABEL, K8S_NAMESPACE_LABEL, K8S_POD_LABEL


@dataclass(frozen=True, slots=True)
class DiscoveredContainer:
    identity: ContainerIdentity
    addresses: tuple[str, ...]
    host_network: bool  # on the host network: its connections count as the host's
    running: bool
    pid: int


def _get(d: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = d
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def container_from_inspect(
    attrs: Mapping[str, Any], host: str, cluster: str = ""
) -> DiscoveredContainer:
    labels: Mapping[str, str] = _get(attrs, "Config", "Labels") or {}
    image = _get(attrs, "Config", "Image") or _get(attrs, "ImageName") or _get(attrs, "Image") or ""
    name = str(attrs.get("Name") or "").lstrip("/")
    if labels.get(K8S_CONTAINER_LABEL):
        name = labels[K8S_CONTAINER_LABEL]
    addresses: list[str] = []
    networks: Mapping[str, Any] = _get(attrs, "NetworkSettings", "Networks") or {}
    for net in networks.values():
        for key in ("IPAddress", "GlobalIPv6Address"):
            value = (net or {}).get(key)
            if value and value not in addresses:
                addresses.append(value)
    for key in ("IPAddress", "GlobalIPv6Address"):
        value = _get(attrs, "NetworkSettings", key)
        if value and value not in addresses:
            addresses.append(value)
    mode = str(_get(attrs, "HostConfig", "NetworkMode") or "")
    identity = ContainerIdentity(
        image=str(image),
        name=name,
        labels=make_labels(labels),
        namespace=labels.get(K8S_NAMESPACE_LABEL, ""),
        pod=labels.get(K8S_POD_LABEL, ""),
        cluster=cluster,
        host=host,
        id=str(attrs.get("Id") or ""),
    )
    return DiscoveredContainer(
        identity=identity,
        addresses=tuple(addresses),
        host_network=mode == "host",
        running=bool(_get(attrs, "State", "Running")),
        pid=int(_get(attrs, "State", "Pid") or 0),
    )
