"""`cnnf demo` as `make demo` runs it (after bootstrap): a real process that
starts the Console, the shop lab and one Defender per lab host; the Console
sees both Defenders, Radar shows the shop's images, the compromised frontend's
lateral moves arrive as audits; SIGINT leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cnnf.lab.topology import load_topology
from tests.served import free_port

pytestmark = pytest.mark.lab

LAB = "cnnfdemo"
PASSWORD = "demo test password"
SHOP = load_topology("shop")
IMAGES = {c.image.rsplit(":", 1)[0] for c in SHOP.containers}
# The lateral moves of the compromised frontend: destinations it probes.
LATERAL = {"db", "payments", "cache"}


def _root_netfilter() -> set[str]:
    """CNNF's chains, rules and ipsets in the root namespace (the demo's Defenders
    work in the lab's namespaces and must leave none here; other programs' rules
    are not compared, as other work on the machine may change them meanwhile)."""
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    sets = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True,
                          check=False).stdout
    return ({ln for ln in rules.splitlines() if "cnnf" in ln.lower()}
            | {f"ipset {s}" for s in sets.split() if "cnnf" in s.lower()})


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in line:
            found.append(f"{pid}: {line}")
    return found


def _poll(what: str, check: Callable[[], Any], timeout: float, proc: subprocess.Popen[str],
          log: list[str]) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"cnnf demo exited ({proc.returncode}):\n" + "".join(log)
        last = check()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}\n" + "".join(log[-30:]))


class _Reader(threading.Thread):
    def __init__(self, proc: subprocess.Popen[str], log: list[str]) -> None:
        super().__init__(daemon=True)
        self.proc, self.log = proc, log

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)


@pytest.fixture
def demo(tmp_path: Path, request: pytest.FixtureRequest,
         ) -> Iterator[tuple[subprocess.Popen[str], list[str], str, Path, set[str]]]:
    topology = getattr(request, "param", "shop")
    before = _root_netfilter()
    port = free_port()
    data_dir = tmp_path / "demo"
    cnnf = Path(sys.executable).parent / "cnnf"
    argv = [str(cnnf), "demo", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
            "--name", LAB, "--password", PASSWORD, "--every", "5", "--topology", topology]
    if topology == "kube":
        # as a shell's `make demo &` starts it: SIGINT ignored (it must still stop on it)
        argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    log: list[str] = []
    reader = _Reader(proc, log)
    reader.start()
    try:
        yield proc, log, f"http://127.0.0.1:{port}", data_dir, before
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
        # Whatever happened above, leave this machine clean for the next test.
        subprocess.run([str(cnnf), "demo", "--data-dir", str(data_dir), "--name", LAB,
                        "cleanup"], capture_output=True, check=False, timeout=120)


def test_demo_runs_the_product_and_leaves_nothing_behind(
        demo: tuple[subprocess.Popen[str], list[str], str, Path, set[str]]) -> None:
    proc, log, url, data_dir, before = demo

    _poll("the demo's banner", lambda: any("CNNF demo is running" in ln for ln in log),
          150, proc, log)
    text = "".join(log)
    assert f"Radar:  {url}/" in text
    assert f"Login:  admin / {PASSWORD}" in text

    api = httpx.Client(base_url=f"{url}/api/v1", timeout=10)
    token = api.post("/auth/login", json={"username": "admin", "password": PASSWORD})
    assert token.status_code == 200, token.text
    api.headers["Authorization"] = f"Bearer {token.json()['token']}"

    def connected() -> set[str]:
        resp = api.get("/defenders")
        hosts = {d["hostname"] for d in resp.json() if d["status"] == "connected"}
        return hosts if hosts >= {h.name for h in SHOP.hosts} else set()

    assert connected() == {"node-1", "node-2"}

    def images() -> set[str]:
        graph = api.get("/radar").json()
        shown = {n["label"].rsplit(":", 1)[0] for n in graph["nodes"] if n["kind"] == "image"}
        return shown if shown >= IMAGES else set()

    _poll("Radar to show the shop's images", images, 30, proc, log)

    def lateral_audits() -> set[str]:
        page = api.get("/audits", params={"rule": "frontend-to-data", "limit": 200}).json()
        seen = set()
        for a in page["items"]:
            assert a["blocked"] is True
            assert a.get("srcContainer", a.get("src_container")) == "frontend"
            seen.add(a.get("dstContainer", a.get("dst_container")))
        return seen if seen >= LATERAL else set()

    _poll("audits of the lateral moves (frontend -> db, payments, cache)", lateral_audits,
          45, proc, log)

    # A second demo with the same data directory refuses, and leaves this one alone.
    cnnf = Path(sys.executable).parent / "cnnf"
    second = subprocess.run([str(cnnf), "demo", "--listen", "127.0.0.1:1", "--data-dir",
                             str(data_dir), "--name", LAB], capture_output=True, text=True,
                            check=False, timeout=60)
    assert second.returncode == 1
    assert f"is running (pid {proc.pid})" in second.stderr
    assert (data_dir / "demo.json").exists()
    assert connected() == {"node-1", "node-2"}
    api.close()

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0, "".join(log)
    text = "".join(log)
    assert "demo stopped; nothing is left running" in text

    _assert_nothing_left(url, data_dir, before)


def _assert_nothing_left(url: str, data_dir: Path, before: set[str]) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    assert f"cnnf-{LAB}-" not in netns
    assert not Path(f"/run/cnnf-lab/{LAB}").exists()
    assert not Path(f"/var/lib/cnnf-lab/{LAB}").exists()  # the containers' storage
    assert not _processes_mentioning(str(data_dir))
    assert not _processes_mentioning(f"/cnnf-lab/{LAB}/")
    assert not (data_dir / "demo.json").exists()
    assert _root_netfilter() == before
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_a_crashed_demo_is_cleaned_up_by_the_next_run(
        demo: tuple[subprocess.Popen[str], list[str], str, Path, set[str]]) -> None:
    """kill -9 of the demo leaves its Console, Defenders and lab running; the
    next start removes them first (here: `cnnf demo cleanup`, its first step)."""
    proc, log, url, data_dir, before = demo
    _poll("the demo's banner", lambda: any("CNNF demo is running" in ln for ln in log),
          150, proc, log)
    proc.kill()
    proc.wait()
    assert _processes_mentioning(str(data_dir)), "the Console and Defenders outlive the demo"
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    cnnf = Path(sys.executable).parent / "cnnf"
    cleanup = subprocess.run([str(cnnf), "demo", "--data-dir", str(data_dir), "--name", LAB,
                              "cleanup"], capture_output=True, text=True, check=False,
                             timeout=120)
    assert cleanup.returncode == 0, cleanup.stderr
    assert "removed leftovers of an earlier run: 2 Defender(s), lab 'cnnfdemo', the Console" \
        in cleanup.stdout
    _assert_nothing_left(url, data_dir, before)


@pytest.mark.parametrize("demo", ["kube"], indirect=True)
def test_the_demo_on_kubernetes_like_nodes(
        demo: tuple[subprocess.Popen[str], list[str], str, Path, set[str]]) -> None:
    """`cnnf demo --topology kube`: containerd nodes, Defenders discovering pods
    through the CRI; the compromised web pod's lateral moves (postgres and
    checkout on the other node, redis on its own) arrive as audits naming pods.
    Started in the background as a shell starts it (SIGINT ignored), SIGINT
    still stops it."""
    proc, log, url, data_dir, before = demo
    _poll("the demo's banner", lambda: any("CNNF demo is running" in ln for ln in log),
          150, proc, log)
    text = "".join(log)
    assert "(kube), hosts node-1, node-2" in text
    assert "The compromised web pod keeps probing" in text and "rule web-lateral" in text
    api = httpx.Client(base_url=f"{url}/api/v1", timeout=10)
    token = api.post("/auth/login", json={"username": "admin", "password": PASSWORD})
    assert token.status_code == 200, token.text
    api.headers["Authorization"] = f"Bearer {token.json()['token']}"

    def lateral_audits() -> set[str]:
        page = api.get("/audits", params={"rule": "web-lateral", "limit": 200}).json()
        seen = set()
        for a in page["items"]:
            assert a["blocked"] is True
            assert (a["srcContainer"], a["srcNamespace"], a["srcPod"]) == (
                "web", "storefront", "web-7d4b9c6f5-x2k8p")
            seen.add(a["dstPod"])
        return seen if seen >= {"postgres-0", "checkout-6c8f9d7b5-m3n7r", "redis-0"} else set()

    _poll("audits of the web pod's lateral moves", lateral_audits, 45, proc, log)

    def pods() -> set[str]:
        inv = api.get("/inventory").json()
        return {f"{w['namespace']}/{w['pod']}" for w in inv["containers"]}

    assert _poll("the pods in the Console's inventory", lambda: {
        "storefront/web-7d4b9c6f5-x2k8p", "data/postgres-0",
        "monitoring/metrics-agent-9k2lp"} <= pods(), 30, proc, log)
    api.close()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0, "".join(log)
    assert "demo stopped; nothing is left running" in "".join(log)
    _assert_nothing_left(url, data_dir, before)
