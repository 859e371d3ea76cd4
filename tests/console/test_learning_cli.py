"""``cnnf policy learn`` and ``cnnf policy simulate`` against a real Console
process over HTTPS (its own CA, --ca), fed by a Defender's link."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import test_learning_api as tla
from test_cli import CNNF, PASSWORD, _cnnf, running_console

from cnnf.defender.link import ConsoleLink
from cnnf.model import Effect
from cnnf.model.records import ReportBatch
from cnnf.policy.document import dump_policy, load_policy


def _cli(token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CNNF, "policy", *args], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "CNNF_TOKEN": token})


def test_learn_then_simulate_a_draft_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = _cnnf("console", "create-user", "alice", "--role", "admin", "--password-stdin",
                 "--data-dir", str(data), stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    enroll = _cnnf("console", "enrollment-token", "--data-dir", str(data))
    assert enroll.returncode == 0, enroll.stderr
    ca = data / "tls" / "ca.crt"
    now = time.time()
    flows = [f.model_copy(update={"first_seen": now - 600, "last_seen": now - 540})
             for f in tla.SHOP]
    with running_console(tmp_path, "--data-dir", str(data), "--tls", ca=ca) as url:
        link = ConsoleLink(url, tmp_path / "defender", hostname="node-1",
                           enrollment_token=enroll.stdout.split()[0], ca=ca)
        try:
            assert link.push_batch(ReportBatch(batch_id="b-1", flows=flows))
        finally:
            link.close()
        trusted = ssl.create_default_context(cafile=str(ca))
        token = httpx.post(f"{url}/api/v1/auth/login", verify=trusted, json={
            "username": "alice", "password": PASSWORD}).json()["token"]

        out = tmp_path / "proposal.yaml"
        r = _cli(token, "learn", "--console", url, "--ca", str(ca), "--since", "1h",
                 "--default-effect", "prevent", "-o", str(out))
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("proposal 1: 4 rules (4 new, 0 widened), 5 new objects, "
                                   "learnt from 4 flows seen ")
        assert lines[0].endswith("; default effect prevent")
        assert ("  + container rule 3 shop-web:app=api -> shop-data:app=db port 5432  "
                "(1 flow, 240 connections, last seen ") in r.stdout
        assert "  + container object shop-web:app=api: label app=api in shop-web" in lines
        assert lines[-1] == f"wrote the proposed policy to {out}"
        proposal = load_policy(out.read_text(), source=str(out))
        assert len(proposal.container_rules) == 4 and proposal.default_effect.value == "prevent"

        # A draft: the proposal with api -> db prevented.
        rules = tuple(rule.model_copy(update={"effect": Effect.PREVENT})
                      if rule.dst == "shop-data:app=db" else rule
                      for rule in proposal.container_rules)
        draft = tmp_path / "draft.json"
        draft.write_text(dump_policy(proposal.model_copy(update={"container_rules": rules}),
                                     "json"))
        r = _cli(token, "simulate", str(draft), "--console", url, "--ca", str(ca),
                 "--since", "1h", "--fail-on-change")
        assert r.returncode == 3, r.stderr
        assert r.stdout.splitlines()[0].startswith("4 flows (590 connections) seen ")
        assert r.stdout.splitlines()[0].endswith("; 4 would change (590 connections)")
        assert "  unmatched (allow) -> prevent: 1 flow" in r.stdout
        assert "  unmatched (allow) -> allow: 3 flows" in r.stdout
        assert ("  image:shop/api:1.0 -> image:shop/db:1.0:5432  unmatched (allow) -> prevent "
                "(by shop-web:app=api -> shop-data:app=db)  240 connections") in r.stdout

        # Failures: exit non-zero with the reason.
        r = _cli(token, "simulate", str(draft), "--console", url, "--since", "1h")
        assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr
        r = _cli("cnnfs_wrong", "learn", "--console", url, "--ca", str(ca))
        assert r.returncode == 1 and "the Console refused (401)" in r.stderr
        r = _cli(token, "learn", "--console", url, "--ca", str(ca), "--image", "a[b")
        assert r.returncode == 1 and "images" in r.stderr and "'[' without ']'" in r.stderr
        r = _cli(token, "simulate", str(tmp_path / "missing.yaml"), "--console", url)
        assert r.returncode == 2 and "cannot read" in r.stderr
