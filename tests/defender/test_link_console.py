"""The Console link client against the real Console (served by uvicorn on
loopback), for the paths tests/defender/test_link.py plays against a fake one:
an answer lost after the Console stored a batch, a batch the Console refuses as
too large (413), and an inventory it refuses that must not hold up the reports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session
from tests.served import uvicorn_thread

from cnnf.console.app import create_app
from cnnf.console.config import ConsoleConfig
from cnnf.console.security import Role
from cnnf.console.services.users import UserService
from cnnf.console.store.db import connect
from cnnf.defender.link import ConsoleLink, LinkError, LinkRunner
from cnnf.defender.spool import Spool
from cnnf.model import Effect
from cnnf.model.records import (
    AuditEvent,
    AuditType,
    EndpointInfo,
    FlowRecord,
    HostInfo,
    InventoryReport,
    ReportBatch,
    WorkloadInfo,
)

ADMIN = ("admin", "correct horse battery")
MAX_BODY = 16 * 1024  # small, so that a large batch or inventory is refused with 413


@dataclass
class RealConsole:
    url: str
    admin: httpx.Client

    def enrollment_token(self) -> str:
        r = self.admin.post("/api/v1/defenders/enrollment-tokens", json={})
        r.raise_for_status()
        return str(r.json()["token"])

    def flow_counts(self) -> dict[int, int]:
        items = self.admin.get("/api/v1/flows", params={"limit": 1000}).json()["items"]
        return {int(f["port"]): int(f["count"]) for f in items}


@contextmanager
def serve(tmp_path: Path) -> Iterator[RealConsole]:
    db_url = f"sqlite:///{tmp_path / 'console.db'}"
    engine = connect(db_url)
    app = create_app(ConsoleConfig(db_url=db_url, data_dir=tmp_path, max_body_bytes=MAX_BODY),
                     engine=engine)
    with Session(engine) as s:
        UserService(s).create_user(ADMIN[0], Role.ADMIN, ADMIN[1])
    with uvicorn_thread(app) as port:
        url = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{url}/api/v1/auth/login", timeout=30,  # a loaded machine
                           json={"username": ADMIN[0], "password": ADMIN[1]}).json()["token"]
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                             timeout=30)
        try:
            yield RealConsole(url, admin)
        finally:
            admin.close()
    engine.dispose()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[RealConsole]:
    with serve(tmp_path / "console") as c:
        yield c


class AnswerLosingProxy:
    """A loopback HTTP/1.1 proxy in front of the Console that, when armed, passes
    the next report batch to the Console, reads its answer, and closes the
    Defender's connection instead of answering: the answer is lost after the
    Console stored the batch."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = False
        self.error: int | None = None  # answer every request with this status instead
        self.lost: list[bytes] = []  # the answers withheld
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _message(conn: socket.socket, buffer: bytearray, response: bool) -> bytes | None:
        while b"\r\n\r\n" not in buffer:
            data = conn.recv(65536)
            if not data:
                return None
            buffer += data
        head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if response and head.split(b" ")[1] in (b"204", b"304"):
            length = 0
        total = len(head) + 4 + length
        while len(buffer) < total:
            data = conn.recv(65536)
            if not data:
                return None
            buffer += data
        message = bytes(buffer[:total])
        del buffer[:total]
        return message

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        from_client, from_upstream = bytearray(), bytearray()
        try:
            while True:
                request = self._message(client, from_client, response=False)
                if request is None:
                    return
                upstream.sendall(request)
                answer = self._message(upstream, from_upstream, response=True)
                if answer is None:
                    return
                if self.armed and request.startswith(b"POST /api/v1/defender/reports"):
                    self.armed = False
                    self.lost.append(answer)
                    return  # closes the Defender's connection without an answer
                if self.error is not None:  # the Console did the work; its answer is lost
                    self.lost.append(answer)
                    body = b'{"detail": "store error; nothing was changed"}'
                    answer = (b"HTTP/1.1 %d Error\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (self.error, len(body), body))
                client.sendall(answer)
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.sock.close()


def flows_batch(batch_id: str, ports: range) -> ReportBatch:
    ep = EndpointInfo(kind="address", address="10.0.0.1")
    flows = [FlowRecord(src=ep, dst=ep, port=p, effect=Effect.ALLOW, matched=False,
                        first_seen=1.0, last_seen=1.0) for p in ports]
    return ReportBatch(batch_id=batch_id, flows=flows)


def enrolled(console: RealConsole, state: Path, url: str | None = None) -> ConsoleLink:
    """A link enrolled with the real Console; ``url``: then talk to it there."""
    link = ConsoleLink(console.url, state, hostname="node-1",
                       enrollment_token=console.enrollment_token())
    link.enroll()
    if url is None:
        return link
    link.close()
    return ConsoleLink(url, state, hostname="node-1")  # the stored credential


def test_a_lost_answer_is_redelivered_and_the_console_stores_the_batch_once(
    console: RealConsole, tmp_path: Path
) -> None:
    proxy = AnswerLosingProxy(int(console.url.rsplit(":", 1)[1]))
    link = enrolled(console, tmp_path / "state", proxy.url)
    spool = Spool(tmp_path / "spool")
    spool.put(flows_batch("b1", range(1000, 1003)))
    proxy.armed = True
    try:
        with pytest.raises(LinkError):
            link.deliver(spool)
        assert proxy.lost and b" 200 " in proxy.lost[0].split(b"\r\n")[0]  # stored, then lost
        assert len(spool.pending()) == 1  # kept: no answer, no delete
        assert link.deliver(spool) == 1
        assert spool.pending() == []
    finally:
        link.close()
        proxy.close()
    assert console.flow_counts() == {1000: 1, 1001: 1, 1002: 1}  # once, not twice
    metrics = console.admin.get("/metrics").text
    assert 'cnnf_console_report_batches_total{result="duplicate"} 1.0' in metrics
    assert 'cnnf_console_report_batches_total{result="stored"} 1.0' in metrics


def test_a_batch_the_console_refuses_as_too_large_is_dropped_and_counted(
    console: RealConsole, tmp_path: Path
) -> None:
    link = enrolled(console, tmp_path / "state")
    spool = Spool(tmp_path / "spool")
    big = flows_batch("b1", range(2000, 2400))
    assert len(big.model_dump_json()) > MAX_BODY
    for batch in (flows_batch("b0", range(1, 3)), big, flows_batch("b2", range(3, 5))):
        spool.put(batch)
    try:
        assert link.deliver(spool) == 3  # all three handled: two stored, one refused
    finally:
        link.close()
    assert spool.pending() == []
    assert spool.take_dropped() == 400  # the refused batch's records, reported next
    assert console.flow_counts() == {1: 1, 2: 1, 3: 1, 4: 1}


def test_two_defenders_sending_one_batch_id_both_get_it_stored(
    console: RealConsole, tmp_path: Path
) -> None:
    """Two Defenders with one batch id (a cloned state directory): batch ids are per
    Defender in the Console, so each one's records are stored, none dropped."""
    first = enrolled(console, tmp_path / "state-1")
    second = enrolled(console, tmp_path / "state-2")
    spool_1, spool_2 = Spool(tmp_path / "spool-1"), Spool(tmp_path / "spool-2")
    spool_1.put(flows_batch("same", range(1, 3)))
    spool_2.put(flows_batch("same", range(10, 13)))
    try:
        assert first.deliver(spool_1) == 1
        assert second.deliver(spool_2) == 1
    finally:
        first.close()
        second.close()
    assert spool_2.pending() == []
    assert spool_2.take_dropped() == 0
    assert console.flow_counts() == {1: 1, 2: 1, 10: 1, 11: 1, 12: 1}


def test_an_inventory_the_console_refuses_does_not_hold_up_the_reports(
    console: RealConsole, tmp_path: Path
) -> None:
    link = enrolled(console, tmp_path / "state")
    spool = Spool(tmp_path / "spool")
    spool.put(flows_batch("b1", range(7000, 7002)))
    huge = InventoryReport(
        host=HostInfo(name="node-1", addresses=["10.0.0.1"]),
        containers=[WorkloadInfo(address=f"10.1.{i // 250}.{i % 250 + 1}", image="shop/app:1",
                                 name=f"app-{i}", host="node-1") for i in range(400)])
    assert len(huge.model_dump_json()) > MAX_BODY
    runner = LinkRunner(link, spool, on_policy=lambda r, p: None,
                        on_inventory=lambda inv: None, wait=1.0)
    runner.set_inventory(huge)
    runner.start()
    try:
        deadline = time.monotonic() + 15
        while console.flow_counts() != {7000: 1, 7001: 1} and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.stop()
        link.close()
    assert console.flow_counts() == {7000: 1, 7001: 1}
    [defender] = console.admin.get("/api/v1/defenders").json()
    assert defender["hostname"] == "node-1" and defender["workloads"] == 0  # not stored


def test_several_console_urls_fail_over_without_losing_or_repeating_a_batch(
    console: RealConsole, tmp_path: Path
) -> None:
    """``--console A,B,C``: A refuses connections (dead), B stores the first batch
    and dies before answering (the proxy withholds its answer), C is up. One
    delivery moves from A to B to C at once: both spooled batches are stored, each
    once (C recognises B's batch by its id), and nothing is left in the spool."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed when the block ends
    proxy = AnswerLosingProxy(int(console.url.rsplit(":", 1)[1]))
    link = enrolled(console, tmp_path / "state", f"{dead},{proxy.url},{console.url}")
    assert link.url == dead
    spool = Spool(tmp_path / "spool")
    spool.put(flows_batch("b1", range(1000, 1003)))
    spool.put(flows_batch("b2", range(2000, 2002)))
    proxy.armed = True
    try:
        assert link.deliver(spool) == 2
        assert proxy.lost  # B stored b1 and its answer never came
        assert spool.pending() == []
        assert link.url == console.url and link.failovers == 2
    finally:
        link.close()
        proxy.close()
    assert console.flow_counts() == {1000: 1, 1001: 1, 1002: 1, 2000: 1, 2001: 1}
    metrics = console.admin.get("/metrics").text
    assert 'cnnf_console_report_batches_total{result="duplicate"} 1.0' in metrics
    assert 'cnnf_console_report_batches_total{result="stored"} 2.0' in metrics


@pytest.mark.parametrize("status", [500, 503])
def test_a_replica_answering_5xx_is_left_for_the_next_without_losing_or_repeating(
    console: RealConsole, tmp_path: Path, status: int
) -> None:
    """``--console A,B``: A is a replica that stores what it is given and then
    answers 500 (its store failed at the end) or 503 (not ready). The Defender
    moves to B at once: the policy long-poll gets its answer there, and both
    spooled batches are stored once each (B recognises A's batch by its id);
    nothing is left in the spool."""
    proxy = AnswerLosingProxy(int(console.url.rsplit(":", 1)[1]))
    link = enrolled(console, tmp_path / "state", f"{proxy.url},{console.url}")
    spool = Spool(tmp_path / "spool")
    spool.put(flows_batch("b1", range(1000, 1003)))
    spool.put(flows_batch("b2", range(2000, 2002)))
    proxy.error = status
    try:
        assert link.deliver(spool) == 2
        assert len(proxy.lost) == 1  # A stored b1; the Defender never saw that answer
        assert spool.pending() == []
        assert link.url == console.url and link.failovers == 1
        got = link.fetch_policy(-1, 0)
        assert got is not None and got[0] >= 0
    finally:
        link.close()
        proxy.close()
    assert console.flow_counts() == {1000: 1, 1001: 1, 1002: 1, 2000: 1, 2001: 1}
    metrics = console.admin.get("/metrics").text
    assert 'cnnf_console_report_batches_total{result="duplicate"} 1.0' in metrics
    assert 'cnnf_console_report_batches_total{result="stored"} 2.0' in metrics


def test_a_console_list_with_a_url_that_is_not_http_is_refused() -> None:
    from cnnf.defender.config import ConfigError, DefenderConfig

    with pytest.raises(ConfigError, match="'ftp://b' is not an http:// or https:// URL"):
        DefenderConfig(console="http://a:8080,ftp://b")


def test_a_batch_refused_for_some_records_is_sent_again_without_them(
    console: RealConsole, tmp_path: Path
) -> None:
    """A workload's SYN to port 0 becomes a flow and an audit the Console's store
    cannot hold (422 naming them): the batch is sent once more without those two
    records, so the audit beside them is stored, not dropped with them."""
    link = enrolled(console, tmp_path / "state")
    spool = Spool(tmp_path / "spool")
    src = EndpointInfo(kind="address", address="10.0.0.1")
    dst = EndpointInfo(kind="address", address="10.0.0.2")

    def audit(port: int) -> AuditEvent:
        return AuditEvent(time=time.time(), type=AuditType.CONTAINER, effect=Effect.PREVENT,
                          blocked=True, rule_id=None, src=src, dst=dst, port=port,
                          message=f"blocked to port {port}")

    batch = flows_batch("b1", range(0, 3))  # ports 0, 1 and 2
    spool.put(batch.model_copy(update={"audits": [audit(0), audit(22)]}))
    try:
        assert link.deliver(spool) == 1
    finally:
        link.close()
    assert spool.pending() == []
    assert spool.take_dropped() == 2  # the port-0 flow and audit, counted
    assert console.flow_counts() == {1: 1, 2: 1}
    audits = console.admin.get("/api/v1/audits", params={"limit": 100}).json()["items"]
    assert [a["port"] for a in audits] == [22]
