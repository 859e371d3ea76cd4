"""``GET /metrics``: authenticated like the API; verdicts, audits, ingestion,
Defenders connected, forwarding, revisions."""

from __future__ import annotations

import re

import test_defenders as td
from consoletest import ApiClient, Console
from sqlalchemy import event

from cnnf.console.metrics import IngestionRate
from cnnf.console.security import Role
from cnnf.model import Effect
from cnnf.model.records import ReportBatch


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` from the exposition text (exactly one)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)$"
    found = [float(m.group(1)) for line in text.splitlines()
             if (m := re.match(pattern, line))]
    assert len(found) == 1, f"{name}{{{want}}}: {found}"
    return found[0]


def test_metrics_need_a_token_of_any_role(console: Console) -> None:
    assert console.client().get("/metrics").status_code == 401
    assert console.client("cnnfd_not-a-credential").get("/metrics").status_code == 401
    r = console.as_role(Role.AUDITOR).get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")


def test_verdicts_audits_ingestion_and_defenders(console: Console, admin: ApiClient) -> None:
    _, d1 = td.enroll(console, admin, "node-1")
    td.enroll(console, admin, "node-2")
    batch = ReportBatch(batch_id="b-1", dropped=4, flows=[
        td.flow(count=3),
        td.flow(port=80, count=2, effect=Effect.ALLOW, matched=False, rule_id=None,
                rule_name=None, rule_kind=None),
    ], audits=[td.audit(count=3), td.audit(port=5433, blocked=False, effect=Effect.ALERT),
               td.audit(port=5434, count=2, blocked=False, would=True)])
    td.post_batch(d1, batch)
    td.post_batch(d1, batch)  # a duplicate counts as such, nothing more
    text = console.as_role(Role.AUDITOR).get("/metrics").text
    assert value(text, "cnnf_console_verdicts_total", verdict="prevent") == 3
    assert value(text, "cnnf_console_verdicts_total", verdict="observed") == 2
    assert value(text, "cnnf_console_verdicts_total", verdict="allow") == 0
    assert value(text, "cnnf_console_audits_total", blocked="true", would="false") == 3
    # a real alert and a "would" audit (a staged prevent: nothing enforced) apart
    assert value(text, "cnnf_console_audits_total", blocked="false", would="false") == 1
    assert value(text, "cnnf_console_audits_total", blocked="false", would="true") == 2
    assert value(text, "cnnf_console_ingested_records_total", kind="flow") == 2
    assert value(text, "cnnf_console_ingested_records_total", kind="audit") == 3
    assert value(text, "cnnf_console_report_batches_total", result="stored") == 1
    assert value(text, "cnnf_console_report_batches_total", result="duplicate") == 1
    assert value(text, "cnnf_console_defender_spool_dropped_total") == 4
    assert value(text, "cnnf_console_ingestion_records_per_second") == 5 / 60
    assert value(text, "cnnf_console_defenders", status="connected") == 2
    assert value(text, "cnnf_console_policy_revision") == 0

    console.clock.advance(61)  # a minute later: no recent ingestion, nobody connected
    text = admin.get("/metrics").text
    assert value(text, "cnnf_console_ingestion_records_per_second") == 0
    assert value(text, "cnnf_console_defenders", status="connected") == 0
    assert value(text, "cnnf_console_defenders", status="disconnected") == 2


def test_ingestion_rate_over_a_sliding_window() -> None:
    now = [0.0]
    rate = IngestionRate(window=10, clock=lambda: now[0])
    rate.add(50)
    now[0] = 5
    rate.add(30)
    assert rate.per_second() == 8
    now[0] = 10.5  # the first 50 left the window
    assert rate.per_second() == 3


def test_scrapes_read_the_store_at_most_every_five_seconds(console: Console,
                                                           admin: ApiClient) -> None:
    """The outbox backlog is a grouped scan of the outbox: scrapes in quick
    succession (several Prometheis, a scrape storm) share one read of it; the
    process's own counters stay current in every scrape."""
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "forward_outbox" in statement:
            statements.append(statement)

    _, defender = td.enroll(console, admin)
    event.listen(console.engine, "before_cursor_execute", count)
    try:
        first = admin.get("/metrics").text
        assert len(statements) == 1
        td.post_batch(defender, ReportBatch(batch_id="b-1", flows=[td.flow()]))
        statements.clear()
        second = admin.get("/metrics").text
        assert statements == []  # the backlog from the first scrape's read
        assert value(second, "cnnf_console_ingested_records_total", kind="flow") == \
            value(first, "cnnf_console_ingested_records_total", kind="flow") + 1
        console.clock.advance(5)
        admin.get("/metrics")
        assert len(statements) == 1
    finally:
        event.remove(console.engine, "before_cursor_execute", count)
