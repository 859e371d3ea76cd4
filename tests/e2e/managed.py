"""A managed cluster in the lab: the Console as a real process (loopback, root
namespace) and one ``cnnf defender run --console`` per lab host (its datapath in
the host's namespace through ``--netns``), enrolled with an enrollment token.

Used by the end-to-end tests and by ``bench/propagation.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from cnnf.lab import Lab
from tests.served import free_port

CNNF = str(Path(sys.executable).with_name("cnnf"))
PASSWORD = "correct horse battery"
HOSTS = ("node-1", "node-2")


def poll(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


OBJECTS: list[dict[str, Any]] = [
    {"kind": "container", "name": n, "selector": {"images": [f"shop/{n}"]}}
    for n in ("frontend", "api", "cache", "payments", "db", "worker")
] + [{"kind": "subnet", "name": "internet", "cidrs": ["203.0.113.0/24"]}]

RULES: list[dict[str, Any]] = [
    {"id": 1, "name": "frontend-to-api", "src": "frontend", "dst": "api", "ports": [8080],
     "effect": "allow"},
    {"id": 2, "name": "api-to-cache", "src": "api", "dst": "cache", "ports": [6379],
     "effect": "alert"},
    {"id": 3, "name": "frontend-not-cache", "src": "frontend", "dst": "cache", "ports": ["*"],
     "effect": "prevent"},
    {"id": 4, "name": "api-to-payments", "src": "api", "dst": "payments",
     "ports": ["9000-9100"], "effect": "alert"},
    {"id": 5, "name": "api-to-db", "src": "api", "dst": "db", "ports": [5432], "effect": "allow"},
    {"id": 6, "name": "frontend-not-payments", "src": "frontend", "dst": "payments",
     "ports": ["*"], "effect": "prevent"},
    {"id": 7, "name": "worker-to-db", "src": "worker", "dst": "db", "ports": [5432],
     "effect": "allow"},
]


def policy_spec(rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The policy as ``PUT /api/v1/policy`` takes it (default: prevent)."""
    return {"containerEnabled": True, "hostEnabled": False, "defaultEffect": "prevent",
            "blockMode": "reset", "objects": OBJECTS,
            "containerRules": RULES if rules is None else rules, "hostRules": []}


class ConsoleProcess:
    """``cnnf console`` on a fixed loopback port; killed and restarted at will."""

    def __init__(self, workdir: Path, db: str | None = None, args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.args = args  # more options for ``cnnf console`` (--syslog, --webhook)
        self.db = db or str(workdir / "console.db")  # a SQLite path or a postgresql URL
        self.port = free_port()
        self.log = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, stdin: str = "") -> str:
        r = subprocess.run([CNNF, "console", *args, "--db", self.db], input=stdin,
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [CNNF, "console", "--listen", f"127.0.0.1:{self.port}", "--db", self.db,
                 "--data-dir", str(self.workdir), "--log-level", "warning", *self.args],
                stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert poll(up, 60), self.log.read_text()[-2000:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)
        self.proc = None


class ManagedDefender:
    def __init__(self, lab: Lab, host: str, workdir: Path, console: str, token: str) -> None:
        self.lab, self.host = lab, host
        self.state = workdir / f"state-{host}"
        self.output = workdir / f"{host}.jsonl"
        self.log = workdir / f"{host}.log"
        self.console, self.token = console, token
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [CNNF, "defender", "run", "--console", self.console, "--token", self.token,
                "--netns", self.lab.netns(self.host),
                "--docker-host", self.lab.docker_host(self.host), "--hostname", self.host,
                "--state-dir", str(self.state), "--output", str(self.output),
                "--audit-window", "0.5", "--metrics", f"127.0.0.1:{self.metrics_port}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        assert poll(lambda: (self.status() or {}).get("pid") == self.proc.pid  # type: ignore[union-attr]
                    or self.proc.poll() is not None, 60), self.log.read_text()[-2000:]  # type: ignore[union-attr]
        assert self.proc.poll() is None, self.log.read_text()[-2000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.state / "status.json").read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None

    def applied_revision(self) -> int | None:
        """The policy revision the Defender enforces (its metrics endpoint)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                        timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        m = re.search(r"^cnnf_defender_policy_revision (\S+)$", text, re.MULTILINE)
        return int(float(m.group(1))) if m else None

    def spooled(self) -> int:
        return int(((self.status() or {}).get("console") or {}).get("spool_batches") or 0)

    def records(self, kind: str) -> list[dict[str, Any]]:
        if not self.output.exists():
            return []
        return [r for r in map(json.loads, self.output.read_text().splitlines())
                if r["record"] == kind]


class ManagedCluster:
    """``replicas`` Console processes on the store ``db`` (one on SQLite by
    default); the API client talks to the first, and the Defender of the i-th
    host to the ``consoles(i)`` URLs (default: the first replica)."""

    def __init__(self, lab: Lab, workdir: Path, *, db: str | None = None, replicas: int = 1,
                 consoles: Callable[[int, list[str]], str] | None = None) -> None:
        self.lab = lab
        self.workdir = workdir
        self.replicas = [ConsoleProcess(workdir if replicas == 1 else workdir / f"console-{i}",
                                        db) for i in range(replicas)]
        for r in self.replicas:
            r.workdir.mkdir(exist_ok=True)
        self.console = self.replicas[0]
        self.console.cli("create-user", "admin", "--password-stdin", stdin=PASSWORD + "\n")
        for r in self.replicas:
            r.start()
        self.api = httpx.Client(base_url=self.console.url, timeout=30)
        self.login()
        token = self.console.cli("enrollment-token")
        urls = [r.url for r in self.replicas]
        self.defenders = [ManagedDefender(lab, h, workdir, consoles(i, urls) if consoles
                                          else self.console.url, token)
                          for i, h in enumerate(HOSTS)]

    def login(self) -> None:
        r = self.api.post("/api/v1/auth/login", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200, r.text
        self.api.headers["Authorization"] = f"Bearer {r.json()['token']}"

    def start(self) -> None:
        self.set_policy(policy_spec())
        for d in self.defenders:
            d.start()
        self.wait_applied(self.revision())
        self.wait_inventory()

    def stop(self) -> None:
        for d in self.defenders:
            d.stop()
        for r in self.replicas:
            if r.proc is not None:
                r.kill(signal.SIGTERM)
        self.api.close()

    def revision(self) -> int:
        return int(self.api.get("/api/v1/policy").json()["revision"])

    def set_policy(self, spec: dict[str, Any]) -> int:
        r = self.api.put("/api/v1/policy", json=spec)
        assert r.status_code == 200, r.text
        return int(r.json()["revision"])

    def wait_applied(self, revision: int, timeout: float = 30) -> None:
        for d in self.defenders:
            if d.proc is not None:
                assert poll(lambda d=d: d.applied_revision() == revision, timeout), (
                    d.host, d.applied_revision(), d.log.read_text()[-2000:])

    def wait_inventory(self) -> None:
        """Every lab container is in the Console's cluster inventory, and every
        Defender holds that inventory's revision."""
        want = {c.name for c in self.lab.topology.containers}

        def merged() -> int | None:
            inv = self.api.get("/api/v1/inventory").json()
            names = {c["name"] for c in inv["containers"]}
            return int(inv["revision"]) if names >= want else None

        revision = poll(merged, 60)
        assert revision, self.api.get("/api/v1/inventory").text
        for d in self.defenders:
            assert poll(lambda d=d: (d.status() or {}).get("cluster_revision") == revision, 30)

    def defender_id(self, host: str) -> str:
        for d in self.api.get("/api/v1/defenders").json():
            if d["hostname"] == host and d["status"] != "revoked":
                return str(d["id"])
        raise AssertionError(f"no Defender enrolled for {host}")

    def audits(self, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.api.get("/api/v1/audits", params={**params, "limit": 1000,
                                                          "offset": offset}).json()
            items += page["items"]
            offset += 1000
            if offset >= page["total"]:
                return items

    def flows(self, **params: Any) -> list[dict[str, Any]]:
        return list(self.api.get("/api/v1/flows", params={**params, "limit": 1000})
                    .json()["items"])


def lab_ok() -> str | None:
    import shutil

    if os.geteuid() != 0 or shutil.which("podman") is None:
        return "the lab needs root and podman"
    return None


@contextmanager
def managed_shop(name: str, workdir: Path, **cluster: Any) -> Iterator[ManagedCluster]:
    """The shop lab ``name`` with a started ManagedCluster (``cluster`` passed to
    it); the cluster stopped and the lab removed at the end, whatever happened.
    Fails (never skips) where the lab cannot run: these tests are the proof."""
    import pytest

    reason = lab_ok()
    if reason:
        pytest.fail(f"cannot run: {reason}")
    lab = Lab.up("shop", name=name)
    c: ManagedCluster | None = None
    try:
        c = ManagedCluster(lab, workdir, **cluster)
        c.start()
        yield c
    finally:
        if c is not None:
            c.stop()
        Lab.down(name)
