"""The signed intake of payment provider webhooks, one route of ``serve``'s app (``pipeline.web.app``).

``POST /api/payments/webhook/{provider}`` checks, in this order, each answer
final: an unknown provider is 404; a body over 1 MiB is 413, refused while it is
being read (a declared Content-Length over the limit is refused before reading);
a body still incomplete 10 s after the headers is 408 and its connection closed;
a bad, missing or stale signature is 401; a body that is not an event is 400.
A good event is stored once per (provider, event_id) and answered 200 — a
repeat too, without storing or processing it again. The same event sent to
another provider's path is 409 (see below).

The signature is the provider's HMAC-SHA256 of ``"{timestamp}.{raw body}"`` in
``X-Webhook-Signature: v1=<hex>`` (several ``v1=`` values, comma-separated, while
a provider rotates its secret), with the unix seconds in ``X-Webhook-Timestamp``;
a timestamp more than 300 s from this host's clock is a replay. The key is
``{PROVIDER}_WEBHOOK_SECRET``, or else PAYMENT_WEBHOOK_SECRET; a provider with
neither is refused (401) rather than accepted unsigned, with the very answer a
bad signature gets (the server's log says which it was: a client must not learn
which providers are left without a secret).

**A request replayed to another provider's path.** Providers without a secret
of their own share PAYMENT_WEBHOOK_SECRET, so a signed request verifies on each
of their paths, and within the 300 s window anyone who saw it could send it to
another path as a new event of that provider, stored and processed a second
time. Binding the provider into what is signed would end that, but providers
sign ``"{timestamp}.{body}"`` and cannot be asked to change. So
``storage.webhooks.store`` refuses an event whose event id is stored under
another provider with the same payload, and the intake answers 409. Whichever
copy commits first is the event, on its path (a replay that beats the original
wins it); every other copy, the provider's own retries on the other path
included, gets 409, and the payment is applied once either way. The same event
id with another payload is another provider's event (ids are unique per
provider).

Providers time out after a few seconds, so the answer waits only for the row:
the event's message is sent to RabbitMQ after the response (a background task).
If that send fails, the event's claim is handed back at once
(``pipeline.core.enqueue``) and the ticker's wake-up, which polls every few
seconds, enqueues it (``retry_webhooks`` on its schedule is the safety net).

The route is plain Starlette (FastAPI's base): it reads the raw body itself, bounded,
before any parsing. The database work runs in Starlette's thread pool. A slow
client is bounded by the body deadline and by uvicorn's keep-alive timeout
between requests; uvicorn sets no deadline on the request headers, which is the
job of the TLS-terminating proxy in front (nginx's ``client_header_timeout``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from secrets import token_hex
from typing import Any, Optional

from sqlalchemy.orm import Session, sessionmaker
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from actors.webhooks import process_webhook_event
from pipeline.core.enqueue import send_or_release
from pipeline.core.errors import MinaleshError
from pipeline.core.runtime import Runtime
from pipeline.core.settings import PAYMENT_PROVIDERS
from storage import webhooks
from storage.clock import minutes
from storage.payments import IncomingEvent, InvalidEvent, parse_event

logger = logging.getLogger(__name__)

#: The intake's path; ``{provider}`` is one of ``PAYMENT_PROVIDERS``.
WEBHOOK_PATH = "/api/payments/webhook/{provider}"
#: Larger bodies are refused with 413 (1 MiB).
MAX_BODY_BYTES = 1024 * 1024
#: The whole body must arrive within this many seconds of the headers, else 408 and the connection
#: is closed: a client trickling bytes (slow loris) holds a connection no longer. 1 MiB in 10 s is
#: 100 KB/s; providers send a few hundred bytes from their servers.
BODY_TIMEOUT_SECONDS = 10.0
#: A signature timestamp further than this from now (either way) is refused as a replay.
TIMESTAMP_TOLERANCE_SECONDS = 300
#: The headers a provider signs with.
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Webhook-Signature"
#: The only signature scheme accepted; other schemes in the header are ignored.
SIGNATURE_SCHEME = "v1"


#: The key a request to a provider without a secret is checked under, so that refusing it takes
#: the time any refusal takes. The refusal does not depend on it: without a secret nothing matches.
_UNKNOWABLE_KEY = token_hex(32)


class SignatureRejected(MinaleshError):
    """The request is not signed by the provider (the reason is safe to log and to answer)."""


class BodyTooLarge(MinaleshError):
    """The body is larger than ``MAX_BODY_BYTES``."""


class BodyTooSlow(MinaleshError):
    """The body did not arrive within the intake's deadline (``BODY_TIMEOUT_SECONDS``)."""


# --- signatures: pure functions ------------------------------------------------------


def compute_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"{timestamp}.{body}"`` under ``secret``."""
    signed = timestamp.encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def signature_header(secrets: list[str], timestamp: str, body: bytes) -> str:
    """The ``X-Webhook-Signature`` value a provider sends, one ``v1=`` per secret."""
    return ",".join(f"{SIGNATURE_SCHEME}={compute_signature(s, timestamp, body)}" for s in secrets)


def parse_signatures(header: str) -> list[str]:
    """The ``v1`` values of a signature header, lower-cased; other schemes are dropped."""
    values = []
    for item in header.split(","):
        scheme, separator, value = item.strip().partition("=")
        if separator and scheme.strip() == SIGNATURE_SCHEME and value.strip():
            values.append(value.strip().lower())
    return values


def verify_signature(
    *,
    secret: Optional[str],
    timestamp: Optional[str],
    signature: Optional[str],
    body: bytes,
    now: float,
    tolerance: int = TIMESTAMP_TOLERANCE_SECONDS,
) -> None:
    """Return if ``signature`` signs ``timestamp`` and ``body`` under ``secret``; else raise.

    Every candidate is compared with ``hmac.compare_digest`` (constant time), and
    all of them are compared, so the answer's timing tells nothing of which was close.
    Without a ``secret`` the request goes through the same checks and the same
    computation, under a key nobody knows, and fails as a signature that does not
    match: whether a provider has a secret is the server's business (the caller
    logs it), not the client's.
    """
    if not timestamp or not signature:
        raise SignatureRejected(f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    stamp = timestamp.strip()
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise SignatureRejected(f"{TIMESTAMP_HEADER} must be unix seconds")
    if abs(now - int(stamp)) > tolerance:
        raise SignatureRejected(f"{TIMESTAMP_HEADER} is more than {tolerance}s away from now")
    candidates = parse_signatures(signature)
    if not candidates:
        raise SignatureRejected(f"{SIGNATURE_HEADER} has no {SIGNATURE_SCHEME}= value")
    expected = compute_signature(secret or _UNKNOWABLE_KEY, stamp, body).encode("ascii")
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate.encode("utf-8"))
    if not matched or not secret:
        raise SignatureRejected("signature does not match")


# --- the app --------------------------------------------------------------------------


async def read_body(
    request: Request, limit: int = MAX_BODY_BYTES, timeout: float = BODY_TIMEOUT_SECONDS
) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` bytes or ``timeout`` seconds.

    The deadline is on the whole body, not between chunks: a client sending one
    byte a second never waits long between chunks, and would hold the connection
    (and this coroutine) for as long as it likes.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes is over {limit}")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise BodyTooLarge(f"body is over {limit} bytes")
    except TimeoutError:
        raise BodyTooSlow(f"the body did not arrive within {timeout:g} s") from None
    return bytes(body)


class WebhookIntake:
    """The endpoint: verify, store once, answer, then enqueue."""

    def __init__(
        self,
        *,
        secrets: Mapping[str, Optional[str]],
        sessions: sessionmaker[Session],
        enqueue: Callable[[int], Any],
        lease_minutes: float,
        clock: Callable[[], float] = time.time,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
    ) -> None:
        self.secrets = dict(secrets)
        self.sessions = sessions
        self.enqueue = enqueue
        self.lease = minutes(lease_minutes)
        self.clock = clock
        self.body_timeout = body_timeout

    async def handle(self, request: Request) -> JSONResponse:
        provider = str(request.path_params["provider"]).lower()
        if provider not in PAYMENT_PROVIDERS:
            return _error(404, f"unknown provider; known: {', '.join(PAYMENT_PROVIDERS)}")
        try:
            body = await read_body(request, timeout=self.body_timeout)
        except BodyTooLarge as exc:
            return _error(413, str(exc))
        except BodyTooSlow as exc:
            logger.warning("Cut off a %s webhook from %s: %s.", provider, _client(request), exc)
            # The rest of the body may still come: the connection is closed rather than kept alive.
            return _error(408, str(exc), headers={"Connection": "close"})
        secret = self.secrets.get(provider)
        try:
            verify_signature(
                secret=secret,
                timestamp=request.headers.get(TIMESTAMP_HEADER),
                signature=request.headers.get(SIGNATURE_HEADER),
                body=body,
                now=self.clock(),
            )
        except SignatureRejected as exc:
            if secret:
                logger.warning("Refused a %s webhook from %s: %s.", provider, _client(request), exc)
            else:
                logger.error(
                    "Refused a %s webhook from %s: no %s_WEBHOOK_SECRET nor PAYMENT_WEBHOOK_SECRET is configured.",
                    provider,
                    _client(request),
                    provider.upper(),
                )
            return _error(401, f"invalid signature: {exc}")
        try:
            event = parse_event(body)
        except InvalidEvent as exc:
            return _error(400, str(exc))
        try:
            stored = await run_in_threadpool(self._store, provider, event)
        except webhooks.ReplayedFromAnotherProvider as exc:
            logger.warning("Refused a %s webhook from %s as a replay: %s.", provider, _client(request), exc)
            return _error(409, f"event {event.event_id} was received from another provider")
        except Exception:
            logger.exception("Could not store %s webhook event %s.", provider, event.event_id)
            return _error(503, "could not store the event now; send it again later")
        answer = {"received": True, "id": stored.id, "duplicate": not stored.created}
        if not stored.created:
            logger.info(
                "Duplicate %s webhook event %s (row %s): answered, not processed again.",
                provider,
                event.event_id,
                stored.id,
            )
            return JSONResponse(answer)
        return JSONResponse(answer, background=BackgroundTask(self._enqueue, stored.id))

    def _store(self, provider: str, event: IncomingEvent) -> webhooks.Stored:
        with self.sessions.begin() as session:
            return webhooks.store(
                session,
                provider=provider,
                event_id=event.event_id,
                event_type=event.type,
                payload=event.payload,
                order_id=event.order_id,
                lease=self.lease,
            )

    def _enqueue(self, row_id: int) -> None:
        """Runs after the answer; a refused message hands the event to the ticker's next poll."""
        self.enqueue(row_id)


def _error(status: int, message: str, headers: Optional[Mapping[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown client"


def intake_for(current: Runtime) -> WebhookIntake:
    """The intake of a bootstrapped process: its settings' secrets, database and broker."""
    settings = current.settings
    return WebhookIntake(
        secrets={provider: settings.webhook_secret(provider) for provider in PAYMENT_PROVIDERS},
        sessions=current.sessions,
        enqueue=functools.partial(send_or_release, process_webhook_event, webhooks.TABLE),
        lease_minutes=settings.webhook_lease_minutes,
    )
