"""The Console's store: SQLAlchemy models and Alembic migrations."""

from cnnf.console.store.db import connect, migrate, revision_heads
from cnnf.console.store.models import Base

__all__ = ["Base", "connect", "migrate", "revision_heads"]
