"""``minalesh-workers db``: the schema's migrations."""

from __future__ import annotations

import click

from pipeline.cli.common import ready_settings
from storage import migrate


@click.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration (safe to run again, and concurrently)."""
    settings = ready_settings(broker=False, schema=False)  # the database must answer; its schema is the job
    migrate.upgrade(settings.database_url)
    click.echo(f"Database at revision {migrate.current_revision(settings.database_url)}.")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and the newest one shipped."""
    settings = ready_settings(broker=False, schema=False)
    click.echo(f"current: {migrate.current_revision(settings.database_url)}  head: {migrate.head_revision()}")
