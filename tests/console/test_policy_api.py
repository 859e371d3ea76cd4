"""Network objects, ordered rules, settings and the whole policy through the API."""

from __future__ import annotations

from typing import Any

import pytest
from consoletest import ApiClient, Console

API = "/api/v1"
WEB = {"name": "web", "kind": "container", "selector": {"images": ["shop/web*"]}}
DB = {"name": "db", "kind": "container", "selector": {"images": ["shop/db"]}}
NET = {"name": "internet", "kind": "subnet", "cidrs": ["0.0.0.0/0"]}
NODES = {"name": "nodes", "kind": "host", "selector": {"hosts": ["node-*"]}}


def _seed(admin: ApiClient) -> None:
    for obj in (WEB, DB, NET, NODES):
        r = admin.post(f"{API}/objects", json=obj)
        assert r.status_code == 201, r.text


def _rule(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "src": "web", "dst": "db", "ports": [5432], **extra}


def _names(admin: ApiClient, kind: str = "container") -> list[str]:
    return [r["name"] for r in admin.get(f"{API}/rules/{kind}").json()]


def _revision(admin: ApiClient) -> int:
    revision: int = admin.get(f"{API}/policy").json()["revision"]
    return revision


def test_object_crud(console: Console, admin: ApiClient) -> None:
    _seed(admin)
    assert [o["name"] for o in admin.get(f"{API}/objects").json()] == [
        "db", "internet", "nodes", "web"]
    assert admin.get(f"{API}/objects/web").json()["selector"]["images"] == ["shop/web*"]
    assert admin.post(f"{API}/objects", json=WEB).status_code == 409
    changed = {**NET, "cidrs": ["10.0.0.0/8", "fd00::/8"]}
    r = admin.put(f"{API}/objects/internet", json=changed)
    assert r.status_code == 200 and r.json()["cidrs"] == ["10.0.0.0/8", "fd00::/8"]
    assert admin.delete(f"{API}/objects/internet").status_code == 204
    assert admin.get(f"{API}/objects/internet").status_code == 404
    assert admin.delete(f"{API}/objects/internet").status_code == 404


def test_rules_keep_order_insert_and_move(console: Console, admin: ApiClient) -> None:
    _seed(admin)
    for name in ("a", "b", "c"):
        assert admin.post(f"{API}/rules/container", json=_rule(name)).status_code == 201
    r = admin.post(f"{API}/rules/container?position=1", json=_rule("x", effect="prevent"))
    assert r.status_code == 201
    assert r.json()["position"] == 1 and r.json()["id"] == 4 and r.json()["owner"] == "admin-user"
    assert _names(admin) == ["a", "x", "b", "c"]
    assert admin.post(f"{API}/rules/container?position=0", json=_rule("first")).status_code == 201
    assert _names(admin) == ["first", "a", "x", "b", "c"]
    # move "c" (id 3) to the top, then "first" (id 5) to the bottom
    r = admin.post(f"{API}/rules/container/3/move", json={"position": 0})
    assert [x["name"] for x in r.json()] == ["c", "first", "a", "x", "b"]
    admin.post(f"{API}/rules/container/5/move", json={"position": 4})
    assert _names(admin) == ["c", "a", "x", "b", "first"]
    assert [r["position"] for r in admin.get(f"{API}/rules/container").json()] == [0, 1, 2, 3, 4]
    # update keeps the place; delete closes the gap
    r = admin.put(f"{API}/rules/container/4", json=_rule("x2", ports=["8000-8080", 443]))
    assert r.status_code == 200 and r.json()["position"] == 2 and r.json()["ports"] == [
        "8000-8080", 443]
    assert admin.delete(f"{API}/rules/container/1").status_code == 204
    assert _names(admin) == ["c", "x2", "b", "first"]
    assert admin.get(f"{API}/rules/container/1").status_code == 404
    # host rules are a separate list with their own ids
    r = admin.post(f"{API}/rules/host", json={"name": "ssh", "src": "nodes", "dst": "nodes",
                                              "ports": [22]})
    assert r.status_code == 201 and r.json()["id"] == 1
    assert _names(admin, "host") == ["ssh"]
    assert _names(admin) == ["c", "x2", "b", "first"]


def test_every_change_bumps_the_revision_and_is_recorded(console: Console,
                                                          admin: ApiClient) -> None:
    assert _revision(admin) == 0
    _seed(admin)
    admin.post(f"{API}/rules/container", json=_rule("a"))
    settings = {"containerEnabled": True, "hostEnabled": False, "defaultEffect": "prevent",
                "blockMode": "drop"}
    stored = {**settings, "stagedDefaultEffect": None}  # nothing staged
    assert admin.put(f"{API}/settings", json=settings).json() == stored
    assert admin.get(f"{API}/settings").json() == stored
    assert _revision(admin) == 6
    page = admin.get(f"{API}/changes?limit=2").json()
    assert page["total"] == 6
    last = page["items"][0]
    assert last["action"] == "settings.update" and last["actor"] == "admin-user"
    assert last["revision"] == 6 and last["at"].startswith("2026-01-02T03:04:05")
    assert last["before"]["defaultEffect"] == "allow" and last["after"]["defaultEffect"] == (
        "prevent")
    assert page["items"][1]["action"] == "rule.create"
    assert page["items"][1]["after"]["name"] == "a"


def test_deleting_an_object_in_use_names_the_rules(console: Console, admin: ApiClient) -> None:
    _seed(admin)
    admin.post(f"{API}/rules/container", json=_rule("web-to-db"))
    admin.post(f"{API}/rules/container", json=_rule("out", dst="internet"))
    before = admin.get(f"{API}/policy").json()
    r = admin.delete(f"{API}/objects/web")
    assert r.status_code == 409
    assert "container rule 1 (web-to-db)" in r.json()["detail"]
    assert "container rule 2 (out)" in r.json()["detail"]
    assert admin.get(f"{API}/policy").json() == before


def test_renaming_an_object_carries_into_rules(console: Console, admin: ApiClient) -> None:
    _seed(admin)
    admin.post(f"{API}/rules/container", json=_rule("web-to-db"))
    r = admin.put(f"{API}/objects/web", json={**WEB, "name": "frontend"})
    assert r.status_code == 200
    rule = admin.get(f"{API}/rules/container/1").json()
    assert rule["src"] == "frontend"
    assert admin.get(f"{API}/objects/web").status_code == 404


INVALID: list[tuple[str, str, dict[str, Any], str, str]] = [
        ("post", "/objects", {"name": "s", "kind": "subnet", "cidrs": ["10.0.0.0/33"]},
         "cidrs", "not an IPv4 or IPv6 CIDR"),
        ("post", "/objects", {"name": "d", "kind": "dns", "domains": ["bad domain"]},
         "domains", "not a domain name"),
        ("post", "/objects", {"name": "c", "kind": "container", "selector": {}},
         "selector", "empty selector"),
        ("post", "/objects", {"name": "c", "kind": "printer"}, "kind", ""),
        ("post", "/objects", {"kind": "subnet", "cidrs": ["10.0.0.0/8"]}, "name", "required"),
        ("post", "/rules/container", _rule("r", ports=[70000]), "ports[0]", "65535"),
        ("post", "/rules/container", _rule("r", ports=["90-80"]), "ports[0]", "above end"),
        ("post", "/rules/container", _rule("r", effect="maybe"), "effect", "allow"),
        ("post", "/rules/container?position=-1", _rule("r"), "position", ""),
        ("post", "/rules/container", {**_rule("r"), "colour": "red"}, "colour", "unknown field"),
        ("post", "/rules/firewall", _rule("r"), "kind", "container"),
        ("put", "/settings", {"containerEnabled": True, "hostEnabled": False,
                              "defaultEffect": "deny", "blockMode": "drop"},
         "defaultEffect", "allow"),
        ("put", "/settings", {"containerEnabled": True}, "hostEnabled", "required"),
        ("put", "/policy", {"objects": [{"name": "x", "kind": "subnet", "cidrs": ["nope"]}]},
         "objects[0].cidrs", "CIDR"),
        ("put", "/policy", {"containerRules": [_rule("r", dst="ghost", id=1)], "objects": [WEB]},
         "containerRules[0].dst", "ghost"),
        ("put", "/policy", {"containerRules": [_rule("r", id=2**31)], "objects": [WEB, DB]},
         "containerRules[0].id", "above 2147483647"),
        ("post", "/rules/container/99999999999/move", {"position": 0}, "rule_id", "less than"),
        ("get", "/changes?offset=99999999999999999999", None, "offset", "less than"),
]


# Well-formed changes to one rule that clash with the stored policy: 409, not 422
# (the same body is accepted once the objects exist, or the list is long enough).
STATE_CONFLICTS: list[tuple[str, str, dict[str, Any], str, str]] = [
        ("post", "/rules/container", _rule("r", dst="nowhere"), "dst", "no object named"),
        ("post", "/rules/container", _rule("r", src="internet"), "src", "a container object"),
        ("post", "/rules/host", _rule("r"), "src", "must be a host object"),
        ("post", "/rules/container?position=9", _rule("r"), "position", "outside"),
]


@pytest.mark.parametrize(("cases", "status"), [(INVALID, 422), (STATE_CONFLICTS, 409)],
                         ids=["invalid", "conflict"])
def test_invalid_requests_name_the_field_and_change_nothing(
        console: Console, admin: ApiClient, cases: list[tuple[str, str, Any, str, str]],
        status: int) -> None:
    # One store for the whole table: setting a Console up costs more than a request.
    _seed(admin)
    before = admin.get(f"{API}/policy").json()
    for method, url, body, field, text in cases:
        r = admin.request(method.upper(), f"{API}{url}", json=body)
        case = f"{method} {url} {body}"
        assert r.status_code == status, (case, r.text)
        paths = [e["path"] for e in r.json()["errors"]]
        assert any(p == field or p.startswith((f"{field}.", f"{field}[")) for p in paths), (
            case, r.json())
        assert text in r.json()["detail"], case
        assert field in r.json()["detail"], case
        assert admin.get(f"{API}/policy").json() == before, case
