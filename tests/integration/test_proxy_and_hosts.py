"""The sign-in throttle keyed on the real client behind named proxies, and the Host header checked.

The whole app in-process, as ``serve`` builds it, from a peer address chosen per test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.core.runtime import Runtime
from pipeline.web.app import build_app
from pipeline.web.auth import MAX_FAILURES
from tests.support.asgi_support import InProcess
from tests.support.ops_support import with_tokens

PROXY = "10.0.0.1"


@contextmanager
def app_from(runtime: Runtime, peer: str, **settings: object) -> Iterator[InProcess]:
    current = with_tokens(runtime)
    current = dataclasses.replace(current, settings=dataclasses.replace(current.settings, **settings))
    client = InProcess(build_app(current), client=(peer, 40000))
    yield client
    client.close()


def fail_sign_in(app: InProcess, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return app.request("POST", "/api/ops/session", json={"token": "wrong"}, headers=headers).status_code


def test_behind_a_named_proxy_each_client_has_its_own_throttle(runtime: Runtime) -> None:
    """Keyed on the proxy's address, one attacker locked every operator out for a minute."""
    with app_from(runtime, PROXY, forwarded_allow_ips=(PROXY,)) as app:
        assert [fail_sign_in(app, "203.0.113.9") for _ in range(MAX_FAILURES)] == [401] * MAX_FAILURES
        assert fail_sign_in(app, "203.0.113.9") == 429
        assert fail_sign_in(app, "198.51.100.4") == 401  # another operator behind the same proxy


def test_a_forwarded_address_from_a_peer_not_named_is_ignored(runtime: Runtime) -> None:
    """A rotating X-Forwarded-For must not give an untrusted client a fresh throttle each time."""
    with app_from(runtime, "192.0.2.50", forwarded_allow_ips=(PROXY,)) as app:
        statuses = [fail_sign_in(app, f"203.0.113.{n}") for n in range(MAX_FAILURES + 1)]
        assert statuses == [401] * MAX_FAILURES + [429]


def test_a_named_proxy_cannot_be_bypassed_by_prepending_addresses(runtime: Runtime) -> None:
    """The proxy appends the client it saw; what the client wrote before that is not believed."""
    with app_from(runtime, PROXY, forwarded_allow_ips=(PROXY,)) as app:
        statuses = [fail_sign_in(app, f"198.51.100.{n}, 203.0.113.9") for n in range(MAX_FAILURES + 1)]
        assert statuses == [401] * MAX_FAILURES + [429]


def test_without_named_proxies_no_forwarded_header_is_believed(runtime: Runtime) -> None:
    with app_from(runtime, "127.0.0.1") as app:
        statuses = [fail_sign_in(app, f"203.0.113.{n}") for n in range(MAX_FAILURES + 1)]
        assert statuses == [401] * MAX_FAILURES + [429]


def test_a_host_not_configured_is_refused_when_hosts_are_set(runtime: Runtime) -> None:
    """DNS rebinding: a page on evil.example resolving to this server must not read /metrics or the API."""
    with app_from(runtime, "127.0.0.1", ops_allowed_hosts=("ops.example.com", "localhost")) as app:
        for path in ("/metrics", "/api/ops/stats", "/healthz", "/ops"):
            refused = app.request("GET", path, headers={"Host": "evil.example"})
            assert refused.status_code == 400, (path, refused.status_code)
        assert app.request("GET", "/healthz", headers={"Host": "ops.example.com"}).status_code == 200
        assert app.request("GET", "/healthz", headers={"Host": "localhost:8000"}).status_code == 200


def test_any_host_is_answered_when_none_are_set(runtime: Runtime) -> None:
    with app_from(runtime, "127.0.0.1") as app:
        assert app.request("GET", "/healthz", headers={"Host": "evil.example"}).status_code == 200
