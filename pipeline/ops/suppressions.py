"""The suppression list as operators see it, from the CLI and the ops API alike.

Each change is one transaction and one audit line (who: ``cli`` or the ops API's
role). Lifting a suppression lets the next email to that address through; an
email already ended ``suppressed`` stays so (queue it again to send it).
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.audit import audit
from storage import suppressions
from storage.suppressions import InvalidAddress

__all__ = ["InvalidAddress", "add", "listing", "remove"]

#: The reason an operator's suppression gets when none is given.
DEFAULT_REASON = "added by an operator"


def listing(
    sessions: sessionmaker[Session], *, prefix: Optional[str] = None, after: Optional[str] = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Suppressions by address, as JSON-ready dicts."""
    with sessions() as session:
        return [item.as_json() for item in suppressions.page(session, prefix=prefix, after=after, limit=limit)]


def add(sessions: sessionmaker[Session], address: str, *, reason: Optional[str], who: str) -> bool:
    """Suppress ``address``; False if it was suppressed already (its first cause is kept)."""
    normalized = suppressions.normalize(address)
    with sessions.begin() as session:
        added = suppressions.add(session, normalized, reason=reason or DEFAULT_REASON, created_by=who)
    audit(who, "suppress", address=normalized, reason=reason, added=added)
    return added


def remove(sessions: sessionmaker[Session], address: str, *, who: str) -> bool:
    """Lift the suppression of ``address``; False if it was not suppressed."""
    normalized = suppressions.normalize(address)
    with sessions.begin() as session:
        removed = suppressions.remove(session, normalized)
    audit(who, "unsuppress", address=normalized, removed=removed)
    return removed
