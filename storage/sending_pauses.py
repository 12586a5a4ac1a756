"""Statements on ``sending_pauses``: an operator's pause of all sending, or of bulk sending only.

The provider's own pauses (a 429, a quota) live in ``rate_limit_slots`` and end by
themselves; an operator's pause is a row here, shared by every worker host, that
lasts until ``until`` or, without one, until it is resumed. ``holds`` is the SQL
condition ``storage.rate_limits.take_slot`` adds, so a held send takes no slot.
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import delete, exists, or_, select
from sqlalchemy.orm import Session

from storage.dialect import insert_ignoring_conflicts
from storage.models import SendingPause
from storage.rowcount import rows_affected

#: Holds every send.
ALL = "all"
#: Holds bulk sends; transactional ones go.
BULK = "bulk"
SCOPES = (ALL, BULK)


def scopes_holding(*, transactional: bool) -> tuple[str, ...]:
    """The pauses that hold a send of this kind."""
    return (ALL,) if transactional else (ALL, BULK)


def _in_force(now: float) -> Any:
    return or_(SendingPause.until.is_(None), SendingPause.until > now)


def holds(*, transactional: bool, now: float) -> Any:
    """SQL: true while a pause holds a send of this kind."""
    return exists().where(SendingPause.scope.in_(scopes_holding(transactional=transactional)), _in_force(now))


def pause(session: Session, scope: str, *, until: Optional[float], reason: Optional[str], by: str, now: float) -> None:
    """Pause ``scope`` until ``until`` (None: until resumed); a second pause replaces the first."""
    session.execute(delete(SendingPause).where(SendingPause.scope == scope))
    values = {"scope": scope, "until": until, "reason": reason, "paused_at": now, "paused_by": by}
    insert_ignoring_conflicts(session, SendingPause.__table__, values, key="scope")


def resume(session: Session, scope: str) -> bool:
    """End ``scope``'s pause; True if one was in force."""
    statement = delete(SendingPause).where(SendingPause.scope == scope).execution_options(synchronize_session=False)
    return bool(rows_affected(session, statement))


def in_force(session: Session, *, now: float) -> dict[str, Optional[dict[str, Any]]]:
    """Each scope's pause in force now (``until`` None: until resumed), or None."""
    found: dict[str, Optional[dict[str, Any]]] = dict.fromkeys(SCOPES)
    for row in session.scalars(select(SendingPause).where(_in_force(now))):
        found[row.scope] = {"until": row.until, "reason": row.reason, "paused_at": row.paused_at, "by": row.paused_by}
    return found


def held_until(session: Session, *, transactional: bool, now: float) -> Optional[float]:
    """When the pauses holding this kind of send end: None if none does, ``inf`` if one has no end."""
    statement = select(SendingPause.until).where(
        SendingPause.scope.in_(scopes_holding(transactional=transactional)), _in_force(now)
    )
    ends = [float("inf") if until is None else until for until in session.scalars(statement)]
    return max(ends) if ends else None
