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
extension (13+): the database's owner may create it. SQLite (``dev``) gets the item index
only; its archive is small.

On a large production table, build the indexes beforehand with ``CREATE INDEX
CONCURRENTLY`` under these names: this migration then skips them (``IF NOT EXISTS``).
"""

from __future__ import annotations

from alembic import op

revision = "0011_dead_letter_search"
down_revision = "0010_periodic_runs"
branch_labels = None
depends_on = None

#: The item id as ``storage.models.DEAD_LETTER_ITEM_ID`` compiles on each dialect.
ITEM_ID = {
    "postgresql": "(CAST((args ->> 0) AS VARCHAR))",
    "sqlite": "CAST(JSON_EXTRACT(args, '$[0]') AS VARCHAR)",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(f"CREATE INDEX IF NOT EXISTS ix_dead_letters_item ON dead_letters ({ITEM_ID[dialect]}, actor)")
    if dialect == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(
            "CREATE INDEX IF NOT EXISTS ix_dead_letters_error_trgm ON dead_letters USING gin (error gin_trgm_ops)"
        )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_dead_letters_error_trgm")
    op.execute("DROP INDEX IF EXISTS ix_dead_letters_item")
