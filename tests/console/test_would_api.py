"""Staged rules, the staged default effect and "would" verdicts through the
Console: the API (promote, settings), reports from a Defender (flows and audits
that say what would have happened), Radar's ports, and the policy document."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from consoletest import ApiClient, Console
from test_defenders import audit, enroll, flow, post_batch

from cnnf.console.security import Role
from cnnf.model import Effect
from cnnf.model.records import ReportBatch

API = "/api/v1"
OBJECTS = [
    {"name": "api", "kind": "container", "selector": {"images": ["shop/api"]}},
    {"name": "db", "kind": "container", "selector": {"images": ["shop/db"]}},
]


def _seed(admin: ApiClient) -> None:
    for obj in OBJECTS:
        assert admin.post(f"{API}/objects", json=obj).status_code == 201


def _revision(admin: ApiClient) -> int:
    revision: int = admin.get(f"{API}/policy").json()["revision"]
    return revision


def test_a_staged_rule_is_stored_and_promoted_in_one_change(console: Console,
                                                            admin: ApiClient) -> None:
    _seed(admin)
    r = admin.post(f"{API}/rules/container", json={
        "name": "api-not-db", "src": "api", "dst": "db", "ports": [5432],
        "effect": "prevent", "staged": True})
    assert r.status_code == 201 and r.json()["staged"] is True
    assert admin.get(f"{API}/policy").json()["containerRules"][0]["staged"] is True
    before = _revision(admin)
    r = admin.post(f"{API}/rules/container/1/promote")
    assert r.status_code == 200, r.text
    assert r.json()["staged"] is False and r.json()["effect"] == "prevent"
    assert _revision(admin) == before + 1
    change = admin.get(f"{API}/changes?limit=1").json()["items"][0]
    assert (change["action"], change["resource"]) == ("rule.promote", "rules/container/1")
    assert change["before"]["staged"] is True and change["after"]["staged"] is False
    # promoting again, or a rule that is not there: refused, nothing changes
    again = admin.post(f"{API}/rules/container/1/promote")
    assert again.status_code == 409 and "is not staged" in again.json()["detail"]
    assert admin.post(f"{API}/rules/container/9/promote").status_code == 404
    assert _revision(admin) == before + 1
    # an auditor cannot promote
    assert console.as_role(Role.AUDITOR).post(
        f"{API}/rules/container/1/promote").status_code == 403


def test_the_staged_default_effect_is_a_setting_promoted_in_one_change(
        console: Console, admin: ApiClient) -> None:
    settings = admin.get(f"{API}/settings").json()
    assert settings["stagedDefaultEffect"] is None
    r = admin.put(f"{API}/settings", json={**settings, "stagedDefaultEffect": "prevent"})
    assert r.status_code == 200 and r.json()["stagedDefaultEffect"] == "prevent"
    assert admin.get(f"{API}/policy").json()["stagedDefaultEffect"] == "prevent"
    bad = admin.put(f"{API}/settings", json={**settings, "stagedDefaultEffect": "block"})
    assert bad.status_code == 422 and "stagedDefaultEffect" in bad.text
    before = _revision(admin)
    r = admin.post(f"{API}/settings/promote")
    assert r.status_code == 200, r.text
    assert (r.json()["defaultEffect"], r.json()["stagedDefaultEffect"]) == ("prevent", None)
    assert _revision(admin) == before + 1
    none = admin.post(f"{API}/settings/promote")
    assert none.status_code == 409 and "no default effect is staged" in none.json()["detail"]
    assert _revision(admin) == before + 1


def test_export_and_import_carry_staging_in_both_formats(console: Console,
                                                         admin: ApiClient) -> None:
    _seed(admin)
    admin.post(f"{API}/rules/container", json={
        "name": "api-not-db", "src": "api", "dst": "db", "effect": "prevent", "staged": True})
    settings = admin.get(f"{API}/settings").json()
    admin.put(f"{API}/settings", json={**settings, "stagedDefaultEffect": "alert"})
    native = admin.get(f"{API}/policy/export").json()
    assert native["spec"]["stagedDefaultEffect"] == "alert"
    assert native["spec"]["containerRules"][0]["staged"] is True
    original = admin.get(f"{API}/policy/export?format=prisma")
    doc = original.json()
    # the original product must not enforce a staged rule: written disabled
    assert doc["containerRules"][0]["disabled"] is True and doc["containerRules"][0]["staged"]
    assert doc["stagedDefaultEffect"] == "alert"
    assert int(original.headers["X-Cnnf-Unmapped"]) == 2
    # wipe staging, then import each document: staging comes back
    for body, fmt in ((native, "native"), (doc, "prisma")):
        admin.put(f"{API}/settings", json={**settings, "stagedDefaultEffect": None})
        admin.post(f"{API}/rules/container/1/promote")
        r = admin.post(f"{API}/policy/import?format={fmt}", content=json.dumps(body),
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["applied"], r.text
        policy = admin.get(f"{API}/policy").json()
        assert policy["stagedDefaultEffect"] == "alert"
        rule = policy["containerRules"][0]
        assert (rule["staged"], rule["disabled"]) == (True, False)


def _flows(admin: ApiClient, **query: Any) -> list[dict[str, Any]]:
    r = admin.get(f"{API}/flows", params=query)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_would_verdicts_reach_flows_audits_and_radar(console: Console, admin: ApiClient) -> None:
    _seed(admin)
    admin.post(f"{API}/rules/container", json={
        "name": "api-db", "src": "api", "dst": "db", "ports": [6379]})
    admin.post(f"{API}/rules/container", json={
        "name": "api-not-db", "src": "api", "dst": "db", "ports": [5432], "effect": "prevent",
        "staged": True})
    _, defender = enroll(console, admin)
    batch = ReportBatch(batch_id="b1", flows=[
        # a staged prevent rule: allowed (no rule in force), would prevent
        flow(5432, 4, effect=Effect.ALLOW, matched=False, rule_id=None, rule_name=None,
             would_effect=Effect.PREVENT, would_rule_id=2, would_rule_name="api-not-db"),
        # enforcement off: observed, a rule in force allows it (no hole)
        flow(6379, 2, effect=Effect.ALLOW, matched=True, rule_id=1, rule_name="api-db",
             mode="observed"),
        # enforcement off, nothing covers it: a hole
        flow(8080, 1, effect=Effect.ALLOW, matched=False, rule_id=None, rule_name=None,
             mode="observed"),
    ], audits=[audit(count=4, effect=Effect.PREVENT, blocked=False, would=True, rule_id=2,
                     message="would block ... (not enforced: staged)")])
    assert post_batch(defender, batch).status_code == 200
    staged = _flows(admin, port=5432)
    assert [(f["verdict"], f["would"], f["wouldRuleId"], f["wouldRuleName"], f["count"],
             f["mode"]) for f in staged] == [("observed", "prevent", 2, "api-not-db", 4,
                                               "enforced")]
    assert [f["port"] for f in _flows(admin, would="any")] == [5432]
    assert sorted(f["port"] for f in _flows(admin, mode="observed")) == [6379, 8080]
    audits = admin.get(f"{API}/audits?would=true").json()
    assert audits["total"] == 1 and audits["items"][0]["would"] is True
    assert audits["items"][0]["blocked"] is False
    assert admin.get(f"{API}/audits?would=false").json()["total"] == 0
    assert admin.get(f"{API}/audits?blocked=true").json()["total"] == 0  # nothing was blocked
    rows = list(csv.DictReader(io.StringIO(admin.get(f"{API}/audits/csv").text)))
    assert [(r["Block"], r["Would"]) for r in rows] == [("false", "true")]

    graph = admin.get(f"{API}/radar").json()
    [edge] = [e for e in graph["edges"] if e["source"] == "image:shop/api"
              and e["target"] == "image:shop/db"]
    ports = {p["port"]: p for p in edge["ports"] if p["observed"]}
    assert (ports["5432"]["verdict"], ports["5432"]["would"], ports["5432"]["wouldRuleId"]) == (
        "observed", "blocked", 2)
    assert (ports["6379"]["verdict"], ports["6379"]["enforced"], ports["6379"]["unenforced"]) == (
        "allowed", False, 2)
    assert ports["8080"]["verdict"] == "observed" and ports["8080"]["would"] is None
    assert "5432 would prevent" in edge["label"]
    assert edge["hole"] is True  # 8080: no rule, in force or staged
    assert graph["rules"]["2"]["staged"] is True


def test_a_port_a_staged_or_unenforced_rule_covers_is_no_hole(console: Console,
                                                              admin: ApiClient) -> None:
    _seed(admin)
    admin.post(f"{API}/rules/container", json={
        "name": "api-not-db", "src": "api", "dst": "db", "ports": [5432], "effect": "prevent"})
    _, defender = enroll(console, admin)
    # enforcement off: rule 1 would prevent; what happened is: allowed, no rule
    batch = ReportBatch(batch_id="b2", flows=[flow(
        5432, 3, effect=Effect.ALLOW, matched=False, rule_id=None, rule_name=None,
        mode="observed", would_effect=Effect.PREVENT, would_rule_id=1,
        would_rule_name="api-not-db")])
    assert post_batch(defender, batch).status_code == 200
    graph = admin.get(f"{API}/radar").json()
    [edge] = [e for e in graph["edges"]
              if e["source"] == "image:shop/api" and e["target"] == "image:shop/db"]
    # Enforcement off: Radar says what happened (seen, nothing enforced) and what
    # the policy would do (rule 1 would prevent), never "blocked"; what the flows
    # recorded is the port's history: allowed, no rule, would prevent by rule 1
    assert graph["enforced"] is False
    assert edge["label"] == "5432 seen, would prevent"
    assert edge["hole"] is False  # no "Create rule": rule 1 covers it
    [port] = edge["ports"]
    assert (port["verdict"], port["ruleId"], port["would"], port["enforced"],
            port["unenforced"]) == ("blocked", 1, None, False, 3)
    assert [(h["verdict"], h["ruleId"], h["would"], h["wouldRuleId"], h["unenforced"])
            for h in port["history"]] == [("observed", None, "blocked", 1, 3)]
    assert edge["rules"] == [1]


def test_flows_with_and_without_a_would_verdict_aggregate_apart(console: Console,
                                                                admin: ApiClient) -> None:
    _, defender = enroll(console, admin)
    plain = flow(5432, 2, effect=Effect.ALLOW, matched=False, rule_id=None, rule_name=None)
    would = plain.model_copy(update={"would_effect": Effect.PREVENT, "would_rule_id": 3,
                                     "would_rule_name": "x"})
    for i in range(2):
        assert post_batch(defender, ReportBatch(batch_id=f"c{i}", flows=[plain, would])
                          ).status_code == 200
    rows = sorted((f["would"], f["count"]) for f in _flows(admin))
    assert rows == [("", 4), ("prevent", 4)]


def test_an_update_that_leaves_staged_out_keeps_the_rule_staged(admin: ApiClient) -> None:
    """A client written before staging existed sends a rule without ``staged``:
    the rule stays staged (never put in force by accident); ``staged: false``
    sent on purpose does put it in force."""
    _seed(admin)
    body = {"name": "api-not-db", "src": "api", "dst": "db", "ports": [5432],
            "effect": "prevent"}
    assert admin.post(f"{API}/rules/container", json={**body, "staged": True}).status_code == 201
    r = admin.put(f"{API}/rules/container/1", json={**body, "notes": "edited"})
    assert r.status_code == 200, r.text
    assert (r.json()["staged"], r.json()["notes"]) == (True, "edited")
    assert admin.get(f"{API}/policy").json()["containerRules"][0]["staged"] is True
    r = admin.put(f"{API}/rules/container/1", json={**body, "staged": False})
    assert r.status_code == 200 and r.json()["staged"] is False
    assert admin.get(f"{API}/policy").json()["containerRules"][0]["staged"] is False


def test_settings_put_without_the_staged_default_keeps_it(admin: ApiClient) -> None:
    switches = {"containerEnabled": True, "hostEnabled": False, "defaultEffect": "allow",
                "blockMode": "reset"}
    r = admin.put(f"{API}/settings", json={**switches, "stagedDefaultEffect": "prevent"})
    assert r.status_code == 200, r.text
    r = admin.put(f"{API}/settings", json={**switches, "blockMode": "drop"})
    assert r.status_code == 200, r.text
    assert (r.json()["blockMode"], r.json()["stagedDefaultEffect"]) == ("drop", "prevent")
    assert admin.get(f"{API}/policy").json()["stagedDefaultEffect"] == "prevent"
    r = admin.put(f"{API}/settings", json={**switches, "stagedDefaultEffect": None})
    assert r.status_code == 200 and r.json().get("stagedDefaultEffect") is None
    assert admin.get(f"{API}/policy").json().get("stagedDefaultEffect") is None


def test_the_prisma_compatible_get_and_put_round_trip_keeps_staging(admin: ApiClient) -> None:
    """Scripts written for the original read the policy, change it and put it
    back: a staged rule and the staged default survive that round trip."""
    _seed(admin)
    assert admin.post(f"{API}/rules/container", json={
        "name": "api-not-db", "src": "api", "dst": "db", "ports": [5432], "effect": "prevent",
        "staged": True}).status_code == 201
    settings = admin.get(f"{API}/settings").json()
    assert admin.put(f"{API}/settings", json={
        **settings, "stagedDefaultEffect": "prevent"}).status_code == 200
    doc = admin.get(f"{API}/policies/firewall/network").json()
    rule = doc["containerRules"][0]
    assert (rule["disabled"], rule["staged"]) == (True, True)  # the original never enforces it
    assert doc["stagedDefaultEffect"] == "prevent"
    r = admin.put(f"{API}/policies/firewall/network", json=doc)
    assert r.status_code == 200, r.text
    policy = admin.get(f"{API}/policy").json()
    stored = policy["containerRules"][0]
    assert (stored["staged"], stored["disabled"], stored["effect"]) == (True, False, "prevent")
    assert policy["stagedDefaultEffect"] == "prevent"


def test_promote_with_an_expected_revision_is_refused_once_the_policy_moved_on(
        admin: ApiClient) -> None:
    """Promoting what was reviewed at revision N: refused (409, nothing changed)
    when the policy is at another revision; a bad revision is refused (422)."""
    _seed(admin)
    assert admin.post(f"{API}/rules/container", json={
        "name": "api-not-db", "src": "api", "dst": "db", "ports": [5432],
        "effect": "prevent", "staged": True}).status_code == 201
    settings = admin.get(f"{API}/settings").json()
    assert admin.put(f"{API}/settings", json={**settings, "stagedDefaultEffect": "prevent"}
                     ).status_code == 200
    seen = _revision(admin)
    for path in ("/rules/container/1/promote", "/settings/promote"):
        stale = admin.post(f"{API}{path}", params={"expectedRevision": seen - 1})
        assert stale.status_code == 409, stale.text
        assert stale.json() == {"detail": f"the policy is at revision {seen}, not {seen - 1}: it "
                                          "changed meanwhile (review it and try again)"}
        ahead = admin.post(f"{API}{path}", params={"expectedRevision": seen + 97})
        assert ahead.status_code == 409, ahead.text
        assert ahead.json() == {"detail": f"revision {seen + 97} does not exist (the policy is "
                                          f"at {seen})"}
        for bad in ("-1", "x", str(2**63)):
            r = admin.post(f"{API}{path}", params={"expectedRevision": bad})
            assert r.status_code == 422 and r.json()["errors"][0]["path"] == (
                "expectedRevision"), r.text
    assert _revision(admin) == seen
    assert admin.get(f"{API}/rules/container/1").json()["staged"] is True
    r = admin.post(f"{API}/rules/container/1/promote", params={"expectedRevision": seen})
    assert r.status_code == 200 and r.json()["staged"] is False
    r = admin.post(f"{API}/settings/promote", params={"expectedRevision": seen + 1})
    assert r.status_code == 200 and r.json()["defaultEffect"] == "prevent"
    assert _revision(admin) == seen + 2
