"""``cnnf defender status`` on a status file: the overload lines say who dropped
what (the admission limit, the verdict loop, a tightened limit)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cnnf.cli import app

BASE: dict[str, Any] = {
    "pid": os.getpid(), "hostname": "node-1", "updated": 0, "netns": "",
    "mode": {"container": True, "host": False}, "policy_revision": 3, "block_mode": "reset",
    "fail_open": False, "protected": [], "counters": {
        "accepted": 10, "audited": 0, "rejected": 0, "dropped": 0, "errors": 0,
        "reports_lost": 0, "shed": 12},
    "start_to_protected_ms": {"count": 0, "last": None, "max": None}, "console": None,
}


@pytest.mark.parametrize(
    ("admission", "line"),
    [
        ({"rate": 0, "dropped": 12, "by_verdict_loop": 12, "overload": True, "top": [],
          "tightened": [], "tightened_rate": 0},
         "admission: off (--admission-rate 0); 12 SYNs dropped as overload (12 of them by the "
         "verdict loop: it could not keep up with their source) (overloaded now)"),
        ({"rate": 1000, "dropped": 5012, "by_verdict_loop": 12, "overload": True,
          "top": [{"address": "10.64.1.2", "name": "frontend", "dropped": 5012}],
          "tightened": ["10.64.1.2"], "tightened_rate": 100},
         "admission: 1000 new connections/s per source; 5012 SYNs dropped as overload (12 of "
         "them by the verdict loop: it could not keep up with their source) (overloaded now); "
         "tightened to 100/s now for: 10.64.1.2; top sources: frontend (10.64.1.2) 5012"),
        ({"rate": 1000, "dropped": 0, "by_verdict_loop": 0, "overload": False, "top": [],
          "tightened": [], "tightened_rate": 100},
         "admission: 1000 new connections/s per source; 0 SYNs dropped as overload"),
        # a waiting-room line outside this host has no name: said once
        ({"rate": 1000, "dropped": 500, "by_verdict_loop": 500, "overload": True,
          "top": [{"address": "203.0.113.0/24", "name": "", "dropped": 500}],
          "tightened": [], "tightened_rate": 100},
         "admission: 1000 new connections/s per source; 500 SYNs dropped as overload (500 of "
         "them by the verdict loop: it could not keep up with their source) (overloaded now); "
         "top sources: 203.0.113.0/24 500"),
    ],
)
def test_status_says_who_dropped_what(tmp_path: Path, admission: dict[str, Any],
                                      line: str) -> None:
    (tmp_path / "status.json").write_text(json.dumps({**BASE, "admission": admission}))
    result = CliRunner().invoke(app, ["defender", "status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert line in lines, result.output
    assert ("verdicts: accepted 10, audited 0, rejected 0, dropped 0, errors 0, "
            "reports_lost 0, dropped undecided (overload) 12") in lines


@pytest.mark.parametrize(
    ("spoof", "line"),
    [
        ({"ports": 3, "dropped": 0, "unbound": []},
         "anti-spoofing: 3 container port(s) bound to their addresses; 0 packets with a "
         "forged source address dropped"),
        ({"ports": 1, "dropped": 4411, "unbound": ["db"]},
         "anti-spoofing: 1 container port(s) bound to their addresses; 4411 packets with a "
         "forged source address dropped; NOT checked (no port found): db"),
    ],
)
def test_status_says_what_anti_spoofing_dropped(tmp_path: Path, spoof: dict[str, Any],
                                                line: str) -> None:
    (tmp_path / "status.json").write_text(json.dumps({**BASE, "anti_spoofing": spoof}))
    result = CliRunner().invoke(app, ["defender", "status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert line in result.output.splitlines(), result.output
