"""The API's contract, for every route (cnnf.console.api.contract): unknown query
parameters are refused naming them, the caller is authenticated before its input
is judged, and the OpenAPI document names every error status with the one error
body the Console sends."""

from __future__ import annotations

import pytest
from consoletest import Console

from cnnf.console.security import Role
from cnnf.model.objects import (
    CIDR_PATTERN,
    DOMAIN_PATTERN,
    GLOB_PATTERN,
    LABEL_GLOB_PATTERN,
)

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _operations(console: Console) -> list[tuple[str, str, dict]]:
    spec = console.app.openapi()
    return [(method.upper(), path, op) for path, item in spec["paths"].items()
            for method, op in item.items()]


def test_a_misspelt_filter_is_refused_not_ignored(console: Console) -> None:
    admin = console.as_role(Role.ADMIN)
    r = admin.get("/api/v1/audits", params={"srcImageName": "shop/api", "blocked": "true"})
    assert r.status_code == 400
    body = r.json()
    assert body["errors"] == [{"path": "query.srcImageName", "message": body["errors"][0][
        "message"]}]
    assert "srcImageName" in body["detail"]
    assert "src_image" in body["detail"]  # names what the operation accepts
    assert admin.get("/api/v1/audits", params={"src_image": "shop/api"}).status_code == 200


def test_every_operation_refuses_unknown_query_parameters(console: Console) -> None:
    """Also routes added later: the refusal is an app-level dependency."""
    admin = console.as_role(Role.ADMIN)
    checked = 0
    for method, path, _ in _operations(console):
        if method != "GET" or "{" in path or path.startswith("/api/v1/defender/"):
            continue  # (a Defender's credential is refused with 403 before its query)
        r = admin.get(path, params={"no_such_filter": "1"})
        assert r.status_code == 400, f"{method} {path}: {r.status_code} {r.text[:200]}"
        assert r.json()["errors"][0]["path"] == "query.no_such_filter"
        checked += 1
    assert checked >= 10


def test_anonymous_bad_body_gets_401_not_422(console: Console) -> None:
    anonymous = console.client()
    for content in (b"{not json", b"\xff\xfe", b'{"kind": "nonsense"}'):
        r = anonymous.post("/api/v1/objects", content=content,
                           headers={"Content-Type": "application/json"})
        assert r.status_code == 401, (content, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    r = anonymous.get("/api/v1/audits", params={"limit": "0", "bogus": "1"})
    assert r.status_code == 401


def test_a_role_without_the_permission_gets_403_whatever_the_body(console: Console) -> None:
    auditor = console.as_role(Role.AUDITOR)
    r = auditor.post("/api/v1/objects", content=b"{not json",
                     headers={"Content-Type": "application/json"})
    assert r.status_code == 403
    assert "policy" in r.json()["detail"]
    # An operation the role may call judges the input.
    r = auditor.get("/api/v1/audits", params={"limit": "0"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["path"] == "limit"


def test_a_user_token_on_a_defender_endpoint_gets_403_before_the_body(console: Console) -> None:
    admin = console.as_role(Role.ADMIN)
    r = admin.post("/api/v1/defender/reports", content=b"[",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 403


def test_the_document_names_every_error_status_with_the_error_body(console: Console) -> None:
    spec = console.app.openapi()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ErrorBody"]["required"]) == {"detail"}
    for method, path, op in _operations(console):
        responses = op["responses"]
        assert "400" in responses and "500" in responses, f"{method} {path}"
        if op.get("security"):
            assert "401" in responses, f"{method} {path}"
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in responses, f"{method} {path}"
        for status, response in responses.items():
            if status.startswith("4") or status == "500":
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), f"{method} {path} {status}"
    users = spec["paths"]["/api/v1/users"]["post"]["responses"]
    assert set(users) == {"201", "400", "401", "403", "409", "413", "422", "500"}
    me = spec["paths"]["/api/v1/auth/me"]["get"]["responses"]
    assert set(me) == {"200", "400", "401", "500"}  # any signed-in user: never 403


def test_constraints_are_in_the_schema(console: Console) -> None:
    schemas = console.app.openapi()["components"]["schemas"]
    user = schemas["UserCreate"]["properties"]
    assert user["password"]["minLength"] == 8
    assert "pattern" in user["name"]
    for kind in ("ContainerObject", "HostObject", "SubnetObject", "DnsObject"):
        assert "kind" in schemas[kind]["required"], kind
    admin = console.as_role(Role.ADMIN)
    r = admin.post("/api/v1/users", json={"name": "eve", "role": "auditor", "password": "short"})
    assert r.status_code == 422
    assert r.json()["errors"] == [{"path": "password", "message": "must be at least 8 characters"}]
    assert admin.get("/api/v1/users/eve").status_code == 404  # nothing changed


def test_pattern_syntax_and_document_rules_are_in_the_schema(console: Console) -> None:
    spec = console.app.openapi()
    schemas = spec["components"]["schemas"]
    selector = schemas["ContainerSelector"]
    assert {alt["required"][0] for alt in selector["anyOf"]} == set(selector["properties"])
    assert selector["properties"]["images"]["items"]["pattern"] == GLOB_PATTERN
    assert selector["properties"]["labels"]["items"]["pattern"] == LABEL_GLOB_PATTERN
    assert schemas["SubnetObject"]["properties"]["cidrs"]["items"]["pattern"] == CIDR_PATTERN
    assert schemas["DnsObject"]["properties"]["domains"]["items"]["pattern"] == DOMAIN_PATTERN
    rule = schemas["Rule-Input"]["properties"]
    assert rule["ports"]["minItems"] == 1 and rule["id"]["maximum"] == 2**31 - 1
    assert rule["disabled"]["type"] == "boolean"
    body = spec["paths"]["/api/v1/policy/import"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == body["application/yaml"]["schema"]
    assert len(body["application/json"]["schema"]["anyOf"]) == 2
    put = spec["paths"]["/api/v1/policies/firewall/network"]["put"]["requestBody"]
    assert set(put["content"]["application/json"]["schema"]["required"]) == {
        "containerEnabled", "hostEnabled", "containerRules", "hostRules", "networkEntities"}
    trivy = spec["paths"]["/api/v1/overlays/{kind}/trivy"]["post"]["requestBody"]
    assert trivy["content"]["application/json"]["schema"]["required"] == ["ArtifactName"]
    for path, method in (("/api/v1/rules/{kind}", "post"), ("/api/v1/rules/{kind}/{rule_id}",
                                                            "put")):
        assert "409" in spec["paths"][path][method]["responses"], path


def test_the_server_refuses_what_the_schema_refuses(console: Console) -> None:
    admin = console.as_role(Role.ADMIN)
    for body in (
        {"name": "a", "kind": "container", "selector": {"images": ["a b"]}},
        {"name": "a", "kind": "container", "selector": {"labels": ["app"]}},
        {"name": "a", "kind": "dns", "domains": [" example.com"]},
        {"name": "a", "kind": "subnet", "cidrs": ["10.0.0.0/255.0.0.0"]},
    ):
        r = admin.post("/api/v1/objects", json=body)
        assert r.status_code == 422, (body, r.text)
    admin.post("/api/v1/objects", json={"name": "web", "kind": "container",
                                        "selector": {"images": ["web"]}})
    r = admin.post("/api/v1/rules/container", json={"name": "r", "src": "web", "dst": "web",
                                                    "ports": [80], "disabled": 0})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "disabled", r.text
    r = admin.put("/api/v1/policies/firewall/network", json={"containerRules": []})
    assert r.status_code == 422, r.text
    assert {e["path"] for e in r.json()["errors"]} == {
        "containerEnabled", "hostEnabled", "hostRules", "networkEntities"}
    assert admin.get("/api/v1/rules/container").json() == []


def test_a_change_that_clashes_with_the_stored_policy_is_409(console: Console) -> None:
    admin = console.as_role(Role.ADMIN)
    rule = {"name": "r", "src": "web", "dst": "db", "ports": [80]}
    r = admin.post("/api/v1/rules/container", json=rule)
    assert r.status_code == 409, r.text
    assert {e["path"] for e in r.json()["errors"]} == {"src", "dst"}
    for name in ("web", "db"):
        admin.post("/api/v1/objects", json={"name": name, "kind": "container",
                                            "selector": {"images": [name]}})
    assert admin.post("/api/v1/rules/container", json=rule).status_code == 201


def test_a_one_value_parameter_given_twice_is_refused(console: Console) -> None:
    admin = console.as_role(Role.ADMIN)
    r = admin.get("/api/v1/audits?host=a&host=b")
    assert r.status_code == 400, r.text
    assert r.json()["errors"] == [{"path": "query.host",
                                   "message": "given 2 times; this parameter takes one value"}]
    # Parameters that take several values still do.
    assert admin.get("/api/v1/audits/firewall/network/container"
                     "?srcImageName=a&srcImageName=b").status_code == 200
