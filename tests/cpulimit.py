"""Starve processes of CPU for a while, for real: a CPU cgroup with a quota.

Root tests use it to make the Defender's verdict workers short of CPU on
purpose (instead of counting on the shared machine being loaded). cgroup v2
(``cpu.max``) where the unified hierarchy has the cpu controller, else the v1
cpu controller (``cpu.cfs_quota_us``). The group is named ``cnnft-<pid>-cpu``;
on exit every process still alive goes back to the group it came from and the
group is removed: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 50_000  # short enough that a starved process still runs often (quota >= 1 ms)


def _v2_has_cpu() -> bool:
    controllers = V2 / "cgroup.controllers"
    return controllers.exists() and "cpu" in controllers.read_text().split()


def _home(pid: int, v2: bool) -> Path:
    """The cgroup directory ``pid`` is in now, in the hierarchy used."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (v2 and controllers == "") or (not v2 and "cpu" in controllers.split(",")):
            return (V2 if v2 else V1) / path.lstrip("/")
    raise RuntimeError(f"process {pid}: no {'v2' if v2 else 'v1 cpu'} cgroup")


@contextlib.contextmanager
def cpu_quota(pids: list[int], share: float) -> Iterator[Path]:
    """Run ``pids`` (whole processes) under a quota of ``share`` of one CPU."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], not {share}")
    v2 = _v2_has_cpu()
    root = V2 if v2 else V1
    group = root / f"cnnft-{os.getpid()}-cpu"
    quota = max(1000, int(PERIOD_US * share))
    homes = {pid: _home(pid, v2) for pid in pids}
    group.mkdir()
    try:
        if v2:
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        for pid in pids:
            (group / "cgroup.procs").write_text(str(pid))
        yield group
    finally:
        for pid, home in homes.items():
            with contextlib.suppress(ProcessLookupError, OSError):
                (home / "cgroup.procs").write_text(str(pid))
        for pid in (group / "cgroup.procs").read_text().split():  # children it forked
            with contextlib.suppress(ProcessLookupError, OSError):
                (root / "cgroup.procs").write_text(pid)
        group.rmdir()


def throttled_us(group: Path) -> int:
    """Microseconds the group's processes were held back by the quota so far."""
    for line in (group / "cpu.stat").read_text().splitlines():
        key, value = line.split()
        if key == "throttled_usec":
            return int(value)
        if key == "throttled_time":  # v1: nanoseconds
            return int(value) // 1000
    return 0
