"""Three Console processes on one real PostgreSQL, forwarding to a real syslog
listener (RFC 5424 over TCP, octet-counted) and a real webhook receiver.

Defenders (real HTTP clients speaking the Defender link) report batches of
audits to all three replicas; while they do, the replica holding the singleton
lease (the one forwarding) is killed with SIGKILL. A Defender whose replica
died sends the same batch again to another one, as the Defender link does.
Afterwards: every audit is stored exactly once, the lease moved to a survivor,
and each sink received every stored audit's id (repeats of a batch cut short
by the kill are allowed, being at-least-once, and bounded by one batch).
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from tests.e2e.managed import PASSWORD, ConsoleProcess, poll
from tests.webhook import Webhook

from cnnf.model import Effect
from cnnf.model.records import AuditEvent, EndpointInfo, ReportBatch
from cnnf.model.rule import RuleKind

pytestmark = pytest.mark.postgres

API = "/api/v1"
REPLICAS = 3
DEFENDERS = 6
BATCHES = 60  # per Defender
AUDITS_PER_BATCH = 5
SD_ID = re.compile(rb'\[cnnf@32473 id="(\d+)" ')


class SyslogListener:
    """RFC 5424 over TCP with octet counting (RFC 6587); any number of senders."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self._lock = threading.Lock()
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.url = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            data += chunk
            while b" " in data:
                length, _, rest = data.partition(b" ")
                if len(rest) < int(length):
                    break
                message, data = rest[:int(length)], rest[int(length):]
                m = SD_ID.search(message)
                assert m, message
                with self._lock:
                    self.ids.append(int(m.group(1)))

    def close(self) -> None:
        self.server.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def sinks() -> Iterator[tuple[SyslogListener, Webhook]]:
    syslog, hook = SyslogListener(), Webhook()
    try:
        yield syslog, hook
    finally:
        syslog.close()
        hook.close()


@pytest.fixture
def replicas(pg_server: Any, tmp_path: Path,
             sinks: tuple[SyslogListener, Webhook]) -> Iterator[list[ConsoleProcess]]:
    db = pg_server.create_database().replace("postgresql+psycopg://", "postgresql://")
    syslog, hook = sinks
    consoles = []
    for i in range(REPLICAS):
        workdir = tmp_path / f"replica-{i}"
        workdir.mkdir()
        consoles.append(ConsoleProcess(workdir, db, args=(
            "--syslog", syslog.url, "--webhook", hook.url)))
    consoles[0].cli("create-user", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    try:
        for c in consoles:
            c.start()
        yield consoles
    finally:
        for c in consoles:
            if c.proc is not None and c.proc.poll() is None:
                c.kill(signal.SIGTERM)


def login(console: ConsoleProcess) -> str:
    r = httpx.post(f"{console.url}{API}/auth/login",
                   json={"username": "admin", "password": PASSWORD}, timeout=30)
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


def enroll(console: ConsoleProcess, token: str, hostname: str) -> str:
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.post(f"{console.url}{API}/defenders/enrollment-tokens", json={}, headers=auth,
                   timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{console.url}{API}/defenders/enroll", timeout=30, json={
        "enrollment_token": r.json()["token"], "hostname": hostname, "version": "0.1.0"})
    assert r.status_code == 200, r.text
    credential: str = r.json()["credential"]
    return credential


def lease_holder_pid(db: str) -> int | None:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE name = 'singleton' "
                           "AND expires > now()").fetchone()
    return int(row[0].split(":")[1]) if row else None


def batch(defender: int, n: int) -> ReportBatch:
    ep = EndpointInfo(kind="container", address=f"10.0.{defender}.2", image="shop/api",
                      container="api", host=f"node-{defender}", namespace="shop")
    dst = EndpointInfo(kind="container", address="10.0.9.9", image="shop/db",
                       container="db", host="node-9", namespace="shop")
    return ReportBatch(batch_id=f"d{defender}-b{n}", audits=[AuditEvent(
        time=time.time(), type=RuleKind.CONTAINER,
        effect=Effect.PREVENT, blocked=True, rule_id=1, rule_name="api-not-db", src=ep,
        dst=dst, port=5432, message=f"d{defender}-b{n}-a{i}", reporter=f"node-{defender}")
        for i in range(AUDITS_PER_BATCH)])


def report(consoles: list[ConsoleProcess], credential: str, defender: int,
           kill_at: threading.Event, failovers: list[int]) -> None:
    """Send BATCHES batches, each to the next replica; a batch whose replica is gone
    (connection refused or cut) goes again to the next one, until one stores it."""
    turn = itertools.count(defender)
    auth = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
    with httpx.Client(timeout=30) as http:
        for n in range(BATCHES):
            if n == BATCHES // 3:
                kill_at.set()
            body = batch(defender, n).model_dump_json()
            for _ in range(20):
                console = consoles[next(turn) % len(consoles)]
                try:
                    r = http.post(f"{console.url}{API}/defender/reports", content=body,
                                  headers=auth)
                except httpx.TransportError:
                    failovers.append(defender)
                    continue
                assert r.status_code == 200, r.text
                break
            else:
                raise AssertionError(f"batch d{defender}-b{n} stored by no replica")


def test_kill_9_of_the_forwarding_replica_under_load(
        replicas: list[ConsoleProcess], sinks: tuple[SyslogListener, Webhook]) -> None:
    syslog, hook = sinks
    db = replicas[0].db
    admin = login(replicas[0])
    credentials = [enroll(replicas[i % REPLICAS], admin, f"node-{i}") for i in range(DEFENDERS)]

    holder = poll(lambda: lease_holder_pid(db), 30)
    pids = {c.proc.pid: c for c in replicas if c.proc is not None}
    assert holder in pids, (holder, pids)
    victim = pids[holder]

    kill_at = threading.Event()
    failovers: list[int] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            report(replicas, credentials[i], i, kill_at, failovers)
        except BaseException as exc:  # reported below
            errors.append(exc)
            kill_at.set()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(DEFENDERS)]
    for t in threads:
        t.start()
    assert kill_at.wait(120)
    assert not errors, errors
    victim.kill(signal.SIGKILL)  # the forwarding replica, mid-load
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert failovers, "no batch was sent to the killed replica after the kill"

    # The singleton work moved to a survivor.
    survivor = poll(lambda: lease_holder_pid(db) not in (None, holder) and
                    lease_holder_pid(db), 60)
    assert survivor in pids and survivor != holder, (survivor, holder)

    # Every audit stored exactly once.
    expected = {f"d{d}-b{n}-a{i}" for d in range(DEFENDERS) for n in range(BATCHES)
                for i in range(AUDITS_PER_BATCH)}
    with psycopg.connect(db, autocommit=True) as conn:
        rows = conn.execute("SELECT id, msg FROM audits").fetchall()
    messages = Counter(msg for _, msg in rows)
    assert set(messages) == expected and max(messages.values()) == 1
    stored = {audit_id for audit_id, _ in rows}

    # Every stored audit reached both sinks, by id; repeats only from the kill.
    def delivered() -> bool:
        return set(syslog.ids) >= stored and set(hook.delivered()) >= stored

    assert poll(delivered, 120), (len(stored - set(syslog.ids)),
                                  len(stored - set(hook.delivered())))
    with psycopg.connect(db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM forward_outbox").fetchone() == (0,)
    for name, ids in (("syslog", syslog.ids), ("webhook", hook.delivered())):
        assert set(ids) == stored, name
        repeats = len(ids) - len(set(ids))
        print(f"{name}: {len(set(ids))} audits, {repeats} repeated after the kill")
        assert repeats <= 500, (name, repeats)  # at most the batch cut short

    # A survivor's metrics: the lease held, no backlog.
    token = login(pids[survivor])
    metrics = httpx.get(f"{pids[survivor].url}/metrics", timeout=30,
                        headers={"Authorization": f"Bearer {token}"}).text
    assert 'cnnf_console_lease_held{lease="singleton"} 1.0' in metrics
    assert re.search(r'cnnf_console_forward_backlog_audits\{sink="syslog:[^"]*"\} 0\.0',
                     metrics), metrics


def notices(console: ConsoleProcess, token: str, topic: str) -> float:
    text = httpx.get(f"{console.url}/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {token}"}).text
    m = re.search(rf'cnnf_console_change_notices_total\{{topic="{topic}"\}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_a_policy_change_through_one_replica_wakes_long_polls_on_the_others(
        replicas: list[ConsoleProcess]) -> None:
    """Defenders long-polling replicas B and C get a policy changed through A: the
    change feed (LISTEN/NOTIFY) told B and C, as their metrics show."""
    a, b, c = replicas
    admin = login(a)
    auth = {"Authorization": f"Bearer {admin}"}
    credentials = {r.url: enroll(a, admin, f"node-{i}") for i, r in enumerate((b, c))}

    def current(r: ConsoleProcess) -> int:
        got = httpx.get(f"{r.url}{API}/defender/policy", timeout=30,
                        headers={"Authorization": f"Bearer {credentials[r.url]}"})
        assert got.status_code == 200, got.text
        revision: int = got.json()["revision"]
        return revision

    start = current(b)
    assert current(c) == start
    before = {r.url: notices(r, admin, "policy") for r in (b, c)}
    answers: dict[str, httpx.Response] = {}

    def long_poll(r: ConsoleProcess) -> None:
        answers[r.url] = httpx.get(
            f"{r.url}{API}/defender/policy", params={"revision": start, "wait": 30},
            headers={"Authorization": f"Bearer {credentials[r.url]}"}, timeout=60)

    polls = [threading.Thread(target=long_poll, args=(r,)) for r in (b, c)]
    for t in polls:
        t.start()
    r = httpx.post(f"{a.url}{API}/objects", headers=auth, timeout=30, json={
        "kind": "subnet", "name": "lan", "cidrs": ["192.0.2.0/24"]})
    assert r.status_code in (200, 201), r.text
    for t in polls:
        t.join(60)
    for replica in (b, c):
        got = answers[replica.url]
        assert got.status_code == 200, got.text
        assert got.json()["revision"] == start + 1
        assert any(o["name"] == "lan" for o in got.json()["document"]["spec"]["objects"])
        assert notices(replica, admin, "policy") > before[replica.url]
