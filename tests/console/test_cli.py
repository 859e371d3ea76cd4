"""``cnnf console`` as a real process: create a user, serve HTTP on loopback."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session
from tests.served import free_port

from cnnf.console.config import database_url
from cnnf.console.services.records import AuditRecord, AuditService
from cnnf.console.store.db import connect
from cnnf.console.tls import ensure_self_signed
from cnnf.defender.link import ConsoleLink, LinkError
from cnnf.model import Effect

CNNF = str(Path(sys.executable).with_name("cnnf"))
PASSWORD = "correct horse battery"


def _cnnf(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([CNNF, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


@contextmanager
def running_console(workdir: Path, *args: str, ca: Path | None = None) -> Iterator[str]:
    """``cnnf console ARGS`` on a free loopback port, up (``/healthz`` answers)
    within 60 s; yields its base URL and stops it at the end."""
    port = free_port()
    log_path = workdir / f"console-{port}.log"
    base = f"{'https' if ca else 'http'}://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [CNNF, "console", "--listen", f"127.0.0.1:{port}", "--log-level", "warning", *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if ca is None:
                        verify: ssl.SSLContext | bool = True
                    elif ca.exists():  # written by the console at start
                        verify = ssl.create_default_context(cafile=str(ca))
                    else:
                        raise httpx.ConnectError("no CA yet")
                    if httpx.get(f"{base}/healthz", timeout=1, verify=verify).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the console did not come up in 60 s"
                time.sleep(0.05)
            yield base
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def _seed_audits(db_url: str) -> None:
    """One audit from long ago (retention prunes it at start-up) and one from now."""
    engine = connect(db_url)
    try:
        with Session(engine) as s:
            AuditService(s).insert_many([
                AuditRecord(time=at, blocked=True, effect=Effect.PREVENT, port=22)
                for at in (datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC))
            ])
    finally:
        engine.dispose()


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[str]:
    """``cnnf console`` serving on a free loopback port; yields its base URL."""
    result = _cnnf("console", "create-user", "alice", "--role", "admin", "--password-stdin",
                   "--db", db_url, stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "created user 'alice' with role admin"
    again = _cnnf("console", "create-user", "alice", "--password-stdin", "--db", db_url,
                  stdin=PASSWORD + "\n")
    assert again.returncode == 1 and "already exists" in again.stderr
    short = _cnnf("console", "create-user", "bob", "--password-stdin", "--db", db_url,
                  stdin="short\n")
    assert short.returncode == 1 and "password" in short.stderr

    _seed_audits(db_url)
    with running_console(tmp_path, "--db", db_url) as base:
        yield base


def test_console_serves_over_http(served: str) -> None:
    with httpx.Client(base_url=served, timeout=10) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        assert http.get("/api/v1/policy").status_code == 401
        r = http.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
        assert r.status_code == 200
        http.headers["Authorization"] = f"Bearer {r.json()['token']}"
        r = http.post("/api/v1/objects", json={"name": "lan", "kind": "subnet",
                                                "cidrs": ["10.0.0.0/8"]})
        assert r.status_code == 201, r.text
        assert http.get("/api/v1/policy").json()["objects"][0]["name"] == "lan"
        assert "/api/v1/objects" in http.get("/api/v1/openapi.json").json()["paths"]
        # the retention task runs at start-up: the audit from 2000 goes, today's stays
        deadline = time.monotonic() + 20
        while http.get("/api/v1/audits").json()["total"] != 1:
            assert time.monotonic() < deadline, "old audits were not pruned"
            time.sleep(0.05)


def test_sqlite_default_lives_in_the_data_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNF_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert database_url(None, Path("./var/console")) == (
        f"sqlite:///{tmp_path}/var/console/console.db")
    result = subprocess.run(
        [CNNF, "console", "create-user", "root-admin", "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=False,
        cwd=tmp_path, env={**os.environ, "CNNF_DATA_DIR": str(tmp_path / "elsewhere")},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere" / "console.db").exists()
    assert not (tmp_path / "var").exists()


def test_console_serves_https_from_its_own_ca(tmp_path: Path) -> None:
    ca = tmp_path / "data" / "tls" / "ca.crt"
    with running_console(tmp_path, "--data-dir", str(tmp_path / "data"), "--tls", ca=ca) as base:
        trusted = ssl.create_default_context(cafile=str(ca))
        assert httpx.get(f"{base}/healthz", verify=trusted).json()["status"] == "ok"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{base}/healthz")  # the system's trust store does not know it
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(base.replace("https:", "http:") + "/healthz")


def test_console_serves_https_with_a_given_certificate(tmp_path: Path) -> None:
    """--tls-cert/--tls-key: the certificate given, not one from the Console's CA."""
    own = ensure_self_signed(tmp_path / "own-ca", ["127.0.0.1"])
    data = tmp_path / "data"
    with running_console(tmp_path, "--data-dir", str(data), "--tls-cert", str(own.cert),
                         "--tls-key", str(own.key), ca=own.ca_cert) as base:
        trusted = ssl.create_default_context(cafile=str(own.ca_cert))
        assert httpx.get(f"{base}/healthz", verify=trusted).json()["status"] == "ok"
        served = ssl.get_server_certificate(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        assert served.strip() == own.cert.read_text().strip()
    assert not (data / "tls").exists()  # no CA of its own was made
    r = _cnnf("console", "--data-dir", str(data), "--tls-cert", str(own.cert))
    assert r.returncode == 1 and "--tls-cert and --tls-key go together" in r.stderr


def test_a_defender_enrolls_with_an_https_console_given_its_ca(tmp_path: Path) -> None:
    """The Defender's --ca: its Console link trusts the Console's own CA, and
    without it refuses the connection (the system's trust store does not know it)."""
    data = tmp_path / "data"
    ca = data / "tls" / "ca.crt"
    with running_console(tmp_path, "--data-dir", str(data), "--tls", ca=ca) as base:
        r = _cnnf("console", "enrollment-token", "--data-dir", str(data))
        assert r.returncode == 0, r.stderr
        token = r.stdout.split()[0]
        untrusting = ConsoleLink(base, tmp_path / "state-0", hostname="node-0",
                                 enrollment_token=token)
        with pytest.raises(LinkError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.enroll()
        untrusting.close()
        link = ConsoleLink(base, tmp_path / "state-1", hostname="node-1",
                           enrollment_token=token, ca=ca)
        link.enroll()
        revision, policy = link.fetch_policy(-1, 0) or (None, None)
        assert revision is not None and policy is not None
        link.close()


def test_an_unreachable_store_is_one_clear_line(tmp_path: Path) -> None:
    r = _cnnf("console", "--listen", "127.0.0.1:9", "--db",
              "postgresql://cnnf:secret@127.0.0.1:1/console")
    assert r.returncode == 1
    assert r.stderr.startswith("cnnf console: cannot open postgresql+psycopg://cnnf:***@")
    assert "Connection refused" in r.stderr and "secret" not in r.stderr
    assert "Traceback" not in r.stderr
    r = _cnnf("console", "--listen", "nowhere")
    assert r.returncode == 1 and "expected HOST:PORT" in r.stderr


def test_console_refuses_two_webhooks_that_differ_only_in_credentials(tmp_path: Path) -> None:
    """User, password and query are credentials: they do not tell receivers apart.
    Two such URLs in one start would share one sink (one silently dropped, or two
    tenants' backlogs merged): refused, naming both, before anything is stored."""
    db = tmp_path / "console.db"
    done = _cnnf("console", "--data-dir", str(tmp_path), "--db", f"sqlite:///{db}",
                 "--webhook", "http://h:1/in?channel=ops",
                 "--webhook", "http://h:1/in?channel=sec")
    assert done.returncode != 0
    assert "--webhook #1 and --webhook #2 name one sink" in done.stderr
    assert "distinct paths or hosts" in done.stderr
    assert "ops" not in done.stderr and "sec" not in done.stderr.replace("seconds", "")
    assert not db.exists()


def test_console_prints_the_sinks_in_force_with_time_and_level(tmp_path: Path) -> None:
    """The Console's own log lines reach stderr with time and level: the startup
    summary of the fleet's sinks (INFO) and a rotation (WARNING)."""
    import re

    db = f"sqlite:///{tmp_path / 'console.db'}"
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    with running_console(tmp_path, "--log-level", "info", "--db", db, "--data-dir",
                         str(tmp_path), "--webhook", "http://127.0.0.1:9/in?k=old"):
        pass
    with running_console(tmp_path, "--log-level", "info", "--db", db, "--data-dir",
                         str(tmp_path), "--webhook", "http://127.0.0.1:9/in?k=new"):
        pass
    first, second = (p.read_text() for p in sorted(
        tmp_path.glob("console-*.log"), key=lambda p: p.stat().st_mtime))
    assert re.search(stamp + r" INFO cnnf\.console: forwarding: audits go to 1 sinks "
                     r"\(the fleet's list, in the store\): webhook:http://127\.0\.0\.1:9 ",
                     first), first
    assert re.search(stamp + r" WARNING cnnf\.console: forwarding: webhook:http://"
                     r"127\.0\.0\.1:9 \(\w+\) has a new URL", second), second
    assert "k=old" not in first + second and "k=new" not in first + second
