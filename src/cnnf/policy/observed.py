"""Observed flows as learning and simulation read them: the identities of both
ends as recorded when the flow was stored, and the flow's counts.

The Console keeps, with every aggregated flow, each end's identity as one
canonical JSON text (:func:`identity_text`): what a network object can select
on. A container's per-instance names (the Kubernetes pod name and uid labels)
are left out, so replicas of one workload fold into one flow as they do in
Radar; everything else a selector matches (image, container name, labels,
namespace, cluster, host; a host's name, labels and cluster; a destination's
address and an address's DNS name) is kept. :func:`endpoint_of` turns the text back into the
:class:`~cnnf.model.Endpoint` the engine evaluates, and falls back to the
flow's identity key (``image:shop/api``) for flows stored before identities
were recorded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from cnnf.model import ContainerIdentity, Endpoint, HostIdentity, make_labels
from cnnf.model.records import EndpointInfo

# Labels that name one pod instance, not the workload: kept out of the identity.
INSTANCE_LABELS = frozenset({"io.kubernetes.pod.name", "io.kubernetes.pod.uid"})


def identity_fields(ep: EndpointInfo, *, address: bool = True) -> dict[str, Any]:
    """The selectable identity of one end, as a plain mapping (no empty fields).

    ``address``: keep the end's address. Subnet objects match a destination's
    address whatever its kind, so a destination keeps it; no rule selects a
    source by address, so a source leaves it out (replicas fold)."""
    if ep.kind == "container":
        out: dict[str, Any] = {"kind": "container", "image": ep.image}
        labels = {k: v for k, v in ep.labels.items() if k not in INSTANCE_LABELS}
        for name, value in (("name", ep.container), ("namespace", ep.namespace),
                            ("cluster", ep.cluster), ("host", ep.host)):
            if value:
                out[name] = value
        if labels:
            out["labels"] = labels
        if address and ep.address:
            out["address"] = ep.address
        return out
    if ep.kind == "host":
        out = {"kind": "host", "host": ep.host}
        if ep.cluster:
            out["cluster"] = ep.cluster
        if ep.labels:
            out["labels"] = dict(ep.labels)
        if address and ep.address:
            out["address"] = ep.address
        return out
    out = {"kind": "address"}
    if ep.address:
        out["address"] = ep.address
    if ep.domain:
        out["domain"] = ep.domain
    return out


def identity_text(ep: EndpointInfo, *, address: bool = True) -> str:
    """:func:`identity_fields` as canonical JSON (sorted keys): equal identities,
    equal texts."""
    return orjson.dumps(identity_fields(ep, address=address),
                        option=orjson.OPT_SORT_KEYS).decode()


#: The longest identity text kept with a flow; a longer one is replaced by
#: :func:`too_long_text` (a digest), never cut (a cut text would read back as
#: another, broader identity).
MAX_IDENTITY = 4000
TOO_LONG = "too-long"
#: What a too-long identity reads back as: an endpoint no object selects (no
#: container, host, name or valid address). Learning skips its flows, naming why.
UNRECORDED = Endpoint(address="identity-too-long-to-record")


def recorded_text(ep: EndpointInfo, *, address: bool = True) -> str:
    """:func:`identity_text`, or when that is longer than :data:`MAX_IDENTITY`,
    a short text naming its kind, length and SHA-256 digest: two different
    too-long identities stay two flows, and neither becomes another identity."""
    text = identity_text(ep, address=address)
    if len(text) <= MAX_IDENTITY:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()
    return orjson.dumps({"kind": TOO_LONG, "length": len(text), "sha256": digest},
                        option=orjson.OPT_SORT_KEYS).decode()


def _from_fields(data: Mapping[str, Any]) -> Endpoint:
    kind = data.get("kind")
    if kind == TOO_LONG:
        return UNRECORDED
    labels = make_labels(data.get("labels") or {})
    address = data.get("address") or None
    if kind == "container":
        return Endpoint(address=address, container=ContainerIdentity(
            image=str(data.get("image", "")), name=str(data.get("name", "")), labels=labels,
            namespace=str(data.get("namespace", "")), cluster=str(data.get("cluster", "")),
            host=str(data.get("host", ""))))
    if kind == "host":
        return Endpoint(address=address, host=HostIdentity(
            name=str(data.get("host", "")), labels=labels, cluster=str(data.get("cluster", ""))))
    domain = str(data.get("domain", ""))
    return Endpoint(address=address, domains=(domain,) if domain else ())


def _from_key(key: str) -> Endpoint:
    prefix, _, value = key.partition(":")
    if prefix == "image":
        return Endpoint(container=ContainerIdentity(image=value))
    if prefix == "host":
        return Endpoint(host=HostIdentity(name=value))
    if prefix == "dns":
        return Endpoint(domains=(value,))
    return Endpoint(address=value if prefix == "addr" else key)


def endpoint_of(text: str, key: str) -> Endpoint:
    """The endpoint an identity text stands for; from ``key`` when ``text`` is
    empty or unreadable (flows stored before identities were recorded)."""
    if text:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            return _from_fields(data)
    return _from_key(key)


def _unnamed(text: str) -> dict[str, Any] | None:
    """The identity ``text`` stands for, without its container name; None when
    it is read from the flow's key (empty, not JSON, not a JSON object)."""
    if not text:
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    data.pop("name", None)
    return data


def identity_class(text: str) -> str:
    """The class of a recorded identity text: equal for texts that stand for the
    same identity once the container name is left out (replicas ``api-1`` and
    ``api-2`` of one workload), different otherwise; ``""`` for a text read
    from the flow's key (:func:`endpoint_of`). A 128-bit BLAKE2b digest of the
    canonical JSON: short, so that the store groups a million flows by it
    without parsing any JSON, and too wide for anyone to make two identities
    share one (a workload chooses the DNS names and addresses it reaches, so a
    64-bit digest could be collided on purpose). The Console stores it with
    each flow (``src_class``, ``dst_class``) when the flow is first stored."""
    data = _unnamed(text)
    if data is None:
        return ""
    try:
        canonical = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # parsed but not written back: the text is its own class
        canonical = b"raw:" + text.encode()
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def unnamed_endpoint(text: str, key: str) -> Endpoint:
    """:func:`endpoint_of` with the container name left out: what every text of
    one :func:`identity_class` reads as when no object selects by name."""
    data = _unnamed(text)
    return _from_key(key) if data is None else _from_fields(data)


class EndpointCache:
    """Identity texts repeat (a few hundred workloads over a million flows):
    each is parsed once."""

    __slots__ = ("_keys", "_texts", "unreadable")

    def __init__(self) -> None:
        self._texts: dict[str, Endpoint] = {}
        self._keys: dict[str, Endpoint] = {}
        #: texts read from the key (not a JSON object): one per key, not per text
        self.unreadable: set[str] = set()

    def __call__(self, text: str, key: str) -> Endpoint:
        # A text stands for itself (it holds everything the key says); only
        # flows without one, or with one that is no JSON object, are read from
        # their key (the same unreadable text beside two keys is two endpoints).
        if text and text not in self.unreadable:
            found = self._texts.get(text)
            if found is not None:
                return found
            data = _unnamed_or_whole(text)
            if data is not None:
                found = self._texts[text] = _from_fields(data)
                return found
            self.unreadable.add(text)
        found = self._keys.get(key)
        if found is None:
            found = self._keys[key] = _from_key(key)
        return found


def _unnamed_or_whole(text: str) -> dict[str, Any] | None:
    """The JSON object ``text`` holds; None when it holds none."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True, slots=True)
class ObservedFlow:
    """One stored flow (or several folded): ``kind`` is the rule list that
    applies (``container`` or ``host``), ``src``/``dst`` the identity keys Radar
    draws, ``src_ep``/``dst_ep`` the identities recorded with it. ``verdict``
    and ``rule_id`` are what the Defender decided then (``observed`` and 0: no
    rule matched and the default let it through)."""

    kind: str
    src: str
    dst: str
    port: int
    src_ep: Endpoint
    dst_ep: Endpoint
    verdict: str
    rule_id: int
    flows: int
    count: int
    first_seen: datetime
    last_seen: datetime
