"""Loading the Console UI: this build (content-hashed assets, precompressed, cached
for a year) beside the previous one (the web sources of ``--old REV``, default
``main``, built with their own build script and served as they were: plain
``app.js`` with no compression and no cache headers), in the same run.

For each build and graph (the demo's "shop" picture; the 5,000-image graph of
bench/radar_render.py) it opens Radar signed in, in Debian's chromium, and takes:
the time from navigation to Radar's first render (median of ``--runs`` loads in
a fresh browser context, so nothing is cached), the bytes the page transferred,
and the same page loaded again in that context (a repeat visit: assets cached).
With ``--slow`` the network is emulated at 20 Mbit/s with 20 ms latency as well.

    .venv/bin/python bench/ui_load.py [--old main] [--runs 5] [--nodes 5000] [--slow]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.served, as the tests import it
sys.path.insert(0, str(ROOT / "tests" / "browser"))
sys.path.insert(0, str(ROOT / "bench"))

from radarpage import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from radarserver import ADMIN, RadarConsole, seed_shop, serve  # noqa: E402
from starlette.staticfiles import StaticFiles  # noqa: E402

from cnnf.console.ui import STATIC  # noqa: E402
from radar_render import seed as seed_large  # noqa: E402

WEB = ROOT / "src" / "cnnf" / "web"


def build_old(rev: str, into: Path) -> Path:
    """The web UI of ``rev`` built by its own build script; the static folder."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", rev,
                            "src/cnnf/web"], check=True, capture_output=True, text=True)
    for name in files.stdout.split():
        if "/node_modules/" in name:
            continue
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{name}"],
                                          check=True, capture_output=True).stdout)
    web = into / "src" / "cnnf" / "web"
    if (web / "package-lock.json").read_bytes() == (WEB / "package-lock.json").read_bytes():
        (web / "node_modules").symlink_to(WEB / "node_modules")
    else:  # its own packages (e.g. ELK, which this build no longer has), from npm's cache
        subprocess.run(["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund",
                        "--loglevel=error"], cwd=web, check=True, capture_output=True)
    subprocess.run(["node", "build.mjs"], cwd=web, check=True, capture_output=True,
                   env={**os.environ, "CNNF_WEB_DEBUG": ""})
    return into / "src" / "cnnf" / "console" / "static"


@contextmanager
def console_for(build: str, old_static: Path, data: Path) -> Iterator[RadarConsole]:
    if build == "this":
        with serve(data) as c:
            yield c
        return

    def mount(app: Any) -> None:  # the previous way: StaticFiles, no headers of its own
        app.mount("/", StaticFiles(directory=old_static, html=True), name="ui")

    with serve(data, static=None, mount=mount) as c:
        yield c


MARKS = """() => Object.fromEntries(performance.getEntriesByType('mark')
  .filter(m => m.name.startsWith('cnnf:')).map(m => [m.name.slice(5), Math.round(m.startTime)]))"""


def load(browser: Any, console: RadarConsole,
         slow: bool) -> tuple[float, int, float, dict[str, int]]:
    """First render ms, bytes transferred, repeat-visit first render ms, and the
    first visit's performance marks (ms from navigation start; this build only)."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    # Signed in already: the session token is where the UI keeps it.
    with console.client() as api:
        token = api.post("/api/v1/auth/login",
                         json={"username": ADMIN[0], "password": ADMIN[1]}).json()["token"]
    context.add_init_script(f"sessionStorage.setItem('cnnf.token', {token!r});"
                            "sessionStorage.setItem('cnnf.role', 'admin');")
    page = context.new_page()
    page.set_default_timeout(120_000)
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    if slow:
        cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 20, "downloadThroughput": 20e6 / 8,
            "uploadThroughput": 20e6 / 8})
    received = 0

    def on_finished(event: dict[str, Any]) -> None:
        nonlocal received
        received += int(event.get("encodedDataLength", 0))

    cdp.on("Network.loadingFinished", on_finished)

    def first_render() -> float:
        t0 = time.perf_counter()
        page.goto(f"{console.url}/?poll=600000#/radar")
        page.wait_for_function("window.cnnfRadar && window.cnnfRadar.ready")
        return (time.perf_counter() - t0) * 1000

    first = first_render()
    size = received
    marks: dict[str, int] = page.evaluate(MARKS)
    page.goto("about:blank")
    again = first_render()
    context.close()
    return first, size, again, marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="main", help="the revision to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--edges", type=int, default=20000)
    parser.add_argument("--slow", action="store_true", help="also at 20 Mbit/s, 20 ms")
    args = parser.parse_args()
    if not (STATIC / "manifest.json").is_file():
        sys.exit("this build is missing: run scripts/bootstrap.sh")
    from playwright.sync_api import sync_playwright

    graphs: list[tuple[str, Callable[[RadarConsole], None]]] = [
        ("demo", seed_shop),
        (f"{args.nodes} nodes",
         lambda c: seed_large(c, args.nodes, args.edges, random.Random(7))),
    ]
    networks = [False, True] if args.slow else [False]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        old_static = build_old(args.old, Path(tmp) / "old")
        # a build before content hashing wrote app.js; later ones assets/app-HASH.js
        old_js = old_static / "app.js"
        if not old_js.exists():
            old_js = next(p for p in (old_static / "assets").glob("app-*.js"))
        sizes = {"old": old_js.stat().st_size}
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for graph, seed in graphs:
            for build in ("old", "this"):
                data = Path(tmp) / f"{graph}-{build}".replace(" ", "-")
                data.mkdir()
                with console_for(build, old_static, data) as console:
                    seed(console)
                    for slow in networks:
                        loads = [load(browser, console, slow) for _ in range(args.runs)]
                        first = statistics.median(x[0] for x in loads)
                        again = statistics.median(x[2] for x in loads)
                        size = statistics.median(x[1] for x in loads)
                        marks = {k: statistics.median(x[3][k] for x in loads)
                                 for k in loads[0][3] if all(k in x[3] for x in loads)}
                        rows.append((graph, "20 Mbit/s" if slow else "loopback", build,
                                     first, again, size, marks))
                        print(f"{graph} {build} slow={slow}: {first:.0f} ms, again "
                              f"{again:.0f} ms, {size / 1024:.0f} KB", file=sys.stderr)
        browser.close()
        shutil.rmtree(Path(tmp) / "old", ignore_errors=True)
    print(f"previous build ({args.old}): app.js {sizes['old'] / 1024:.0f} KB uncompressed; "
          f"median of {args.runs} loads in fresh browser contexts")
    print(f"{'graph':<12} {'network':<10} {'build':<9} {'first render ms':>15} "
          f"{'repeat visit ms':>15} {'transferred KB':>14}  in the page (first visit)")
    for graph, network, build, first, again, size, marks in rows:
        name = "previous" if build == "old" else "this"
        steps = " ".join(f"{k} {v:.0f}" for k, v in sorted(marks.items(), key=lambda kv: kv[1]))
        print(f"{graph:<12} {network:<10} {name:<9} {first:>15.0f} {again:>15.0f} "
              f"{size / 1024:>14.0f}  {steps}")
    print("first render: navigation to Radar drawn, signed in (wall clock, as the driver sees "
          "it); target for the demo: < 1000 ms")
    print("in the page: ms from navigation start to the UI's performance marks: the /radar "
          "request sent (radar-request), its answer's headers in (radar-answer, taken when "
          "the page's thread is free), the bundle run (script), the answer read "
          "(radar-data), the layout computed (radar-layout), Cytoscape set up with the "
          "elements (cytoscape, radar-added), the labels measured and placed "
          "(radar-labels), the graph drawn (radar-drawn) and painted (radar-painted)")


if __name__ == "__main__":
    main()
