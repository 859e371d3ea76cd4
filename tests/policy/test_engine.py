# ruff: noqa: E501  (tables of cases read best one case per line)
"""The policy engine: evaluation semantics, verdicts, compile errors, explain (tables)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cnnf.errors import PolicyValidationError
from cnnf.model import (
    ConnectionAttempt,
    ContainerIdentity,
    Effect,
    Endpoint,
    HostIdentity,
    Policy,
    RuleKind,
    Verdict,
    make_labels,
)
from cnnf.policy import CompiledPolicy, Explanation, RuleStep, compile_policy
from cnnf.policy.naive import NaiveEvaluator, naive_evaluate

OBJECTS: list[dict[str, Any]] = [
    {"kind": "container", "name": "web", "selector": {"images": ["shop/web"]}},
    {"kind": "container", "name": "api", "selector": {"images": ["shop/api"]}},
    {"kind": "container", "name": "api2", "selector": {"images": ["shop/api:2.*"]}},
    {"kind": "container", "name": "any", "selector": {"images": ["*"]}},
    {"kind": "container", "name": "prod", "selector": {"namespaces": ["prod"]}},
    {"kind": "container", "name": "back", "selector": {"labels": ["tier=back"]}},
    {"kind": "container", "name": "anyapp", "selector": {"labels": ["app=*"]}},
    {"kind": "container", "name": "east", "selector": {"clusters": ["east"]}},
    {"kind": "container", "name": "on-node-1", "selector": {"hosts": ["node-1"]}},
    {"kind": "container", "name": "api-pods", "selector": {"containers": ["api-*"]}},
    {
        "kind": "container",
        "name": "prod-api",
        "selector": {"images": ["shop/api"], "namespaces": ["prod"]},
    },
    {"kind": "host", "name": "nodes", "selector": {"hosts": ["node-*"]}},
    {"kind": "host", "name": "edge", "selector": {"labels": ["role=edge"]}},
    {"kind": "subnet", "name": "net10", "cidrs": ["10.0.0.0/8"]},
    {"kind": "subnet", "name": "net10-1", "cidrs": ["10.1.0.0/16"]},
    {"kind": "subnet", "name": "v6", "cidrs": ["fd00::/16"]},
    {"kind": "subnet", "name": "everything", "cidrs": ["0.0.0.0/0", "::/0"]},
    {"kind": "dns", "name": "partner", "domains": ["api.partner.example"]},
    {"kind": "dns", "name": "wild", "domains": ["*.example.com"]},
]


def policy(
    rules: list[dict[str, Any]],
    host_rules: list[dict[str, Any]] | None = None,
    default: str = "allow",
    revision: int = 7,
) -> Policy:
    def fill(i: int, r: dict[str, Any]) -> dict[str, Any]:
        return {"name": f"r{r.get('id', i + 1)}", "id": i + 1, **r}

    return Policy.model_validate(
        {
            "objects": OBJECTS,
            "containerRules": [fill(i, r) for i, r in enumerate(rules)],
            "hostRules": [fill(100 + i, r) for i, r in enumerate(host_rules or [])],
            "defaultEffect": default,
            "revision": revision,
        }
    )


def c(
    image: str,
    address: str = "10.1.0.5",
    *,
    ns: str = "",
    labels: dict[str, str] | None = None,
    host: str = "node-1",
    cluster: str = "",
    name: str = "",
) -> Endpoint:
    identity = ContainerIdentity(
        image=image,
        name=name,
        labels=make_labels(labels),
        namespace=ns,
        cluster=cluster,
        host=host,
    )
    return Endpoint(address=address, container=identity)


def h(name: str, address: str = "192.168.0.1", labels: dict[str, str] | None = None) -> Endpoint:
    return Endpoint(address=address, host=HostIdentity(name=name, labels=make_labels(labels)))


def a(address: str | None = None, *domains: str) -> Endpoint:
    return Endpoint(address=address, domains=domains)


WEB = c("shop/web:1.0", "10.1.0.2")
API = c("shop/api:2.1", "10.1.0.3", ns="prod", labels={"app": "api", "tier": "back"})
DB = c("shop/db:15", "10.2.0.4", ns="data", labels={"tier": "data"}, host="node-2")

CASES: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], Endpoint, Endpoint, int,
                  tuple[str, int | None]]] = [
    # (case, container rules, host rules, src, dst, port, (effect, deciding rule id or None))
    (
        "first matching rule wins",
        [{"src": "web", "dst": "api", "effect": "allow"}, {"src": "web", "dst": "api", "effect": "prevent"}],
        [], WEB, API, 80, ("allow", 1),
    ),
    (
        "order decides, not effect",
        [{"src": "web", "dst": "any", "effect": "prevent"}, {"src": "web", "dst": "api", "effect": "allow"}],
        [], WEB, API, 80, ("prevent", 1),
    ),
    (
        "a disabled rule is skipped",
        [{"src": "web", "dst": "api", "effect": "prevent", "disabled": True},
         {"src": "web", "dst": "api", "effect": "alert"}],
        [], WEB, API, 80, ("alert", 2),
    ),
    (
        "all rules disabled: default",
        [{"src": "web", "dst": "api", "effect": "prevent", "disabled": True}],
        [], WEB, API, 80, ("allow", None),
    ),
    ("no rules: default", [], [], WEB, API, 80, ("allow", None)),
    (
        "non-matching rule is passed over",
        [{"src": "api", "dst": "web"}, {"src": "web", "dst": "api", "effect": "alert"}],
        [], WEB, API, 80, ("alert", 2),
    ),
    # ports
    ("single port matches", [{"src": "web", "dst": "api", "ports": [443]}], [], WEB, API, 443, ("allow", 1)),
    ("single port differs", [{"src": "web", "dst": "api", "ports": [443]}], [], WEB, API, 444, ("allow", None)),
    ("range start", [{"src": "web", "dst": "api", "ports": ["8000-8080"]}], [], WEB, API, 8000, ("allow", 1)),
    ("range end", [{"src": "web", "dst": "api", "ports": ["8000-8080"]}], [], WEB, API, 8080, ("allow", 1)),
    ("past range end", [{"src": "web", "dst": "api", "ports": ["8000-8080"]}], [], WEB, API, 8081, ("allow", None)),
    ("before range", [{"src": "web", "dst": "api", "ports": ["8000-8080"]}], [], WEB, API, 7999, ("allow", None)),
    ("* covers port 1", [{"src": "web", "dst": "api", "ports": "*"}], [], WEB, API, 1, ("allow", 1)),
    ("* covers 65535", [{"src": "web", "dst": "api", "ports": "*"}], [], WEB, API, 65535, ("allow", 1)),
    ("list of ports and ranges", [{"src": "web", "dst": "api", "ports": [22, "80-90", 443]}], [], WEB, API, 85, ("allow", 1)),
    ("port 0 never matches", [{"src": "web", "dst": "api", "ports": "*"}], [], WEB, API, 0, ("allow", None)),
    ("port above 65535 never matches", [{"src": "web", "dst": "api", "ports": "*"}], [], WEB, API, 70000, ("allow", None)),
    (
        "overlapping ranges: the first rule covering the port",
        [{"src": "web", "dst": "api", "ports": ["1-100"], "effect": "alert"},
         {"src": "web", "dst": "api", "ports": ["50-150"], "effect": "prevent"}],
        [], WEB, API, 120, ("prevent", 2),
    ),
    # image globs and tags
    ("image name matches any tag", [{"src": "web", "dst": "api"}], [], WEB, c("shop/api:9"), 80, ("allow", 1)),
    ("image name without tag", [{"src": "web", "dst": "api"}], [], WEB, c("shop/api"), 80, ("allow", 1)),
    ("tag glob matches", [{"src": "web", "dst": "api2", "effect": "alert"}], [], WEB, c("shop/api:2.5"), 80, ("alert", 1)),
    ("tag glob differs", [{"src": "web", "dst": "api2", "effect": "alert"}], [], WEB, c("shop/api:1.5"), 80, ("allow", None)),
    ("* image matches all", [{"src": "any", "dst": "api", "effect": "alert"}], [], DB, API, 80, ("alert", 1)),
    ("other image", [{"src": "web", "dst": "api", "effect": "alert"}], [], DB, API, 80, ("allow", None)),
    # other selector fields
    ("namespace selector", [{"src": "web", "dst": "prod", "effect": "alert"}], [], WEB, API, 80, ("alert", 1)),
    ("namespace differs", [{"src": "web", "dst": "prod", "effect": "alert"}], [], WEB, DB, 80, ("allow", None)),
    ("label selector", [{"src": "back", "dst": "any", "effect": "alert"}], [], API, DB, 80, ("alert", 1)),
    ("label value differs", [{"src": "back", "dst": "any", "effect": "alert"}], [], DB, API, 80, ("allow", None)),
    ("label value glob", [{"src": "anyapp", "dst": "any", "effect": "alert"}], [], API, DB, 80, ("alert", 1)),
    ("label key missing", [{"src": "anyapp", "dst": "any", "effect": "alert"}], [], WEB, DB, 80, ("allow", None)),
    ("cluster selector", [{"src": "east", "dst": "any", "effect": "alert"}], [], c("x", cluster="east"), DB, 80, ("alert", 1)),
    ("cluster differs", [{"src": "east", "dst": "any", "effect": "alert"}], [], c("x", cluster="west"), DB, 80, ("allow", None)),
    ("container's host selector", [{"src": "on-node-1", "dst": "any", "effect": "alert"}], [], WEB, DB, 80, ("alert", 1)),
    ("container's host differs", [{"src": "on-node-1", "dst": "any", "effect": "alert"}], [], DB, WEB, 80, ("allow", None)),
    ("container name glob", [{"src": "web", "dst": "api-pods", "effect": "alert"}], [], WEB, c("z", name="api-7"), 80, ("alert", 1)),
    ("fields ANDed: both match", [{"src": "web", "dst": "prod-api", "effect": "alert"}], [], WEB, API, 80, ("alert", 1)),
    ("fields ANDed: one differs", [{"src": "web", "dst": "prod-api", "effect": "alert"}], [], WEB, c("shop/api:2.1", ns="dev"), 80, ("allow", None)),
    # subnets
    ("IPv4 subnet", [{"src": "web", "dst": "net10", "effect": "prevent"}], [], WEB, a("10.200.0.1"), 80, ("prevent", 1)),
    ("outside IPv4 subnet", [{"src": "web", "dst": "net10", "effect": "prevent"}], [], WEB, a("11.0.0.1"), 80, ("allow", None)),
    ("narrower subnet first", [{"src": "web", "dst": "net10-1", "effect": "alert"}, {"src": "web", "dst": "net10", "effect": "prevent"}], [], WEB, a("10.1.9.9"), 80, ("alert", 1)),
    ("wider subnet when outside narrower", [{"src": "web", "dst": "net10-1", "effect": "alert"}, {"src": "web", "dst": "net10", "effect": "prevent"}], [], WEB, a("10.2.9.9"), 80, ("prevent", 2)),
    ("IPv6 subnet", [{"src": "web", "dst": "v6", "effect": "prevent"}], [], WEB, a("fd00:1::5"), 80, ("prevent", 1)),
    ("outside IPv6 subnet", [{"src": "web", "dst": "v6", "effect": "prevent"}], [], WEB, a("2001:db8::1"), 80, ("allow", None)),
    ("v4 and v6 catch-all, v6", [{"src": "web", "dst": "everything", "effect": "alert"}], [], WEB, a("2001:db8::1"), 80, ("alert", 1)),
    ("subnet matches a container by address", [{"src": "web", "dst": "net10", "effect": "alert"}], [], WEB, API, 80, ("alert", 1)),
    ("subnet needs an address", [{"src": "web", "dst": "net10", "effect": "alert"}], [], WEB, a(None, "api.partner.example"), 80, ("allow", None)),
    # DNS
    ("DNS exact name", [{"src": "web", "dst": "partner", "effect": "alert"}], [], WEB, a("203.0.113.5", "api.partner.example"), 443, ("alert", 1)),
    ("DNS case and root dot", [{"src": "web", "dst": "partner", "effect": "alert"}], [], WEB, a("203.0.113.5", "API.Partner.Example."), 443, ("alert", 1)),
    ("DNS other name", [{"src": "web", "dst": "partner", "effect": "alert"}], [], WEB, a("203.0.113.5", "www.partner.example"), 443, ("allow", None)),
    ("DNS wildcard, deep", [{"src": "web", "dst": "wild", "effect": "alert"}], [], WEB, a("203.0.113.5", "a.b.example.com"), 443, ("alert", 1)),
    ("DNS wildcard not the apex", [{"src": "web", "dst": "wild", "effect": "alert"}], [], WEB, a("203.0.113.5", "example.com"), 443, ("allow", None)),
    ("DNS any of the names", [{"src": "web", "dst": "wild", "effect": "alert"}], [], WEB, a("203.0.113.5", "cdn.net", "www.example.com"), 443, ("alert", 1)),
    ("DNS needs names", [{"src": "web", "dst": "wild", "effect": "alert"}], [], WEB, a("203.0.113.5"), 443, ("allow", None)),
    # which list applies
    ("host source uses host rules", [], [{"src": "nodes", "dst": "nodes", "ports": [22]}], h("node-1"), h("node-2"), 22, ("allow", 101)),
    ("host rule to a subnet", [], [{"src": "nodes", "dst": "net10", "effect": "prevent"}], h("node-1"), a("10.0.0.9"), 22, ("prevent", 101)),
    ("host label selector", [], [{"src": "edge", "dst": "nodes", "effect": "alert"}], h("gw", labels={"role": "edge"}), h("node-3"), 22, ("alert", 101)),
    ("host rule needs a host destination", [], [{"src": "nodes", "dst": "nodes", "effect": "prevent"}], h("node-1"), WEB, 22, ("allow", None)),
    ("host source ignores container rules", [{"src": "any", "dst": "net10", "effect": "prevent"}], [], h("node-1"), a("10.0.0.9"), 22, ("allow", None)),
    ("container source ignores host rules", [], [{"src": "nodes", "dst": "net10", "effect": "prevent"}], WEB, a("10.0.0.9"), 22, ("allow", None)),
    ("address source: no list applies", [{"src": "any", "dst": "net10", "effect": "prevent"}], [{"src": "nodes", "dst": "net10", "effect": "prevent"}], a("10.9.9.9"), a("10.0.0.9"), 22, ("allow", None)),
    ("container destination object vs address", [{"src": "web", "dst": "any", "effect": "prevent"}], [], WEB, a("10.0.0.9"), 22, ("allow", None)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rules", "host_rules", "src", "dst", "port", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_evaluate(  # noqa: PLR0917
    rules: list[dict[str, Any]],
    host_rules: list[dict[str, Any]],
    src: Endpoint,
    dst: Endpoint,
    port: int,
    expected: tuple[str, int | None],
) -> None:
    pol = policy(rules, host_rules)
    attempt = ConnectionAttempt(src=src, dst=dst, port=port)
    effect, rule_id = expected
    for compiled in (
        compile_policy(pol),
        compile_policy(pol, verdict_cache=0, identity_cache=0),
    ):
        verdict = compiled.evaluate(attempt)
        assert (verdict.effect, verdict.rule_id) == (Effect(effect), rule_id)
        assert verdict.matched is (rule_id is not None)
        assert compiled.evaluate(attempt) == verdict  # again, from the caches
    assert NaiveEvaluator(pol).evaluate(attempt) == verdict


@pytest.mark.parametrize(
    ("pattern", "matched"),
    [
        ("docker.io/shop/db", True),  # exact: the index's image bucket
        ("docker.io/shop/db:15", True),
        ("docker.io/shop/*", True),  # a glob with a literal first segment: its bucket
        ("localhost/shop/d?", True),
        ("docker.io/*", False),  # kept as written, matches nothing normalised
    ],
)
def test_image_selectors_are_normalised_at_compile_time(pattern: str, matched: bool) -> None:
    """A rule written with the engine's prefix (``docker.io/shop/db``) matches the
    identity discovery reports (``shop/db:15``), in the index and the naive scan."""
    pol = Policy.model_validate({
        "objects": [{"kind": "container", "name": "db-x", "selector": {"images": [pattern]}},
                    *OBJECTS],
        "containerRules": [{"id": 1, "name": "web-to-db", "src": "web", "dst": "db-x",
                            "effect": "prevent"}],
        "revision": 7,
    })
    attempt = ConnectionAttempt(WEB, DB, 5432)
    verdict = compile_policy(pol).evaluate(attempt)
    assert verdict.matched is matched and verdict.rule_id == (1 if matched else None)
    assert NaiveEvaluator(pol).evaluate(attempt) == verdict


@pytest.mark.parametrize("default", ["allow", "alert", "prevent"])
def test_default_effect_when_nothing_matches(default: str) -> None:
    compiled = compile_policy(policy([{"src": "web", "dst": "api", "ports": [80]}], default=default))
    verdict = compiled.evaluate(ConnectionAttempt(WEB, API, 81))
    assert verdict == Verdict(effect=Effect(default), revision=7, matched=False)
    assert verdict.blocked is (default == "prevent")


def test_verdict_records_rule_kind_and_revision() -> None:
    pol = policy(
        [{"id": 5, "name": "web-to-api", "src": "web", "dst": "api", "effect": "alert"}],
        [{"id": 9, "name": "ssh", "src": "nodes", "dst": "nodes", "effect": "prevent"}],
        revision=42,
    )
    compiled = compile_policy(pol)
    assert compiled.revision == 42
    assert compiled.policy is pol
    assert compiled.evaluate(ConnectionAttempt(WEB, API, 80)) == Verdict(
        effect=Effect.ALERT,
        revision=42,
        matched=True,
        rule_id=5,
        rule_name="web-to-api",
        rule_kind=RuleKind.CONTAINER,
    )
    assert compiled.evaluate(ConnectionAttempt(h("node-1"), h("node-2"), 22)) == Verdict(
        effect=Effect.PREVENT,
        revision=42,
        matched=True,
        rule_id=9,
        rule_name="ssh",
        rule_kind=RuleKind.HOST,
    )


def test_compiled_policy_is_immutable() -> None:
    compiled = compile_policy(policy([]))
    with pytest.raises(AttributeError, match="immutable"):
        compiled.revision = 8  # type: ignore[misc]
    assert compiled.revision == 7


def test_bounded_caches_stay_correct_when_they_evict() -> None:
    pol = policy(
        [
            {"src": "api", "dst": "net10", "ports": ["1-1000"], "effect": "alert"},
            {"src": "any", "dst": "everything", "effect": "prevent"},
        ]
    )
    tiny = compile_policy(pol, verdict_cache=2, identity_cache=1)
    naive = NaiveEvaluator(pol)
    attempts = [
        ConnectionAttempt(c(f"shop/{img}:1", f"10.0.0.{i}"), a(f"10.{i}.0.1"), port)
        for i, img in enumerate(["api", "web", "db", "api", "api"])
        for port in (80, 2000)
    ]
    for attempt in attempts * 2:
        assert tiny.evaluate(attempt) == naive.evaluate(attempt)
    info = tiny.cache_info()
    assert info["verdicts"] <= 2
    assert info["container_sources"] <= 1
    assert info["container_destinations"] <= 1


def test_concurrent_evaluation_needs_no_locks() -> None:
    """Threads share one snapshot (as the Defender's verdict workers do); small
    caches make them evict under each other."""
    pol = policy(
        [
            {"src": "api", "dst": "net10", "ports": ["1-1000"], "effect": "alert"},
            {"src": "web", "dst": "wild", "effect": "prevent"},
            {"src": "any", "dst": "everything", "ports": [443]},
        ]
    )
    shared = compile_policy(pol, verdict_cache=8, identity_cache=4)
    naive = NaiveEvaluator(pol)
    attempts = [
        ConnectionAttempt(c(f"shop/{img}:{i % 3}", f"10.0.0.{i}"), dst, port)
        for i, img in enumerate(["api", "web", "db"] * 10)
        for dst in (a(f"10.{i}.0.1"), a("203.0.113.9", f"x{i}.example.com"))
        for port in (80, 443, 2000)
    ]
    expected = [naive.evaluate(x) for x in attempts]

    def work(offset: int) -> bool:
        order = attempts[offset:] + attempts[:offset]
        wanted = expected[offset:] + expected[:offset]
        return all(shared.evaluate(x) == v for _ in range(20) for x, v in zip(order, wanted, strict=True))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(work, [0, 7, 31, 90]))


def test_many_rules_index_agrees_with_naive() -> None:
    """Many objects of every index bucket, to exercise the bit sets beyond one word."""
    objects: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for i in range(300):
        selectors = [
            {"images": [f"team{i % 7}/svc{i % 13}"]},
            {"images": [f"team{i % 7}/*"]},
            {"namespaces": [f"ns{i % 5}"]},
            {"labels": [f"app=svc{i % 13}"]},
            {"images": ["*"], "labels": [f"tier=t{i % 3}*"]},
        ]
        objects.append({"kind": "container", "name": f"c{i}", "selector": selectors[i % 5]})
        objects.append({"kind": "subnet", "name": f"s{i}", "cidrs": [f"10.{i % 4}.{i % 250}.0/24"]})
    for i in range(600):
        dst = f"c{(i * 7) % 300}" if i % 3 else f"s{(i * 11) % 300}"
        rules.append(
            {
                "id": i + 1,
                "name": f"r{i}",
                "src": f"c{(i * 5) % 300}",
                "dst": dst,
                "ports": [80 + i % 4, f"{1000 + i}-{1100 + i}"],
                "effect": ["allow", "alert", "prevent"][i % 3],
                "disabled": i % 17 == 0,
            }
        )
    pol = Policy.model_validate({"objects": objects, "containerRules": rules, "defaultEffect": "alert"})
    compiled = compile_policy(pol)
    naive = NaiveEvaluator(pol)
    decided = 0
    for i in range(400):
        src = c(f"team{i % 7}/svc{i % 13}:1", ns=f"ns{i % 5}", labels={"app": f"svc{i % 11}", "tier": f"t{i % 4}x"})
        dst = c(f"team{(i + 3) % 7}/svc{(i + 5) % 13}:2", f"10.{i % 4}.{i % 250}.9", ns=f"ns{(i + 1) % 5}")
        for port in (80, 81, 82, 83, 1000 + i, 1100 + i + 1):
            attempt = ConnectionAttempt(src, dst, port)
            verdict = compiled.evaluate(attempt)
            assert verdict == naive.evaluate(attempt)
            decided += verdict.matched
    assert decided > 50  # the table exercises matches, not only the default


@pytest.mark.parametrize(
    ("rule", "path", "message"),
    [
        ({"src": "nope", "dst": "api"}, "containerRules[0].src", "no object named 'nope'"),
        ({"src": "web", "dst": "nope"}, "containerRules[0].dst", "no object named 'nope'"),
        (
            {"src": "nodes", "dst": "api"},
            "containerRules[0].src",
            "'nodes' is a host object; a container rule's source must be a container object",
        ),
        (
            {"src": "net10", "dst": "api"},
            "containerRules[0].src",
            "'net10' is a subnet object; a container rule's source must be a container object",
        ),
        (
            {"src": "web", "dst": "nodes"},
            "containerRules[0].dst",
            "'nodes' is a host object; a container rule's destination must be a"
            " container, dns or subnet object",
        ),
    ],
)
def test_compile_refuses_bad_references(rule: dict[str, Any], path: str, message: str) -> None:
    pol = policy([rule])
    with pytest.raises(PolicyValidationError) as info:
        compile_policy(pol)
    assert [(e.path, e.message) for e in info.value.errors] == [(path, message)]
    with pytest.raises(PolicyValidationError):
        NaiveEvaluator(pol)


def test_compile_refuses_bad_host_rules_and_lists_every_error() -> None:
    pol = policy(
        [{"src": "web", "dst": "api"}, {"id": 1, "src": "web", "dst": "api"}],
        [{"src": "web", "dst": "nodes"}, {"src": "nodes", "dst": "wild"}, {"src": "nodes", "dst": "x"}],
    )
    with pytest.raises(PolicyValidationError) as info:
        compile_policy(pol)
    assert [(e.path, e.message.split(";")[0]) for e in info.value.errors] == [
        ("containerRules[1].id", "duplicate rule id 1 (first used by containerRules[0])"),
        ("containerRules[1].name", "duplicate rule name 'r1' (first used by containerRules[0])"),
        ("hostRules[0].src", "'web' is a container object"),
        ("hostRules[1].dst", "'wild' is a dns object"),
        ("hostRules[2].dst", "no object named 'x'"),
    ]


def test_naive_evaluate_function() -> None:
    pol = policy([{"src": "web", "dst": "api", "effect": "prevent"}])
    verdict = naive_evaluate(pol, ConnectionAttempt(WEB, API, 80))
    assert (verdict.effect, verdict.rule_id) == (Effect.PREVENT, 1)


# --------------------------------------------------------------------------- explain

EXPLAIN_POLICY = policy(
    [
        {"id": 1, "name": "web-to-api", "src": "web", "dst": "api", "ports": [80, 443]},
        {"id": 2, "name": "old", "src": "web", "dst": "any", "disabled": True},
        {"id": 3, "name": "api-to-web", "src": "api", "dst": "web"},
        {"id": 4, "name": "to-partner", "src": "web", "dst": "partner", "effect": "alert"},
        {"id": 5, "name": "no-net10", "src": "any", "dst": "net10", "effect": "prevent"},
        {"id": 6, "name": "after", "src": "any", "dst": "any"},
    ],
    default="alert",
)


@pytest.mark.parametrize(
    ("src", "dst", "port", "steps", "verdict"),
    [
        (
            WEB, API, 443,
            [("matched", 1, "source shop/web:1.0 matches 'web', destination shop/api:2.1 matches 'api', port 443 in 80,443")],
            ("allow", 1),
        ),
        (
            WEB, API, 22,
            [
                ("no-match", 1, "port 22 not in 80,443"),
                ("disabled", 2, "rule is disabled"),
                ("no-match", 3, "source shop/web:1.0 does not match object 'api' (images shop/api)"),
                ("no-match", 4, "destination shop/api:2.1 does not match object 'partner' (no DNS name known to test against api.partner.example)"),
                ("matched", 5, "source shop/web:1.0 matches 'any', destination shop/api:2.1 matches 'net10', port 22 in *"),
            ],
            ("prevent", 5),
        ),
        (
            WEB, a("203.0.113.1", "api.partner.example"), 8443,
            [
                ("no-match", 1, "destination api.partner.example (203.0.113.1) does not match object 'api' (not a container)"),
                ("disabled", 2, "rule is disabled"),
                ("no-match", 3, "source shop/web:1.0 does not match object 'api' (images shop/api)"),
                ("matched", 4, "source shop/web:1.0 matches 'web', destination api.partner.example (203.0.113.1) matches 'partner', port 8443 in *"),
            ],
            ("alert", 4),
        ),
    ],
)  # fmt: skip
def test_explain_steps(
    src: Endpoint,
    dst: Endpoint,
    port: int,
    steps: list[tuple[str, int, str]],
    verdict: tuple[str, int],
) -> None:
    compiled = compile_policy(EXPLAIN_POLICY)
    attempt = ConnectionAttempt(src, dst, port)
    explanation = compiled.explain(attempt)
    assert [(s.outcome, s.rule_id, s.reason) for s in explanation.steps] == steps
    assert all(s.kind is RuleKind.CONTAINER for s in explanation.steps)
    assert (explanation.verdict.effect, explanation.verdict.rule_id) == (Effect(verdict[0]), verdict[1])
    assert explanation.verdict == compiled.evaluate(attempt)
    assert explanation.note == ""


def test_explain_lines_when_a_rule_decides() -> None:
    explanation = compile_policy(EXPLAIN_POLICY).explain(ConnectionAttempt(WEB, API, 22))
    assert explanation.lines()[0] == "verdict: prevent by container rule 5 'no-net10' (revision 7)"
    assert explanation.lines()[1] == "  container rule 1 'web-to-api': no-match: port 22 not in 80,443"
    assert len(explanation.lines()) == 6


def test_explain_when_the_default_decides() -> None:
    pol = policy([{"id": 1, "name": "only", "src": "api", "dst": "web"}], default="alert")
    explanation = compile_policy(pol).explain(ConnectionAttempt(WEB, API, 80))
    assert explanation == Explanation(
        verdict=Verdict(effect=Effect.ALERT, revision=7, matched=False),
        steps=(
            RuleStep(
                RuleKind.CONTAINER,
                1,
                "only",
                "no-match",
                "source shop/web:1.0 does not match object 'api' (images shop/api)",
            ),
        ),
        note="no enabled container rule matched; the default effect alert decides",
    )
    assert explanation.lines() == [
        "verdict: alert (no rule matched: default effect; revision 7)",
        "  container rule 1 'only': no-match: source shop/web:1.0 does not match object 'api'"
        " (images shop/api)",
        "  note: no enabled container rule matched; the default effect alert decides",
    ]


@pytest.mark.parametrize(
    ("src", "note"),
    [
        (
            a("10.9.9.9"),
            "source 10.9.9.9 is neither a container nor a host: no rule list applies;"
            " the default effect allow decides",
        ),
        (h("node-1"), "there are no host rules; the default effect allow decides"),
    ],
)
def test_explain_notes_without_steps(src: Endpoint, note: str) -> None:
    compiled: CompiledPolicy = compile_policy(policy([{"src": "any", "dst": "any"}]))
    explanation = compiled.explain(ConnectionAttempt(src, a("10.0.0.1"), 80))
    assert explanation.steps == ()
    assert explanation.note == note
    assert not explanation.verdict.matched


@pytest.mark.parametrize(
    ("images", "rule_matches"),
    [
        ((), False),  # one container: shop/web only
        (("shop/web:1.0", "mesh/proxy:1.2"), True),  # a sidecar's image matches
        (("shop/web:1.0", "shop/api:2.1"), True),  # the exact-name bucket, second image
        (("shop/web:1.0", "other/thing:1"), False),
    ],
)
def test_a_pods_images_all_count_for_image_selectors(
        images: tuple[str, ...], rule_matches: bool) -> None:
    """A pod is one identity with several images: an image selector matches it
    when any of them matches, in the index (exact names and first-segment
    buckets) and in the naive scan alike."""
    pol = Policy.model_validate({
        "objects": [
            *OBJECTS,
            {"kind": "container", "name": "meshed", "selector": {"images": ["mesh/*"]}},
            {"kind": "container", "name": "db", "selector": {"images": ["shop/db"]}},
        ],
        "containerRules": [
            {"id": 1, "name": "mesh-to-db", "src": "meshed", "dst": "db", "effect": "prevent"},
            {"id": 2, "name": "api-to-db", "src": "api", "dst": "db", "effect": "alert"},
        ],
        "revision": 7,
    })
    pod = ContainerIdentity("shop/web:1.0", name="web", images=images)
    attempt = ConnectionAttempt(Endpoint("10.1.0.9", pod), DB, 5432)
    verdict = compile_policy(pol).evaluate(attempt)
    assert verdict.matched is rule_matches
    if rule_matches:
        assert verdict.rule_id == (1 if "mesh/proxy:1.2" in images else 2)
    assert NaiveEvaluator(pol).evaluate(attempt) == verdict


def test_a_pods_images_always_hold_its_main_image_first() -> None:
    """However an identity is made (wire data too), its main image matches."""
    pod = ContainerIdentity("shop/web:1.0", images=("mesh/proxy:1", "shop/web:1.0"))
    assert pod.images == ("shop/web:1.0", "mesh/proxy:1")
    assert ContainerIdentity("shop/web:1.0", images=("shop/web:1.0",)).images == ()
    pol = Policy.model_validate({
        "objects": [*OBJECTS],
        "containerRules": [{"id": 1, "name": "web-any", "src": "web", "dst": "any",
                            "effect": "prevent"}],
        "revision": 7,
    })
    attempt = ConnectionAttempt(Endpoint("10.1.0.9", ContainerIdentity(
        "shop/web:1.0", images=("mesh/proxy:1",))), DB, 5432)
    assert compile_policy(pol).evaluate(attempt).rule_id == 1
