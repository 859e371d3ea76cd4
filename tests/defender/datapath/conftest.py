"""Fixtures for the datapath tests: a throw-away namespace topology (tests/netns.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import netns  # tests/netns.py


@pytest.fixture(scope="module")
def topo() -> Iterator[netns.Topology]:
    if os.geteuid() != 0:
        pytest.fail("the datapath tests need root (network namespaces, iptables)")
    with netns.topology() as t:
        yield t
