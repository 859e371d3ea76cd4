"""Object matchers: selectors, globs, labels, subnets, DNS names (tables of cases)."""

from __future__ import annotations

import pytest

from cnnf.model import (
    ContainerIdentity,
    ContainerObject,
    ContainerSelector,
    DnsObject,
    Endpoint,
    HostIdentity,
    HostObject,
    HostSelector,
    SubnetObject,
    make_labels,
)
from cnnf.policy.match import (
    ContainerMatch,
    DnsMatch,
    HostMatch,
    LabelMatch,
    ObjectMatch,
    SubnetMatch,
    compile_globs,
    describe_endpoint,
    domain_matches,
    image_patterns,
    image_refs,
    normalise_domain,
    normalise_image_pattern,
)


@pytest.mark.parametrize(
    ("patterns", "value", "expected"),
    [
        (["shop/api"], "shop/api", True),
        (["shop/api"], "shop/api2", False),
        (["shop/*"], "shop/api", True),
        (["shop/*"], "shop", False),
        (["sh?p"], "shop", True),
        (["[ab]x"], "bx", True),
        (["[ab]x"], "cx", False),
        (["a", "b*"], "bz", True),
        (["a", "b*"], "a", True),
        (["a", "b*"], "c", False),
        (["Shop"], "shop", False),  # case-sensitive
        (["*"], "", True),
        ([], "anything", False),
    ],
)
def test_compile_globs(patterns: list[str], value: str, expected: bool) -> None:
    assert compile_globs(patterns)(value) is expected


@pytest.mark.parametrize(
    ("image", "refs"),
    [
        ("shop/api:2.1", ("shop/api:2.1", "shop/api")),
        ("shop/api", ("shop/api:latest", "shop/api")),
        ("reg:5000/shop/api", ("reg:5000/shop/api:latest", "reg:5000/shop/api")),
        ("reg:5000/shop/api:1.0", ("reg:5000/shop/api:1.0", "reg:5000/shop/api")),
        ("shop/api@sha256:ab", ("shop/api@sha256:ab", "shop/api")),
    ],
)
def test_image_refs(image: str, refs: tuple[str, str]) -> None:
    assert image_refs(ContainerIdentity(image=image)) == refs


@pytest.mark.parametrize(
    ("patterns", "image", "expected"),
    [
        (["shop/api"], "shop/api:2.1", True),  # a name alone matches any tag
        (["shop/api"], "shop/api", True),
        (["shop/api"], "shop/api-v2:1", False),
        (["shop/api*"], "shop/api-v2:1", True),
        (["shop/api:2.*"], "shop/api:2.1", True),
        (["shop/api:2.*"], "shop/api:1.0", False),
        (["shop/api:latest"], "shop/api", True),  # untagged means latest
        (["shop/api:2.1"], "shop/api", False),
        (["shop/*"], "shop/api:1", True),
        (["shop/*"], "other/api:1", False),
        (["*/api"], "shop/api:3", True),
        (["reg:5000/shop/api"], "reg:5000/shop/api:1.0", True),
        (["reg:5000/*"], "reg:5000/shop/api:1.0", True),
        (["Shop/api"], "shop/api:1", False),
        (["shop/api"], "shop/api@sha256:ab", True),
        (["shop/web", "shop/api"], "shop/api:1", True),
        # Patterns are normalised as identities are: the engine's prefixes go.
        (["docker.io/shop/db"], "shop/db:13", True),
        (["docker.io/shop/db:13"], "shop/db:13", True),
        (["docker.io/shop/db:14"], "shop/db:13", False),
        (["docker.io/library/redis:7"], "redis:7", True),
        (["localhost/shop/api"], "shop/api:2.1", True),
        (["docker.io/shop/*"], "shop/db:13", True),
        (["docker.io/shop/*"], "other/db:13", False),
        (["docker.io/*"], "quay.io/x/y:1", False),  # not broadened to "*"
        (["docker.io/*"], "shop/db:13", False),
        (["quay.io/x/y"], "quay.io/x/y:1", True),
    ],
)
def test_image_globs(patterns: list[str], image: str, expected: bool) -> None:
    match = ContainerMatch(ContainerSelector(images=tuple(patterns)))
    assert match(ContainerIdentity(image=image)) is expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("docker.io/shop/db", "shop/db"),
        ("docker.io/shop/db:13", "shop/db:13"),
        ("docker.io/library/redis:7", "redis:7"),
        ("docker.io/library/redis", "redis"),
        ("localhost/shop/api:2.1", "shop/api:2.1"),
        ("docker.io/shop/*", "shop/*"),  # a literal first segment: no other registry
        ("docker.io/shop/api:2.*", "shop/api:2.*"),
        ("localhost/team/*/y", "team/*/y"),
        # A glob right after the prefix would reach every registry: kept as written.
        ("docker.io/*", "docker.io/*"),
        ("docker.io/sh*/db", "docker.io/sh*/db"),
        ("docker.io/library/re*", "docker.io/library/re*"),
        ("localhost/*", "localhost/*"),
        ("quay.io/x/y:1", "quay.io/x/y:1"),
        ("shop/db", "shop/db"),
        ("*", "*"),
        ("docker.io/", "docker.io/"),
        ("reg:5000/docker.io/x", "reg:5000/docker.io/x"),
    ],
)
def test_image_patterns_are_normalised_as_identities_are(pattern: str, expected: str) -> None:
    assert normalise_image_pattern(pattern) == expected
    assert normalise_image_pattern(expected) == expected


def test_image_patterns_drop_duplicates_after_normalising() -> None:
    assert image_patterns(("docker.io/shop/db", "shop/db", "redis")) == ("shop/db", "redis")


def test_a_mismatch_names_the_patterns_as_written() -> None:
    match = ContainerMatch(ContainerSelector(images=("docker.io/shop/db",), namespaces=("x",)))
    assert match.mismatch(ContainerIdentity(image="shop/db:13", namespace="y")) == "namespaces x"
    assert match.mismatch(ContainerIdentity(image="shop/web:1", namespace="x")) == (
        "images docker.io/shop/db")


@pytest.mark.parametrize(
    ("patterns", "labels", "expected"),
    [
        (["app=api"], {"app": "api"}, True),
        (["app=api"], {"app": "web"}, False),
        (["app=api"], {}, False),
        (["app=*"], {"app": "x"}, True),
        (["app=*"], {"tier": "x"}, False),
        (["*=prod"], {"env": "prod"}, True),
        (["tier=b?ck"], {"tier": "back"}, True),
        (["tier=b?ck"], {"tier": "black"}, False),
        # key and value must match the same label
        (["env=prod"], {"env": "dev", "stage": "prod"}, False),
        (["a=b=c"], {"a": "b=c"}, True),  # the first '=' separates key and value
        (["app=web", "app=api"], {"app": "api"}, True),
        (["App=api"], {"app": "api"}, False),
    ],
)
def test_label_globs(patterns: list[str], labels: dict[str, str], expected: bool) -> None:
    assert LabelMatch(patterns)(make_labels(labels)) is expected
    selector = ContainerSelector(labels=tuple(patterns))
    assert ContainerMatch(selector)(ContainerIdentity("x", labels=make_labels(labels))) is expected


API = ContainerIdentity(
    image="shop/api:2.1",
    name="api-1",
    labels=make_labels({"app": "api", "tier": "back"}),
    namespace="prod",
    cluster="east",
    host="node-1",
)


@pytest.mark.parametrize(
    ("fields", "expected", "failing"),
    [
        ({"namespaces": ("prod",)}, True, None),
        ({"namespaces": ("dev",)}, False, "namespaces dev"),
        ({"namespaces": ("pr*",)}, True, None),
        ({"containers": ("api-*",)}, True, None),
        ({"containers": ("web-*",)}, False, "containers web-*"),
        ({"hosts": ("node-1",)}, True, None),
        ({"hosts": ("node-2", "node-3")}, False, "hosts node-2, node-3"),
        ({"clusters": ("east",)}, True, None),
        ({"clusters": ("west",)}, False, "clusters west"),
        # fields are ANDed: every set field must match
        ({"images": ("shop/api",), "namespaces": ("prod",)}, True, None),
        ({"images": ("shop/api",), "namespaces": ("dev",)}, False, "namespaces dev"),
        ({"images": ("shop/web",), "namespaces": ("prod",)}, False, "images shop/web"),
        (
            {"images": ("*",), "labels": ("tier=back",), "hosts": ("node-*",)},
            True,
            None,
        ),
        ({"images": ("*",), "labels": ("tier=front",)}, False, "labels tier=front"),
        # patterns in a field are ORed
        ({"namespaces": ("dev", "prod")}, True, None),
    ],
)
def test_container_selector_fields(
    fields: dict[str, tuple[str, ...]], expected: bool, failing: str | None
) -> None:
    match = ContainerMatch(ContainerSelector(**fields))
    assert match(API) is expected
    assert match.mismatch(API) == failing


def test_empty_identity_field_matches_only_globs_that_match_empty() -> None:
    bare = ContainerIdentity(image="shop/api")
    assert ContainerMatch(ContainerSelector(namespaces=("*",)))(bare)
    assert not ContainerMatch(ContainerSelector(namespaces=("prod",)))(bare)
    assert not ContainerMatch(ContainerSelector(namespaces=("?*",)))(bare)


NODE = HostIdentity(name="node-1", labels=make_labels({"role": "worker", "zone": "a"}))


@pytest.mark.parametrize(
    ("hosts", "labels", "expected", "failing"),
    [
        (("node-1",), (), True, None),
        (("node-*",), (), True, None),
        (("node-2",), (), False, "hosts node-2"),
        ((), ("role=worker",), True, None),
        ((), ("role=edge",), False, "labels role=edge"),
        (("node-*",), ("zone=a",), True, None),
        (("node-*",), ("zone=b",), False, "labels zone=b"),
        (("edge",), ("zone=a",), False, "hosts edge"),
    ],
)
def test_host_selector(
    hosts: tuple[str, ...], labels: tuple[str, ...], expected: bool, failing: str | None
) -> None:
    match = HostMatch(HostSelector(hosts=hosts, labels=labels))
    assert match(NODE) is expected
    assert match.mismatch(NODE) == failing


@pytest.mark.parametrize(
    ("cidrs", "address", "expected"),
    [
        (("10.0.0.0/8",), "10.1.2.3", True),
        (("10.0.0.0/8",), "11.0.0.1", False),
        (("10.1.2.3/32",), "10.1.2.3", True),
        (("10.1.2.3/32",), "10.1.2.4", False),
        (("0.0.0.0/0",), "203.0.113.9", True),
        (("0.0.0.0/0",), "fd00::1", False),  # an IPv4 CIDR never holds an IPv6 address
        (("fd00::/8",), "fd00:1::5", True),
        (("fd00::/8",), "2001:db8::1", False),
        (("::/0",), "2001:db8::1", True),
        (("::/0",), "10.0.0.1", False),
        (("192.168.0.0/16", "fd00::/8"), "fd12::1", True),
        (("10.0.0.0/8",), "not-an-address", False),
        (("10.0.0.0/8",), None, False),
        (("10.0.0.0/8",), "", False),
    ],
)
def test_subnets(cidrs: tuple[str, ...], address: str | None, expected: bool) -> None:
    assert SubnetMatch(SubnetObject(name="n", cidrs=cidrs))(address) is expected


@pytest.mark.parametrize(
    ("domains", "name", "expected"),
    [
        (("api.partner.example",), "api.partner.example", True),
        (("api.partner.example",), "API.Partner.Example", True),  # case-insensitive
        (("api.partner.example",), "api.partner.example.", True),  # root dot ignored
        (("api.partner.example",), "x.api.partner.example", False),
        (("api.partner.example",), "partner.example", False),
        (("*.example.com",), "www.example.com", True),
        (("*.example.com",), "a.b.c.example.com", True),  # any depth
        (("*.example.com",), "example.com", False),  # not the apex itself
        (("*.example.com",), "badexample.com", False),  # a label boundary, not a suffix
        (("*.example.com",), "WWW.EXAMPLE.COM.", True),
        (("example.com", "*.example.com"), "example.com", True),
        (("*.a.example.com",), "a.example.com", False),
        (("*.a.example.com",), "b.a.example.com", True),
    ],
)
def test_dns_names(domains: tuple[str, ...], name: str, expected: bool) -> None:
    assert DnsMatch(DnsObject(name="d", domains=domains))((name,)) is expected
    normal = DnsObject(name="d", domains=domains).domains
    assert any(domain_matches(p, normalise_domain(name)) for p in normal) is expected


def test_dns_any_of_several_names() -> None:
    match = DnsMatch(DnsObject(name="d", domains=("*.example.com",)))
    assert match(("other.org", "www.example.com"))
    assert not match(("other.org",))
    assert not match(())


WEB = ContainerIdentity(image="shop/web:1.0")


@pytest.mark.parametrize(
    ("obj", "endpoint", "reason"),
    [
        (
            ContainerObject(name="api", selector=ContainerSelector(images=("shop/api*",))),
            Endpoint(address="10.0.0.1", container=WEB),
            "images shop/api*",
        ),
        (
            ContainerObject(name="api", selector=ContainerSelector(images=("shop/api*",))),
            Endpoint(address="10.0.0.1"),
            "not a container",
        ),
        (
            HostObject(name="nodes", selector=HostSelector(hosts=("node-*",))),
            Endpoint(address="10.0.0.1", container=WEB),
            "not a host",
        ),
        (
            SubnetObject(name="net", cidrs=("10.0.0.0/8",)),
            Endpoint(address="192.168.1.1"),
            "address 192.168.1.1 not in 10.0.0.0/8",
        ),
        (
            SubnetObject(name="net", cidrs=("10.0.0.0/8",)),
            Endpoint(container=WEB),
            "no address to test against 10.0.0.0/8",
        ),
        (
            DnsObject(name="d", domains=("*.example.com",)),
            Endpoint(address="1.2.3.4", domains=("other.org",)),
            "names not under *.example.com",
        ),
        (
            DnsObject(name="d", domains=("*.example.com",)),
            Endpoint(address="1.2.3.4"),
            "no DNS name known to test against *.example.com",
        ),
        (SubnetObject(name="net", cidrs=("10.0.0.0/8",)), Endpoint(address="10.9.9.9"), None),
    ],
)
def test_object_match_on_endpoints(
    obj: ContainerObject | HostObject | SubnetObject | DnsObject,
    endpoint: Endpoint,
    reason: str | None,
) -> None:
    match = ObjectMatch(obj)
    assert match.mismatch(endpoint) == reason
    assert match(endpoint) is (reason is None)


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        (Endpoint(address="10.0.0.1", container=WEB), "shop/web:1.0"),
        (Endpoint(address="10.0.0.1", host=HostIdentity("node-1")), "host node-1"),
        (Endpoint(address="10.0.0.1"), "10.0.0.1"),
        (Endpoint(address="1.2.3.4", domains=("a.example",)), "a.example (1.2.3.4)"),
        (Endpoint(), "(no address)"),
    ],
)
def test_describe_endpoint(endpoint: Endpoint, text: str) -> None:
    assert describe_endpoint(endpoint) == text
