"""A simulated fleet of Defenders against 1 and 3 Console replicas on one PostgreSQL.

Each simulated Defender is a real HTTP client speaking the Defender link
(enrolled with an enrollment token, long-polling ``GET
/api/v1/defender/policy`` with its credential, posting report batches to
``POST /api/v1/defender/reports``); the Consoles are real ``cnnf console``
processes on one real PostgreSQL (Debian's, started here with its own
defaults: fsync on). Defender ``i`` talks to replica ``i mod N``. The same run
measures one replica and three, and one replica started with
``--no-link-fast-path`` (every Defender request through the API's router) as
the baseline of the fast path (``--no-routed`` leaves it out):

- policy change -> applied on every Defender: a change through replica 0
  (a new network object), until every Defender's long-poll returned the new
  revision; median and p99 over the Defenders of all rounds (goal <= 1 s);
  beside it, the Consoles' own share (each replica's histogram
  ``cnnf_console_long_poll_answer_seconds``: from the replica learning of the
  change to each long-poll answering, as bucket bounds), per replica the
  spread of its Defenders' times, and when the bench's own LISTEN connection
  heard the change feed's notice (negative: before the change's HTTP answer
  reached the bench): where the time goes, PostgreSQL, the replicas or the
  simulated clients;
- report ingestion: records stored per second, batches of flows and audits
  posted by the fleet's Defenders, spread over the replicas (goal: 3 replicas
  >= 2x one);
- Console memory per connected Defender: the replicas' resident memory with the
  fleet long-polling, less before the fleet connected, over the Defenders.

The simulated fleet is played by ``--clients`` processes (4 by default), each
long-polling for its share of the Defenders over its own connections (aiohttp)
and posting its share of the report batches, serialized to JSON before the
clock starts. They are still real HTTP clients speaking the Defender link to
the real Consoles, the same requests as before; only one process no longer
reads every answer in turn: in earlier runs one client process for 1,000
Defenders read answers seconds after the Consoles had written them, so the
figures measured the bench. They run on the same 2 cores as the Consoles and
PostgreSQL: their cost is part of every figure and is printed (CPU per
process and phase). A change's time is taken with ``time.perf_counter()``
(CLOCK_MONOTONIC, one clock for every process of the machine).

    sudo .venv/bin/python bench/fleet.py [--defenders 1000] [--rounds 5] [--batches 400]
                                         [--clients 4] [--no-routed]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tests.e2e.managed import PASSWORD, ConsoleProcess  # noqa: E402

import postgres  # noqa: E402

API = "/api/v1"
RECORDS_PER_BATCH = 100  # 80 flows, 20 audits


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User and system CPU time of a process (0 once it is gone); ``children``:
    with that of its children that exited (PostgreSQL's backends come and go)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_pids(server: postgres.PostgresServer) -> list[int]:
    """The postmaster and its children (the backends serving the replicas)."""
    master = int((server.data / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(stat.parent.name))
    return pids


class CpuMeter:
    """CPU seconds used, over one phase, by each Console, PostgreSQL and the
    simulated fleet (this process and its client processes): where the two cores
    went."""

    def __init__(self, consoles: list[int], server: postgres.PostgresServer,
                 clients: list[int]) -> None:
        self.consoles = consoles
        self.server = server
        self.clients = clients  # the client processes playing the fleet
        self.started = 0.0
        self.before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        used = {f"console {i}": cpu_seconds(pid) for i, pid in enumerate(self.consoles)}
        master, *backends = postgres_pids(self.server)
        used["postgresql"] = cpu_seconds(master, children=True) + sum(
            cpu_seconds(pid) for pid in backends)
        own = resource.getrusage(resource.RUSAGE_SELF)
        used["fleet (clients)"] = own.ru_utime + own.ru_stime + sum(
            cpu_seconds(pid) for pid in self.clients)
        return used

    def start(self) -> None:
        self.before = self._now()
        self.started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """CPU seconds per process over the phase, and ``wall`` seconds."""
        after = self._now()
        used = {k: after[k] - self.before.get(k, 0.0) for k in after}
        used["wall"] = time.perf_counter() - self.started
        return used


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def batch(defender: int, n: int) -> dict[str, Any]:
    now = time.time()
    src = {"kind": "container", "address": f"10.{defender // 250}.{defender % 250}.2",
           "image": "shop/api", "container": "api", "host": f"node-{defender}"}
    dst = {"kind": "container", "address": "10.250.0.9", "image": "shop/db",
           "container": "db", "host": "node-db"}
    flows = [{"src": src, "dst": dst, "port": 1000 + (n * 80 + i) % 5000, "effect": "allow",
              "matched": False, "first_seen": now, "last_seen": now} for i in range(80)]
    audits = [{"time": now, "type": "container", "effect": "prevent", "blocked": True,
               "rule_id": 1, "rule_name": "api-not-db", "src": src, "dst": dst, "port": 5432,
               "message": "blocked connection", "reporter": f"node-{defender}"}
              for _ in range(20)]
    return {"batch_id": f"d{defender}-b{n}", "flows": flows, "audits": audits}


ANSWERED = "cnnf_console_long_poll_answer_seconds_bucket"


def answered_buckets(consoles: list[ConsoleProcess], admin: str) -> list[dict[float, float]]:
    """Each replica's histogram of its own share of propagation (policy): from the
    replica learning of the change to each long-poll answering with it."""
    found: list[dict[float, float]] = []
    for console in consoles:
        text = httpx.get(f"{console.url}/metrics", timeout=30,
                         headers={"Authorization": f"Bearer {admin}"}).text
        buckets: dict[float, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == ANSWERED and sample.labels.get("topic") == "policy":
                    buckets[float(sample.labels["le"])] = sample.value
        found.append(buckets)
    return found


def fast_answers(consoles: list[ConsoleProcess], admin: str) -> float:
    """Policy long-polls the replicas' fast path answered (all replicas)."""
    total = 0.0
    for console in consoles:
        text = httpx.get(f"{console.url}/metrics", timeout=30,
                         headers={"Authorization": f"Bearer {admin}"}).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (sample.name == "cnnf_console_link_fast_path_total"
                        and sample.labels.get("request") == "policy"):
                    total += sample.value
    return total


def bucket_quantile(before: list[dict[float, float]], after: list[dict[float, float]],
                    q: float) -> str:
    """The bucket bound under which a ``q`` share of the answers (all replicas) came."""
    bounds = {le for buckets in after for le in buckets}  # a replica may have none yet
    total = {le: sum(a.get(le, 0.0) - b.get(le, 0.0) for a, b in zip(after, before,
                                                                        strict=True))
             for le in bounds}
    count = total.get(float("inf"), 0.0)
    if not count:
        return "none"
    for le in sorted(total):
        if total[le] >= q * count:
            return f"<= {le * 1000:.0f} ms" if le != float("inf") else "> 10 s"
    return "?"


class NoticeClock:
    """The bench's own LISTEN connection on the Consoles' change feed: when the
    first ``policy`` notice after :meth:`mark` reached a client of PostgreSQL (a
    listener that does nothing else), to tell PostgreSQL's delivery from a
    replica's wake."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("LISTEN cnnf_changes")
        self._lock = threading.Lock()
        self._marked = 0.0
        self._heard: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for notice in self.conn.notifies(timeout=0.2):
                now = time.perf_counter()
                with self._lock:
                    if notice.payload.partition(" ")[0] == "policy" and self._heard is None:
                        self._heard = now

    def mark(self) -> None:
        with self._lock:
            self._marked, self._heard = time.perf_counter(), None

    def heard_at(self) -> float | None:
        with self._lock:
            return self._heard

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


def serialized_batch(defender: int, n: int) -> bytes:
    """A batch's JSON body, built before the timed phase (the clients send bytes)."""
    return json.dumps(batch(defender, n), separators=(",", ":")).encode()


class Clients:
    """One client process's share of the simulated Defenders (``i`` with ``i mod
    processes == k``): their long-polls (aiohttp, one connection each) and their
    report batches, on commands from the bench over a pipe. Several such
    processes play the fleet, so that the answers the Consoles wrote do not wait
    for one client process to read them (the tail of earlier runs)."""

    def __init__(self, share: list[tuple[int, str, str]]) -> None:
        self.share = share  # (index, Console URL, credential)
        self.seen = {i: -1 for i, _, _ in share}
        self.seen_at = {i: 0.0 for i, _, _ in share}
        self.errors: dict[int, int] = {}
        self.stop = False
        self.changed = asyncio.Event()
        self.http: aiohttp.ClientSession | None = None

    async def long_poll(self, i: int, url: str, credential: str) -> None:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {credential}"}
        while not self.stop:
            try:
                async with self.http.get(
                        f"{url}{API}/defender/policy", headers=headers,
                        params={"revision": str(self.seen[i]), "wait": "25"}) as r:
                    status = r.status
                    body = await r.read() if status == 200 else None
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5)
                continue
            if body is not None:
                self.seen_at[i] = time.perf_counter()
                self.seen[i] = json.loads(body)["revision"]
                self.changed.set()
            elif status != 204:
                self.errors[status] = self.errors.get(status, 0) + 1
                await asyncio.sleep(0.5)

    async def until(self, revision: int, timeout: float) -> dict[str, Any]:
        deadline = time.perf_counter() + timeout
        while min(self.seen.values()) < revision:
            if time.perf_counter() > deadline:
                return {"ok": False, "missing": sum(1 for s in self.seen.values()
                                                    if s < revision)}
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)
        return {"ok": True, "seen_at": dict(self.seen_at),
                "revision": max(self.seen.values())}

    async def ingest(self, bodies: list[tuple[str, str, str, bytes]],
                     concurrency: int) -> dict[str, float]:
        """Post pre-serialized batches (URL, credential, batch id, body)."""
        http = self.http
        assert http is not None
        queue = list(reversed(bodies))

        async def worker() -> None:
            while queue:
                url, credential, batch_id, body = queue.pop()
                headers = {"Authorization": f"Bearer {credential}",
                           "Content-Type": "application/json"}
                for _ in range(5):  # a keep-alive connection the server just closed
                    try:
                        async with http.post(f"{url}{API}/defender/reports",
                                             data=body, headers=headers) as r:
                            await r.read()
                            r.raise_for_status()
                            break
                    except (aiohttp.ClientConnectionError, TimeoutError):
                        continue  # the same batch id again: stored once
                else:
                    raise RuntimeError(f"batch {batch_id} not stored")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"started": started, "ended": time.perf_counter()}

    async def serve(self, conn: Connection) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # a connection per Defender
            timeout=aiohttp.ClientTimeout(total=120))
        polls = [asyncio.create_task(self.long_poll(i, url, c)) for i, url, c in self.share]
        try:
            while True:
                command, *args = await asyncio.to_thread(conn.recv)
                if command == "until":
                    conn.send(await self.until(*args))
                elif command == "stop-polls":
                    self.stop = True
                    for task in polls:
                        task.cancel()
                    await asyncio.gather(*polls, return_exceptions=True)
                    conn.send(self.errors)
                elif command == "ingest":
                    conn.send(await self.ingest(*args))
                else:
                    conn.send(None)
                    return
        finally:
            for task in polls:
                task.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
            await self.http.close()


def client_process(conn: Connection, share: list[tuple[int, str, str]]) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(Clients(share).serve(conn))


class Fleet:
    """The simulated fleet: enrolled here, played by ``processes`` client processes."""

    def __init__(self, consoles: list[ConsoleProcess], defenders: int, admin: str,
                 processes: int) -> None:
        self.consoles = consoles
        self.n = defenders
        self.admin = admin
        self.processes = processes
        self.http = httpx.AsyncClient(timeout=120)
        self.credentials: list[str] = []
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.revision = -1
        self.errors: dict[int, int] = {}  # status -> answers other than 200 and 204

    def url(self, i: int) -> str:
        return self.consoles[i % len(self.consoles)].url

    async def enroll(self) -> None:
        auth = {"Authorization": f"Bearer {self.admin}"}
        r = await self.http.post(f"{self.url(0)}{API}/defenders/enrollment-tokens", json={},
                                 headers=auth)
        r.raise_for_status()
        token = r.json()["token"]
        sem = asyncio.Semaphore(20)

        async def one(i: int) -> str:
            async with sem:
                for attempt in range(5):
                    try:
                        r = await self.http.post(f"{self.url(i)}{API}/defenders/enroll", json={
                            "enrollment_token": token, "hostname": f"node-{i}",
                            "version": "bench"})
                    except httpx.TransportError:
                        # A keep-alive connection the server closed as it was reused
                        # (seen once under load): enrolling again is harmless here.
                        if attempt == 4:
                            raise
                        continue
                    r.raise_for_status()
                    return str(r.json()["credential"])
                raise AssertionError("unreachable")

        self.credentials = list(await asyncio.gather(*(one(i) for i in range(self.n))))

    def start(self) -> None:
        """The client processes, each with its share, long-polling at once."""
        context = multiprocessing.get_context("spawn")
        for k in range(self.processes):
            share = [(i, self.url(i), self.credentials[i])
                     for i in range(k, self.n, self.processes)]
            mine, theirs = context.Pipe()
            proc = context.Process(target=client_process, args=(theirs, share), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    async def ask(self, *command: Any) -> list[Any]:
        """Send ``command`` to every client process; their answers."""
        for pipe in self.pipes:
            pipe.send(command)
        return list(await asyncio.gather(*(asyncio.to_thread(p.recv) for p in self.pipes)))

    async def until(self, revision: int, timeout: float) -> dict[int, float] | None:
        """When each Defender got ``revision`` (perf_counter, the same clock in every
        process); None on timeout."""
        answers = await self.ask("until", revision, timeout)
        if not all(a["ok"] for a in answers):
            missing = sum(a.get("missing", 0) for a in answers)
            raise AssertionError(f"{missing} Defenders did not get revision {revision} "
                                 f"in {timeout} s")
        self.revision = max(a["revision"] for a in answers)
        return {i: at for a in answers for i, at in a["seen_at"].items()}

    async def change(self, k: int) -> float:
        r = await self.http.post(f"{self.url(0)}{API}/objects", headers={
            "Authorization": f"Bearer {self.admin}"}, json={
            "kind": "subnet", "name": f"bench-{k}", "cidrs": [f"198.18.{k % 250}.0/24"]})
        r.raise_for_status()
        return time.perf_counter()

    async def ingest(self, batches: int, concurrency: int) -> float:
        """Records stored per second over ``batches`` batches, each sent by the
        client process of its Defender (bodies serialized before the clock starts)."""
        shares: list[list[tuple[str, str, str, bytes]]] = [[] for _ in self.pipes]
        for n in range(batches):
            i = n % self.n
            shares[i % self.processes].append(
                (self.url(i), self.credentials[i], f"d{i}-b{n}", serialized_batch(i, n)))
        each = max(1, concurrency // self.processes)
        for pipe, share in zip(self.pipes, shares, strict=True):
            pipe.send(("ingest", share, each))
        answers = await asyncio.gather(*(asyncio.to_thread(p.recv) for p in self.pipes))
        started = float(min(a["started"] for a in answers))
        ended = float(max(a["ended"] for a in answers))
        return batches * RECORDS_PER_BATCH / (ended - started)

    async def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("quit",))
        for proc in self.procs:
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()
        await self.http.aclose()


async def measure(consoles: list[ConsoleProcess], args: argparse.Namespace,
                  server: postgres.PostgresServer, server_url: str) -> dict[str, Any]:
    r = httpx.post(f"{consoles[0].url}{API}/auth/login",
                   json={"username": "admin", "password": PASSWORD}, timeout=30)
    r.raise_for_status()
    fleet = Fleet(consoles, args.defenders, r.json()["token"], args.clients)
    await fleet.enroll()
    pids = [c.proc.pid for c in consoles if c.proc is not None]
    before = sum(rss_kib(p) for p in pids)
    fleet.start()
    try:
        await fleet.until(0, 300)
        await asyncio.sleep(2)  # every long-poll waiting again
        during = sum(rss_kib(p) for p in pids)
        meter = CpuMeter(pids, server, [p.pid for p in fleet.procs if p.pid is not None])
        meter.start()
        latencies: list[float] = []
        by_replica: list[list[float]] = [[] for _ in consoles]
        heard: list[float] = []  # change -> the bench's own LISTEN connection heard it
        listener = NoticeClock(server_url)
        buckets_before = answered_buckets(consoles, fleet.admin)
        fast_before = fast_answers(consoles, fleet.admin)
        try:
            for k in range(args.rounds):
                revision = fleet.revision
                listener.mark()
                t0 = await fleet.change(k)
                seen_at = await fleet.until(revision + 1, 60)
                assert seen_at is not None
                for i, at in seen_at.items():
                    latencies.append(at - t0)
                    by_replica[i % len(consoles)].append(at - t0)
                got = listener.heard_at()
                if got is not None:
                    heard.append(got - t0)
                await asyncio.sleep(0.5)
        finally:
            listener.close()
        cpu_changes = meter.stop()
        buckets_after = answered_buckets(consoles, fleet.admin)
        fast_after = fast_answers(consoles, fleet.admin)
        for errors in await fleet.ask("stop-polls"):
            for status, count in errors.items():
                fleet.errors[status] = fleet.errors.get(status, 0) + count
        meter.start()
        rate = await fleet.ingest(args.batches, args.concurrency)
        cpu_ingest = meter.stop()
    finally:
        await fleet.close()
    latencies.sort()
    return {"median": statistics.median(latencies),
            "replicas": [(min(v), statistics.median(v), max(v)) for v in by_replica],
            "heard": heard,
            "console_median": bucket_quantile(buckets_before, buckets_after, 0.5),
            "console_p99": bucket_quantile(buckets_before, buckets_after, 0.99),
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "rate": rate, "kib": (during - before) / args.defenders, "errors": fleet.errors,
            "fast": fast_after - fast_before, "answers": len(latencies),
            "cpu_changes": cpu_changes, "cpu_ingest": cpu_ingest,
            "records": args.batches * RECORDS_PER_BATCH}


def run(server: postgres.PostgresServer, replicas: int, args: argparse.Namespace,
        workdir: Path, *, routed: bool = False) -> dict[str, Any]:
    """One configuration on a fresh database; ``routed``: the Consoles run with
    ``--no-link-fast-path`` (every Defender request through the API's router)."""
    db = server.create_database().replace("postgresql+psycopg://", "postgresql://")
    consoles = []
    for i in range(replicas):
        d = workdir / f"r{replicas}{'-routed' if routed else ''}-{i}"
        d.mkdir()
        consoles.append(ConsoleProcess(d, db, ("--no-link-fast-path",) if routed else ()))
    consoles[0].cli("create-user", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    try:
        for c in consoles:
            c.start()
        return asyncio.run(measure(consoles, args, server, db))
    finally:
        for c in consoles:
            if c.proc is not None and c.proc.poll() is None:
                c.kill()


def main() -> None:
    # A thousand long-polls are a thousand sockets here and in each Console (which
    # inherits the limit): the soft limit up to the hard one.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--defenders", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=24,
                        help="report batches in flight, over all client processes")
    parser.add_argument("--clients", type=int, default=4,
                        help="client processes playing the fleet, each with its share")
    parser.add_argument("--no-routed", action="store_true",
                        help="leave out the baseline: one replica through the API's router")
    args = parser.parse_args()
    reason = postgres.available()
    if reason:
        raise SystemExit(f"fleet.py: {reason}")
    # (label, replicas, routed): the fast path with 1 and 3 replicas, and one
    # replica through the API's router as the baseline, in the same run.
    configs = [("1 replica", 1, False), ("3 replicas", 3, False)]
    if not args.no_routed:
        configs.append(("1, routed", 1, True))
    results: dict[str, dict[str, Any]] = {}
    with postgres.postgres_server(durable=True) as server, \
            tempfile.TemporaryDirectory(prefix="cnnf-fleet-") as tmp:
        for label, replicas, routed in configs:
            results[label] = run(server, replicas, args, Path(tmp), routed=routed)
    report(args, configs, results)


def report(args: argparse.Namespace, configs: list[tuple[str, int, bool]],
           results: dict[str, dict[str, Any]]) -> None:
    print(f"Defenders: {args.defenders} (simulated, real HTTP, {args.clients} client "
          f"processes); rounds: {args.rounds}; batches: {args.batches} x "
          f"{RECORDS_PER_BATCH} records; 'routed': --no-link-fast-path")
    columns = [results[label] for label, _, _ in configs]

    def row(name: str, cells: list[str]) -> None:
        print(f"{name:34}" + "".join(f"{c:>14}" for c in cells))

    row("", [label for label, _, _ in configs])
    row("policy change -> all, median", [f"{r['median'] * 1000:.0f} ms" for r in columns])
    row("policy change -> all, p99", [f"{r['p99'] * 1000:.0f} ms" for r in columns])
    row("  in the Consoles, median", [r["console_median"] for r in columns])
    row("  in the Consoles, p99", [r["console_p99"] for r in columns])
    row("report ingestion", [f"{r['rate']:.0f} rec/s" for r in columns])
    one, three = results["1 replica"], results["3 replicas"]
    print(f"{'':34}3 replicas / 1 replica: {three['rate'] / one['rate']:.2f}x")
    row("Console CPU per Defender, change", [
        f"{_console_cpu(r, 'changes') / r['answers'] * 1000:.2f} ms" for r in columns])
    row("Console CPU per record", [
        f"{_console_cpu(r, 'ingest') / r['records'] * 1000:.3f} ms" for r in columns])
    row("Console memory per Defender", [f"{r['kib']:.1f} KiB" for r in columns])
    row("answered by the fast path", [f"{r['fast']:.0f}/{r['answers']}" for r in columns])
    print("long-poll errors: " + "; ".join(
        f"{label} {results[label]['errors'] or 'none'}" for label, _, _ in configs))
    for label, _, _ in configs:
        result = results[label]
        print(f"{label}: change -> the bench's LISTEN heard it: "
              + ", ".join(f"{h * 1000:.0f}" for h in result["heard"]) + " ms")
        for r, (low, mid, high) in enumerate(result["replicas"]):
            print(f"  Defenders of replica {r}: change -> applied min {low * 1000:.0f} ms, "
                  f"median {mid * 1000:.0f} ms, max {high * 1000:.0f} ms")
    for label, _, _ in configs:
        for phase in ("changes", "ingest"):
            used = dict(results[label][f"cpu_{phase}"])
            wall = used.pop("wall")
            busy = sum(used.values())
            name = "policy rounds" if phase == "changes" else "ingestion"
            print(f"CPU, {label}, {name} ({wall:.1f} s wall, "
                  f"{2 * wall:.1f} core-s on 2 cores): "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in used.items())
                  + f"; total {busy:.1f} s ({busy / wall:.2f} cores)")


def _console_cpu(result: dict[str, Any], phase: str) -> float:
    """CPU seconds of all the Console processes over one phase."""
    return float(sum(v for k, v in result[f"cpu_{phase}"].items() if k.startswith("console")))


if __name__ == "__main__":
    main()
