"""Object names with ``/`` (``shop/api``, ``bad name/with spaces``): created through
the API, a native import or an original-format import, each is then read, edited,
renamed and deleted at ``/objects/{percent-encoded name}``. The only names refused
are "." and "..", which URL parsers read as path steps; refused the same way by
every path in."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from consoletest import ApiClient, Console

API = "/api/v1"
SLASHED = ["shop/api", "bad name/with spaces", "a/../b", "/leading", "trailing/", "100%/x?y#z"]


def _url(name: str) -> str:
    return f"{API}/objects/{quote(name, safe='')}"


def _container(name: str, image: str = "shop/api*") -> dict[str, Any]:
    return {"name": name, "kind": "container", "selector": {"images": [image]}}


def _import(admin: ApiClient, doc: dict[str, Any], **params: str) -> Any:
    return admin.post(f"{API}/policy/import", content=json.dumps(doc).encode(),
                      headers={"Content-Type": "application/json"}, params=params)


def _names(admin: ApiClient) -> list[str]:
    return [o["name"] for o in admin.get(f"{API}/objects").json()]


def _edit_rename_delete(admin: ApiClient, name: str) -> None:
    """Read, edit (used by a rule), rename, and delete an object reached by its name."""
    got = admin.get(_url(name))
    assert got.status_code == 200, (name, got.text)
    assert got.json()["name"] == name
    changed = admin.put(_url(name), json=_container(name, "shop/api:2*"))
    assert changed.status_code == 200, (name, changed.text)
    assert admin.get(_url(name)).json()["selector"]["images"] == ["shop/api:2*"]
    rule = admin.post(f"{API}/rules/container",
                      json={"name": "r", "src": name, "dst": name, "ports": [80]})
    assert rule.status_code == 201, rule.text
    # In use: refused with 409 naming the rule; nothing changes.
    in_use = admin.delete(_url(name))
    assert in_use.status_code == 409 and "r" in in_use.json()["detail"]
    renamed = admin.put(_url(name), json=_container(f"{name}/v2"))
    assert renamed.status_code == 200, renamed.text
    assert admin.get(f"{API}/rules/container").json()[0]["src"] == f"{name}/v2"
    assert admin.get(_url(name)).status_code == 404
    rule_id = admin.get(f"{API}/rules/container").json()[0]["id"]
    assert admin.delete(f"{API}/rules/container/{rule_id}").status_code == 204
    assert admin.delete(_url(f"{name}/v2")).status_code == 204
    assert admin.get(_url(f"{name}/v2")).status_code == 404
    assert _names(admin) == []


@pytest.mark.parametrize("name", SLASHED)
def test_a_name_with_a_slash_is_created_edited_renamed_and_deleted(
        console: Console, admin: ApiClient, name: str) -> None:
    created = admin.post(f"{API}/objects", json=_container(name))
    assert created.status_code == 201, created.text
    assert _names(admin) == [name]
    _edit_rename_delete(admin, name)


def test_a_slash_does_not_reach_another_object(console: Console, admin: ApiClient) -> None:
    """``shop/api`` and ``shop`` are two objects; deleting one leaves the other."""
    for name in ("shop", "shop/api"):
        assert admin.post(f"{API}/objects", json=_container(name)).status_code == 201
    assert admin.delete(_url("shop/api")).status_code == 204
    assert _names(admin) == ["shop"]
    assert admin.get(_url("shop/api")).status_code == 404


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_segments_are_refused_with_a_clear_error(console: Console, admin: ApiClient,
                                                     name: str) -> None:
    before = admin.get(f"{API}/policy").json()["revision"]
    r = admin.post(f"{API}/objects", json=_container(name))
    assert r.status_code == 422
    assert r.json()["errors"] == [
        {"path": "name", "message": f"{name!r} cannot be a name (it reads as a path step in URLs)"}]
    assert _names(admin) == [] and admin.get(f"{API}/policy").json()["revision"] == before


def test_the_openapi_document_states_the_name_rule(console: Console) -> None:
    schema = console.client().get(f"{API}/openapi.json").json()
    name = schema["components"]["schemas"]["ContainerObject"]["properties"]["name"]
    assert name["not"] == {"enum": [".", ".."]}
    path = schema["paths"][f"{API}/objects/{{name}}"]
    assert {"get", "put", "delete"} <= set(path)


def test_native_import_keeps_slashed_names_and_refuses_dot_segments(
        console: Console, admin: ApiClient) -> None:
    doc: dict[str, Any] = {"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {
        "objects": [_container("shop/api")], "containerRules": [], "hostRules": []}}
    r = _import(admin, doc)
    assert r.status_code == 200 and r.json()["applied"] is True, r.text
    assert _names(admin) == ["shop/api"]
    # The import's own objects are removed before the next case.
    assert admin.delete(_url("shop/api")).status_code == 204
    _import(admin, doc)
    _edit_rename_delete(admin, "shop/api")

    bad = {**doc, "spec": {**doc["spec"], "objects": [_container("..")]}}
    message = "'..' cannot be a name (it reads as a path step in URLs)"
    for params in ({"dry_run": "true"}, {}):
        refused = _import(admin, bad, **params)
        assert refused.status_code == 422, params
        assert refused.json()["errors"] == [{"path": "objects[0].name", "message": message}]
        assert _names(admin) == []


def test_original_format_import_keeps_slashed_entity_names(console: Console,
                                                          admin: ApiClient) -> None:
    doc = {"_id": "networkFirewall", "containerEnabled": False, "hostEnabled": False,
           "containerRules": [], "hostRules": [],
           "networkEntities": [{"_id": 1, "name": "shop/api", "type": "container",
                                "collections": [{"name": "shop/api", "images": ["shop/api*"]}]}]}
    r = _import(admin, doc)
    assert r.status_code == 200 and r.json()["format"] == "prisma", r.text
    assert _names(admin) == ["shop/api"]
    _edit_rename_delete(admin, "shop/api")

    doc["networkEntities"][0]["name"] = "."  # type: ignore[index]
    refused = _import(admin, doc, format="prisma")
    assert refused.status_code == 422
    assert "'.' cannot be a name" in refused.json()["detail"]
    assert _names(admin) == []
