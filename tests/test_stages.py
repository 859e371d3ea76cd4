"""``scripts/test.sh`` (``make test``'s stages), run with a stand-in for Python
whose "pytest" sleeps and says what it was asked: every stage runs once whatever
the others did, the summary and the exit status say which failed, a signal to
the script interrupts every running stage once (their pytest tears down) and
``CNNF_TEST_SERIAL=1`` runs the lab stage after the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "test.sh"

# The stand-in for .venv/bin/python: runs DEFAULT_INT's code (argument 2) as the
# script passes it, then a small Python program in place of the module asked for.
FAKE = r'''#!/bin/bash
code=$2; shift 2
case "$*" in
 *"lab or root"*) body="import time
try:
    time.sleep($LAB_SECONDS); print('===== 3 passed in 1.00s =====')
except KeyboardInterrupt:
    print('lab torn down'); raise SystemExit(2)";;
 *"not lab and not root and not postgres"*) body="import time
try:
    time.sleep($PURE_SECONDS); print('==== 1 failed, 2 passed in 1.00s ====')
    raise SystemExit($PURE_EXIT)
except KeyboardInterrupt:
    print('pure torn down'); raise SystemExit(2)";;
 *ruff*) body="print('All checks passed!')";;
 *mypy*) body="print('Success: no issues found in 1 source file')";;
 *) body="print('=== 5 passed in 0.50s ===')";;
esac
exec python3 -c "$code" -c "$body"
'''


def start(tmp_path: Path, serial: bool = False, lab: float = 2, pure: float = 1,
          pure_exit: int = 1) -> tuple[subprocess.Popen[str], Path]:
    fake = tmp_path / "python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    logs = tmp_path / "stages"
    env = {**os.environ, "PY": str(fake), "CNNF_TEST_LOGS": str(logs),
           "CNNF_TEST_SERIAL": "1" if serial else "0", "LAB_SECONDS": str(lab),
           "PURE_SECONDS": str(pure), "PURE_EXIT": str(pure_exit)}
    # SIGINT at its default, as from a terminal (this process may ignore it: an
    # xdist worker, a job in a shell's background).
    default_int = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", default_int, str(SCRIPT)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, logs


def summary(out: str) -> dict[str, list[str]]:
    lines = out[out.index("\nstage ") + 1:].splitlines()[1:6]
    return {ln.split()[0]: ln.split() for ln in lines}


def test_every_stage_runs_and_a_failed_one_fails_the_whole(tmp_path: Path) -> None:
    proc, logs = start(tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    table = summary(out)
    assert [table[s][1] for s in ("lint", "types", "pure", "services", "lab")] == [
        "passed", "passed", "FAILED", "passed", "passed"], out
    assert table["pure"][4:] == ["1", "failed,", "2", "passed", "in", "1.00s"]
    assert table["lint"][4:] == ["All", "checks", "passed!"]
    assert table["lab"][2] == "0"  # started first, beside the others
    for stage in ("lint", "types", "pure", "services", "lab"):
        assert out.count(f"===== stage {stage} started") == 1
        assert out.count(f"===== end of stage {stage}") == 1
    assert "pure torn down" not in out
    assert not list(logs.glob("*.running"))


def test_serial_runs_the_lab_stage_after_the_others(tmp_path: Path) -> None:
    proc, _ = start(tmp_path, serial=True, pure_exit=0)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    table = summary(out)
    services_end = int(table["services"][2]) + int(table["services"][3])
    assert int(table["lab"][2]) >= services_end, out
    assert "(serial)" in out


def interrupted(tmp_path: Path, sig: signal.Signals) -> tuple[int, str, Path]:
    proc, logs = start(tmp_path, lab=60, pure=60)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while not (logs / "pure.running").exists():  # the lab and pure stages both running
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(1)  # their Python is past its start-up
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=50)  # well before the stages' 60 s
    return proc.returncode, out, logs


def test_sigterm_to_the_script_interrupts_every_running_stage_once(tmp_path: Path) -> None:
    code, out, logs = interrupted(tmp_path, signal.SIGTERM)
    assert code == 143, out
    assert (logs / "lab.log").read_text() == "lab torn down\n"
    assert (logs / "pure.log").read_text() == "pure torn down\n"
    assert not (logs / "services.log").exists()  # nothing starts after the signal


def test_sigint_to_the_script_alone_interrupts_every_running_stage_once(
        tmp_path: Path) -> None:
    code, out, logs = interrupted(tmp_path, signal.SIGINT)
    assert code == 130, out
    assert (logs / "lab.log").read_text() == "lab torn down\n"
    assert (logs / "pure.log").read_text() == "pure torn down\n"


def test_make_serial_takes_only_a_yes() -> None:
    def serial(*args: str) -> str:
        out = subprocess.run(["make", "-n", "-o", "deps", "test", *args], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        return next(w for w in out.split() if w.startswith("CNNF_TEST_SERIAL="))

    assert serial() == "CNNF_TEST_SERIAL=0"
    assert serial("SERIAL=0") == "CNNF_TEST_SERIAL=0"
    assert serial("SERIAL=1") == "CNNF_TEST_SERIAL=1"
    assert serial("SERIAL=yes") == "CNNF_TEST_SERIAL=1"


def test_sighup_to_the_script_interrupts_every_running_stage_once(tmp_path: Path) -> None:
    code, out, logs = interrupted(tmp_path, signal.SIGHUP)
    assert code == 129, out
    assert (logs / "lab.log").read_text() == "lab torn down\n"
    assert (logs / "pure.log").read_text() == "pure torn down\n"


def test_a_second_run_beside_a_running_one_is_refused_and_touches_nothing(
        tmp_path: Path) -> None:
    first, logs = start(tmp_path, lab=60, pure=60)
    try:
        deadline = time.monotonic() + 60
        while not (logs / "pure.running").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second, _ = start(tmp_path)
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 1
        assert out.startswith(f"test.sh: another run of the stages holds {logs}.lock:"), out
        assert (logs / "pure.running").exists() and first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=50)
