"""Alembic environment: the URL comes from the caller (``storage.migrate``), never from a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from storage.database import get_engine
from storage.models import Base

#: Any constant works; it only has to be the same for every migrating process.
MIGRATION_LOCK_KEY = 746_271_001


def run_migrations_online() -> None:
    """Migrate under an advisory lock so two deploy steps never migrate at once."""
    url = context.config.attributes["url"]
    engine = get_engine(url)
    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=not postgres,
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if postgres:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                connection.commit()


run_migrations_online()
