"""The email provider boundary: Resend in production, an outbox folder in ``dev``.

Resend's errors are converted here, and only here, into the pipeline's own
(``TransientError``, ``PermanentError``, ``RateLimited``), so retry decisions are
made by class in the backoff middleware.
"""

from __future__ import annotations

import email.message
import email.policy
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import resend
from resend.exceptions import ResendError
from resend.http_client_requests import RequestsClient

from pipeline.core.errors import PermanentError, RateLimited, TransientError

logger = logging.getLogger(__name__)

#: Seconds before an unanswered request to Resend counts as a transient failure.
REQUEST_TIMEOUT_SECONDS = 15
#: How long to wait when a 409 says a request with our key is still in flight.
CONCURRENT_REQUEST_RETRY_SECONDS = 2.0


@dataclass(frozen=True, kw_only=True)
class OutgoingEmail:
    sender: str
    recipient: str
    subject: str
    html: Optional[str]
    text: Optional[str]
    #: Same key, same email: the provider sends it at most once (24 h at Resend).
    idempotency_key: str


class Mailer(Protocol):
    def send(self, email: OutgoingEmail) -> str:
        """Hand ``email`` to the provider; return the provider's message id."""


class ResendMailer:
    """Sends through the Resend SDK with an idempotency key per email."""

    def __init__(self, *, api_key: str, api_url: str) -> None:
        # The SDK keeps its settings in module globals; this process talks to one account.
        resend.api_key = api_key
        resend.api_url = api_url
        resend.default_http_client = RequestsClient(timeout=REQUEST_TIMEOUT_SECONDS)

    def send(self, email: OutgoingEmail) -> str:
        params: resend.Emails.SendParams = {
            "from": email.sender,
            "to": [email.recipient],
            "subject": email.subject,
        }
        if email.html is not None:
            params["html"] = email.html
        if email.text is not None:
            params["text"] = email.text
        try:
            response = resend.Emails.send(params, {"idempotency_key": email.idempotency_key})
        except ResendError as exc:
            raise classify(exc) from exc
        return str(response["id"])


def classify(exc: ResendError) -> Exception:
    """Map a Resend error to the pipeline's retry classes."""
    status = _status(exc.code)
    detail = f"Resend {status} {exc.error_type}: {exc.message}"
    if status == 429:
        return RateLimited(detail, retry_after=_retry_after(exc.headers))
    if status == 409 and exc.error_type == "concurrent_idempotent_requests":
        return RateLimited(detail, retry_after=CONCURRENT_REQUEST_RETRY_SECONDS)
    if 400 <= status < 500:
        return PermanentError(detail)
    return TransientError(detail)


def _status(code: object) -> int:
    try:
        return int(str(code))
    except ValueError:
        return 500


def _retry_after(headers: dict[str, str]) -> float:
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    try:
        return max(float(lowered.get("retry-after", "1")), 0.0)
    except ValueError:
        return 1.0


class OutboxMailer:
    """Writes each email to ``<dir>/<key>.eml`` and logs it: the ``dev`` mode's provider.

    Writing the same key twice keeps the first file, as Resend keeps the first send.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def send(self, email: OutgoingEmail) -> str:
        message_id = hashlib.sha256(email.idempotency_key.encode()).hexdigest()[:32]
        path = self.directory / f"{email.idempotency_key}.eml"
        if not path.exists():
            path.write_bytes(_as_mime(email, message_id))
            logger.info("Outbox: %s to %s — %s (%s)", message_id, email.recipient, email.subject, path)
        return message_id


def _as_mime(email_: OutgoingEmail, message_id: str) -> bytes:
    mime = email.message.EmailMessage(policy=email.policy.SMTP)
    mime["From"] = email_.sender
    mime["To"] = email_.recipient
    mime["Subject"] = email_.subject
    mime["Message-ID"] = f"<{message_id}@outbox.minalesh.local>"
    mime.set_content(email_.text or "")
    if email_.html is not None:
        mime.add_alternative(email_.html, subtype="html")
    return mime.as_bytes()
