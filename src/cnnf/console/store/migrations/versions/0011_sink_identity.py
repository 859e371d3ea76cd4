"""Forwarding sinks keyed by their receiver, and SQLite audit ids seeded.

- A webhook's key (in ``forward_sinks`` and ``forward_outbox``) was a hash of its
  whole URL, so a rotated secret (a new password or query token) named a new
  sink and orphaned the old one's undelivered audits. It is now a hash of what
  identifies the receiver: scheme, host, port and path. Stored sinks and their
  outbox rows are renamed. Two stored URLs that would get one key (they differ
  only in user, password or query: two tenants' API keys, two channels) are not
  merged: the first keeps the new key, the others keep their old key and their
  own backlog, with a warning (the Console matches a stored URL to its stored
  key). Outbox rows of sinks no longer configured keep their old key (their URL
  is not stored).
- On SQLite, ``audits``' AUTOINCREMENT counter starts after the highest audit id
  the store holds any record of (0010 started it from the audits left, none if
  retention had pruned them all).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

from cnnf.console.store.migrations.kept import seed_audit_ids

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_DEFAULT_PORTS = {"http": 80, "https": 443}

log = logging.getLogger("cnnf.console.store")


def _short(name: str) -> str:
    if len(name) <= 200:
        return name
    return name[:180] + " (" + hashlib.sha256(name.encode()).hexdigest()[:12] + ")"


def _host(url: str) -> str:
    host = urlsplit(url).hostname or "?"
    return f"[{host}]" if ":" in host else host


def _old_name(url: str) -> str:
    """A webhook's key at 0010 (frozen here): a hash of the whole URL."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return _short(f"webhook:{parts.scheme}://{_host(url)}{port} ({digest})")


def _new_name(url: str) -> str:
    """A webhook's key from 0011 (frozen here; cnnf.console.services.forwarding's
    webhook_name gives the same): a hash of scheme, host, port and path."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    shown_port = "" if port == _DEFAULT_PORTS.get(scheme) else f":{port}"
    receiver = f"{scheme}://{_host(url)}:{port}{parts.path or '/'}"
    digest = hashlib.sha256(receiver.encode()).hexdigest()[:8]
    return _short(f"webhook:{scheme}://{_host(url)}{shown_port} ({digest})")


def _rename(key: Callable[[str], str]) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT name, url, updated FROM forward_sinks "
                                "ORDER BY updated")).all()
    for name, url, _ in rows:
        if urlsplit(url).scheme not in ("http", "https"):
            continue  # syslog: keyed by transport, host and port already
        new = key(url)
        if new == name:
            continue
        taken = bind.execute(sa.text("SELECT count(*) FROM forward_sinks WHERE name = :n"),
                             {"n": new}).scalar()
        if taken:  # another stored URL has this key: two receivers, never merged
            log.warning("forwarding sink %s keeps its key: another stored URL of the "
                        "same scheme, host, port and path (differing in user, password "
                        "or query) is %s; both stay distinct, with their own backlogs "
                        "(both are delivered; a Console started with both URLs refuses "
                        "them: give the receivers distinct paths or hosts)",
                        name, new)
            continue
        bind.execute(sa.text("UPDATE forward_sinks SET name = :n WHERE name = :o"),
                     {"n": new, "o": name})
        bind.execute(sa.text(
            "UPDATE forward_outbox SET sink = :n WHERE sink = :o AND NOT EXISTS "
            "(SELECT 1 FROM forward_outbox other WHERE other.sink = :n "
            "AND other.audit_id = forward_outbox.audit_id)"), {"n": new, "o": name})
        bind.execute(sa.text("DELETE FROM forward_outbox WHERE sink = :o"), {"o": name})


def upgrade() -> None:
    _rename(_new_name)
    seed_audit_ids()


def downgrade() -> None:
    _rename(_old_name)
