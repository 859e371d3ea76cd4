"""Forwarding as operators run it: the fleet's sinks and their parked audits
through the API (``/api/v1/forwarding``) and the ``cnnf forwarding`` command
against a real Console process, requeueing delivered to a real webhook; and a
sink's secret never reaching a log line, a metric label or an API answer."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import test_defenders as td
from consoletest import ApiClient, Clock, Console
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_cli import CNNF, PASSWORD, _cnnf, running_console
from tests.polling import poll
from tests.served import free_port
from tests.webhook import Webhook

from cnnf.console.app import create_app
from cnnf.console.config import ConsoleConfig
from cnnf.console.security import Role
from cnnf.console.services.forwarding import webhook_name
from cnnf.console.services.records import AuditRecord, AuditService
from cnnf.console.store.db import connect, migrate
from cnnf.console.store.models import AuditRow, OutboxRow, SinkRow
from cnnf.errors import CnnfError
from cnnf.model import Effect
from cnnf.model.records import ReportBatch

API = "/api/v1"
POISON = 6666  # the port of the audit the picky webhook refuses


class Picky:
    """A webhook answer: 400 to a batch holding the poison audit until fixed."""

    def __init__(self) -> None:
        self.fixed = False

    def __call__(self, body: dict[str, Any], n: int) -> int:
        if not self.fixed and any(a["port"] == POISON for a in body["audits"]):
            return 400
        return 204


@contextlib.contextmanager
def forwarding_console(db_url: str, tmp_path: Path, webhooks: tuple[str, ...]
                       ) -> Iterator[Console]:
    engine = connect(db_url)
    clock = Clock()
    config = ConsoleConfig(db_url=db_url, data_dir=tmp_path, webhooks=webhooks)
    c = Console(app=create_app(config, engine=engine, now=clock.now), engine=engine,
                clock=clock)
    c.app.state.link.forwarder.start()  # what the lifespan does in a served Console
    for role in Role:
        c.tokens[role] = c.add_user(f"{role.value}-user", role)
    try:
        yield c
    finally:
        for client in c.clients:
            client.close()
        c.app.state.link.forwarder.close()
        engine.dispose()


def _report(console: Console, *ports: int) -> None:
    _, defender = td.enroll(console, console.as_role(Role.ADMIN))
    batch = ReportBatch(batch_id="b-1", audits=[td.audit(port=p) for p in ports])
    assert td.post_batch(defender, batch).status_code == 200


def _parked(admin: ApiClient, **params: Any) -> list[dict[str, Any]]:
    r = admin.get(f"{API}/forwarding/parked", params=params)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return found


def test_parked_audits_are_listed_and_requeued_through_the_api(
        db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    picky = Picky()
    hook = Webhook(picky)
    name = webhook_name(hook.url)
    try:
        with forwarding_console(db_url, tmp_path, (hook.url,)) as console:
            admin = console.as_role(Role.ADMIN)
            _report(console, 1000, POISON, 1001)
            assert poll(lambda: len(_parked(admin)) == 1)
            [poison] = _parked(admin)
            ids = sorted(a["id"] for a in admin.get(f"{API}/audits").json()["items"])
            assert poll(lambda: hook.delivered() == [i for i in ids if i != poison["auditId"]])
            assert poison["sink"] == name and poison["audit"]["port"] == POISON
            assert poison["audit"]["id"] == poison["auditId"]
            assert admin.get(f"{API}/forwarding/sinks").json() == [
                {"name": name, "configured": True, "queued": 0, "parked": 1}]
            r = admin.get(f"{API}/forwarding/parked", params={"sink": "syslog:udp://h:9"})
            assert r.status_code == 404
            assert r.json()["detail"].startswith("no sink named 'syslog:udp://h:9'")
            r = admin.get(f"{API}/forwarding/parked", params={"limit": 1})
            assert r.headers["Total-Count"] == "1"

            # Refusals name what is wrong and change nothing.
            auditor = console.as_role(Role.AUDITOR)
            assert auditor.get(f"{API}/forwarding/parked").status_code == 200
            r = auditor.post(f"{API}/forwarding/parked/requeue", json={"sink": name})
            assert r.status_code == 403
            r = admin.post(f"{API}/forwarding/parked/requeue",
                           json={"sink": name, "ids": [poison["auditId"], 999_999]})
            assert r.status_code == 404
            assert r.json()["detail"] == (f"audits 999999 are not parked for sink {name!r}; "
                                          "nothing was requeued")
            r = admin.post(f"{API}/forwarding/parked/requeue", json={"sink": "nope"})
            assert r.status_code == 404 and r.json()["detail"].startswith(
                "no sink named 'nope'")
            r = admin.post(f"{API}/forwarding/parked/requeue", json={"sink": name, "ids": []})
            assert r.status_code == 422 and r.json()["errors"][0]["path"] == "ids"
            r = admin.get(f"{API}/forwarding/parked", params={"limit": 0})
            assert r.status_code == 422
            with console.session() as s:  # parked for a sink no longer configured
                s.execute(OutboxRow.__table__.insert().values(
                    sink="webhook:gone", audit_id=poison["auditId"],
                    queued=datetime.now(UTC), parked=datetime.now(UTC)))
                s.commit()
            r = admin.post(f"{API}/forwarding/parked/requeue", json={"sink": "webhook:gone"})
            assert r.status_code == 409 and "no longer configured" in r.json()["detail"]
            assert admin.get(f"{API}/forwarding/sinks").json() == [  # by name
                {"name": "webhook:gone", "configured": False, "queued": 0, "parked": 1},
                {"name": name, "configured": True, "queued": 0, "parked": 1}]
            with console.session() as s:
                s.execute(OutboxRow.__table__.delete().where(OutboxRow.sink == "webhook:gone"))
                s.commit()
            assert len(_parked(admin)) == 1

            # Requeued while the receiver still refuses it: parked again (it does not
            # hold up the sink); requeued once the receiver is fixed, it is delivered.
            with caplog.at_level(logging.INFO, logger="cnnf.console"):
                r = admin.post(f"{API}/forwarding/parked/requeue",
                               json={"sink": name, "ids": [poison["auditId"]]})
            assert r.status_code == 200 and r.json() == {"sink": name, "requeued": 1, "left": 0}
            assert (f"forwarding: admin-user requeued 1 parked audits of {name} "
                    f"(ids {poison['auditId']})") in caplog.text
            sent = sum(1 for code, got in hook.batches() if poison["auditId"] in got)
            assert poll(lambda: sum(1 for code, got in hook.batches()
                                    if poison["auditId"] in got) > sent)
            assert poll(lambda: admin.get(f"{API}/forwarding/sinks").json() == [
                {"name": name, "configured": True, "queued": 0, "parked": 1}])
            picky.fixed = True
            r = admin.post(f"{API}/forwarding/parked/requeue", json={"sink": name})
            assert r.status_code == 200
            assert poll(lambda: hook.delivered() == ids, 30)
            assert _parked(admin) == []
            assert admin.get(f"{API}/forwarding/sinks").json() == [
                {"name": name, "configured": True, "queued": 0, "parked": 0}]
    finally:
        hook.close()


SECRET = "s3cretT0ken"


def test_a_sinks_secret_never_reaches_logs_metrics_or_answers(
        db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Webhooks with the secret as password, in the path and in the query: one
    refusing an audit (parked, logged), one down (failures logged with the
    error), one stored by another version with a URL this one cannot use. No
    log line, metric or API answer holds the secret; bad options neither."""
    picky = Webhook(Picky())
    dead = free_port()
    parked_url = picky.url.replace("http://", f"http://user:{SECRET}@") + f"/{SECRET}?t={SECRET}"
    dead_url = f"http://user:{SECRET}@127.0.0.1:{dead}/{SECRET}?token={SECRET}"
    try:
        with (caplog.at_level(logging.DEBUG, logger="cnnf"),
              forwarding_console(db_url, tmp_path, (parked_url, dead_url)) as console):
            with console.session() as s:
                s.add(SinkRow(name="webhook:bad", url=f"ftp://u:{SECRET}@h/{SECRET}",
                              updated=datetime.now(UTC)))
                s.commit()
            admin = console.as_role(Role.ADMIN)
            _report(console, 1000, POISON)
            assert poll(lambda: len(_parked(admin)) == 1)
            assert poll(lambda: "forwarding to webhook:http://127.0.0.1:"
                        f"{dead} (" in caplog.text and "failed" in caplog.text)
            assert poll(lambda: "cannot use the stored sink webhook:bad" in caplog.text)
            answers = [admin.get("/metrics").text,
                       admin.get(f"{API}/forwarding/sinks").text,
                       admin.get(f"{API}/forwarding/parked").text]
            assert 'result="parked"' in answers[0]
        assert "parked: the sink refuses it on its own" in caplog.text
        for text in (caplog.text, *answers):
            assert SECRET not in text
    finally:
        picky.close()
    for bad in (f"ftp://u:{SECRET}@h/x", f"http://u:{SECRET}@h:99999/x?t={SECRET}",
                f"udp://u:{SECRET}@h/x"):
        with pytest.raises(CnnfError) as refused:
            ConsoleConfig.from_options(webhooks=(bad,) if "udp" not in bad else (),
                                       syslog=(bad,) if "udp" in bad else ())
        assert SECRET not in str(refused.value) and "--" in str(refused.value)


def _store_parked(data: Path, sink_url: str) -> int:
    """A Console's SQLite store with one audit parked for the webhook at
    ``sink_url``; returns its id."""
    engine = connect(f"sqlite:///{(data / 'console.db').resolve()}")
    try:
        migrate(engine)
        name = webhook_name(sink_url)
        with Session(engine) as s:
            AuditService(s).insert_many([AuditRecord(
                time=datetime.now(UTC).replace(microsecond=0), blocked=True,
                effect=Effect.PREVENT, rule_id=1, rule_name="r", src_image="a",
                dst_image="b", port=POISON, msg="blocked connection", defender="node-1")],
                forward_to=(name,))
            (audit_id,) = s.scalars(select(AuditRow.id))
            s.execute(OutboxRow.__table__.update().values(parked=datetime.now(UTC)))
            s.add(SinkRow(name=name, url=sink_url, updated=datetime.now(UTC)))
            s.commit()
        return int(audit_id)
    finally:
        engine.dispose()


def _forwarding(token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CNNF, "forwarding", *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "CNNF_TOKEN": token})


def test_the_forwarding_command_lists_and_requeues_parked_audits(tmp_path: Path) -> None:
    """A real Console process started WITHOUT forwarding options keeps the stored
    webhook (it delivers to it); ``cnnf forwarding`` lists the sink and its parked
    audit, refuses an id that is not parked (exit 1, the Console's reason), and
    requeues the parked one, which the webhook then receives."""
    import httpx

    data = tmp_path / "data"
    data.mkdir()
    hook = Webhook()
    try:
        audit_id = _store_parked(data, hook.url)
        made = _cnnf("console", "create-user", "alice", "--role", "admin",
                     "--password-stdin", "--data-dir", str(data), stdin=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
        with running_console(tmp_path, "--data-dir", str(data)) as url:
            token = httpx.post(f"{url}/api/v1/auth/login", json={
                "username": "alice", "password": PASSWORD}).json()["token"]
            at = ("--console", url)
            name = webhook_name(hook.url)
            r = _forwarding(token, "sinks", *at)
            assert r.returncode == 0, r.stderr
            assert r.stdout == f"{name}: 0 queued, 1 parked\n"
            r = _forwarding(token, "parked", *at)
            assert r.returncode == 0, r.stderr
            assert re.fullmatch(rf"audit {audit_id} parked \S+Z for {re.escape(name)}: "
                                r"\S+Z blocked connection\n", r.stdout), r.stdout
            r = _forwarding(token, "parked", "--sink", "nosuch", *at)
            assert r.returncode == 1 and r.stdout == ""
            assert "404: no sink named 'nosuch'" in r.stderr
            r = _forwarding(token, "requeue", "nosuch", *at)
            assert r.returncode == 1 and "404: no sink named 'nosuch'" in r.stderr
            # A second parked audit, its message with control characters (a
            # Defender's string): escaped; --limit 1 says what it left out.
            engine = connect(f"sqlite:///{(data / 'console.db').resolve()}")
            try:
                with Session(engine) as s:
                    AuditService(s).insert_many([AuditRecord(
                        time=datetime.now(UTC).replace(microsecond=0), blocked=True,
                        effect=Effect.PREVENT, rule_id=1, rule_name="r", src_image="a",
                        dst_image="b", port=POISON, msg="x\x1b[2J\nforged", defender="n")],
                        forward_to=(name,), queued=datetime.now(UTC))
                    s.execute(OutboxRow.__table__.update().values(parked=datetime.now(UTC)))
                    s.commit()
                r = _forwarding(token, "parked", *at)
                assert r.returncode == 0 and r.stdout.count("\n") == 2, r.stdout
                assert r.stdout.endswith(" x\\x1b[2J\\nforged\n"), r.stdout
                r = _forwarding(token, "parked", "--limit", "1", *at)
                assert r.stdout.endswith("\n1 of 2 shown (--limit)\n"), r.stdout
                with Session(engine) as s:
                    s.execute(OutboxRow.__table__.delete().where(
                        OutboxRow.audit_id != audit_id))
                    s.commit()
            finally:
                engine.dispose()
            r = _forwarding(token, "requeue", name, str(audit_id + 1), *at)
            assert r.returncode == 1 and r.stdout == ""
            assert r.stderr == (f"cnnf forwarding: POST /forwarding/parked/requeue: 404: "
                                f"audits {audit_id + 1} are not parked for sink {name!r}; "
                                "nothing was requeued\n")
            assert hook.posts == []
            r = _forwarding(token, "requeue", name, *at)
            assert r.returncode == 0, r.stderr
            assert r.stdout == (f"requeued 1 parked audits of {name} (sent at the "
                                "forwarder's next round)\n")
            assert poll(lambda: hook.delivered() == [audit_id], 30)
            r = _forwarding(token, "parked", *at)
            assert r.stdout == "no parked audits\n"
            r = _forwarding("", "sinks", *at)
            assert r.returncode == 2 and "--token" in r.stderr
    finally:
        hook.close()
