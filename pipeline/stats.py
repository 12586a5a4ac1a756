"""The figures of ``minalesh-workers stats``, one section per kind of work."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from storage import dead_letters, emails, inventory, webhooks


def collect(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions() as session:
        return {
            "emails": emails.count_by_status(session),
            "dead_letters": dead_letters.count(session),
            "dead_letters_by_queue": dead_letters.count_by_queue(session),
            "reservations": inventory.reservation_stats(session),
            "webhooks": webhooks.stats(session),
        }
