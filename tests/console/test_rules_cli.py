"""``cnnf rules list|promote|promote-default`` against a real Console process
over HTTPS (its own CA, ``--ca``): what they print, what they refuse, and that a
bad ``--ca`` is a clear error, never a traceback."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import httpx
from test_cli import CNNF, PASSWORD, _cnnf, running_console

OBJECTS = [
    {"name": "api", "kind": "container", "selector": {"images": ["shop/api*"]}},
    {"name": "db", "kind": "container", "selector": {"images": ["shop/db*"]}},
]


def _rules(token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CNNF, "rules", *args], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "CNNF_TOKEN": token})


def test_list_promote_and_promote_default_say_what_is_and_is_not_enforced(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = _cnnf("console", "create-user", "alice", "--role", "admin", "--password-stdin",
                 "--data-dir", str(data), stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    ca = data / "tls" / "ca.crt"
    with running_console(tmp_path, "--data-dir", str(data), "--tls", ca=ca) as url:
        trusted = ssl.create_default_context(cafile=str(ca))
        token = httpx.post(f"{url}/api/v1/auth/login", verify=trusted, json={
            "username": "alice", "password": PASSWORD}).json()["token"]
        api = httpx.Client(base_url=f"{url}/api/v1", verify=trusted,
                           headers={"Authorization": f"Bearer {token}"})
        for obj in OBJECTS:
            assert api.post("/objects", json=obj).status_code == 201
        for rule in ({"name": "api-to-db", "ports": [5432], "effect": "allow"},
                     {"name": "no-ssh", "ports": [22], "effect": "prevent", "staged": True},
                     {"name": "off", "ports": [23], "effect": "prevent", "staged": True,
                      "disabled": True}):
            assert api.post("/rules/container", json={"src": "api", "dst": "db", **rule}
                            ).status_code == 201
        settings = api.get("/settings").json()
        assert api.put("/settings", json={**settings, "containerEnabled": True,
                                          "hostEnabled": False, "stagedDefaultEffect": "prevent"}
                       ).status_code == 200
        at = ("--console", url, "--ca", str(ca))

        revision = api.get("/policy").json()["revision"]
        r = _rules(token, "list", "container", *at)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            f"policy revision {revision}; default allow (staged: prevent); enforcement: "
            "container on, host off",
            "   1  allow    api-to-db: api -> db ports 5432",
            "   2  prevent  no-ssh: api -> db ports 22 [staged]",
            "   3  prevent  off: api -> db ports 23 [staged, disabled]",
        ]

        # reviewed at an older revision: refused, nothing changed
        stale = _rules(token, "promote", "container", "2", "--revision", str(revision - 1), *at)
        assert stale.returncode == 1 and stale.stdout == ""
        assert stale.stderr.strip() == (
            f"cnnf rules: POST /rules/container/2/promote: 409: the policy is at revision "
            f"{revision}, not {revision - 1}: it changed meanwhile (review it and try again)")
        assert api.get("/rules/container/2").json()["staged"] is True
        assert api.get("/policy").json()["revision"] == revision
        r = _rules(token, "promote", "container", "2", "--revision", str(revision), *at)
        assert (r.returncode, r.stdout.strip()) == (
            0, "promoted container rule 2 'no-ssh': prevent api -> db is in force"), r.stderr
        again = _rules(token, "promote", "container", "2", *at)
        assert again.returncode == 1 and again.stdout == ""
        assert again.stderr.strip() == ("cnnf rules: POST /rules/container/2/promote: 409: "
                                        "container rule 2 (no-ssh) is not staged: it is in "
                                        "force already")
        r = _rules(token, "promote", "container", "3", *at)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == ("promoted container rule 3 'off': prevent api -> db is no "
                                    "longer staged, but it is disabled: not enforced until "
                                    "enabled")
        r = _rules(token, "promote", "container", "3", *at)
        assert r.returncode == 1 and "is not staged: it is disabled" in r.stderr
        missing = _rules(token, "promote", "container", "9", *at)
        assert missing.returncode == 1 and ": 404: " in missing.stderr

        # enforcement of container rules off: promoting the default says so
        settings = api.get("/settings").json()
        assert api.put("/settings", json={**settings, "containerEnabled": False}
                       ).status_code == 200
        revision = api.get("/policy").json()["revision"]
        stale = _rules(token, "promote-default", "--revision", str(revision - 1), *at)
        assert stale.returncode == 1 and ": 409: the policy is at revision" in stale.stderr
        r = _rules(token, "promote-default", "--revision", str(revision), *at)
        assert (r.returncode, r.stdout.strip()) == (
            0, "default effect is now prevent (nothing staged) (not enforced for container "
               "rules and host rules: enforcement is off)"), r.stderr
        nothing = _rules(token, "promote-default", *at)
        assert nothing.returncode == 1 and "no default effect is staged" in nothing.stderr
        actions = [c["action"] for c in api.get("/changes?limit=3").json()["items"]]
        assert actions == ["settings.promote", "settings.update", "rule.promote"]
        api.close()

        # a bad --ca or no token: a clear error (exit 2), no traceback, nothing sent
        not_pem = tmp_path / "not-a-ca.pem"
        not_pem.write_text("hello\n")
        for bad, says in ((tmp_path / "missing.pem", "is not a readable file"),
                          (not_pem, "holds no CA certificate")):
            r = _rules(token, "list", "container", "--console", url, "--ca", str(bad))
            assert r.returncode == 2, (r.stdout, r.stderr)
            assert says in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = _rules("", "list", "container", *at)
        assert r.returncode == 2 and "--token" in r.stderr and "CNNF_TOKEN" in r.stderr, r.stderr
