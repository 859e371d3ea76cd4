"""The report spool: order, bounds (oldest dropped and counted), restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnf.defender.spool import Spool
from cnnf.model import Effect
from cnnf.model.records import EndpointInfo, FlowRecord, ReportBatch


def flow(port: int) -> FlowRecord:
    ep = EndpointInfo(kind="address", address="10.0.0.1")
    return FlowRecord(src=ep, dst=ep, port=port, effect=Effect.ALLOW, matched=False,
                      first_seen=1.0, last_seen=1.0)


def batch(n: int, flows: int = 1) -> ReportBatch:
    return ReportBatch(batch_id=f"b{n}", flows=[flow(p) for p in range(1, flows + 1)])


def ids(spool: Spool) -> list[str]:
    out = []
    for item in spool.pending():
        b = spool.load(item)
        assert b is not None
        out.append(b.batch_id)
    return out


def test_batches_come_back_in_order_and_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(5):
        spool.put(batch(i))
    assert ids(spool) == ["b0", "b1", "b2", "b3", "b4"]
    spool.remove(spool.pending()[0])
    again = Spool(tmp_path)  # a restarted Defender
    again.put(batch(9))
    assert ids(again) == ["b1", "b2", "b3", "b4", "b9"]


@pytest.mark.parametrize(
    ("bounds", "puts", "kept", "dropped"),
    [
        ((3, 10**9), 5, ["b2", "b3", "b4"], 2 * 2),  # count bound: two oldest go, 2 flows each
        ((100, 1), 3, [], 3 * 2),  # byte bound smaller than any batch: nothing kept
        ((10, 10**9), 4, ["b0", "b1", "b2", "b3"], 0),
    ],
)
def test_bounds_drop_the_oldest_and_count_their_records(
    tmp_path: Path, bounds: tuple[int, int], puts: int, kept: list[str], dropped: int
) -> None:
    spool = Spool(tmp_path, max_files=bounds[0], max_bytes=bounds[1])
    for i in range(puts):
        spool.put(batch(i, flows=2))
    assert ids(spool) == kept
    assert spool.take_dropped() == dropped
    assert spool.take_dropped() == 0  # reported once


def test_dropped_count_survives_a_restart_and_includes_dropped_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_files=1)
    spool.put(batch(0, flows=3))
    spool.put(ReportBatch(batch_id="b1", flows=[flow(1)], dropped=7))
    spool.put(batch(2, flows=1))  # drops b0 (3) then b1 (1 + its 7)
    assert Spool(tmp_path, max_files=1).take_dropped() == 3 + 1 + 7


def test_unreadable_file_is_removed_not_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put(batch(0))
    item = spool.pending()[0]
    item.path.write_text("{not json")
    assert spool.load(item) is None
    assert spool.pending() == []


def test_bad_bounds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        Spool(tmp_path, max_files=0)
