"""The identity classes of flows stored before migration 0013, given by the
Console in the background (:mod:`cnnf.console.services.classes`), in real
SQLite and PostgreSQL stores: the migration rewrites no row, ingestion goes on
between the walk's committed batches, and learning and simulating give the
reference's results at every point of the walk."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import Engine, MetaData, Table, insert, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cnnf.console import app as app_module
from cnnf.console.app import ClassBackfiller, create_app
from cnnf.console.config import ConsoleConfig
from cnnf.console.metrics import ConsoleMetrics
from cnnf.console.services import classes
from cnnf.console.services.learning import grouped_flows, observed_flows
from cnnf.console.services.records import FlowRecord, FlowService, flow_ident
from cnnf.console.store.db import connect, migrate
from cnnf.console.store.models import FlowRow
from cnnf.model import Effect, Policy
from cnnf.model.records import EndpointInfo
from cnnf.policy.learn import LearnOptions, learn
from cnnf.policy.observed import identity_class, recorded_text
from cnnf.policy.simulate import simulate

T0 = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
SINCE, UNTIL = T0 - timedelta(hours=1), T0 + timedelta(hours=1)


def _api(i: int, replica: int) -> EndpointInfo:
    j = i % 4
    return EndpointInfo(kind="container", image=f"shop/api-{j}:1", container=f"api-{replica}",
                        namespace=f"ns-{j % 3}", labels={"app": f"api-{j}"})


def _db(i: int) -> EndpointInfo:
    return EndpointInfo(kind="container", image="shop/db:1", container=f"db-{i}",
                        namespace="data", address=f"10.0.0.{i + 1}")


def _record(src: EndpointInfo, dst: EndpointInfo, port: int, count: int = 1) -> FlowRecord:
    return FlowRecord(src=f"image:{src.image}", dst=f"image:{dst.image}", port=port,
                      verdict="observed", count=count, first_seen=T0, last_seen=T0,
                      src_identity=recorded_text(src, address=False),
                      dst_identity=recorded_text(dst))


def _old_rows() -> list[dict[str, Any]]:
    """120 flows as the Console stored them before 0013: 4 workloads' replicas to 3
    database replicas on 2 ports, 4 of them without recorded identities, 4 with a
    source text that is no JSON (its destination has a class)."""
    out = []
    for i in range(4):
        for replica in range(5):
            for d in range(3):
                for port in (5432, 6432):
                    recorded = not (replica == 4 and d == 0 and port == 5432)
                    s_text = recorded_text(_api(i, replica), address=False) if recorded else ""
                    if replica == 3 and d == 2 and port == 6432:
                        s_text = "not json"  # no class: read from the key
                    d_text = recorded_text(_db(d)) if recorded else ""
                    out.append({"kind": "container", "src": f"image:{_api(i, 0).image}",
                                "dst": "image:shop/db:1", "port": port, "verdict": "observed",
                                "rule_id": 0, "rule_name": "", "count": 1 + replica,
                                "first_seen": T0 - timedelta(minutes=replica),
                                "last_seen": T0, "src_identity": s_text,
                                "dst_identity": d_text, "ident": flow_ident(s_text, d_text)})
    return out


def _results(session: Session) -> tuple[Any, Any, Any, Any]:
    """Learnt and simulated over the grouped read and over the reference read."""
    options = LearnOptions(default_effect=Effect.PREVENT)
    draft = Policy(default_effect=Effect.PREVENT)
    return (learn(Policy(), grouped_flows(session, SINCE, UNTIL, erase_names=True), options),
            learn(Policy(), observed_flows(session, SINCE, UNTIL), options),
            simulate(Policy(), draft, grouped_flows(session, SINCE, UNTIL, erase_names=True)),
            simulate(Policy(), draft, observed_flows(session, SINCE, UNTIL)))


def test_flows_from_before_0013_get_classes_while_ingestion_goes_on(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = connect(db_url)
    old = _old_rows()
    try:
        migrate(engine, "0012")
        with engine.begin() as connection:
            connection.execute(insert(Table("flows", MetaData(), autoload_with=connection)), old)
        migrate(engine)
        with engine.connect() as connection:
            assert connection.execute(text(
                "SELECT count(*) FROM flows WHERE src_class <> '' OR dst_class <> ''")
            ).scalar() == 0  # the migration rewrote no row: it held the table for moments
        metrics = ConsoleMetrics()
        caplog.set_level(logging.INFO)
        backfill = ClassBackfiller(sessionmaker(engine), metrics, batch=16)
        assert backfill.start()
        steps = 0
        with Session(engine) as session:
            done = False
            while not done:
                done = backfill.step()
                steps += 1
                # A Defender's batch between two of the walk's batches: new
                # replicas' flows and repeats of the old ones (upserts), committed.
                FlowService(session).record_many([
                    _record(_api(steps, 10 + steps), _db(0), 5432),
                    _record(_api(steps, steps % 3), _db(steps % 3), 6432, count=2)])
                if steps % 3 == 1:
                    grouped, reference, impact, reference_impact = _results(session)
                    assert grouped == reference
                    assert impact == reference_impact
                    session.rollback()
        assert steps == 8  # 120 ids, 16 a batch: ingestion went on between all of them
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT src_identity, dst_identity, src_class, dst_class FROM flows")).all()
        assert len(rows) == 120 + steps  # the repeats folded into the old rows
        assert all((sc, dc) == (identity_class(s), identity_class(d)) for s, d, sc, dc in rows)
        assert sum(1 for s, _, sc, _ in rows if s == "not json" and sc == "") == 4
        with Session(engine) as session:
            grouped, reference, impact, reference_impact = _results(session)
            assert grouped == reference and impact == reference_impact
            folded = list(grouped_flows(session, SINCE, UNTIL, erase_names=True))
            # replicas fold: per workload, port and (recorded or not) identity pair
            assert sum(f.flows for f in folded) == 120 + steps and len(folded) < 40
        scraped = generate_latest(metrics.registry).decode()
        assert "cnnf_console_flow_classes_backfilled_total 116.0" in scraped
        assert "cnnf_console_flow_classes_backfill_progress 1.0" in scraped
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("flow classes: giving identity classes to the flows stored "
                                "without them") and "ids 1 to 120," in m for m in messages)
        assert any(m.startswith("flow classes: done, 116 rows given classes in ")
                   for m in messages)
        # the store keeps how far the walk went: the next walk reads only the
        # flows stored since (with their classes: nothing given), then none
        again = ClassBackfiller(sessionmaker(engine), metrics)
        assert again.start() and again.walk is not None
        with engine.connect() as connection:  # PostgreSQL's upserts take ids too
            top = connection.execute(text("SELECT max(id) FROM flows")).scalar()
        assert (again.walk.first, again.walk.top) == (max(121 - classes.MARGIN, 1), top)
        assert again.step() and again.walk.given == 0
        assert not ClassBackfiller(sessionmaker(engine), metrics).start()
        # A replica of the previous version stores a flow without classes: the
        # next look walks it alone and gives it its classes.
        late = {**_old_rows()[0], "port": 7000, "src_class": "", "dst_class": ""}
        with engine.begin() as connection:
            connection.execute(insert(FlowRow), [late])
        look = ClassBackfiller(sessionmaker(engine), metrics)
        assert look.start() and look.walk is not None
        assert look.walk.first == max(top + 1 - classes.MARGIN, 1)
        assert look.step() and look.walk.given == 1 and _unclassed(engine) == 0
    finally:
        engine.dispose()


def test_the_console_gives_the_classes_in_the_background_at_its_start(
        db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The Console's start migrates a store of flows from before 0013 (the
    columns only), serves, and gives the classes in the background: the walk's
    metrics and log lines say where it is."""
    engine = connect(db_url)
    try:
        migrate(engine, "0012")
        with engine.begin() as connection:
            connection.execute(insert(Table("flows", MetaData(), autoload_with=connection)),
                               _old_rows())
        caplog.set_level(logging.INFO)
        # retention off: the flows' times are of January
        app = create_app(ConsoleConfig(db_url=db_url, data_dir=tmp_path, retention_days=0),
                         engine=engine)
        with engine.connect() as connection:  # migrated, not walked yet
            assert connection.execute(text(
                "SELECT count(*) FROM flows WHERE src_class = ''")).scalar() == 120

        def unclassed() -> int:
            with engine.connect() as connection:
                return int(connection.execute(text(
                    "SELECT count(*) FROM flows WHERE src_class = '' "
                    "AND src_identity NOT IN ('', 'not json')")).scalar() or 0)

        async def serve() -> str:
            async with app.router.lifespan_context(app):  # what uvicorn runs around serving
                for _ in range(3000):  # the event loop runs the background walk meanwhile
                    if unclassed() == 0 and any(
                            r.getMessage().startswith("flow classes: done, 116 rows given")
                            for r in caplog.records):
                        break
                    await asyncio.sleep(0.02)
                return generate_latest(app.state.link.metrics.registry).decode()

        scraped = asyncio.run(serve())
        assert unclassed() == 0
        app.state.link.forwarder.close()
        assert "cnnf_console_flow_classes_backfilled_total 116.0" in scraped
    finally:
        engine.dispose()


def _pre_0013_store(db_url: str) -> Engine:
    engine = connect(db_url)
    migrate(engine, "0012")
    with engine.begin() as connection:
        connection.execute(insert(Table("flows", MetaData(), autoload_with=connection)),
                           _old_rows())
    migrate(engine)
    return engine


def _unclassed(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(
            "SELECT count(*) FROM flows WHERE src_class = '' "
            "AND src_identity NOT IN ('', 'not json')")).scalar() or 0)

def _serve_until_classed(db_url: str, engine: Engine, data_dir: Path) -> None:
    """A Console served (its lifespan) until every flow has its classes, or 60 s."""
    app = create_app(ConsoleConfig(db_url=db_url, data_dir=data_dir, retention_days=0),
                     engine=engine)

    async def serve() -> None:
        async with app.router.lifespan_context(app):
            for _ in range(3000):
                if _unclassed(engine) == 0:
                    break
                await asyncio.sleep(0.02)

    asyncio.run(serve())
    app.state.link.forwarder.close()



def test_a_start_that_fails_is_tried_again(db_url: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """The walk's first look at the store fails (the store away a moment at the
    Console's start): it is tried again, and the walk is done, not given up."""
    engine = _pre_0013_store(db_url)
    try:
        looks: list[str] = []
        first_look = classes.start

        def away_once(session: Session) -> Any:
            looks.append("look")
            if len(looks) == 1:
                raise OperationalError("SELECT classes_walked_to", {}, Exception("away"))
            return first_look(session)

        monkeypatch.setattr(classes, "start", away_once)
        monkeypatch.setattr(app_module, "CLASS_BACKFILL_RETRY", 0.01)
        _serve_until_classed(db_url, engine, tmp_path)
        assert len(looks) >= 2 and _unclassed(engine) == 0
        assert any(r.getMessage().startswith("flow classes: a batch was not written (")
                   and r.levelname == "WARNING" for r in caplog.records)
    finally:
        engine.dispose()


def test_the_walk_and_ingestion_at_once_in_two_threads(db_url: str) -> None:
    """The walk in one thread, a Defender's repeats of the walked flows (upserts
    of the same rows) in another, at the same time: neither fails (on
    PostgreSQL the walk locks its rows in id order and gives up after a short
    wait; SQLite serialises the writes), every row ends with its classes, and
    no connection is lost."""
    engine = _pre_0013_store(db_url)
    repeats = [_record(_api(i, replica), _db(d), port)
               for i in range(4) for replica in range(3) for d in range(3)
               for port in (5432, 6432)]
    errors: list[BaseException] = []
    walking = threading.Event()

    def walk() -> None:
        try:
            backfill = ClassBackfiller(sessionmaker(engine), None, batch=4)
            assert backfill.start()
            walking.set()
            done = False
            while not done:
                try:
                    done = backfill.step()
                except OperationalError:  # gave up waiting for a row: tried again
                    continue
        except BaseException as exc:
            errors.append(exc)
        finally:
            walking.set()

    try:
        thread = threading.Thread(target=walk)
        thread.start()
        walking.wait(30)
        rounds = 0
        with Session(engine) as session:
            while thread.is_alive() or rounds < 3:
                FlowService(session).record_many(repeats)  # raises if it fails
                rounds += 1
        thread.join(60)
        assert not errors
        assert _unclassed(engine) == 0
        with engine.connect() as connection:
            total = connection.execute(text("SELECT sum(count) FROM flows")).scalar()
        old = sum(r["count"] for r in _old_rows())
        assert total == old + rounds * len(repeats) and rounds >= 3
    finally:
        engine.dispose()


def test_the_progress_is_exported_by_the_replica_walking_only(db_url: str) -> None:
    """No progress sample before this process looked at the store, nor after it
    gave the walk to another replica (the lease lost): only the walking replica
    says where the walk is."""
    engine = _pre_0013_store(db_url)
    try:
        metrics = ConsoleMetrics()

        def progress() -> str | None:
            for line in generate_latest(metrics.registry).decode().splitlines():
                if line.startswith("cnnf_console_flow_classes_backfill_progress "):
                    return line.split()[1]
            return None

        backfill = ClassBackfiller(sessionmaker(engine), metrics, batch=60)
        assert progress() is None
        assert backfill.start() and progress() == "0.0"
        assert not backfill.step() and progress() == "0.5"
        backfill.stop()
        assert progress() is None
        assert backfill.start() and progress() == "0.0"  # resumed (the last MARGIN ids too)
        while not backfill.step():
            pass
        assert progress() == "1.0"
    finally:
        engine.dispose()


def test_a_row_pruned_between_the_read_and_the_write_is_not_counted(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention prunes a row after the batch read it: the batch's count (the
    metric, the log line) says the rows written, not the rows read."""
    engine = _pre_0013_store(db_url)
    try:
        computed = classes.identity_class
        pruned: list[int] = []

        def prune_first(text_: str) -> str:
            if not pruned:
                pruned.append(1)
                with engine.begin() as connection:
                    connection.execute(text("DELETE FROM flows WHERE id = 1"))
            return computed(text_)

        monkeypatch.setattr(classes, "identity_class", prune_first)
        with Session(engine) as session:
            walk = classes.start(session)
            assert walk is not None
            assert classes.step(session, walk, batch=10) == 9 and walk.given == 9
    finally:
        engine.dispose()


def test_a_row_given_a_pruned_rows_id_keeps_its_own_class(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a batch's read and its write, retention prunes the last row and a
    new flow is stored (SQLite gives it the pruned row's id): the batch does not
    stamp the classes it computed for the pruned row's texts on the new row."""
    engine = _pre_0013_store(db_url)
    try:
        computed = classes.identity_class
        swapped: list[int] = []
        newcomer = {**_old_rows()[0], "port": 9000, "src_class": "", "dst_class": "",
                    "src_identity": recorded_text(_api(2, 7), address=False),
                    "ident": "newcomer"}

        def swap_last(text_: str) -> str:
            if not swapped:
                with engine.begin() as connection:
                    connection.execute(text("DELETE FROM flows WHERE id = 120"))
                    swapped.append(int(connection.execute(insert(FlowRow).values(
                        **newcomer).returning(FlowRow.id)).scalar_one()))
            return computed(text_)

        monkeypatch.setattr(classes, "identity_class", swap_last)
        with Session(engine) as session:
            walk = classes.start(session)
            assert walk is not None
            while not walk.done:
                classes.step(session, walk, batch=200)
        with engine.connect() as connection:
            got = connection.execute(text(
                "SELECT src_class, dst_class FROM flows WHERE id = :id"), {"id": swapped[0]}
            ).one()
        if db_url.startswith("sqlite"):
            assert swapped == [120]  # the pruned row's id, given again
        # its own classes (given by this walk, which reads it after the swap) or
        # none yet: never the pruned row's
        pruned_class = identity_class(_old_rows()[119]["src_identity"])
        assert got[0] in ("", identity_class(newcomer["src_identity"]))
        assert got[0] != pruned_class
    finally:
        engine.dispose()


def test_a_row_committed_late_below_the_walks_end_is_walked_at_the_next_look(
        db_url: str) -> None:
    """On PostgreSQL a row's id is taken at its insert and the row is seen at its
    commit: a previous-version replica's flow may appear below where the walk
    ended. The next look (once a flow was stored since) walks the last MARGIN
    ids again and gives it its classes."""
    engine = _pre_0013_store(db_url)
    try:
        with Session(engine) as session:
            assert classes.run(session) == 116
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM flows WHERE id = 60"))
            connection.execute(insert(FlowRow), [
                {**_old_rows()[59], "id": 60, "src_class": "", "dst_class": ""}])
            connection.execute(insert(FlowRow), [
                {**_old_rows()[0], "port": 7100, "src_class": "", "dst_class": ""}])
        with Session(engine) as session:
            assert classes.run(session) == 2
        assert _unclassed(engine) == 0
    finally:
        engine.dispose()


def test_a_batch_that_raises_something_else_is_tried_again(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Not a store error (a defect, an error the driver did not wrap): logged,
    tried again, and the walk is done, not ended silently."""
    engine = _pre_0013_store(db_url)
    try:
        batch = classes.step
        raised: list[int] = []

        def odd_once(*args: Any, **kwargs: Any) -> int:
            if not raised:
                raised.append(1)
                raise ValueError("an odd legacy text")
            return batch(*args, **kwargs)

        monkeypatch.setattr(classes, "step", odd_once)
        monkeypatch.setattr(app_module, "CLASS_BACKFILL_RETRY", 0.01)
        _serve_until_classed(db_url, engine, tmp_path)
        assert raised and _unclassed(engine) == 0
        assert any(r.getMessage().startswith("flow classes: a batch failed (ids from ")
                   for r in caplog.records)
    finally:
        engine.dispose()
