"""email_queue's indexes over the rows they serve: fewer index entries per email sent.

Revision ID: 0014_email_queue_indexes
Revises: 0012_rate_limit_warm_up
Create Date: 2026-12-03

Every status change of an email writes a new row version that no index can skip
(``status`` is in several of them, so no update is HOT), and a new version gets an
entry in every index whose predicate it meets. An email sent one per request wrote
five versions (insert, claim, ``sent_alone``, attempt, sent) into ten indexes, partial
ones aside: about 44 index entries (issue 21). Four indexes served queries that only
ever look at some rows; they now cover only those:

* ``ix_email_queue_due`` (status, scheduled_at) ``WHERE status = 'pending'``: the
  wake-up's next scheduled email (``storage.notifications.next_scheduled_at``) and the
  pending arm of a claim ask for pending rows only;
* ``ix_email_queue_lease`` (status, locked_until) ``WHERE status IN ('queued',
  'sending', 'retrying')``: the emails in flight (``storage.emails.in_flight``) and the
  leases that ran out (a claim's other arm) are leased rows;
* ``ix_email_queue_sent_at`` (sent_at) ``WHERE sent_at IS NOT NULL``: the activity per
  minute (``sent_at >= since``) never matches a NULL;
* ``ix_email_queue_batch_id`` (batch_id) ``WHERE batch_id IS NOT NULL``: a batch's
  members (``batch_id = ?``, ``IN (…)``); an email sent alone is in no batch.

The others stay whole: the primary key; ``ix_email_queue_claim`` (status, priority, id),
which claims walk and ``/metrics`` counts sent and failed emails by priority from;
``ix_email_queue_status_id``, the ops API's newest-first list of any status (sent
included); ``ix_email_queue_recipient_lower``, its search; the partial
``ix_email_queue_due_since`` and ``ix_email_queue_failed_at``. With ``sent_alone``
written with the claim (``storage.leases.claim_due``), an email sent alone writes
four versions and about 23 entries.

On a large production table, build the new indexes beforehand with ``CREATE INDEX
CONCURRENTLY`` under temporary names, drop the old ones and rename: this migration
then only finds them (it drops and creates by name).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_email_queue_indexes"
down_revision = "0013_delivery_events"
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")
LEASED = sa.text("status IN ('queued', 'sending', 'retrying')")
SENT_AT = sa.text("sent_at IS NOT NULL")
IN_A_BATCH = sa.text("batch_id IS NOT NULL")

#: name: (columns, predicate)
PARTIAL = {
    "ix_email_queue_due": (["status", "scheduled_at"], PENDING),
    "ix_email_queue_lease": (["status", "locked_until"], LEASED),
    "ix_email_queue_sent_at": (["sent_at"], SENT_AT),
    "ix_email_queue_batch_id": (["batch_id"], IN_A_BATCH),
}


def upgrade() -> None:
    for name, (columns, where) in PARTIAL.items():
        op.drop_index(name, table_name="email_queue", if_exists=True)
        op.create_index(name, "email_queue", columns, postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    for name, (columns, _where) in PARTIAL.items():
        op.drop_index(name, table_name="email_queue")
        op.create_index(name, "email_queue", columns)
