"""Every statement on ``email_suppressions``: addresses no email is sent to.

An address lands here from a delivery event (a permanent bounce, a complaint, the
provider's own ``email.suppressed``: ``storage.delivery_events``) or from an
operator, and leaves only by an operator's hand. Addresses are stored lower-cased
and looked up by ``lower(recipient)``, so ``Ann@Example.com`` and ``ann@example.com``
are one address. The first cause is kept: suppressing an address again changes nothing.

``hold_back`` is the one check of the send paths: called where an actor loads an
email or a batch, after its attempt started and before any provider request, it
ends the emails to suppressed addresses ``suppressed`` (the reason in ``last_error``),
so they take no slot of the provider's rate and no quota.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import Text, delete, func, literal, select, update
from sqlalchemy.orm import Session

from storage.clock import utcnow
from storage.dialect import insert_ignoring_conflicts
from storage.models import EmailQueue, EmailStatus, EmailSuppression
from storage.rowcount import rows_affected

#: The longest address kept (RFC 5321's path limit); longer input is refused.
MAX_ADDRESS_LENGTH = 320
#: What an address must look like: one ``@`` between two parts without spaces, controls or NUL
#: (also the ops API's JSON-schema pattern, so the two agree).
ADDRESS_PATTERN = r"^[^\s@\x00-\x1f\x7f-\x9f]+@[^\s@\x00-\x1f\x7f-\x9f]+$"
#: The longest reason an operator may give.
MAX_REASON_LENGTH = 500


class InvalidAddress(ValueError):
    """Not an email address this list can hold."""


@dataclass(frozen=True, kw_only=True)
class Suppression:
    """One suppressed address and what put it there."""

    address: str
    reason: str
    email_id: Optional[int]
    event_id: Optional[int]
    created_by: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: EmailSuppression) -> Suppression:
        return cls(
            address=row.address,
            reason=row.reason,
            email_id=row.email_id,
            event_id=row.event_id,
            created_by=row.created_by,
            created_at=row.created_at,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "reason": self.reason,
            "email_id": self.email_id,
            "event_id": self.event_id,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
        }


def normalize(address: str) -> str:
    """``address`` as the list keeps it: trimmed, lower-cased; ``InvalidAddress`` if it is not one."""
    cleaned = (address or "").strip().lower()
    if len(cleaned) > MAX_ADDRESS_LENGTH or not re.match(ADDRESS_PATTERN, cleaned):
        raise InvalidAddress(f"{address[:MAX_ADDRESS_LENGTH]!r} is not an email address")
    return cleaned


def add(
    session: Session,
    address: str,
    *,
    reason: str,
    created_by: str,
    email_id: Optional[int] = None,
    event_id: Optional[int] = None,
) -> bool:
    """Suppress ``address``; True if it was not suppressed already (then nothing changes)."""
    values = {
        "address": normalize(address),
        "reason": reason[:MAX_REASON_LENGTH],
        "created_by": created_by,
        "email_id": email_id,
        "event_id": event_id,
        "created_at": utcnow(),
    }
    return insert_ignoring_conflicts(session, EmailSuppression.__table__, values, key="address")


def remove(session: Session, address: str) -> bool:
    """Lift the suppression of ``address``; False if it was not suppressed."""
    statement = delete(EmailSuppression).where(EmailSuppression.address == normalize(address))
    return rows_affected(session, statement.execution_options(synchronize_session=False)) == 1


def get(session: Session, address: str) -> Optional[Suppression]:
    row = session.get(EmailSuppression, normalize(address))
    return Suppression.from_row(row) if row is not None else None


def page(
    session: Session, *, prefix: Optional[str] = None, after: Optional[str] = None, limit: int = 100
) -> list[Suppression]:
    """Suppressions by address (keyset paging after ``after``), those starting with ``prefix`` if given."""
    statement = select(EmailSuppression)
    if prefix:
        escaped = prefix.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(EmailSuppression.address.like(escaped + "%", escape="\\"))
    if after is not None:
        statement = statement.where(EmailSuppression.address > after)
    rows = session.scalars(statement.order_by(EmailSuppression.address).limit(limit))
    return [Suppression.from_row(row) for row in rows]


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(EmailSuppression)) or 0)


def reason_for(recipient: Any) -> Any:
    """Why the address in ``recipient`` (a column or a value) is suppressed, as a scalar subquery; NULL: it is not."""
    return (
        select(EmailSuppression.reason)
        .where(EmailSuppression.address == func.lower(func.trim(recipient)))
        .scalar_subquery()
    )


def hold_back(session: Session, email_ids: Sequence[int], *, first_attempt_only: bool = False) -> dict[int, str]:
    """End the emails among ``email_ids`` whose recipient is suppressed ``suppressed``: {email id: reason}.

    Only emails in an attempt (``sending``) are touched, so a sent or failed one is left
    as it is. ``first_attempt_only`` (a batch's members) holds back only emails never
    offered to the provider yet: a batch's retry must repeat its first request
    exactly, under its key, or the provider refuses it (409).
    """
    if not email_ids:
        return {}
    now = utcnow()
    reason = reason_for(EmailQueue.recipient)
    conditions = [
        EmailQueue.id.in_(list(email_ids)),
        EmailQueue.status == EmailStatus.SENDING.value,
        reason.is_not(None),
    ]
    if first_attempt_only:
        conditions.append(EmailQueue.attempts <= 1)
    statement = (
        update(EmailQueue)
        .where(*conditions)
        .values(
            status=EmailStatus.SUPPRESSED.value,
            last_error=literal("suppressed: ", Text()).concat(reason),
            locked_until=None,
            next_attempt_at=None,
            updated_at=now,
        )
        .returning(EmailQueue.id, EmailQueue.last_error)
        .execution_options(synchronize_session=False)
    )
    return {int(email_id): str(error) for email_id, error in session.execute(statement)}
