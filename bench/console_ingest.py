"""Console ingestion speed: audit and flow records stored per second.

    python bench/console_ingest.py [--records N] [--batch N] [--postgres auto|none|URL]
                                   [--fast-postgres] [--identities]

On SQLite (a file in a temporary directory, with the Console's own settings:
WAL, ``synchronous=NORMAL``) and on PostgreSQL (a throw-away server with
PostgreSQL's durable defaults -- ``fsync``, ``synchronous_commit`` and
``full_page_writes`` on -- or the URL given; ``--fast-postgres`` turns them off
as the tests do, and says so), each on a freshly migrated store, it prints
records per second for audits (``AuditService.insert_many``) and flows
(``FlowService.record_many``, folding into 2,000 distinct (src, dst, port,
verdict, rule) keys, so most records update an existing row; with
``--identities`` each record carries both ends' identities as Defenders report
them, 10 replicas a side, so 20,000 keys), each stored
two ways through the same call:

- per row: one record per call, so one transaction each (the baseline), on a
  tenth of the records;
- batched: ``--batch`` records per call and transaction.

Both ways are warmed first (a few untimed calls on the same database), and
they alternate. All figures are from this run on this machine; compare them
with each other.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cnnf.console.services.records import AuditRecord, AuditService, FlowRecord, FlowService
from cnnf.console.store.db import connect, migrate
from cnnf.model import Effect
from cnnf.model.records import EndpointInfo
from cnnf.policy.observed import recorded_text

T0 = datetime(2026, 1, 1, tzinfo=UTC)
IMAGES = [f"shop/svc-{i}:1.{i % 7}" for i in range(200)]


def audits(n: int, rng: random.Random) -> list[AuditRecord]:
    out = []
    for i in range(n):
        blocked = rng.random() < 0.5
        out.append(AuditRecord(
            time=T0 + timedelta(milliseconds=i), type="container", rule_id=rng.randint(1, 50),
            rule_name=f"rule-{rng.randint(1, 50)}", blocked=blocked,
            effect=Effect.PREVENT if blocked else Effect.ALERT,
            src_image=rng.choice(IMAGES), src_container=f"c-{rng.randint(1, 999)}",
            src_hostname=f"node-{rng.randint(1, 20)}", dst_image=rng.choice(IMAGES),
            dst_container=f"c-{rng.randint(1, 999)}", dst_hostname=f"node-{rng.randint(1, 20)}",
            port=rng.choice((80, 443, 5432, 6379, 8080)), msg="bench", count=rng.randint(1, 5),
        ))
    return out


def _identity(image: str, replica: int, *, address: bool) -> str:
    """An end's identity as a Defender records it (one of 10 replicas)."""
    at, app = IMAGES.index(image), image.removeprefix("shop/").partition(":")[0]
    return recorded_text(EndpointInfo(
        kind="container", image=image, container=f"{app}-{replica}",
        namespace=f"team-{at % 20}", host=f"node-{at % 20}",
        labels={"app": app, "tier": "backend"},
        address=f"10.{at}.0.{replica + 1}" if address else None), address=address)


def flows(n: int, rng: random.Random, *, identities: bool = False) -> list[FlowRecord]:
    """``n`` flow records over 2,000 keys; ``identities``: each with the
    identities of both ends, as Defenders report them (10 replicas a side)."""
    keys = [(rng.choice(IMAGES), rng.choice(IMAGES), rng.choice((80, 443, 5432, 8080)))
            for _ in range(2000)]
    texts: dict[tuple[str, int, bool], str] = {}
    out = []
    for i in range(n):
        src, dst, port = rng.choice(keys)
        at = T0 + timedelta(milliseconds=i)
        s_text = d_text = ""
        if identities:
            s_key, d_key = (src, rng.randrange(10), False), (dst, rng.randrange(10), True)
            s_text = texts.get(s_key) or texts.setdefault(s_key, _identity(*s_key[:2],
                                                                           address=False))
            d_text = texts.get(d_key) or texts.setdefault(d_key, _identity(*d_key[:2],
                                                                           address=True))
        out.append(FlowRecord(src=f"image:{src}", dst=f"image:{dst}", port=port,
                              verdict="observed", count=rng.randint(1, 10),
                              first_seen=at, last_seen=at, src_identity=s_text,
                              dst_identity=d_text))
    return out


def rate(n: int, run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


def measure(engine: Engine, records: int, batch: int, *,
            identities: bool = False) -> dict[str, float]:
    rng = random.Random(7)
    migrate(engine)
    sample = audits(records, rng)
    flow_sample = flows(records, rng, identities=identities)
    few = max(records // 10, 1)

    def stored(service: Any, store: Callable[..., Any], rows: list[Any], size: int) -> None:
        for i in range(0, len(rows), size):
            store(service, rows[i : i + size])

    def timed(kind: str, rows: list[Any], size: int) -> float:
        with Session(engine) as s:
            service = AuditService(s) if kind == "audits" else FlowService(s)
            store = AuditService.insert_many if kind == "audits" else FlowService.record_many
            return rate(len(rows), lambda: stored(service, store, rows, size))

    # warm-up: connections, statement caches, the tables' first pages; untimed
    warm_a = audits(2 * batch, random.Random(8))
    warm_f = flows(2 * batch, random.Random(9), identities=identities)
    for kind, rows in (("audits", warm_a), ("flows", warm_f)):
        timed(kind, rows[:20], 1)
        timed(kind, rows, batch)
    return {
        "audits per row": timed("audits", sample[:few], 1),
        "audits batched": timed("audits", sample, batch),
        "flows per row": timed("flows", flow_sample[:few], 1),
        "flows batched": timed("flows", flow_sample, batch),
    }


@contextmanager
def sqlite_engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="cnnf-bench-") as tmp:
        engine = connect(f"sqlite:///{Path(tmp) / 'console.db'}")
        try:
            yield engine
        finally:
            engine.dispose()


@contextmanager
def postgres_engine(option: str, durable: bool) -> Iterator[Engine | None]:
    if option == "none":
        yield None
        return
    if option != "auto":
        engine = connect(option)
        try:
            yield engine
        finally:
            engine.dispose()
        return
    # A throw-away server as the tests start one (tests/postgres.py).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import postgres

    reason = postgres.available()
    if reason:
        print(f"postgresql: skipped ({reason})")
        yield None
        return
    with postgres.postgres_server(durable=durable) as server:
        engine = connect(server.create_database())
        try:
            yield engine
        finally:
            engine.dispose()


COLUMNS = ("audits per row", "audits batched", "flows per row", "flows batched")


def row(store: str, r: dict[str, float]) -> str:
    return (f"{store:<12}" + "".join(f"{r[c]:>16,.0f}" for c in COLUMNS)
            + f"{r['audits batched'] / r['audits per row']:>9.1f}x"
            + f"{r['flows batched'] / r['flows per row']:>8.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--postgres", default="auto", help="auto, none, or a database URL")
    parser.add_argument("--identities", action="store_true",
                        help="flows with both ends' identities, as Defenders report them "
                             "(10 replicas a side: 20,000 keys)")
    parser.add_argument("--fast-postgres", action="store_true",
                        help="the throw-away server without fsync (not durable)")
    args = parser.parse_args()
    print(f"{args.records} records batched ({args.batch} a call), a tenth of them per row "
          f"(1 a call); records/s")
    print(f"{'store':<12}" + "".join(f"{c:>16}" for c in COLUMNS) + f"{'audits':>10}{'flows':>9}")
    with sqlite_engine() as engine:
        print(row("sqlite", measure(engine, args.records, args.batch,
                                    identities=args.identities)), flush=True)
    with postgres_engine(args.postgres, durable=not args.fast_postgres) as pg:
        if pg is not None:
            print(row("postgresql", measure(pg, args.records, args.batch,
                                            identities=args.identities)))
            if args.postgres == "auto":
                print("postgresql: NOT DURABLE: fsync, synchronous_commit and full_page_writes "
                      "off (--fast-postgres)" if args.fast_postgres else
                      "postgresql: durable (PostgreSQL's defaults: fsync, synchronous_commit, "
                      "full_page_writes on)")
    print("sqlite: the Console's settings (WAL, synchronous=NORMAL); the last two columns: "
          "batched over per row, same call")


if __name__ == "__main__":
    main()
