"""The Console link client against a small in-test Console (loopback HTTP) that
speaks the protocol: enrollment, long-polls (200/204), 401 after revocation,
slow answers, idempotent report batches, a Console that is down."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from cnnf.defender.link import AuthError, ConsoleLink, LinkError, LinkRunner
from cnnf.defender.spool import Spool
from cnnf.model import Effect, Policy
from cnnf.model.records import (
    ClusterInventory,
    EndpointInfo,
    FlowRecord,
    HostInfo,
    InventoryReport,
    ReportBatch,
)
from cnnf.policy.document import policy_document

TOKEN = "cnnfe_good"


class FakeConsole:
    """The Console side of the protocol, in memory."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.policy_revision = 1
        self.policy = Policy(container_enabled=True, revision=1)
        self.inventory_revision = 1
        self.hosts: list[HostInfo] = []
        self.credentials: set[str] = set()
        self.enrolls = 0
        self.batches: dict[str, ReportBatch] = {}
        self.order: list[str] = []
        self.down = False  # answer 503 to every call
        self.delay = 0.0  # seconds before answering
        self.lose_answer_once = False  # store a batch, then drop the connection
        self.inventories: list[InventoryReport] = []
        self.refuse: set[str] = set()  # batch ids answered 413, as an oversized body
        self.refuse_inventory = False  # answer 422 to inventory reports

    def set_policy(self, policy: Policy) -> None:
        with self.cond:
            self.policy_revision += 1
            self.policy = policy
            self.cond.notify_all()


def handler_for(console: FakeConsole) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"null")

        def _authorised(self) -> bool:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in console.credentials:
                self._send(401, {"detail": "bad credential"})
                return False
            return True

        def _common(self) -> bool:
            if console.delay:
                time.sleep(console.delay)
            if console.down:
                self._send(503, {"detail": "down"})
                return False
            return True

        def do_GET(self) -> None:
            if not self._common() or not self._authorised():
                return
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            revision, wait = int(q["revision"]), min(float(q["wait"]), 30)
            with console.cond:
                if url.path == "/api/v1/defender/policy":
                    console.cond.wait_for(lambda: console.policy_revision != revision, wait)
                    if console.policy_revision == revision:
                        return self._send(204)
                    doc = policy_document(console.policy)
                    return self._send(200, {"revision": console.policy_revision,
                                            "document": doc})
                if url.path == "/api/v1/defender/inventory":
                    console.cond.wait_for(lambda: console.inventory_revision != revision, wait)
                    if console.inventory_revision == revision:
                        return self._send(204)
                    inv = ClusterInventory(revision=console.inventory_revision,
                                           hosts=console.hosts)
                    return self._send(200, inv.model_dump(mode="json"))
            self._send(404)

        def do_POST(self) -> None:
            if not self._common():
                return
            if self.path == "/api/v1/defenders/enroll":
                body = self._body()
                if body.get("enrollment_token") != TOKEN:
                    return self._send(401, {"detail": "bad enrollment token"})
                console.enrolls += 1
                cred = f"cnnfd_{console.enrolls}"
                console.credentials.add(cred)
                return self._send(200, {"defender_id": f"d{console.enrolls}",
                                        "credential": cred})
            if not self._authorised():
                return
            if self.path == "/api/v1/defender/inventory":
                report = InventoryReport.model_validate(self._body())
                if console.refuse_inventory:
                    return self._send(422, {"detail": "containers[0].address: bad"})
                with console.cond:
                    console.inventories.append(report)
                    console.hosts = [report.host]
                    console.inventory_revision += 1
                    console.cond.notify_all()
                return self._send(204)
            if self.path == "/api/v1/defender/reports":
                batch = ReportBatch.model_validate(self._body())
                if batch.batch_id in console.refuse:
                    return self._send(413, {"detail": "request body is too large"})
                dup = batch.batch_id in console.batches
                if not dup:
                    console.batches[batch.batch_id] = batch
                    console.order.append(batch.batch_id)
                if console.lose_answer_once:
                    console.lose_answer_once = False
                    self.close_connection = True
                    self.connection.close()
                    return
                return self._send(200, {"accepted": True, "duplicate": dup})
            self._send(404)

    return Handler


@pytest.fixture
def console() -> Iterator[tuple[FakeConsole, str]]:
    fake = FakeConsole()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def make_link(url: str, state: Path, token: str | None = TOKEN, **kw: Any) -> ConsoleLink:
    return ConsoleLink(url, state, hostname="node-1", enrollment_token=token, **kw)


def batch(i: int) -> ReportBatch:
    ep = EndpointInfo(kind="address", address="10.0.0.1")
    f = FlowRecord(src=ep, dst=ep, port=i, effect=Effect.ALLOW, matched=False, first_seen=1.0,
                   last_seen=1.0)
    return ReportBatch(batch_id=f"b{i}", flows=[f])


def test_enrolls_once_and_reuses_the_stored_credential(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    link = make_link(url, tmp_path)
    assert link.fetch_policy(-1, 0) is not None
    mode = stat.S_IMODE((tmp_path / "credential").stat().st_mode)
    assert mode == 0o600
    link.close()
    again = make_link(url, tmp_path, token=None)  # a restart: no token needed any more
    assert again.fetch_policy(-1, 0) is not None
    again.close()
    assert fake.enrolls == 1


def test_bad_enrollment_token_is_refused_and_nothing_is_stored(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    _, url = console
    link = make_link(url, tmp_path, token="cnnfe_wrong")
    with pytest.raises(AuthError, match="enrollment token"):
        link.fetch_policy(-1, 0)
    assert not (tmp_path / "credential").exists()
    link.close()
    with pytest.raises(AuthError, match="no enrollment token"):
        make_link(url, tmp_path, token=None).enroll()


def test_policy_long_poll_200_then_204_then_change_during_the_wait(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    link = make_link(url, tmp_path)
    got = link.fetch_policy(-1, 5)
    assert got is not None and got[0] == 1 and got[1].container_enabled
    assert link.fetch_policy(1, 0.2) is None  # nothing new: 204 after the wait
    changer = threading.Timer(0.3, fake.set_policy, [Policy(host_enabled=True)])
    changer.start()
    got = link.fetch_policy(1, 20)  # returns as soon as the revision moves
    changer.join()
    assert got is not None and got[0] == 2 and got[1].host_enabled
    link.close()


def test_revoked_credential_gets_auth_error(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    link = make_link(url, tmp_path)
    link.enroll()
    fake.credentials.clear()  # DELETE /api/v1/defenders/{id}
    with pytest.raises(AuthError, match="401"):
        link.fetch_inventory(-1, 0)
    with pytest.raises(AuthError):
        link.push_batch(batch(1))
    link.close()


def test_slow_console_times_out_and_unreachable_console_is_a_link_error(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    link = make_link(url, tmp_path, timeout=0.3)
    link.enroll()
    fake.delay = 1.0
    with pytest.raises(LinkError, match="Timeout"):
        link.fetch_policy(-1, 0)
    link.close()
    gone = make_link("http://127.0.0.1:9", tmp_path / "other")
    with pytest.raises(LinkError, match="ConnectError"):
        gone.enroll()
    gone.close()


def test_spooled_batches_are_delivered_in_order_once_the_console_is_back(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    link = make_link(url, tmp_path)
    link.enroll()
    spool = Spool(tmp_path / "spool")
    fake.down = True
    for i in range(4):
        spool.put(batch(i))
    with pytest.raises(LinkError, match="503"):
        link.deliver(spool)
    assert len(spool.pending()) == 4  # nothing deleted without a 200
    fake.down = False
    assert link.deliver(spool) == 4
    assert fake.order == ["b0", "b1", "b2", "b3"] and spool.pending() == []
    link.close()


def test_a_lost_answer_is_redelivered_and_stored_once(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    link = make_link(url, tmp_path)
    link.enroll()
    spool = Spool(tmp_path / "spool")
    spool.put(batch(1))
    fake.lose_answer_once = True
    with pytest.raises(LinkError):
        link.deliver(spool)
    assert len(spool.pending()) == 1
    assert link.deliver(spool) == 1
    assert fake.order == ["b1"]
    link.close()


def test_spool_overflow_while_down_reports_the_dropped_count(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    link = make_link(url, tmp_path)
    link.enroll()
    spool = Spool(tmp_path / "spool", max_files=2)
    fake.down = True
    for i in range(5):
        spool.put(batch(i))  # b0..b2 dropped, one flow each
    fake.down = False
    spool.put(ReportBatch(batch_id="next", dropped=spool.take_dropped()))  # as the agent does
    link.deliver(spool)
    assert fake.order == ["b4", "next"]  # b3 went when "next" arrived
    assert fake.batches["next"].dropped == 3
    assert spool.take_dropped() == 1
    link.close()


def test_a_refused_batch_is_dropped_and_counted_not_retried_forever(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    link = make_link(url, tmp_path)
    link.enroll()
    spool = Spool(tmp_path / "spool")
    fake.refuse = {"b1"}
    for i in range(3):
        spool.put(batch(i))
    assert link.deliver(spool) == 3
    assert fake.order == ["b0", "b2"] and spool.pending() == []
    assert spool.take_dropped() == 1  # b1's one flow, reported in the next batch
    link.close()


def test_a_refused_inventory_does_not_hold_up_the_reports(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    fake.refuse_inventory = True
    link = make_link(url, tmp_path)
    spool = Spool(tmp_path / "spool")
    spool.put(batch(1))
    runner = LinkRunner(link, spool, on_policy=lambda r, p: None,
                        on_inventory=lambda inv: None, wait=1.0)
    runner.set_inventory(InventoryReport(host=HostInfo(name="node-1", addresses=["x"])))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while fake.order != ["b1"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.stop()
        link.close()
    assert fake.order == ["b1"] and fake.inventories == []


def test_runner_is_not_connected_before_any_call_succeeded(tmp_path: Path) -> None:
    # Nothing listens on port 9; the long-polls fail, and the uplink, with
    # nothing to send, must not claim the link is up.
    link = make_link("http://127.0.0.1:9", tmp_path, token=None)
    link.credential = "cnnfd_x"
    runner = LinkRunner(link, Spool(tmp_path / "spool"), on_policy=lambda r, p: None,
                        on_inventory=lambda inv: None, wait=1.0)
    runner.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert not runner.connected
            time.sleep(0.05)
    finally:
        runner.stop()
        link.close()
    assert "127.0.0.1:9" in runner.last_error


def test_runner_applies_and_persists_policy_and_pushes_inventory(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    link = make_link(url, tmp_path)
    policies: list[tuple[int, Policy]] = []
    inventories: list[ClusterInventory] = []
    applied = threading.Event()
    runner = LinkRunner(link, Spool(tmp_path / "spool"),
                        on_policy=lambda r, p: (policies.append((r, p)), applied.set()),
                        on_inventory=inventories.append, wait=1.0)
    report = InventoryReport(host=HostInfo(name="node-1", addresses=["10.0.0.1"]))
    runner.set_inventory(report)
    runner.start()
    try:
        assert applied.wait(10)
        deadline = time.monotonic() + 10
        while not any(i.hosts for i in inventories) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.stop()
        link.close()
    assert policies[0][0] == 1 and policies[0][1].container_enabled
    assert fake.inventories == [report]  # pushed once: it did not change
    assert any(i.hosts == [report.host] for i in inventories)
    # A later start with the Console unreachable uses the saved policy.
    offline = make_link("http://127.0.0.1:9", tmp_path)
    saved = offline.saved_policy()
    assert saved is not None and saved.container_enabled and saved.revision == 1
    cluster = offline.saved_cluster()  # and the cluster inventory last received
    assert cluster is not None and cluster.hosts == [report.host]


def test_threads_needing_the_credential_at_once_enroll_once(
    console: tuple[FakeConsole, str], tmp_path: Path
) -> None:
    fake, url = console
    link = make_link(url, tmp_path)
    barrier = threading.Barrier(4)
    got: list[str] = []

    def worker() -> None:
        barrier.wait()
        got.append(link.enroll())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    link.close()
    assert fake.enrolls == 1 and len(set(got)) == 1 and len(got) == 4
