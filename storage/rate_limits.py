"""A provider's request rate shared by every worker host, kept in one row.

Resend allows a team a few requests a second; workers on several hosts must share
that budget, and RabbitMQ has no notion of it. Each request reserves the next free
slot with one atomic UPDATE, so slots are handed out in order without a lock held
across the request.
"""

from __future__ import annotations

import time

from sqlalchemy import case, update
from sqlalchemy.orm import Session

from storage.dialect import insert_ignoring_conflicts
from storage.models import RateLimitSlot


def reserve_slot(session: Session, name: str, *, per_second: float) -> float:
    """Reserve the next request slot of ``name``; return its time (epoch seconds).

    The caller waits until that time before making the request. Commit promptly:
    the row stays locked until the transaction ends.
    """
    interval = 1.0 / per_second
    now = time.time()
    start = case((RateLimitSlot.next_slot < now, now), else_=RateLimitSlot.next_slot)
    statement = (
        update(RateLimitSlot)
        .where(RateLimitSlot.name == name)
        .values(next_slot=start + interval)
        .returning(RateLimitSlot.next_slot)
        .execution_options(synchronize_session=False)
    )
    next_slot = session.scalars(statement).one_or_none()
    if next_slot is None:
        insert_ignoring_conflicts(
            session,
            RateLimitSlot.__table__,  # type: ignore[arg-type]
            {"name": name, "next_slot": now},
            key="name",
        )
        next_slot = session.scalars(statement).one()
    return float(next_slot) - interval
