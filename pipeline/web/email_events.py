"""The intake of Resend's delivery events, one route of ``serve``'s app (``pipeline.web.app``).

``POST /api/email-events/resend`` checks, in this order, each answer final: a body
over ``MAX_BODY_BYTES`` is 413 (refused while it is read), a body still incomplete
10 s after the headers is 408; a body that is not UTF-8 is 400; a missing, bad or
stale signature (``svix-timestamp`` more than 5 minutes from now) is 401, also when
RESEND_WEBHOOK_SECRET is unset; a body that is not a delivery event we take
(malformed JSON, an unknown type, no ``data.email_id``, nesting deeper than 32) is
400. A good event is stored once per ``svix-id`` and answered 200, a repeat too,
changing nothing (``storage.delivery_events``). Nothing is stored before the answer
is known to be 200, and no input makes a 5xx but the database being down (503, so
that Svix sends it again).

The signature is Svix's, checked by the Resend SDK's own ``resend.Webhooks.verify``
(HMAC-SHA256 of ``{svix-id}.{svix-timestamp}.{body}`` under the base64 part of the
``whsec_`` secret, constant-time, 300 s tolerance) under each secret of
RESEND_WEBHOOK_SECRET in turn: during a rotation both the old and the new one verify.
The SDK needs no extra dependency (``svix`` is the tests' signer only, so the format
is checked by code that is not ours). The payment intake's secrets are never tried here.

The event is applied in the request, in one short transaction (one indexed look-up,
one insert, one update), rather than by an actor: it is as cheap as enqueueing it would
be, and a suppression holds from the moment Resend hears 200.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Optional

import resend
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from pipeline.core.runtime import Runtime
from pipeline.web.intake import BODY_TIMEOUT_SECONDS, BodyTooLarge, BodyTooSlow, read_body
from storage import delivery_events
from storage.delivery_events import DeliveryEvent, InvalidDeliveryEvent, Recorded

logger = logging.getLogger(__name__)

#: The intake's path.
EVENTS_PATH = "/api/email-events/resend"
#: Larger bodies are refused with 413: Resend's events are a few KB (50 recipients, tags, a bounce message).
MAX_BODY_BYTES = 256 * 1024
#: The headers Svix signs with.
ID_HEADER = "svix-id"
TIMESTAMP_HEADER = "svix-timestamp"
SIGNATURE_HEADER = "svix-signature"
#: The longest signature header read (a rotation sends a few ``v1,<base64>`` entries of 47 characters).
MAX_SIGNATURE_HEADER = 1024

Verify = Callable[[dict[str, Any]], Any]


class Unverified(Exception):
    """The request is not signed by any of the secrets (the reason is safe to log and to answer)."""


def verify(
    body: str, *, svix_id: Optional[str], timestamp: Optional[str], signature: Optional[str], secrets: Sequence[str]
) -> Any:
    """The parsed body if one of ``secrets`` signed it within the tolerance; else ``Unverified``.

    A body that verifies but is not JSON raises ``InvalidDeliveryEvent`` (a 400, not a 401).
    """
    if not svix_id or not timestamp or not signature:
        raise Unverified(f"{ID_HEADER}, {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    if len(signature) > MAX_SIGNATURE_HEADER or len(svix_id) > delivery_events.MAX_ID_LENGTH or len(timestamp) > 12:
        raise Unverified("a signature header is too long")
    if not secrets:
        raise Unverified("no secret is configured")
    headers: Any = {"id": svix_id, "timestamp": timestamp, "signature": signature}
    last = "signature does not match"
    for secret in secrets:
        try:
            return resend.Webhooks.verify({"payload": body, "headers": headers, "webhook_secret": secret})
        except RecursionError:
            raise InvalidDeliveryEvent("body is nested too deep") from None
        except ValueError as exc:
            reason = str(exc)
            if reason.startswith("failed to parse webhook payload"):
                raise InvalidDeliveryEvent("body is not JSON") from None
            if "timestamp" in reason:
                raise Unverified(f"{TIMESTAMP_HEADER} is not within 5 minutes of now") from None
            last = "signature does not match"
    raise Unverified(last)


class EmailEventIntake:
    """The endpoint: read bounded, verify, parse, store once, answer."""

    def __init__(
        self,
        *,
        secrets: Sequence[str],
        sessions: sessionmaker[Session],
        body_timeout: float = BODY_TIMEOUT_SECONDS,
    ) -> None:
        self.secrets = tuple(secrets)
        self.sessions = sessions
        self.body_timeout = body_timeout

    async def handle(self, request: Request) -> JSONResponse:
        try:
            raw = await read_body(request, limit=MAX_BODY_BYTES, timeout=self.body_timeout)
        except BodyTooLarge as exc:
            return _error(413, str(exc))
        except BodyTooSlow as exc:
            return _error(408, str(exc), headers={"Connection": "close"})
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            return _error(400, "body is not UTF-8")
        headers = request.headers
        svix_id = headers.get(ID_HEADER)
        try:
            payload = verify(
                body,
                svix_id=svix_id,
                timestamp=headers.get(TIMESTAMP_HEADER),
                signature=headers.get(SIGNATURE_HEADER),
                secrets=self.secrets,
            )
            event = delivery_events.parse_event(str(svix_id), payload)
        except Unverified as exc:
            if self.secrets:
                logger.warning("Refused a Resend event from %s: %s.", _client(request), exc)
            else:
                logger.error("Refused a Resend event from %s: RESEND_WEBHOOK_SECRET is not set.", _client(request))
            return _error(401, f"invalid signature: {exc}")
        except InvalidDeliveryEvent as exc:
            logger.warning("Refused a signed Resend event %s: %s.", svix_id, exc)
            return _error(400, str(exc))
        try:
            recorded = await run_in_threadpool(self._store, event)
        except Exception:
            logger.exception("Could not store Resend event %s.", event.svix_id)
            return _error(503, "could not store the event now; send it again later")
        self._log(event, recorded)
        return JSONResponse(
            {"received": True, "id": recorded.id, "duplicate": not recorded.created, "email_id": recorded.email_id}
        )

    def _store(self, event: DeliveryEvent) -> Recorded:
        with self.sessions.begin() as session:
            return delivery_events.record(session, event)

    @staticmethod
    def _log(event: DeliveryEvent, recorded: Recorded) -> None:
        if not recorded.created:
            logger.info("Duplicate Resend event %s: answered, changed nothing.", event.svix_id)
        elif recorded.email_id is None:
            logger.info("Resend event %s (%s) names no email of ours: kept.", event.svix_id, event.type)
        for address in recorded.suppressed:
            logger.warning(
                "Suppressed %s after %s of email %s (event %s).", address, event.type, recorded.email_id, recorded.id
            )


def _error(status: int, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown client"


def intake_for(current: Runtime) -> EmailEventIntake:
    """The intake of a bootstrapped process: its secrets and database."""
    return EmailEventIntake(secrets=current.settings.resend_webhook_secrets, sessions=current.sessions)
