"""Learning and simulation through the API, on SQLite and PostgreSQL: flows
reported by an enrolled Defender (the real ingestion path, identities
recorded), proposals learnt, read, applied as one revision; drafts simulated."""

from __future__ import annotations

import json
from typing import Any

import pytest
from consoletest import ApiClient, Console
from sqlalchemy import update
from sqlalchemy.orm import Session

from cnnf.console.security import Role
from cnnf.console.store.models import FlowRow
from cnnf.model import Effect, RuleKind
from cnnf.model.records import EndpointInfo, FlowRecord, ReportBatch
from cnnf.policy.learn import PORT_ZERO

API = "/api/v1"
T0 = 1_767_322_800.0  # 2026-01-02 03:00:00 UTC, an hour before the console's clock


def ep(app: str, ns: str, address: str, host: str = "node-1", **labels: str) -> EndpointInfo:
    return EndpointInfo(kind="container", address=address, image=f"shop/{app}:1.0",
                        container=app, namespace=ns, host=host,
                        labels={"app": app, **labels})


FRONTEND = ep("frontend", "shop-web", "10.64.1.2")
API_EP = ep("api", "shop-web", "10.64.1.3")
DB = ep("db", "shop-data", "10.64.2.5", host="node-2")
CACHE = ep("cache", "shop-data", "10.64.1.4")
PARTNER = EndpointInfo(kind="address", address="203.0.113.20", domain="api.partner.example")


def observed(src: EndpointInfo, dst: EndpointInfo, port: int, count: int) -> FlowRecord:
    return FlowRecord(src=src, dst=dst, port=port, effect=Effect.ALLOW, matched=False,
                      count=count, first_seen=T0, last_seen=T0 + 60, reporter="node-1")


SHOP = [observed(FRONTEND, API_EP, 8080, 120), observed(API_EP, DB, 5432, 240),
        observed(API_EP, CACHE, 6379, 200), observed(API_EP, PARTNER, 443, 30)]


def report(console: Console, admin: ApiClient, flows: list[FlowRecord], batch: str = "b1") -> None:
    token = admin.post(f"{API}/defenders/enrollment-tokens", json={}).json()["token"]
    r = console.client().post(f"{API}/defenders/enroll", json={
        "enrollment_token": token, "hostname": "node-1", "version": "0.1.0"})
    defender = console.client(r.json()["credential"])
    r = defender.post(f"{API}/defender/reports",
                      content=ReportBatch(batch_id=batch, flows=flows).model_dump_json(),
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def learn(admin: ApiClient, **body: Any) -> dict[str, Any]:
    r = admin.post(f"{API}/policy/proposals", json=body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def test_learn_review_apply_with_default_prevent(console: Console, admin: ApiClient) -> None:
    report(console, admin, SHOP)
    p = learn(admin, defaultEffect="prevent")
    assert p["baseRevision"] == 0 and p["appliedRevision"] is None
    assert p["learntFlows"] == 4 and p["unallowed"] == 0 and p["skipped"] == {}
    rules = {(r["rule"]["src"], r["rule"]["dst"]): r for r in p["proposed"]}
    assert set(rules) == {("shop-web:app=frontend", "shop-web:app=api"),
                          ("shop-web:app=api", "shop-data:app=db"),
                          ("shop-web:app=api", "shop-data:app=cache"),
                          ("shop-web:app=api", "dns=api.partner.example")}
    api_db = rules[("shop-web:app=api", "shop-data:app=db")]
    assert api_db["rule"]["ports"] == [5432] and api_db["kind"] == "container"
    assert api_db["srcBasis"] == "label app=api in shop-web"
    assert api_db["evidence"] == {
        "flows": 1, "connections": 240, "firstSeen": "2026-01-02T03:00:00Z",
        "lastSeen": "2026-01-02T03:01:00Z",
        "edges": ["image:shop/api:1.0 -> image:shop/db:1.0:5432"]}
    assert p["diff"]["settings"] == {"defaultEffect": {"before": "allow", "after": "prevent"}}
    assert len(p["diff"]["containerRules"]["added"]) == 4
    assert p["policy"]["defaultEffect"] == "prevent"
    # Listed and read back as stored.
    page = admin.get(f"{API}/policy/proposals").json()
    assert page["total"] == 1 and page["items"][0]["rules"] == 4
    assert admin.get(f"{API}/policy/proposals/{p['id']}").json() == p
    # Nothing changed yet: the policy is still empty.
    assert admin.get(f"{API}/policy").json()["containerRules"] == []

    # Tick three of four, apply: one change, one revision.
    keep = [{"kind": r["kind"], "id": r["rule"]["id"]} for r in p["proposed"]
            if r["rule"]["dst"] != "dns=api.partner.example"]
    r = admin.post(f"{API}/policy/proposals/{p['id']}/apply", json={"rules": keep})
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 1 and r.json()["rules"] == 3 and r.json()["objects"] == 4
    policy = admin.get(f"{API}/policy").json()
    assert policy["revision"] == 1 and policy["defaultEffect"] == "prevent"
    assert len(policy["containerRules"]) == 3
    assert "dns=api.partner.example" not in {o["name"] for o in policy["objects"]}
    changes = admin.get(f"{API}/changes").json()["items"]
    assert [c["action"] for c in changes] == ["policy.learn.apply"]
    assert admin.get(f"{API}/policy/proposals/{p['id']}").json()["appliedRevision"] == 1
    # Applying again: the policy moved on since it was learnt.
    r = admin.post(f"{API}/policy/proposals/{p['id']}/apply", json={})
    assert r.status_code == 409 and "learn again" in r.json()["detail"]

    # The applied policy, simulated over the window: only the unticked flow changes.
    r = admin.post(f"{API}/policy/simulate", json={"changes": {}})
    assert r.status_code == 200, r.text
    assert r.json()["changedFlows"] == 0
    # Learning again covers what the applied rules decide; the partner is still new.
    again = learn(admin)
    assert sorted((c["ruleId"], c["ruleName"], c["evidence"]["flows"]) for c in again["covered"]
                  ) == sorted((rule["id"], rule["name"], 1) for rule in policy["containerRules"])
    assert [r["rule"]["dst"] for r in again["proposed"]] == ["dns=api.partner.example"]


def test_simulate_reports_exactly_the_flows_a_draft_changes(console: Console,
                                                           admin: ApiClient) -> None:
    report(console, admin, SHOP)
    p = learn(admin)
    applied = admin.post(f"{API}/policy/proposals/{p['id']}/apply", json={})
    assert applied.status_code == 200, applied.text
    current = admin.get(f"{API}/policy").json()
    # Identical draft: nothing.
    same = admin.post(f"{API}/policy/simulate", json={"policy": current}).json()
    assert (same["flows"], same["connections"], same["changedFlows"], same["edges"]) == (
        4, 590, 0, [])
    # A draft that prevents api -> db, placed first: exactly that flow.
    api_db = next(r for r in current["containerRules"] if r["dst"] == "shop-data:app=db")
    draft = {"changes": {"containerRules": [{**api_db, "effect": "prevent"}]}}
    out = admin.post(f"{API}/policy/simulate", json=draft).json()
    assert out["transitions"] == {"allow -> prevent": 1}
    [edge] = out["edges"]
    assert (edge["src"], edge["dst"], edge["port"], edge["connections"]) == (
        "image:shop/api:1.0", "image:shop/db:1.0", 5432, 240)
    assert edge["before"]["label"] == "allow" and edge["after"]["label"] == "prevent"
    assert edge["after"]["ruleId"] == api_db["id"] and edge["recorded"] == "observed"
    assert out["rules"] == [{"kind": "container", "ruleId": api_db["id"],
                             "ruleName": api_db["name"], "effect": "prevent", "flows": 1,
                             "connections": 240, "transitions": {"allow -> prevent": 1}}]
    # The default to prevent with one rule removed: the removed rule's flows only.
    cache = next(r for r in current["containerRules"] if r["dst"] == "shop-data:app=cache")
    out = admin.post(f"{API}/policy/simulate", json={"changes": {
        "removeRules": [{"kind": "container", "id": cache["id"]}],
        "defaultEffect": "prevent"}}).json()
    assert out["transitions"] == {"allow -> unmatched (prevent)": 1}
    # A stored proposal as the draft; a window with no flows.
    out = admin.post(f"{API}/policy/simulate", json={"proposal": p["id"]}).json()
    assert out["changedFlows"] == 0
    out = admin.post(f"{API}/policy/simulate", json={
        "policy": {**current, "defaultEffect": "prevent", "containerRules": []},
        "since": "2026-01-02T03:02:00Z"}).json()
    assert (out["flows"], out["changedFlows"]) == (0, 0)


BAD: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("post", "/policy/simulate", {}, 422, "give exactly one draft"),
    ("post", "/policy/simulate", {"policy": {}, "proposal": 1}, 422, "got policy, proposal"),
    ("post", "/policy/simulate", {"proposal": 99}, 404, "no proposal with id 99"),
    ("post", "/policy/simulate", {"changes": {"containerRules": [
        {"id": 1, "name": "x", "src": "nope", "dst": "nope"}]}}, 409, "nope"),
    ("post", "/policy/simulate", {"policy": {"containerRules": [
        {"id": 1, "name": "x", "src": "nope", "dst": "nope"}]}}, 422, "nope"),
    ("post", "/policy/simulate", {"changes": {"removeRules": [{"kind": "host", "id": 3}]}},
     409, "there is no host rule with id 3"),
    ("post", "/policy/simulate", {"changes": {}, "since": "2026-01-02T04:00:00Z",
                                  "until": "2026-01-02T03:00:00Z"}, 422, "is not before until"),
    ("post", "/policy/proposals", {"labelKey": "a=b"}, 422, "labelKey"),
    ("post", "/policy/proposals", {"images": ["shop/[api"]}, 422, "'[' without ']'"),
    ("post", "/policy/proposals", {"defaultEffect": "block"}, 422, "defaultEffect"),
    ("post", "/policy/proposals", {"since": "2026-01-02T05:00:00Z"}, 422, "is not before until"),
    ("get", "/policy/proposals/7", {}, 404, "no proposal with id 7"),
    ("post", "/policy/proposals/7/apply", {}, 404, "no proposal with id 7"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "says"), BAD,
                         ids=[f"{b[1]}-{b[4]}" for b in BAD])
def test_bad_input_is_refused_naming_it_and_changes_nothing(  # noqa: PLR0917
        console: Console, admin: ApiClient, method: str, path: str, body: dict[str, Any],
        status: int, says: str) -> None:
    report(console, admin, SHOP)
    kwargs: dict[str, Any] = {"json": body} if method == "post" else {}
    r = admin.request(method.upper(), API + path, **kwargs)
    assert r.status_code == status, r.text
    assert says in r.text
    assert admin.get(f"{API}/policy/proposals").json()["total"] == 0
    assert admin.get(f"{API}/policy").json()["revision"] == 0


def test_apply_refuses_rules_the_proposal_does_not_have(console: Console,
                                                         admin: ApiClient) -> None:
    report(console, admin, SHOP)
    p = learn(admin)
    r = admin.post(f"{API}/policy/proposals/{p['id']}/apply",
                   json={"rules": [{"kind": "host", "id": 1}]})
    assert r.status_code == 409
    says = f"proposal {p['id']} proposes no host rule with id 1"
    assert r.json()["errors"] == [{"path": "rules[0]", "message": says}]
    assert admin.get(f"{API}/policy").json()["revision"] == 0


def test_roles(console: Console, admin: ApiClient) -> None:
    report(console, admin, SHOP)
    p = learn(admin)
    auditor, operator = console.as_role(Role.AUDITOR), console.as_role(Role.OPERATOR)
    assert auditor.get(f"{API}/policy/proposals/{p['id']}").status_code == 200
    assert auditor.get(f"{API}/policy/proposals").status_code == 200
    assert auditor.post(f"{API}/policy/proposals", json={}).status_code == 403
    assert auditor.post(f"{API}/policy/simulate", json={"changes": {}}).status_code == 403
    assert auditor.post(f"{API}/policy/proposals/{p['id']}/apply", json={}).status_code == 403
    assert operator.post(f"{API}/policy/simulate", json={"changes": {}}).status_code == 200
    anonymous = console.client()
    assert anonymous.post(f"{API}/policy/simulate", json={"changes": {}}).status_code == 401
    assert anonymous.post(f"{API}/policy/simulate", content=b"[").status_code == 401
    assert anonymous.get(f"{API}/policy/proposals").status_code == 401


def test_scope_namespace_and_images(console: Console, admin: ApiClient) -> None:
    report(console, admin, SHOP)
    p = learn(admin, namespace="shop-data")
    assert p["scope"] == {"namespace": "shop-data"}
    assert sorted(r["rule"]["dst"] for r in p["proposed"]) == ["shop-data:app=cache",
                                                               "shop-data:app=db"]
    p = learn(admin, images=["shop/frontend*"])
    assert [r["rule"]["src"] for r in p["proposed"]] == ["shop-web:app=frontend"]
    assert RuleKind.CONTAINER.value == p["proposed"][0]["kind"]


def _fail_proposal_updates(console: Console) -> None:
    """A store that refuses to mark a proposal applied (a trigger): the failure
    comes after the new policy is written, in the middle of the apply."""
    with console.engine.begin() as conn:
        if console.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("CREATE TRIGGER no_apply BEFORE UPDATE ON proposals "
                                 "BEGIN SELECT RAISE(ABORT, 'proposals are read-only'); END")
        else:
            conn.exec_driver_sql("CREATE FUNCTION no_apply() RETURNS trigger LANGUAGE plpgsql "
                                 "AS $$ BEGIN RAISE EXCEPTION 'proposals are read-only'; END $$")
            conn.exec_driver_sql("CREATE TRIGGER no_apply BEFORE UPDATE ON proposals "
                                 "FOR EACH ROW EXECUTE FUNCTION no_apply()")


def test_apply_is_one_transaction_a_failure_midway_changes_nothing(
        console: Console, admin: ApiClient) -> None:
    report(console, admin, SHOP)
    p = learn(admin, defaultEffect="prevent")
    before = admin.get(f"{API}/policy").json()
    _fail_proposal_updates(console)
    r = admin.post(f"{API}/policy/proposals/{p['id']}/apply", json={})
    assert r.status_code in (409, 500), r.text
    assert "nothing was changed" in r.json()["detail"]
    # The policy, its revision, the change log and the proposal: as before.
    assert admin.get(f"{API}/policy").json() == before
    assert admin.get(f"{API}/changes").json()["items"] == []
    assert admin.get(f"{API}/policy/proposals/{p['id']}").json()["appliedRevision"] is None
    # Once the store takes it, the same apply is one revision.
    with console.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER no_apply" + (
            "" if console.engine.dialect.name == "sqlite" else " ON proposals"))
    r = admin.post(f"{API}/policy/proposals/{p['id']}/apply", json={})
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 1
    assert admin.get(f"{API}/policy/proposals/{p['id']}").json()["appliedRevision"] == 1


def test_staged_rules_change_nothing_in_force_and_are_reported_as_would_changes(
        console: Console, admin: ApiClient) -> None:
    report(console, admin, SHOP)
    p = learn(admin)
    assert admin.post(f"{API}/policy/proposals/{p['id']}/apply", json={}).status_code == 200
    current = admin.get(f"{API}/policy").json()
    api_db = next(r for r in current["containerRules"] if r["dst"] == "shop-data:app=db")
    partner = next(r for r in current["containerRules"]
                   if r["dst"] == "dns=api.partner.example")
    # A staged prevent rule first for api -> db, the partner's rule removed and a
    # staged default prevent: in force, only the removed rule's flow changes
    # (allow -> the default allow); staged, api -> db and the partner would be
    # refused.
    staged_rule = {**api_db, "id": 99, "name": "stop api -> db", "effect": "prevent",
                   "staged": True}
    draft = {**current, "stagedDefaultEffect": "prevent",
             "containerRules": [staged_rule, *(r for r in current["containerRules"]
                                               if r["id"] != partner["id"])]}
    out = admin.post(f"{API}/policy/simulate", json={"policy": draft})
    assert out.status_code == 200, out.text
    result = out.json()
    assert result["transitions"] == {"allow -> unmatched (allow)": 1}
    assert [(e["dst"], e["port"]) for e in result["edges"]] == [("dns:api.partner.example", 443)]
    staged = result["staged"]
    assert staged["transitions"] == {"allow -> prevent": 1,
                                     "unmatched (allow) -> unmatched (prevent)": 1}
    assert staged["changedFlows"] == 2 and staged["changedConnections"] == 270
    assert {(e["dst"], e["before"]["label"], e["after"]["label"]) for e in staged["edges"]} == {
        ("image:shop/db:1.0", "allow", "prevent"),
        ("dns:api.partner.example", "unmatched (allow)", "unmatched (prevent)")}
    assert sorted((r["ruleId"] or 0, r["effect"]) for r in staged["rules"]) == [
        (0, "prevent"), (99, "prevent")]
    # Nothing staged: no would-changes.
    same = admin.post(f"{API}/policy/simulate", json={"policy": current}).json()
    assert same["staged"] == {"changedFlows": 0, "changedConnections": 0, "transitions": {},
                              "edges": [], "edgesTotal": 0, "rules": []}


def test_an_identity_too_long_to_record_is_kept_as_a_digest_and_not_learnt(
        console: Console, admin: ApiClient) -> None:
    """Cut at 4,000 characters, an identity used to read back as its image key
    (a broader identity). Now it is stored as its digest, two such identities
    stay two flows, and learning skips their flows saying why."""
    many = {f"label-{i:03}": "v" * 20 for i in range(150)}
    big_a = ep("api", "shop-web", "10.64.1.3", **many)
    big_b = ep("api", "shop-web", "10.64.1.3", **{**many, "label-000": "w" * 20})
    report(console, admin, [*SHOP, observed(big_a, DB, 5432, 5), observed(big_b, DB, 5432, 7)])
    flows = admin.get(f"{API}/flows", params={"limit": 100}).json()["items"]
    long_ones = [f for f in flows if '"too-long"' in f["srcIdentity"]]
    assert len(long_ones) == 2
    digests = {json.loads(f["srcIdentity"])["sha256"] for f in long_ones}
    assert len(digests) == 2 and all(len(d) == 64 for d in digests)
    assert all(json.loads(f["srcIdentity"])["length"] > 4000 for f in long_ones)
    p = learn(admin)
    assert p["learntFlows"] == 4
    [(reason, skipped)] = p["skipped"].items()
    assert skipped == 2 and "longer than 4,000 characters" in reason


def test_port_0_is_refused_at_ingestion_and_a_stored_one_is_skipped_saying_why(
        console: Console, admin: ApiClient) -> None:
    """A Defender's flow to port 0 is refused with the batch (naming it, nothing
    stored). A flow to port 0 already in the store (written before that check,
    or by another path) no longer fails learning: skipped, with the reason."""
    token = admin.post(f"{API}/defenders/enrollment-tokens", json={}).json()["token"]
    r = console.client().post(f"{API}/defenders/enroll", json={
        "enrollment_token": token, "hostname": "node-1", "version": "0.1.0"})
    defender = console.client(r.json()["credential"])
    bad = ReportBatch(batch_id="b0", flows=[*SHOP, observed(API_EP, DB, 0, 3)])
    r = defender.post(f"{API}/defender/reports", content=bad.model_dump_json(),
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert [e["path"] for e in r.json()["errors"]] == ["flows[4].port"]
    assert admin.get(f"{API}/flows").json()["total"] == 0
    report(console, admin, SHOP, batch="b1")
    with Session(console.engine) as s:
        s.execute(update(FlowRow).where(FlowRow.port == 6379).values(port=0))
        s.commit()
    p = learn(admin)
    assert p["skipped"] == {PORT_ZERO: 1}
    assert p["learntFlows"] == 3 and p["unallowed"] == 0
    assert all(r["rule"]["dst"] != "shop-data:app=cache" for r in p["proposed"])
