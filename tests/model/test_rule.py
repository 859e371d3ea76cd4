import pytest
from pydantic import ValidationError

from cnnf.model import ANY_PORT, Effect, PortRange, Rule


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        (80, [(80, 80)]),
        ("*", [(1, 65535)]),
        ([22, "8000-8080"], [(22, 22), (8000, 8080)]),
        (["*"], [(1, 65535)]),
    ],
)
def test_ports_forms(ports: object, expected: list[tuple[int, int]]) -> None:
    rule = Rule(id=1, name="r", src="a", dst="b", ports=ports)
    assert [(p.start, p.end) for p in rule.ports] == expected


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        (0, "greater than or equal to 1"),
        (70000, "less than or equal to 65535"),
        ("90-80", "range start 90 is above end 80"),
        ("http", "is not a port"),
        ([], "at least one port"),
        ([1.5], "1.5 is not a port"),
        ([True], "true is not a port"),
    ],
)
def test_bad_ports(ports: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Rule(id=1, name="r", src="a", dst="b", ports=ports)


def test_port_serialisation_round_trip() -> None:
    rule = Rule(id=3, name="r", src="a", dst="b", ports=[443, "1000-2000", "*"],
                effect=Effect.PREVENT)
    doc = rule.model_dump(mode="json")
    assert doc["ports"] == [443, "1000-2000", "*"]
    assert Rule.model_validate(doc) == rule
    assert ANY_PORT.is_any and str(PortRange(start=5, end=5)) == "5"
