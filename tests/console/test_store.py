"""The store: migrations from an empty database, models matching them, the
policy serializer round trip."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, func, insert, inspect, select, text
from sqlalchemy.orm import Session

from cnnf.console.services import classes
from cnnf.console.services.learning import grouped_flows
from cnnf.console.services.policy import PolicyService, RuleDraft
from cnnf.console.services.records import (
    AuditFilter,
    AuditRecord,
    AuditService,
    FlowFilter,
    FlowRecord,
    FlowService,
    flow_ident,
    prune,
)
from cnnf.console.store.db import (
    connect,
    current_revision,
    downgrade,
    migrate,
    revision_heads,
)
from cnnf.console.store.models import AuditRow, Base, OutboxRow
from cnnf.model import (
    BlockMode,
    ContainerObject,
    ContainerSelector,
    DnsObject,
    Effect,
    HostObject,
    HostSelector,
    Policy,
    Rule,
    RuleKind,
    SubnetObject,
)
from cnnf.model.records import EndpointInfo
from cnnf.policy.observed import identity_class, recorded_text

TABLES = {"settings", "network_objects", "rules", "changes", "users", "tokens", "audits",
          "flows", "overlays", "enrollment_tokens", "defenders", "inventory_state",
          "report_batches", "proposals", "forward_outbox", "forward_sinks", "leases",
          "alembic_version"}


def test_migrate_from_empty_database(db_url: str) -> None:
    engine = connect(db_url)
    try:
        assert set(inspect(engine).get_table_names()) == set()
        migrate(engine)
        assert set(inspect(engine).get_table_names()) == TABLES
        assert current_revision(engine) == revision_heads()[0]
        migrate(engine)  # applying again is a no-op
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        with Session(engine) as session:
            policy = PolicyService(session).policy()
        assert policy == Policy(revision=0)
        downgrade(engine, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()


def test_audits_stored_before_0004_name_no_pod_after_it(db_url: str) -> None:
    """The upgrade that adds the audits' pod columns keeps the rows already
    stored (pods empty) and their indexes; new rows name pods; the downgrade
    keeps the rows without them."""
    engine = connect(db_url)
    old = {"time": datetime(2026, 1, 2, 3, 0, tzinfo=UTC), "type": "container",
           "rule_id": 6, "rule_name": "api-not-db", "blocked": True, "effect": "prevent",
           "src_image": "shop/api", "src_container": "api", "src_namespace": "",
           "src_hostname": "node-1", "src_address": "10.1.0.2", "dst_image": "shop/db",
           "dst_container": "db", "dst_namespace": "", "dst_hostname": "node-2",
           "dst_address": "10.2.0.3", "port": 5432, "dst_subnet": "", "dst_domain": "",
           "msg": "blocked connection", "count": 2, "revision": 1, "defender": "node-1"}
    try:
        migrate(engine, "0003")
        with engine.begin() as connection:
            # As 0003's code stored them: the table as it was then, not the model.
            table = Table("audits", MetaData(), autoload_with=connection)
            assert "src_pod" not in table.c
            connection.execute(insert(table), [old, {**old, "port": 443, "count": 1}])
        migrate(engine)
        assert current_revision(engine) == revision_heads()[0]
        indexes = {i["name"] for i in inspect(engine).get_indexes("audits")}
        assert {"ix_audits_src_image", "ix_audits_dst_image", "ix_audits_rule_name",
                "ix_audits_time"} <= indexes
        with Session(engine) as session:
            service = AuditService(session)
            service.insert_many([AuditRecord(
                time=datetime(2026, 1, 2, 4, 0, tzinfo=UTC), blocked=False,
                effect=Effect.ALERT, src_image="kube/web:1.0", src_namespace="storefront",
                src_pod="web-7d4b9c6f5-x2k8p", dst_pod="postgres-0", port=5432)])
            page = service.query(AuditFilter(), limit=10, offset=0)
        assert page.total == 3
        assert [(a.port, a.count, a.src_container, a.src_pod, a.dst_pod)
                for a in page.items] == [
            (5432, 1, "", "web-7d4b9c6f5-x2k8p", "postgres-0"),
            (443, 1, "api", "", ""), (5432, 2, "api", "", "")]
        downgrade(engine, "0003")
        with engine.connect() as connection:
            table = Table("audits", MetaData(), autoload_with=connection)
            assert "src_pod" not in table.c and "dst_pod" not in table.c
            assert connection.scalar(select(func.count()).select_from(table)) == 3
        migrate(engine)
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        engine.dispose()


def test_flows_stored_before_0008_stay_enforced_and_keep_aggregating(db_url: str) -> None:
    """0008 adds the flows' mode and "would" verdict to their aggregation key:
    rows stored before are enforced flows with no would verdict, and reports
    after it still fold into them; a would verdict gets its own row. The
    downgrade keeps the rows it can hold."""
    engine = connect(db_url)
    t0 = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    old = {"kind": "container", "src": "image:shop/api", "dst": "image:shop/db", "port": 5432,
           "verdict": "observed", "rule_id": 0, "rule_name": "", "count": 2,
           "first_seen": t0, "last_seen": t0}
    try:
        migrate(engine, "0007")
        with engine.begin() as connection:
            table = Table("flows", MetaData(), autoload_with=connection)
            assert "would" not in table.c
            connection.execute(insert(table), [old])
        migrate(engine)
        assert current_revision(engine) == revision_heads()[0]
        same = FlowRecord(src="image:shop/api", dst="image:shop/db", port=5432,
                          verdict="observed", count=3, first_seen=t0, last_seen=t0)
        would = same.model_copy(update={"would": "prevent", "would_rule_id": 4,
                                        "would_rule_name": "api-not-db"})
        with Session(engine) as session:
            FlowService(session).record_many([same, would])
            items = FlowService(session).query(FlowFilter(), limit=10, offset=0).items
        assert sorted((f.mode, f.would, f.would_rule_id, f.count) for f in items) == [
            ("enforced", "", 0, 5), ("enforced", "prevent", 4, 3)]
        downgrade(engine, "0007")
        with engine.connect() as connection:
            table = Table("flows", MetaData(), autoload_with=connection)
            assert "would" not in table.c
            assert [r.count for r in connection.execute(select(table))] == [5]
    finally:
        engine.dispose()


def test_flows_stored_before_0013_get_their_identity_classes(db_url: str) -> None:
    """0013 only adds the class columns (no row rewritten: the table is not held
    for a backfill); the Console's background walk then gives every flow stored
    before it the classes of its identities, as the Console computes them when
    it stores a flow (replicas share one, a text read from the key has none), in
    small committed batches; flows stored after it fold with them; the
    downgrade drops the columns, the rows stay."""
    engine = connect(db_url)
    t0 = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    api = [EndpointInfo(kind="container", image="shop/api:1", container=f"api-{i}",
                        namespace="a", labels={"app": "api"}) for i in range(3)]
    db = recorded_text(EndpointInfo(kind="container", image="shop/db:1", container="db-0",
                                    namespace="a", address="10.0.0.2"))
    texts = [recorded_text(ep, address=False) for ep in api]
    old = [{"kind": "container", "src": "image:shop/api:1", "dst": "image:shop/db:1",
            "port": 5432 + i, "verdict": "observed", "rule_id": 0, "rule_name": "",
            "count": 1, "first_seen": t0, "last_seen": t0, "src_identity": s_text,
            "dst_identity": d_text, "ident": flow_ident(s_text, d_text)}
           for i, (s_text, d_text) in enumerate([*((t, db) for t in texts), ("", ""),
                                                 ("not json", db)])]
    try:
        migrate(engine, "0012")
        with engine.begin() as connection:
            table = Table("flows", MetaData(), autoload_with=connection)
            assert "src_class" not in table.c
            connection.execute(insert(table), old)
        migrate(engine)
        with engine.connect() as connection:
            unclassed = connection.execute(text(
                "SELECT src_class, dst_class FROM flows ORDER BY port")).all()
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        assert unclassed == [("", "")] * 5  # the migration rewrote no row
        with Session(engine) as session:
            walk = classes.start(session)
            assert walk is not None
            given = [classes.step(session, walk, batch=2) for _ in range(3)]
            assert walk.done and given == [2, 1, 1]  # ids 1-2, 3-4, 5: committed each
            # the store keeps how far it went: nothing to walk at the next start
            # (the row whose source text has no class is not read again)
            assert classes.start(session) is None
        with engine.connect() as connection:
            got = connection.execute(text(
                "SELECT src_class, dst_class FROM flows ORDER BY port")).all()
        api_class, db_class = identity_class(texts[0]), identity_class(db)
        assert api_class and db_class and api_class != db_class
        assert got == [(api_class, db_class)] * 3 + [("", ""), ("", db_class)]
        with Session(engine) as session:
            FlowService(session).record_many([FlowRecord(
                src="image:shop/api:1", dst="image:shop/db:1", port=5432, verdict="observed",
                count=1, first_seen=t0, last_seen=t0, src_identity=recorded_text(
                    EndpointInfo(kind="container", image="shop/api:1", container="api-9",
                                 namespace="a", labels={"app": "api"}), address=False),
                dst_identity=db)])
            (folded,) = [f for f in grouped_flows(session, t0, t0 + timedelta(hours=1),
                                                  erase_names=True) if f.port == 5432]
            assert (folded.flows, folded.count) == (2, 2)
        downgrade(engine, "0012")
        with engine.connect() as connection:
            table = Table("flows", MetaData(), autoload_with=connection)
            assert "src_class" not in table.c and "dst_class" not in table.c
            assert connection.scalar(select(func.count()).select_from(table)) == 6
    finally:
        engine.dispose()


SAMPLE = Policy(
    container_enabled=True,
    host_enabled=True,
    default_effect=Effect.ALERT,
    block_mode=BlockMode.DROP,
    objects=(
        ContainerObject(name="api", selector=ContainerSelector(
            images=("shop/api*",), labels=("app=api",), namespaces=("shop-web",))),
        DnsObject(name="partner", domains=("api.partner.example", "*.cdn.example")),
        HostObject(name="nodes", selector=HostSelector(hosts=("node-*",))),
        SubnetObject(name="internet", cidrs=("0.0.0.0/0", "::/0"), description="anywhere"),
    ),
    container_rules=(
        Rule(id=7, name="api-partner", src="api", dst="partner", ports=[443, "8000-8080"],
             effect=Effect.ALERT, notes="n", owner="o",
             modified=datetime(2026, 1, 1, 12, 0, tzinfo=UTC)),
        Rule(id=3, name="api-out", src="api", dst="internet", effect=Effect.PREVENT,
             disabled=True),
    ),
    host_rules=(Rule(id=1, name="ssh", src="nodes", dst="nodes", ports=[22]),),
)


def test_policy_round_trips_through_the_store(db_url: str) -> None:
    engine = connect(db_url)
    try:
        migrate(engine)
        with Session(engine) as session:
            stored = PolicyService(session, actor="t").replace(SAMPLE)
        with Session(engine) as session:
            again = PolicyService(session).policy()
        assert stored.revision == again.revision == 1
        # Objects are a set keyed by name: the store returns them sorted by name.
        objects = tuple(sorted(SAMPLE.objects, key=lambda o: o.name))
        assert again == SAMPLE.model_copy(update={"revision": 1, "objects": objects})
    finally:
        engine.dispose()


def test_concurrent_changes_queue_instead_of_losing_each_other(db_url: str) -> None:
    engine = connect(db_url)
    try:
        migrate(engine)
        with Session(engine) as session:
            PolicyService(session).replace(SAMPLE)
        writers, per_writer = 4, 5
        barrier = threading.Barrier(writers)
        failures: list[BaseException] = []

        def write(n: int) -> None:
            try:
                with Session(engine) as session:
                    service = PolicyService(session, actor=f"writer-{n}")
                    barrier.wait(timeout=30)
                    for i in range(per_writer):
                        service.create_rule(RuleKind.CONTAINER, RuleDraft(
                            name=f"w{n}-{i}", src="api", dst="internet"), position=0)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not failures, failures
        with Session(engine) as session:
            policy = PolicyService(session).policy()
        names = {r.name for r in policy.container_rules}
        assert {f"w{n}-{i}" for n in range(writers) for i in range(per_writer)} <= names
        assert len(policy.container_rules) == len(SAMPLE.container_rules) + writers * per_writer
        assert len({r.id for r in policy.container_rules}) == len(policy.container_rules)
        assert policy.revision == 1 + writers * per_writer
    finally:
        engine.dispose()


def test_flows_stored_before_0006_keep_their_counts_and_gain_identities_after_it(
        db_url: str) -> None:
    """0006 adds the identities recorded with each flow to the flow key: the
    flows already stored stay (identities empty); one image in two namespaces
    is two flows after it; the downgrade folds them back, counts added."""
    engine = connect(db_url)
    t = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    old = {"kind": "container", "src": "image:shop/api:2.1", "dst": "image:shop/db:13",
           "port": 5432, "verdict": "observed", "rule_id": 0, "rule_name": "", "count": 5,
           "first_seen": t, "last_seen": t}
    try:
        migrate(engine, "0004")
        with engine.begin() as connection:
            table = Table("flows", MetaData(), autoload_with=connection)
            assert "ident" not in table.c
            connection.execute(insert(table), [old])
        migrate(engine)
        assert current_revision(engine) == revision_heads()[0]
        a = '{"image":"shop/api:2.1","kind":"container","namespace":"team-a"}'
        b = '{"image":"shop/api:2.1","kind":"container","namespace":"team-b"}'
        db = '{"address":"10.0.0.5","image":"shop/db:13","kind":"container"}'
        record = FlowRecord.model_validate({**old, "count": 2, "dst_identity": db})
        with Session(engine) as session:
            flows = FlowService(session)
            assert flows.record_many([record.model_copy(update={"src_identity": a}),
                                      record.model_copy(update={"src_identity": b}),
                                      record.model_copy(update={"src_identity": b})]) == 2
            page = flows.query(FlowFilter(), limit=10, offset=0)
        assert sorted((f.src_identity, f.count) for f in page.items) == [("", 5), (a, 2), (b, 4)]
        downgrade(engine, "0004")
        with engine.connect() as connection:
            table = Table("flows", MetaData(), autoload_with=connection)
            assert "ident" not in table.c
            rows = connection.execute(select(table.c.count, table.c.first_seen)).all()
        assert [r[0] for r in rows] == [11]
        migrate(engine)
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        engine.dispose()


def test_readiness_means_the_store_answers_with_this_versions_schema(console: Any) -> None:
    """/readyz: 200 on a store migrated to this version's head; 503 naming the
    revision when the schema is another version's (a replica that must not serve)."""
    anonymous = console.client()
    r = anonymous.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["schema"] == revision_heads()[0]
    downgrade(console.engine, "0004")
    r = anonymous.get("/readyz")
    assert r.status_code == 503
    assert r.json()["detail"] == (f"the store's schema is at revision 0004; this Console "
                                  f"needs {revision_heads()[0]} (another version migrated it?)")
    migrate(console.engine)
    assert anonymous.get("/readyz").status_code == 200


def _audit(port: int) -> AuditRecord:
    return AuditRecord(time=datetime(2026, 1, 2, 3, 0, tzinfo=UTC), blocked=True,
                       effect=Effect.PREVENT, rule_id=1, rule_name="r", src_image="a",
                       dst_image="b", port=port, msg="blocked connection", defender="node-1")


def test_audit_ids_never_repeat_even_after_every_audit_was_pruned(db_url: str) -> None:
    """Forwarded audits carry their id and receivers drop repeats by it: an id
    handed out again after retention pruned everything would be dropped as a
    repeat. The outbox of a store migrated to 0010 is kept (SQLite copies the
    audits table, whose drop would cascade to it)."""
    engine = connect(db_url)
    try:
        migrate(engine, "0008")
        with Session(engine) as session:
            AuditService(session).insert_many([_audit(1), _audit(2), _audit(3)],
                                              forward_to=("syslog:udp://127.0.0.1:514",))
            ids = list(session.scalars(select(AuditRow.id).order_by(AuditRow.id)))
        migrate(engine)
        with Session(engine) as session:
            assert list(session.scalars(select(AuditRow.id).order_by(AuditRow.id))) == ids
            queued = session.scalars(select(OutboxRow.audit_id).order_by(OutboxRow.audit_id))
            assert list(queued) == ids  # the outbox survived the copy
            pruned = prune(session, datetime(2030, 1, 1, tzinfo=UTC))
            assert pruned.audits == 3
            assert session.scalar(select(func.count()).select_from(AuditRow)) == 0
            AuditService(session).insert_many([_audit(4)])
            (again,) = session.scalars(select(AuditRow.id))
        assert again > max(ids)
    finally:
        engine.dispose()


def _ids(session: Session) -> list[int]:
    return list(session.scalars(select(AuditRow.id).order_by(AuditRow.id)))


def test_audit_ids_never_repeat_across_a_downgrade_of_0010(db_url: str) -> None:
    """Upgrade, downgrade below 0010 (SQLite loses AUTOINCREMENT, and with it its
    record of the ids handed out), every audit pruned meanwhile, upgrade again:
    the next audit's id is still above every id handed out before."""
    engine = connect(db_url)
    try:
        migrate(engine)
        with Session(engine) as session:
            AuditService(session).insert_many([_audit(1), _audit(2), _audit(3)])
            before = _ids(session)
            prune(session, datetime(2030, 1, 1, tzinfo=UTC))  # all gone, at head
        downgrade(engine, "0009")
        with Session(engine) as session:
            assert _ids(session) == []
        migrate(engine)
        assert "cnnf_kept_audit_ids" not in inspect(engine).get_table_names()
        with Session(engine) as session:
            AuditService(session).insert_many([_audit(4)])
            (again,) = _ids(session)
        assert again > max(before)
    finally:
        engine.dispose()


def test_a_downgrade_of_0010_keeps_parked_audits_out_of_delivery(db_url: str) -> None:
    """Below 0010 the outbox has no ``parked`` column: every row in it is delivered.
    The downgrade sets the parked rows aside (the queued ones stay queued), and the
    upgrade puts them back, parked, with the time they were parked; a parked row
    whose audit was pruned meanwhile is not put back."""
    engine = connect(db_url)
    sink = "webhook:http://127.0.0.1:9 (00000000)"
    parked_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    try:
        migrate(engine)
        with Session(engine) as session:
            AuditService(session).insert_many([_audit(1), _audit(2), _audit(3)],
                                              forward_to=(sink,))
            one, two, three = _ids(session)
            session.execute(OutboxRow.__table__.update()
                            .where(OutboxRow.audit_id.in_([one, three]))
                            .values(parked=parked_at))
            session.commit()
        downgrade(engine, "0009")
        with engine.connect() as c:
            # What a Console of 0009 delivers: the queued audit only.
            assert [tuple(r) for r in c.exec_driver_sql(
                "SELECT sink, audit_id FROM forward_outbox")] == [(sink, two)]
            c.exec_driver_sql(f"DELETE FROM audits WHERE id = {three}")  # pruned meanwhile
            c.commit()
        migrate(engine)
        with Session(engine) as session:
            rows = session.execute(select(OutboxRow.audit_id, OutboxRow.parked)
                                   .order_by(OutboxRow.audit_id)).all()
            assert [(i, p.astimezone(UTC) if p else None) for i, p in rows] == [
                (one, parked_at), (two, None)]
        assert "cnnf_kept_parked" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_0011_keys_webhooks_by_their_receiver_keeping_their_backlog(db_url: str) -> None:
    """Stores of 0010 keyed a webhook by a hash of its whole URL (its secret
    included). 0011 renames the stored sink and its outbox rows to the receiver's
    key (what the forwarder uses now); the downgrade renames them back."""
    from cnnf.console.services.forwarding import webhook_name

    url = "https://user:s3cret@hooks.example/in?token=abc"
    old = "webhook:https://hooks.example (" + __import__("hashlib").sha256(
        url.encode()).hexdigest()[:8] + ")"
    engine = connect(db_url)
    try:
        migrate(engine, "0010")
        with Session(engine) as session:
            session.execute(insert(Table("forward_sinks", MetaData(), autoload_with=engine)),
                            [{"name": old, "url": url, "updated": datetime.now(UTC)}])
            AuditService(session).insert_many([_audit(1), _audit(2)], forward_to=(old,))
            ids = _ids(session)
        migrate(engine)
        with Session(engine) as session:
            assert session.execute(select(OutboxRow.sink, OutboxRow.audit_id).order_by(
                OutboxRow.audit_id)).all() == [(webhook_name(url), i) for i in ids]
        with engine.connect() as c:
            assert [tuple(r) for r in c.exec_driver_sql(
                "SELECT name, url FROM forward_sinks")] == [(webhook_name(url), url)]
        downgrade(engine, "0010")
        with Session(engine) as session:
            assert set(session.scalars(select(OutboxRow.sink))) == {old}
    finally:
        engine.dispose()


def test_the_readme_s_postgresql_connection_sizing_is_the_pool_s() -> None:
    """The README's sizing (20 pooled connections and the change feed's two per
    replica; four replicas within PostgreSQL's default) is what connect() builds."""
    from pathlib import Path

    from cnnf.console.store.db import connect

    engine = connect("postgresql+psycopg://cnnf@localhost.invalid/cnnf")  # opens nothing
    pool: Any = engine.pool
    kept, burst = pool.size(), pool._max_overflow
    text = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    assert f"connection pool ({kept} kept open, {burst} more in bursts: at most " \
           f"{kept + burst})" in text
    per_replica = kept + burst + 2  # the change feed: one listening, one notifying
    assert f"at most {per_replica} per replica" in text
    assert (f"of 100 (3 of them kept for superusers) holds four replicas, "
            f"{4 * per_replica} connections") in text
    assert 4 * per_replica <= 100 - 3 < 5 * per_replica
    engine.dispose()


def test_0011_keeps_two_stored_urls_of_one_receiver_apart(db_url: str) -> None:
    """Two stored URLs differing only in their query (two tenants' API keys) would
    get one key: 0011 does not merge them (A's backlog must not go to B). The
    first gets the new key, the other keeps its old one and its own backlog; the
    Console started with both keeps both, adding and removing nothing."""
    from cnnf.console.services.forwarding import configure_sinks, stored_sinks, webhook_name

    def old_name(url: str) -> str:
        return "webhook:https://hooks.example (" + __import__("hashlib").sha256(
            url.encode()).hexdigest()[:8] + ")"

    a, b = ("https://hooks.example/in?dd-api-key=ORG_A",
            "https://hooks.example/in?dd-api-key=ORG_B")
    engine = connect(db_url)
    try:
        migrate(engine, "0010")
        with Session(engine) as session:
            table = Table("forward_sinks", MetaData(), autoload_with=engine)
            session.execute(insert(table), [
                {"name": old_name(a), "url": a, "updated": datetime(2026, 1, 1, tzinfo=UTC)},
                {"name": old_name(b), "url": b, "updated": datetime(2026, 1, 2, tzinfo=UTC)}])
            AuditService(session).insert_many([_audit(1)], forward_to=(old_name(a),))
            AuditService(session).insert_many([_audit(2)], forward_to=(old_name(b),))
            ids = _ids(session)
        migrate(engine)
        with Session(engine) as session:
            assert stored_sinks(session) == {webhook_name(a): a, old_name(b): b}
            assert session.execute(select(OutboxRow.sink, OutboxRow.audit_id).order_by(
                OutboxRow.audit_id)).all() == [(webhook_name(a), ids[0]),
                                               (old_name(b), ids[1])]
            changed = configure_sinks(session, [a, b], datetime.now(UTC), replace=True)
            assert (changed.added, changed.removed, changed.rotated) == ((), {}, ())
            assert stored_sinks(session) == {webhook_name(a): a, old_name(b): b}
    finally:
        engine.dispose()
