"""Audit forwarding against real loopback listeners: syslog (RFC 5424) over UDP and
TCP, a webhook that fails twice before it succeeds, a sink down for long whose
audits wait in the store's outbox and all arrive once it is back, retention
pruning an undelivered backlog (counted and logged), and audits stored through
the Defender endpoint arriving at syslog with their stable ids."""

from __future__ import annotations

import contextlib
import logging
import re
import resource
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from consoletest import Clock, Console
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from tests.polling import poll
from tests.webhook import Webhook

from cnnf.console.app import create_app
from cnnf.console.config import ConsoleConfig
from cnnf.console.security import Role
from cnnf.console.services import forwarding
from cnnf.console.services.forwarding import (
    Forwarder,
    SyslogSink,
    WebhookSink,
    backlog,
    parse_syslog_url,
    syslog_message,
    webhook_name,
)
from cnnf.console.services.records import AuditRecord, AuditService, StoredAudit
from cnnf.console.store.db import connect, migrate
from cnnf.console.store.models import AuditRow, OutboxRow
from cnnf.errors import CnnfError
from cnnf.model import Effect

# <PRI>1 TIMESTAMP HOSTNAME APP PROCID MSGID [SD] MSG
RFC5424 = re.compile(r'^<(\d+)>1 (\S+) (\S+) cnnf - audit (\[cnnf@32473 (?:[^\]\\]|\\.)*\]) (.*)$',
                     re.DOTALL)


def record(i: int = 1, blocked: bool = True, msg: str = "blocked connection") -> AuditRecord:
    return AuditRecord(
        time=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), blocked=blocked,
        effect=Effect.PREVENT if blocked else Effect.ALERT, rule_id=i,
        rule_name='db "only"]', src_image="shop/api", dst_image="shop/db",
        src_hostname="node-1", dst_hostname="node-2", port=5432, msg=msg, count=i,
        defender="node 1")


def stored(audit_id: int, i: int = 1, **kw: Any) -> StoredAudit:
    return StoredAudit(id=audit_id, **record(i, **kw).model_dump(by_alias=False))


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
    assert 'would="false"' in sd
    alert = RFC5424.match(syslog_message(record(blocked=False)).decode())
    assert alert and int(alert.group(1)) == 16 * 8 + 5  # notice
    # A "would" audit (a staged prevent rule: nothing enforced) is told apart from a
    # real alert by its own parameter, not only by its free-text message.
    would = record(blocked=False).model_copy(update={"effect": Effect.PREVENT, "would": True})
    m = RFC5424.match(syslog_message(would).decode())
    assert m and 'would="true"' in m.group(4) and 'blocked="false"' in m.group(4)


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
        sink = SyslogSink(f"udp://127.0.0.1:{port}")
        sink.send([stored(7, 1), stored(8, 2)])
        got = [server.recv(65535).decode() for _ in range(2)]
        sink.close()
    assert all(RFC5424.match(g) for g in got), got
    assert 'count="1"' in got[0] and 'count="2"' in got[1]
    assert '[cnnf@32473 id="7" ' in got[0] and '[cnnf@32473 id="8" ' in got[1]


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
        sink = SyslogSink(f"tcp://127.0.0.1:{port}")
        sink.send([stored(1, 1, msg="first\nline two")])
        sink.send([stored(2, 2)])
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            messages = _read_octet_counted(conn, 2)
        sink.close()
    assert [RFC5424.match(m) is not None for m in messages] == [True, True]
    assert messages[0].endswith("first\nline two")  # framing keeps newlines inside


class _Failing:
    """A webhook's answer: 500 to the first ``failures`` posts (a test may change
    it: 0 is "back up"), then 204."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def __call__(self, body: dict[str, Any], n: int) -> int:
        return 500 if n <= self.failures else 204


def _hook(failures: int) -> Webhook:
    """A loopback webhook that answers 500 to the first ``failures`` posts."""
    return Webhook(_Failing(failures))


@pytest.fixture
def hook() -> Iterator[Webhook]:
    h = _hook(failures=2)
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


@pytest.mark.parametrize(("old", "new"), [
    ("https://user:s3cret@hooks.example/x", "https://user:n3w@hooks.example/x"),
    ("http://127.0.0.1:8081/hook?token=s3cret", "http://127.0.0.1:8081/hook?token=n3w"),
    ("https://hooks.example/x", "https://hooks.example:443/x"),
])
def test_a_webhook_is_named_by_its_receiver_not_its_secret(old: str, new: str) -> None:
    assert webhook_name(old) == webhook_name(new)


@pytest.mark.parametrize(("one", "other"), [
    ("https://hooks.example/a", "https://hooks.example/b"),
    ("https://hooks.example/a", "http://hooks.example/a"),
    ("https://hooks.example/a", "https://hooks.example:8443/a"),
    ("https://hooks.example/a", "https://other.example/a"),
])
def test_two_receivers_on_one_host_have_two_names(one: str, other: str) -> None:
    assert webhook_name(one) != webhook_name(other)


class Outbox:
    """A real SQLite store with audits queued for sinks, and forwarders over it."""

    def __init__(self, tmp_path: Path) -> None:
        self.engine = connect(f"sqlite:///{tmp_path / 'outbox.db'}")
        migrate(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.forwarders: list[Forwarder] = []

    def store(self, sinks: tuple[str, ...], *records: AuditRecord) -> list[int]:
        with self.sessions() as s:
            AuditService(s).insert_many(records, forward_to=sinks)
            return list(s.scalars(select(AuditRow.id).order_by(AuditRow.id.desc())
                                  .limit(len(records))))[::-1]

    def forwarder(self, *sinks: Any, **kw: Any) -> Forwarder:
        f = Forwarder(list(sinks), self.sessions, **kw)
        self.forwarders.append(f)
        f.start()
        return f

    def backlog(self) -> dict[str, int]:
        with self.sessions() as s:
            return {b.sink: b.audits for b in backlog(s)}

    def close(self) -> None:
        for f in self.forwarders:
            f.close()
        self.engine.dispose()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    o = Outbox(tmp_path)
    try:
        yield o
    finally:
        o.close()


def test_webhook_retries_with_backoff_until_it_succeeds(hook: Webhook, outbox: Outbox) -> None:
    sink = WebhookSink(hook.url)
    ids = outbox.store((sink.name,), record(1), record(2))
    forwarder = outbox.forwarder(sink, backoff=0.05)
    assert poll(lambda: forwarder.stats[sink.name].sent == 2)
    assert len(hook.posts) == 3  # failed, failed, delivered
    assert hook.posts[0] == hook.posts[2]  # the same audits with the same ids
    assert [a["id"] for a in hook.posts[2]["audits"]] == ids
    assert [a["ruleId"] for a in hook.posts[2]["audits"]] == [1, 2]
    assert hook.posts[2]["source"] == "cnnf"
    stats = forwarder.stats[sink.name]
    assert (stats.sent, stats.retries, stats.failed) == (2, 2, 4)
    assert poll(lambda: outbox.backlog() == {})  # delivered rows leave the outbox


def test_a_round_that_fails_unexpectedly_does_not_end_forwarding(
        hook: Webhook, outbox: Outbox, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A defect in a round (here: reading an outbox row fails once) is logged and
    the next round delivers: the thread must live on, since this process keeps
    the lease and no other replica would take forwarding over."""
    hook.failures = 0
    real = forwarding.stored_audit
    calls = {"n": 0}

    def flaky(row: AuditRow) -> StoredAudit:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a defect reading a row")
        return real(row)

    monkeypatch.setattr(forwarding, "stored_audit", flaky)
    sink = WebhookSink(hook.url)
    ids = outbox.store((sink.name,), record(1))
    with caplog.at_level(logging.ERROR, logger=forwarding.log.name):
        forwarder = outbox.forwarder(sink, interval=0.05)
        assert poll(lambda: forwarder.stats[sink.name].sent == 1)
    assert [a["id"] for a in hook.posts[-1]["audits"]] == ids
    assert "a round failed" in caplog.text


def test_a_sink_down_for_long_loses_nothing(outbox: Outbox) -> None:
    """A webhook that fails every post (for as long as it is down) keeps its audits
    in the outbox, while a healthy syslog sink gets them at once; once the webhook
    answers again it gets every audit, each with its id, in order."""
    down = _Failing(10**9)
    h = Webhook(down)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
            server.bind(("127.0.0.1", 0))
            server.settimeout(10)
            syslog = SyslogSink(f"udp://127.0.0.1:{server.getsockname()[1]}")
            webhook = WebhookSink(h.url)
            ids = outbox.store((syslog.name, webhook.name), *(record(i) for i in range(1, 8)))
            forwarder = outbox.forwarder(syslog, webhook, batch=3, backoff=0.02,
                                         max_backoff=0.1)
            got = [server.recv(65535).decode() for _ in range(7)]
            assert [int(re.search(r' id="(\d+)"', g).group(1))  # type: ignore[union-attr]
                    for g in got] == ids
            assert poll(lambda: len(h.posts) >= 5)  # tried again and again
            assert outbox.backlog() == {webhook.name: 7}
            down.failures = 0  # back up
            assert poll(lambda: outbox.backlog() == {})
            delivered = [a["id"] for post in h.posts[-3:] for a in post["audits"]]
            assert delivered == ids  # batches of 3, 3 and 1, in id order
            assert forwarder.stats[webhook.name].sent == 7
    finally:
        h.close()


def test_retention_prunes_an_undelivered_backlog_counting_and_logging_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Bounded by retention: a sink down for longer than the retention period
    loses the audits pruned, and says so (a metric and an error line)."""
    from cnnf.console.app import prune_expired

    url = f"sqlite:///{tmp_path / 'console.db'}"
    clock = Clock()
    engine = connect(url)
    config = ConsoleConfig(db_url=url, data_dir=tmp_path, retention_days=1,
                           webhooks=("http://127.0.0.1:9/down",))
    app = create_app(config, engine=engine, now=clock.now)
    c = Console(app=app, engine=engine, clock=clock)
    try:
        name = webhook_name("http://127.0.0.1:9/down")
        with c.session() as s:
            AuditService(s).insert_many([record(1), record(2)], forward_to=(name,))
        clock.advance(3 * 86400)
        with caplog.at_level(logging.ERROR, logger="cnnf.console"):
            pruned = prune_expired(app.state.console, app.state.link.metrics)
        assert pruned is not None and pruned.audits == 2 and pruned.undelivered == {name: 2}
        assert f"pruned 2 audits older than 1 days that {name} had not taken" in caplog.text
        admin = c.client(c.add_user("admin-user", Role.ADMIN))
        metrics = admin.get("/metrics").text
        assert (f'cnnf_console_forward_pruned_undelivered_total{{sink="{name}"}} 2.0'
                in metrics), metrics
        assert f'cnnf_console_forward_backlog_audits{{sink="{name}"}} 0.0' in metrics
    finally:
        for client in c.clients:
            client.close()
        app.state.link.forwarder.close()
        engine.dispose()


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
    c.app.state.link.forwarder.start()  # what the lifespan does in a served Console
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
            [stored_id] = [a["id"] for a in admin.get("/api/v1/audits").json()["items"]]
            assert m.group(4).startswith(f'[cnnf@32473 id="{stored_id}" ')
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

    hook = _hook(failures=0)
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
                  'rule="admission limit"', 'ruleId=""', 'srcImage="shop/frontend:1.0"',
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
    Defender endpoint are all stored while it hangs, syslog gets every one, and
    the webhook's share waits in the outbox (the backlog metric), none dropped."""
    import test_defenders as td

    from cnnf.model.records import ReportBatch

    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        dead.listen(64)  # accepts (in the kernel), never reads nor answers
        hook = f"http://127.0.0.1:{dead.getsockname()[1]}/hook"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as syslog:
            syslog.bind(("127.0.0.1", 0))
            syslog.settimeout(10)
            with _forwarding_console(tmp_path, syslog.getsockname()[1],
                                     webhooks=(hook,)) as (admin, defender):
                n = 40
                for i in range(n):
                    batch = ReportBatch(batch_id=f"b-{i}", audits=[td.audit(port=1000 + i)])
                    r = td.post_batch(defender, batch)
                    assert r.status_code == 200 and not r.json()["duplicate"], r.text
                assert admin.get("/api/v1/audits", params={"limit": 1}).json()["total"] == n
                got = {syslog.recv(65535) for _ in range(n)}
                assert len(got) == n
                metrics = admin.get("/metrics").text
                backlog = re.search(r'cnnf_console_forward_backlog_audits\{'
                                    r'sink="webhook:[^"]*"\} (\d+)', metrics)
                assert backlog and int(backlog.group(1)) == n, metrics
                assert re.search(r'cnnf_console_forward_backlog_audits\{sink="syslog:[^"]*"\} '
                                 r'0\.0', metrics), metrics
                assert 'cnnf_console_lease_held{lease="singleton"} 1.0' in metrics


def _replica(db_url: str, tmp_path: Path, name: str, syslog: tuple[str, ...] = (),
             webhooks: tuple[str, ...] = (), *, replace_sinks: bool = False) -> Console:
    engine = connect(db_url)
    config = ConsoleConfig(db_url=db_url, data_dir=tmp_path / name, syslog=syslog,
                           webhooks=webhooks, replace_sinks=replace_sinks)
    clock = Clock()
    c = Console(app=create_app(config, engine=engine, now=clock.now), engine=engine,
                clock=clock)
    c.app.state.link.forwarder.start()  # what the lifespan does in a served Console
    return c


def test_the_sinks_are_one_configuration_for_the_fleet(
        db_url: str, tmp_path: Path, hook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    """Replica A started with syslog only, replica B (started after it) with syslog
    and a webhook: the store holds both, and audits stored through either
    replica reach both sinks, delivered by A (the one forwarding) although A's
    own options never named the webhook. A replica started later without any
    forwarding option (a forgotten flag) changes nothing: it says what is in
    force, and audits are still queued for both. Only a replica started with
    --replace-sinks and syslog takes the webhook out of the fleet; its
    undelivered audits are kept (counted in a log line), and no more are queued
    for it."""
    import test_defenders as td

    from cnnf.model.records import ReportBatch

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as syslog:
        syslog.bind(("127.0.0.1", 0))
        syslog.settimeout(10)
        udp = (f"udp://127.0.0.1:{syslog.getsockname()[1]}",)
        a = _replica(db_url, tmp_path, "a", udp, ())
        b = _replica(db_url, tmp_path, "b", udp, (hook.url,))
        replicas = [a, b]
        try:
            b.app.state.link.forwarder.close()  # only A forwards (it holds the lease)
            token = a.add_user("admin-user", Role.ADMIN)
            admin_a = a.client(token)
            _, via_a = td.enroll(a, admin_a, "node-a")
            _, via_b = td.enroll(b, b.client(token), "node-b")
            for n, defender in enumerate((via_a, via_b)):
                r = td.post_batch(defender, ReportBatch(batch_id=f"b-{n}",
                                                        audits=[td.audit(port=1000 + n)]))
                assert r.status_code == 200, r.text
            ids = sorted(a["id"] for a in admin_a.get("/api/v1/audits").json()["items"])
            assert len(ids) == 2
            got = [re.search(rb' id="(\d+)"', syslog.recv(65535)) for _ in ids]
            assert sorted(int(m.group(1)) for m in got if m) == ids
            stats = a.app.state.link.forwarder.stats
            assert poll(lambda: webhook_name(hook.url) in stats
                        and stats[webhook_name(hook.url)].sent == 2)  # after two 500s
            assert sorted(a["id"] for a in hook.posts[-1]["audits"]) == ids
            hook.close()  # the webhook goes away: the next audit waits for it
            r = td.post_batch(via_a, ReportBatch(batch_id="b-2", audits=[td.audit(port=1002)]))
            assert r.status_code == 200
            syslog.recv(65535)
            hook_name = webhook_name(hook.url)
            with caplog.at_level(logging.INFO, logger="cnnf.console"):
                replicas.append(_replica(db_url, tmp_path, "c"))  # no forwarding options
            assert (f"forwarding: audits go to 2 sinks (the fleet's list, in the store): "
                    f"syslog:udp://127.0.0.1:{syslog.getsockname()[1]}, {hook_name}"
                    in caplog.text), caplog.text
            assert "no longer configured" not in caplog.text
            r = td.post_batch(via_b, ReportBatch(batch_id="b-3", audits=[td.audit(port=1003)]))
            assert r.status_code == 200
            syslog.recv(65535)

            def queued() -> dict[str, int]:
                with a.session() as s:
                    return {b.sink: b.audits for b in backlog(s)}

            assert poll(lambda: queued() == {hook_name: 2}), queued()  # b-2 and b-3
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="cnnf.console"):
                replicas.append(_replica(db_url, tmp_path, "d", udp, replace_sinks=True))
            assert (f"{hook_name} is no longer configured (--replace-sinks); its 2 "
                    f"queued and 0 parked audits are kept") in caplog.text
            r = td.post_batch(via_b, ReportBatch(batch_id="b-4", audits=[td.audit(port=1004)]))
            assert r.status_code == 200
            syslog.recv(65535)
            # b-4 went to syslog only; b-2 and b-3 wait for the webhook, should it
            # come back.
            assert poll(lambda: queued() == {hook_name: 2}), queued()
        finally:
            for c in replicas:
                for client in c.clients:
                    client.close()
                c.app.state.link.forwarder.close()
                c.engine.dispose()


def _picky_hook(always: int | None = None) -> Webhook:
    """A loopback webhook that answers 400 to any batch holding an audit for port
    6666 (a record it can never take), 204 to the others; or ``always`` to all."""
    return Webhook(lambda body, n: always or (
        400 if any(a["port"] == 6666 for a in body["audits"]) else 204))


def test_a_record_the_sink_refuses_is_parked_and_the_rest_delivered(
        outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """One poison audit (the webhook answers 400 to every batch holding it) must
    not block the sink: the batch is halved until the record is found, which is
    parked (a log line, a count, kept out of the backlog); everything else goes,
    and audits stored later too."""
    picky = _picky_hook()
    try:
        sink = WebhookSink(picky.url)
        records = [record(i) for i in range(1, 8)]
        records[4] = records[4].model_copy(update={"port": 6666})
        ids = outbox.store((sink.name,), *records)
        with caplog.at_level(logging.ERROR, logger="cnnf.console.forwarding"):
            forwarder = outbox.forwarder(sink, backoff=0.05)
            assert poll(lambda: picky.delivered() == sorted(set(ids) - {ids[4]}))
        assert poll(lambda: outbox.backlog() == {})
        assert forwarder.stats[sink.name].parked == 1
        assert f"audit {ids[4]} parked: the sink refuses it on its own" in caplog.text
        later = outbox.store((sink.name,), record(9))
        forwarder.wake()
        assert poll(lambda: later[0] in picky.delivered())
        assert poll(lambda: outbox.backlog() == {})
        assert all(ids[4] not in got for code, got in picky.batches() if code == 204)
        with outbox.sessions() as s:
            parked = s.scalars(select(OutboxRow.audit_id).where(OutboxRow.parked.is_not(None)))
            assert list(parked) == [ids[4]]  # kept in the store, for an operator to see
    finally:
        picky.close()


def test_requeued_audits_refused_again_are_parked_again_and_the_sink_goes_on(
        outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """Requeued audits are the oldest, so a whole batch of them comes first. Each
    refused again (the receiver still cannot take them) is parked again at once,
    though nothing else of that batch was delivered: kept queued, they would make
    up every batch, retried for ever, and the audits stored after them would
    never go."""
    from cnnf.console.services.forwarding import Requeue, requeue_parked
    from cnnf.console.store.models import SinkRow

    picky = _picky_hook()
    try:
        sink = WebhookSink(picky.url)
        with outbox.sessions() as s:
            s.add(SinkRow(name=sink.name, url=picky.url, updated=datetime.now(UTC)))
            s.commit()
        poison = outbox.store((sink.name,), *(record(i).model_copy(update={"port": 6666})
                                               for i in range(1, 5)))
        with outbox.sessions() as s:  # parked by an earlier round
            s.execute(OutboxRow.__table__.update().values(parked=datetime.now(UTC)))
            s.commit()
            assert requeue_parked(s, Requeue(sink=sink.name)).requeued == 4
        good = outbox.store((sink.name,), record(5), record(6))
        with caplog.at_level(logging.ERROR, logger="cnnf.console.forwarding"):
            forwarder = outbox.forwarder(sink, batch=4, backoff=0.05)
            assert poll(lambda: picky.delivered() == good), picky.batches()
        assert poll(lambda: outbox.backlog() == {})
        assert forwarder.stats[sink.name].parked == 4
        assert f"audit {poison[0]} parked again: requeued, the sink still refuses it" \
            in caplog.text
        with outbox.sessions() as s:
            assert s.execute(select(OutboxRow.audit_id, OutboxRow.requeued).where(
                OutboxRow.parked.is_not(None)).order_by(OutboxRow.audit_id)).all() == [
                (i, None) for i in poison]
    finally:
        picky.close()


def test_one_requeue_takes_the_oldest_thousand_parked(outbox: Outbox) -> None:
    """A requeue of all of a sink's parked audits takes the oldest MAX_REQUEUE and
    says how many are left: a whole parked backlog requeued at once, still
    refused, would be bisected (2N-1 sends) before anything else goes."""
    from cnnf.console.services.forwarding import MAX_REQUEUE, Requeue, requeue_parked
    from cnnf.console.store.models import SinkRow

    with outbox.sessions() as s:
        s.add(SinkRow(name="sink", url="http://127.0.0.1:9/", updated=datetime.now(UTC)))
        s.commit()
    ids = outbox.store(("sink",), *(record(i) for i in range(1, MAX_REQUEUE + 6)))
    with outbox.sessions() as s:
        s.execute(OutboxRow.__table__.update().values(parked=datetime.now(UTC)))
        s.commit()
        done = requeue_parked(s, Requeue(sink="sink"))
        assert (done.requeued, done.left) == (MAX_REQUEUE, 5)
        assert list(s.scalars(select(OutboxRow.audit_id).where(
            OutboxRow.parked.is_not(None)).order_by(OutboxRow.audit_id))) == ids[-5:]


def test_a_removed_sink_counts_its_queued_and_its_parked_audits(outbox: Outbox) -> None:
    """--replace-sinks without a sink keeps its rows: the warning counts both the
    queued and the parked ones (a sink with only parked audits is not "0")."""
    from cnnf.console.services.forwarding import configure_sinks
    from cnnf.console.store.models import SinkRow

    with outbox.sessions() as s:
        s.add(SinkRow(name="sink", url="http://127.0.0.1:9/", updated=datetime.now(UTC)))
        s.commit()
    ids = outbox.store(("sink",), *(record(i) for i in range(1, 5)))
    with outbox.sessions() as s:
        s.execute(OutboxRow.__table__.update().where(OutboxRow.audit_id.in_(ids[:3]))
                  .values(parked=datetime.now(UTC)))
        s.commit()
        assert configure_sinks(s, [], datetime.now(UTC), replace=True).removed == {
            "sink": (1, 3)}


def test_a_webhook_refusing_its_credentials_parks_nothing(outbox: Outbox) -> None:
    """401 says the sink's configuration is wrong, not a record: nothing is parked,
    the audits wait (and are retried) until the operator fixes it."""
    refusing = _picky_hook(always=401)
    try:
        sink = WebhookSink(refusing.url)
        outbox.store((sink.name,), record(1), record(2))
        forwarder = outbox.forwarder(sink, backoff=0.01, max_backoff=0.02)
        assert poll(lambda: forwarder.stats[sink.name].retries >= 3)
        assert forwarder.stats[sink.name].parked == 0
        assert all(len(ids) == 2 for _, ids in refusing.batches())  # never halved
        assert outbox.backlog() == {sink.name: 2}
    finally:
        refusing.close()


def test_a_webhook_refusing_every_audit_parks_none(outbox: Outbox) -> None:
    """A sink that answers 400 to everything (say, a receiver refusing a new field
    of every audit) is not refusing records: nothing is parked, every audit stays
    queued and counted in the backlog, retried with backoff; once the sink takes
    them again they are all delivered."""
    answer = {"status": 400}
    refusing = Webhook(lambda body, n: answer["status"])
    try:
        sink = WebhookSink(refusing.url)
        ids = outbox.store((sink.name,), *(record(i) for i in range(1, 6)))
        forwarder = outbox.forwarder(sink, backoff=0.01, max_backoff=0.02)
        assert poll(lambda: forwarder.stats[sink.name].retries >= 3)
        assert forwarder.stats[sink.name].parked == 0
        assert outbox.backlog() == {sink.name: 5}
        assert max(len(ids) for _, ids in refusing.batches()) == 5  # bisected, then kept
        answer["status"] = 204  # the receiver takes them again
        assert poll(lambda: outbox.backlog() == {})
        assert refusing.delivered() == ids and forwarder.stats[sink.name].parked == 0
        with outbox.sessions() as s:
            assert list(s.scalars(select(OutboxRow.audit_id).where(
                OutboxRow.parked.is_not(None)))) == []
    finally:
        refusing.close()


@pytest.mark.parametrize("high_fd", [False, True], ids=["low-fd", "fd-over-1024"])
def test_tcp_syslog_resends_a_batch_written_to_a_receiver_that_went_away(
        outbox: Outbox, high_fd: bool) -> None:
    """A TCP syslog receiver restarts between two batches: the first write into
    the old connection would be accepted by the kernel and lost. The sink finds
    the closed connection (or the unacknowledged bytes) and the batch is sent
    again on a new one: every audit arrives, with its id. The same with the
    sink's socket numbered above 1024, as on a replica holding thousands of
    long-polls (select() refuses those)."""
    with contextlib.ExitStack() as spare:
        if high_fd:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft < 2048:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
                spare.callback(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
            for _ in range(1100):
                spare.enter_context(socket.socket())
        got, ids_stored = _tcp_receiver_restarts(outbox, high_fd)
    ids = [int(m.group(1)) for m in (re.search(r' id="(\d+)"', g) for g in got) if m]
    assert ids == ids_stored


def _tcp_receiver_restarts(outbox: Outbox, high_fd: bool) -> tuple[list[str], list[int]]:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(10)
        port = server.getsockname()[1]
        sink = SyslogSink(f"tcp://127.0.0.1:{port}")
        first = outbox.store((sink.name,), record(1))
        forwarder = outbox.forwarder(sink, backoff=0.05)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            got = _read_octet_counted(conn, 1)
        assert sink._sock is not None and (sink._sock.fileno() >= 1024) == high_fd
        # The receiver closed its end (a restart); the Console's socket is still open.
        assert poll(lambda: forwarder.stats[sink.name].sent == 1)
        # One message: all written before the receiver's reset could come back.
        second = outbox.store((sink.name,), record(2))
        forwarder.wake()
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            got += _read_octet_counted(conn, 1)
        assert poll(lambda: outbox.backlog() == {})
    return got, first + second


def test_a_rotated_webhook_secret_keeps_the_backlog_and_delivers_it_with_the_new_one(
        db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The receiver takes only the new credentials (password and query token): the
    audits queued while the fleet had the old ones wait (401 parks nothing); a
    replica started with the new URL updates the stored sink, the same sink by
    name, and the forwarding replica delivers the whole backlog with the new
    secret. Nothing is left queued under another name."""
    import base64

    import test_defenders as td

    from cnnf.model.records import ReportBatch

    new_auth = "Basic " + base64.b64encode(b"user:n3w").decode()
    hook: Webhook = Webhook(lambda body, n: 204 if hook.requests[-1] == (
        "/hook?token=n3w", new_auth) else 401)
    old_url = hook.url.replace("http://", "http://user:0ld@") + "?token=0ld"
    new_url = hook.url.replace("http://", "http://user:n3w@") + "?token=n3w"
    name = webhook_name(old_url)
    assert webhook_name(new_url) == name
    a = _replica(db_url, tmp_path, "a", webhooks=(old_url,))
    replicas = [a]
    try:
        token = a.add_user("admin-user", Role.ADMIN)
        _, defender = td.enroll(a, a.client(token))
        for n in range(3):
            r = td.post_batch(defender, ReportBatch(batch_id=f"b-{n}",
                                                    audits=[td.audit(port=1000 + n)]))
            assert r.status_code == 200
        assert poll(lambda: len(hook.requests) >= 1)
        assert hook.delivered() == []
        with caplog.at_level(logging.INFO, logger="cnnf.console"):
            b = _replica(db_url, tmp_path, "b", webhooks=(new_url,))
            replicas.append(b)
        b.app.state.link.forwarder.close()  # A forwards (it holds the lease)
        assert [r.levelno for r in caplog.records if f"{name} has a new URL" in
                r.getMessage()] == [logging.WARNING]
        ids = sorted(x["id"] for x in a.client(token).get("/api/v1/audits").json()["items"])
        assert len(ids) == 3
        assert poll(lambda: hook.delivered() == ids, 40), hook.batches()
        assert hook.requests[-1] == ("/hook?token=n3w", new_auth)

        def left() -> list[Any]:
            with a.session() as s:
                return backlog(s)

        assert poll(lambda: left() == []), left()  # settled just after the 204
        assert "0ld" not in caplog.text and "n3w" not in caplog.text
    finally:
        hook.close()
        for c in replicas:
            for client in c.clients:
                client.close()
            c.app.state.link.forwarder.close()
            c.engine.dispose()


def test_the_forwarder_runs_with_the_app_and_stops_with_it(tmp_path: Path) -> None:
    """create_app starts no thread (an app never served leaves nothing running
    after its store is gone); serving it (the lifespan) starts the forwarder, and
    the end of serving stops it."""
    import asyncio
    import threading

    def forwarders() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "cnnf-forward"]

    before = forwarders()
    url = f"sqlite:///{tmp_path / 'console.db'}"
    engine = connect(url)
    started: list[threading.Thread] = []

    async def serve(app: Any) -> None:
        async with app.router.lifespan_context(app):  # what uvicorn runs around serving
            started.extend(t for t in forwarders() if t not in before)
            assert [t.is_alive() for t in started] == [True]

    try:
        app = create_app(ConsoleConfig(db_url=url, data_dir=tmp_path), engine=engine)
        assert forwarders() == before
        asyncio.run(serve(app))
        assert not started[0].is_alive()
        assert forwarders() == before
    finally:
        engine.dispose()
