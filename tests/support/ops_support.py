"""Helpers of the ops API tests: the whole ``serve`` app on a free port, with both tokens set, and its callers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import requests

from bench.harness.serving import serving
from pipeline.core.runtime import Runtime
from pipeline.web.app import server_config
from pipeline.web.auth import COOKIE_NAME, CSRF_HEADER

#: The tokens the ops tests configure (32+ characters, as serve requires).
ADMIN_TOKEN = "cron-secret-of-the-ops-tests-0123456789"
READ_TOKEN = "read-token-of-the-ops-tests-0123456789ab"


def with_tokens(runtime: Runtime, **overrides: Any) -> Runtime:
    """``runtime`` with CRON_SECRET and OPS_READ_TOKEN set (and any other setting overridden)."""
    settings = dataclasses.replace(runtime.settings, cron_secret=ADMIN_TOKEN, ops_read_token=READ_TOKEN, **overrides)
    return dataclasses.replace(runtime, settings=settings)


@contextmanager
def running_app(runtime: Runtime) -> Iterator[str]:
    """``serve``'s app of ``runtime`` under uvicorn in a thread; yields its URL."""
    with serving(server_config(runtime, host="127.0.0.1", port=0)) as url:
        yield url


def bearer(token: Optional[str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def call(
    base: str, method: str, path: str, *, token: Optional[str] = ADMIN_TOKEN, body: Any = None, **options: Any
) -> requests.Response:
    """One request with a bearer token (None: without credentials)."""
    headers = {**bearer(token), **options.pop("headers", {})}
    return requests.request(method, base + path, json=body, headers=headers, timeout=30, **options)


def sign_in(base: str, token: str) -> tuple[str, str, requests.Response]:
    """POST /api/ops/session: the cookie's value, the session's CSRF token, and the answer."""
    answer = requests.post(f"{base}/api/ops/session", json={"token": token}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.cookies[COOKIE_NAME], answer.json()["csrf_token"], answer


def with_cookie(cookie: str, csrf: Optional[str] = None) -> dict[str, str]:
    """Headers of a cookie session (requests keeps Secure cookies off plain http, so they are set by hand)."""
    headers = {"Cookie": f"{COOKIE_NAME}={cookie}"}
    if csrf is not None:
        headers[CSRF_HEADER] = csrf
    return headers
