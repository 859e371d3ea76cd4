"""Where Radar's first render goes: the demo's picture (the "shop" of the browser
tests) opened signed in, in Debian's chromium, with Chromium's CPU profiler on
(CDP Profiler, sampling every 100 us). Prints the page's performance marks for
each load and, for the last, the JavaScript time under the blocks of the first
render (inclusive ms, callees nested): ``draw`` (layout, Cytoscape set up with
the elements, labels measured and placed), ``cytoscape2`` (Cytoscape's set-up:
style sheets, renderer), ``renderFn`` (Cytoscape's frames: the canvas drawn)
and the bundle's top level. The profiler slows the page down: compare blocks
with each other, not with bench/ui_load.py's figures.

For readable names build the UI unminified first:
``(cd src/cnnf/web && CNNF_WEB_DEBUG=1 node build.mjs)``, and build it again
without CNNF_WEB_DEBUG afterwards.

    .venv/bin/python bench/ui_profile.py [--runs 3] [--depth 4] [--root draw,renderFn]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from radarpage import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from radarserver import ADMIN, seed_shop, serve  # noqa: E402

MARKS = """() => Object.fromEntries(performance.getEntriesByType('mark')
  .filter(m => m.name.startsWith('cnnf:')).map(m => [m.name.slice(5), Math.round(m.startTime)]))"""


def tree(profile: dict[str, Any], roots: list[str], depth: int, min_ms: float) -> None:
    """Inclusive time under each root function, callees merged by name."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    own: collections.Counter[int] = collections.Counter()
    for sample, delta in zip(profile["samples"], [*profile["timeDeltas"][1:], 0], strict=True):
        own[sample] += delta
    memo: dict[int, int] = {}

    def inclusive(i: int) -> int:
        if i not in memo:
            memo[i] = own[i] + sum(inclusive(c) for c in nodes[i].get("children", []))
        return memo[i]

    def name(i: int) -> str:
        frame = nodes[i]["callFrame"]
        return f'{frame["functionName"] or "(anonymous)"} :{frame["lineNumber"]}'

    def show(ids: list[int], level: int) -> None:
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for i in ids:
            groups[name(i)].append(i)
        rows = sorted(((sum(inclusive(i) for i in v), k, v) for k, v in groups.items()),
                      reverse=True)
        for total, key, members in rows:
            if total / 1000 < min_ms:
                continue
            print(f"{'  ' * (level + 1)}{total / 1000:7.1f} {key}")
            if level < depth:
                show([c for i in members for c in nodes[i].get("children", [])], level + 1)

    for root in roots:
        found = [i for i in nodes if nodes[i]["callFrame"]["functionName"] == root]
        print(f"under {root}:" if found else f"under {root}: not sampled")
        show(found, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--min-ms", type=float, default=3.0)
    parser.add_argument("--root", default="draw,cytoscape2,renderFn",
                        help="function names to break down (comma-separated)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with (tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw,
          serve(Path(tmp)) as console):
        seed_shop(console)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for run in range(args.runs):
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            with console.client() as api:
                token = api.post("/api/v1/auth/login", json={
                    "username": ADMIN[0], "password": ADMIN[1]}).json()["token"]
            context.add_init_script(f"sessionStorage.setItem('cnnf.token', {token!r});"
                                    "sessionStorage.setItem('cnnf.role', 'admin');")
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("Profiler.enable")
            cdp.send("Profiler.setSamplingInterval", {"interval": 100})
            cdp.send("Profiler.start")
            t0 = time.perf_counter()
            page.goto(f"{console.url}/?poll=600000#/radar")
            page.wait_for_function("window.cnnfRadar && window.cnnfRadar.ready")
            wall = (time.perf_counter() - t0) * 1000
            profile = cdp.send("Profiler.stop")["profile"]
            marks: dict[str, int] = page.evaluate(MARKS)
            steps = " ".join(f"{k} {v}" for k, v in sorted(marks.items(), key=lambda kv: kv[1]))
            print(f"load {run + 1}: {wall:.0f} ms (wall clock); in the page: {steps}")
            if run == args.runs - 1:
                tree(profile, args.root.split(","), args.depth, args.min_ms)
            context.close()
        browser.close()


if __name__ == "__main__":
    main()
