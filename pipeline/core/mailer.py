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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Union

import requests
import requests.adapters
import resend
from resend.exceptions import ResendError
from resend.http_client import HTTPClient

from pipeline.core.errors import PermanentError, RateLimited, TransientError

logger = logging.getLogger(__name__)

#: Seconds before an unanswered request to Resend counts as a transient failure.
REQUEST_TIMEOUT_SECONDS = 15
#: How long to wait when a 409 says a request with our key is still in flight.
CONCURRENT_REQUEST_RETRY_SECONDS = 2.0
#: Resend's names of a used-up quota: a pause until its reset, probed by one request.
QUOTA_REASONS = ("daily_quota_exceeded", "monthly_quota_exceeded")


@dataclass(frozen=True, kw_only=True)
class OutgoingEmail:
    sender: str
    recipient: str
    subject: str
    html: Optional[str]
    text: Optional[str]
    #: Same key, same email: the provider sends it at most once (24 h at Resend).
    idempotency_key: str


@dataclass(frozen=True)
class Sent:
    """The provider took the email: its message id, and the answer's headers (``ratelimit-*``)."""

    provider_id: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchSent:
    """The provider answered a batch: per email, in request order, its message id or why it refused it."""

    results: list[Union[str, Refused]]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    """The provider's reason for refusing one email of a batch (the rest were sent)."""

    reason: str


class Mailer(Protocol):
    def send(self, email: OutgoingEmail) -> Sent:
        """Hand ``email`` to the provider; return its message id and the answer's headers."""

    def send_batch(self, emails: list[OutgoingEmail], *, idempotency_key: str) -> BatchSent:
        """Hand ``emails`` over in one request under one key; a whole-batch failure raises."""


class PooledClient(HTTPClient):
    """The SDK's HTTP client on one ``requests.Session`` per process: keep-alive, pooled.

    The SDK's own client calls ``requests.request`` and so opens a new TCP (and TLS)
    connection for every email. A ``Session`` is safe to share between the worker's
    threads for plain requests, and its pool holds a connection per thread.
    """

    def __init__(self, *, timeout: float, pool_size: int = 16) -> None:
        self._timeout = timeout
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        json: Optional[Union[dict[str, object], list[object]]] = None,
        files: Optional[dict[str, Any]] = None,
        data: Optional[dict[str, str]] = None,
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            response = self._session.request(
                method,
                url,
                headers=headers,
                json=json,  # type: ignore[arg-type]  # JSON the SDK built; its HTTPClient says dict[str, object], requests JsonType
                files=files,
                data=data,
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            # The SDK turns this into a ResendError of type HttpClientError (a transient failure).
            raise RuntimeError(f"Request failed: {exc}") from exc
        return response.content, response.status_code, response.headers


class ResendMailer:
    """Sends through the Resend SDK with an idempotency key per email, on a pooled connection."""

    def __init__(self, *, api_key: str, api_url: str, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        # The SDK keeps its settings in module globals; this process talks to one account.
        resend.api_key = api_key
        resend.api_url = api_url
        resend.default_http_client = PooledClient(timeout=timeout)

    def send(self, email: OutgoingEmail) -> Sent:
        params = _params(email)
        try:
            response = resend.Emails.send(params, {"idempotency_key": email.idempotency_key})
        except ResendError as exc:
            raise classify(exc) from exc
        return Sent(str(response["id"]), dict(response.get("http_headers") or {}))

    def send_batch(self, emails: list[OutgoingEmail], *, idempotency_key: str) -> BatchSent:
        """``POST /emails/batch`` in permissive mode: the valid emails are sent, the others listed."""
        params = [_params(email) for email in emails]
        options: resend.Batch.SendOptions = {"idempotency_key": idempotency_key, "batch_validation": "permissive"}
        try:
            response = resend.Batch.send(params, options)
        except ResendError as exc:
            raise classify(exc) from exc
        refused = {int(error["index"]): Refused(str(error["message"])) for error in response.get("errors") or []}
        ids = iter(str(item["id"]) for item in response.get("data") or [])
        results: list[Union[str, Refused]] = [refused.get(index) or next(ids) for index in range(len(emails))]
        return BatchSent(results, dict(response.get("http_headers") or {}))


def _params(email: OutgoingEmail) -> resend.Emails.SendParams:
    params: resend.Emails.SendParams = {"from": email.sender, "to": [email.recipient], "subject": email.subject}
    if email.html is not None:
        params["html"] = email.html
    if email.text is not None:
        params["text"] = email.text
    return params


def classify(exc: ResendError) -> Exception:
    """Map a Resend error to the pipeline's retry classes."""
    status = _status(exc.code)
    detail = f"Resend {status} {exc.error_type}: {exc.message}"
    if status == 429:
        return RateLimited(detail, retry_after=_retry_after(exc.headers), reason=str(exc.error_type))
    if status == 409 and exc.error_type == "concurrent_idempotent_requests":
        return RateLimited(detail, retry_after=CONCURRENT_REQUEST_RETRY_SECONDS, reason=str(exc.error_type))
    if 400 <= status < 500:
        return PermanentError(detail)
    return TransientError(detail)


def _status(code: object) -> int:
    try:
        return int(str(code))
    except ValueError:
        return 500


def _retry_after(headers: dict[str, str]) -> float:
    """``retry-after``, else ``ratelimit-reset``, in seconds; 0 when the provider said neither."""
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    for name in ("retry-after", "ratelimit-reset"):
        try:
            return max(float(lowered[name]), 0.0)
        except (KeyError, ValueError):
            continue
    return 0.0


class OutboxMailer:
    """Writes each email to ``<dir>/<key>.eml`` and logs it: the ``dev`` mode's provider.

    Writing the same key twice keeps the first file, as Resend keeps the first send.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def send(self, email: OutgoingEmail) -> Sent:
        message_id = hashlib.sha256(email.idempotency_key.encode()).hexdigest()[:32]
        path = self.directory / f"{email.idempotency_key}.eml"
        if not path.exists():
            path.write_bytes(_as_mime(email, message_id))
            logger.info("Outbox: %s to %s — %s (%s)", message_id, email.recipient, email.subject, path)
        return Sent(message_id)

    def send_batch(self, emails: list[OutgoingEmail], *, idempotency_key: str) -> BatchSent:
        """Each email to its own file, as ``send`` does: a batch resent writes nothing twice."""
        return BatchSent([self.send(email).provider_id for email in emails])


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
