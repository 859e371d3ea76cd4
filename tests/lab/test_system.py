"""The lab's process helpers, on real child processes (no root needed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cnnf.lab import system

IGNORES_TERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def _spawn(*argv: str) -> int:
    return os.posix_spawn(argv[0], list(argv), dict(os.environ))


def _reaped(pid: int) -> bool:
    """True when ``pid`` is no longer a child of this process (it was waited for)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_kill_all_reaps_every_child_it_stops() -> None:
    # Rounds of children that exit at once on SIGTERM: some exit between two
    # polls of kill_all, which must still reap them (no zombie left behind).
    pids = []
    for _ in range(20):
        batch = [_spawn("/bin/sleep", "60") for _ in range(5)]
        pids += batch
        assert system.kill_all(batch, grace=3.0) == 0
    assert [p for p in pids if not _reaped(p)] == []
    assert not any(system.alive(p) for p in pids)


def test_kill_all_sigkills_what_ignores_sigterm(tmp_path: Path) -> None:
    out = str(tmp_path / "ready")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        stubborn = os.posix_spawn(
            sys.executable, [sys.executable, "-c", IGNORES_TERM], dict(os.environ),
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1)],
        )  # fmt: skip
    finally:
        os.close(fd)
    system.wait_for(lambda: os.path.getsize(out) > 0, 30, "the child to ignore SIGTERM")
    polite = _spawn("/bin/sleep", "60")
    assert system.kill_all([stubborn, polite], grace=0.3) == 1
    assert _reaped(stubborn) and _reaped(polite)
