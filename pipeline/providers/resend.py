"""Resend as a provider: its SDK on a pooled connection, its answers made neutral here and only here.

Resend's error names and ``ratelimit-*`` headers stop at this module: a 429 becomes
``ProviderRateLimited`` or ``QuotaExhausted``, a 409 for a key in flight
``KeyInFlight``, any other 4xx ``EmailRefused``, a 5xx or a timeout ``OutcomeUnknown``
(the request went out: only Resend, under the same idempotency key, may be asked
again), a connection that could not be opened ``NotReached``; the headers of an
answer become ``Pacing`` hints. Resend keeps an idempotency key 24 hours
(``IDEMPOTENCY_WINDOW``) and takes up to 100 emails a request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Optional, Union

import requests
import requests.adapters
import requests.utils
import resend
from resend.exceptions import ResendError
from resend.http_client import HTTPClient

from pipeline.providers.base import (
    Accepted,
    BatchAccepted,
    Capabilities,
    EmailRefused,
    KeyInFlight,
    NotReached,
    OutcomeUnknown,
    OutgoingEmail,
    Pacing,
    ProviderRateLimited,
    QuotaExhausted,
    Refused,
)

logger = logging.getLogger(__name__)

#: Seconds before an unanswered request to Resend counts as a transient failure.
REQUEST_TIMEOUT_SECONDS = 15
#: How long to wait when a 409 says a request with our key is still in flight.
CONCURRENT_REQUEST_RETRY_SECONDS = 2.0
#: Resend's names of a used-up quota: a pause until its reset, probed by one request.
QUOTA_REASONS = ("daily_quota_exceeded", "monthly_quota_exceeded")
#: Resend answers a repeated idempotency key with its first answer for this long.
IDEMPOTENCY_WINDOW = timedelta(hours=24)
#: Emails in one ``POST /emails/batch``.
BATCH_SIZE = 100
#: The provider's name: its rate-limit row, ``email_queue.provider``, ``EMAIL_PROVIDERS``.
NAME = "resend"
#: The providers whose delivery events we take (``pipeline.web.email_events``): Resend alone. The
#: bounce and complaint rates count their sends only (``storage.delivery_events.rates``).
WITH_DELIVERY_EVENTS = (NAME,)


class PooledClient(HTTPClient):
    """The SDK's HTTP client on one ``requests.Session`` per process: keep-alive, pooled.

    The SDK's own client calls ``requests.request`` and so opens a new TCP (and TLS)
    connection for every email. A ``Session`` is safe to share between the worker's
    threads for plain requests, and its pool holds a connection per thread.

    The environment is read once, here: the proxy for ``api_url`` (``HTTPS_PROXY``,
    ``NO_PROXY``) and a CA bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``). With
    ``trust_env`` on, ``requests`` reads it again for every request, and looks for a
    ``.netrc`` too: a quarter of its CPU per email (issue 21). A ``.netrc`` entry for
    Resend's host would replace the SDK's bearer key with basic auth, so it is not read.
    """

    def __init__(self, *, timeout: float, api_url: str, pool_size: int = 16) -> None:
        self._timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.proxies = requests.utils.get_environ_proxies(api_url)
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self._session.verify = bundle
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
            # The SDK turns this into a ResendError of type HttpClientError, with this as its context.
            if _never_sent(exc):
                raise NotSent(f"Request failed: {exc}") from exc
            raise RuntimeError(f"Request failed: {exc}") from exc
        return response.content, response.status_code, response.headers


class NotSent(RuntimeError):
    """The connection could not be opened: the request never left (``NotReached``)."""


def _never_sent(exc: requests.RequestException) -> bool:
    """A connect timeout, or a refused/unresolved connection: nothing reached Resend."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = exc.args[0] if exc.args else None
        inner = getattr(reason, "reason", reason)
        return type(inner).__name__ in ("NewConnectionError", "NameResolutionError")
    return False


class ResendProvider:
    """Sends through the Resend SDK with an idempotency key per email, on a pooled connection."""

    name = NAME
    capabilities = Capabilities(batch_size=BATCH_SIZE, idempotency_window=IDEMPOTENCY_WINDOW)

    def __init__(self, *, api_key: str, api_url: str, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        # The SDK keeps its settings in module globals; this process talks to one account.
        resend.api_key = api_key
        resend.api_url = api_url
        resend.default_http_client = PooledClient(timeout=timeout, api_url=api_url)

    def send(self, email: OutgoingEmail) -> Accepted:
        params = _params(email)
        try:
            response = resend.Emails.send(params, {"idempotency_key": email.idempotency_key})
        except ResendError as exc:
            raise classify(exc) from exc
        return Accepted(str(response["id"]), pacing(response.get("http_headers") or {}))

    def send_batch(self, emails: list[OutgoingEmail], *, idempotency_key: str) -> BatchAccepted:
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
        return BatchAccepted(results, pacing(response.get("http_headers") or {}))


#: The name the tree used before providers were neutral (tests and ``bench`` build it by this name).
ResendMailer = ResendProvider


def _params(email: OutgoingEmail) -> resend.Emails.SendParams:
    params: resend.Emails.SendParams = {"from": email.sender, "to": [email.recipient], "subject": email.subject}
    if email.html is not None:
        params["html"] = email.html
    if email.text is not None:
        params["text"] = email.text
    return params


def classify(exc: ResendError) -> Exception:
    """Map a Resend error to a neutral answer (``pipeline.providers.base``)."""
    status = _status(exc.code)
    detail = f"Resend {status} {exc.error_type}: {exc.message}"
    if status == 429:
        kind = QuotaExhausted if exc.error_type in QUOTA_REASONS else ProviderRateLimited
        return kind(detail, retry_after=_retry_after(exc.headers), reason=str(exc.error_type))
    if status == 409 and exc.error_type == "concurrent_idempotent_requests":
        return KeyInFlight(detail, retry_after=CONCURRENT_REQUEST_RETRY_SECONDS, reason=str(exc.error_type))
    if 400 <= status < 500:
        return EmailRefused(detail)
    if exc.error_type == "HttpClientError" and isinstance(exc.__context__, NotSent):
        return NotReached(detail)
    return OutcomeUnknown(detail)


def pacing(headers: Mapping[str, str]) -> Pacing:
    """Resend's ``ratelimit-limit``, ``ratelimit-remaining`` and ``ratelimit-reset`` as neutral hints."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return Pacing(
        limit=_number(lowered.get("ratelimit-limit")),
        remaining=_number(lowered.get("ratelimit-remaining")),
        reset=_number(lowered.get("ratelimit-reset")),
    )


def _number(value: Optional[str]) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


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
