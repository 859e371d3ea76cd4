"""Throw-away network namespaces for root tests (and the datapath bench).

Every namespace is named ``cnnft-<pid>-<role>`` so leftovers of a crashed run are
recognisable: :func:`sweep` deletes those whose creating process is gone.
Interfaces are created directly inside the namespaces, so nothing appears in the
machine's root namespace, and no route leads out of the test namespaces.

The standard topology (:func:`topology`):

- ``node``: a bridge ``br0`` (10.77.0.1/24, fd77::1/64) with IP forwarding on,
  and a veth ``to-remote`` (10.78.0.1/30, fd78::1/64);
- ``c1``, ``c2``: "containers" on the bridge (10.77.0.2 / .3, fd77::2 / ::3);
- ``remote``: a host routed through the node (10.78.0.2, fd78::2), which reaches
  the containers through the node and the containers reach it the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

PREFIX = "cnnft-"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Netns:
    """One named network namespace."""

    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def argv(self, *cmd: str) -> list[str]:
        """A command line that runs ``cmd`` inside this namespace."""
        return ["nsenter", f"--net={self.path}", *cmd]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*cmd), check=check, capture_output=True, text=True)

    def ip(self, *args: str) -> None:
        _ip("-n", self.name, *args)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def python(self, code: str, *args: str) -> list[str]:
        """argv running a Python snippet inside the namespace."""
        return self.argv(sys.executable, "-c", textwrap.dedent(code), *args)

    def connect(self, host: str, port: int, timeout: float = 2.0) -> str:
        """Connect once from inside this namespace; return "ok", "refused", "timeout"
        or another errno name, and whether it failed at once is left to the caller."""
        code = """
            import errno, socket, sys
            host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect((host, port))
                s.sendall(b"ping")
                data = s.recv(16)
                print("ok" if data == b"pong" else "nodata")
            except socket.timeout:
                print("timeout")
            except ConnectionRefusedError:
                print("refused")
            except OSError as e:
                print(errno.errorcode.get(e.errno, str(e)))
        """
        out = subprocess.run(
            self.python(code, host, str(port), str(timeout)),
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=True,
        )
        return out.stdout.strip()

    def serve(self, *ports: int, host: str = "::") -> Server:
        """Start a TCP server inside this namespace that answers "ping" with "pong"
        on each of ``ports`` (IPv4 and IPv6)."""
        code = """
            import socket, sys, threading
            def handle(c):
                try:
                    c.settimeout(5)
                    if c.recv(16):
                        c.sendall(b"pong")
                except OSError:
                    pass
                finally:
                    c.close()
            def serve(s):
                while True:
                    c, _ = s.accept()
                    threading.Thread(target=handle, args=(c,), daemon=True).start()
            for port in sys.argv[2:]:
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind((sys.argv[1], int(port)))
                s.listen(4096)
                threading.Thread(target=serve, args=(s,), daemon=True).start()
            print("ready", flush=True)
            threading.Event().wait()
        """
        proc = subprocess.Popen(
            self.python(code, host, *(str(p) for p in ports)), stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError(f"server in {self.name} did not start")
        return Server(proc)


PROBER = """
    import collections, json, socket, sys, time
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    seen = collections.Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.settimeout(0.3)
        try:
            s.connect((host, port))
            seen["ok"] += 1
        except ConnectionRefusedError:
            seen["refused"] += 1
        except OSError:
            seen["timeout"] += 1
        finally:
            s.close()
        time.sleep(0.01)  # at most 100 a second: below any admission limit in the tests
    print(json.dumps(seen))
"""


def probing(netns_path: str, host: str, port: int, seconds: float) -> subprocess.Popen[str]:
    """Connect to host:port over and over for ``seconds`` from inside the
    namespace at ``netns_path`` (a /run/netns path or /proc/PID/ns/net); pass the
    process to :func:`outcomes` for the counts of ok / refused / timeout."""
    argv = ["nsenter", f"--net={netns_path}", sys.executable, "-c", textwrap.dedent(PROBER),
            host, str(port), str(seconds)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def outcomes(proc: subprocess.Popen[str]) -> dict[str, int]:
    out, _ = proc.communicate(timeout=120)
    return dict(json.loads(out))


@dataclass
class Server:
    proc: subprocess.Popen[str]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Topology:
    node: Netns
    c1: Netns
    c2: Netns
    remote: Netns
    all: list[Netns] = field(default_factory=list)

    C1 = "10.77.0.2"
    C2 = "10.77.0.3"
    C1_6 = "fd77::2"
    C2_6 = "fd77::3"
    NODE = "10.77.0.1"
    REMOTE = "10.78.0.2"


def create(role: str) -> Netns:
    ns = Netns(f"{PREFIX}{os.getpid()}-{role}")
    _ip("netns", "add", ns.name)
    ns.ip("link", "set", "lo", "up")
    return ns


def delete(ns: Netns) -> None:
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)


def sweep() -> None:
    """Delete ``cnnft-<pid>-*`` namespaces left behind by processes that are gone."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            delete(Netns(name))


def _wait_dad(ns: Netns, deadline: float) -> None:
    # IPv6 addresses are unusable while duplicate address detection runs.
    while time.monotonic() < deadline:
        out = ns.run("ip", "-6", "addr", "show", "tentative").stdout
        if "tentative" not in out:
            return
        time.sleep(0.05)


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    """Build the standard node/c1/c2/remote topology; always delete it afterwards."""
    sweep()
    made: list[Netns] = []
    try:
        for role in ("node", "c1", "c2", "remote"):
            made.append(create(role))
        node, c1, c2, remote = made
        for ns in made:
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
        node.sysctl("net.ipv4.ip_forward", "1")
        node.sysctl("net.ipv6.conf.all.forwarding", "1")
        node.ip("link", "add", "br0", "type", "bridge")
        node.ip("addr", "add", "10.77.0.1/24", "dev", "br0")
        node.ip("addr", "add", "fd77::1/64", "dev", "br0", "nodad")
        node.ip("link", "set", "br0", "up")
        for i, ns in ((2, c1), (3, c2)):
            veth = f"v-{ns.name.rsplit('-', 1)[1]}"
            node.ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
            node.ip("link", "set", veth, "master", "br0", "up")
            ns.ip("addr", "add", f"10.77.0.{i}/24", "dev", "eth0")
            ns.ip("addr", "add", f"fd77::{i}/64", "dev", "eth0", "nodad")
            ns.ip("link", "set", "eth0", "up")
            ns.ip("route", "add", "default", "via", "10.77.0.1")
            ns.ip("-6", "route", "add", "default", "via", "fd77::1")
        node.ip(
            "link", "add", "to-remote", "type", "veth", "peer", "name", "eth0", "netns", remote.name
        )
        node.ip("addr", "add", "10.78.0.1/30", "dev", "to-remote")
        node.ip("addr", "add", "fd78::1/64", "dev", "to-remote", "nodad")
        node.ip("link", "set", "to-remote", "up")
        remote.ip("addr", "add", "10.78.0.2/30", "dev", "eth0")
        remote.ip("addr", "add", "fd78::2/64", "dev", "eth0", "nodad")
        remote.ip("link", "set", "eth0", "up")
        remote.ip("route", "add", "10.77.0.0/24", "via", "10.78.0.1")
        remote.ip("-6", "route", "add", "fd77::/64", "via", "fd78::1")
        deadline = time.monotonic() + 5
        for ns in made:
            _wait_dad(ns, deadline)
        yield Topology(node, c1, c2, remote, made)
    finally:
        for ns in made:
            delete(ns)
