"""HTTPS for the Console: a self-signed CA of its own, and a server certificate
it signs. Defenders trust the CA file (``ca.crt``), so the server certificate
can be reissued (new names) without touching them.

Files live in ``<data dir>/tls``: ``ca.crt``, ``ca.key``, ``server.crt``,
``server.key``; keys are written with mode 0600.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cnnf.errors import CnnfError

CA_LIFETIME = timedelta(days=3650)
SERVER_LIFETIME = timedelta(days=825)
# Reissue the server certificate when it has less than this left.
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _san(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(n.strip("[]") for n in names if n):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _covers(cert: x509.Certificate, names: list[x509.GeneralName], now: datetime) -> bool:
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return False
    try:
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(n in have for n in names)


def _new_ca(directory: Path, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CNNF Console CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CNNF")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(directory / "ca.key", key)
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CnnfError(f"{directory / 'ca.key'}: not an EC private key")
    return cert, key


def ensure_self_signed(
    directory: Path, names: Iterable[str], now: Callable[[], datetime] = _utcnow
) -> TlsFiles:
    """The CA (created once) and a server certificate valid for ``names``
    (reissued when a name is missing or it nears its end)."""
    directory.mkdir(parents=True, exist_ok=True)
    at = now()
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    if files.ca_cert.exists() and (directory / "ca.key").exists():
        ca_cert, ca_key = _load_ca(directory)
    else:
        ca_cert, ca_key = _new_ca(directory, at)
    wanted = _san(names)
    if not wanted:
        raise CnnfError("a TLS certificate needs at least one host name or address")
    if files.cert.exists() and files.key.exists():
        current = x509.load_pem_x509_certificate(files.cert.read_bytes())
        if current.issuer == ca_cert.subject and _covers(current, wanted, at):
            return files
    key = ec.generate_private_key(ec.SECP256R1())
    first = wanted[0].value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - timedelta(hours=1)).not_valid_after(at + SERVER_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(files.key, key)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def server_names(listen_host: str, extra: Iterable[str] = ()) -> list[str]:
    """Names a Defender may use to reach this Console: the listen address (unless
    a wildcard), this machine's name, loopback, and any given explicitly."""
    import socket

    names = [*extra]
    if listen_host not in ("0.0.0.0", "::", ""):
        names.append(listen_host)
    names += [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    return names
