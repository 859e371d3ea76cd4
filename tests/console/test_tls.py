"""The Console's own CA and server certificate."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from cnnf.console.tls import ensure_self_signed, server_names
from cnnf.errors import CnnfError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in san}


def test_ca_signs_a_server_certificate_for_the_names(tmp_path: Path) -> None:
    files = ensure_self_signed(tmp_path, ["console.lab", "10.0.0.1", "[::1]"], lambda: T0)
    ca, server = _cert(files.ca_cert), _cert(files.cert)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _names(server) == {"console.lab", "10.0.0.1", "::1"}
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert (files.key.stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / "ca.key").stat().st_mode & 0o777) == 0o600
    assert server.not_valid_after_utc > T0 + timedelta(days=365)


def test_server_certificate_is_reissued_only_when_needed(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path, ["a.lab"], lambda: T0)
    ca_bytes, cert_bytes = first.ca_cert.read_bytes(), first.cert.read_bytes()
    ensure_self_signed(tmp_path, ["a.lab"], lambda: T0 + timedelta(days=1))
    assert first.cert.read_bytes() == cert_bytes  # same names, still fresh: kept
    ensure_self_signed(tmp_path, ["a.lab", "b.lab"], lambda: T0 + timedelta(days=1))
    assert _names(_cert(first.cert)) == {"a.lab", "b.lab"}  # a new name: reissued
    late = T0 + timedelta(days=810)
    ensure_self_signed(tmp_path, ["a.lab", "b.lab"], lambda: late)
    assert _cert(first.cert).not_valid_after_utc > late + timedelta(days=700)  # renewed
    # the CA never changes, so Defenders that trust it keep working
    assert first.ca_cert.read_bytes() == ca_bytes
    _cert(first.cert).verify_directly_issued_by(_cert(first.ca_cert))


def test_names_and_errors(tmp_path: Path) -> None:
    names = server_names("0.0.0.0", ["console.example"])
    assert names[0] == "console.example" and "0.0.0.0" not in names
    assert {"localhost", "127.0.0.1", "::1"} <= set(names)
    assert "192.0.2.7" in server_names("192.0.2.7")
    with pytest.raises(CnnfError, match="at least one"):
        ensure_self_signed(tmp_path, [], lambda: T0)
