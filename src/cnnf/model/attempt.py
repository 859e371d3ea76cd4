"""A connection attempt (the engine's input) and a verdict (its output)."""

from __future__ import annotations

from dataclasses import dataclass

from cnnf.model.identity import ContainerIdentity, HostIdentity
from cnnf.model.rule import Effect, RuleKind


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of a connection: a container, a host, or just an address.

    ``domains`` are the DNS names known to resolve to ``address`` (from DNS
    answers the Defender watched); DNS objects match against them.
    """

    address: str | None = None
    container: ContainerIdentity | None = None
    host: HostIdentity | None = None
    domains: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        if self.container is not None:
            return "container"
        if self.host is not None:
            return "host"
        return "address"


@dataclass(frozen=True, slots=True)
class ConnectionAttempt:
    """A new TCP connection from ``src`` to ``dst`` on destination ``port``."""

    src: Endpoint
    dst: Endpoint
    port: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision on one attempt, and what produced it.

    ``rule_id`` is None when no rule matched (``matched`` False): the effect is
    then the policy's default effect, and the flow shows as a hole (grey).
    """

    effect: Effect
    revision: int
    matched: bool
    rule_id: int | None = None
    rule_name: str | None = None
    rule_kind: RuleKind | None = None
    # What the policy with everything staged in force (staged rules, the staged
    # default effect) decides, when that differs from this verdict: reported as
    # a "would" verdict, never enforced. None when nothing staged changes it.
    would: Verdict | None = None

    @property
    def blocked(self) -> bool:
        return self.effect.blocks

    def differs(self, other: Verdict) -> bool:
        """Whether ``other`` decides otherwise: another effect or another rule."""
        return self.effect is not other.effect or self.rule_id != other.rule_id
