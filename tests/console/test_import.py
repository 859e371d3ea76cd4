"""Export and import: round trips, dry runs with a diff, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

from consoletest import ApiClient, Console
from sqlalchemy import text

API = "/api/v1"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _import(admin: ApiClient, body: bytes, fmt: str = "native", dry_run: bool = False,
            content_type: str = "application/json") -> dict[str, object]:
    r = admin.post(f"{API}/policy/import", params={"format": fmt, "dry_run": dry_run},
                   content=body, headers={"Content-Type": content_type})
    return {"status": r.status_code, **r.json()}


def test_native_yaml_import_then_export_round_trips(console: Console, admin: ApiClient) -> None:
    doc = (EXAMPLES / "shop-policy.yaml").read_bytes()
    preview = _import(admin, doc, dry_run=True, content_type="application/yaml")
    assert preview["status"] == 200 and preview["valid"] is True and preview["applied"] is False
    diff = preview["diff"]
    assert isinstance(diff, dict)
    assert "frontend" in diff["objects"]["added"] and diff["containerRules"]["added"]
    assert diff["settings"]["containerEnabled"] == {"before": False, "after": True}
    assert admin.get(f"{API}/policy").json()["revision"] == 0  # a dry run changes nothing

    applied = _import(admin, doc, content_type="application/yaml")
    assert applied["status"] == 200 and applied["applied"] is True and applied["revision"] == 1
    exported = admin.get(f"{API}/policy/export").text
    again = _import(admin, exported.encode(), dry_run=True)
    assert again["valid"] is True
    diff = again["diff"]
    assert isinstance(diff, dict)
    assert diff["settings"] == {}
    assert not any(diff["objects"].values())
    assert not any(diff["containerRules"].values()) and not any(diff["hostRules"].values())
    # importing the export changes nothing but the revision; the export is stable
    _import(admin, exported.encode())
    assert '"revision": 1' in exported
    assert admin.get(f"{API}/policy/export").text == exported.replace(
        '"revision": 1', '"revision": 2')
    history = admin.get(f"{API}/changes").json()["items"]
    assert [c["action"] for c in history] == ["policy.import.native", "policy.import.native"]


def test_original_format_import_and_export(console: Console, admin: ApiClient) -> None:
    doc = (EXAMPLES / "prisma-export.json").read_bytes()
    result = _import(admin, doc, fmt="prisma")
    assert result["status"] == 200 and result["applied"] is True, result
    policy = admin.get(f"{API}/policy").json()
    assert "frontend-to-api" in [r["name"] for r in policy["containerRules"]]
    r = admin.get(f"{API}/policy/export", params={"format": "prisma"})
    assert r.status_code == 200
    exported = r.json()
    assert exported["_id"] == "networkFirewall"
    assert [x["name"] for x in exported["containerRules"]] == [
        x["name"] for x in policy["containerRules"]]


def test_the_original_format_is_recognised_and_imported(console: Console,
                                                       admin: ApiClient) -> None:
    """Without format=prisma, a document in the original format is read as such, not
    refused; a generated one (ids from 0, no names) imports with each change reported."""
    doc = {"_id": "networkFirewall", "containerEnabled": True, "hostEnabled": False,
           "containerRules": [
               {"id": i, "src": 0, "dst": 1, "effect": "alert",
                "ports": [{"start": port, "end": port, "deny": False}]}
               for i, port in enumerate((8080, 5432))],
           "hostRules": [],
           "networkEntities": [
               {"_id": 0, "name": "web", "type": "container",
                "collections": [{"name": "web-coll", "description": "the web tier",
                                 "images": ["shop/web:*"]}]},
               {"_id": 1, "name": "db", "type": "container",
                "collections": [{"name": "db", "images": ["shop/db:*"]}]}]}
    preview = _import(admin, json.dumps(doc).encode(), dry_run=True)
    assert preview["status"] == 200 and preview["valid"] is True, preview
    assert preview["format"] == "prisma" and preview["applied"] is False
    applied = _import(admin, json.dumps(doc).encode())
    assert applied["status"] == 200 and applied["applied"] is True, applied
    assert applied["unmapped"] == [
        "networkEntities[0].collections[0]: collection name and description kept in the "
        "object's description (collection 'web-coll': the web tier)",
        "containerRules[0].id: 0 renumbered to 1 (ids start at 1)",
        "containerRules[1].id: 1 renumbered to 2 (ids start at 1)",
        "containerRules[0].name: missing; named 'rule-1'",
        "containerRules[1].name: missing; named 'rule-2'",
    ]
    policy = admin.get(f"{API}/policy").json()
    assert [(r["id"], r["name"]) for r in policy["containerRules"]] == [
        (1, "rule-1"), (2, "rule-2")]
    web = next(o for o in policy["objects"] if o["name"] == "web")
    assert web["description"] == "collection 'web-coll': the web tier"
    history = admin.get(f"{API}/changes").json()["items"]
    assert history[0]["action"] == "policy.import.prisma"
    # a native document is still read as native
    native = _import(admin, (EXAMPLES / "shop-policy.yaml").read_bytes(), dry_run=True,
                     content_type="application/yaml")
    assert native["format"] == "native" and native["valid"] is True


def test_invalid_import_changes_nothing(console: Console, admin: ApiClient) -> None:
    _import(admin, (EXAMPLES / "shop-policy.yaml").read_bytes(), content_type="application/yaml")
    before = admin.get(f"{API}/policy/export").text
    doc = json.loads(before)
    doc["spec"]["containerRules"][1]["dst"] = "ghost"
    doc["spec"]["containerRules"][2]["ports"] = [70000]
    bad = json.dumps(doc).encode()

    # A dry run refuses the document as the import would: 422, every problem named.
    preview = _import(admin, bad, dry_run=True)
    assert preview["status"] == 422, preview
    assert {"containerRules[1].dst", "containerRules[2].ports[0]"} <= {
        e["path"] for e in preview["errors"]}, preview

    refused = _import(admin, bad)
    assert refused["status"] == 422
    detail = str(refused["detail"])
    assert "containerRules[2].ports[0]" in detail
    assert admin.get(f"{API}/policy/export").text == before

    for junk in (b"{not json", b"[]", b'{"apiVersion": "cnnf/v9", "kind": "Policy"}'):
        r = _import(admin, junk)
        assert r["status"] == 422 and r["errors"], r
    assert admin.get(f"{API}/policy/export").text == before


def _inject_failure(console: Console) -> None:
    """A trigger that makes the database refuse one rule: a failure in the middle
    of applying an import, after objects were already written. Both stores
    raise it as a constraint violation (SQLite's RAISE(ABORT) is one), which
    the Console answers with 409."""
    with console.engine.begin() as c:
        if console.engine.dialect.name == "sqlite":
            c.execute(text(
                "CREATE TRIGGER boom BEFORE INSERT ON rules WHEN NEW.name = 'boom' "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"))
        else:
            c.execute(text(
                "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN "
                "IF NEW.name = 'boom' THEN RAISE EXCEPTION 'injected failure' "
                "USING ERRCODE = 'integrity_constraint_violation'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"))
            c.execute(text("CREATE TRIGGER boom BEFORE INSERT ON rules "
                           "FOR EACH ROW EXECUTE FUNCTION boom()"))


def test_failure_midway_through_an_import_rolls_back_whole(console: Console,
                                                            admin: ApiClient) -> None:
    _import(admin, (EXAMPLES / "shop-policy.yaml").read_bytes(), content_type="application/yaml")
    before = admin.get(f"{API}/policy/export").text
    changes = admin.get(f"{API}/changes").json()["total"]
    _inject_failure(console)
    doc = json.loads(before)
    spec = doc["spec"]
    spec["containerEnabled"] = False
    spec["objects"] = [o for o in spec["objects"] if o["name"] != "cache"] + [
        {"kind": "subnet", "name": "lab", "cidrs": ["10.99.0.0/16"]}]
    spec["containerRules"] = [r for r in spec["containerRules"]
                              if "cache" not in (r["src"], r["dst"])]
    spec["containerRules"].insert(0, {**spec["containerRules"][0], "id": 900, "name": "boom"})
    r = admin.post(f"{API}/policy/import", content=json.dumps(doc).encode())
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == ("the change conflicts with the stored state; "
                                  "nothing was changed")
    assert admin.get(f"{API}/policy/export").text == before
    assert admin.get(f"{API}/changes").json()["total"] == changes
    # the same import without the poisoned rule goes through
    spec["containerRules"].pop(0)
    r = admin.post(f"{API}/policy/import", content=json.dumps(doc).encode())
    assert r.status_code == 200, r.text
    names = [o["name"] for o in admin.get(f"{API}/objects").json()]
    assert "lab" in names and "cache" not in names
