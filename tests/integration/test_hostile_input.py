"""The security review's cases, each as it was reproduced: a cookie running a cron job by GET, and the
requests without credentials that ended in 500. The whole app in-process, on the run's PostgreSQL and RabbitMQ."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest

from pipeline.core.runtime import Runtime
from pipeline.web.app import build_app
from pipeline.web.auth import COOKIE_NAME, CSRF_HEADER
from pipeline.web.intake import signature_header
from tests.support.asgi_support import InProcess
from tests.support.ops_support import ADMIN_TOKEN, READ_TOKEN, with_tokens
from tests.support.webhook_support import SHARED_SECRET

CRON_PATHS = ("/api/cron/process-email-queue", "/api/cron/retry-webhooks", "/api/cron/cleanup-reservations")


@pytest.fixture(scope="module")
def app(runtime: Runtime) -> Iterator[InProcess]:
    client = InProcess(build_app(with_tokens(runtime)))
    yield client
    client.close()


def signed_in(app: InProcess, token: str) -> tuple[str, str]:
    answer = app.request("POST", "/api/ops/session", json={"token": token})
    assert answer.status_code == 200, answer.text
    return answer.cookies[COOKIE_NAME], answer.json()["csrf_token"]


def forged(payload: bytes) -> str:
    """A cookie value whose payload is ``payload``, under a signature nobody made."""
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + ".AAAA"


# --- case 1: a signed-in cookie ran /api/cron/* by GET ----------------------------------------------


@pytest.mark.parametrize("path", CRON_PATHS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_session_cookie_runs_no_cron_job_on_any_method(app: InProcess, path: str, method: str) -> None:
    """An ``<img src>`` on a page of the same site sends the cookie with a GET; the cron paths take the bearer only."""
    cookie, csrf = signed_in(app, ADMIN_TOKEN)
    answer = app.request(method, path, headers={"Cookie": f"{COOKIE_NAME}={cookie}", CSRF_HEADER: csrf})
    assert answer.status_code == 401, answer.text
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    bearer = app.request(method, path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert bearer.status_code == 200, bearer.text


def test_the_cookie_still_opens_the_ops_api(app: InProcess) -> None:
    cookie, _ = signed_in(app, READ_TOKEN)
    assert app.request("GET", "/api/ops/session", headers={"Cookie": f"{COOKIE_NAME}={cookie}"}).status_code == 200


# --- case 2: no credentials, yet 500 ----------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'{"r": "admin", "c": "x", "e": 1e400}',
        b'{"r": "admin", "c": "x", "e": ' + b"[" * 2500 + b"]" * 2500 + b"}",
        b"[" * 2900,
        b"\xff\xfe not utf-8",
    ],
    ids=["infinity", "nested-expiry", "nested", "not-utf-8"],
)
def test_a_forged_cookie_is_refused_before_its_payload_is_read(app: InProcess, payload: bytes) -> None:
    answer = app.request("GET", "/api/ops/stats", headers={"Cookie": f"{COOKIE_NAME}={forged(payload)}"})
    assert answer.status_code == 401, answer.text


def test_an_oversized_cookie_is_refused(app: InProcess) -> None:
    answer = app.request("GET", "/api/ops/stats", headers={"Cookie": f"{COOKIE_NAME}={'A' * 100_000}.x"})
    assert answer.status_code == 401, answer.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/ops/emails/{id}"),
        ("GET", "/api/ops/webhooks/{id}"),
        ("GET", "/api/ops/dead-letters/{id}"),
        ("DELETE", "/api/ops/dead-letters/{id}"),
    ],
)
@pytest.mark.parametrize("digits", [20, 4301, 5000])
def test_an_id_of_thousands_of_digits_is_not_found(app: InProcess, method: str, path: str, digits: int) -> None:
    """Python refuses to read an int of more than 4,300 digits; the routes match at most 19."""
    answer = app.request(method, path.format(id="9" * digits), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 404, answer.text
    assert app.request(method, path.format(id="9" * digits)).status_code in (401, 404)


@pytest.mark.parametrize(
    "body",
    [
        b'{"token": "\\ud800", "extra": 1}',
        b'{"\\ud800": 1}',
        b'{"token": ["\\udfff"]}',
        b'["\\ud800"]',
    ],
    ids=["value", "key", "in-list", "top-level"],
)
def test_a_lone_surrogate_in_a_json_body_is_a_422_that_does_not_echo_it(app: InProcess, body: bytes) -> None:
    answer = app.request("POST", "/api/ops/session", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert "ud800" not in answer.text and "udfff" not in answer.text
    assert answer.json()["error"]


def test_a_validation_error_says_where_without_echoing_the_input(app: InProcess) -> None:
    body = {"token": "x", "planted": "<script>alert(1)</script>"}
    answer = app.request("POST", "/api/ops/session", json=body)
    assert answer.status_code == 422
    assert "<script>" not in answer.text
    assert ["body", "planted"] in [item["loc"] for item in answer.json()["detail"]]


def test_a_signed_webhook_nested_100000_deep_is_a_400(app: InProcess) -> None:
    raw = b'{"event_id": "deep", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Timestamp": stamp,
        "X-Webhook-Signature": signature_header([SHARED_SECRET], stamp, raw),
    }
    answer = app.request("POST", "/api/payments/webhook/generic", content=raw, headers=headers)
    assert answer.status_code == 400, answer.text
    assert "nested" in answer.json()["error"]


def test_an_unsigned_deep_webhook_is_refused_unread(app: InProcess) -> None:
    raw = b"[" * 100_000
    answer = app.request("POST", "/api/payments/webhook/generic", content=raw)
    assert answer.status_code == 401


def test_a_body_over_the_limit_is_a_413_before_it_is_parsed(app: InProcess) -> None:
    raw = json.dumps({"token": "x" * (1024 * 1024)}).encode()
    answer = app.request("POST", "/api/ops/session", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413, answer.text[:300]


def test_a_query_parameter_given_twice_is_a_400_naming_it(app: InProcess) -> None:
    """FastAPI kept the last of several values: a request the API's document calls invalid got a 200."""
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}
    once = app.request("GET", "/api/ops/webhooks?provider=generic", headers=headers)
    twice = app.request("GET", "/api/ops/webhooks?provider=generic&limit=5&provider=%7B%7D", headers=headers)
    assert once.status_code == 200, once.text
    assert twice.status_code == 400, twice.text
    assert twice.json() == {"error": "the query parameter 'provider' is given more than once"}
