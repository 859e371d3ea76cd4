"""What a Defender reports: flow records (every evaluated or observed connection,
aggregated) and audit events (every alerted or blocked connection, and every
source whose SYNs the kernel's per-source admission limit dropped: overload).

These cross the wire from Defender to Console and go to JSON lines, so they are
pydantic models with one serialised form. Times are UNIX seconds (floats); the
caller supplies them (no clock here).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from cnnf.model.attempt import Endpoint, Verdict
from cnnf.model.identity import ContainerIdentity, make_labels, normalise_image
from cnnf.model.rule import Effect, RuleKind


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EndpointInfo(_Record):
    """The identity of one end of a connection, as far as it is known."""

    kind: Literal["container", "host", "address"]
    address: str | None = None
    image: str = ""
    container: str = ""
    container_id: str = ""
    namespace: str = ""
    pod: str = ""
    cluster: str = ""
    host: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    domain: str = ""

    @classmethod
    def from_endpoint(cls, ep: Endpoint) -> EndpointInfo:
        domain = ep.domains[0] if ep.domains else ""
        if ep.container is not None:
            c = ep.container
            return cls(kind="container", address=ep.address, image=c.image, container=c.name,
                       container_id=c.id, namespace=c.namespace, pod=c.pod, cluster=c.cluster,
                       host=c.host, labels=dict(c.labels), domain=domain)
        if ep.host is not None:
            h = ep.host
            return cls(kind="host", address=ep.address, host=h.name, cluster=h.cluster,
                       labels=dict(h.labels), domain=domain)
        return cls(kind="address", address=ep.address, domain=domain)

    def key(self) -> tuple[str, ...]:
        """What makes two ends "the same" for aggregation: the identity, not the
        container instance (containers of one image fold into one flow)."""
        if self.kind == "container":
            return ("container", self.image, self.namespace, self.host)
        if self.kind == "host":
            return ("host", self.host)
        return ("address", self.address or "", self.domain)


# What the Console's store holds, stated in the API document for the report
# batch. Only stated, not checked here: the Defender builds these records from
# what it sees (a SYN to port 0 included), and the Console's mapping refuses a
# value out of range with 422 naming it.
_INT32 = 2**31 - 1
_TIME_MIN = -62135596800.0  # 0001-01-01T00:00:00Z
_TIME_MAX = 253402300799.0  # 9999-12-31T23:59:59Z


def _stored(low: float, high: float) -> dict[str, Any]:
    return {"minimum": low, "maximum": high}


class FlowRecord(_Record):
    """Connections from one source to one destination port with one verdict,
    aggregated: how many, first and last seen."""

    src: EndpointInfo
    dst: EndpointInfo
    port: int = Field(json_schema_extra=_stored(1, 65535))
    effect: Effect
    matched: bool
    # "enforced": the Defender evaluated the SYN; "observed": seen through
    # connection tracking with enforcement disabled (no verdict was applied:
    # ``effect`` is what happened, allow, and ``would_*`` what the policy says).
    mode: Literal["enforced", "observed"] = "enforced"
    rule_id: int | None = Field(default=None, json_schema_extra=_stored(0, _INT32))
    rule_name: str | None = None
    rule_kind: RuleKind | None = None
    # The "would" verdict (see Verdict.would): what the policy with everything
    # staged in force, and enforcement on, decides when that differs from what
    # happened. Left out of the JSON when there is none (a Console of an earlier
    # release refuses fields it does not know, and most flows have none).
    would_effect: Effect | None = Field(default=None, exclude_if=lambda v: v is None)
    would_rule_id: int | None = Field(default=None, exclude_if=lambda v: v is None,
                                      json_schema_extra=_stored(0, _INT32))
    would_rule_name: str | None = Field(default=None, exclude_if=lambda v: v is None)
    revision: int = 0
    count: int = 1
    first_seen: float = Field(json_schema_extra=_stored(_TIME_MIN, _TIME_MAX))
    last_seen: float = Field(json_schema_extra=_stored(_TIME_MIN, _TIME_MAX))
    reporter: str = ""  # the Defender (host name) that saw it

    def key(self) -> tuple[object, ...]:
        return (self.src.key(), self.dst.key(), self.port, self.effect, self.rule_id, self.mode,
                self.would_effect, self.would_rule_id)


class AuditType(StrEnum):
    """What raised an audit: a container or host rule (or the default effect) on one
    connection, or an overload: a flooding source's SYNs dropped by the
    admission limit or the verdict loop, or a workload's packets with a forged
    source address dropped by anti-spoofing (``rule_name`` says which)."""

    CONTAINER = "container"
    HOST = "host"
    OVERLOAD = "overload"

    @classmethod
    def of(cls, kind: RuleKind) -> AuditType:
        return cls(kind.value)


class AuditEvent(_Record):
    """One alerted or blocked connection (repeats folded with ``count``), or one
    overload report (see :func:`overload_audit`)."""

    # Port 0 only for an overload audit (no destination port decided it).
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra={
        "if": {"properties": {"type": {"not": {"const": "overload"}}}},
        "then": {"properties": {"port": {"minimum": 1}}}})

    time: float = Field(json_schema_extra=_stored(_TIME_MIN, _TIME_MAX))
    type: AuditType  # container or host firewall, or overload
    effect: Effect
    blocked: bool
    rule_id: int | None = Field(default=None, json_schema_extra=_stored(0, _INT32))
    rule_name: str = ""
    src: EndpointInfo
    dst: EndpointInfo
    port: int = Field(json_schema_extra=_stored(0, 65535))  # 0: an overload audit only
    dst_subnet: str = ""
    dst_domain: str = ""
    message: str
    count: int = 1
    revision: int = Field(default=0, json_schema_extra={"maximum": 2**63 - 1})
    reporter: str = ""
    # A "would" audit: what a staged rule or the staged default effect, or the
    # policy while enforcement is off, would have done; nothing was enforced
    # (``blocked`` is False, ``effect`` the effect that would have applied).
    would: bool = Field(default=False, exclude_if=lambda v: not v)

    def key(self) -> tuple[object, ...]:
        return (self.type, self.rule_id, self.blocked, self.would, self.src.key(),
                self.src.address, self.dst.key(), self.dst.address, self.port)


def endpoint_name(e: EndpointInfo) -> str:
    """How messages and logs name one end: ``image (container)``, ``host NAME``, a
    domain or an address."""
    if e.kind == "container":
        return f"{e.image} ({e.container or e.address})"
    if e.kind == "host":
        return f"host {e.host}"
    return e.domain or e.address or "?"


def audit_message(verdict: Verdict, src: EndpointInfo, dst: EndpointInfo, port: int,
                  would: str = "") -> str:
    """The human sentence of an audit, in one place. ``would``: why the verdict
    was not enforced ("staged", "enforcement is off"), for a "would" audit."""
    src_name, dst_name = endpoint_name(src), endpoint_name(dst)
    if would:
        action = "would block" if verdict.blocked else "would alert on"
        why = (f"rule {verdict.rule_name!r}" if verdict.matched
               else f"the default effect ({verdict.effect.value}); no rule matched")
        return (f"{action} connection from {src_name} to {dst_name} port {port} by {why}"
                f" (not enforced: {would})")
    action = "blocked" if verdict.blocked else "alerted on"
    why = (f"rule {verdict.rule_name!r}" if verdict.matched
           else f"the default effect ({verdict.effect.value}); no rule matched")
    return f"{action} connection from {src_name} to {dst_name} port {port} by {why}"


def overload_message(src: EndpointInfo, dropped: int, seconds: float, rate: int,
                     *, shed: int = 0, tightened: int = 0) -> str:
    """The human sentence of an overload audit. ``shed``: how many of the
    ``dropped`` the verdict loop dropped (its waiting room full, the source
    holding the most, or waiting too long), the rest being the admission
    limit's; ``tightened``: the source's limit then (0: ``rate``)."""
    syns = "SYN" if dropped == 1 else "SYNs"
    when = f"from {endpoint_name(src)} in {round(seconds, 1):g} s"
    limit = (f"the admission limit ({rate} new connections/s per source)" if not tightened
             else f"the admission limit (tightened to {tightened} new connections/s for "
                  "this source during this window: the verdict loop could not keep up "
                  "with it)")
    share = "the verdict loop (it could not keep up with the source)"
    if not shed:
        return f"overload: {limit} dropped {dropped:,} {syns} {when}"
    if shed >= dropped:
        return f"overload: {share} dropped {dropped:,} {syns} {when}"
    return (f"overload: {dropped:,} SYNs dropped {when}: {dropped - shed:,} by {limit}, "
            f"{shed:,} by {share}")


def overload_dropper(dropped: int, *, shed: int = 0, tightened: int = 0) -> str:
    """What dropped an overload audit's SYNs, in a few words (the audit's
    ``rule_name``, shown where a rule's name would be): the admission limit
    (tightened or not), the verdict loop, or both."""
    limit = "admission limit (tightened)" if tightened else "admission limit"
    if not shed:
        return limit
    return "verdict loop" if shed >= dropped else f"{limit} and verdict loop"


def overload_audit(time: float, src: EndpointInfo, *, host: str, dropped: int, seconds: float,
                   rate: int, reporter: str, shed: int = 0, tightened: int = 0) -> AuditEvent:
    """The audit of one flooding source: ``dropped`` SYNs from ``src`` that the
    per-source admission limit (``rate`` new connections per second) dropped on
    ``host`` in the last ``seconds``, ``shed`` of them dropped by the verdict
    loop instead (it could not keep up); ``tightened``: the source's limit
    was tightened to that rate (0: it was not). No rule and no destination
    port decided it, so ``rule_id`` is None and ``port`` 0; the destination is
    the host. The numbers are keyword-only: three counts in a row are easy to
    swap."""
    if dropped < 1:
        raise ValueError(f"dropped: {dropped} is not a positive count of SYNs")
    if not 0 <= shed <= dropped:
        raise ValueError(f"shed: {shed} is not a count of SYNs within dropped ({dropped})")
    if rate < 1 and shed < dropped:  # the admission limit is off: only the loop drops
        raise ValueError(f"rate: {rate} is not a positive rate")
    if not seconds > 0:
        raise ValueError(f"seconds: {seconds} is not a positive window")
    return AuditEvent(
        time=time, type=AuditType.OVERLOAD, effect=Effect.PREVENT, blocked=True,
        rule_id=None, rule_name=overload_dropper(dropped, shed=shed, tightened=tightened),
        src=src, dst=EndpointInfo(kind="host", host=host, address=None), port=0,
        message=overload_message(src, dropped, seconds, rate, shed=shed, tightened=tightened),
        count=dropped,
        reporter=reporter,
    )


def spoof_audit(time: float, src: EndpointInfo, *, host: str, dropped: int, seconds: float,
                interface: str, reporter: str) -> AuditEvent:
    """The audit of a workload sending with forged source addresses: ``dropped``
    packets from its port (``interface``, the host end of its veth) on ``host``
    in the last ``seconds`` carried a source address not its own, and the
    kernel's anti-spoofing rule dropped them before anything else. An overload
    audit (no rule decided it: ``rule_id`` None, ``port`` 0); the message says
    what dropped them."""
    if dropped < 1:
        raise ValueError(f"dropped: {dropped} is not a positive count of packets")
    if not seconds > 0:
        raise ValueError(f"seconds: {seconds} is not a positive window")
    if not interface:
        raise ValueError("interface: empty")
    packets = "packet" if dropped == 1 else "packets"
    message = (f"overload: anti-spoofing dropped {dropped:,} {packets} with a forged source "
               f"address from {endpoint_name(src)} (its port {interface}) in "
               f"{round(seconds, 1):g} s")
    return AuditEvent(
        time=time, type=AuditType.OVERLOAD, effect=Effect.PREVENT, blocked=True,
        rule_id=None, rule_name="anti-spoofing", src=src,
        dst=EndpointInfo(kind="host", host=host, address=None), port=0,
        message=message, count=dropped, reporter=reporter,
    )


# --- The Defender <-> Console wire (bodies of /api/v1/defender/* endpoints) ---


class WorkloadInfo(_Record):
    """One discovered workload address: a container on a Defender's host."""

    address: str
    image: str
    name: str = ""
    id: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    namespace: str = ""
    pod: str = ""
    cluster: str = ""
    host: str = ""
    # Every image of a pod with more than one container, the main image first
    # (empty for one image): image selectors match any of them.
    # Left out of the JSON when empty: Consoles and Defenders of an earlier
    # release refuse fields they do not know, and only pods with several
    # images carry it.
    images: list[str] = Field(default_factory=list, exclude_if=lambda v: not v)

    @field_validator("image")
    @classmethod
    def _normalise_image(cls, image: str) -> str:
        # Every way a workload enters from outside passes here: a Defender's
        # report to the Console, the cluster inventory from the Console or a
        # --cluster-inventory file, the Console's stored reports read back. So
        # "docker.io/shop/db:13" is "shop/db:13", as discovery names it.
        return normalise_image(image)

    @field_validator("images")
    @classmethod
    def _normalise_images(cls, images: list[str]) -> list[str]:
        return list(dict.fromkeys(normalise_image(i) for i in images))

    def identity(self) -> ContainerIdentity:
        """The workload's identity, as the policy engine matches it."""
        return ContainerIdentity(image=self.image, name=self.name,
                                 labels=make_labels(self.labels), namespace=self.namespace,
                                 cluster=self.cluster, host=self.host, id=self.id,
                                 pod=self.pod, images=tuple(self.images))

    @classmethod
    def of(cls, address: str, c: ContainerIdentity) -> WorkloadInfo:
        return cls(address=address, image=c.image, name=c.name, id=c.id,
                   labels=dict(c.labels), namespace=c.namespace, pod=c.pod,
                   cluster=c.cluster, host=c.host, images=list(c.images))


class HostInfo(_Record):
    name: str
    addresses: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    cluster: str = ""


class DatapathState(_Record):
    """Whether a Defender's datapath is up, from its own check of the kernel:
    every verdict worker running, each SYN queue bound (NFQUEUE), its
    iptables chains, rules and ipsets in place. ``problems`` says what is not
    (empty when up), at most 20 of them."""

    up: bool
    problems: list[Annotated[str, StringConstraints(max_length=300)]] = Field(
        default_factory=list, max_length=20)


class InventoryReport(_Record):
    """POST /api/v1/defender/inventory: what one Defender sees on its host
    (replaces that Defender's previous report whole)."""

    host: HostInfo
    containers: list[WorkloadInfo] = Field(default_factory=list)
    version: str = ""
    protected: int = 0  # workload addresses the Defender currently protects
    # None: not checked yet, or a Defender too old to say
    datapath: DatapathState | None = None


class ClusterInventory(_Record):
    """GET /api/v1/defender/inventory?revision=N&wait=S: every Defender's report merged."""

    revision: int
    hosts: list[HostInfo] = Field(default_factory=list)
    containers: list[WorkloadInfo] = Field(default_factory=list)


# Flows, and audits, per report batch at most: a Defender sends them in batches of
# this many; the Console refuses more (one request's validation stays short).
MAX_BATCH_RECORDS = 1000


class ReportBatch(_Record):
    """POST /api/v1/defender/reports: flows and audits. ``batch_id`` makes
    redelivery (after a lost answer or a Console restart) idempotent; ``dropped``
    counts records the Defender's bounded spool had to discard."""

    batch_id: str
    flows: list[FlowRecord] = Field(default_factory=list, max_length=MAX_BATCH_RECORDS)
    audits: list[AuditEvent] = Field(default_factory=list, max_length=MAX_BATCH_RECORDS)
    dropped: int = 0
