"""Learn and simulate over the stored flows: proposals (learnt, stored, applied
as one change) and what-if simulations of draft policies.

The flows of a window are folded in the store (one query grouping the rows by
edge, recorded verdict and identities, replicas' container names left out when
no object selects by name: :func:`grouped_flows`), each identity text parsed
once, then handed to the pure :mod:`cnnf.policy.learn` and
:mod:`cnnf.policy.simulate`, which give the same results for folded flows as
for the rows (:func:`observed_flows`, the reference read).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, field_validator, model_validator
from sqlalchemy import TextClause, bindparam, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from cnnf.console.services.errors import Conflict, InvalidInput, NotFound
from cnnf.console.services.policy import PolicyService, diff
from cnnf.console.store.models import ProposalRow, UtcDateTime
from cnnf.errors import FieldError, PolicyValidationError
from cnnf.model import (
    ContainerObject,
    Effect,
    Endpoint,
    NetworkObject,
    Policy,
    Rule,
    RuleKind,
)
from cnnf.model.objects import WS, GlobList, check_glob
from cnnf.model.rule import RFC3339, PolicyModel
from cnnf.policy.engine import compile_policy
from cnnf.policy.learn import LearnOptions, Proposal, Scope, learn
from cnnf.policy.match import compile_globs
from cnnf.policy.observed import EndpointCache, ObservedFlow, unnamed_endpoint
from cnnf.policy.simulate import EdgeChange, Impact, Outcome, simulate

DEFAULT_WINDOW = timedelta(hours=24)
MAX_EDGES = 1000  # changed edges listed in one simulation (the counts cover them all)
Kind = Literal["container", "host"]


# --- requests and answers ----------------------------------------------------------------


class Window(PolicyModel):
    since: Annotated[datetime | None, Field(description=(
        "flows last seen at or after (default: 24 hours before until)")), RFC3339] = None
    until: Annotated[datetime | None, Field(description=(
        "flows first seen before (default: now)")), RFC3339] = None

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError(f"since ({self.since.isoformat()}) is not before until "
                             f"({self.until.isoformat()})")
        return self


class ProposalRequest(Window):
    namespace: Annotated[str | None, Field(min_length=1, max_length=200, description=(
        "only flows with an end in this namespace"))] = None
    host: Annotated[str | None, Field(min_length=1, max_length=300, description=(
        "only flows with an end on this host"))] = None
    images: Annotated[GlobList, Field(max_length=100, description=(
        "only flows with an end of an image matching one of these globs"))] = ()
    label_key: Annotated[str, Field(max_length=200, pattern=rf"^[^{WS}=*?\[\]]*$", description=(
        "the stable label that names a workload (objects by this label when a workload "
        "carries it, else by namespace and image); empty: always by image"))] = "app"
    default_effect: Annotated[Effect | None, Field(description=(
        "the proposal's default effect for connections no rule matches (prevent: "
        "zero trust); left out: the current one"))] = None

    @field_validator("images")
    @classmethod
    def _globs(cls, images: tuple[str, ...]) -> tuple[str, ...]:
        for image in images:
            check_glob(image)
        return images


class Evidence(PolicyModel):
    flows: int
    connections: int
    first_seen: datetime | None
    last_seen: datetime | None
    edges: list[str] = Field(description="the busiest edges behind it (src -> dst:port)")


class ProposedRule(PolicyModel):
    kind: Kind
    rule: Rule
    replaces: int | None = Field(description=(
        "the existing rule (same kind and id) this one widens; null: a new rule"))
    src_basis: str
    dst_basis: str
    evidence: Evidence


class ProposedObject(PolicyModel):
    name: str
    kind: str
    new: bool
    basis: str = Field(description=(
        "existing, or what a new object selects by: label app=api in shop-web, "
        "image shop/db in shop-data, host, dns, subnet"))


class CoveredRule(PolicyModel):
    kind: Kind
    rule_id: int
    rule_name: str
    effect: Effect
    evidence: Evidence


class ProposalSummary(PolicyModel):
    id: int
    created: datetime
    actor: str
    since: datetime
    until: datetime
    base_revision: int
    applied_revision: int | None
    rules: int
    learnt_flows: int


class ProposalOut(ProposalSummary):
    scope: dict[str, Any]
    label_key: str
    policy: Policy = Field(description="the resulting policy (current plus every proposed rule)")
    diff: dict[str, Any] = Field(description="what applying every proposed rule changes")
    proposed: list[ProposedRule]
    objects: list[ProposedObject]
    covered: list[CoveredRule] = Field(description=(
        "existing rules that decided observed flows; they stay as they are"))
    skipped: dict[str, int] = Field(description="flows not learnt, by reason")
    unallowed: int = Field(description="learnt flows the proposal would still not allow (0)")


class ProposalPage(PolicyModel):
    total: int
    limit: int
    offset: int
    items: list[ProposalSummary]


class RuleRef(PolicyModel):
    kind: Kind
    id: Annotated[int, Field(ge=1, le=2**31 - 1)]


class ApplyRequest(PolicyModel):
    rules: Annotated[list[RuleRef] | None, Field(max_length=10000, description=(
        "the proposed rules to apply (kind and id); left out: all of them"))] = None
    default_effect: Annotated[Effect | None, Field(description=(
        "the default effect to apply with them; left out: the proposal's"))] = None


class Applied(PolicyModel):
    proposal: int
    revision: int
    rules: int
    objects: int
    diff: dict[str, Any]


class RuleChanges(PolicyModel):
    """A draft as changes to the current policy."""

    objects: Annotated[list[NetworkObject], Field(max_length=10000, description=(
        "objects to add, or to replace (same name)"))] = []
    container_rules: Annotated[list[Rule], Field(max_length=10000, description=(
        "container rules to replace (same id, in place) or add (at the end)"))] = []
    host_rules: Annotated[list[Rule], Field(max_length=10000)] = []
    remove_rules: Annotated[list[RuleRef], Field(max_length=10000)] = []
    default_effect: Effect | None = None


class SimulateRequest(Window):
    policy: Annotated[Policy | None, Field(description="a whole draft policy")] = None
    changes: Annotated[RuleChanges | None, Field(description=(
        "a draft as changes to the current policy"))] = None
    proposal: Annotated[int | None, Field(ge=1, le=2**63 - 1, description=(
        "a stored proposal's policy as the draft"))] = None

    @model_validator(mode="after")
    def _one_draft(self) -> SimulateRequest:
        given = [n for n in ("policy", "changes", "proposal") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one draft: policy, changes or proposal"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class Verdict(PolicyModel):
    effect: Effect
    matched: bool
    rule_id: int | None
    rule_name: str | None
    label: str


class ChangedEdge(PolicyModel):
    kind: Kind
    src: str
    dst: str
    port: int
    before: Verdict
    after: Verdict
    recorded: str = Field(description="the verdict recorded when the flow was seen")
    flows: int
    connections: int
    first_seen: datetime | None
    last_seen: datetime | None


class RuleImpact(PolicyModel):
    kind: Kind
    rule_id: int | None = Field(description="the draft's deciding rule; null: its default effect")
    rule_name: str | None
    effect: Effect
    flows: int
    connections: int
    transitions: dict[str, int]


class StagedChanges(PolicyModel):
    """What the draft's staged rules and staged default effect would change if
    promoted: per flow, from the draft's verdict in force (``before``) to its
    "would" verdict (``after``: everything staged in force)."""

    changed_flows: int
    changed_connections: int
    transitions: dict[str, int] = Field(description="flows by change (allow -> prevent, ...)")
    edges: list[ChangedEdge] = Field(description=f"changed edges, busiest first (at most "
                                                 f"{MAX_EDGES})")
    edges_total: int
    rules: list[RuleImpact] = Field(description=(
        "by the staged rule (or the staged default effect: ruleId null) that would decide"))


class SimulateResult(PolicyModel):
    since: datetime
    until: datetime
    flows: int
    connections: int
    changed_flows: int = Field(description=(
        "flows whose verdict in force changes (staged rules and a staged default effect "
        "are not in force: they change nothing here, see staged)"))
    changed_connections: int
    transitions: dict[str, int] = Field(description="flows by change (allow -> prevent, ...)")
    edges: list[ChangedEdge] = Field(description=f"changed edges, busiest first (at most "
                                                 f"{MAX_EDGES})")
    edges_total: int
    rules: list[RuleImpact]
    staged: StagedChanges = Field(description=(
        "would-changes: what the draft's staged rules and staged default effect would "
        "change beyond the draft's verdicts in force, if promoted"))


# --- reading the flows ---------------------------------------------------------------------


def _window(w: Window, now: datetime) -> tuple[datetime, datetime]:
    until = w.until or now
    since = w.since or until - DEFAULT_WINDOW
    if since >= until:
        raise InvalidInput([FieldError("since", f"{since.isoformat()} is not before until "
                                                f"({until.isoformat()})")])
    return since, until


@contextmanager
def gc_paused() -> Iterator[None]:
    """While tens of thousands of small acyclic objects are made (a million flows, a
    large graph), the cyclic collector would scan the growing heap again and again
    (about half the Radar endpoint's time at 20,000 edges); reference counting still
    frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_FLOWS = ("SELECT kind, src, dst, port, src_identity, dst_identity, verdict, rule_id, count, "
          "first_seen, last_seen FROM flows{hint} "
          "WHERE last_seen >= :since AND first_seen < :until")


def _scan_hint(session: Session, since: datetime) -> str:
    """How to read the window's rows on SQLite.

    SQLite walks the last-seen index row by row, each row a random read of
    the table: for a window holding a large part of the table a plain scan is
    about twice as fast (measured: 11 s against 23 s for a million rows), so
    the index is used only when the window holds under a quarter of the rows
    (counted on the index itself). PostgreSQL's planner makes that choice."""
    if session.get_bind().dialect.name != "sqlite":
        return ""
    at = {"since": since}
    recent = session.execute(text("SELECT count(*) FROM flows WHERE last_seen >= :since")
                             .bindparams(bindparam("since", type_=UtcDateTime())), at).scalar()
    total = session.execute(text("SELECT count(*) FROM flows")).scalar()
    return " NOT INDEXED" if (recent or 0) * 4 > (total or 0) else ""


def _flows_query(session: Session, since: datetime, until: datetime) -> TextClause:
    """The window's rows, only the columns learning and simulating read."""
    # yield_per: streamed in batches (a server-side cursor on PostgreSQL), not a
    # million rows held at once.
    return text(_FLOWS.format(hint=_scan_hint(session, since))).bindparams(
        bindparam("since", type_=UtcDateTime()), bindparam("until", type_=UtcDateTime())
    ).execution_options(yield_per=20000)


def observed_flows(session: Session, since: datetime, until: datetime) -> Iterator[ObservedFlow]:
    """The stored flows seen in the window (last seen at or after ``since``,
    first seen before ``until``), one per row, with their recorded identities:
    one shared :class:`~cnnf.model.Endpoint` per distinct identity text (parsed
    once), one datetime per distinct time value. The reference read (the
    learner and the simulator read :func:`grouped_flows`; the tests compare the
    two)."""
    stmt = _flows_query(session, since, until)
    texts: dict[str, Endpoint] = {}
    keys = EndpointCache()
    times: dict[Any, datetime] = {}

    unreadable = keys.unreadable

    def endpoint(text_: str, key: str) -> Endpoint:
        found = keys(text_, key)
        if text_ not in unreadable:  # a text that is no JSON object reads as its key
            texts[text_] = found
        return found

    def parse(value: Any) -> datetime:
        if len(times) > 100000:
            times.clear()
        t = times[value] = _utc(value)
        return t

    # Core, not the ORM: a million plain rows, fetched in batches. The cyclic
    # collector would scan the growing heap of small acyclic objects again and
    # again: paused. A text stands for itself (it holds everything the key
    # says): only rows without one are read from their key.
    result = session.connection().execute(stmt, {"since": since, "until": until})
    get_text, get_time = texts.get, times.get
    flow = ObservedFlow
    with gc_paused():
        while rows := result.fetchmany(20000):
            for kind, src, dst, port, s_id, d_id, verdict, rule_id, count, f, la in rows:
                src_ep = (get_text(s_id) or endpoint(s_id, src)) if s_id else keys(s_id, src)
                dst_ep = (get_text(d_id) or endpoint(d_id, dst)) if d_id else keys(d_id, dst)
                yield flow(kind, src, dst, port, src_ep, dst_ep, verdict, rule_id, 1, count,
                           get_time(f) or parse(f), get_time(la) or parse(la))


def _utc(value: Any) -> datetime:
    """A time as the store returns it: an aware datetime (PostgreSQL), or
    SQLite's fixed-width text in UTC (what ``min`` and ``max`` give there)."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    if not isinstance(value, datetime):
        raise TypeError(f"not a time: {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def names_containers(*policies: Policy) -> bool:
    """Whether an object of one of ``policies`` selects containers by name: only
    then can a container's name (one per replica) change a verdict or an
    object's reuse. Learnt objects never select by name."""
    return any(isinstance(o, ContainerObject) and o.selector.containers
               for p in policies for o in p.objects)


#: What a container name reads as for the policies involved: the objects'
#: name globs it matches (:func:`name_classes`).
NameClass = Callable[[str], Hashable]


def name_classes(*policies: Policy) -> NameClass:
    """What a container name can change under ``policies``: which of their
    objects' ``containers`` globs it matches, one answer per object selecting
    by name (a ``*`` there matches every name: no answer). Two identities
    equal but for names that match the same of those globs match the same
    objects, so decide the same and are learnt the same: they fold together
    with the names kept (replicas ``api-2`` ... ``api-9`` of a policy naming
    only ``api-1``)."""
    matchers = [compile_globs(o.selector.containers) for p in policies for o in p.objects
                if isinstance(o, ContainerObject) and o.selector.containers
                and "*" not in o.selector.containers]

    @lru_cache(maxsize=65536)
    def name_class(name: str) -> Hashable:
        return tuple(m(name) for m in matchers)

    return name_class


class _Classes:
    """Identity texts (with the row's identity key) as small integers, for the
    folds with the names kept: identities equal as JSON but for container
    names of one ``name_class`` (:func:`name_classes`; None: the names
    themselves) share one; ``texts`` gives back, per integer, a text (the
    first seen) and key that read as that identity. A text that is not a JSON
    object (or empty) is read from its key, as :func:`endpoint_of` does.
    ``by_text``: the texts already numbered (read from themselves)."""

    __slots__ = ("_by_key", "_groups", "_ids", "_keyed", "_name_class", "by_text", "texts")

    def __init__(self, name_class: NameClass | None = None) -> None:
        self.by_text: dict[str, int] = {}
        self._keyed: set[str] = set()  # texts read from their key
        self._by_key: dict[str, int] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._groups: dict[tuple[str, Hashable], int] = {}
        self._name_class = name_class
        self.texts: list[tuple[str, str]] = []

    def _id(self, text_: str, key: str) -> int:
        found = self._ids.get((text_, key))
        if found is None:
            found = self._ids[(text_, key)] = len(self.texts)
            self.texts.append((text_, key))
        return found

    def readable(self, text_: str) -> int | None:
        """The integer of a text read from itself; None for one read from its key."""
        found = self.by_text.get(text_)
        if found is not None or not text_ or text_ in self._keyed:
            return found
        try:
            data = orjson.loads(text_)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            self._keyed.add(text_)
            return None
        try:
            canonical = orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:  # parsed but not written back: its own group
            found = self.by_text[text_] = self._id(text_, "")
            return found
        if self._name_class is None:
            found = self.by_text[text_] = self._id(canonical, "")
            return found
        # what the endpoint reads the name as (endpoint_of), then without it
        name = self._name_class(str(data.get("name", "")))
        data.pop("name", None)
        group = (orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode(), name)
        found = self._groups.get(group)
        if found is None:
            found = self._groups[group] = self._id(canonical, "")
        self.by_text[text_] = found
        return found

    def __call__(self, text_: str, key: str) -> int:
        found = self.readable(text_)
        if found is not None:
            return found
        by_key = self._by_key.get(key)
        if by_key is None:
            by_key = self._by_key[key] = self._id("", key)
        return by_key


_GROUPED = ("SELECT kind, src, dst, port, verdict, rule_id, {src_id}, {dst_id}, "
            "count(*), CAST(sum(count) AS BIGINT), min(first_seen), max(last_seen) "
            "FROM flows WHERE last_seen >= :since AND first_seen < :until "
            "GROUP BY 1, 2, 3, 4, 5, 6, 7, 8")
_FOLD = ("SELECT cnnf_fold(kind, src, dst, port, verdict, rule_id, count, first_seen, "
         "last_seen, src_identity, dst_identity) "
         "FROM flows{hint} WHERE last_seen >= :since AND first_seen < :until")

#: A folded group: rows, connections, first seen, last seen (as the store gives them)
_Group = list[Any]


def grouped_flows(session: Session, since: datetime, until: datetime, *,
                  erase_names: bool, policies: Sequence[Policy] = ()) -> Iterator[ObservedFlow]:
    """The window's flows as :func:`observed_flows` reads them, folded in the
    store: one :class:`ObservedFlow` per edge (kind, source and destination
    keys, port), recorded verdict and rule, and pair of identities, with the
    number of rows (``flows``), the sum of their connections and the earliest
    and latest times. Learning and simulating add those up per flow and
    evaluate each by its identities and port, so the folded flows give the
    same results as the rows, from a hundred thousand groups instead of a
    million rows (the benchmark's).

    ``erase_names``: group identities that differ only in the container name
    (replicas: ``api-1``, ``api-2``); right when no object selects by name
    (:func:`names_containers`), and then the largest fold. Each stored flow
    carries the class of both its identities, their digest without the name
    (``src_class``, ``dst_class``, computed when it was stored): both stores
    group by those short texts, no JSON parsed per row (:func:`_by_class`).

    With the names kept, identities fold when they differ only in names that
    match the same of ``policies``' name globs (:func:`name_classes`; the
    policies the flows will be evaluated under, none: names must be equal):
    PostgreSQL groups with ``GROUP BY`` over integers its distinct identity
    texts are given (:func:`_by_text_class`), SQLite (which has no hash
    aggregate: its ``GROUP BY`` sorts the million rows) folds the rows as
    the scan passes them, in an aggregate function (:func:`_folded_sqlite`)."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    if erase_names:
        yield from (_folded_sqlite_classes(session, since, until) if sqlite
                    else _by_class(session, since, until))
        return
    name_class = name_classes(*policies) if policies else None
    if sqlite:
        yield from _folded_sqlite(session, since, until, name_class)
        return
    if name_class is not None:
        folded = _by_text_class(session, since, until, name_class)
        if folded is not None:
            yield from folded
            return
    # yield_per: a server-side cursor, the groups fetched in batches (psycopg
    # would hold every group client-side).
    stmt = text(_GROUPED.format(src_id="src_identity", dst_id="dst_identity")).bindparams(
        bindparam("since", type_=UtcDateTime()), bindparam("until", type_=UtcDateTime())
    ).execution_options(yield_per=20000)
    result = session.connection().execute(stmt, {"since": since, "until": until})
    keys = EndpointCache()
    flow = ObservedFlow
    with gc_paused():
        while rows := result.fetchmany(20000):
            for kind, src, dst, port, verdict, rule_id, s_id, d_id, n, count, f, la in rows:
                yield flow(kind, src, dst, port, keys(s_id, src), keys(d_id, dst), verdict,
                           rule_id, n, count, _utc(f), _utc(la))


#: Distinct identity texts in a window (and their characters) beyond which
#: PostgreSQL, names kept, groups by the texts themselves: each text is sent
#: with the query, beside its integer, and workloads choose how many there are
#: (every DNS name and address they reach is a destination identity).
MAX_TEXT_CLASSES = 200_000
MAX_TEXT_CHARS = 32_000_000

_DISTINCT_TEXTS = ("SELECT src_identity FROM flows WHERE last_seen >= :since AND "
                   "first_seen < :until UNION SELECT dst_identity FROM flows WHERE "
                   "last_seen >= :since AND first_seen < :until")
_BY_TEXT_CLASS = (
    "SELECT kind, src, dst, port, verdict, rule_id, s.i, d.i, "
    "CASE WHEN s.i IS NULL THEN src_identity END, CASE WHEN d.i IS NULL THEN dst_identity END, "
    "count(*), CAST(sum(count) AS BIGINT), min(first_seen), max(last_seen) FROM flows "
    "LEFT JOIN unnest(CAST(:texts AS text[]), CAST(:ids AS integer[])) AS s(t, i) "
    "ON s.t = flows.src_identity "
    "LEFT JOIN unnest(CAST(:texts AS text[]), CAST(:ids AS integer[])) AS d(t, i) "
    "ON d.t = flows.dst_identity "
    "WHERE last_seen >= :since AND first_seen < :until GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10")


def _by_text_class(session: Session, since: datetime, until: datetime,
                   name_class: NameClass) -> Iterator[ObservedFlow] | None:
    """PostgreSQL, names kept: the window's distinct identity texts, each given
    an integer (:class:`_Classes`: equal but for names of one
    ``name_class``), then the rows grouped by those integers (a hash join on
    the texts, no JSON parsed per row). A text without an integer (read from
    the key, or stored after the texts were read: each statement reads the
    store as it is then) is grouped by itself. None when the window holds more than
    :data:`MAX_TEXT_CLASSES` distinct texts or :data:`MAX_TEXT_CHARS`
    characters of them (then grouped by the texts)."""
    if MAX_TEXT_CLASSES <= 0:
        return None
    window = {"since": since, "until": until}
    distinct = text(_DISTINCT_TEXTS).bindparams(
        bindparam("since", type_=UtcDateTime()), bindparam("until", type_=UtcDateTime())
    ).execution_options(yield_per=20000)
    _grouping_settings(session)
    classes = _Classes(name_class)
    texts: list[str] = []
    ids: list[int] = []
    chars = 0
    result = session.connection().execute(distinct, window)
    while batch := result.fetchmany(20000):
        for (text_,) in batch:
            found = classes.readable(text_)
            if found is not None:
                texts.append(text_)
                ids.append(found)
                chars += len(text_)
        if len(texts) > MAX_TEXT_CLASSES or chars > MAX_TEXT_CHARS:
            result.close()
            return None
    return _text_class_flows(session, window, classes, texts, ids)


def _text_class_flows(session: Session, window: dict[str, datetime], classes: _Classes,
                      texts: list[str], ids: list[int]) -> Iterator[ObservedFlow]:
    stmt = text(_BY_TEXT_CLASS).bindparams(
        bindparam("since", type_=UtcDateTime()), bindparam("until", type_=UtcDateTime())
    ).execution_options(yield_per=20000)
    result = session.connection().execute(stmt, {**window, "texts": texts, "ids": ids})
    keys = EndpointCache()
    represented = classes.texts
    times: dict[Any, datetime] = {}
    flow, get_time = ObservedFlow, times.get

    def utc(value: Any) -> datetime:
        if len(times) > 100000:
            times.clear()
        found = times[value] = _utc(value)
        return found

    with gc_paused():
        while rows := result.fetchmany(20000):
            for (kind, src, dst, port, verdict, rule_id, s_id, d_id, s_text, d_text, n, count,
                 f, la) in rows:
                s_ep = keys(represented[s_id][0], src) if s_id is not None else keys(s_text, src)
                d_ep = keys(represented[d_id][0], dst) if d_id is not None else keys(d_text, dst)
                yield flow(kind, src, dst, port, s_ep, d_ep, verdict, rule_id, n, count,
                           get_time(f) or utc(f), get_time(la) or utc(la))


#: PostgreSQL's memory for grouping the window (``work_mem``, this query only)
GROUPING_MEMORY = "64MB"

#: PostgreSQL's parallel workers for grouping the window (None: the server's
#: setting, ``max_parallel_workers_per_gather``, 2 by default)
PARALLEL_WORKERS: int | None = None


def _grouping_settings(session: Session) -> None:
    """PostgreSQL's settings for grouping the window, this transaction only."""
    session.execute(text(f"SET LOCAL work_mem = '{GROUPING_MEMORY}'"))
    if PARALLEL_WORKERS is not None:
        session.execute(text(f"SET LOCAL max_parallel_workers_per_gather = {PARALLEL_WORKERS:d}"))


#: What a group's identity class reads as, when a row holds an identity text
#: but no class (stored before migration 0013 and not yet given its class by
#: the Console's background walk, :mod:`cnnf.console.services.classes`, or
#: stored by a writer that does not compute it: a replica of the previous
#: version during an upgrade): the text itself, after this prefix (a class is
#: 32 hex digits), grouped by the whole text (finer: still exact).
UNCLASSED = "text:"


def _class_sql(end: str) -> str:
    return (f"CASE WHEN {end}_class = '' AND {end}_identity <> '' "
            f"THEN '{UNCLASSED}' || {end}_identity ELSE {end}_class END")


_BY_CLASS = (f"SELECT kind, src, dst, port, verdict, rule_id, {_class_sql('src')}, "
             f"{_class_sql('dst')}, count(*), "
             "CAST(sum(count) AS BIGINT), min(first_seen), max(last_seen), min(id) "
             "FROM flows WHERE last_seen >= :since AND first_seen < :until "
             "GROUP BY 1, 2, 3, 4, 5, 6, 7, 8")
_TEXTS = "SELECT id, src_identity, dst_identity FROM flows WHERE id IN :ids"
_BY_CLASS_TEXT = ("SELECT src_identity FROM flows WHERE src_class = :cls "
                  "UNION ALL SELECT dst_identity FROM flows WHERE dst_class = :cls")


class _Ends:
    """The endpoints of the identity classes of grouped flows: ``""`` reads
    from the flow's key, an :data:`UNCLASSED` text from itself, a class from
    the identity text of a row that holds it (the group's first row, read by
    id, a few hundred rows for a million: :meth:`read`), each without the
    container name (:func:`~cnnf.policy.observed.unnamed_endpoint`)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.classes: dict[str, Endpoint | None] = {}
        self.keyed: dict[tuple[str, str], Endpoint] = {}
        self.wanted: dict[int, list[tuple[int, str, str]]] = {}

    def want(self, row_id: int, end: int, cls: str, key: str) -> None:
        """``cls`` of the source (``end`` 0) or destination (1) of row ``row_id``."""
        if cls and not cls.startswith(UNCLASSED) and cls not in self.classes:
            self.classes[cls] = None
            self.wanted.setdefault(row_id, []).append((end, cls, key))

    def read(self) -> None:
        """The wanted classes' texts. A row gone since it was grouped (retention
        pruned it) leaves its classes to any other row holding them; a class no
        row holds any more stays None: its groups are left out (a read after
        the deletion would not see them either)."""
        texts = text(_TEXTS).bindparams(bindparam("ids", expanding=True))
        ids, wanted = list(self.wanted), self.wanted
        self.wanted = {}
        for at in range(0, len(ids), 500):
            for row_id, s_text, d_text in self.session.connection().execute(
                    texts, {"ids": ids[at:at + 500]}):
                for end, cls, key in wanted.pop(row_id):
                    self.classes[cls] = unnamed_endpoint(d_text if end else s_text, key)
        for gone in wanted.values():
            for _end, cls, key in gone:
                if self.classes.get(cls) is None:
                    found = self.session.connection().execute(
                        text(_BY_CLASS_TEXT), {"cls": cls}).first()
                    if found is not None:
                        self.classes[cls] = unnamed_endpoint(found[0], key)

    def __call__(self, cls: str, key: str) -> Endpoint | None:
        if cls and not cls.startswith(UNCLASSED):
            return self.classes.get(cls)
        found = self.keyed.get((cls, key))
        if found is None:
            found = self.keyed[(cls, key)] = unnamed_endpoint(cls[len(UNCLASSED):], key)
        return found


def _by_class(session: Session, since: datetime, until: datetime) -> Iterator[ObservedFlow]:
    """The window grouped by the identities' classes (``erase_names``). Each
    group names one of its rows (its smallest id); a class's identity is read
    from the first such row (each class's text read and parsed once, without
    the container name: :func:`~cnnf.policy.observed.unnamed_endpoint`), a
    few hundred rows for a million (the benchmark's); a class ``""`` (no
    recorded identity) reads from the flow's key, as the reference does."""
    stmt = text(_BY_CLASS).bindparams(
        bindparam("since", type_=UtcDateTime()), bindparam("until", type_=UtcDateTime())
    ).execution_options(yield_per=20000)
    # With PostgreSQL's default work_mem (4 MB) the planner sorts the window
    # (spilled to disk) to group it; with room for the groups in memory it
    # hashes them in one pass of the table: 1.5 s against 4.8 to 5.8 s for
    # the bench's million rows and 100,000 groups (52 MB; EXPLAIN ANALYZE, load
    # about 6). For this transaction only; a larger window spills to disk.
    _grouping_settings(session)
    result = session.connection().execute(stmt, {"since": since, "until": until})
    ends = _Ends(session)
    times: dict[Any, datetime] = {}  # times repeat: each parsed once

    def utc(value: Any) -> datetime:
        found = times.get(value)
        if found is None:
            if len(times) > 100000:
                times.clear()
            found = times[value] = _utc(value)
        return found

    flow, get_time = ObservedFlow, times.get
    with gc_paused():
        while rows := result.fetchmany(20000):
            for row in rows:
                ends.want(row[12], 0, row[6], row[1])
                ends.want(row[12], 1, row[7], row[2])
            ends.read()
            for kind, src, dst, port, verdict, rule_id, s_cls, d_cls, n, count, f, la, _ in rows:
                s_ep, d_ep = ends(s_cls, src), ends(d_cls, dst)
                if s_ep is not None and d_ep is not None:
                    yield flow(kind, src, dst, port, s_ep, d_ep, verdict, rule_id, n, count,
                               get_time(f) or utc(f), get_time(la) or utc(la))


#: The SQLite fold is checked each time it holds this many more groups: when
#: they are more than half the rows folded so far (rows that do not fold: a scan
#: reaching a distinct address or port per row), it stops and the rows are read
#: one by one (:func:`observed_flows`, streamed): a fold of unfoldable rows holds
#: a group per row before yielding the first (about 0.5 GB per million rows)
#: and is slower than that read (measured: ``bench/learn_simulate.py``).
FOLD_CHECK = 10_000


class _Unfoldable(Exception):
    """The SQLite fold stops: the rows do not fold (:data:`FOLD_CHECK`)."""


def _fold(session: Session, since: datetime, until: datetime, *, sql: str, arguments: int,
          fold: type, failed: list[BaseException]) -> bool:
    """Run the SQLite fold ``sql`` (``cnnf_fold``: ``fold`` as an aggregate
    function of ``arguments`` columns) over the window; False when it stopped
    on rows that do not fold (``failed`` holds what its step raised)."""
    raw = session.connection().connection.driver_connection
    if raw is None:
        raise RuntimeError("no SQLite connection to fold the flows on")
    stmt = text(sql.format(hint=_scan_hint(session, since))).bindparams(
        bindparam("since", type_=UtcDateTime()), bindparam("until", type_=UtcDateTime()))
    raw.create_aggregate("cnnf_fold", arguments, fold)
    try:
        with gc_paused():
            session.connection().execute(stmt, {"since": since, "until": until}).all()
    except DBAPIError as err:
        # SQLite says only "user-defined aggregate's 'step' method raised error".
        if not failed:
            raise
        if not isinstance(failed[0], _Unfoldable):
            raise failed[0] from err
    finally:
        raw.create_aggregate("cnnf_fold", arguments, None)
    return not failed


_FOLD_CLASSES = ("SELECT cnnf_fold(kind, src, dst, port, verdict, rule_id, count, first_seen, "
                 f"last_seen, {_class_sql('src')}, {_class_sql('dst')}, id) "
                 "FROM flows{hint} WHERE last_seen >= :since AND first_seen < :until")


def _folded_sqlite_classes(session: Session, since: datetime,
                           until: datetime) -> Iterator[ObservedFlow]:
    """SQLite, names erased: the rows folded by their identities' classes as the
    scan passes them (an aggregate function: SQLite has no hash aggregate, its
    ``GROUP BY`` sorts the million rows), no JSON parsed per row. Rows that do
    not fold stop it as in :func:`_folded_sqlite`."""
    groups: dict[tuple[Any, ...], _Group] = {}
    check = FOLD_CHECK
    failed: list[BaseException] = []
    rows = 0

    class Fold:
        def step(  # noqa: PLR0917  (SQLite passes the row's columns, in order)
                self, kind: str, src: str, dst: str, port: int, verdict: str, rule_id: int,
                count: int, first: Any, last: Any, s_cls: str, d_cls: str, row_id: int) -> None:
            nonlocal rows
            rows += 1
            try:
                key = (kind, src, dst, port, verdict, rule_id, s_cls, d_cls)
                group = groups.get(key)
                if group is None:
                    groups[key] = [1, count, first, last, row_id]
                    if len(groups) % check == 0 and 2 * len(groups) > rows:
                        raise _Unfoldable
                    return
                group[0] += 1
                group[1] += count
                if first < group[2]:  # noqa: PLR1730
                    group[2] = first
                if last > group[3]:  # noqa: PLR1730
                    group[3] = last
            except BaseException as err:
                failed.append(err)
                raise

        def finalize(self) -> int:
            return len(groups)

    if not _fold(session, since, until, sql=_FOLD_CLASSES, arguments=12, fold=Fold,
                 failed=failed):
        groups.clear()
        yield from observed_flows(session, since, until)
        return
    ends = _Ends(session)
    for (_, src, dst, *_rest, s_cls, d_cls), group in groups.items():
        ends.want(group[4], 0, s_cls, src)
        ends.want(group[4], 1, d_cls, dst)
    ends.read()
    times: dict[Any, datetime] = {}
    flow, get_time = ObservedFlow, times.get

    def utc(value: Any) -> datetime:
        found = times[value] = _utc(value)
        return found

    with gc_paused():
        for (kind, src, dst, port, verdict, rule_id, s_cls, d_cls), g in groups.items():
            s_ep, d_ep = ends(s_cls, src), ends(d_cls, dst)
            if s_ep is not None and d_ep is not None:
                yield flow(kind, src, dst, port, s_ep, d_ep, verdict, rule_id, g[0], g[1],
                           get_time(g[2]) or utc(g[2]), get_time(g[3]) or utc(g[3]))


def _folded_sqlite(session: Session, since: datetime, until: datetime,
                   name_class: NameClass | None = None) -> Iterator[ObservedFlow]:
    """SQLite, names kept: the rows folded by their identity texts as the scan
    passes them (each text parsed once, :class:`_Classes`), names by
    ``name_class``."""
    classes = _Classes(name_class)
    by_text = classes.by_text
    groups: dict[tuple[Any, ...], _Group] = {}
    check = FOLD_CHECK
    failed: list[BaseException] = []  # what step raised (_Unfoldable: rows that do not fold)
    rows = 0

    class Fold:
        """The rows' fold, into ``groups`` (SQLite calls ``step`` per row)."""

        def step(  # noqa: PLR0917  (SQLite passes the row's columns, in order)
                self, kind: str, src: str, dst: str, port: int, verdict: str, rule_id: int,
                count: int, first: Any, last: Any, s_text: str, d_text: str) -> None:
            nonlocal rows
            rows += 1
            try:
                s_id = by_text.get(s_text)
                if s_id is None:
                    s_id = classes(s_text, src)
                d_id = by_text.get(d_text)
                if d_id is None:
                    d_id = classes(d_text, dst)
                key = (kind, src, dst, port, verdict, rule_id, s_id, d_id)
                group = groups.get(key)
                if group is None:
                    groups[key] = [1, count, first, last]
                    if len(groups) % check == 0 and 2 * len(groups) > rows:
                        raise _Unfoldable
                    return
                group[0] += 1
                group[1] += count
                # (no min()/max() calls: a million rows)
                if first < group[2]:  # noqa: PLR1730
                    group[2] = first
                if last > group[3]:  # noqa: PLR1730
                    group[3] = last
            except BaseException as err:
                failed.append(err)  # SQLite's own error names none
                raise

        def finalize(self) -> int:
            return len(groups)

    if not _fold(session, since, until, sql=_FOLD, arguments=11, fold=Fold, failed=failed):
        groups.clear()
        yield from observed_flows(session, since, until)
        return
    keys = EndpointCache()
    texts = classes.texts
    times: dict[Any, datetime] = {}  # times repeat: each text parsed once

    def utc(value: Any) -> datetime:
        found = times.get(value)
        if found is None:
            found = times[value] = _utc(value)
        return found

    flow = ObservedFlow
    with gc_paused():
        for (kind, src, dst, port, verdict, rule_id, s_id, d_id), group in groups.items():
            (s_text, s_key), (d_text, d_key) = texts[s_id], texts[d_id]
            yield flow(kind, src, dst, port, keys(s_text, s_key or src),
                       keys(d_text, d_key or dst), verdict, rule_id, group[0], group[1],
                       utc(group[2]), utc(group[3]))


# --- answers from the pure results ---------------------------------------------------------


def _evidence(e: Any) -> Evidence:
    return Evidence(flows=e.flows, connections=e.count, first_seen=e.first_seen,
                    last_seen=e.last_seen, edges=list(e.edges))


def _verdict(o: Outcome) -> Verdict:
    return Verdict(effect=o.effect, matched=o.matched, rule_id=o.rule_id, rule_name=o.rule_name,
                   label=o.label)


def _edge(e: EdgeChange) -> ChangedEdge:
    return ChangedEdge(kind="host" if e.kind == "host" else "container", src=e.src, dst=e.dst,
                       port=e.port, before=_verdict(e.before), after=_verdict(e.after),
                       recorded=e.recorded, flows=e.flows, connections=e.count,
                       first_seen=e.first_seen, last_seen=e.last_seen)


def _changes(impact: Impact) -> dict[str, Any]:
    return {
        "changed_flows": impact.changed_flows, "changed_connections": impact.changed_count,
        "transitions": impact.transitions, "edges": [_edge(e) for e in impact.edges[:MAX_EDGES]],
        "edges_total": len(impact.edges),
        "rules": [RuleImpact(kind="host" if r.kind == "host" else "container",
                             rule_id=r.rule_id, rule_name=r.rule_name, effect=r.effect,
                             flows=r.flows, connections=r.count, transitions=r.transitions)
                  for r in impact.rules]}


def impact_result(impact: Impact, since: datetime, until: datetime) -> SimulateResult:
    staged = impact.staged if impact.staged is not None else Impact()
    return SimulateResult(since=since, until=until, flows=impact.flows,
                          connections=impact.count, **_changes(impact),
                          staged=StagedChanges(**_changes(staged)))


def _body(p: Proposal, current: Policy, request: ProposalRequest) -> dict[str, Any]:
    """The stored part of a proposal (JSON)."""
    scope = {k: v for k, v in (("namespace", request.namespace), ("host", request.host),
                               ("images", request.images)) if v}
    return {
        "scope": scope, "labelKey": request.label_key,
        "policy": p.policy.model_dump(mode="json", by_alias=True),
        "diff": diff(current, p.policy),
        "proposed": [ProposedRule(kind="host" if r.kind is RuleKind.HOST else "container",
                                  rule=r.rule, replaces=r.replaces, src_basis=r.src_basis,
                                  dst_basis=r.dst_basis, evidence=_evidence(r.evidence)
                                  ).model_dump(mode="json", by_alias=True) for r in p.rules],
        "objects": [ProposedObject(name=o.name, kind=o.kind.value, new=o.new, basis=o.basis
                                   ).model_dump(mode="json", by_alias=True) for o in p.objects],
        "covered": [CoveredRule(kind="host" if c.kind is RuleKind.HOST else "container",
                                rule_id=c.rule_id, rule_name=c.rule_name, effect=c.effect,
                                evidence=_evidence(c.evidence)
                                ).model_dump(mode="json", by_alias=True) for c in p.covered],
        "skipped": p.skipped, "unallowed": p.unallowed, "learntFlows": p.learnt_flows,
    }


def _summary(row: ProposalRow) -> ProposalSummary:
    return ProposalSummary(id=row.id, created=row.created, actor=row.actor, since=row.since,
                           until=row.until, base_revision=row.base_revision,
                           applied_revision=row.applied_revision,
                           rules=len(row.body.get("proposed", [])),
                           learnt_flows=int(row.body.get("learntFlows", 0)))


def _out(row: ProposalRow) -> ProposalOut:
    data = {**_summary(row).model_dump(by_alias=True), **row.body}
    data.pop("learntFlows", None)
    return ProposalOut.model_validate({**data, "learntFlows": row.body.get("learntFlows", 0)})


# --- the service ---------------------------------------------------------------------------


class LearningService:
    def __init__(self, session: Session, policy: PolicyService) -> None:
        self.session = session
        self.policies = policy

    def propose(self, request: ProposalRequest) -> ProposalOut:
        # The learner's objects (a hundred thousand flows' indexes, evidence per
        # rule) and the proposal's answer hold no cycles to collect, and the
        # collector's passes over that heap cost seconds (measured: about a
        # tenth of a million flows' proposal). The pause is process-wide: other
        # requests' threads run without the cyclic collector for these seconds
        # (reference counting still frees their garbage; cycles wait for the
        # next collection), and overlapping calls may end each other's pause
        # early (slower, not wrong).
        with gc_paused():
            return self._propose(request)

    def _propose(self, request: ProposalRequest) -> ProposalOut:
        since, until = _window(request, self.policies.now())
        current = self.policies.policy()
        self.session.rollback()  # no read snapshot held through the long read below
        scope = Scope(namespace=request.namespace, host=request.host,
                      images=tuple(request.images))
        flows = grouped_flows(self.session, since, until,
                              erase_names=not names_containers(current), policies=(current,))
        if scope != Scope():
            flows = (f for f in flows if scope.admits(f))
        proposal = learn(current, flows, LearnOptions(label_key=request.label_key,
                                                      default_effect=request.default_effect))
        row = ProposalRow(created=self.policies.now(), actor=self.policies.actor, since=since,
                          until=until, base_revision=current.revision, applied_revision=None,
                          body=_body(proposal, current, request))
        try:
            self.session.add(row)
            self.session.commit()
        except BaseException:
            self.session.rollback()
            raise
        return _out(row)

    def _row(self, proposal_id: int) -> ProposalRow:
        row = self.session.get(ProposalRow, proposal_id)
        if row is None:
            raise NotFound(f"no proposal with id {proposal_id}")
        return row

    def get(self, proposal_id: int) -> ProposalOut:
        return _out(self._row(proposal_id))

    def page(self, limit: int, offset: int) -> ProposalPage:
        total = self.session.scalar(select(func.count(ProposalRow.id))) or 0
        rows = self.session.scalars(select(ProposalRow).order_by(ProposalRow.id.desc())
                                    .limit(limit).offset(offset))
        return ProposalPage(total=total, limit=limit, offset=offset,
                            items=[_summary(r) for r in rows])

    def apply(self, proposal_id: int, request: ApplyRequest) -> Applied:
        """The chosen proposed rules (all by default) and the objects they use,
        into the policy as one change (one revision); refused (409) when the
        policy changed since the proposal was learnt."""
        row = self._row(proposal_id)
        out = _out(row)
        proposed = {(r.kind, r.rule.id): r for r in out.proposed}
        wanted = (list(proposed) if request.rules is None
                  else [(ref.kind, ref.id) for ref in request.rules])
        missing = [FieldError(f"rules[{i}]", f"proposal {proposal_id} proposes no {k} rule "
                                             f"with id {rid}")
                   for i, (k, rid) in enumerate(wanted) if (k, rid) not in proposed]
        if missing:
            raise Conflict("; ".join(str(e) for e in missing), missing)
        current = self.policies.policy()
        if current.revision != row.base_revision:
            raise Conflict(f"the policy changed since proposal {proposal_id} was learnt "
                           f"(revision {row.base_revision}, now {current.revision}): "
                           "learn again")
        chosen = [proposed[k] for k in dict.fromkeys(wanted)]
        new_objects = {o.name: o for o in out.policy.objects
                       if current.object(o.name) is None}
        used = {n for r in chosen for n in (r.rule.src, r.rule.dst)}
        objects = [*current.objects, *(o for n, o in new_objects.items() if n in used)]
        lists = {"container": list(current.container_rules), "host": list(current.host_rules)}
        for r in chosen:
            rules = lists[r.kind]
            at = next((i for i, old in enumerate(rules) if old.id == r.rule.id), None)
            if r.replaces is not None and at is not None:
                rules[at] = r.rule
            elif at is None:
                rules.append(r.rule)
            else:
                raise Conflict(f"{r.kind} rule {r.rule.id} exists: learn again")
        effect = request.default_effect or out.policy.default_effect
        new = current.model_copy(update={
            "objects": tuple(objects), "container_rules": tuple(lists["container"]),
            "host_rules": tuple(lists["host"]), "default_effect": effect})
        summary = diff(current, new)

        def mark_applied(stored: Policy) -> None:
            self._row(proposal_id).applied_revision = stored.revision

        # One transaction: the new policy, its revision and change record, and
        # the proposal marked applied; a failure anywhere leaves all as it was.
        stored = self.policies.replace(new, action="policy.learn.apply",
                                       expected_revision=row.base_revision, also=mark_applied)
        return Applied(proposal=proposal_id, revision=stored.revision, rules=len(chosen),
                       objects=len([n for n in new_objects if n in used]), diff=summary)

    def draft(self, request: SimulateRequest, current: Policy) -> Policy:
        if request.policy is not None:
            return request.policy
        if request.proposal is not None:
            return self.get(request.proposal).policy
        assert request.changes is not None
        return apply_changes(current, request.changes)

    def simulate(self, request: SimulateRequest) -> SimulateResult:
        with gc_paused():  # as in propose
            return self._simulate(request)

    def _simulate(self, request: SimulateRequest) -> SimulateResult:
        since, until = _window(request, self.policies.now())
        current = self.policies.policy()
        draft = self.draft(request, current)
        self.session.rollback()
        try:
            compile_policy(draft, verdict_cache=0)
        except PolicyValidationError as exc:
            if request.changes is None:
                raise  # a whole draft that is no valid policy: 422
            # Changes that do not fit the stored policy (a rule naming an object
            # it lacks, a name it already has): a conflict with it, named.
            errors = [FieldError(f"changes: {e.path}", e.message) for e in exc.errors]
            raise Conflict("the changes do not fit the current policy: "
                           + "; ".join(str(e) for e in errors), errors) from None
        flows = grouped_flows(self.session, since, until,
                              erase_names=not names_containers(current, draft),
                              policies=(current, draft))
        impact = simulate(current, draft, flows)
        return impact_result(impact, since, until)


def apply_changes(current: Policy, changes: RuleChanges) -> Policy:
    """``current`` with ``changes``: objects replaced by name or added, rules
    replaced by id in place or added at the end, rules removed, the default
    effect set. A removed rule that does not exist is an error naming it."""
    objects = {o.name: o for o in current.objects}
    for obj in changes.objects:
        objects[obj.name] = obj
    lists: dict[str, list[Rule]] = {"container": list(current.container_rules),
                                    "host": list(current.host_rules)}
    errors: list[FieldError] = []
    for i, ref in enumerate(changes.remove_rules):
        rules = lists[ref.kind]
        keep = [r for r in rules if r.id != ref.id]
        if len(keep) == len(rules):
            errors.append(FieldError(f"changes.removeRules[{i}]",
                                     f"there is no {ref.kind} rule with id {ref.id}"))
        lists[ref.kind] = keep
    if errors:
        raise Conflict("; ".join(str(e) for e in errors), errors)
    for kind, new_rules in (("container", changes.container_rules),
                            ("host", changes.host_rules)):
        rules = lists[kind]
        for rule in new_rules:
            at = next((i for i, r in enumerate(rules) if r.id == rule.id), None)
            if at is None:
                rules.append(rule)
            else:
                rules[at] = rule
    update: dict[str, Any] = {"objects": tuple(objects.values()),
                              "container_rules": tuple(lists["container"]),
                              "host_rules": tuple(lists["host"])}
    if changes.default_effect is not None:
        update["default_effect"] = changes.default_effect
    return current.model_copy(update=update)
