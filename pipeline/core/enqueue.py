"""Sending a claimed row's message now, or handing the claim straight back.

A row claimed for a message (an email queued by a payment, a webhook event the
intake stored) is leased so that nobody else sends it while its message travels.
If RabbitMQ refuses that message, waiting out the lease (minutes) would leave the
row idle; handing the claim back at once lets the ticker's wake-up, which polls
every few seconds, send it instead.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.core import runtime
from pipeline.core.declare import DeclaredActor
from storage import leases
from storage.leases import LeasedTable

logger = logging.getLogger(__name__)


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
        with runtime.current().sessions.begin() as session:
            leases.release_claims(table, session, [row_id])
    except Exception:
        logger.exception("Could not hand %s(%s) back either; its lease will.", actor.actor_name, row_id)
    return False
