"""Radar at scale: the radar endpoint's latency and the first render in headless
chromium with 5,000 nodes and 20,000 edges, beside a small graph in the same run.

Starts a Console on loopback (SQLite in a temporary directory), seeds images,
flows, rules and overlays, then times ``GET /api/v1/radar`` (cold: the first
request after a change, the graph built; warm: a repeated poll, cached) and the page's
first render (``window.cnnfRadar.timing``: fetch, build, layout, paint; from the
first /radar request, which the page sends before setting Cytoscape up, to the
painted frame) in Debian's chromium. It signs in through the login form, so the
bundle has run before that request (no boot script's request: bench/ui_load.py
times a page opened signed in, from navigation). Targets: endpoint at most 500 ms,
first render at most 3 s.

    .venv/bin/python bench/radar_render.py [--nodes 5000] [--edges 20000] [--api-only]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.served, as the tests import it
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from radarpage import CHROMIUM, CHROMIUM_ARGS, sign_in, wait_radar  # noqa: E402
from radarserver import RadarConsole, serve  # noqa: E402

from cnnf.console.services.records import FlowRecord  # noqa: E402
from cnnf.model.records import HostInfo, WorkloadInfo  # noqa: E402

NAMESPACE_SIZE = 50
VERDICTS = ["observed", "allow", "alert", "prevent"]


def seed(console: RadarConsole, nodes: int, edges: int, rng: random.Random) -> None:
    hosts = [HostInfo(name=f"node-{i}", addresses=[f"10.0.{i // 250}.{i % 250 + 1}"])
             for i in range(max(2, nodes // 100))]
    containers = []
    for i in range(nodes):
        ns = f"team-{i // NAMESPACE_SIZE:03d}"
        for j in range(1 + i % 3):
            n = len(containers)
            containers.append(WorkloadInfo(
                address=f"10.{100 + n // 65000}.{n // 250 % 260}.{n % 250 + 1}",
                image=f"{ns}/svc-{i:05d}:1", name=f"svc-{i:05d}-{j}", namespace=ns,
                host=hosts[(i + j) % len(hosts)].name))
    console.report_inventory(hosts, containers)
    with console.client() as api:
        api.post("/api/v1/policy/import", json={"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {
            "objects": [
                {"name": "team-000", "kind": "container", "selector": {"namespaces": ["team-000"]}},
                {"name": "team-001", "kind": "container", "selector": {"namespaces": ["team-001"]}},
                {"name": "lan", "kind": "subnet", "cidrs": ["192.0.2.0/24"]},
            ],
            "containerRules": [
                {"id": 1, "name": "t0-t1", "src": "team-000", "dst": "team-001", "ports": [8080]},
                {"id": 2, "name": "t1-lan", "src": "team-001", "dst": "lan", "effect": "prevent"},
            ],
        }}).raise_for_status()
        for i in range(0, nodes, 7):
            sev = ["CRITICAL", "HIGH", "MEDIUM", "LOW"][i % 4]
            api.post("/api/v1/overlays/image/trivy", json={
                "ArtifactName": f"team-{i // NAMESPACE_SIZE:03d}/svc-{i:05d}",
                "Results": [{"Vulnerabilities": [{"VulnerabilityID": "CVE-1", "Severity": sev}]}],
            }).raise_for_status()
    now = datetime.now(UTC)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < edges:
        a = rng.randrange(nodes)
        # Mostly within and near the namespace, some across the cluster.
        b = (a + rng.randrange(1, 120)) % nodes if rng.random() < 0.8 else rng.randrange(nodes)
        if a != b:
            pairs.add((a, b))
    flows = []
    for k, (a, b) in enumerate(sorted(pairs)):
        verdict = VERDICTS[k % 4]
        flows.append(FlowRecord(
            src=f"image:team-{a // NAMESPACE_SIZE:03d}/svc-{a:05d}",
            dst=f"image:team-{b // NAMESPACE_SIZE:03d}/svc-{b:05d}",
            port=rng.choice([80, 443, 5432, 6379, 8080, 9090]), verdict=verdict,
            rule_id=0 if verdict == "observed" else 1, count=rng.randrange(1, 500),
            first_seen=now - timedelta(hours=2), last_seen=now))
    console.add_flows(flows)


def endpoint_ms(console: RadarConsole, params: dict[str, str],
                runs: int) -> tuple[float, float, int]:
    """Median latency of a cold request (the first after a change: one new flow
    stored before each, so the graph is built again) and of a warm one (a
    repeated poll, nothing changed: answered from the cache); the body size."""
    cold: list[float] = []
    warm: list[float] = []
    size = 0
    with console.client() as api:
        api.get("/api/v1/radar", params=params).raise_for_status()  # warm up
        for i in range(runs):
            now = datetime.now(UTC)
            console.add_flows([FlowRecord(
                src="image:bench/probe", dst=f"addr:192.0.2.{i % 250 + 1}", port=443,
                verdict="observed", first_seen=now, last_seen=now)])
            for times in (cold, warm):
                t0 = time.perf_counter()
                r = api.get("/api/v1/radar", params=params)
                times.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                size = len(r.content)
    return statistics.median(cold), statistics.median(warm), size


def render(browser: Any, console: RadarConsole, group: str) -> dict[str, Any]:
    """Sign in, wait for the first render; optionally switch grouping and expand a group."""
    page = browser.new_page(viewport={"width": 1500, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(120_000)
    sign_in(page, console, query="?poll=600000")  # no polling during the measurement
    wait_radar(page)
    switch_ms = float("nan")
    if group != "namespace":
        t0 = time.perf_counter()
        page.select_option("select[name=group]", group)
        wait_radar(page, 2)
        switch_ms = (time.perf_counter() - t0) * 1000
    timing = page.evaluate("window.cnnfRadar.timing")
    drawn = page.evaluate("(() => { const cy = window.cnnfRadar.cy; "
                          "return [cy.nodes().length, cy.edges().length]; })()")
    print(f"  rendered {drawn} in {timing.get('totalMs')} ms", file=sys.stderr)
    # Large graphs start with big groups collapsed: expand one.
    collapsed = page.evaluate(
        "window.cnnfRadar.cy.nodes('[kind = \"collapsed\"]').map(n => n.id())")
    expand_ms = float("nan")
    if collapsed:
        t0 = time.perf_counter()
        # A block body: returning the element would make Playwright serialise all of Cytoscape.
        page.evaluate("(id) => { window.cnnfRadar.cy.getElementById(id).emit('dbltap'); }",
                      collapsed[0])
        page.wait_for_function("(id) => window.cnnfRadar.cy.getElementById(id).isParent()",
                               arg=collapsed[0])
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                      "requestAnimationFrame(r)))")
        expand_ms = (time.perf_counter() - t0) * 1000
    page.close()
    if errors:
        raise RuntimeError(f"page errors: {errors}")
    return {"timing": timing, "drawn": drawn, "collapsed": len(collapsed),
            "expand_ms": expand_ms, "switch_ms": switch_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--edges", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--api-only", action="store_true", help="skip the browser")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rows: list[tuple[Any, ...]] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for label, nodes, edges in (("baseline", 50, 200), ("large", args.nodes, args.edges)):
            with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp)) as console:
                t0 = time.perf_counter()
                seed(console, nodes, edges, random.Random(7))
                seed_s = time.perf_counter() - t0
                print(f"{label}: seeded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
                cold_ms, warm_ms, size = endpoint_ms(console, {}, args.runs)
                print(f"{label}: API cold {cold_ms:.0f} ms, warm {warm_ms:.0f} ms",
                      file=sys.stderr)
                if args.api_only:
                    rows.append((label, nodes, edges, seed_s, cold_ms, warm_ms, size, None, None))
                    continue
                first = render(browser, console, "namespace")
                print(f"{label}: first render {first['timing']}", file=sys.stderr)
                flat = render(browser, console, "none")
                rows.append((label, nodes, edges, seed_s, cold_ms, warm_ms, size, first, flat))
        browser.close()

    print(f"{'graph':<9} {'nodes':>6} {'edges':>6} {'seed s':>7} {'API cold ms':>11} "
          f"{'warm ms':>7} {'JSON KB':>8} {'first render ms':>16} {'(fetch/build/layout)':>21} "
          f"{'drawn n/e':>12} {'expand ms':>9} {'no groups ms':>12} {'drawn n/e':>12}")
    for label, nodes, edges, seed_s, cold_ms, warm_ms, size, first, flat in rows:
        line = (f"{label:<9} {nodes:>6} {edges:>6} {seed_s:>7.1f} {cold_ms:>11.0f} "
                f"{warm_ms:>7.0f} {size / 1024:>8.0f}")
        if first is not None and flat is not None:
            t = first["timing"]
            parts = f"{t['fetchMs']}/{t['buildMs']}/{t['layoutMs']}"
            line += (f" {t['firstRenderMs']:>16} {parts:>21} "
                     f"{'/'.join(map(str, first['drawn'])):>12} {first['expand_ms']:>9.0f} "
                     f"{flat['timing']['totalMs']:>12} {'/'.join(map(str, flat['drawn'])):>12}")
        print(line)
    print("cold: the first request after a change (the graph is built); warm: a repeated "
          "poll (cached)")
    print("first render: Radar's first /radar request sent (signed in through the form, "
          "before Cytoscape's setup) to the graph painted; fetch: that request to its answer "
          "read (Cytoscape's setup included, since f520c1b); build, layout: the elements "
          "and their layout; no groups ms: the render after switching to group=none, "
          "its request to the graph painted")
    print("targets: API <= 500 ms, first render <= 3000 ms (5,000 nodes, 20,000 edges)")


if __name__ == "__main__":
    main()
