"""The intake over real HTTP without services: uvicorn on 127.0.0.1, the events on SQLite, enqueues recorded.

The route is the one ``serve`` mounts (``WebhookIntake.handle``, under
``uvicorn_config``'s production options); only its secrets, its database (the dev
mode's SQLite) and its enqueue (a list) are this test's, and the rest of
``serve``'s app (which needs PostgreSQL and RabbitMQ) is left out.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any, Optional
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.routing import Route

from pipeline.web.app import uvicorn_config
from pipeline.web.intake import WEBHOOK_PATH, WebhookIntake, signature_header
from storage.models import WebhookEvent
from tests.support.webhook_support import SHARED_SECRET, payment, post, serving

#: Providers as an operator may configure them: ``awash`` has no secret at all.
SECRETS: dict[str, Optional[str]] = {"telebirr": SHARED_SECRET, "cbe": SHARED_SECRET, "awash": None, "generic": None}


@pytest.fixture
def enqueued() -> list[int]:
    return []


@pytest.fixture
def intake(lite: sessionmaker[Session], enqueued: list[int]) -> Iterator[str]:
    app = intake_app(WebhookIntake(secrets=SECRETS, sessions=lite, enqueue=enqueued.append, lease_minutes=5))
    with serving(uvicorn_config(app, host="127.0.0.1", port=0)) as url:
        yield url


def intake_app(intake: WebhookIntake) -> Starlette:
    """The intake's route alone, as ``build_app`` mounts it."""
    return Starlette(routes=[Route(WEBHOOK_PATH, intake.handle, methods=["POST"])])


def answer(response: requests.Response) -> tuple[int, Any]:
    return response.status_code, response.json()


# --- 401: the same answer whether or not a secret is configured --------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"timestamp": int(time.time()) - 3600},
        {"headers": {"X-Webhook-Signature": ""}},
        {"headers": {"X-Webhook-Timestamp": "soon"}},
        {"headers": {"X-Webhook-Signature": "v2=abc"}},
    ],
    ids=["signed", "stale", "unsigned", "bad-timestamp", "not-v1"],
)
def test_a_provider_without_a_secret_is_answered_like_a_bad_signature(
    intake: str, arguments: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A client must not learn which providers have no secret: only the server's log says so."""
    body = payment("MN-1")
    unconfigured = post(intake, body, provider="awash", secret="a guess", **arguments)
    wrongly_signed = post(intake, body, provider="telebirr", secret="a guess", **arguments)

    assert answer(unconfigured) == answer(wrongly_signed)
    assert unconfigured.status_code == 401 and unconfigured.json()["error"].startswith("invalid signature")
    assert "secret" not in unconfigured.text
    refusals = [r for r in caplog.records if r.name == "pipeline.web.intake" and "awash" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.ERROR]
    assert "no AWASH_WEBHOOK_SECRET nor PAYMENT_WEBHOOK_SECRET is configured" in refusals[0].getMessage()


# --- 408: a body must arrive within the intake's deadline -------------------------------------------


@pytest.fixture
def impatient_intake(lite: sessionmaker[Session], enqueued: list[int]) -> Iterator[str]:
    """The intake with a one-second body deadline (production: ``BODY_TIMEOUT_SECONDS``)."""
    intake = WebhookIntake(
        secrets=SECRETS, sessions=lite, enqueue=enqueued.append, lease_minutes=5, body_timeout=BODY_TIMEOUT
    )
    with serving(uvicorn_config(intake_app(intake), host="127.0.0.1", port=0)) as url:
        yield url


#: The deadline of ``impatient_intake``.
BODY_TIMEOUT = 1.0


def test_a_body_trickled_slower_than_the_deadline_is_408_and_the_connection_closed(
    impatient_intake: str, enqueued: list[int]
) -> None:
    """A slow-loris client sends a byte at a time: it is cut off at the deadline, not when it pleases."""
    host, port = urlsplit(impatient_intake).hostname, urlsplit(impatient_intake).port
    body = json.dumps(payment("MN-1")).encode()
    head = (
        f"POST /api/payments/webhook/telebirr HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Webhook-Timestamp: {int(time.time())}\r\nX-Webhook-Signature: v1=00\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=5) as client:
        client.sendall(head)
        started = time.monotonic()
        client.settimeout(0.1)  # the pace of the trickle: one byte per wait for the answer
        received = b""
        for position in range(len(body)):
            client.send(body[position : position + 1])
            try:
                received = client.recv(4096)
            except TimeoutError:
                continue
            break
        elapsed = time.monotonic() - started
        client.settimeout(5)
        rest = received
        while chunk := client.recv(4096):  # the server closes the connection: recv ends with b""
            rest += chunk

    assert rest.startswith(b"HTTP/1.1 408 "), rest
    assert b"connection: close" in rest.lower()
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1]) == {"error": f"the body did not arrive within {BODY_TIMEOUT:g} s"}
    assert BODY_TIMEOUT <= elapsed < BODY_TIMEOUT + 2, elapsed
    assert enqueued == []


def test_a_body_sent_in_pieces_within_the_deadline_is_taken(impatient_intake: str) -> None:
    """Chunks are fine; only the time the whole body takes counts."""
    body = json.dumps(payment("MN-1")).encode()
    pieces = iter([body[:10], body[10:20], body[20:]])
    answer = requests.post(
        f"{impatient_intake}/api/payments/webhook/telebirr",
        data=pieces,
        headers={"X-Webhook-Timestamp": "1", "X-Webhook-Signature": "v1=00"},
        timeout=5,
    )
    assert answer.status_code == 401  # read whole, then refused for its signature (and its timestamp)


# --- one signed request, one event, whatever path it is sent to ------------------------------------


def signed_request(body: dict[str, Any], secret: str = SHARED_SECRET) -> tuple[bytes, dict[str, str]]:
    """The exact bytes and headers a provider sent, as someone who saw them would replay them."""
    raw = json.dumps(body).encode()
    stamp = str(int(time.time()))
    headers = {"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": signature_header([secret], stamp, raw)}
    return raw, headers


def stored_events(sessions: sessionmaker[Session], event_id: str) -> list[tuple[str, str]]:
    with sessions() as session:
        statement = select(WebhookEvent.provider, WebhookEvent.event_id).where(WebhookEvent.event_id == event_id)
        return sorted((provider, event) for provider, event in session.execute(statement))


def test_a_signed_request_replayed_to_another_providers_path_is_409_and_stores_nothing(
    intake: str, lite: sessionmaker[Session], enqueued: list[int]
) -> None:
    """Telebirr and CBE share PAYMENT_WEBHOOK_SECRET: Telebirr's signed request verifies on CBE's path too."""
    body = payment("MN-1")
    raw, headers = signed_request(body)

    first = requests.post(f"{intake}/api/payments/webhook/telebirr", data=raw, headers=headers, timeout=5)
    replayed = requests.post(f"{intake}/api/payments/webhook/cbe", data=raw, headers=headers, timeout=5)
    again = requests.post(f"{intake}/api/payments/webhook/telebirr", data=raw, headers=headers, timeout=5)

    assert first.status_code == 200 and first.json()["duplicate"] is False
    assert answer(replayed) == (409, {"error": f"event {body['event_id']} was received from another provider"})
    assert again.status_code == 200 and again.json()["duplicate"] is True  # the provider's own retry
    assert stored_events(lite, body["event_id"]) == [("telebirr", body["event_id"])]
    assert enqueued == [first.json()["id"]]


def test_the_same_event_id_with_another_body_is_another_providers_event(
    intake: str, lite: sessionmaker[Session]
) -> None:
    """Event ids are unique per provider: two providers may both number an event ``evt_1``."""
    body = payment("MN-1")
    other = {**body, "order_id": "MN-2"}

    assert post(intake, body, provider="telebirr").status_code == 200
    assert post(intake, other, provider="cbe").status_code == 200

    assert stored_events(lite, body["event_id"]) == [("cbe", body["event_id"]), ("telebirr", body["event_id"])]
