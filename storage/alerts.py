"""Statements on ``alert_state``: the one-row throttle of the dead-letter alerts.

Every archiver process sends digests; they agree on "at most one per interval"
by locking this row (``FOR UPDATE``) for the length of the decision.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.dialect import insert_ignoring_conflicts
from storage.models import AlertState

#: The id of the only row (a CHECK constraint keeps it the only one).
STATE_ID = 1


def lock_state(session: Session, *, now: datetime) -> AlertState:
    """The throttle row, locked for this transaction; created (counting from ``now``) if missing."""
    statement = (
        select(AlertState).where(AlertState.id == STATE_ID).with_for_update().execution_options(populate_existing=True)
    )
    state = session.scalars(statement).one_or_none()
    if state is None:
        insert_ignoring_conflicts(
            session,
            AlertState.__table__,
            {"id": STATE_ID, "counted_since": now},
            key="id",
        )
        state = session.scalars(statement).one()
    return state


def record_alert(session: Session, *, at: datetime) -> None:
    """A digest went out (or was attempted) at ``at``; the next one counts from there."""
    session.execute(
        update(AlertState)
        .where(AlertState.id == STATE_ID)
        .values(last_alert_at=at, counted_since=at)
        .execution_options(synchronize_session=False)
    )


def reset(session: Session, *, now: datetime) -> None:
    """Forget the last alert: the next dead letter alerts at once (tests, and after an incident)."""
    lock_state(session, now=now)
    session.execute(
        update(AlertState)
        .where(AlertState.id == STATE_ID)
        .values(last_alert_at=None, counted_since=now)
        .execution_options(synchronize_session=False)
    )
