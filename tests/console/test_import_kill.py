"""A Console killed halfway through an import leaves the previous policy whole.

``cnnf console`` runs as a real process on a store (SQLite, and PostgreSQL
started by the fixture). It holds policy A; an import of a large policy B
(20,000 rules: validating and writing it takes seconds) is sent over a raw
socket, and the Console is SIGKILLed at several points while that request is in
flight. Restarted on the same store, the Console must hold exactly A or exactly
B (the exported documents compared whole, the change history agreeing), and the
store must open cleanly. (Each run starts on a copy of one store that holds A:
the user and A are made once.)

Kill points: right after the request body was sent; as soon as the store shows
the import's write transaction open (another connection is refused the write
lock on SQLite; the Console's backend holds a transaction id on PostgreSQL), so
the kill lands mid-apply; two fixed delays; and after the answer (a committed
import survives a kill). Which policy each kill left is recorded and printed.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.managed import PASSWORD, ConsoleProcess

RULES_IN_B = 20_000
OBJECTS_IN_B = 100


def policy_a() -> dict[str, Any]:
    return {"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {
        "containerEnabled": True, "defaultEffect": "alert", "blockMode": "reset",
        "objects": [
            {"name": "web", "kind": "container", "selector": {"images": ["shop/web*"]}},
            {"name": "db", "kind": "container", "selector": {"images": ["shop/db*"]}},
            {"name": "lan", "kind": "subnet", "cidrs": ["192.0.2.0/24"]},
        ],
        "containerRules": [
            {"id": 1, "name": "web-db", "src": "web", "dst": "db", "ports": [5432]},
            {"id": 2, "name": "db-lan", "src": "db", "dst": "lan", "ports": ["*"],
             "effect": "prevent"},
        ],
    }}


def policy_b() -> bytes:
    """Shares no rule with A (its objects and rules are all different)."""
    objects = [{"name": f"svc{i}", "kind": "container",
                "selector": {"images": [f"big/svc{i}"]}} for i in range(OBJECTS_IN_B)]
    rules = [{"id": i + 1, "name": f"r{i}", "src": f"svc{i % OBJECTS_IN_B}",
              "dst": f"svc{(i * 7 + 1) % OBJECTS_IN_B}", "ports": [1000 + i % 5000],
              "effect": ("allow", "alert", "prevent")[i % 3]} for i in range(RULES_IN_B)]
    doc = {"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {
        "containerEnabled": False, "hostEnabled": True, "defaultEffect": "prevent",
        "blockMode": "drop", "objects": objects, "containerRules": rules}}
    return json.dumps(doc, separators=(",", ":")).encode()


def without_revision(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "spec": {k: v for k, v in doc["spec"].items() if k != "revision"}}


class WriteProbe:
    """Whether some other connection holds a write transaction on the store."""

    def __init__(self, db: str) -> None:
        self.sqlite: sqlite3.Connection | None = None
        self.pg: Any = None
        if db.startswith("sqlite:///"):
            self.sqlite = sqlite3.connect(db.removeprefix("sqlite:///"), timeout=0,
                                          isolation_level=None)
        else:
            import psycopg

            self.pg = psycopg.connect(db.replace("postgresql+psycopg://", "postgresql://"),
                                      autocommit=True)

    def holder(self) -> object | None:
        if self.sqlite is not None:
            try:
                self.sqlite.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                assert "locked" in str(exc), exc
                return "writer"
            self.sqlite.execute("ROLLBACK")
            return None
        row = self.pg.execute(
            "SELECT pid, backend_xid::text FROM pg_stat_activity WHERE datname = "
            "current_database() AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
        ).fetchone()
        return tuple(row) if row else None

    def wait_held(self, hold: float = 0.2, timeout: float = 60.0) -> bool:
        """True once the same write transaction stayed open for ``hold`` seconds
        (short writes, a session touched at sign-in say, do not count)."""
        deadline = time.monotonic() + timeout
        seen: object | None = None
        since = 0.0
        while time.monotonic() < deadline:
            now, held = time.monotonic(), self.holder()
            if held is None or held != seen:
                seen, since = held, now
            elif now - since >= hold:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()
        if self.pg is not None:
            self.pg.close()


@dataclass
class Run:
    kill_point: str
    answered: bool  # the Console had answered before the kill
    in_transaction: bool  # the import's write transaction was seen open (probed at one point)
    outcome: str  # "A" or "B"


def send_import(port: int, token: str, body: bytes) -> socket.socket:
    """The whole request, head and body, handed to the kernel; the answer is not read."""
    s = socket.create_connection(("127.0.0.1", port))
    head = (f"POST /api/v1/policy/import HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    s.sendall(head + body)
    return s


def answer(s: socket.socket, timeout: float) -> bytes:
    """What the Console sent back (up to EOF or ``timeout``)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def new_store(db_url: str, tmp_path: Path,
              request: pytest.FixtureRequest) -> Callable[[str | None], str]:
    """A new store on the backend ``db_url`` is on, each call: empty, or a copy of
    the store ``of`` (one no Console holds open). The store is the whole state these
    Consoles need: users, policy and history (no CA or secret of the data directory
    is used over plain HTTP)."""
    if not db_url.startswith("sqlite"):
        server = request.getfixturevalue("pg_server")
        return server.create_database  # type: ignore[no-any-return]
    count = iter(range(1000))

    def make(of: str | None = None) -> str:
        path = tmp_path / f"store-{next(count)}.db"
        if of is not None:
            with closing(sqlite3.connect(of.removeprefix("sqlite:///"))) as source, \
                    closing(sqlite3.connect(path)) as copy:
                source.backup(copy)
        return f"sqlite:///{path}"

    return make


class Store:
    """One store with its Console process (restartable) and an admin token."""

    def __init__(self, db: str, workdir: Path, *, copied: bool = False) -> None:
        workdir.mkdir()
        self.db = db
        self.console = ConsoleProcess(workdir, db)
        if not copied:  # a copy has the admin already
            self.console.cli("create-user", "admin", "--password-stdin", stdin=PASSWORD + "\n")
        self.token = ""

    def start(self) -> None:
        self.console.start()
        r = httpx.post(f"{self.console.url}/api/v1/auth/login",
                       json={"username": "admin", "password": PASSWORD}, timeout=30)
        assert r.status_code == 200, r.text
        self.token = r.json()["token"]

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.console.url, timeout=120,
                            headers={"Authorization": f"Bearer {self.token}"})

    def export(self) -> dict[str, Any]:
        with self.api() as api:
            r = api.get("/api/v1/policy/export")
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

    def actions(self) -> list[str]:
        with self.api() as api:
            items = api.get("/api/v1/changes").json()["items"]
        return [c["action"] for c in reversed(items)]

    def stop(self) -> None:
        if self.console.proc is not None:
            self.console.kill()


@pytest.fixture
def stores(new_store: Callable[[str | None], str],
           tmp_path: Path) -> Iterator[Callable[[Store | None], Store]]:
    """A new store with its Console (not started) each call: empty but for the admin,
    or a copy of a stopped ``Store``."""
    made: list[Store] = []

    def make(of: Store | None = None) -> Store:
        assert of is None or of.console.proc is None, "copy a store no Console holds open"
        store = Store(new_store(None if of is None else of.db),
                      tmp_path / f"console-{len(made)}", copied=of is not None)
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            store.stop()


def opens_cleanly(store: Store) -> None:
    """Restarted after the kill: it migrates and serves; SQLite passes its check."""
    store.start()
    if store.db.startswith("sqlite:///"):
        with sqlite3.connect(store.db.removeprefix("sqlite:///")) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_console_killed_halfway_through_an_import_leaves_the_previous_policy_whole(
    stores: Callable[[Store | None], Store],
) -> None:
    big = policy_b()
    a_actions = ["policy.import.native"]
    b_actions = a_actions * 2

    # The store holding A, made once; each run below starts on a copy of it.
    holding_a = stores(None)
    holding_a.start()
    with holding_a.api() as api:
        assert api.post("/api/v1/policy/import", json=policy_a()).status_code == 200
    a_export = holding_a.export()
    assert holding_a.actions() == a_actions
    process = holding_a.console.proc
    assert process is not None
    process.send_signal(signal.SIGTERM)  # stopped, not killed midway: no crash of its own
    assert process.wait(30) in (0, -signal.SIGTERM), holding_a.console.log.read_text()[-2000:]
    holding_a.console.proc = None
    if holding_a.db.startswith("sqlite:///"):
        with closing(sqlite3.connect(holding_a.db.removeprefix("sqlite:///"))) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    # B applied without a kill (then killed after the answer): what "exactly B" is.
    store = stores(holding_a)
    store.start()
    assert store.export() == a_export
    sock = send_import(store.console.port, store.token, big)
    reply = answer(sock, 120)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    b_export = store.export()
    store.console.kill()
    opens_cleanly(store)
    assert store.export() == b_export
    assert store.actions() == b_actions
    assert len(b_export["spec"]["containerRules"]) == RULES_IN_B
    assert b_export["spec"]["revision"] == a_export["spec"]["revision"] + 1
    runs = [Run("after the answer", True, True, "B")]
    store.stop()

    kill_points: list[tuple[str, Callable[[WriteProbe], bool]]] = [
        ("body sent", lambda probe: False),
        ("write transaction open", lambda probe: probe.wait_held()),
        ("1 s after sending", lambda probe: time.sleep(1.0) or False),
        ("3 s after sending", lambda probe: time.sleep(3.0) or False),
    ]
    for name, wait in kill_points:
        store = stores(holding_a)
        store.start()
        before = store.export()
        assert before == a_export
        probe = WriteProbe(store.db)
        try:
            sock = send_import(store.console.port, store.token, big)
            in_transaction = wait(probe)
            answered = bool(select.select([sock], [], [], 0)[0])
            store.console.kill()
        finally:
            probe.close()
        reply = answer(sock, 5)
        sock.close()
        answered = answered and reply.startswith(b"HTTP/1.1 200")

        opens_cleanly(store)
        after = store.export()
        if after == before:
            outcome = "A"
            assert store.actions() == a_actions
        else:
            outcome = "B"
            assert without_revision(after) == without_revision(b_export), (
                f"killed at {name!r}: the policy is neither A nor B")
            assert after == b_export  # same revision too: one change, not two
            assert store.actions() == b_actions
        # A kill after the answer (possible at the fixed delays) never loses B.
        assert not answered or outcome == "B", name
        runs.append(Run(name, answered, in_transaction, outcome))
        store.stop()

    print("\n" + "\n".join(f"killed {r.kill_point}: policy {r.outcome} "
                           f"(answered: {r.answered}, transaction seen open: "
                           f"{r.in_transaction})" for r in runs))
    # The request was sent and its write transaction had begun, yet A survived.
    assert any(r.in_transaction and not r.answered and r.outcome == "A" for r in runs), runs
