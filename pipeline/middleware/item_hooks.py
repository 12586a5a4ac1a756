"""What the pipeline tells an actor's item (an email, a webhook event) about its fate.

The backoff middleware decides *whether* and *when* a message is retried; the item's
row must then say so too (``retrying`` with its next time, or ``failed``), so the
database stays the truth an operator and the monitoring queries read. An actor
declares how with the ``item_hooks`` option.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional, Protocol

from dramatiq import Message
from sqlalchemy.orm import Session


class ItemHooks(Protocol):
    """Per-actor bookkeeping, called inside a transaction the pipeline owns."""

    def retrying(
        self, session: Session, message: Message, *, error: str, delay: timedelta, refund: bool
    ) -> None:
        """The attempt failed; the next is due after ``delay`` (``refund``: it did not count)."""

    def given_up(self, session: Session, message: Message, *, error: str) -> None:
        """No more attempts: mark the item failed. Must be idempotent (the archiver repeats it)."""

    def revive(self, session: Session, message: Message) -> bool:
        """``dlq replay``: put the failed item back in play, with a fresh attempt budget.

        Return False, changing nothing, when the item is not failed any more (it
        succeeded since, or is in play already): the replay then sends nothing. The
        item must be left leased so that the actor's periodic re-enqueue picks it up
        should the replayed message never arrive.
        """

    def describe(self, session: Session, message: Message) -> Optional[dict[str, Any]]:
        """``dlq show``: the item's current state as JSON-ready values; None if it is gone."""
