"""An email as MIME bytes, as the outbox writes it and SMTP sends it: text and html parts, Message-ID, Date."""

from __future__ import annotations

import email.message
import email.policy
import email.utils
from typing import Optional

from pipeline.providers.base import OutgoingEmail


def as_mime(outgoing: OutgoingEmail, *, message_id: str, date: Optional[float] = None) -> bytes:
    """``outgoing`` as a ``multipart/alternative`` message (text first, then html), or one part."""
    return as_message(outgoing, message_id=message_id, date=date).as_bytes()


def as_message(outgoing: OutgoingEmail, *, message_id: str, date: Optional[float] = None) -> email.message.EmailMessage:
    mime = email.message.EmailMessage(policy=email.policy.SMTP)
    mime["From"] = outgoing.sender
    mime["To"] = outgoing.recipient
    mime["Subject"] = outgoing.subject
    mime["Message-ID"] = message_id
    mime["Date"] = email.utils.formatdate(date, localtime=False)
    if outgoing.text is not None or outgoing.html is None:
        mime.set_content(outgoing.text or "")
        if outgoing.html is not None:
            mime.add_alternative(outgoing.html, subtype="html")
    else:
        mime.set_content(outgoing.html, subtype="html")
    return mime
