"""Logins, sessions, API tokens, users, rate limits and body limits."""

from __future__ import annotations

from collections.abc import AsyncIterator

from consoletest import PASSWORD, ApiClient, Console

from cnnf.console.security import Role

API = "/api/v1"


def _login(client: ApiClient, user: str, password: str = PASSWORD) -> tuple[int, dict[str, object]]:
    r = client.post(f"{API}/auth/login", json={"username": user, "password": password})
    return r.status_code, r.json()


def test_login_me_logout(console: Console) -> None:
    anonymous = console.client()
    status, body = _login(anonymous, "operator-user")
    assert status == 200 and body["role"] == "operator" and body["tokenType"] == "bearer"
    client = console.client(str(body["token"]))
    assert client.get(f"{API}/auth/me").json() == {
        "name": "operator-user", "role": "operator", "tokenKind": "session"}
    assert client.post(f"{API}/auth/logout").status_code == 204
    r = client.get(f"{API}/auth/me")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_wrong_credentials_are_refused_alike(console: Console) -> None:
    anonymous = console.client()
    wrong = _login(anonymous, "operator-user", "not the password")
    unknown = _login(anonymous, "nobody", "not the password")
    assert wrong[0] == unknown[0] == 401
    assert wrong[1]["detail"] == unknown[1]["detail"] == "wrong user name or password"
    r = anonymous.post(f"{API}/auth/login", json={"username": "x"})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "password"


def test_failed_logins_are_rate_limited_per_user_and_client(console: Console) -> None:
    client = console.client()
    for _ in range(5):
        assert _login(client, "auditor-user", "bad password")[0] == 401
    r = client.post(f"{API}/auth/login",
                    json={"username": "auditor-user", "password": PASSWORD})
    assert r.status_code == 429, "even the right password waits out the lock"
    assert 0 < int(r.headers["retry-after"]) <= 60
    # another client address, or another user, is not locked out
    assert _login(console.client(address="127.0.0.2"), "auditor-user")[0] == 200
    assert _login(client, "operator-user")[0] == 200
    console.clock.advance(61)
    assert _login(client, "auditor-user")[0] == 200


def test_sessions_expire(console: Console) -> None:
    client = console.as_role(Role.AUDITOR)
    assert client.get(f"{API}/policy").status_code == 200
    console.clock.advance(3601)  # the fixture's sessions last an hour
    r = client.get(f"{API}/policy")
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_api_tokens(console: Console, admin: ApiClient) -> None:
    auditor = console.as_role(Role.AUDITOR)
    r = auditor.post(f"{API}/tokens", json={"name": "ci", "expiresInDays": 30})
    assert r.status_code == 201
    secret, info = r.json()["token"], r.json()["info"]
    assert secret.startswith("cnnf_") and info["kind"] == "api" and info["user"] == "auditor-user"
    robot = console.client(secret)
    assert robot.get(f"{API}/auth/me").json()["tokenKind"] == "api"
    assert robot.get(f"{API}/policy").status_code == 200
    assert robot.put(f"{API}/settings", json={}).status_code == 403  # the auditor's role
    mine = auditor.get(f"{API}/tokens").json()
    assert [t["name"] for t in mine if t["kind"] == "api"] == ["ci"]
    assert auditor.get(f"{API}/tokens", params={"all": "true"}).status_code == 403
    everyone = admin.get(f"{API}/tokens", params={"all": "true"}).json()
    assert {t["user"] for t in everyone} >= {"auditor-user", "admin-user", "operator-user"}
    # someone else's token is invisible to a non-admin, revocable by an admin
    operator = console.as_role(Role.OPERATOR)
    assert operator.delete(f"{API}/tokens/{info['id']}").status_code == 404
    assert admin.delete(f"{API}/tokens/{info['id']}").status_code == 204
    assert robot.get(f"{API}/policy").status_code == 401
    r = auditor.post(f"{API}/tokens", json={"name": ""})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "name"


def test_user_management(console: Console, admin: ApiClient) -> None:
    r = admin.post(f"{API}/users", json={"name": "dana", "role": "operator",
                                         "password": "short"})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "password"
    r = admin.post(f"{API}/users", json={"name": "da na", "role": "operator",
                                         "password": PASSWORD})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "name"
    r = admin.post(f"{API}/users", json={"name": "dana", "role": "root", "password": PASSWORD})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "role"
    r = admin.post(f"{API}/users", json={"name": "dana", "role": "operator",
                                         "password": PASSWORD})
    assert r.status_code == 201 and r.json()["role"] == "operator"
    assert "passwordHash" not in r.json() and "password" not in r.json()
    assert admin.post(f"{API}/users", json={"name": "dana", "role": "auditor",
                                            "password": PASSWORD}).status_code == 409
    _, body = _login(console.client(), "dana")
    dana = console.client(str(body["token"]))
    assert dana.put(f"{API}/settings", json={"containerEnabled": True, "hostEnabled": False,
                                             "defaultEffect": "allow",
                                             "blockMode": "reset"}).status_code == 200
    # demoted: the same session now reads only
    assert admin.patch(f"{API}/users/dana", json={"role": "auditor"}).json()["role"] == "auditor"
    assert dana.put(f"{API}/settings", json={}).status_code == 403
    # disabled: sessions end, logins fail
    assert admin.patch(f"{API}/users/dana", json={"disabled": True}).status_code == 200
    assert dana.get(f"{API}/policy").status_code == 401
    assert _login(console.client(), "dana")[0] == 401
    assert admin.delete(f"{API}/users/dana").status_code == 204
    assert admin.get(f"{API}/users/dana").status_code == 404
    # the last admin stays
    r = admin.patch(f"{API}/users/admin-user", json={"role": "operator"})
    assert r.status_code == 409 and "last enabled admin" in r.json()["detail"]
    assert admin.delete(f"{API}/users/admin-user").status_code == 409
    assert [u["name"] for u in admin.get(f"{API}/users").json()] == [
        "admin-user", "auditor-user", "operator-user"]


def test_oversized_bodies_are_refused(console: Console, admin: ApiClient) -> None:
    before = admin.get(f"{API}/policy").json()
    big = b'{"name": "x", "kind": "dns", "domains": ["' + b"a" * 300_000 + b'.example"]}'
    r = admin.post(f"{API}/objects", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit counts what arrives
        yield b'{"apiVersion": "cnnf/v1", "kind": "Policy", "spec": {"objects": ['
        for _ in range(100):
            yield b'{"kind": "dns", "name": "n", "domains": ["' + b"b" * 4000 + b'.example"]},'
        yield b"]}}"

    r = admin.post(f"{API}/policy/import", content=chunks())
    assert r.status_code == 413
    assert admin.get(f"{API}/policy").json() == before
