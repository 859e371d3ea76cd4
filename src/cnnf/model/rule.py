"""Rules: source object, destination object, ports, effect."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

MIN_PORT = 1
MAX_PORT = 65535
MAX_RULE_ID = 2**31 - 1  # stores keep rule ids in 32-bit columns


def _json_integer(value: Any) -> Any:
    # JSON's integers, as a schema's "integer" admits them: 3 and 3.0, not true or
    # "3" (pydantic's lax mode would take both).
    if isinstance(value, bool | str | bytes):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


_RFC3339_TEXT = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: Any) -> Any:
    # What the schema's date-time says, no more: a number, or a time without its
    # offset (read as what zone?), is refused, not guessed.
    if value is None or (isinstance(value, datetime) and value.tzinfo is not None):
        return value
    if not isinstance(value, str) or not _RFC3339_TEXT.match(value):
        raise PydanticCustomError(
            "rfc3339", "must be a date-time with its offset (RFC 3339, like "
                       "2026-05-01T12:00:00Z; in a URL, write + as %2B)")
    return value


#: For a date-time field or parameter of a request: RFC 3339, offset included.
RFC3339 = BeforeValidator(_rfc3339)

#: For an integer field of a request: 3 or 3.0; not true, not "3". Put it after the
#: field's constraints (``Annotated[int, Field(ge=1), JSON_INTEGER]``), so that the
#: schema keeps them as ``minimum`` and ``maximum``.
JSON_INTEGER = BeforeValidator(_json_integer)


class Effect(StrEnum):
    """What a rule does to a matching connection."""

    ALLOW = "allow"
    ALERT = "alert"  # allow, and raise an audit
    PREVENT = "prevent"  # block, and raise an audit

    @property
    def blocks(self) -> bool:
        return self is Effect.PREVENT

    @property
    def audits(self) -> bool:
        return self is not Effect.ALLOW


class RuleKind(StrEnum):
    """Which rule list a rule lives in; decided by the kind of its source."""

    CONTAINER = "container"
    HOST = "host"


class PolicyModel(BaseModel):
    """Base of all policy types: frozen, camelCase in documents, no unknown fields."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class PortRange(PolicyModel):
    """An inclusive range of TCP ports; a single port has start == end."""

    start: Annotated[int, Field(ge=MIN_PORT, le=MAX_PORT), JSON_INTEGER]
    end: Annotated[int, Field(ge=MIN_PORT, le=MAX_PORT), JSON_INTEGER]

    @model_validator(mode="before")
    @classmethod
    def _from_scalar(cls, data: Any) -> Any:
        # Documents write ports as 80, "80" or "8000-8080"; "*" is handled by Rule.
        if isinstance(data, bool | float):  # not 1 or 443: say so, not "not a mapping"
            raise ValueError(f"{str(data).lower()} is not a port")
        if isinstance(data, int):
            return {"start": data, "end": data}
        if isinstance(data, str):
            text = data.strip()
            lo, sep, hi = text.partition("-")
            try:
                start = int(lo)
                end = int(hi) if sep else start
            except ValueError:
                raise ValueError(
                    f"{data!r} is not a port, a range like 8000-8080, or *"
                ) from None
            return {"start": start, "end": end}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.start > self.end:
            raise ValueError(f"range start {self.start} is above end {self.end}")
        return self

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.start <= port <= self.end

    def covers(self, other: PortRange) -> bool:
        return self.start <= other.start and other.end <= self.end

    @property
    def is_any(self) -> bool:
        return self.start == MIN_PORT and self.end == MAX_PORT

    def __str__(self) -> str:
        if self.is_any:
            return "*"
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"


ANY_PORT = PortRange(start=MIN_PORT, end=MAX_PORT)


class Rule(PolicyModel):
    """One ordered rule. ``src`` and ``dst`` name network objects of the policy."""

    id: Annotated[int, Field(ge=1, le=MAX_RULE_ID), JSON_INTEGER]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    src: Annotated[str, Field(min_length=1)]
    dst: Annotated[str, Field(min_length=1)]
    ports: Annotated[tuple[PortRange, ...], Field(json_schema_extra={"minItems": 1})] = (ANY_PORT,)
    effect: Effect = Effect.ALLOW
    disabled: StrictBool = False
    # Staged: evaluated as if in force, its verdicts reported as "would"
    # verdicts, never enforced (see Verdict.would); promoting it clears the flag.
    staged: StrictBool = False
    notes: str = ""
    owner: str = ""
    modified: datetime | None = None

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        if value == "*":
            return (ANY_PORT,)
        if isinstance(value, (int, str)):
            value = [value]
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("a rule needs at least one port, a range, or *")
            return tuple(ANY_PORT if p == "*" else p for p in value)
        return value

    @field_serializer("ports")
    def _ser_ports(self, ports: tuple[PortRange, ...]) -> list[int | str]:
        return [p.start if p.start == p.end else str(p) for p in ports]

    def matches_port(self, port: int) -> bool:
        return any(r.start <= port <= r.end for r in self.ports)
