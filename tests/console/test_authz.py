"""The authorization matrix: every API operation, by every role and without
credentials. Operations are read from the app's own OpenAPI document, where
each one publishes the permission it needs, so a new route is covered (or fails
here for declaring none) without editing this file. The documentation itself
(``/api/v1/openapi.json``, ``/api/v1/docs``) is public: it holds no data."""

from __future__ import annotations

import re

from consoletest import Console

from cnnf.console.security import Permission, Role, allowed
from cnnf.console.services.users import UserService

PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),  # Kubernetes readiness: can this replica serve
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/authenticate"),  # the original API's login
    ("GET", "/api/v1/_ping"),  # the original API's liveness check
    ("POST", "/api/v1/defenders/enroll"),  # the enrollment token is in the body
}
# A value for every path parameter; a route with a new one fails until added here.
PATH_VALUES = {"name": "no-such-thing", "kind": "container", "rule_id": "1", "token_id": "999",
               "defender_id": "no-such-defender", "proposal_id": "999"}
EXPECTED = {
    Permission.READ: {Role.ADMIN, Role.OPERATOR, Role.AUDITOR},
    Permission.POLICY: {Role.ADMIN, Role.OPERATOR},
    Permission.ADMIN: {Role.ADMIN},
    Permission.SELF: {Role.ADMIN, Role.OPERATOR, Role.AUDITOR},
    Permission.DEFENDER: set(),  # Defender credentials only (test_defenders.py)
}


def _intended(method: str, path: str) -> Permission:
    """The access model in one place: users, Defenders and forwarding are admin
    business; one's own session and tokens are anyone's; reading is for every role;
    every other write changes policy or settings."""
    if path.startswith("/api/v1/defender/"):
        return Permission.DEFENDER
    if path.startswith("/api/v1/users") or (
            path.startswith(("/api/v1/defenders", "/api/v1/forwarding")) and method != "GET"):
        return Permission.ADMIN
    if path.startswith(("/api/v1/auth/", "/api/v1/tokens")):
        return Permission.SELF
    if method == "GET" or path == "/api/v1/objects/preview":
        return Permission.READ  # a preview changes nothing: a read, sent as a POST body
    return Permission.POLICY


def _url(path: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in PATH_VALUES, f"no test value for path parameter {name!r} in {path}"
        return PATH_VALUES[name]

    return re.sub(r"{(\w+)}", value, path)


def test_grants_are_what_the_roles_promise() -> None:
    for permission, roles in EXPECTED.items():
        assert {r for r in Role if allowed(r, permission)} == roles, permission


def test_every_route_by_every_role(console: Console) -> None:
    anonymous = console.client()
    forged = console.client("cnnf_not-a-real-token")
    spec = console.app.openapi()
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            method = method.upper()  # noqa: PLW2901
            if (method, path) in PUBLIC:
                assert "security" not in operation, f"{method} {path}"
                continue
            # Each route declares one permission, published as its security scope.
            requirements = operation.get("security")
            assert requirements is not None, f"{method} {path} declares no permission"
            assert len(requirements) == 1, f"{method} {path}: {requirements}"
            (scopes,) = requirements[0].values()
            assert len(scopes) == 1, f"{method} {path}: {scopes}"
            permission = Permission(scopes[0])
            assert permission is _intended(method, path), f"{method} {path}: {permission}"
            url = _url(path)
            body = {} if method in ("POST", "PUT", "PATCH") else None
            for client in (anonymous, forged):
                r = client.request(method, url, json=body)
                assert r.status_code == 401, f"{method} {url} without credentials: {r.status_code}"
                assert r.headers["www-authenticate"] == "Bearer"
            for role in Role:
                with console.session() as s:
                    token = UserService(s, console.clock.now).issue_session(
                        f"{role.value}-user", 60).token
                r = console.client(token).request(method, url, json=body)
                assert r.status_code < 500, f"{method} {url} as {role}: {r.text}"
                if role in EXPECTED[permission]:
                    assert r.status_code not in (401, 403), f"{method} {url} as {role}: {r.text}"
                else:
                    assert r.status_code == 403, f"{method} {url} as {role}: {r.status_code}"
                    assert permission.value in r.json()["detail"]
            checked += 1
    assert checked >= 30


def test_public_routes_need_no_credentials(console: Console) -> None:
    anonymous = console.client()
    assert anonymous.get("/healthz").json()["status"] == "ok"
    spec = anonymous.get("/api/v1/openapi.json").json()
    assert "/api/v1/policy/import" in spec["paths"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
