""""Datapath up" for real: a managed ``cnnf defender run`` on a lab host reports
its own check of its kernel state to a real Console (its own process and
SQLite store), which lists it on ``GET /api/v1/defenders`` (root, the lab
``cnnfdpup``).

What is proved: a started Defender reports its datapath up; its FORWARD jump
deleted (repairs held off) makes it report down, naming the missing rule;
the rule put back, up again; its verdict worker killed, down again, naming the
worker and its unbound queue. The answer follows the kernel, not a constant.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.defender.lab.test_defender_lab import (
    Cluster,
    Defender,
    console_process,
    policy,
    poll,
    running_cluster,
)

pytestmark = pytest.mark.lab

LAB = "cnnfdpup"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(LAB, tmp_path_factory.mktemp("datapath"))


def test_datapath_up_follows_the_kernel_state_to_the_console(
        cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    for d in c.defenders:
        if d.proc is not None:
            d.stop()
    with console_process(tmp_path) as (url, token, http):
        d = Defender(c.lab, "node-1", tmp_path, c.policy_file, c.cluster_file,
                     console=(url, token))

        def listed() -> dict[str, Any]:
            (one,) = http.get("/api/v1/defenders").json()
            return one  # type: ignore[no-any-return]

        try:
            r = http.post("/api/v1/policy/import", json=policy(0))
            assert r.status_code == 200, r.text
            # no repair for an hour: what breaks stays broken until the test mends it
            d.start("--repair-interval", "3600")
            assert poll(lambda: listed()["datapathUp"] is True, 20), listed()
            assert listed()["datapathProblems"] == []
            assert (d.status() or {})["datapath"] == {"up": True, "problems": []}

            rules, _ = d.kernel_state()
            jump = next(ln for ln in rules.splitlines() if ln.startswith("-A FORWARD"))
            subprocess.run(["nsenter", f"--net={d.netns}", "iptables", "-D",
                            *shlex.split(jump)[1:]], check=True)
            assert poll(lambda: listed()["datapathUp"] is False, 15), listed()
            problems = listed()["datapathProblems"]
            assert problems == [f"ipv4 missing: {jump}"], problems
            assert listed()["status"] == "connected"

            subprocess.run(["nsenter", f"--net={d.netns}", "iptables", "-I", "FORWARD", "1",
                            *shlex.split(jump)[2:]], check=True)
            assert poll(lambda: listed()["datapathUp"] is True, 15), listed()

            (worker,) = (d.status() or {})["worker_pids"]
            queue = (d.status() or {})["queues"][0]
            os.kill(worker, signal.SIGKILL)
            assert poll(lambda: listed()["datapathUp"] is False, 15), listed()
            assert sorted(listed()["datapathProblems"]) == sorted([
                f"queue {queue} not bound", f"verdict worker for queue {queue} not running"])
        finally:
            if d.proc is not None:
                d.stop()
    assert d.kernel_state() == ("", "")
