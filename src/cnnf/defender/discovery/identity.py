"""Container identity from Docker Engine API data (Docker and Podman serve the
same shape). Pure: takes the ``inspect`` document, returns what CNNF needs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cnnf.model import ContainerIdentity, make_labels, normalise_image
from cnnf.model.identity import K8S_CONTAINER_LABEL, K8S_NAMESPACE_LABEL, K8S_POD_LABEL


@dataclass(frozen=True, slots=True)
class DiscoveredContainer:
    identity: ContainerIdentity
    addresses: tuple[str, ...]
    host_network: bool  # on the host network: its connections count as the host's
    running: bool
    pid: int
    started_at: float = 0.0  # UNIX time the runtime started it (0: unknown)


def _timestamp(value: object) -> float:
    """RFC 3339 from the engine (nanoseconds, ``Z`` or an offset) -> UNIX seconds."""
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return 0.0
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?", value)
    if m is None:
        return 0.0
    tz = m[3] or "Z"
    tz = "+00:00" if tz == "Z" else tz
    try:
        base = datetime.fromisoformat(m[1] + tz).timestamp()
    except ValueError:
        return 0.0
    return base + (float(f"0.{m[2]}") if m[2] else 0.0)


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
        image=normalise_image(str(image)),
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
        started_at=_timestamp(_get(attrs, "State", "StartedAt")),
    )
