"""The Console's configuration: one object per process."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cnnf.errors import CnnfError

DEFAULT_DATA_DIR = "./var/console"
DATA_DIR_ENV = "CNNF_DATA_DIR"
SQLITE_FILE = "console.db"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host:
        raise CnnfError(f"--listen {listen!r}: expected HOST:PORT")
    try:
        number = int(port)
    except ValueError:
        raise CnnfError(f"--listen {listen!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise CnnfError(f"--listen {listen!r}: port {number} is out of range")
    return host.strip("[]"), number


def database_url(db: str | None, data_dir: Path) -> str:
    """Turn ``--db`` (a SQLite path, a ``postgresql://`` URL, or nothing) into a
    SQLAlchemy URL. Nothing means ``console.db`` inside the data directory."""
    if db is None or db == "":
        return f"sqlite:///{(data_dir / SQLITE_FILE).resolve()}"
    if db.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    if db.startswith(("postgresql+", "sqlite:")):
        return db
    if "://" in db:
        raise CnnfError(f"--db {db!r}: only SQLite paths and postgresql:// URLs are supported")
    return f"sqlite:///{Path(db).resolve()}"


@dataclass(frozen=True)
class ConsoleConfig:
    db_url: str
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8080
    # Imports carry whole policies; 4 MiB holds tens of thousands of rules.
    max_body_bytes: int = 4 * 1024 * 1024
    session_ttl_seconds: int = 12 * 3600
    login_failures_allowed: int = 5
    login_failure_window_seconds: float = 60.0
    csv_max_rows: int = 100_000
    # Audits and flows older than this are pruned (0 keeps them forever).
    retention_days: int = 30
    retention_interval_seconds: float = 3600.0
    # Audit forwarding: udp://HOST:PORT or tcp://HOST:PORT; http(s) webhook URLs.
    syslog: tuple[str, ...] = ()
    webhooks: tuple[str, ...] = ()
    # False: syslog and webhooks are added to the fleet's sinks in the store (none
    # given: the stored list stays in force). True: they replace it (none: clear).
    replace_sinks: bool = False
    # Defender long-polls read the store's revisions this often (other Console processes).
    link_store_poll_seconds: float = 1.0
    # ... and this often on PostgreSQL, where the change feed (LISTEN/NOTIFY) tells
    # of them; the poll only covers a notice lost with a replica killed mid-change.
    link_feed_poll_seconds: float = 10.0
    # Forwarding and retention run in the one process holding this lease (replicas
    # on one PostgreSQL); a dead holder's work is taken over within this many seconds.
    lease_seconds: float = 10.0
    # The Defender link's fast path (cnnf.console.api.fastpath); False: every
    # Defender request through the API's router (for comparison and diagnosis).
    link_fast_path: bool = True

    @classmethod
    def from_options(
        cls, *, listen: str = "127.0.0.1:8080", db: str | None = None,
        data_dir: Path | None = None, retention_days: int = 30,
        syslog: tuple[str, ...] = (), webhooks: tuple[str, ...] = (),
        replace_sinks: bool = False, link_fast_path: bool = True,
    ) -> ConsoleConfig:
        directory = data_dir if data_dir is not None else default_data_dir()
        host, port = parse_listen(listen)
        url = database_url(db, directory)
        if retention_days < 0:
            raise CnnfError(f"--retention-days {retention_days}: must be 0 (keep) or more")
        from cnnf.console.services.forwarding import (
            check_webhook_url,
            parse_syslog_url,
            same_named_sinks,
        )

        for target in syslog:
            parse_syslog_url(target)
        for target in webhooks:
            check_webhook_url(target)
        same_named_sinks(syslog, "--syslog")
        same_named_sinks(webhooks, "--webhook")
        return cls(db_url=url, data_dir=directory, host=host, port=port,
                   retention_days=retention_days, syslog=tuple(syslog),
                   webhooks=tuple(webhooks), replace_sinks=replace_sinks,
                   link_fast_path=link_fast_path)
