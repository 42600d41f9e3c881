"""Alembic migrations of the service database (``env.py``, ``versions/``) and their runner."""

from service.migrations.runner import (
    MIGRATIONS_DIR,
    TABLE_MODULES,
    current,
    head,
    new_revision,
    schema_diff,
    target_metadata,
    upgrade,
)

__all__ = ["MIGRATIONS_DIR", "TABLE_MODULES", "current", "head", "new_revision", "schema_diff", "target_metadata",
           "upgrade"]
