"""Resend's HTTP client reads the environment once, at start, not at every request (issue 21)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests.sessions
import requests.utils

from bench.harness.fake_resend import FakeResend
from pipeline.providers.base import OutgoingEmail
from pipeline.providers.resend import PooledClient, ResendProvider

API = "https://api.resend.com"


@pytest.fixture
def fake() -> Iterator[FakeResend]:
    with FakeResend(api_key="re_unit") as provider:
        yield provider


def test_the_proxy_of_the_environment_is_used_for_the_api_s_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert PooledClient(timeout=1, api_url=API)._session.proxies.get("https") == "http://proxy.example:3128"

    monkeypatch.setenv("NO_PROXY", "api.resend.com")
    assert PooledClient(timeout=1, api_url=API)._session.proxies == {}


def test_a_ca_bundle_of_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/shop-ca.pem")
    assert PooledClient(timeout=1, api_url=API)._session.verify == "/etc/ssl/shop-ca.pem"


def test_a_send_reads_neither_proxies_nor_netrc(fake: FakeResend, monkeypatch: pytest.MonkeyPatch) -> None:
    """``requests`` read both at every request: a quarter of its CPU per email."""
    provider = ResendProvider(api_key=fake.api_key, api_url=fake.url, timeout=5)

    def unread(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the environment was read for a request")

    for module in (requests.utils, requests.sessions):
        monkeypatch.setattr(module, "get_environ_proxies", unread)
        monkeypatch.setattr(module, "get_netrc_auth", unread)
    email = OutgoingEmail(
        sender="shop@example.com",
        recipient="buyer@example.com",
        subject="Your order",
        html="<p>Thanks</p>",
        text=None,
        idempotency_key="unit-env-1",
        email_id=1,
    )

    accepted = provider.send(email)

    assert accepted.provider_id and len(fake.deliveries_to("buyer@example.com")) == 1
