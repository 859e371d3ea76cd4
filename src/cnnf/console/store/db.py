"""Engines and migrations. Alembic is configured in code (no alembic.ini): the
migrations live in ``migrations/`` beside this file and run at Console start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def connect(url: str) -> Engine:
    """An engine for ``url``; for SQLite, the parent directory is created. Its
    errors do not quote the statement's parameters: the Console logs store errors,
    and parameters carry secrets (a webhook's URL, a token's hash)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False},
                               hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # Ten connections kept open, ten more for bursts: with the default five, a
    # Console ingesting reports from a few dozen Defenders at once opened and closed
    # a PostgreSQL connection (a backend process) for most batches. At most 20 per
    # replica, plus two for the change feed (PostgreSQL allows 100 by default).
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10,
                         hide_parameters=True)


# Replicas starting at once on one PostgreSQL migrate one after the other.
MIGRATION_LOCK = 0x636E6E66  # "cnnf"


def migrate(engine: Engine, target: str = "head") -> None:
    """Bring the database to ``target`` (an empty database included), in one transaction."""
    config = alembic_config()
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, target)


def downgrade(engine: Engine, target: str) -> None:
    """Take the database back to ``target`` (``base`` empties it)."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, target)


def revision_heads() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
