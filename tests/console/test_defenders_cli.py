"""``cnnf console enrollment-token`` and ``--syslog``/``--webhook`` with the Console
as a real process, and the Defender's own link client talking to it."""

from __future__ import annotations

import socket
from pathlib import Path

import test_defenders as td
from test_cli import _cnnf, running_console

from cnnf.defender.link import AuthError, ConsoleLink
from cnnf.model.records import ReportBatch


def test_enrollment_token_then_a_defender_link_enrolls_reports_and_audits_reach_syslog(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "console.db")
    made = _cnnf("console", "enrollment-token", "--db", db, "--hours", "2")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("cnnfe_") and "expires" in made.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as syslog:
        syslog.bind(("127.0.0.1", 0))
        syslog.settimeout(20)
        port = syslog.getsockname()[1]
        with running_console(tmp_path, "--db", db, "--syslog",
                             f"udp://127.0.0.1:{port}") as url:
            link = ConsoleLink(url, tmp_path / "defender", hostname="node-1",
                               enrollment_token=token)
            try:
                got = link.fetch_policy(-1, 0)
                assert got is not None and got[0] == 0
                assert link.fetch_policy(0, 0.5) is None  # 204: no change
                assert link.push_batch(ReportBatch(batch_id="b-1", audits=[td.audit()]))
                message = syslog.recv(65535).decode()
                assert " cnnf - audit [cnnf@32473 " in message
                assert 'rule="api-not-db"' in message
                # Restarted without the token: the stored credential is used.
                again = ConsoleLink(url, tmp_path / "defender", hostname="node-1")
                assert again.fetch_inventory(-1, 0) is not None
                again.close()
            finally:
                link.close()
            stranger = ConsoleLink(url, tmp_path / "other", hostname="node-2",
                                   enrollment_token="cnnfe_wrong")
            try:
                stranger.fetch_policy(-1, 0)
                raise AssertionError("a wrong enrollment token was accepted")
            except AuthError as exc:
                assert "enrollment token" in str(exc)
            finally:
                stranger.close()


def test_bad_forwarding_targets_are_one_clear_line(tmp_path: Path) -> None:
    for option, value, message in (("--syslog", "syslog://x:514", "expected udp://HOST:PORT"),
                                   ("--webhook", "ftp://x/", "http:// or https://")):
        r = _cnnf("console", "--db", str(tmp_path / "c.db"), option, value)
        assert r.returncode == 1
        assert r.stderr.startswith("cnnf console: ") and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
