"""The operators' pauses of sending: all of it, or bulk only, for a while or until resumed.

An operator pauses with ``minalesh-workers sending`` or ``POST /api/ops/sending/pause``;
the pause is a row of ``sending_pauses`` every host sees. A held send takes no slot
of the provider's rate and goes back to the broker (``RateLimited``: no retry
spent), asking again every ``OPERATOR_PAUSE_RECHECK_SECONDS`` at most, and the
fan-out claims none of the held kind meanwhile. The provider's own pauses (a 429,
a quota, an outage) are the pacing's (``pipeline.providers.pacing``), not these.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from sqlalchemy.orm import Session, sessionmaker

from storage import sending_pauses

#: A send held by an operator's pause with no end (or a far one) asks again after this long.
OPERATOR_PAUSE_RECHECK_SECONDS = 30.0
#: Without pacing (EMAIL_RATE_LIMIT_PER_SECOND=0) a process reads the operators' pauses this often.
HELD_RECHECK_SECONDS = 1.0


def held_wait(until: Optional[float], now: float) -> Optional[float]:
    """How long a send held by a pause ending at ``until`` waits before asking again; None: not held."""
    if until is None or until <= now:
        return None
    return min(until - now, OPERATOR_PAUSE_RECHECK_SECONDS)


class OperatorPauses:
    """The operators' pauses as this process reads and writes them."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        #: Unpaced sending only: {transactional: (when read, the pauses' end)}.
        self._held: dict[bool, tuple[float, Optional[float]]] = {}

    @staticmethod
    def held_until(session: Session, *, transactional: bool, now: float) -> Optional[float]:
        """When the pauses holding sends of this kind end (``inf``: until resumed), in the caller's transaction."""
        return sending_pauses.held_until(session, transactional=transactional, now=now)

    def held_until_cached(self, *, transactional: bool, now: float) -> Optional[float]:
        """``held_until`` read at most once every ``HELD_RECHECK_SECONDS`` per kind: no query per email."""
        checked_at, until = self._held.get(transactional, (float("-inf"), None))
        if now - checked_at >= HELD_RECHECK_SECONDS:
            with self.sessions() as session:
                until = self.held_until(session, transactional=transactional, now=now)
            self._held[transactional] = (now, until)
        return until

    def holds(self, *, transactional: bool) -> bool:
        """Whether an operator's pause holds sends of this kind now (the fan-out then claims none)."""
        with self.sessions() as session:
            return self.held_until(session, transactional=transactional, now=time.time()) is not None

    def pause(self, scope: str, *, minutes: Optional[float], reason: Optional[str], by: str) -> None:
        """An operator's pause of ``scope`` (``all``, ``bulk``), for ``minutes`` or until resumed."""
        now = time.time()
        until = now + minutes * 60 if minutes else None
        with self.sessions.begin() as session:
            sending_pauses.pause(session, scope, until=until, reason=reason, by=by, now=now)

    def resume(self, scope: str) -> bool:
        """End an operator's pause of ``scope``; True if one was in force."""
        with self.sessions.begin() as session:
            return sending_pauses.resume(session, scope)

    @staticmethod
    def state(session: Session, *, now: float) -> dict[str, Any]:
        """For ``stats``, in the caller's transaction: whether all or bulk sending is held, and each scope's pause."""
        operator = sending_pauses.in_force(session, now=now)
        return {
            "paused_by_operator": operator[sending_pauses.ALL] is not None,
            "bulk_paused": operator[sending_pauses.BULK] is not None,
            "operator_pauses": operator,
        }
