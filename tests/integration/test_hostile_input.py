"""The security review's cases, each as it was reproduced: a cookie running a cron job by GET, and the
requests without credentials that ended in 500. The whole app in-process, on the run's PostgreSQL and RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.core.runtime import Runtime
from pipeline.web.app import build_app
from pipeline.web.auth import COOKIE_NAME, CSRF_HEADER
from tests.support.asgi_support import InProcess
from tests.support.ops_support import ADMIN_TOKEN, READ_TOKEN, with_tokens

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
