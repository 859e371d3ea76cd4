"""The demo's starter policy against the shop's traffic (pure: no lab): every
pattern of the demo gets the verdict the README promises - allowed, alerted,
prevented (the lateral moves), or no rule at all (the grey holes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnf.demo import (
    PROFILES,
    DemoConfig,
    DemoError,
    datapaths_up,
    default_policy,
    parse_listen,
)
from cnnf.lab.topology import Topology, load_topology
from cnnf.lab.topology import Traffic as Pattern
from cnnf.model import ConnectionAttempt, ContainerIdentity, Effect, Endpoint
from cnnf.policy.document import load_policy
from cnnf.policy.engine import compile_policy


def _endpoint(topology: Topology, name: str) -> Endpoint:
    """A container, or a pod (by its name or a container's: a pod's identity is
    its main container's, the first one listed, with every image)."""
    for c in topology.containers:
        if name in (c.name, c.pod):
            pod = [x for x in topology.containers if c.pod and x.pod == c.pod] or [c]
            main = pod[0]
            return Endpoint(container=ContainerIdentity(
                image=main.image, name=main.name, namespace=main.namespace, host=main.host,
                pod=main.pod, labels=tuple(sorted(main.labels.items())),
                images=tuple(x.image for x in pod) if len(pod) > 1 else ()))
    for ext in topology.external:
        for server in ext.servers:
            if name == server.name or name in server.dns:
                return Endpoint(address=str(server.address), domains=tuple(server.dns))
    raise AssertionError(f"{name} is not in the {topology.name} topology")


# pattern label -> (effect, rule name or None for "no rule matched": a grey hole)
EXPECTED = {
    "shop": {
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
    },
    "kube": {
        "web->cart:8080": (Effect.ALLOW, "web-to-cart"),
        "cart->redis:6379": (Effect.ALLOW, "cart-to-redis"),
        "cart->checkout:9090": (Effect.ALLOW, "cart-to-checkout"),
        "checkout->postgres:5432": (Effect.ALLOW, "checkout-to-postgres"),
        "checkout->api.payments.example:443": (Effect.ALERT, "checkout-to-gateway"),
        "metrics->web:80": (Effect.ALLOW, None),
        "metrics->cart-5f6d8b7c9-q4w2z:8080": (Effect.ALLOW, None),
        "lateral-web-postgres": (Effect.PREVENT, "web-lateral"),
        "lateral-web-checkout-ssh": (Effect.PREVENT, "web-lateral"),
        "lateral-web-redis": (Effect.PREVENT, "web-lateral"),
    },
}


def _patterns(topology: Topology) -> dict[str, Pattern]:
    return {p.label: p for p in [*topology.traffic, *PROFILES[topology.name].extra]}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_demo_pattern_has_an_expected_verdict(name: str) -> None:
    assert set(EXPECTED[name]) == set(_patterns(load_topology(name)))


@pytest.mark.parametrize(("name", "label"), [(n, label) for n in sorted(EXPECTED)
                                             for label in sorted(EXPECTED[n])])
def test_starter_policy_verdicts(name: str, label: str) -> None:
    topology = load_topology(name)
    policy = compile_policy(load_policy(default_policy(name).read_text(), source=name))
    p = _patterns(topology)[label]
    verdict = policy.evaluate(ConnectionAttempt(
        src=_endpoint(topology, p.source), dst=_endpoint(topology, p.destination), port=p.port))
    effect, rule = EXPECTED[name][label]
    assert (verdict.effect, verdict.rule_name if verdict.matched else None) == (effect, rule)


def test_a_bad_topology_is_refused_before_anything_starts() -> None:
    with pytest.raises(DemoError, match="--topology 'k8s': expected one of shop, kube"):
        DemoConfig(topology="k8s").profile  # noqa: B018


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


@pytest.mark.parametrize(("make_args", "listen", "topology"), [
    ((), "127.0.0.1:8080", "shop"),
    (("LISTEN=0.0.0.0:8080",), "0.0.0.0:8080", "shop"),
    (("TOPOLOGY=kube",), "127.0.0.1:8080", "kube")])
def test_make_demo_passes_listen_to_cnnf_demo(make_args: tuple[str, ...], listen: str,
                                             topology: str) -> None:
    """``make demo LISTEN=HOST:PORT TOPOLOGY=T`` runs ``cnnf demo --listen HOST:PORT
    --topology T`` (make -n prints the recipe without running it; ``deps`` is made
    up to date first)."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if shutil.which("make") is None:
        pytest.fail("make is missing")
    out = subprocess.run(["make", "-n", "-o", "deps", "demo", *make_args], cwd=root,
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert f".venv/bin/cnnf demo --listen {listen} --topology {topology}" in out.splitlines()
