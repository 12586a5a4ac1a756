"""The Python API for host applications written in Python: emails and stock.

``queue_email`` writes the row like the SQL path does and, once the row is
committed, sends its message at once so the email does not wait for the next
tick. If that send fails (RabbitMQ unreachable), the email is safe in the table:
its short claim runs out and the next fan-out sends it.

``reserve``, ``commit`` and ``release`` are ``storage.inventory``'s, with what a host
has no settings object for filled in from its environment, read at each call (stock
needs no broker, so nothing is bootstrapped): the hold of RESERVATION_TIMEOUT_MINUTES
when none is named, and a transaction of their own on DATABASE_URL when no session
is passed (with one, they join the caller's).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Optional, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

from actors.emails import sender_of
from pipeline.bootstrap import bootstrap
from pipeline.core import runtime
from pipeline.core.enqueue import send_or_release
from pipeline.core.settings import Settings
from storage import emails, inventory
from storage.clock import minutes, utcnow
from storage.database import get_sessionmaker
from storage.models import EmailPriority

T = TypeVar("T")


def queue_email(
    recipient: str,
    subject: str,
    *,
    html: Optional[str] = None,
    text: Optional[str] = None,
    template: Optional[str] = None,
    template_data: Optional[dict[str, Any]] = None,
    scheduled_at: Optional[datetime] = None,
    priority: str = EmailPriority.TRANSACTIONAL.value,
    session: Optional[Session] = None,
) -> int:
    """Queue one email and return its id.

    With ``session`` the row joins the caller's transaction (an order and its
    confirmation commit together) and the message goes out after that commit;
    a rollback sends nothing. Without, the email is committed here.
    ``priority="bulk"`` for newsletters and campaigns: they yield to every
    transactional email at the provider's limit.
    """
    kind = EmailPriority(priority)
    current = _runtime()
    due_now = scheduled_at is None or scheduled_at <= utcnow()
    fields: dict[str, Any] = {
        "recipient": recipient,
        "subject": subject,
        "html": html,
        "text": text,
        "template": template,
        "template_data": template_data,
        "scheduled_at": scheduled_at,
        "claim_for": minutes(current.settings.email_lease_minutes) if due_now else None,
        "priority": kind,
    }
    if session is not None:
        email_id = emails.enqueue(session, **fields)
        event.listen(session, "after_commit", lambda _session: _send_now(email_id, due_now, kind), once=True)
        return email_id
    with current.sessions.begin() as own:
        email_id = emails.enqueue(own, **fields)
    _send_now(email_id, due_now, kind)
    return email_id


def _runtime() -> runtime.Runtime:
    """The host process's runtime, bootstrapped from its environment on first use."""
    if not runtime.is_installed():
        bootstrap(Settings.from_env())
    return runtime.current()


def _send_now(email_id: int, due_now: bool, priority: EmailPriority) -> None:
    if not due_now:
        return
    send_or_release(sender_of(priority), emails.TABLE, email_id)


def reserve(
    product_id: int,
    quantity: int,
    ttl_minutes: Optional[float] = None,
    *,
    order_id: Optional[str] = None,
    session: Optional[Session] = None,
) -> int:
    """Hold ``quantity`` units for ``ttl_minutes`` (RESERVATION_TIMEOUT_MINUTES if None); the reservation id."""
    hold = Settings.from_env().reservation_timeout_minutes if ttl_minutes is None else ttl_minutes
    return _in_transaction(
        session, lambda s: inventory.reserve(s, product_id, quantity, ttl_minutes=hold, order_id=order_id)
    )


def commit(reservation_id: int, *, session: Optional[Session] = None) -> bool:
    """The order was paid: the reservation's units leave stock; False if it was no longer active."""
    return _in_transaction(session, lambda s: inventory.commit(s, reservation_id))


def release(reservation_id: int, *, session: Optional[Session] = None) -> bool:
    """Give the reservation's units back; False if it was no longer active."""
    return _in_transaction(session, lambda s: inventory.release(s, reservation_id))


def _in_transaction(session: Optional[Session], work: Callable[[Session], T]) -> T:
    """Run ``work`` in the caller's transaction, or in one of its own committed on success."""
    if session is not None:
        return work(session)
    with get_sessionmaker(Settings.from_env().database_url).begin() as own:
        return work(own)
