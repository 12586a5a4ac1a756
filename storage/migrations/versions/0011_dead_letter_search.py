"""What the dead-letter search (``dlq list -q``, the ops API's ``q``) reads fast on a big archive.

Revision ID: 0011_dead_letter_search
Revises: 0010_periodic_runs
Create Date: 2026-11-29

A search follows an email (by recipient), a batch (by a member's recipient) or a webhook
event (by event id or order id) to its dead letters, whose message's first argument is
the item's id (``storage.dead_letters.search_clause``). Two ways to index that were open:

* a new nullable ``item_id`` column, written at archive time and backfilled here: the
  archive would then have to know which actors take an item id (it knows no actor), the
  backfill rewrites every row of a big table inside this migration, and a row archived
  by an older release during a rolling deploy would stay unfilled;
* an expression index on what the rows already hold, chosen: ``ix_dead_letters_item``
  on ``(args ->> 0)::varchar`` then ``actor``, exactly the expression the search compares
  (PostgreSQL matches an expression index only on the same expression). Nothing to fill,
  nothing the archiver writes differently, old rows covered at once.

``ix_dead_letters_error_trgm``: a trigram GIN index (``pg_trgm``) so that "the error
contains this text, any case" (``error ILIKE '%…%'``) is an index lookup rather than a
scan of every traceback-sized error. ``pg_trgm`` ships with PostgreSQL and is a trusted
extension (13+): a role with CREATE on the database may create it. A role without that
right, or a server without the extension, gets a warning and no trigram index (in a
savepoint, so the rest of the migration stands): the error-text search then scans, and
``CREATE EXTENSION pg_trgm`` by an administrator plus a later run of this index's
statement make it fast. SQLite (``dev``) gets the item index only; its archive is small.

On a large production table, build the indexes beforehand with ``CREATE INDEX
CONCURRENTLY`` under these names: this migration then skips them (``IF NOT EXISTS``).
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

logger = logging.getLogger("alembic.runtime.migration")

revision = "0011_dead_letter_search"
down_revision = "0010_periodic_runs"
branch_labels = None
depends_on = None

#: The item id as ``storage.models.DEAD_LETTER_ITEM_ID`` compiles on each dialect.
ITEM_ID = {
    "postgresql": "(CAST((args ->> 0) AS VARCHAR))",
    "sqlite": "CAST(JSON_EXTRACT(args, '$[0]') AS VARCHAR)",
}
#: Error text, any case, as an index lookup (``error ILIKE '%…%'``).
TRIGRAM_INDEX = "CREATE INDEX IF NOT EXISTS ix_dead_letters_error_trgm ON dead_letters USING gin (error gin_trgm_ops)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(f"CREATE INDEX IF NOT EXISTS ix_dead_letters_item ON dead_letters ({ITEM_ID[dialect]}, actor)")
    if dialect == "postgresql":
        _trigram_index()


def _trigram_index() -> None:
    """The error-text index, if this role may have ``pg_trgm``; else a warning (see above)."""
    savepoint = op.get_bind().begin_nested()
    try:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(TRIGRAM_INDEX)
    except DBAPIError as exc:
        savepoint.rollback()
        logger.warning("No trigram index on dead_letters.error (%s): the error-text search will scan.", exc.orig)
    else:
        savepoint.commit()


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_dead_letters_error_trgm")
    op.execute("DROP INDEX IF EXISTS ix_dead_letters_item")
