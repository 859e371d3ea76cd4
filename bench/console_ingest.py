"""Console ingestion speed: audit and flow records stored per second.

    python bench/console_ingest.py [--records N] [--batch N] [--postgres auto|none|URL]

On SQLite (a file in a temporary directory) and on PostgreSQL (a throw-away
server started like the tests do, or the URL given), each on a freshly
migrated store, it prints records per second for:

- baseline: one audit per transaction through the ORM (what a naive
  per-event endpoint would do), on a tenth of the records;
- audits: ``AuditService.insert_many`` in batches of ``--batch``;
- flows: ``FlowService.record_many`` in batches, folding into 2,000 distinct
  (src, dst, port, verdict, rule) keys, so most records update an existing row.

All figures are from this run on this machine; compare them with each other.
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

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cnnf.console.services.records import AuditRecord, AuditService, FlowRecord, FlowService
from cnnf.console.store.db import connect, migrate
from cnnf.console.store.models import AuditRow
from cnnf.model import Effect

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


def flows(n: int, rng: random.Random) -> list[FlowRecord]:
    keys = [(rng.choice(IMAGES), rng.choice(IMAGES), rng.choice((80, 443, 5432, 8080)))
            for _ in range(2000)]
    out = []
    for i in range(n):
        src, dst, port = rng.choice(keys)
        at = T0 + timedelta(milliseconds=i)
        out.append(FlowRecord(src=f"image:{src}", dst=f"image:{dst}", port=port,
                              verdict="observed", count=rng.randint(1, 10),
                              first_seen=at, last_seen=at))
    return out


def rate(n: int, run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


def measure(engine: Engine, records: int, batch: int) -> dict[str, float]:
    rng = random.Random(7)
    migrate(engine)
    sample = audits(records, rng)
    flow_sample = flows(records, rng)
    few = sample[: max(records // 10, 1)]

    def baseline() -> None:
        with Session(engine) as s:
            for record in few:
                s.add(AuditRow(**record.model_dump(by_alias=False)))
                s.commit()

    def batched_audits() -> None:
        with Session(engine) as s:
            service = AuditService(s)
            for i in range(0, len(sample), batch):
                service.insert_many(sample[i : i + batch])

    def batched_flows() -> None:
        with Session(engine) as s:
            service = FlowService(s)
            for i in range(0, len(flow_sample), batch):
                service.record_many(flow_sample[i : i + batch])

    return {
        "baseline": rate(len(few), baseline),
        "audits": rate(len(sample), batched_audits),
        "flows": rate(len(flow_sample), batched_flows),
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
def postgres_engine(option: str) -> Iterator[Engine | None]:
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
    # The same throw-away server the tests start (tests/postgres.py).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import postgres

    reason = postgres.available()
    if reason:
        print(f"postgresql: skipped ({reason})")
        yield None
        return
    with postgres.postgres_server() as server:
        engine = connect(server.create_database())
        try:
            yield engine
        finally:
            engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--postgres", default="auto", help="auto, none, or a database URL")
    args = parser.parse_args()
    print(f"{args.records} records per series, batches of {args.batch} (records/s)")
    print(f"{'store':<12}{'baseline':>12}{'audits':>12}{'flows':>12}")
    with sqlite_engine() as engine:
        r = measure(engine, args.records, args.batch)
        print(f"{'sqlite':<12}{r['baseline']:>12,.0f}{r['audits']:>12,.0f}{r['flows']:>12,.0f}")
    with postgres_engine(args.postgres) as pg:
        if pg is not None:
            r = measure(pg, args.records, args.batch)
            print(f"{'postgresql':<12}{r['baseline']:>12,.0f}{r['audits']:>12,.0f}"
                  f"{r['flows']:>12,.0f}")
            if args.postgres == "auto":
                print("(postgresql: the tests' throw-away server runs with fsync off)")


if __name__ == "__main__":
    main()
