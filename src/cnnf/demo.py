"""``cnnf demo``: the whole product on one machine, in one command.

:class:`Demo` starts, in order: the Console (embedded SQLite store under the
data directory, a fresh admin login), the starter policy through the API, the
``shop`` lab (or ``kube``: Kubernetes-like nodes), one managed Defender per lab
host (enrolled with an enrollment token; each runs in the root namespace with
``--netns`` for its datapath), and
continuous traffic including lateral-movement attempts from a "compromised"
frontend (on ``kube``, web pod). It prints the Radar address and the login and runs until
SIGINT/SIGTERM (or ``duration``), then tears everything down in reverse:
traffic, Defenders (SIGTERM removes their kernel state), lab, Console.

The processes it starts are recorded in ``DATA_DIR/demo.json``; :func:`cleanup`
(also the first step of every start) stops those that a crashed run left
behind, removes their kernel state and the lab, so running it again is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from cnnf.errors import CnnfError
from cnnf.lab import Lab, LabError, Traffic
from cnnf.lab.topology import Traffic as Pattern

Output = Callable[[str], None]

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_DATA_DIR = Path("var/demo")
DEFAULT_LAB = "demo"
TOPOLOGY = "shop"
POLICY_NAME = "examples/demo-policy.yaml"

# The compromised frontend's lateral moves: the shop topology has two
# (frontend -> db:5432, frontend -> payments:22); the demo adds one on the
# frontend's own host. The starter policy prevents all three (frontend-to-data).
EXTRA_LATERAL = (
    Pattern(name="lateral-frontend-cache", source="frontend", destination="cache",
            port=6379, rate=0.2),
)


@dataclass(frozen=True)
class Profile:
    """What the demo runs on a topology: its starter policy, the compromised
    workload whose lateral moves it shows, and the rule that prevents them."""

    topology: str
    policy: str  # the starter policy, relative to the checkout
    attacker: str  # how the banner names the compromised workload
    rule: str  # the rule that prevents its lateral moves
    extra: tuple[Pattern, ...] = ()  # lateral moves beside the topology's


PROFILES = {
    "shop": Profile("shop", POLICY_NAME, "frontend", "frontend-to-data", EXTRA_LATERAL),
    # Kubernetes-like nodes (containerd, pods through the CRI): the compromised
    # web pod probes postgres and checkout on the other node (the topology's
    # lateral patterns) and redis on its own.
    "kube": Profile("kube", "examples/demo-kube-policy.yaml", "web pod", "web-lateral", (
        Pattern(name="lateral-web-redis", source="web", destination="redis", port=6379,
                rate=0.2),
    )),
}


class DemoError(CnnfError):
    """The demo could not start (the message says what to do)."""


@dataclass
class DemoConfig:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = DEFAULT_DATA_DIR
    lab: str = DEFAULT_LAB
    policy: Path | None = None  # None: the topology's starter policy of the checkout
    topology: str = TOPOLOGY  # shop, or kube (Kubernetes-like nodes)
    username: str = "admin"
    password: str | None = None  # None: generated
    duration: float | None = None  # None: until SIGINT/SIGTERM
    every: float = 30.0  # seconds between progress lines while running
    timeout: float = 90.0  # for each start-up step that waits

    @property
    def profile(self) -> Profile:
        try:
            return PROFILES[self.topology]
        except KeyError:
            raise DemoError(f"--topology {self.topology!r}: expected one of "
                            f"{', '.join(PROFILES)}") from None

    @property
    def url(self) -> str:
        """Where the demo itself and its Defenders reach the Console."""
        host, port = parse_listen(self.listen)
        if host in ("0.0.0.0", "::", ""):  # every address: use loopback here
            host = "127.0.0.1" if host != "::" else "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def browser_url(self) -> str:
        """Where a browser reaches Radar (this machine's name when on every address)."""
        host, port = parse_listen(self.listen)
        if host in ("0.0.0.0", "::"):
            return f"http://{socket.gethostname()}:{port}"
        return self.url


def default_policy(topology: str = TOPOLOGY) -> Path:
    """The topology's starter policy: in the current directory's checkout, else
    beside the package."""
    name = PROFILES[topology].policy
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / name).is_file():
            return base / name
    raise DemoError(f"{name} not found (run from the checkout, or give --policy)")


def cnnf_command() -> list[str]:
    """How to run ``cnnf`` itself: the script beside this interpreter, else on PATH."""
    script = Path(sys.executable).parent / "cnnf"
    if script.is_file():
        return [str(script)]
    found = shutil.which("cnnf")
    if found:
        return [found]
    return [sys.executable, "-c", "from cnnf.cli import main; main()"]


def discovery_args(lab: Lab, host: str) -> list[str]:
    """How a lab host's Defender finds its workloads: the CRI on a containerd
    node, the Docker API of Podman's service otherwise."""
    if lab.runtime(host) == "containerd":
        return ["--runtime", "cri", "--cri-socket", lab.cri_socket(host)]
    return ["--runtime", "docker", "--docker-host", lab.docker_host(host)]


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DemoError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# ---- processes of earlier runs ------------------------------------------------


def datapaths_up(defenders_dir: Path, hosts: list[str]) -> bool:
    """Whether every named Defender has its datapath up. The Console counts a
    Defender connected as soon as it fetches its policy, which is before its
    netfilter rules are in place; the Defender writes ``status.json`` in its
    state directory only after that (and removes it when it stops)."""
    return all((defenders_dir / h / "status.json").is_file() for h in hosts)


def _state_file(data_dir: Path) -> Path:
    return data_dir / "demo.json"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _ours(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is still a process the demo started with this data dir."""
    line = _cmdline(pid)
    return "cnnf" in line and str(data_dir) in line


def _wait_gone(pids: list[int], timeout: float, data_dir: Path) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if _ours(p, data_dir)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def stop_processes(pids: list[int], data_dir: Path, timeout: float = 15.0) -> list[int]:
    """SIGTERM the given demo processes, SIGKILL what is left after ``timeout``;
    returns the pids that had to be killed."""
    pids = [p for p in pids if _ours(p, data_dir)]
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    left = _wait_gone(pids, timeout, data_dir)
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    _wait_gone(left, 5.0, data_dir)
    return left


def running_demo(data_dir: Path) -> int | None:
    """The pid of a demo still running with this data directory, if any."""
    state: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(_state_file(data_dir.resolve()).read_text())
    pid = state.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    line = _cmdline(pid)
    return pid if "cnnf" in line and "demo" in line else None


def cleanup(data_dir: Path, lab: str, out: Output = print) -> list[str]:
    """Remove what an earlier (crashed) run left: its processes, their kernel
    state, the lab and the Console's store. Idempotent; returns what it removed.
    Refuses while that run is still going (its own process alive)."""
    data_dir = data_dir.resolve()
    pid = running_demo(data_dir)
    if pid is not None:
        raise DemoError(f"a demo with {data_dir} is running (pid {pid}): stop it with "
                        f"Ctrl-C in its terminal or `kill {pid}`")
    removed: list[str] = []
    state: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(_state_file(data_dir).read_text())
    defenders: dict[str, Any] = state.get("defenders", {})
    alive = [int(d["pid"]) for d in defenders.values() if _ours(int(d["pid"]), data_dir)]
    killed = stop_processes(alive, data_dir)
    for d in defenders.values():
        # A Defender that did not stop cleanly leaves its rules (fail-open): remove them.
        if int(d["pid"]) in killed and Path(f"/run/netns/{d['netns']}").exists():
            subprocess.run([*cnnf_command(), "defender", "cleanup", "--netns", d["netns"],
                            "--state-dir", d["state_dir"]],
                           capture_output=True, check=False, timeout=60)  # fmt: skip
    if alive:
        removed.append(f"{len(alive)} Defender(s)")
    for name in dict.fromkeys((state.get("lab", lab), lab)):
        if Lab.down(name):
            removed.append(f"lab {name!r}")
    console = state.get("console_pid")
    if console and _ours(int(console), data_dir):
        killed = stop_processes([int(console)], data_dir)
        removed.append("the Console" + (" (killed)" if killed else ""))
    for sub in ("console", "defenders"):
        if (data_dir / sub).exists():
            shutil.rmtree(data_dir / sub)
    _state_file(data_dir).unlink(missing_ok=True)
    if removed:
        out(f"removed leftovers of an earlier run: {', '.join(removed)}")
    return removed


# ---- the demo --------------------------------------------------------------------


@dataclass
class _Started:
    console: subprocess.Popen[bytes] | None = None
    defenders: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    lab: Lab | None = None
    lab_touched: bool = False  # Lab.up was called: the lab is ours to remove
    traffic: Traffic | None = None


class Demo:
    """One demo run: :meth:`run` starts everything, waits, and tears down."""

    def __init__(self, config: DemoConfig, out: Output = print,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.data_dir = config.data_dir.resolve()
        self.out = out
        self.clock = clock
        self.password = config.password or secrets.token_urlsafe(12)
        self.started = _Started()
        self._t0 = clock()
        self._api: httpx.Client | None = None
        self._wrote_state = False  # demo.json is this run's (remove it at the end)

    # -- helpers

    def step(self, message: str) -> None:
        self.out(f"[{self.clock() - self._t0:5.1f}s] {message}")

    def _log(self, name: str) -> Path:
        return self.data_dir / f"{name}.log"

    def _tail(self, name: str, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            text = self._log(name).read_text(errors="replace").strip().splitlines()
            return "\n".join("    " + line for line in text[-lines:])
        return ""

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
               ) -> subprocess.Popen[bytes]:
        log = self._log(name).open("ab")
        try:
            # A session of its own: a Ctrl-C in the terminal reaches only the
            # demo, which then stops everything in order.
            return subprocess.Popen([*cnnf_command(), *args], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        finally:
            log.close()

    def _save_state(self) -> None:
        s = self.started
        state = {
            "pid": os.getpid(),
            "lab": self.config.lab,
            "listen": self.config.listen,
            "console_pid": s.console.pid if s.console else None,
            "defenders": {
                host: {"pid": p.pid, "netns": f"cnnf-{self.config.lab}-{host}",
                       "state_dir": str(self.data_dir / "defenders" / host)}
                for host, p in s.defenders.items()
            },
        }
        tmp = _state_file(self.data_dir).with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, _state_file(self.data_dir))
        self._wrote_state = True

    def _wait(self, what: str, ready: Callable[[], bool],
              watched: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        """Poll ``ready`` until it holds, a watched process exits, or the timeout."""
        deadline = self.clock() + self.config.timeout
        while not ready():
            for name, proc in watched:
                if proc.poll() is not None:
                    raise DemoError(f"{name} exited ({proc.returncode}) while waiting for "
                                    f"{what}; its log ({self._log(name)}):\n{self._tail(name)}")
            if self.clock() >= deadline:
                raise DemoError(f"timed out after {self.config.timeout:.0f} s waiting for {what}")
            time.sleep(0.25)

    @property
    def api(self) -> httpx.Client:
        if self._api is None:
            self._api = httpx.Client(base_url=f"{self.config.url}/api/v1", timeout=15.0)
        return self._api

    def _check(self, resp: httpx.Response, what: str) -> Any:
        if resp.status_code >= 400:
            raise DemoError(f"{what}: the Console answered {resp.status_code}: {resp.text[:300]}")
        return resp.json() if resp.content else None

    # -- start

    def start(self) -> None:
        cfg = self.config
        if os.geteuid() != 0:
            raise DemoError("the demo needs root (network namespaces, netfilter, "
                            "containers): run it with sudo")
        host, port = parse_listen(cfg.listen)
        profile = cfg.profile
        policy_file = cfg.policy or default_policy(profile.topology)
        policy_text = policy_file.read_text()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.step(f"data directory {self.data_dir}")
        cleanup(self.data_dir, cfg.lab, out=self.step)
        if not _port_free(host, port):
            raise DemoError(f"{cfg.listen} is in use (another Console?): stop it, "
                            f"or choose another address with --listen")
        for old in self.data_dir.glob("*.log"):
            old.unlink()

        console_dir = self.data_dir / "console"
        created = subprocess.run(
            [*cnnf_command(), "console", "create-user", cfg.username, "--role", "admin",
             "--password-stdin", "--data-dir", str(console_dir)],
            input=(self.password + "\n").encode(), capture_output=True, check=False, timeout=120)
        if created.returncode != 0:
            raise DemoError(f"could not create the admin login: "
                            f"{created.stderr.decode(errors='replace').strip()}")
        self.started.console = self._spawn("console", [
            "console", "--listen", cfg.listen, "--data-dir", str(console_dir),
            "--log-level", "warning"])
        self._save_state()
        self.step(f"Console starting on {cfg.url} (store {console_dir / 'console.db'})")
        self._wait("the Console", self._healthy, [("console", self.started.console)])
        token = self._check(self.api.post("/auth/login", json={
            "username": cfg.username, "password": self.password}), "login")["token"]
        self.api.headers["Authorization"] = f"Bearer {token}"
        result = self._check(self.api.post(
            "/policy/import", content=policy_text.encode(),
            headers={"Content-Type": "application/yaml"}), f"importing {policy_file}")
        self.step(f"Console up; starter policy {policy_file.name} loaded "
                  f"(revision {result.get('revision')})")

        enrollment = self._check(self.api.post("/defenders/enrollment-tokens", json={}),
                                 "creating a Defender enrollment token")["token"]
        self.step(f"bringing up the {profile.topology!r} lab as {cfg.lab!r}")
        self.started.lab_touched = True
        self.started.lab = lab = Lab.up(profile.topology, name=cfg.lab,
                                        progress=lambda m: self.out(f"        lab {m}"))

        for h in lab.topology.hosts:
            state_dir = self.data_dir / "defenders" / h.name
            labels = [a for k, v in sorted(h.labels.items()) for a in ("--label", f"{k}={v}")]
            self.started.defenders[h.name] = self._spawn(f"defender-{h.name}", [
                "defender", "run", "--console", cfg.url, "--netns", lab.netns(h.name),
                *discovery_args(lab, h.name), "--hostname", h.name, *labels,
                "--state-dir", str(state_dir)], env={"CNNF_ENROLLMENT_TOKEN": enrollment})
            self._save_state()
            self.step(f"Defender for {h.name} starting ({lab.netns(h.name)}, "
                      f"log {self._log('defender-' + h.name)})")
        hosts = sorted(self.started.defenders)
        self._wait(f"the Defenders of {', '.join(hosts)} to connect",
                   # Traffic before the datapaths are up would let the first
                   # lateral attempts through, unevaluated and unaudited.
                   lambda: (self._connected() >= set(hosts)
                            and datapaths_up(self.data_dir / "defenders", hosts)),
                   [*((f"defender-{n}", p) for n, p in self.started.defenders.items()),
                    ("console", self.started.console)])
        self.step(f"Defenders connected: {', '.join(hosts)}")

        patterns = [*lab.topology.traffic, *profile.extra]
        self.started.traffic = Traffic(lab, patterns)
        self.started.traffic.start()
        lateral = [p for p in patterns if p.label.startswith("lateral")]
        self.step(f"traffic running: {len(patterns)} patterns, {len(lateral)} of them "
                  f"lateral-movement attempts from the compromised {profile.attacker}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.config.url}/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _connected(self) -> set[str]:
        try:
            resp = self.api.get("/defenders")
        except httpx.HTTPError:
            return set()
        if resp.status_code != 200:
            return set()
        return {d.get("hostname", "") for d in resp.json() if d.get("status") == "connected"}

    def banner(self) -> str:
        cfg, lab = self.config, self.started.lab
        lateral = [p for p in (self.started.traffic.patterns if self.started.traffic else [])
                   if p.label.startswith("lateral")]
        moves = ", ".join(f"{p.destination}:{p.port}" for p in lateral)
        hosts = ", ".join(h.name for h in lab.topology.hosts) if lab else ""
        return "\n".join([
            "",
            "CNNF demo is running",
            f"  Radar:  {cfg.browser_url}/",
            f"  Login:  {cfg.username} / {self.password}",
            f"  API:    {cfg.browser_url}/api/v1/docs",
            f"  Lab:    {cfg.lab!r} ({cfg.topology}), hosts {hosts}; "
            f"`cnnf lab status --name {cfg.lab}`",
            f"  Logs:   {self.data_dir}/*.log",
            f"The compromised {cfg.profile.attacker} keeps probing {moves}: rule "
            f"{cfg.profile.rule} prevents it;",
            "see the audits in Radar. Grey edges are holes in the policy (no rule matched).",
            "Press Ctrl-C to stop the demo and remove everything.",
            "",
        ])

    def _report(self, traffic: Traffic) -> None:
        s = self.started
        if s.console and s.console.poll() is not None:
            raise DemoError(f"the Console exited ({s.console.returncode}):\n"
                            f"{self._tail('console')}")
        for host, proc in s.defenders.items():
            if proc.poll() is not None:
                raise DemoError(f"the Defender of {host} exited ({proc.returncode}):\n"
                                f"{self._tail('defender-' + host)}")
        totals: dict[str, int] = {}
        for counts in traffic.counts.values():
            for outcome, n in counts.items():
                totals[outcome] = totals.get(outcome, 0) + n
        lateral = sum(sum(c.values()) for label, c in traffic.counts.items()
                      if label.startswith("lateral"))
        audits = "?"
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            resp = self.api.get("/audits", params={"limit": 1})
            if resp.status_code == 200:
                audits = str(resp.json()["total"])
        summary = ", ".join(f"{n} {o}" for o, n in sorted(totals.items()))
        self.step(f"connections: {summary or 'none yet'}; lateral attempts {lateral}; "
                  f"audits at the Console {audits}")

    # -- stop

    def stop(self) -> None:
        s = self.started
        if s.traffic is not None:
            s.traffic.stop()
            self.step("traffic stopped; connections made (prevented ones are refused: "
                      "a TCP reset)")
            self.out(s.traffic.summary())
            s.traffic = None
        if s.defenders:
            pids = [p.pid for p in s.defenders.values()]
            killed = stop_processes(pids, self.data_dir)
            for host, proc in s.defenders.items():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1)
                if proc.pid in killed and s.lab is not None:
                    subprocess.run([*cnnf_command(), "defender", "cleanup", "--netns",
                                    s.lab.netns(host)], capture_output=True, check=False,
                                   timeout=60)  # fmt: skip
            self.step(f"Defenders stopped ({', '.join(s.defenders)})"
                      + (f"; {len(killed)} had to be killed" if killed else ""))
            s.defenders = {}
        if s.lab_touched:
            with contextlib.suppress(LabError):
                Lab.down(self.config.lab)
            s.lab, s.lab_touched = None, False
            self.step(f"lab {self.config.lab!r} is down")
        if self._api is not None:
            self._api.close()
            self._api = None
        if s.console is not None:
            stop_processes([s.console.pid], self.data_dir)
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.console.wait(timeout=1)
            s.console = None
            self.step("Console stopped")
        if self._wrote_state:
            _state_file(self.data_dir).unlink(missing_ok=True)

    def run(self) -> None:
        """Start, print the banner, keep running until a signal (or the duration), stop."""
        previous = signal.signal(signal.SIGTERM, _interrupt)
        # Also SIGINT: a shell starting the demo in the background (`make demo &`)
        # leaves SIGINT ignored, and Python then installs no KeyboardInterrupt.
        previous_int = signal.signal(signal.SIGINT, _interrupt)
        try:
            self.start()
            self.out(self.banner())
            assert self.started.traffic is not None
            self.started.traffic.run(self.config.duration, every=self.config.every,
                                     report=self._report)
        except KeyboardInterrupt:
            self.out("")
            self.step("stopping")
        finally:
            # A second Ctrl-C must not leave half of the demo behind.
            with _ignoring_interrupts(self.step):
                self.stop()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
        self.step("demo stopped; nothing is left running")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _ignoring_interrupts(out: Output) -> Iterator[None]:
    def hold(signum: int, frame: FrameType | None) -> None:
        out("still tearing down, please wait")

    old_int = signal.signal(signal.SIGINT, hold)
    old_term = signal.signal(signal.SIGTERM, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
