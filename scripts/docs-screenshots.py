#!/usr/bin/env python3
"""Refresh the README's Radar screenshots (docs/radar-demo.png, docs/radar-edge.png)
from the real demo: ``cnnf demo`` runs (root: the lab), its traffic flows for a
while, Debian's chromium signs in at 1600x1000 and takes Radar whole, then with
the frontend -> cache edge chosen; the demo is stopped and cleaned up at the end.

    sudo .venv/bin/python scripts/docs-screenshots.py [--traffic 60]
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CNNF = str(Path(sys.executable).with_name("cnnf"))
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "docs-screenshots"
LAB = "cnnfdocs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traffic", type=float, default=60,
                        help="seconds of demo traffic before the screenshots")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/cnnf-docs-demo"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    url = f"http://127.0.0.1:{free_port()}"
    demo = subprocess.Popen(
        [CNNF, "demo", "--listen", url.removeprefix("http://"), "--data-dir",
         str(args.data_dir), "--name", LAB, "--password", PASSWORD, "--every", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            print(line, end="")
            if "CNNF demo is running" in line:
                break
        else:
            print("the demo stopped before it was running", file=sys.stderr)
            return 1
        print(f"{args.traffic:.0f} s of traffic ...")
        time.sleep(args.traffic)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM,
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{url}/#/radar")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", PASSWORD)
            page.click("form#login button[type=submit]")
            page.wait_for_function("window.cnnfRadar && window.cnnfRadar.ready")
            time.sleep(1)
            page.screenshot(path=str(ROOT / "docs" / "radar-demo.png"))
            edge = page.evaluate("""() => window.cnnfRadar.cy.edges().filter(e =>
                e.source().id().includes('frontend') && e.target().id().includes('cache'))
                .map(e => e.id())[0]""")
            if not edge:
                print("no frontend -> cache edge on Radar", file=sys.stderr)
                return 1
            pos = page.evaluate("""(id) => {
                const cy = window.cnnfRadar.cy; const e = cy.getElementById(id);
                const box = cy.container().getBoundingClientRect();
                const p = e.renderedMidpoint();
                return {x: box.left + p.x, y: box.top + p.y};
            }""", edge)
            page.mouse.click(pos["x"], pos["y"])
            page.locator("#panel").wait_for(state="visible")
            time.sleep(1)
            page.screenshot(path=str(ROOT / "docs" / "radar-edge.png"))
            browser.close()
        print("wrote docs/radar-demo.png and docs/radar-edge.png")
        return 0
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=90)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
        subprocess.run([CNNF, "demo", "--data-dir", str(args.data_dir), "--name", LAB,
                        "cleanup"], capture_output=True, check=False, timeout=120)


if __name__ == "__main__":
    sys.exit(main())
