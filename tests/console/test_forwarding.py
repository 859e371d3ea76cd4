"""Audit forwarding against real loopback listeners: syslog (RFC 5424) over UDP and
TCP, a webhook that fails twice before it succeeds, a full queue that drops
instead of blocking, and audits stored through the Defender endpoint arriving
at syslog."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from consoletest import Clock, Console

from cnnf.console.app import create_app
from cnnf.console.config import ConsoleConfig
from cnnf.console.security import Role
from cnnf.console.services.forwarding import (
    QUEUE_BATCHES,
    Forwarder,
    SyslogSink,
    WebhookSink,
    parse_syslog_url,
    syslog_message,
    webhook_name,
)
from cnnf.console.services.records import AuditRecord
from cnnf.console.store.db import connect
from cnnf.errors import CnnfError
from cnnf.model import Effect

# <PRI>1 TIMESTAMP HOSTNAME APP PROCID MSGID [SD] MSG
RFC5424 = re.compile(r'^<(\d+)>1 (\S+) (\S+) cnnf - audit (\[cnnf@32473 (?:[^\]\\]|\\.)*\]) (.*)$',
                     re.DOTALL)


def poll(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def record(i: int = 1, blocked: bool = True, msg: str = "blocked connection") -> AuditRecord:
    return AuditRecord(
        time=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), blocked=blocked,
        effect=Effect.PREVENT if blocked else Effect.ALERT, rule_id=i,
        rule_name='db "only"]', src_image="shop/api", dst_image="shop/db",
        src_hostname="node-1", dst_hostname="node-2", port=5432, msg=msg, count=i,
        defender="node 1")


def test_rfc5424_message_fields_and_escaping() -> None:
    text = syslog_message(record(blocked=True)).decode()
    m = RFC5424.match(text)
    assert m, text
    pri, stamp, host, sd, msg = m.groups()
    assert int(pri) == 16 * 8 + 4  # local0, warning
    assert stamp == "2026-01-02T03:04:05.123456Z"
    assert host == "node1"  # no spaces in a header field
    assert 'rule="db \\"only\\"\\]"' in sd
    assert 'blocked="true"' in sd and 'port="5432"' in sd and 'srcImage="shop/api"' in sd
    assert msg == "blocked connection"
    alert = RFC5424.match(syslog_message(record(blocked=False)).decode())
    assert alert and int(alert.group(1)) == 16 * 8 + 5  # notice


@pytest.mark.parametrize("url, message", [
    ("syslog://127.0.0.1:514", "expected udp://"),
    ("udp://127.0.0.1", "expected udp://"),
    ("tcp://127.0.0.1:99999", "port"),
])
def test_bad_syslog_urls_are_named(url: str, message: str) -> None:
    with pytest.raises(CnnfError, match=message):
        parse_syslog_url(url)


def test_syslog_over_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        forwarder = Forwarder([SyslogSink(f"udp://127.0.0.1:{port}")])
        forwarder.submit([record(1), record(2)])
        got = [server.recv(65535).decode() for _ in range(2)]
        forwarder.close()
    assert all(RFC5424.match(g) for g in got), got
    assert 'count="1"' in got[0] and 'count="2"' in got[1]
    assert forwarder.stats[f"syslog:udp://127.0.0.1:{port}"].sent == 2


def _read_octet_counted(conn: socket.socket, n: int) -> list[str]:
    data = b""
    messages: list[str] = []
    while len(messages) < n:
        chunk = conn.recv(65535)
        assert chunk, "connection closed early"
        data += chunk
        while b" " in data:
            length, _, rest = data.partition(b" ")
            if len(rest) < int(length):
                break
            messages.append(rest[:int(length)].decode())
            data = rest[int(length):]
    return messages


def test_syslog_over_tcp_with_octet_counting() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(10)
        port = server.getsockname()[1]
        forwarder = Forwarder([SyslogSink(f"tcp://127.0.0.1:{port}")])
        forwarder.submit([record(1, msg="first\nline two")])
        forwarder.submit([record(2)])
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            messages = _read_octet_counted(conn, 2)
        forwarder.close()
    assert [RFC5424.match(m) is not None for m in messages] == [True, True]
    assert messages[0].endswith("first\nline two")  # framing keeps newlines inside


class _Hook:
    """A loopback webhook that answers 500 to the first ``failures`` posts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.posts.append(body)
                code = 500 if len(hook.posts) <= hook.failures else 204
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[_Hook]:
    h = _Hook(failures=2)
    try:
        yield h
    finally:
        h.close()


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        ("https://user:s3cret@hooks.example/x", "webhook:https://hooks.example (", "s3cret"),
        ("https://hooks.example/services/T0/B0/s3cret", "webhook:https://hooks.example (",
         "s3cret"),
        ("http://127.0.0.1:8081/hook?token=s3cret", "webhook:http://127.0.0.1:8081 (", "s3cret"),
        ("http://[::1]:8081/s3cret", "webhook:http://[::1]:8081 (", "s3cret"),
    ],
)
def test_webhook_names_in_logs_and_metrics_hide_the_secret(url: str, shown: str,
                                                           secret: str) -> None:
    name = webhook_name(url)
    assert name.startswith(shown) and secret not in name
    assert WebhookSink(url).name == name
    assert webhook_name(url + "2") != name  # two webhooks on one host stay apart


def test_webhook_retries_with_backoff_until_it_succeeds(hook: _Hook) -> None:
    sleeps: list[float] = []
    sink = WebhookSink(hook.url)
    forwarder = Forwarder([sink], attempts=5, backoff=0.5, sleep=sleeps.append)
    forwarder.submit([record(1), record(2)])
    assert poll(lambda: forwarder.stats[sink.name].sent == 2)
    forwarder.close()
    assert len(hook.posts) == 3  # failed, failed, delivered
    assert hook.posts[0] == hook.posts[2]
    assert [a["ruleId"] for a in hook.posts[2]["audits"]] == [1, 2]
    assert hook.posts[2]["source"] == "cnnf"
    assert sleeps == [0.5, 1.0]  # exponential backoff
    stats = forwarder.stats[sink.name]
    assert (stats.sent, stats.retries, stats.failed, stats.dropped) == (2, 2, 0, 0)


def test_webhook_gives_up_after_the_attempts_and_counts_the_failure() -> None:
    h = _Hook(failures=100)
    try:
        sink = WebhookSink(h.url)
        forwarder = Forwarder([sink], attempts=3, sleep=lambda _: None)
        forwarder.submit([record(1)])
        assert poll(lambda: forwarder.stats[sink.name].failed == 1)
        forwarder.close()
        assert len(h.posts) == 3
    finally:
        h.close()


class _Stuck:
    """A sink that blocks until released."""

    name = "stuck"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.sent: list[int] = []

    def send(self, audits: Any) -> None:
        self.started.set()
        self.release.wait(30)
        self.sent.append(len(audits))

    def close(self) -> None:
        pass


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    sink = _Stuck()
    forwarder = Forwarder([sink], queue_batches=2)
    forwarder.submit([record(1)])  # taken by the worker, which is stuck in send()
    assert sink.started.wait(10)
    for _ in range(5):  # two fit in the queue, three are dropped; none of this blocks
        forwarder.submit([record(1), record(2)])
    assert forwarder.stats["stuck"].dropped == 6
    sink.release.set()
    assert poll(lambda: len(sink.sent) == 3)
    forwarder.close()
    assert forwarder.stats["stuck"].sent == 5


@contextlib.contextmanager
def _forwarding_console(tmp_path: Path, syslog_port: int,
                        webhooks: tuple[str, ...] = ()) -> Iterator[tuple[Any, Any]]:
    """A Console on SQLite forwarding to a syslog port (and webhooks); yields
    (admin client, enrolled Defender client)."""
    import test_defenders as td

    url = f"sqlite:///{tmp_path / 'console.db'}"
    clock = Clock()
    engine = connect(url)
    config = ConsoleConfig(db_url=url, data_dir=tmp_path,
                           syslog=(f"udp://127.0.0.1:{syslog_port}",), webhooks=webhooks)
    c = Console(app=create_app(config, engine=engine, now=clock.now), engine=engine,
                clock=clock)
    try:
        admin = c.client(c.add_user("admin-user", Role.ADMIN))
        _, defender = td.enroll(c, admin)
        yield admin, defender
    finally:
        for client in c.clients:
            client.close()
        c.app.state.link.forwarder.close()
        engine.dispose()


def test_audits_stored_through_the_defender_endpoint_reach_syslog(tmp_path: Path) -> None:
    import test_defenders as td

    from cnnf.model.records import ReportBatch

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        with _forwarding_console(tmp_path, port) as (admin, defender):
            batch = ReportBatch(batch_id="b-1", audits=[td.audit(count=3)])
            assert td.post_batch(defender, batch).status_code == 200
            assert td.post_batch(defender, batch).json()["duplicate"]  # not forwarded again
            m = RFC5424.match(server.recv(65535).decode())
            assert m, "not an RFC 5424 message"
            assert 'count="3"' in m.group(4) and m.group(3) == "node-1"
            server.settimeout(0.3)
            with pytest.raises(TimeoutError):
                server.recv(65535)
            sent = (f'cnnf_console_forwarded_audits_total{{result="sent",'
                    f'sink="syslog:udp://127.0.0.1:{port}"}} 1.0')
            assert poll(lambda: sent in admin.get("/metrics").text)


def _forwarded(tmp_path: Path, audit: Any) -> tuple[re.Match[str], dict[str, Any]]:
    """One audit reported by a Defender, as the syslog listener and the webhook
    received it: (the RFC 5424 message, the webhook's audit)."""
    import test_defenders as td

    from cnnf.model.records import ReportBatch

    hook = _Hook(failures=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        try:
            with _forwarding_console(tmp_path, server.getsockname()[1],
                                     (hook.url,)) as (_, defender):
                batch = ReportBatch(batch_id="b-1", audits=[audit])
                assert td.post_batch(defender, batch).status_code == 200
                m = RFC5424.match(server.recv(65535).decode())
                assert m, "not an RFC 5424 message"
                assert poll(lambda: len(hook.posts) == 1)
                [sent] = hook.posts[0]["audits"]
                return m, sent
        finally:
            hook.close()


def test_overload_audits_reach_syslog_and_webhooks_like_any_audit(tmp_path: Path) -> None:
    import test_defenders as td

    m, sent = _forwarded(tmp_path, td.overloads()[0])
    pri, _, host, sd, msg = m.groups()
    assert int(pri) == 16 * 8 + 4 and host == "node-1"  # blocked: warning
    for field in ('type="overload"', 'effect="prevent"', 'blocked="true"',
                  'rule=""', 'ruleId=""', 'srcImage="shop/frontend:1.0"',
                  'srcContainer="frontend"', 'dstHost="node-1"', 'dstAddress=""',
                  'port="0"', 'count="52311"'):
        assert field in sd, (field, sd)
    assert msg == td.FLOOD_MESSAGE
    assert {k: sent[k] for k in ("type", "blocked", "ruleId", "srcImage",
                                 "dstHostname", "port", "count", "msg")} == {
        "type": "overload", "blocked": True, "ruleId": None,
        "srcImage": "shop/frontend:1.0", "dstHostname": "node-1", "port": 0,
        "count": 52_311, "msg": td.FLOOD_MESSAGE}


def test_pod_audits_reach_syslog_and_webhooks_naming_the_pods(tmp_path: Path) -> None:
    import test_defenders as td

    m, sent = _forwarded(tmp_path, td.audit(src=td.WEB_POD, dst=td.PG_POD))
    sd = m.group(4)
    for field in ('srcImage="kube/web:1.0"', 'srcContainer="web"',
                  'srcNamespace="storefront"', 'srcPod="web-7d4b9c6f5-x2k8p"',
                  'dstNamespace="data"', 'dstPod="postgres-0"'):
        assert field in sd, (field, sd)
    assert {k: sent[k] for k in ("srcNamespace", "srcPod", "dstNamespace",
                                 "dstPod")} == {
        "srcNamespace": "storefront", "srcPod": "web-7d4b9c6f5-x2k8p",
        "dstNamespace": "data", "dstPod": "postgres-0"}


def test_a_dead_webhook_does_not_hold_up_report_ingestion(tmp_path: Path) -> None:
    """The README: a slow or dead target never holds up the Defenders' reports. A
    webhook that accepts connections and never answers; batches posted to the
    Defender endpoint are all stored while it hangs, and what does not fit in
    its queue is dropped and counted (a blocking path would store one batch and
    then wait on the webhook)."""
    import test_defenders as td

    from cnnf.model.records import ReportBatch

    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        dead.listen(64)  # accepts (in the kernel), never reads nor answers
        hook = f"http://127.0.0.1:{dead.getsockname()[1]}/hook"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as syslog:
            syslog.bind(("127.0.0.1", 0))
            with _forwarding_console(tmp_path, syslog.getsockname()[1],
                                     webhooks=(hook,)) as (admin, defender):
                n = QUEUE_BATCHES + 5
                for i in range(n):
                    batch = ReportBatch(batch_id=f"b-{i}", audits=[td.audit(port=1000 + i)])
                    r = td.post_batch(defender, batch)
                    assert r.status_code == 200 and not r.json()["duplicate"], r.text
                assert admin.get("/api/v1/audits", params={"limit": 1}).json()["total"] == n
                metrics = admin.get("/metrics").text
                dropped = re.search(r'cnnf_console_forwarded_audits_total\{result="dropped",'
                                    r'sink="webhook:[^"]*"\} (\d+)', metrics)
                assert dropped and int(dropped.group(1)) >= 4, metrics
