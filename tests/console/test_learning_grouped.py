"""Learning and simulating read the window's flows folded in the store
(:func:`grouped_flows`): on random flow sets, in real SQLite and PostgreSQL
stores, they give exactly what the rows read one by one give
(:func:`observed_flows`, the reference)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, MetaData, Table, delete, insert, text
from sqlalchemy.orm import Session

from cnnf.console.services import classes, learning
from cnnf.console.services.learning import grouped_flows, names_containers, observed_flows
from cnnf.console.services.records import flow_ident
from cnnf.console.store.db import connect, downgrade, migrate
from cnnf.console.store.models import FlowRow
from cnnf.model import Effect, Policy
from cnnf.model.records import EndpointInfo
from cnnf.policy.learn import LearnOptions, learn
from cnnf.policy.observed import recorded_text
from cnnf.policy.simulate import simulate

T0 = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
SINCE, UNTIL = T0 - timedelta(hours=1), T0 + timedelta(hours=1)

OBJECTS: list[dict[str, Any]] = [
    {"kind": "container", "name": "api", "selector": {"labels": ["app=api"]}},
    {"kind": "container", "name": "db", "selector": {"images": ["shop/db"]}},
    {"kind": "container", "name": "team-a", "selector": {"namespaces": ["a"]}},
    {"kind": "host", "name": "n1", "selector": {"hosts": ["n1"]}},
    {"kind": "subnet", "name": "ten", "cidrs": ["10.0.0.0/24"]},
    {"kind": "subnet", "name": "tests", "cidrs": ["203.0.113.0/25"]},
    {"kind": "dns", "name": "partner", "domains": ["x.example"]},
]
BY_NAME = {"kind": "container", "name": "api-1", "selector": {"containers": ["api-1"]}}


def policy(rules: list[dict[str, Any]], *, default: str = "allow", by_name: bool = False,
           host_rules: list[dict[str, Any]] = ()) -> Policy:  # type: ignore[assignment]
    return Policy.model_validate({
        "objects": [*OBJECTS, *([BY_NAME] if by_name else [])], "default_effect": default,
        "container_rules": [{"id": i + 1, "name": f"r{i + 1}", **r} for i, r in enumerate(rules)],
        "host_rules": [{"id": i + 1, "name": f"h{i + 1}", **r} for i, r in enumerate(host_rules)],
    })


POLICIES = [
    Policy(),
    policy([{"src": "api", "dst": "db", "ports": [5432]},
            {"src": "team-a", "dst": "tests", "ports": "*", "effect": "prevent"},
            {"src": "api", "dst": "partner", "ports": [443], "effect": "alert"}],
           host_rules=[{"src": "n1", "dst": "ten", "ports": [22]}]),
    policy([{"src": "api-1", "dst": "db", "ports": "*", "effect": "prevent"},
            {"src": "api", "dst": "ten", "ports": [80, 443]},
            {"src": "db", "dst": "api", "ports": "*", "staged": True, "effect": "prevent"}],
           default="prevent", by_name=True),
    policy([{"src": "api", "dst": "ten", "ports": "*"},
            {"src": "team-a", "dst": "db", "ports": [5432], "effect": "alert"}],
           default="alert"),
]

CONTAINERS = [
    EndpointInfo(kind="container", image=image, container=name, namespace=ns, host=host,
                 labels=labels, address=address)
    for image, labels, address in (("shop/api:1.0", {"app": "api"}, "10.0.0.1"),
                                   ("shop/api:2.0", {"app": "api"}, None),
                                   ("shop/db:1", {}, "10.0.0.2"),
                                   ("shop/db:1", {"app": "db", "tier": "x"}, "10.0.1.2"))
    for name in ("api-1", "api-2", "api-3")  # POLICIES[2] names api-1: api-2 and -3 fold
    for ns, host in (("a", "n1"), ("b", "n2"))
]
OTHERS = [
    EndpointInfo(kind="host", host="n1", address="10.0.0.7"),
    EndpointInfo(kind="host", host="n2"),
    EndpointInfo(kind="address", address="203.0.113.1"),
    EndpointInfo(kind="address", address="203.0.113.200", domain="x.example"),
    EndpointInfo(kind="address", address="10.0.0.2"),
    EndpointInfo(kind="address", address="fd00::1"),
    # too long to record: kept as a digest (never learnt)
    EndpointInfo(kind="container", image="shop/big:1", labels={"k": "v" * 5000}),
]


def _key(ep: EndpointInfo) -> str:
    if ep.kind == "container":
        return f"image:{ep.image}"
    if ep.kind == "host":
        return f"host:{ep.host}"
    return f"dns:{ep.domain}" if ep.domain else f"addr:{ep.address}"


#: (key, recorded identity text) of one end; some stored before identities
#: were kept (empty text: read from the key)
ENDS = st.one_of(
    st.sampled_from(CONTAINERS + OTHERS).map(lambda e: (e, True)),
    st.sampled_from(CONTAINERS[:4] + OTHERS[:4]).map(lambda e: (e, False)),
)
TIMES = st.sampled_from([T0 - timedelta(hours=2), T0 - timedelta(minutes=1), T0,
                         T0 + timedelta(minutes=1), T0 + timedelta(hours=2)])


def row(src: EndpointInfo, dst: EndpointInfo, port: int, *, kind: str = "container",
        recorded: tuple[bool, bool] = (True, True), verdict: str = "observed", rule_id: int = 0,
        count: int = 1, first: datetime = T0, last: datetime = T0) -> dict[str, Any]:
    s_text = recorded_text(src, address=False) if recorded[0] else ""
    d_text = recorded_text(dst, address=True) if recorded[1] else ""
    return {"kind": kind, "src": _key(src), "dst": _key(dst), "port": port, "verdict": verdict,
            "rule_id": rule_id, "rule_name": "", "count": count, "first_seen": first,
            "last_seen": last, "src_identity": s_text, "dst_identity": d_text,
            "ident": flow_ident(s_text, d_text)}


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    (src, src_rec), (dst, dst_rec) = draw(ENDS), draw(ENDS)
    first = draw(TIMES)
    verdict = draw(st.sampled_from(["allow", "alert", "prevent", "observed"]))
    return row(src, dst, draw(st.sampled_from([0, 22, 80, 443, 5432])),
               kind=draw(st.sampled_from(["container", "container", "host"])),
               recorded=(src_rec, dst_rec), verdict=verdict,
               rule_id=0 if verdict == "observed" else draw(st.sampled_from([1, 2])),
               count=draw(st.integers(1, 9)), first=first,
               last=first + draw(st.sampled_from([timedelta(0), timedelta(minutes=1)])))


FLOW_KEY = ("kind", "src", "dst", "port", "verdict", "rule_id", "ident")
FLOW_SETS = st.lists(rows(), max_size=60, unique_by=lambda r: tuple(r[k] for k in FLOW_KEY))


@pytest.fixture
def store(db_url: str) -> Iterator[Engine]:
    engine = connect(db_url)
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _fill(engine: Engine, flows: list[dict[str, Any]], *, stored: str = "now",
          walked: int = 0) -> None:
    """The store holds ``flows`` only: stored by the Console as it is
    (``now``), or as it was before migration 0013, without identity classes,
    then migrated (``before_0013``: the columns added, the classes left to the
    Console's background walk, which has walked the first ``walked`` ids, in
    batches of 3), or after the migration by a writer that does not compute
    classes (``unclassed``: a replica of the previous version during an
    upgrade)."""
    if stored == "unclassed":
        with engine.begin() as connection:
            connection.execute(delete(FlowRow))
            if flows:
                connection.execute(insert(FlowRow), [
                    {**f, "src_class": "", "dst_class": ""} for f in flows])
        return
    if stored == "before_0013":
        downgrade(engine, "0012")
        with engine.begin() as connection:
            table = Table("flows", MetaData(), autoload_with=connection)
            assert "src_class" not in table.c
            connection.execute(delete(table))
            if flows:
                connection.execute(insert(table), flows)
        migrate(engine)
        with Session(engine) as s:
            walk = classes.start(s)
            while walk is not None and not walk.done and walk.next_id - walk.first < walked:
                classes.step(s, walk, batch=min(3, walked - (walk.next_id - walk.first)))
        return
    with Session(engine) as s:
        s.execute(delete(FlowRow))
        if flows:
            s.execute(insert(FlowRow), flows)
        s.commit()


#: Replicas api-1 and api-2 of one workload, one of them named by an object.
API_1, API_2, DB = CONTAINERS[0], CONTAINERS[2], CONTAINERS[12]
REPLICAS = [row(API_1, DB, 5432, count=2, first=T0 - timedelta(minutes=1)),
            row(API_2, DB, 5432, count=3, last=T0 + timedelta(minutes=1)),
            row(API_2, DB, 5432, verdict="prevent", rule_id=1)]

#: Three replicas reaching 160 bare addresses (IPv4 and IPv6), some on port 0:
#: over the address cap (MAX_ADDRESSES), one source.
SCAN_ADDRESSES = [*(f"198.51.100.{i + 1}" for i in range(80)),
                  *(f"2001:db8::{i + 1:x}" for i in range(80))]
CAPPED = [row(EndpointInfo(kind="container", image="shop/api:1.0", container=f"api-{r}",
                           namespace="a", host="n1", labels={"app": "api"}),
              EndpointInfo(kind="address", address=a), 0 if i % 40 == 0 else 443 + r,
              count=r + 1, first=T0 - timedelta(minutes=r))
          for r in range(3) for i, a in enumerate(SCAN_ADDRESSES)]


@example(flows=CAPPED, current=POLICIES[0], draft=POLICIES[1], label_key="app",
         stored="now", walked=0)
@example(flows=CAPPED, current=POLICIES[2], draft=POLICIES[3], label_key="", stored="now",
         walked=0)
@example(flows=REPLICAS, current=POLICIES[2], draft=POLICIES[1], label_key="app",
         stored="now", walked=0)
@example(flows=REPLICAS, current=POLICIES[1], draft=POLICIES[2], label_key="app",
         stored="now", walked=0)
@example(flows=REPLICAS, current=POLICIES[0], draft=POLICIES[3], label_key="app",
         stored="now", walked=0)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(flows=REPLICAS, current=POLICIES[0], draft=POLICIES[1], label_key="app",
         stored="before_0013", walked=0)
@example(flows=CAPPED, current=POLICIES[1], draft=POLICIES[0], label_key="app",
         stored="before_0013", walked=1000)
@example(flows=REPLICAS, current=POLICIES[0], draft=POLICIES[3], label_key="app",
         stored="before_0013", walked=1)  # replicas api-1 (classed) and api-2 (not yet)
@example(flows=REPLICAS, current=POLICIES[1], draft=POLICIES[3], label_key="app",
         stored="unclassed", walked=0)
@given(flows=FLOW_SETS, current=st.sampled_from(POLICIES), draft=st.sampled_from(POLICIES),
       label_key=st.sampled_from(["app", ""]),
       stored=st.sampled_from(["now", "before_0013", "unclassed"]),
       walked=st.integers(0, 70))
def test_grouped_flows_learn_and_simulate_as_the_rows_do(  # noqa: PLR0917
        store: Engine, flows: list[dict[str, Any]], current: Policy, draft: Policy,
        label_key: str, stored: str, walked: int) -> None:
    """Also over rows stored before migration 0013 (none, some or all of them
    given their classes by the background walk) and rows stored after it
    without classes (read from their texts)."""
    _fill(store, flows, stored=stored, walked=walked)
    options = LearnOptions(label_key=label_key, default_effect=Effect.PREVENT)
    with Session(store) as s:
        reference = learn(current, observed_flows(s, SINCE, UNTIL), options)
        grouped = learn(current, grouped_flows(s, SINCE, UNTIL,
                                               erase_names=not names_containers(current),
                                               policies=(current,)),
                        options)
        assert grouped == reference
        reference_impact = simulate(current, draft, observed_flows(s, SINCE, UNTIL))
        impact = simulate(current, draft, grouped_flows(
            s, SINCE, UNTIL, erase_names=not names_containers(current, draft),
            policies=(current, draft)))
        assert impact == reference_impact
    in_window = [r for r in flows if r["last_seen"] >= SINCE and r["first_seen"] < UNTIL]
    assert reference_impact.flows == len(in_window)


def test_replicas_fold_into_one_group_unless_an_object_selects_by_name(store: Engine) -> None:
    """Ten replicas of one workload reaching one address: one folded flow (the
    container names left out), ten rows; ten flows when names are kept."""
    replicas = [EndpointInfo(kind="container", image="shop/api:1", container=f"api-{i}",
                             namespace="a", labels={"app": "api"}) for i in range(10)]
    dst = EndpointInfo(kind="address", address="203.0.113.9")
    d_text = recorded_text(dst)
    flows = [{"kind": "container", "src": "image:shop/api:1", "dst": "addr:203.0.113.9",
              "port": 443, "verdict": "observed", "rule_id": 0, "rule_name": "", "count": i + 1,
              "first_seen": T0 + timedelta(seconds=i), "last_seen": T0 + timedelta(seconds=i),
              "src_identity": recorded_text(src, address=False), "dst_identity": d_text,
              "ident": flow_ident(recorded_text(src, address=False), d_text)}
             for i, src in enumerate(replicas)]
    _fill(store, flows)
    with Session(store) as s:
        (folded,) = grouped_flows(s, SINCE, UNTIL, erase_names=True)
        assert (folded.flows, folded.count) == (10, 55)
        assert (folded.first_seen, folded.last_seen) == (T0, T0 + timedelta(seconds=9))
        assert folded.src_ep.container is not None and folded.src_ep.container.name == ""
        kept = list(grouped_flows(s, SINCE, UNTIL, erase_names=False))
        assert sorted(f.src_ep.container.name for f in kept if f.src_ep.container) == sorted(
            r.container for r in replicas)
        # An object naming api-1 and one naming api-[5-9]: three groups of
        # names (api-1; api-5 to api-9; the rest), each evaluated as one of them.
        named = Policy.model_validate({"objects": [
            {"kind": "container", "name": "one", "selector": {"containers": ["api-1"]}},
            {"kind": "container", "name": "late", "selector": {"containers": ["api-[5-9]"]}}]})
        by_class = sorted((f.flows, f.count, f.src_ep.container.name)
                          for f in grouped_flows(s, SINCE, UNTIL, erase_names=False,
                                                 policies=(named,)) if f.src_ep.container)
        assert [(n, count) for n, count, _ in by_class] == [
            (1, 2), (4, 1 + 3 + 4 + 5), (5, 6 + 7 + 8 + 9 + 10)]
        assert learn(named, grouped_flows(s, SINCE, UNTIL, erase_names=False,
                                          policies=(named,))) == learn(
            named, observed_flows(s, SINCE, UNTIL))
        draft = Policy.model_validate({"objects": [
            o.model_dump(mode="json", by_alias=True) for o in named.objects],
            "default_effect": "prevent", "container_rules": [
                {"id": 1, "name": "late", "src": "late", "dst": "one", "ports": "*"}]})
        assert simulate(named, draft, grouped_flows(s, SINCE, UNTIL, erase_names=False,
                                                    policies=(named, draft))) == simulate(
            named, draft, observed_flows(s, SINCE, UNTIL))
        assert by_class[0][2] == "api-1"
        assert by_class[1][2] in {"api-0", "api-2", "api-3", "api-4"}
        assert by_class[2][2] in {f"api-{i}" for i in range(5, 10)}


def test_a_stored_text_that_is_no_json_object_is_read_as_the_rows_are(store: Engine) -> None:
    """Texts the Console never writes (not JSON, a JSON scalar): read from the
    key as the reference read does (their class is empty), names erased or kept."""
    flows = [{"kind": "container", "src": "image:shop/api:1", "dst": "addr:203.0.113.9",
              "port": 443, "verdict": "observed", "rule_id": 0, "rule_name": "", "count": 2,
              "first_seen": T0, "last_seen": T0, "src_identity": text, "dst_identity": "",
              "ident": flow_ident(text, "")} for text in ("not json", '"a string"', "[1]")]
    _fill(store, flows)
    with Session(store) as s:
        reference = learn(Policy(), observed_flows(s, SINCE, UNTIL))
        assert learn(Policy(), grouped_flows(s, SINCE, UNTIL, erase_names=True)) == reference
        assert learn(Policy(), grouped_flows(s, SINCE, UNTIL, erase_names=False)) == reference
        assert learn(Policy(), grouped_flows(s, SINCE, UNTIL, erase_names=False,
                                             policies=(POLICIES[2],))) == reference
        assert reference.learnt_flows == 3 and len(reference.rules) == 1


def test_a_row_deleted_while_the_window_is_read_is_no_error(
        store: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention may delete rows between the grouping and the read of the
    identity texts of each group's first row: a class still held by another
    row is read from it; a group whose rows are all gone is left out (a read
    after the deletion would not see it either)."""
    lone = row(API_1, EndpointInfo(kind="address", address="203.0.113.77"), 443)
    _fill(store, [*REPLICAS[:2], lone])
    read = learning._Ends.read

    def deleted_first(self: Any) -> None:
        with store.begin() as other:  # another connection, as retention's
            other.execute(text("DELETE FROM flows WHERE id = (SELECT min(id) FROM flows) "
                               "OR dst = 'addr:203.0.113.77'"))
        monkeypatch.setattr(learning._Ends, "read", read)
        read(self)

    monkeypatch.setattr(learning._Ends, "read", deleted_first)
    with Session(store) as s:
        (folded,) = grouped_flows(s, SINCE, UNTIL, erase_names=True)
        expected = learning.unnamed_endpoint(REPLICAS[1]["src_identity"], REPLICAS[1]["src"])
        assert folded.src_ep == expected and folded.src_ep.container is not None
        assert folded.src_ep.container.namespace == "a"
        assert (folded.dst, folded.flows) == ("image:shop/db:1", 2)


def _scan(n: int) -> list[dict[str, Any]]:
    """``n`` rows that do not fold (a scan: one distinct destination each)."""
    return [row(API_1, EndpointInfo(kind="address", address=f"203.0.{i // 250}.{i % 250 + 1}"),
                1 + i % 1000, first=T0 + timedelta(seconds=i % 60)) for i in range(n)]


@pytest.mark.parametrize("erase_names", [True, False])
def test_sqlite_stops_folding_rows_that_do_not_fold(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    erase_names: bool) -> None:
    """SQLite folds in an aggregate function (by the identities' classes, or
    with the names kept by their texts): rows that do not fold (more groups
    than half the rows at a check) are read one by one, streamed
    (:func:`observed_flows`), not held as a group per row: two replicas' rows
    after the scan stay two flows, as the rows."""
    monkeypatch.setattr(learning, "FOLD_CHECK", 50)
    engine = connect(f"sqlite:///{tmp_path / 'console.db'}")
    try:
        migrate(engine)
        _fill(engine, [*_scan(200), *REPLICAS[:2]])
        with Session(engine) as s:
            folded = list(grouped_flows(s, SINCE, UNTIL, erase_names=erase_names))
            assert len(folded) == 202 and {f.flows for f in folded} == {1}
            assert learn(Policy(), iter(folded)) == learn(Policy(),
                                                          observed_flows(s, SINCE, UNTIL))
        # Rows that fold are folded still: at the check, 50 groups of 4 rows.
        _fill(engine, [{**r, "ident": f"{r['ident']}-{copy}", "count": copy + 1}
                       for r in _scan(60) for copy in range(4)])
        with Session(engine) as s:
            folded = list(grouped_flows(s, SINCE, UNTIL, erase_names=erase_names))
            assert len(folded) == 60 and {(f.flows, f.count) for f in folded} == {(4, 10)}
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_postgresql_streams_the_groups_from_a_server_side_cursor(store: Engine) -> None:
    """PostgreSQL's groups are fetched in batches from a server-side cursor
    (open in the session while the flows are read), not all held client-side."""
    _fill(store, _scan(300))
    with Session(store) as s:
        flows = grouped_flows(s, SINCE, UNTIL, erase_names=True)
        next(flows)
        assert s.execute(text("SELECT count(*) FROM pg_cursors")).scalar_one() == 1
        assert 1 + sum(1 for _ in flows) == 300


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("limit", [("MAX_TEXT_CLASSES", 50), ("MAX_TEXT_CHARS", 5000)])
def test_postgresql_names_kept_groups_by_the_texts_when_they_are_too_many(
        store: Engine, monkeypatch: pytest.MonkeyPatch, limit: tuple[str, int]) -> None:
    """Names kept, PostgreSQL gives each distinct identity text of the window an
    integer to group by; past MAX_TEXT_CLASSES texts or MAX_TEXT_CHARS
    characters of them it groups by the texts themselves: the same flows either
    way."""
    _fill(store, [*_scan(120), *REPLICAS])
    with Session(store) as s:
        reference = learn(POLICIES[2], observed_flows(s, SINCE, UNTIL))
        by_integers = list(grouped_flows(s, SINCE, UNTIL, erase_names=False,
                                         policies=(POLICIES[2],)))
        s.rollback()
        monkeypatch.setattr(learning, *limit)
        by_texts = list(grouped_flows(s, SINCE, UNTIL, erase_names=False,
                                      policies=(POLICIES[2],)))
        assert len(by_texts) == len(by_integers) == 123
        assert learn(POLICIES[2], iter(by_integers)) == reference
        assert learn(POLICIES[2], iter(by_texts)) == reference


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_postgresql_names_kept_reads_a_text_stored_between_its_two_queries(
        store: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names kept, PostgreSQL reads the window's distinct texts, then groups the
    rows by them: a flow stored in between (each statement sees the store as
    it is then) has a text without an integer, and is grouped by its text,
    read as the rows read it, not from its key."""
    _fill(store, REPLICAS[:2])
    late = row(CONTAINERS[3], DB, 5432, count=4)  # api-2 in namespace b: a new text
    grouping = learning._text_class_flows

    def store_one_first(*args: Any) -> Iterator[Any]:
        with store.begin() as connection:
            connection.execute(insert(FlowRow), [late])
        return grouping(*args)

    monkeypatch.setattr(learning, "_text_class_flows", store_one_first)
    with Session(store) as s:
        grouped = list(grouped_flows(s, SINCE, UNTIL, erase_names=False,
                                     policies=(POLICIES[2],)))
        s.rollback()
        reference = list(observed_flows(s, SINCE, UNTIL))
    assert len(reference) == 3
    assert learn(POLICIES[2], iter(grouped)) == learn(POLICIES[2], iter(reference))
    (added,) = [f for f in grouped if f.count == 4]
    assert added.src_ep.container is not None
    assert (added.src_ep.container.name, added.src_ep.container.namespace) == ("api-2", "b")


@pytest.mark.parametrize("erase_names", [True, False])
def test_sqlite_fold_raises_the_error_its_step_met(tmp_path: Path, erase_names: bool) -> None:
    """An error inside the fold (a row SQLite's dynamic typing let through: a
    time stored as a number) reaches the caller as itself, not as SQLite's
    "user-defined aggregate's 'step' method raised error"."""
    engine = connect(f"sqlite:///{tmp_path / 'console.db'}")
    try:
        migrate(engine)
        # two rows of one group: one seen with enforcement off
        _fill(engine, [REPLICAS[0], {**REPLICAS[0], "mode": "observed"}])
        with Session(engine) as s:
            s.execute(text("UPDATE flows SET first_seen = 12 WHERE id = "
                           "(SELECT min(id) FROM flows)"))
            with pytest.raises(TypeError, match="'<' not supported"):
                list(grouped_flows(s, SINCE, UNTIL, erase_names=erase_names))
    finally:
        engine.dispose()
