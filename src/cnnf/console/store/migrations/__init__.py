"""Alembic migrations of the Console's store."""
