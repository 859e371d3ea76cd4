"""Endpoint specs: the command line's way to name one end of a connection.

- a container: ``image=shop/api:2.1,ns=prod,host=node-1,name=api-1,label=app=api,
  cluster=c1`` (``addr=10.0.0.5`` optional; ``label=`` repeatable);
- a host: ``host=node-1`` (optionally ``label=...`` and ``addr=...``);
- an address: ``10.0.0.5`` or ``fd00::5``;
- a DNS name: ``api.partner.example`` (an endpoint known only by that name).

Any key=value spec may add ``domain=NAME`` (repeatable): DNS names known for
the address.
"""

from __future__ import annotations

import ipaddress

from cnnf.errors import CnnfError
from cnnf.model import ContainerIdentity, Endpoint, HostIdentity, make_labels
from cnnf.model.objects import normalise_domain_pattern

_ALIASES = {
    "image": "image", "ns": "namespace", "namespace": "namespace", "host": "host",
    "name": "name", "label": "label", "cluster": "cluster", "addr": "addr",
    "address": "addr", "pod": "pod", "id": "id", "domain": "domain",
}
_CONTAINER_ONLY = ("image", "namespace", "name", "cluster", "pod", "id")
_REPEATABLE = ("label", "domain")
KEYS_TEXT = "image, ns, host, name, label, cluster, pod, id, addr, domain"


class EndpointSpecError(CnnfError, ValueError):
    """An endpoint spec cannot be understood."""


def _address(text: str, spec: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise EndpointSpecError(f"{spec!r}: {text!r} is not an IPv4 or IPv6 address") from None


def _domain(text: str, spec: str) -> str:
    try:
        name = normalise_domain_pattern(text)
    except ValueError:
        raise EndpointSpecError(f"{spec!r}: {text!r} is not a DNS name") from None
    if name.startswith("*."):
        raise EndpointSpecError(f"{spec!r}: {text!r} is a wildcard, not a DNS name")
    return name


def parse_endpoint(spec: str) -> Endpoint:
    """Parse one endpoint spec; raises :class:`EndpointSpecError` naming the problem."""
    text = spec.strip()
    if not text:
        raise EndpointSpecError("empty endpoint spec")
    if "=" not in text:
        try:
            return Endpoint(address=str(ipaddress.ip_address(text)))
        except ValueError:
            pass
        if ":" in text or "/" in text or text.rsplit(".", 1)[-1].isdigit():
            raise EndpointSpecError(f"{spec!r} is not an IPv4 or IPv6 address")
        return Endpoint(domains=(_domain(text, spec),))

    values: dict[str, str] = {}
    repeated: dict[str, list[str]] = {"label": [], "domain": []}
    for part in text.split(","):
        raw_key, sep, value = part.strip().partition("=")
        key = _ALIASES.get(raw_key.strip().lower())
        if not sep:
            raise EndpointSpecError(f"{spec!r}: {part.strip()!r} is not key=value")
        if key is None:
            raise EndpointSpecError(
                f"{spec!r}: unknown key {raw_key.strip()!r} (known: {KEYS_TEXT})")
        value = value.strip()
        if not value:
            raise EndpointSpecError(f"{spec!r}: {raw_key.strip()}= needs a value")
        if key in _REPEATABLE:
            repeated[key].append(value)
        elif key in values:
            raise EndpointSpecError(f"{spec!r}: {raw_key.strip()}= is given twice")
        else:
            values[key] = value

    labels = []
    for label in repeated["label"]:
        lkey, sep, lvalue = label.partition("=")
        if not sep or not lkey:
            raise EndpointSpecError(f"{spec!r}: label {label!r} is not key=value")
        labels.append((lkey, lvalue))
    address = _address(values["addr"], spec) if "addr" in values else None
    domains = tuple(_domain(d, spec) for d in repeated["domain"])

    if any(k in values for k in _CONTAINER_ONLY):
        if "image" not in values:
            raise EndpointSpecError(f"{spec!r}: a container spec needs image=NAME[:TAG]")
        namespace = values.get("namespace", "")
        container = ContainerIdentity(
            image=values["image"],
            name=values.get("name", ""),
            labels=make_labels(labels),
            namespace=namespace,
            cluster=values.get("cluster", ""),
            host=values.get("host", ""),
            id=values.get("id", ""),
            pod=values.get("pod", ""),
        )
        return Endpoint(address=address, container=container, domains=domains)
    if "host" in values:
        host = HostIdentity(
            name=values["host"],
            labels=make_labels(labels),
            addresses=(address,) if address else (),
        )
        return Endpoint(address=address, host=host, domains=domains)
    if labels:
        raise EndpointSpecError(f"{spec!r}: label= needs image= (a container) or host= (a host)")
    if address is None:
        if not domains:
            raise EndpointSpecError(f"{spec!r}: give image=, host=, addr= or domain=")
        return Endpoint(domains=domains)
    return Endpoint(address=address, domains=domains)
