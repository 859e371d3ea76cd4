"""The report records' wire form: audit types (container, host, overload), the
overload audit a Defender builds with one call, and round trips through JSON."""

from __future__ import annotations

import json

import pytest

from cnnf.model import Effect
from cnnf.model.records import (
    AuditEvent,
    AuditType,
    EndpointInfo,
    ReportBatch,
    overload_audit,
    overload_message,
    spoof_audit,
)
from cnnf.model.rule import RuleKind

FRONTEND = EndpointInfo(kind="container", address="10.66.1.2", image="shop/frontend:1.0",
                        container="frontend", namespace="shop", host="node-1",
                        labels={"app": "frontend"})
T0 = 1_767_322_800.0


def test_audit_types_serialise_as_their_names() -> None:
    assert [t.value for t in AuditType] == ["container", "host", "overload"]
    assert [AuditType.of(k) for k in RuleKind] == [AuditType.CONTAINER, AuditType.HOST]


@pytest.mark.parametrize("kind", [RuleKind.CONTAINER, RuleKind.HOST, "container", "host"])
def test_rule_audits_keep_their_wire_form(kind: RuleKind | str) -> None:
    # What a Defender sent before overload existed reads and writes the same.
    event = AuditEvent.model_validate({
        "time": T0, "type": kind, "effect": Effect.ALERT, "blocked": False, "rule_id": 4,
        "rule_name": "r", "src": FRONTEND,
        "dst": EndpointInfo(kind="address", address="192.0.2.1"), "port": 443,
        "message": "alerted on connection"})
    assert type(event.type) is AuditType and event.type.value == str(kind)
    wire = json.loads(event.model_dump_json())
    assert wire["type"] == str(kind)
    assert AuditEvent.model_validate_json(event.model_dump_json()) == event
    # Folding keys are unchanged: a RuleKind and its AuditType are one key.
    assert event.key()[0] == RuleKind(str(kind))
    assert hash(event.key()[0]) == hash(RuleKind(str(kind)))


def test_overload_audit_is_exactly_the_wire_contract() -> None:
    event = overload_audit(T0, FRONTEND, host="node-1", dropped=52_311, seconds=20.0,
                           rate=1000, reporter="node-1")
    assert json.loads(event.model_dump_json()) == {
        "time": T0, "type": "overload", "effect": "prevent", "blocked": True,
        "rule_id": None, "rule_name": "admission limit", "src": FRONTEND.model_dump(mode="json"),
        "dst": {"kind": "host", "address": None, "image": "", "container": "",
                "container_id": "", "namespace": "", "pod": "", "cluster": "",
                "host": "node-1", "labels": {}, "domain": ""},
        "port": 0, "dst_subnet": "", "dst_domain": "",
        "message": "overload: the admission limit (1000 new connections/s per source) "
                   "dropped 52,311 SYNs from shop/frontend:1.0 (frontend) in 20 s",
        "count": 52_311, "revision": 0, "reporter": "node-1",
    }
    assert event.effect is Effect.PREVENT and event.type is AuditType.OVERLOAD
    batch = ReportBatch(batch_id="b-1", audits=[event])
    assert ReportBatch.model_validate_json(batch.model_dump_json()) == batch


@pytest.mark.parametrize(
    ("src", "dropped", "seconds", "rate", "message"),
    [
        (FRONTEND, 1, 20.0, 1000,
         "overload: the admission limit (1000 new connections/s per source) dropped 1 SYN "
         "from shop/frontend:1.0 (frontend) in 20 s"),
        (EndpointInfo(kind="container", address="10.66.1.9", image="shop/worker:1.0"),
         1_234_567, 2.5, 200,
         "overload: the admission limit (200 new connections/s per source) dropped "
         "1,234,567 SYNs from shop/worker:1.0 (10.66.1.9) in 2.5 s"),
        (EndpointInfo(kind="host", address="192.168.0.7", host="node-2"), 5000, 19.96, 1000,
         "overload: the admission limit (1000 new connections/s per source) dropped "
         "5,000 SYNs from host node-2 in 20 s"),
        (EndpointInfo(kind="address", address="203.0.113.9"), 999, 10.0, 50,
         "overload: the admission limit (50 new connections/s per source) dropped "
         "999 SYNs from 203.0.113.9 in 10 s"),
    ],
)
def test_overload_message_names_the_source(src: EndpointInfo, dropped: int, seconds: float,
                                           rate: int, message: str) -> None:
    assert overload_message(src, dropped, seconds, rate) == message
    event = overload_audit(T0, src, host="node-1", dropped=dropped, seconds=seconds, rate=rate,
                           reporter="node-1")
    assert (event.message, event.count, event.src, event.port) == (message, dropped, src, 0)


@pytest.mark.parametrize(
    ("dropped", "seconds", "rate", "message"),
    [
        (0, 20.0, 1000, "dropped: 0 is not a positive count"),
        (10, 0.0, 1000, "seconds: 0.0 is not a positive window"),
        (10, float("nan"), 1000, "seconds: nan is not a positive window"),
        (10, 20.0, 0, "rate: 0 is not a positive rate"),
    ],
)
def test_overload_audit_refuses_nonsense(dropped: int, seconds: float, rate: int,
                                         message: str) -> None:
    with pytest.raises(ValueError, match=message):
        overload_audit(T0, FRONTEND, host="node-1", dropped=dropped, seconds=seconds,
                       rate=rate, reporter="node-1")


@pytest.mark.parametrize(
    ("dropped", "shed", "rate", "tightened", "message"),
    [
        (40, 40, 1000, 0, "overload: the verdict loop (it could not keep up with the source) "
         "dropped 40 SYNs from shop/frontend:1.0 (frontend) in 20 s"),
        (40, 40, 0, 0, "overload: the verdict loop (it could not keep up with the source) "
         "dropped 40 SYNs from shop/frontend:1.0 (frontend) in 20 s"),
        (5040, 40, 1000, 0, "overload: 5,040 SYNs dropped from shop/frontend:1.0 (frontend) "
         "in 20 s: 5,000 by the admission limit (1000 new connections/s per source), 40 by "
         "the verdict loop (it could not keep up with the source)"),
        (5040, 40, 1000, 100, "overload: 5,040 SYNs dropped from shop/frontend:1.0 (frontend) "
         "in 20 s: 5,000 by the admission limit (tightened to 100 new connections/s for this "
         "source during this window: the verdict loop could not keep up with it), 40 by the "
         "verdict loop (it "
         "could not keep up with the source)"),
    ],
)
def test_overload_message_says_who_dropped_what(dropped: int, shed: int, rate: int,
                                                tightened: int, message: str) -> None:
    event = overload_audit(T0, FRONTEND, host="node-1", dropped=dropped, seconds=20.0,
                           rate=rate, reporter="node-1", shed=shed, tightened=tightened)
    assert (event.message, event.count) == (message, dropped)


@pytest.mark.parametrize(
    ("dropped", "shed", "rate", "message"),
    [
        (10, 11, 1000, r"shed: 11 is not a count of SYNs within dropped \(10\)"),
        (10, -1, 1000, "shed: -1 is not a count"),
        (10, 5, 0, "rate: 0 is not a positive rate"),  # the limit is off: it dropped none
    ],
)
def test_overload_audit_refuses_a_shed_count_that_cannot_be(dropped: int, shed: int,
                                                            rate: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        overload_audit(T0, FRONTEND, host="node-1", dropped=dropped, seconds=20.0,
                       rate=rate, reporter="node-1", shed=shed)


def test_overload_audits_of_two_sources_do_not_fold_into_one() -> None:
    a = overload_audit(T0, FRONTEND, host="node-1", dropped=10, seconds=20, rate=1000,
                       reporter="node-1")
    other = FRONTEND.model_copy(update={"image": "shop/worker:1.0", "address": "10.66.1.3"})
    b = overload_audit(T0, other, host="node-1", dropped=10, seconds=20, rate=1000,
                       reporter="node-1")
    assert a.key() != b.key()
    assert a.key() == overload_audit(T0 + 20, FRONTEND, host="node-1", dropped=99, seconds=20,
                                     rate=1000, reporter="node-1").key()


@pytest.mark.parametrize(
    ("shed", "tightened", "dropper"),
    [(0, 0, "admission limit"), (0, 100, "admission limit (tightened)"),
     (40, 0, "admission limit and verdict loop"), (100, 0, "verdict loop"),
     (40, 100, "admission limit (tightened) and verdict loop")],
)
def test_an_overload_audit_names_what_dropped_its_syns(shed: int, tightened: int,
                                                       dropper: str) -> None:
    event = overload_audit(T0, FRONTEND, host="node-1", dropped=100, seconds=1.0, rate=1000,
                           reporter="node-1", shed=shed, tightened=tightened)
    assert event.rule_name == dropper


def test_a_spoof_audit_says_anti_spoofing_dropped_forged_packets() -> None:
    event = spoof_audit(T0, FRONTEND, host="node-1", dropped=4411, seconds=10.0,
                        interface="veth3", reporter="node-1")
    assert (event.type, event.rule_name, event.port, event.count, event.blocked) == (
        "overload", "anti-spoofing", 0, 4411, True)
    assert event.message == ("overload: anti-spoofing dropped 4,411 packets with a forged "
                             "source address from shop/frontend:1.0 (frontend) (its port "
                             "veth3) in 10 s")
    with pytest.raises(ValueError, match="dropped: 0"):
        spoof_audit(T0, FRONTEND, host="node-1", dropped=0, seconds=10.0, interface="veth3",
                    reporter="node-1")
