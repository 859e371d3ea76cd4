"""Traffic and connect arguments are checked before anything runs (no root needed)."""

from __future__ import annotations

import math

import pytest

from cnnf.lab import Lab, LabError, Traffic, load_topology
from cnnf.lab.plan import make_plan


def _paper_lab() -> Lab:
    """The shop lab as ``Lab.open`` would see it, without starting anything."""
    topology = load_topology("shop")
    return Lab("shop", topology, make_plan(topology, "shop", 0), {"containers": {}, "pids": {}})


@pytest.mark.parametrize(
    ("duration", "every", "message"),
    [
        (3.0, 0.0, "bad report interval 0.0"),
        (3.0, -1.0, "bad report interval -1.0"),
        (None, math.nan, "bad report interval nan"),
        (0.0, 1.0, "bad duration 0.0"),
        (-1.0, 1.0, "bad duration -1.0"),
    ],
)
def test_run_refuses_bad_durations_and_intervals(
    duration: float | None, every: float, message: str
) -> None:
    traffic = Traffic(_paper_lab())
    with pytest.raises(LabError, match=message):
        traffic.run(duration, every=every)
    assert traffic.counts == {p.label: {} for p in traffic.patterns}


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan])
def test_bad_timeouts_are_refused(timeout: float) -> None:
    lab = _paper_lab()
    with pytest.raises(LabError, match="bad timeout"):
        Traffic(lab, timeout=timeout)
    with pytest.raises(LabError, match="bad timeout"):
        lab.connect("frontend", "api", 8080, timeout=timeout)


def test_connect_refuses_a_bad_port() -> None:
    with pytest.raises(LabError, match="bad port 70000: must be 1-65535"):
        _paper_lab().connect("frontend", "api", 70000)
