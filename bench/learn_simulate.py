"""Learning and simulating over stored flows: seconds for 1,000,000 flows, on
SQLite and PostgreSQL, beside a naive implementation in the same run.

    python bench/learn_simulate.py [--flows N] [--naive N] [--postgres auto|none|URL]
                                   [--unique N] [--names-before]

Each store is migrated and filled with ``--flows`` distinct flow rows as the
Console keeps them (identities recorded with each end): 300 workloads in 30
namespaces (two in three carry an ``app`` label), each reaching a few others
and a few of 40 external DNS names, with up to 10 replicas of each source and
5 addresses of each destination, so one edge is many rows. The rows are stored
as the Console stored them before migration 0013 (no identity classes), then
the store is migrated to the head (timed: 0013 only adds the columns), then
the Console's background walk gives every row its classes
(:func:`cnnf.console.services.classes.run`, timed: how long after an upgrade
learning folds the old rows fully). Then, timed:

- learn: the Console's service (``LearningService.propose``) over the whole
  window, from an empty policy: the rows folded in the store by one grouped
  query (``grouped_flows``: per edge, recorded verdict and pair of identity
  classes, the replicas' container names left out; on SQLite an aggregate
  function folding the rows as a plain scan passes them): about 100,000 groups
  here, one endpoint per distinct identity, each resolved by the compiled engine once
  (``CompiledPolicy.flows()``), and the proposal stored;
- simulate: ``LearningService.simulate`` of a draft (the learnt policy with a
  tenth of its rules turned to ``prevent`` and the default ``prevent``)
  against the learnt policy in force, over the whole window;
- names kept: the same two with objects selecting container names in the
  policy (a pinned replica ``svc-7-0``, one service's replicas ``svc-8-*``),
  so the names are kept: identities fold when their names match the same of
  those globs (``--names-before``: also as read before that, grouped by the
  whole identity texts, in the same run).

Each phase's wall time is split into this process's CPU time and time spent
waiting for a CPU (``/proc/self/task/*/schedstat``: starved by the machine's
other work), and on PostgreSQL the same for the server's processes (the bench
starts its own server; parallel workers' CPU counted once they exit, their
waiting not); the rest is neither (I/O, locks).

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
import os
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

from sqlalchemy import Engine, MetaData, Table, insert, select, text
from sqlalchemy.orm import Session

from cnnf.console.services import classes, learning
from cnnf.console.services.learning import (
    LearningService,
    ProposalRequest,
    SimulateRequest,
    grouped_flows,
    names_containers,
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


def fill(engine: Engine, n: int) -> tuple[float, float, float, float]:
    """The rows stored as the Console before migration 0013 stored them (no
    identity classes), then the migration to the head (the columns only), then
    the Console's background walk giving them their classes (run to the end
    here, without its pauses): seconds for each, and for learning over the
    window between the migration and the walk (rows without classes)."""
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
    migrated = time.perf_counter() - start
    # Learning right after the upgrade, before the walk (no row has classes:
    # each grouped by its identity text).
    with Session(engine) as s:
        policies = PolicyService(s, actor="bench", now=lambda: NOW)
        start = time.perf_counter()
        LearningService(s, policies).propose(ProposalRequest(since=NOW - timedelta(days=1),
                                                             until=NOW))
        before_walk = time.perf_counter() - start
    start = time.perf_counter()
    with Session(engine) as s:
        classes.run(s)
        if engine.dialect.name == "postgresql":
            s.execute(text("ANALYZE flows"))  # as the Console does at the walk's end
            s.commit()
    return filled, migrated, time.perf_counter() - start, before_walk


def naive_flows(session: Session, limit: int) -> list[ObservedFlow]:
    """The obvious way: ORM objects, each identity parsed on its own."""
    out = []
    for row in session.scalars(select(FlowRow).order_by(FlowRow.id).limit(limit)):
        src = endpoint_of(row.src_identity, row.src)
        dst = endpoint_of(row.dst_identity, row.dst)
        out.append(ObservedFlow(row.kind, row.src, row.dst, row.port, src, dst, row.verdict,
                                row.rule_id, 1, row.count, row.first_seen, row.last_seen))
    return out


@dataclass
class Phase:
    """Seconds of one timed phase: wall, this process's CPU time and time
    waiting for a CPU (run queue: the machine's other work), and the same for
    the PostgreSQL server's processes (None on SQLite)."""

    wall: float
    cpu: float
    runq: float
    server_cpu: float | None = None
    server_runq: float | None = None

    @property
    def rest(self) -> float:
        """Wall time neither process spent on a CPU or waiting for one: I/O,
        locks, sleeping (negative when the server ran parallel workers)."""
        return (self.wall - self.cpu - self.runq - (self.server_cpu or 0.0)
                - (self.server_runq or 0.0))


def _sched(pid: int | str) -> tuple[float, float]:
    """CPU seconds and seconds waiting for a CPU of every thread of ``pid``
    (``/proc/PID/task/*/schedstat``: nanoseconds on a CPU, on a run queue)."""
    cpu = runq = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on, waiting, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # the thread ended
        cpu, runq = cpu + int(on), runq + int(waiting)
    return cpu / 1e9, runq / 1e9


def _server_sched(postmaster: int) -> tuple[float, float]:
    """The PostgreSQL server's CPU seconds and run-queue seconds: its live
    processes' (schedstat), plus the CPU of the processes it reaped (parallel
    workers: ``cutime``/``cstime`` of the postmaster; their waiting is lost)."""
    cpu, runq = _sched(postmaster)
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    cpu += (int(fields[13]) + int(fields[14])) / tick  # cutime, cstime
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == postmaster:
            c, r = _sched(proc.name)
            cpu, runq = cpu + c, runq + r
    return cpu, runq


def _postmaster(session: Session) -> int | None:
    """The local PostgreSQL server's main process (None: SQLite, or not on this
    machine)."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    backend = session.execute(text("SELECT pg_backend_pid()")).scalar()
    try:
        stat = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(stat[1])


@contextmanager
def phase(out: dict[str, Any], name: str, postmaster: int | None) -> Iterator[None]:
    start, (cpu, runq) = time.perf_counter(), _sched("self")
    server = _server_sched(postmaster) if postmaster else None
    yield
    wall, (cpu2, runq2) = time.perf_counter() - start, _sched("self")
    out[name] = wall
    after = _server_sched(postmaster) if postmaster and server else None
    out.setdefault("phases", {})[name] = Phase(
        wall, cpu2 - cpu, runq2 - runq,
        after[0] - server[0] if after and server else None,
        after[1] - server[1] if after and server else None)


#: Container objects selecting by name (a pinned replica, one service's
#: replicas): learning and simulating then keep the names (``erase_names``
#: False), the slower reads.
BY_NAME = [{"kind": "container", "name": "svc-7-first", "selector": {"containers": ["svc-7-0"]}},
           {"kind": "container", "name": "svc-8-all", "selector": {"containers": ["svc-8-*"]}}]


def measure(engine: Engine, n: int, naive: int, before: bool = False,
            parallel: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["fill"], out["migrate"], out["backfill"], out["learn before walk"] = fill(engine, n)
    since = NOW - timedelta(days=1)
    with Session(engine) as s:
        postmaster = _postmaster(s)
        s.rollback()
        policies = PolicyService(s, actor="bench", now=lambda: NOW)
        service = LearningService(s, policies)
        with phase(out, "learn", postmaster):
            proposal = service.propose(ProposalRequest(since=since, until=NOW))
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
        with phase(out, "simulate", postmaster):
            result = service.simulate(SimulateRequest(since=since, until=NOW, policy=draft))
        out["changed"] = result.changed_flows
        out["evaluated"] = result.flows

        # Names kept: a policy whose objects select container names (no rules),
        # learnt from, then the proposal simulated as the draft against it.
        named = Policy.model_validate({"objects": BY_NAME})
        policies.replace(named)
        assert names_containers(policies.policy())
        with phase(out, "learn named", postmaster):
            named_proposal = service.propose(ProposalRequest(since=since, until=NOW))
        out["named rules"] = len(named_proposal.proposed)
        named_draft = named_proposal.policy.model_copy(update={
            "default_effect": Effect.PREVENT,
            "container_rules": tuple(r.model_copy(update={"effect": Effect.PREVENT}) if i < cut
                                     else r for i, r in
                                     enumerate(named_proposal.policy.container_rules))})
        with phase(out, "simulate named", postmaster):
            named_result = service.simulate(SimulateRequest(since=since, until=NOW,
                                                            policy=named_draft))
        out["named changed"] = named_result.changed_flows

        if parallel is not None and postmaster:
            # The same two, PostgreSQL's parallel workers for the grouping set.
            with patch.object(learning, "PARALLEL_WORKERS", parallel):
                policies.replace(current)
                with phase(out, f"learn, {parallel} workers", postmaster):
                    service.propose(ProposalRequest(since=since, until=NOW))
                with phase(out, f"simulate, {parallel} workers", postmaster):
                    service.simulate(SimulateRequest(since=since, until=NOW, policy=draft))
            # and again with the server's setting, right after (a warm store both)
            with phase(out, "learn, again", postmaster):
                service.propose(ProposalRequest(since=since, until=NOW))
            with phase(out, "simulate, again", postmaster):
                service.simulate(SimulateRequest(since=since, until=NOW, policy=draft))
            policies.replace(named)
        if before:
            # The same, read as before name classes: grouped by the whole texts.
            with patch.object(learning, "MAX_TEXT_CLASSES", 0), \
                    patch.object(learning, "name_classes", lambda *_: lambda name: name):
                policies.replace(named)
                with phase(out, "learn named, by texts", postmaster):
                    service.propose(ProposalRequest(since=since, until=NOW))
                with phase(out, "simulate named, by texts", postmaster):
                    service.simulate(SimulateRequest(since=since, until=NOW,
                                                     policy=named_draft))

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
          f"migration 0013 {r['migrate']:.1f} s, classes given in the background "
          f"{r['backfill']:.1f} s; learning before it {r['learn before walk']:.1f} s)",
          flush=True)
    print(f"{'':<11}{'names kept':>10}{r['learn named']:>10.1f}{'':>21}"
          f"{r['simulate named']:>11.1f}{'':>21}{r['named rules']:>8,}"
          f"{r['named changed']:>11,}   (objects selecting container names)", flush=True)
    print(f"{'':<11}{'phase':<26}{'wall':>7}{'CPU':>7}{'run queue':>11}"
          f"{'server CPU':>12}{'server run queue':>18}{'rest':>7}")
    for name, p in r["phases"].items():
        server = ("" if p.server_cpu is None else
                  f"{p.server_cpu:>12.1f}{p.server_runq:>18.1f}")
        print(f"{'':<11}{name:<26}{p.wall:>7.1f}{p.cpu:>7.1f}{p.runq:>11.1f}"
              f"{server:>30}{p.rest:>7.1f}", flush=True)
    print(f"{'':<11}(load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--naive", type=int, default=20_000,
                        help="rows the naive implementation runs on (extrapolated to --flows)")
    parser.add_argument("--postgres", default="auto", help="auto, none, or a database URL")
    parser.add_argument("--no-sqlite", action="store_true",
                        help="PostgreSQL only (run the stores one at a time)")
    parser.add_argument("--names-before", action="store_true",
                        help="also time the names-kept case read as before name classes "
                             "(grouped by the whole identity texts)")
    parser.add_argument("--workers", type=int, default=None,
                        help="PostgreSQL: also time learning and simulating with this many "
                             "parallel workers for the grouping (0: none), in the same run")
    parser.add_argument("--unique", type=int, default=300_000,
                        help="rows that do not fold, in their own SQLite store (0: none)")
    args = parser.parse_args()
    print(f"seconds for {args.flows:,} stored flows; naive: measured on the first "
          f"{args.naive:,} rows and extrapolated to all")
    print(f"{'store':<11}{'flows':>10}{'learn':>10}{'naive learn':>13}{'':>9}"
          f"{'simulate':>11}{'naive sim.':>13}{'':>9}{'rules':>8}{'changed':>11}")
    if not args.no_sqlite:
        with sqlite_engine() as engine:
            report("sqlite", args.flows, measure(engine, args.flows, args.naive,
                                                     args.names_before))
        if args.unique:
            with sqlite_engine() as engine:
                report_unique("sqlite", args.unique, measure_unique(engine, args.unique))
    with postgres_engine(args.postgres, durable=False) as pg:
        if pg is not None:
            report("postgresql", args.flows, measure(pg, args.flows, args.naive,
                                                         args.names_before, args.workers))
    print("learn: LearningService.propose from an empty policy (rules: proposed); simulate: "
          "LearningService.simulate of a draft (changed: flows whose verdict changes); "
          "names kept: the same with objects selecting container names in the policy; "
          "naive: ORM rows, JSON parsed per row, the reference linear-scan evaluator; "
          "phases: seconds of wall time, CPU time and waiting for a CPU (this process, "
          "the PostgreSQL server's processes), rest: neither (I/O, locks)")


if __name__ == "__main__":
    main()
