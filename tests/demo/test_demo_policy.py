"""The demo's starter policy against the shop's traffic (pure: no lab): every
pattern of the demo gets the verdict the README promises - allowed, alerted,
prevented (the lateral moves), or no rule at all (the grey holes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnf.demo import (
    EXTRA_LATERAL,
    DemoConfig,
    DemoError,
    datapaths_up,
    default_policy,
    parse_listen,
)
from cnnf.lab.topology import load_topology
from cnnf.model import ConnectionAttempt, ContainerIdentity, Effect, Endpoint
from cnnf.policy.document import load_policy
from cnnf.policy.engine import compile_policy

SHOP = load_topology("shop")
POLICY = compile_policy(load_policy(default_policy().read_text(), source="demo-policy.yaml"))
PATTERNS = {p.label: p for p in [*SHOP.traffic, *EXTRA_LATERAL]}
SERVERS = {s.name: (str(s.address), tuple(s.dns))
           for ext in SHOP.external for s in ext.servers}


def _endpoint(name: str) -> Endpoint:
    for c in SHOP.containers:
        if c.name == name:
            return Endpoint(container=ContainerIdentity(
                image=c.image, name=c.name, namespace=c.namespace, host=c.host, pod=c.pod,
                labels=tuple(sorted(c.labels.items()))))
    for server, (address, names) in SERVERS.items():
        if name == server or name in names:
            return Endpoint(address=address, domains=names)
    raise AssertionError(f"{name} is not in the shop topology")


# pattern label -> (effect, rule name or None for "no rule matched": a grey hole)
EXPECTED = {
    "frontend->api:8080": (Effect.ALLOW, "frontend-to-api"),
    "api->payments:9090": (Effect.ALLOW, "api-to-payments"),
    "api->db:5432": (Effect.ALLOW, "api-to-db"),
    "api->cache:6379": (Effect.ALLOW, None),
    "worker->db:5432": (Effect.ALLOW, None),
    "payments->api.partner.example:443": (Effect.ALLOW, None),
    "worker->internet:80": (Effect.ALERT, "worker-to-internet"),
    "lateral-frontend-db": (Effect.PREVENT, "frontend-to-data"),
    "lateral-frontend-ssh": (Effect.PREVENT, "frontend-to-data"),
    "lateral-frontend-cache": (Effect.PREVENT, "frontend-to-data"),
}


def test_every_demo_pattern_has_an_expected_verdict() -> None:
    assert set(EXPECTED) == set(PATTERNS)


@pytest.mark.parametrize("label", sorted(EXPECTED))
def test_starter_policy_verdicts(label: str) -> None:
    p = PATTERNS[label]
    verdict = POLICY.evaluate(ConnectionAttempt(
        src=_endpoint(p.source), dst=_endpoint(p.destination), port=p.port))
    effect, rule = EXPECTED[label]
    assert (verdict.effect, verdict.rule_name if verdict.matched else None) == (effect, rule)


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:8080", ("::1", 8080)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8080", ":8080", "127.0.0.1:", "127.0.0.1:0",
                                    "127.0.0.1:70000", "127.0.0.1:http"])
def test_parse_listen_refuses(listen: str) -> None:
    with pytest.raises(DemoError, match="expected HOST:PORT"):
        parse_listen(listen)


@pytest.mark.parametrize(("listen", "url"), [
    ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("0.0.0.0:8080", "http://127.0.0.1:8080"),  # the Defenders use loopback
    ("[::]:8080", "http://[::1]:8080"),
    ("[::1]:9000", "http://[::1]:9000"),
    ("localhost:80", "http://localhost:80"),
])
def test_console_url_for_the_defenders(listen: str, url: str) -> None:
    assert DemoConfig(listen=listen).url == url


def test_datapaths_up_needs_every_defenders_status_file(tmp_path: Path) -> None:
    # The Console counts a Defender connected before its datapath is up; the demo
    # starts traffic only once every Defender has written its status file.
    hosts = ["node-1", "node-2"]
    assert not datapaths_up(tmp_path, hosts)
    (tmp_path / "node-1").mkdir()
    (tmp_path / "node-1" / "status.json").write_text("{}")
    assert not datapaths_up(tmp_path, hosts)
    (tmp_path / "node-2" / "status.json").mkdir(parents=True)  # not a file
    assert not datapaths_up(tmp_path, hosts)
    (tmp_path / "node-2" / "status.json").rmdir()
    (tmp_path / "node-2" / "status.json").write_text("{}")
    assert datapaths_up(tmp_path, hosts)
