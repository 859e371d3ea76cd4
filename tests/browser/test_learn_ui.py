"""The Learn page and impact previews in a real browser: learn from the stored
flows, review the proposed rules with their evidence, untick one, preview the
impact of the rest, apply them as one revision; the rule editor previews a
rule's impact before it is saved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from radarpage import sign_in
from radarserver import RadarConsole, serve

from cnnf.console.services.defenders import flow_record
from cnnf.model import Effect
from cnnf.model.records import EndpointInfo, FlowRecord

pytestmark = pytest.mark.browser


def ep(app: str, ns: str, address: str) -> EndpointInfo:
    return EndpointInfo(kind="container", address=address, image=f"shop/{app}:1.0",
                        container=app, namespace=ns, host="node-1", labels={"app": app})


@pytest.fixture
def console(tmp_path: Path) -> Iterator[RadarConsole]:
    """A Console with an empty policy and two flows recorded as a Defender
    reports them (identities with each end)."""
    with serve(tmp_path) as c:
        now = datetime.now(UTC).timestamp()
        frontend, api, db = (ep("frontend", "shop-web", "10.9.0.2"),
                             ep("api", "shop-web", "10.9.0.3"), ep("db", "shop-data", "10.9.0.4"))
        c.add_flows([flow_record(FlowRecord(
            src=s, dst=d, port=port, effect=Effect.ALLOW, matched=False, count=count,
            first_seen=now - 3600, last_seen=now - 600))
            for s, d, port, count in ((frontend, api, 8080, 120), (api, db, 5432, 240))])
        yield c


def _policy(console: RadarConsole) -> dict[str, Any]:
    with console.client() as api:
        policy: dict[str, Any] = api.get("/api/v1/policy").json()
        return policy


def test_learn_review_preview_and_apply(page: Any, console: RadarConsole) -> None:
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, console, "#/learn")
    page.select_option("#learn-form select[name=defaultEffect]", "prevent")
    page.click("#learn-button")
    page.wait_for_selector("#proposed-rules tbody tr[data-id]")
    summary = page.inner_text("#proposal-summary")
    assert summary.startswith("2 proposed rules learnt from 2 flows seen ")
    rows = page.locator("#proposed-rules tbody tr")
    assert rows.count() == 2
    api_db = page.locator("#proposed-rules tbody tr", has_text="shop-data:app=db")
    text = api_db.inner_text()
    assert "shop-web:app=api" in text and "new: label app=api in shop-web" in text
    assert "5432" in text and "new rule" in text and "1 flow, 240 connections" in text
    assert page.input_value("#apply-effect") == "prevent"

    # Untick frontend -> api: the preview shows it refused by the default, and
    # api -> db allowed by its rule.
    page.locator("#proposed-rules tbody tr", has_text="shop-web:app=frontend").locator(
        "input[type=checkbox]").uncheck()
    page.click("#preview-impact")
    page.wait_for_selector("#proposal-impact .impact-summary")
    impact = page.inner_text("#proposal-impact")
    assert ("2 flows (360 connections) of the last 24 h would change, of 2 flows evaluated."
            in impact)
    assert "unmatched (allow) -> unmatched (prevent): 1 flow" in impact
    assert "unmatched (allow) -> allow: 1 flow" in impact

    page.click("#apply-proposal")
    page.wait_for_function(
        "document.getElementById('apply-result').textContent.startsWith('Applied')")
    assert page.inner_text("#apply-result") == (
        "Applied 1 rule and 2 new objects as revision 1.")
    policy = _policy(console)
    assert policy["revision"] == 1 and policy["defaultEffect"] == "prevent"
    assert [(r["src"], r["dst"], r["ports"]) for r in policy["containerRules"]] == [
        ("shop-web:app=api", "shop-data:app=db", [5432])]

    # The proposals list links the proposal and says it was applied.
    page.goto(f"{console.url}/#/learn")
    page.wait_for_selector("#proposals tbody tr")
    assert "revision 1" in page.inner_text("#proposals tbody tr")

    # The rule editor: turning the rule to prevent, previewed before saving.
    page.goto(f"{console.url}/#/rules/container")
    page.wait_for_selector("#rules tbody tr[data-id]")
    page.click("#rules tbody tr[data-id] button:has-text('Edit')")
    page.select_option("#rule-form select[name=effect]", "prevent")
    page.click("#rule-preview")
    page.wait_for_selector("#rule-impact .impact-summary")
    impact = page.inner_text("#rule-impact")
    assert "1 flow (240 connections) of the last 24 h would change" in impact
    assert "allow -> prevent: 1 flow" in impact
    assert _policy(console)["revision"] == 1  # previewing changed nothing


def test_import_previews_its_impact_before_it_is_applied(page: Any,
                                                         console: RadarConsole) -> None:
    """The import page: after a dry run, "Preview impact" simulates the document
    against the stored flows; a staged rule in it is reported apart, as what it
    would change if promoted; nothing is changed until the import is applied."""
    with console.client() as api:
        document = api.get("/api/v1/policy/export").json()
    spec = document["spec"]
    spec["defaultEffect"] = "prevent"
    spec["objects"] = [
        {"kind": "container", "name": name, "selector": {"labels": [f"app={name}"]}}
        for name in ("frontend", "api", "db")]
    spec["containerRules"] = [
        {"id": 1, "name": "frontend-api", "src": "frontend", "dst": "api", "ports": [8080]},
        {"id": 2, "name": "api-db", "src": "api", "dst": "db", "ports": [5432],
         "staged": True}]
    sign_in(page, console, "#/transfer")
    page.wait_for_selector("textarea[name=document]")
    page.fill("textarea[name=document]", json.dumps(document))
    page.click("#import-preview-button")
    page.wait_for_selector("#import-impact-button")
    page.click("#import-impact-button")
    page.wait_for_selector("#import-impact .impact-summary")
    impact = page.inner_text("#import-impact")
    assert ("2 flows (360 connections) of the last 24 h would change, of 2 flows evaluated."
            in impact)
    assert "unmatched (allow) -> allow: 1 flow" in impact  # frontend -> api, by its rule
    assert "unmatched (allow) -> unmatched (prevent): 1 flow" in impact  # api -> db
    assert ("Staged (reported, not enforced): 1 flow (240 connections) would change if "
            "promoted." in impact)
    assert "unmatched (prevent) -> allow: 1 flow" in impact
    assert _policy(console)["revision"] == 0  # previewing changed nothing
