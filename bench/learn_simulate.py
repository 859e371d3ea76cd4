"""Learning and simulating over stored flows: seconds for 1,000,000 flows, on
SQLite and PostgreSQL, beside a naive implementation in the same run.

    python bench/learn_simulate.py [--flows N] [--naive N] [--postgres auto|none|URL]
                                   [--unique N]

Each store is migrated and filled with ``--flows`` distinct flow rows as the
Console keeps them (identities recorded with each end): 300 workloads in 30
namespaces (two in three carry an ``app`` label), each reaching a few others
and a few of 40 external DNS names, with up to 10 replicas of each source and
5 addresses of each destination, so one edge is many rows. The rows are stored
as the Console stored them before migration 0013 (no identity classes), then
the store is migrated to the head, which computes every row's classes (timed:
what upgrading a Console with a million stored flows takes). Then, timed:

- learn: the Console's service (``LearningService.propose``) over the whole
  window, from an empty policy: the rows folded in the store by one grouped
  query (``grouped_flows``: per edge, recorded verdict and pair of identity
  classes, the replicas' container names left out; on SQLite an aggregate
  function folding the rows as a plain scan passes them): about 100,000 groups
  here, one endpoint per distinct identity, each resolved by the compiled engine once
  (``CompiledPolicy.flows()``), and the proposal stored;
- simulate: ``LearningService.simulate`` of a draft (the learnt policy with a
  tenth of its rules turned to ``prevent`` and the default ``prevent``)
  against the learnt policy in force, over the whole window.

Then, on SQLite unless ``--unique 0``: a store of ``--unique`` rows that do not fold (a
scan: one source reaching a distinct address and port per row), read by
``grouped_flows`` (which stops folding them and reads the rows one by one) and
by the reference read (``observed_flows``), each consumed by the simulator:
seconds, then the peak of memory allocated during a second run of each
(``tracemalloc``, which slows it).

The naive implementation does the same work the obvious way: ORM objects for
every row, each row's identity JSON parsed on its own, and the reference
evaluator (:mod:`cnnf.policy.naive`, a linear scan of the rules). It runs on
the first ``--naive`` rows only (it is far slower); its time for all rows is
extrapolated from its rate, and says so. All figures are from this run on this
machine; compare them with each other.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, Table, insert, select
from sqlalchemy.orm import Session

from cnnf.console.services.learning import (
    LearningService,
    ProposalRequest,
    SimulateRequest,
    grouped_flows,
    observed_flows,
)
from cnnf.console.services.policy import PolicyService
from cnnf.console.services.records import flow_ident
from cnnf.console.store.db import connect, migrate
from cnnf.console.store.models import FlowRow
from cnnf.model import Effect, Policy
from cnnf.policy.learn import learn
from cnnf.policy.naive import NaiveEvaluator
from cnnf.policy.observed import ObservedFlow, endpoint_of
from cnnf.policy.simulate import simulate
from console_ingest import postgres_engine  # the same store as the ingestion bench

NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
WORKLOADS = 300
NAMESPACES = 30
DOMAINS = [f"api-{i}.partner{i % 7}.example" for i in range(40)]


def _canon(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def rows(n: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """``n`` distinct flow rows: edges times source replicas times destination
    addresses."""
    workloads = []
    for i in range(WORKLOADS):
        ns = f"team-{i % NAMESPACES}"
        labels = {"app": f"svc-{i}", "tier": "backend"} if i % 3 else {"tier": "batch"}
        workloads.append((f"shop/svc-{i}:1.{i % 5}", ns, labels, f"node-{i % 20}"))
    edges: list[tuple[int, int | str, int]] = []
    for i in range(WORKLOADS):
        for _ in range(rng.randint(3, 8)):
            edges.append((i, rng.randrange(WORKLOADS), rng.choice((80, 443, 5432, 6379, 8080))))
        for _ in range(rng.randint(0, 3)):
            edges.append((i, rng.choice(DOMAINS), 443))
    edges = list(dict.fromkeys(edges))
    made = 0
    first = NOW - timedelta(hours=20)
    while made < n:
        for s, d, port in edges:
            image, ns, labels, host = workloads[s]
            for replica in range(10):
                src = {"kind": "container", "image": image, "name": f"svc-{s}-{replica}",
                       "namespace": ns, "host": host, "labels": labels}
                for addr in range(5):
                    if isinstance(d, str):
                        dst = {"kind": "address", "address": f"203.0.113.{addr + 1}", "domain": d}
                        dst_key = f"dns:{d}"
                    else:
                        dimage, dns_, dlabels, dhost = workloads[d]
                        dst = {"kind": "container", "image": dimage, "name": f"svc-{d}-{addr}",
                               "namespace": dns_, "host": dhost, "labels": dlabels,
                               "address": f"10.{d // 250}.{d % 250}.{addr + 1}"}
                        dst_key = f"image:{dimage}"
                    # A later round: another port, so every row stays distinct.
                    p = port + made // (len(edges) * 50)
                    s_text, d_text = _canon(src), _canon(dst)
                    at = first + timedelta(seconds=made % 3600)
                    yield {"kind": "container", "src": f"image:{image}", "dst": dst_key,
                           "port": p, "verdict": "observed", "rule_id": 0, "rule_name": "",
                           "count": 1 + made % 9, "first_seen": at,
                           "last_seen": at + timedelta(minutes=5), "src_identity": s_text,
                           "dst_identity": d_text, "ident": flow_ident(s_text, d_text)}
                    made += 1
                    if made >= n:
                        return


def fill(engine: Engine, n: int) -> tuple[float, float]:
    """The rows stored as the Console before migration 0013 stored them (no
    identity classes), then the migration to the head, which gives them their
    classes: seconds for each."""
    migrate(engine, "0012")
    start = time.perf_counter()
    batch: list[dict[str, Any]] = []
    with Session(engine) as s:
        flows = Table("flows", MetaData(), autoload_with=s.connection())
        for row in rows(n, random.Random(13)):
            batch.append(row)
            if len(batch) == 20000:
                s.execute(insert(flows), batch)
                batch = []
        if batch:
            s.execute(insert(flows), batch)
        s.commit()
    filled = time.perf_counter() - start
    start = time.perf_counter()
    migrate(engine)
    return filled, time.perf_counter() - start


def naive_flows(session: Session, limit: int) -> list[ObservedFlow]:
    """The obvious way: ORM objects, each identity parsed on its own."""
    out = []
    for row in session.scalars(select(FlowRow).order_by(FlowRow.id).limit(limit)):
        src = endpoint_of(row.src_identity, row.src)
        dst = endpoint_of(row.dst_identity, row.dst)
        out.append(ObservedFlow(row.kind, row.src, row.dst, row.port, src, dst, row.verdict,
                                row.rule_id, 1, row.count, row.first_seen, row.last_seen))
    return out


def measure(engine: Engine, n: int, naive: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["fill"], out["migrate"] = fill(engine, n)
    since = NOW - timedelta(days=1)
    with Session(engine) as s:
        policies = PolicyService(s, actor="bench", now=lambda: NOW)
        service = LearningService(s, policies)
        start = time.perf_counter()
        proposal = service.propose(ProposalRequest(since=since, until=NOW))
        out["learn"] = time.perf_counter() - start
        out["rules"] = len(proposal.proposed)
        out["learnt"] = proposal.learnt_flows
        learnt = proposal.policy
        policies.replace(learnt)
        current = policies.policy()
        cut = max(len(current.container_rules) // 10, 1)
        draft = current.model_copy(update={
            "default_effect": Effect.PREVENT,
            "container_rules": tuple(r.model_copy(update={"effect": Effect.PREVENT}) if i < cut
                                     else r for i, r in enumerate(current.container_rules))})
        start = time.perf_counter()
        result = service.simulate(SimulateRequest(since=since, until=NOW, policy=draft))
        out["simulate"] = time.perf_counter() - start
        out["changed"] = result.changed_flows
        out["evaluated"] = result.flows

        start = time.perf_counter()
        sample = naive_flows(s, naive)
        naive_proposal = learn(Policy(), sample, engine=NaiveEvaluator)
        out["naive learn"] = (time.perf_counter() - start) * n / len(sample)
        start = time.perf_counter()
        sample = naive_flows(s, naive)
        impact = simulate(current, draft, sample, engine=NaiveEvaluator)
        out["naive simulate"] = (time.perf_counter() - start) * n / len(sample)
        out["naive rules"] = len(naive_proposal.rules)
        out["naive changed"] = impact.changed_flows
        out["naive sample"] = len(sample)
    return out


def scan_rows(n: int) -> Iterator[dict[str, Any]]:
    """``n`` rows that do not fold: one source, a distinct address and port each."""
    src = _canon({"kind": "container", "image": "tools/scan:1", "name": "scan-1",
                  "namespace": "ops", "host": "node-1", "labels": {"app": "scan"}})
    for i in range(n):
        address = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        dst = _canon({"kind": "address", "address": address})
        at = NOW - timedelta(hours=2, seconds=i % 3600)
        yield {"kind": "container", "src": "image:tools/scan:1", "dst": f"addr:{address}",
               "port": 1 + i % 65535, "verdict": "observed", "rule_id": 0, "rule_name": "",
               "count": 1, "first_seen": at, "last_seen": at, "src_identity": src,
               "dst_identity": dst, "ident": flow_ident(src, dst)}


def measure_unique(engine: Engine, n: int) -> dict[str, tuple[float, float]]:
    """Seconds and peak MB allocated, simulating over ``n`` unfoldable rows read
    by ``grouped_flows`` and by the reference read."""
    migrate(engine)
    with Session(engine) as s:
        batch: list[dict[str, Any]] = []
        for row in scan_rows(n):
            batch.append(row)
            if len(batch) == 20000:
                s.execute(insert(FlowRow), batch)
                batch = []
        if batch:
            s.execute(insert(FlowRow), batch)
        s.commit()
    since = NOW - timedelta(days=1)
    draft = Policy(default_effect=Effect.PREVENT)
    reads: dict[str, Callable[[Session], Iterator[ObservedFlow]]] = {
        "reference": lambda s: observed_flows(s, since, NOW),
        "grouped": lambda s: grouped_flows(s, since, NOW, erase_names=True)}
    out = {}
    for name, read in reads.items():
        with Session(engine) as s:
            start = time.perf_counter()
            impact = simulate(Policy(), draft, read(s))
            seconds = time.perf_counter() - start
            assert impact.flows == n, (name, impact.flows)
        with Session(engine) as s:
            tracemalloc.start()
            simulate(Policy(), draft, read(s))
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
        out[name] = (seconds, peak)
    return out


def report_unique(store: str, n: int, r: dict[str, tuple[float, float]]) -> None:
    print(f"{store:<11}{n:>10,} unfoldable rows, simulate: grouped_flows "
          f"{r['grouped'][0]:.1f} s / peak {r['grouped'][1]:.0f} MB, reference read "
          f"{r['reference'][0]:.1f} s / peak {r['reference'][1]:.0f} MB", flush=True)


@contextmanager
def sqlite_engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="cnnf-bench-") as tmp:
        engine = connect(f"sqlite:///{Path(tmp) / 'console.db'}")
        try:
            yield engine
        finally:
            engine.dispose()


def report(store: str, n: int, r: dict[str, Any]) -> None:
    print(f"{store:<11}{n:>10,}{r['learn']:>10.1f}{r['naive learn']:>13.0f}"
          f"{r['naive learn'] / r['learn']:>8.0f}x{r['simulate']:>11.1f}"
          f"{r['naive simulate']:>13.0f}{r['naive simulate'] / r['simulate']:>8.0f}x"
          f"{r['rules']:>8,}{r['changed']:>11,}   (filled in {r['fill']:.0f} s, "
          f"migration 0013 over them {r['migrate']:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--naive", type=int, default=20_000,
                        help="rows the naive implementation runs on (extrapolated to --flows)")
    parser.add_argument("--postgres", default="auto", help="auto, none, or a database URL")
    parser.add_argument("--no-sqlite", action="store_true",
                        help="PostgreSQL only (run the stores one at a time)")
    parser.add_argument("--unique", type=int, default=300_000,
                        help="rows that do not fold, in their own SQLite store (0: none)")
    args = parser.parse_args()
    print(f"seconds for {args.flows:,} stored flows; naive: measured on the first "
          f"{args.naive:,} rows and extrapolated to all")
    print(f"{'store':<11}{'flows':>10}{'learn':>10}{'naive learn':>13}{'':>9}"
          f"{'simulate':>11}{'naive sim.':>13}{'':>9}{'rules':>8}{'changed':>11}")
    if not args.no_sqlite:
        with sqlite_engine() as engine:
            report("sqlite", args.flows, measure(engine, args.flows, args.naive))
        if args.unique:
            with sqlite_engine() as engine:
                report_unique("sqlite", args.unique, measure_unique(engine, args.unique))
    with postgres_engine(args.postgres, durable=False) as pg:
        if pg is not None:
            report("postgresql", args.flows, measure(pg, args.flows, args.naive))
    print("learn: LearningService.propose from an empty policy (rules: proposed); simulate: "
          "LearningService.simulate of a draft (changed: flows whose verdict changes); "
          "naive: ORM rows, JSON parsed per row, the reference linear-scan evaluator")


if __name__ == "__main__":
    main()
