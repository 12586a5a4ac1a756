"""What the pipeline tells an actor's item (an email, a webhook event) about its fate.

The backoff middleware decides *whether* and *when* a message is retried; the item's
row must then say so too (``retrying`` with its next time, or ``failed``), so the
database stays the truth an operator and the monitoring queries read. An actor
declares how with the ``item_hooks`` option; ``LeasedItemHooks`` serves every
actor whose item is a leased, attempt-counted row (``storage.leases``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Optional, Protocol

from dramatiq import Broker
from dramatiq.errors import ActorNotFound
from sqlalchemy.orm import Session

from pipeline.core.messages import AnyMessage
from storage import leases
from storage.leases import LeasedTable


class ItemHooks(Protocol):
    """Per-actor bookkeeping, called inside a transaction the pipeline owns."""

    def retrying(self, session: Session, message: AnyMessage, *, error: str, delay: timedelta, refund: bool) -> None:
        """The attempt failed; the next is due after ``delay`` (``refund``: it did not count)."""

    def given_up(self, session: Session, message: AnyMessage, *, error: str) -> None:
        """No more attempts: mark the item failed. Must be idempotent (the archiver repeats it)."""

    def revive(self, session: Session, message: AnyMessage) -> bool:
        """``dlq replay``: put the failed item back in play, with a fresh attempt budget.

        Return False, changing nothing, when the item is not failed any more (it
        succeeded since, or is in play already): the replay then sends nothing. The
        item must be left leased so that the actor's periodic re-enqueue picks it up
        should the replayed message never arrive.
        """

    def describe(self, session: Session, message: AnyMessage) -> Optional[dict[str, Any]]:
        """``dlq show``: the item's current state as JSON-ready values; None if it is gone."""


class LeasedItemHooks:
    """The item hooks of an actor whose item is a row of a ``LeasedTable`` (an email, an event).

    The actor's first argument stands for its rows (``rows``): the row id itself by
    default, a batch's id, or a group's list of ids. ``lease`` is read when needed, so a
    process bootstrapped after the actor was declared uses its own settings.
    """

    def __init__(
        self,
        table: LeasedTable[Any],
        *,
        lease: Callable[[], timedelta],
        describe: Callable[[Session, Any], Optional[dict[str, Any]]],
        idempotent_for: Optional[timedelta] = None,
        rows: Callable[[Session, Any], leases.Rows] = lambda _session, row_id: row_id,
        reached: Optional[Callable[[Session, leases.Rows], Optional[tuple[str, datetime]]]] = None,
    ) -> None:
        self.table = table
        #: The rows a message's first argument stands for: itself, a batch's members, or a group's.
        self.rows = rows
        self.lease = lease
        self.describe_row = describe
        #: How long the provider remembers an attempt's idempotency key (Resend: 24 hours);
        #: a replay of an item that died longer ago than this may be done twice.
        self.idempotent_for = idempotent_for
        #: Which provider an attempt at the rows last may have reached, and when (``dlq replay``'s guard).
        self.reached = reached

    def retrying(self, session: Session, message: AnyMessage, *, error: str, delay: timedelta, refund: bool) -> None:
        rows = self.rows(session, _item(message))
        leases.schedule_retry(
            self.table,
            session,
            rows,
            error=error,
            delay=delay,
            lease=self.lease(),
            refund=refund,
            holder=message.message_id,
        )

    def given_up(self, session: Session, message: AnyMessage, *, error: str) -> None:
        rows = self.rows(session, _item(message))
        leases.give_up(self.table, session, rows, error=error, holder=message.message_id)

    def revive(self, session: Session, message: AnyMessage) -> bool:
        return leases.revive(self.table, session, self.rows(session, _item(message)), lease=self.lease())

    def describe(self, session: Session, message: AnyMessage) -> Optional[dict[str, Any]]:
        return self.describe_row(session, _item(message))

    def last_reached(self, session: Session, message: AnyMessage) -> Optional[tuple[str, datetime]]:
        """The provider an attempt at the item last may have reached, and when; None if none is known."""
        if self.reached is None:
            return None
        return self.reached(session, self.rows(session, _item(message)))


def hooks_of(broker: Broker, actor_name: str) -> Optional[ItemHooks]:
    """The ``item_hooks`` option of ``actor_name`` on ``broker``; None without, or for an actor this release lacks."""
    try:
        return broker.get_actor(actor_name).options.get("item_hooks")
    except ActorNotFound:
        return None


def _item(message: AnyMessage) -> Any:
    """What a message's actor's ``rows`` and ``describe`` are given: its id argument, or a group's list of ids."""
    item = message.args[0]
    return item if isinstance(item, list) else int(item)
