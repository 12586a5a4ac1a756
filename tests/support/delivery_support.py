"""Resend delivery events for tests: bodies, signed by the ``svix`` package's own signer, and posted."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Optional, Union

import requests
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from svix.webhooks import Webhook

#: The two secrets TEST_ENVIRONMENT's RESEND_WEBHOOK_SECRET holds (a rotation in progress).
NEW_SECRET = "whsec_bWluYWxlc2gtdGVzdC1yZXNlbmQtZXZlbnRzLW5ldyE="
OLD_SECRET = "whsec_bWluYWxlc2gtdGVzdC1yZXNlbmQtZXZlbnRzLW9sZCE="
#: A secret nobody configured.
STRANGER_SECRET = "whsec_c29tZWJvZHktZWxzZS1lbnRpcmVseS0xMjM0NTY3OA=="
#: The intake's path.
PATH = "/api/email-events/resend"


def event(kind: str, provider_id: str, *, to: str = "someone@example.com", **data: Any) -> dict[str, Any]:
    """A Resend event body, as its docs show it."""
    return {
        "type": kind,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "email_id": provider_id,
            "from": "Minalesh <no-reply@minalesh.test>",
            "to": [to],
            "subject": "Your order",
            "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            **data,
        },
    }


def bounce(provider_id: str, *, to: str = "someone@example.com", kind: str = "Permanent") -> dict[str, Any]:
    return event(
        "email.bounced",
        provider_id,
        to=to,
        bounce={"type": kind, "subType": "General", "message": "550 5.1.1 user unknown"},
    )


def signed_headers(
    body: Union[str, bytes],
    *,
    secret: Union[str, bytes] = NEW_SECRET,
    msg_id: Optional[str] = None,
    at: Optional[datetime] = None,
) -> dict[str, str]:
    """The three Svix headers for ``body``, signed by ``svix.webhooks.Webhook``."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    data = body.decode("utf-8", "surrogateescape") if isinstance(body, bytes) else body
    signature = Webhook(secret).sign(msg_id, at, data)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": signature,
        "content-type": "application/json",
    }


def post_event(
    base_url: str,
    body: Union[dict[str, Any], str, bytes],
    *,
    secret: Union[str, bytes] = NEW_SECRET,
    msg_id: Optional[str] = None,
    at: Optional[datetime] = None,
    session: Optional[requests.Session] = None,
) -> requests.Response:
    """POST ``body`` (a dict is JSON-encoded) to the intake, signed; the answer."""
    raw = json.dumps(body) if isinstance(body, dict) else body
    headers = signed_headers(raw, secret=secret, msg_id=msg_id, at=at)
    payload = raw.encode("utf-8") if isinstance(raw, str) else raw
    return (session or requests).post(base_url + PATH, data=payload, headers=headers, timeout=30)


def stale(minutes: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


def count_events(sessions: sessionmaker[Session], *, svix_id: Optional[str] = None) -> int:
    with sessions() as session:
        if svix_id is None:
            return int(session.execute(text("SELECT COUNT(*) FROM email_events")).scalar_one())
        query = text("SELECT COUNT(*) FROM email_events WHERE svix_id = :id")
        return int(session.execute(query, {"id": svix_id}).scalar_one())


def email_row(sessions: sessionmaker[Session], email_id: int) -> Any:
    with sessions() as session:
        return session.execute(text("SELECT * FROM email_queue WHERE id = :id"), {"id": email_id}).one()


def sent_email(sessions: sessionmaker[Session], recipient: str, provider_id: Optional[str] = None) -> tuple[int, str]:
    """An email already sent (as a worker records it), with its provider id."""
    provider_id = provider_id or f"re_{uuid.uuid4().hex}"
    with sessions.begin() as session:
        email_id = session.execute(
            text(
                "INSERT INTO email_queue (recipient, subject, html, status, provider_message_id, sent_at) "
                "VALUES (:to, 'Hello', '<p>hi</p>', 'sent', :pid, now()) RETURNING id"
            ),
            {"to": recipient, "pid": provider_id},
        ).scalar_one()
    return int(email_id), provider_id


def suppression(sessions: sessionmaker[Session], address: str) -> Any:
    with sessions() as session:
        query = text("SELECT * FROM email_suppressions WHERE address = lower(:a)")
        return session.execute(query, {"a": address}).one_or_none()
