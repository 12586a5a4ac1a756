"""The few statements whose spelling differs between PostgreSQL and SQLite."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.rowcount import rows_affected


def insert_ignoring_conflicts(session: Session, table: Table, values: dict[str, Any], key: str) -> bool:
    """INSERT a row unless one with the same ``key`` exists; True when it was inserted."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(table).values(**values).on_conflict_do_nothing(index_elements=[key])
    return rows_affected(session, statement) == 1
