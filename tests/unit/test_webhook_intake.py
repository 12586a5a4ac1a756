"""The intake over real HTTP without services: uvicorn on 127.0.0.1, the events on SQLite, enqueues recorded.

The app is the one ``serve`` runs (``create_app`` of a ``WebhookIntake``, under
``uvicorn_config``'s production options); only its secrets, its database (the dev
mode's SQLite) and its enqueue (a list) are this test's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest
import requests
from sqlalchemy.orm import Session, sessionmaker

from pipeline.webhook_server import WebhookIntake, create_app, uvicorn_config
from tests.support.webhook_support import SHARED_SECRET, payment, post, serving

#: Providers as an operator may configure them: ``awash`` has no secret at all.
SECRETS: dict[str, Optional[str]] = {"telebirr": SHARED_SECRET, "cbe": SHARED_SECRET, "awash": None, "generic": None}


@pytest.fixture
def enqueued() -> list[int]:
    return []


@pytest.fixture
def intake(lite: sessionmaker[Session], enqueued: list[int]) -> Iterator[str]:
    app = create_app(WebhookIntake(secrets=SECRETS, sessions=lite, enqueue=enqueued.append, lease_minutes=5))
    with serving(uvicorn_config(app, host="127.0.0.1", port=0)) as url:
        yield url


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
    refusals = [r for r in caplog.records if r.name == "pipeline.webhook_server" and "awash" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.ERROR]
    assert "no AWASH_WEBHOOK_SECRET nor PAYMENT_WEBHOOK_SECRET is configured" in refusals[0].getMessage()
