"""What migrations 0010 and 0011 share: the audit id high-water mark on SQLite, and
the tables a downgrade of 0010 keeps aside (names frozen: stores hold them)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Outbox rows a sink refused on their own (parked), kept out of delivery by a
# downgrade below 0010 (the older outbox has no ``parked`` column, and would send
# them again); 0010's upgrade puts them back, parked.
KEPT_PARKED = "cnnf_kept_parked"
# The highest audit id handed out, kept by a downgrade below 0010 on SQLite (where
# that removes AUTOINCREMENT, and with it SQLite's own record of it).
KEPT_AUDIT_IDS = "cnnf_kept_audit_ids"


def tables() -> set[str]:
    return set(sa.inspect(op.get_bind()).get_table_names())


def highest_audit_id() -> int:
    """The highest audit id the store holds any record of: the audits, the outbox
    (parked rows included), the ids a downgrade kept, SQLite's sequence."""
    bind = op.get_bind()
    have = tables()
    queries = ["SELECT max(id) FROM audits", "SELECT max(audit_id) FROM forward_outbox"]
    if KEPT_PARKED in have:
        queries.append(f"SELECT max(audit_id) FROM {KEPT_PARKED}")
    if KEPT_AUDIT_IDS in have:
        queries.append(f"SELECT max(high) FROM {KEPT_AUDIT_IDS}")
    if _has_sequence():
        queries.append("SELECT max(seq) FROM sqlite_sequence WHERE name = 'audits'")
    return max(int(bind.execute(sa.text(q)).scalar() or 0) for q in queries)


def _has_sequence() -> bool:
    """SQLite keeps AUTOINCREMENT's counters in ``sqlite_sequence``, made with the
    first such table (the inspector does not list it)."""
    bind = op.get_bind()
    return bind.dialect.name == "sqlite" and bool(bind.execute(sa.text(
        "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'")).scalar())


def seed_audit_ids() -> None:
    """SQLite: start ``audits``' AUTOINCREMENT after the highest id ever handed out,
    so that ids never repeat (receivers drop forwarded repeats by id) even when
    retention had pruned every audit. Needs ``audits`` to have AUTOINCREMENT."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return  # PostgreSQL's sequence never goes back
    high = highest_audit_id()
    if not high or not _has_sequence():
        return
    seq = bind.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'audits'")
                       ).scalar()
    if seq is None:
        bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('audits', :h)"),
                     {"h": high})
    elif int(seq) < high:
        bind.execute(sa.text("UPDATE sqlite_sequence SET seq = :h WHERE name = 'audits'"),
                     {"h": high})
