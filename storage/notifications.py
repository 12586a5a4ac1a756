"""PostgreSQL's LISTEN/NOTIFY as a wake-up: the channel the ``email_queue`` trigger notifies.

Migration 0005 adds a statement-level trigger that runs ``NOTIFY minalesh_email_queue``
after every INSERT into ``email_queue``. A notification is only a hint: PostgreSQL
keeps none for a session that was not listening, so the listener's owner must poll
as well and fan out once after every (re)connect.

LISTEN needs a session of its own for as long as it listens: a direct connection,
not one through a transaction-pooling PgBouncer (which hands the session to other
clients between transactions, and so drops the LISTEN).
"""

from __future__ import annotations

import select
from datetime import datetime
from typing import Optional

import psycopg2
import psycopg2.extensions
from sqlalchemy import func, text
from sqlalchemy import select as sql_select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from storage.database import normalize_url
from storage.models import EmailQueue, EmailStatus

#: The channel of the ``email_queue`` insert trigger.
EMAIL_CHANNEL = "minalesh_email_queue"


class Listener:
    """One dedicated autocommit connection LISTENing on a channel."""

    def __init__(self, database_url: str, channel: str = EMAIL_CHANNEL, *, connect_timeout: int = 5) -> None:
        url = make_url(normalize_url(database_url)).set(drivername="postgresql")
        self._connection = psycopg2.connect(url.render_as_string(hide_password=False), connect_timeout=connect_timeout)
        self._connection.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with self._connection.cursor() as cursor:
            cursor.execute(f"LISTEN {channel}")

    def wait(self, timeout: float) -> int:
        """Block up to ``timeout`` seconds; return how many notifications arrived (0: none).

        Without a notification the connection is pinged, so a server that went away
        raises here (``psycopg2.Error``) instead of leaving the listener deaf.
        """
        ready, _, _ = select.select([self._connection], [], [], max(timeout, 0.0))
        if not ready:
            with self._connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        return self.pending()

    def pending(self) -> int:
        """How many notifications arrived already (0: none), without waiting."""
        self._connection.poll()
        count = len(self._connection.notifies)
        self._connection.notifies.clear()
        return count

    def close(self) -> None:
        try:
            self._connection.close()
        except psycopg2.Error:
            pass


def is_listenable(database_url: str) -> bool:
    """Only PostgreSQL has LISTEN; the SQLite of ``dev`` polls."""
    return make_url(normalize_url(database_url)).get_backend_name() == "postgresql"


def next_scheduled_at(session: Session, *, after: datetime) -> Optional[datetime]:
    """The earliest ``scheduled_at`` of a pending email still in the future, or None."""
    statement = sql_select(func.min(EmailQueue.scheduled_at)).where(
        EmailQueue.status == EmailStatus.PENDING.value, EmailQueue.scheduled_at > after
    )
    return session.scalar(statement)


def wake_listeners(session: Session) -> None:
    """Notify the email channel when ``session`` commits, as an insert does (no-op off PostgreSQL).

    Sent when a provider's outage pause ends: the emails it held back in the table
    are due again, and the wake-up claims them at once, in batches.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {EMAIL_CHANNEL}"))
