"""Hypothesis strategies for random valid policies and connection attempts.

Public API (reused by the document and engine tests):

- :func:`policies` -> ``SearchStrategy[Policy]``: a random *valid* policy:
  unique object names, unique rule ids and names, every rule naming existing
  objects of the kinds its list allows (so ``compile_policy`` and
  ``check_policy`` accept it). All optional fields are exercised (notes,
  owner, modified, descriptions, mode switches, block mode, default effect,
  revision).
- :func:`attempts` ``(policy)`` -> ``SearchStrategy[ConnectionAttempt]``:
  attempts aimed at that policy: identities, addresses, DNS names and ports
  drawn from the same small vocabularies the policy's objects use, plus the
  policy's own port boundaries (start-1, start, end, end+1), so that rules
  match, almost match and overlap often.

Vocabularies are small on purpose: globs and exact patterns over the same
names, overlapping CIDRs of both IP versions, wildcards above exact domains,
overlapping port ranges and disabled rules are what the engine's indexes must
get right.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

from cnnf.model import (
    ANY_PORT,
    BlockMode,
    ConnectionAttempt,
    ContainerIdentity,
    ContainerObject,
    ContainerSelector,
    DnsObject,
    Effect,
    Endpoint,
    HostIdentity,
    HostObject,
    HostSelector,
    NetworkObject,
    Policy,
    PortRange,
    Rule,
    SubnetObject,
    make_labels,
)

__all__ = [
    "attempts",
    "container_identities",
    "container_selectors",
    "endpoints",
    "host_identities",
    "host_selectors",
    "policies",
]

IMAGE_NAMES = ("shop/api", "shop/web", "shop/db", "db", "reg:5000/shop/api", "team/x/y")
TAGS = ("1.0", "2.1", "2.10", "latest")
IMAGE_PATTERNS = (
    "shop/api",
    "shop/web",
    "db",
    "shop/api:2.1",
    "db:latest",
    "reg:5000/shop/api",
    "shop/*",
    "shop/api:2.*",
    "*",
    "db*",
    "*/api",
    "shop/ap?",
    "shop/[aw]*",
    "reg:5000/*",
    "team/*/y",
    "team/x/y:1.0",
    # Normalised as identities are (docker.io/shop/api is shop/api), or kept.
    "docker.io/shop/api",
    "docker.io/shop/*",
    "docker.io/library/db:latest",
    "localhost/team/*/y",
    "docker.io/*",
)
NAMESPACES = ("prod", "dev", "kube-system", "")
NAMESPACE_PATTERNS = ("prod", "dev", "pr*", "*", "kube-*")
CONTAINER_NAMES = ("api-1", "web-1", "db-0", "x")
CONTAINER_PATTERNS = ("api-1", "web-1", "api-*", "*-0", "x")
HOSTS = ("node-1", "node-2", "edge")
HOST_PATTERNS = ("node-1", "node-2", "node-*", "*", "ed?e")
CLUSTERS = ("c1", "c2", "")
CLUSTER_PATTERNS = ("c1", "c2", "c*")
LABELS = (
    ("app", "api"),
    ("app", "web"),
    ("app", "db"),
    ("tier", "back"),
    ("tier", "front"),
    ("env", "prod"),
    ("env", "dev"),
)
LABEL_PATTERNS = (
    "app=api",
    "app=web",
    "tier=back",
    "env=prod",
    "app=*",
    "*=prod",
    "tier=b?ck",
    "app=[aw]*",
    "e*=d*",
)
CIDRS = (
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "192.168.0.0/16",
    "0.0.0.0/0",
    "fd00::/8",
    "fd00:1::/32",
    "fd00:1::5/128",
    "::/0",
)
ADDRESSES = (
    "10.1.2.3",
    "10.1.2.200",
    "10.1.9.9",
    "10.200.0.1",
    "192.168.1.1",
    "8.8.8.8",
    "fd00:1::5",
    "fd00:1::6",
    "fd00:2::1",
    "2001:db8::1",
    "not-an-address",
)
DOMAIN_PATTERNS = (
    "api.partner.example",
    "*.partner.example",
    "example.com",
    "*.example.com",
    "*.a.example.com",
    "db.internal",
)
DOMAINS = (
    "api.partner.example",
    "API.Partner.Example.",
    "partner.example",
    "x.y.partner.example",
    "example.com",
    "www.example.com",
    "a.example.com",
    "b.a.example.com",
    "db.internal",
    "other.org",
)
PORT_POINTS = (1, 22, 79, 80, 81, 443, 1000, 8000, 8080, 65535)
TEXT = st.text(alphabet="abcdefghij -_.", max_size=12)


def _some(values: tuple[str, ...]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(values), min_size=1, max_size=2).map(tuple)


_CONTAINER_FIELDS = {
    "images": IMAGE_PATTERNS,
    "labels": LABEL_PATTERNS,
    "namespaces": NAMESPACE_PATTERNS,
    "containers": CONTAINER_PATTERNS,
    "hosts": HOST_PATTERNS,
    "clusters": CLUSTER_PATTERNS,
}


@st.composite
def container_selectors(draw: st.DrawFn) -> ContainerSelector:
    """A non-empty container selector mixing exact patterns and globs.

    Mostly one or two fields (so that identities match often enough to test
    rule order), sometimes three."""
    count = draw(st.sampled_from((1, 1, 1, 2, 2, 3)))
    names = draw(
        st.lists(
            st.sampled_from(sorted(_CONTAINER_FIELDS)), min_size=count, max_size=count, unique=True
        )
    )
    return ContainerSelector(**{name: draw(_some(_CONTAINER_FIELDS[name])) for name in names})


@st.composite
def host_selectors(draw: st.DrawFn) -> HostSelector:
    """A non-empty host selector."""
    which = draw(st.sampled_from(("hosts", "hosts", "labels", "both")))
    hosts = draw(_some(HOST_PATTERNS)) if which in ("hosts", "both") else ()
    labels = draw(_some(LABEL_PATTERNS)) if which in ("labels", "both") else ()
    return HostSelector(hosts=hosts, labels=labels)


def _port_ranges() -> st.SearchStrategy[tuple[PortRange, ...]]:
    single = st.sampled_from(PORT_POINTS).map(lambda p: PortRange(start=p, end=p))
    ranged = st.tuples(st.sampled_from(PORT_POINTS), st.sampled_from(PORT_POINTS)).map(
        lambda ab: PortRange(start=min(ab), end=max(ab))
    )
    any_port = st.just(ANY_PORT)
    one = st.one_of(single, single, ranged, ranged, any_port)
    return st.lists(one, min_size=1, max_size=3).map(tuple)


_MODIFIED = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(2020, 1, 1),
        max_value=datetime(2030, 1, 1),
        timezones=st.just(UTC),
    ).map(lambda d: d.replace(microsecond=0)),
)


@st.composite
def policies(draw: st.DrawFn, max_rules: int = 16) -> Policy:
    """A random valid policy (see the module docstring)."""
    objects: list[NetworkObject] = []
    n_containers = draw(st.integers(1, 6))
    n_hosts = draw(st.integers(0, 3))
    n_subnets = draw(st.integers(0, 3))
    n_dns = draw(st.integers(0, 3))
    for i in range(n_containers):
        objects.append(
            ContainerObject(
                name=f"c{i}", selector=draw(container_selectors()), description=draw(TEXT)
            )
        )
    for i in range(n_hosts):
        objects.append(HostObject(name=f"h{i}", selector=draw(host_selectors())))
    for i in range(n_subnets):
        cidrs = tuple(draw(st.lists(st.sampled_from(CIDRS), min_size=1, max_size=3)))
        objects.append(SubnetObject(name=f"s{i}", cidrs=cidrs))
    for i in range(n_dns):
        domains = tuple(draw(st.lists(st.sampled_from(DOMAIN_PATTERNS), min_size=1, max_size=3)))
        objects.append(DnsObject(name=f"d{i}", domains=domains))
    objects = draw(st.permutations(objects))

    containers = [f"c{i}" for i in range(n_containers)]
    hosts = [f"h{i}" for i in range(n_hosts)]
    subnets = [f"s{i}" for i in range(n_subnets)]
    dns = [f"d{i}" for i in range(n_dns)]
    next_id = draw(st.integers(1, 1000))

    def rules(sources: list[str], destinations: list[str], count: int) -> tuple[Rule, ...]:
        nonlocal next_id
        out = []
        for _ in range(count):
            rule_id = next_id
            next_id += draw(st.integers(1, 3))
            out.append(
                Rule(
                    id=rule_id,
                    name=f"rule-{rule_id}",
                    src=draw(st.sampled_from(sources)),
                    dst=draw(st.sampled_from(destinations)),
                    ports=draw(_port_ranges()),
                    effect=draw(st.sampled_from(list(Effect))),
                    disabled=draw(st.integers(0, 3)) == 0,
                    notes=draw(TEXT),
                    owner=draw(st.sampled_from(("", "alice", "ops"))),
                    modified=draw(_MODIFIED),
                )
            )
        return tuple(out)

    container_rules = rules(containers, containers + subnets + dns, draw(st.integers(0, max_rules)))
    host_rules = (
        rules(hosts, hosts + subnets, draw(st.integers(0, max_rules // 2))) if hosts else ()
    )
    return Policy(
        container_enabled=draw(st.booleans()),
        host_enabled=draw(st.booleans()),
        default_effect=draw(st.sampled_from(list(Effect))),
        block_mode=draw(st.sampled_from(list(BlockMode))),
        objects=tuple(objects),
        container_rules=container_rules,
        host_rules=host_rules,
        revision=draw(st.integers(0, 10**6)),
    )


@st.composite
def container_identities(draw: st.DrawFn) -> ContainerIdentity:
    """A container identity over the shared vocabularies (tagged, untagged or by digest)."""
    name = draw(st.sampled_from(IMAGE_NAMES))
    form = draw(st.integers(0, 5))
    if form == 0:
        image = name
    elif form == 1:
        image = f"{name}@sha256:abc"
    else:
        image = f"{name}:{draw(st.sampled_from(TAGS))}"
    labels = draw(st.lists(st.sampled_from(LABELS), max_size=3, unique_by=lambda kv: kv[0]))
    # A pod with sidecars: image selectors match any of its images.
    sidecars = draw(st.lists(st.sampled_from(IMAGE_NAMES).map(lambda n: f"{n}:1.0"),
                             max_size=2))
    return ContainerIdentity(
        image=image,
        images=(image, *sidecars) if sidecars else (),
        name=draw(st.sampled_from(CONTAINER_NAMES)),
        labels=make_labels(labels),
        namespace=draw(st.sampled_from(NAMESPACES)),
        cluster=draw(st.sampled_from(CLUSTERS)),
        host=draw(st.sampled_from(HOSTS)),
    )


@st.composite
def host_identities(draw: st.DrawFn) -> HostIdentity:
    labels = draw(st.lists(st.sampled_from(LABELS), max_size=2, unique_by=lambda kv: kv[0]))
    return HostIdentity(name=draw(st.sampled_from(HOSTS)), labels=make_labels(labels))


@st.composite
def endpoints(draw: st.DrawFn) -> Endpoint:
    """A container, host or address-only endpoint, maybe with an address and DNS names."""
    kind = draw(st.sampled_from(("container", "container", "host", "address")))
    address = draw(st.sampled_from((None, *ADDRESSES, *ADDRESSES[:6])))
    domains = tuple(draw(st.lists(st.sampled_from(DOMAINS), max_size=2)))
    if kind == "container":
        return Endpoint(address=address, container=draw(container_identities()), domains=domains)
    if kind == "host":
        return Endpoint(address=address, host=draw(host_identities()), domains=domains)
    return Endpoint(address=address, domains=domains)


def attempts(policy: Policy) -> st.SearchStrategy[ConnectionAttempt]:
    """Attempts aimed at ``policy`` (see the module docstring)."""
    points = set(PORT_POINTS)
    for rule in (*policy.container_rules, *policy.host_rules):
        for r in rule.ports:
            points.update((r.start - 1, r.start, r.end, r.end + 1))
    ports = st.one_of(
        st.sampled_from(sorted(points)), st.sampled_from(sorted(points)), st.integers(0, 65535)
    )
    return st.builds(ConnectionAttempt, src=endpoints(), dst=endpoints(), port=ports)
