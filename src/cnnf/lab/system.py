"""Running commands for the lab: netns, links, processes, mounts (all the lab's I/O
on the host besides Podman itself)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cnnf.errors import CnnfError

NETNS_DIR = "/run/netns"
REQUIRED_TOOLS = {
    "podman": "podman",
    "runc": "runc",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "iptables": "iptables",
    "dnsmasq": "dnsmasq-base",
}
BUSYBOX = "/bin/busybox"
APT_HINT = "apt-get install podman runc busybox-static dnsmasq-base iproute2 iptables"


class LabError(CnnfError):
    """The lab could not do what was asked (with what to do about it)."""


def preflight() -> None:
    """Fail early, and clearly, without root or without the tools the lab uses."""
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (it creates network namespaces and runs Podman): "
            "run it as root, e.g. `sudo cnnf lab up shop`"
        )
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if not is_static_busybox():
        missing.append("busybox-static")
    if missing:
        raise LabError(
            f"the lab needs Debian packages that are missing: {', '.join(missing)}; "
            f"install them with `{APT_HINT}`"
        )


def is_static_busybox(path: str = BUSYBOX) -> bool:
    try:
        head = Path(path).read_bytes()[:16384]
    except OSError:
        return False
    # A dynamically linked ELF names its loader (PT_INTERP) near the start.
    return head.startswith(b"\x7fELF") and b"ld-linux" not in head and b"ld-musl" not in head


def run(
    cmd: list[str],
    *,
    netns: str | None = None,
    check: bool = True,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (inside lab namespace ``netns`` when given); raise LabError on failure."""
    if netns:
        cmd = ["nsenter", f"--net={NETNS_DIR}/{netns}", *cmd]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise LabError(f"`{cmd[0]}` is not installed ({APT_HINT})") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"`{' '.join(cmd)}` failed: {msg[-1] if msg else proc.returncode}")
    return proc


def netns_list() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return os.path.exists(f"{NETNS_DIR}/{name}")


def netns_pids(name: str) -> list[int]:
    proc = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def sysctl(netns: str, **values: str) -> None:
    for key, value in values.items():
        run(["sysctl", "-q", "-w", f"{key.replace('__', '.')}={value}"], netns=netns)


def _ancestors() -> set[int]:
    out = set()
    pid = os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def pids_with_cmdline(fragment: str) -> list[int]:
    """Processes whose command line contains ``fragment`` (never this process or its parents)."""
    mine = _ancestors()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if fragment.encode() in cmdline:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_all(
    pids: Iterable[int], grace: float = 3.0, clock: Callable[[], float] = time.monotonic
) -> int:
    """SIGTERM the processes, SIGKILL those still alive after ``grace`` seconds;
    returns how many needed SIGKILL. Those that are children of this process are
    reaped, however they ended (a child that exits between two polls is a
    zombie that ``alive`` no longer counts, so reaping only the pending ones
    would leave it behind)."""
    targets = {p for p in pids if p != os.getpid()}
    for p in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    pending = set(targets)
    deadline = clock() + grace
    while pending and clock() < deadline:
        reap(pending)
        pending = {p for p in pending if alive(p)}
        if pending:
            time.sleep(0.05)
    killed = len(pending)
    for p in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = clock() + grace  # SIGKILL is not instantaneous either
    while pending and clock() < deadline:
        pending = {p for p in pending if alive(p)}
        if pending:
            time.sleep(0.01)
    reap(targets)
    return killed


def reap(pids: Iterable[int]) -> None:
    """Collect those of ``pids`` that are exited children of this process (daemons
    ``up`` spawned when it ran in this process), so no zombie is left."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def mounts_under(*roots: str) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == r or point.startswith(r.rstrip("/") + "/") for r in roots):
            found.append(point)
    return sorted(set(found), key=len, reverse=True)


def unmount_under(*roots: str) -> int:
    points = mounts_under(*roots)
    for point in points:
        run(["umount", "-l", point], check=False)
    return len(points)


def remove_netns_file(path: str) -> None:
    """Remove a bound network namespace file (e.g. a container sandbox podman left)."""
    if os.path.exists(path):
        run(["umount", "-l", path], check=False)
        with contextlib.suppress(OSError):
            os.unlink(path)


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Poll ``predicate`` until it holds; LabError naming ``what`` after ``timeout`` s."""
    deadline = clock() + timeout
    while not predicate():
        if clock() >= deadline:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def socket_ready(path: str) -> bool:
    """Something accepts connections on unix socket ``path``."""
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def cgroup_mounts() -> list[str]:
    """Mount points of the cgroup hierarchies (v1 controllers and v2)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            points.append(fields[4])
    return sorted(set(points))
