"""Sending claimed rows' messages now, or handing the claims straight back.

A row claimed for a message (an email queued by a payment, a webhook event the
intake stored, the emails a fan-out claimed) is leased so that nobody else sends
it while its message travels. If RabbitMQ refuses that message, waiting out the
lease (minutes) would leave the row idle; handing the claim back at once lets the
ticker's wake-up, which polls every few seconds, send it instead.

``send_each`` sends a claim's messages in order and, at the first refusal, hands
back the claims of that message and of every one after it, then raises: a
periodic job fails and says so. ``send_or_release`` sends one and never raises:
its caller (the intake, the host API) has already stored the row and answered for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from pipeline.core import runtime
from pipeline.core.declare import DeclaredActor
from storage import leases
from storage.leases import LeasedTable

logger = logging.getLogger(__name__)

#: One message to send: an actor and what it takes (a row's id, a batch's, or a group's list of row ids).
Send = tuple[DeclaredActor, Any]
#: The row ids the unsent messages stand for, read in the transaction that releases them.
Claims = Callable[[Session, Sequence[Send]], list[int]]


def row_ids(_session: Session, unsent: Sequence[Send]) -> list[int]:
    """The claims of messages that each carry their own row's id."""
    return [item for _, item in unsent]


def send_each(sends: Sequence[Send], table: LeasedTable[Any], *, claims: Claims = row_ids) -> None:
    """Send every message in order; at a refusal hand back the claims of the unsent ones, and raise."""
    for position, (actor, item) in enumerate(sends):
        try:
            actor.send(item)
        except Exception:
            hand_back(table, sends[position:], claims=claims)
            raise


def send_or_release(actor: DeclaredActor, table: LeasedTable[Any], row_id: int) -> bool:
    """Send ``actor(row_id)``; False (logged) when the broker refused and the claim went back."""
    try:
        actor.send(row_id)
        return True
    except Exception as exc:
        logger.warning(
            "Could not enqueue %s(%s) now (%s); handed back to the next fan-out.",
            actor.actor_name,
            row_id,
            type(exc).__name__,
        )
    try:
        hand_back(table, [(actor, row_id)])
    except Exception:
        logger.exception("Could not hand %s(%s) back either; its lease will.", actor.actor_name, row_id)
    return False


def hand_back(table: LeasedTable[Any], unsent: Sequence[Send], *, claims: Claims = row_ids) -> None:
    """Release the claims of the ``unsent`` messages, in one transaction of their own."""
    with runtime.current().sessions.begin() as session:
        leases.release_claims(table, session, claims(session, unsent))
