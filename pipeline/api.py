"""The Python API for host applications written in Python.

``queue_email`` writes the row like the SQL path does and, once the row is
committed, sends its message at once so the email does not wait for the next
tick. If that send fails (RabbitMQ unreachable), the email is safe in the table:
its short claim runs out and the next fan-out sends it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import event
from sqlalchemy.orm import Session

from actors.emails import sender_of
from pipeline.bootstrap import bootstrap
from pipeline.core import runtime
from pipeline.core.enqueue import send_or_release
from pipeline.core.settings import Settings
from storage import emails
from storage.clock import minutes, utcnow
from storage.models import EmailPriority


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
