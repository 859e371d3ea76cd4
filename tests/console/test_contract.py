"""The API's contract, for every route (cnnf.console.api.contract): unknown query
parameters are refused naming them, the caller is authenticated before its input
is judged, and the OpenAPI document names every error status with the one error
body the Console sends."""

from __future__ import annotations

import pytest
from consoletest import Console

from cnnf.console.security import Role

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
        assert "400" in responses, f"{method} {path}"
        if op.get("security"):
            assert "401" in responses, f"{method} {path}"
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in responses, f"{method} {path}"
        for status, response in responses.items():
            if status.startswith("4"):
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), f"{method} {path} {status}"
    users = spec["paths"]["/api/v1/users"]["post"]["responses"]
    assert set(users) == {"201", "400", "401", "403", "409", "413", "422"}
    me = spec["paths"]["/api/v1/auth/me"]["get"]["responses"]
    assert set(me) == {"200", "400", "401"}  # any signed-in user: never 403


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
