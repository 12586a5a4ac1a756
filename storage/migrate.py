"""Apply the Alembic migrations that ship inside the package, from any directory."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from storage.database import get_engine

#: The migrations travel with the installed package, not with a checkout.
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: Where Alembic keeps the revision a database is at (its default name).
VERSION_TABLE = "alembic_version"


def _config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision``; a no-op when it is there already."""
    command.upgrade(_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None before the first migration."""
    with get_engine(url).connect() as connection:
        return revision_of(connection)


def revision_of(connection: Connection) -> str | None:
    """The revision of the database ``connection`` is on, or None before the first migration.

    Read from Alembic's version table itself: configuring Alembic's context to read it
    logs two INFO lines (the dialect) each time, noise in a check done at every start.
    """
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}"))


def head_revision() -> str | None:
    """The newest revision shipped with this package."""
    return _scripts().get_current_head()


def shipped_revisions() -> frozenset[str]:
    """Every revision shipped with this package; a database at another was migrated by a newer release."""
    return frozenset(script.revision for script in _scripts().walk_revisions())


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config(""))
