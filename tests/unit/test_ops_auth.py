"""The ops API's credentials without a server: tokens, signed sessions, the sign-in throttle, the settings' checks."""

from __future__ import annotations

import hmac

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings
from pipeline.web.auth import MAX_FAILURES, MAX_TRACKED_CLIENTS, SESSION_SECONDS, ApiError, OpsAuth, Role

ADMIN = "a" * 32
READ = "r" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_each_token_grants_its_role_and_every_candidate_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = OpsAuth(admin_token=ADMIN, read_token=READ)
    compared: list[bytes] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert auth.role_of(ADMIN) is Role.ADMIN
    assert compared == [ADMIN.encode(), READ.encode()]  # the match did not stop the comparisons
    assert auth.role_of(READ) is Role.READ
    assert auth.role_of("a" * 31) is None and auth.role_of("") is None


def test_a_session_is_signed_expires_and_ends_when_its_token_rotates() -> None:
    clock = Clock()
    auth = OpsAuth(admin_token=ADMIN, read_token=READ, clock=clock)
    cookie, issued = auth.issue(Role.READ)
    assert ADMIN not in cookie and READ not in cookie
    assert auth.read_session(cookie) == issued and issued.csrf_token

    payload, _, signature = cookie.partition(".")
    assert auth.read_session(f"{payload}.{signature[:-2]}xx") is None
    assert auth.read_session(payload) is None and auth.read_session("") is None
    assert OpsAuth(admin_token=ADMIN, read_token="n" * 32, clock=clock).read_session(cookie) is None
    assert OpsAuth(admin_token="b" * 32, read_token=READ, clock=clock).read_session(cookie) is None
    clock.now += SESSION_SECONDS + 1
    assert auth.read_session(cookie) is None


def test_a_client_failing_sign_in_too_often_waits_a_minute() -> None:
    clock = Clock()
    auth = OpsAuth(admin_token=ADMIN, clock=clock)
    for _ in range(MAX_FAILURES):
        auth.check_throttle("10.0.0.1")
        auth.record_failure("10.0.0.1")
    with pytest.raises(ApiError) as refused:
        auth.check_throttle("10.0.0.1")
    assert refused.value.status == 429
    auth.check_throttle("10.0.0.2")  # another client is not held
    clock.now += 61
    auth.check_throttle("10.0.0.1")


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"CRON_SECRET": "short"}, "CRON_SECRET='(value not shown)' is invalid: must be at least 32"),
        ({"CRON_SECRET": ADMIN, "OPS_READ_TOKEN": "r" * 31}, "OPS_READ_TOKEN='(value not shown)' is invalid"),
        ({"CRON_SECRET": ADMIN, "OPS_READ_TOKEN": ADMIN}, "OPS_READ_TOKEN must differ from CRON_SECRET"),
        ({"OPS_READ_TOKEN": READ}, "OPS_READ_TOKEN needs CRON_SECRET"),
    ],
)
def test_weak_or_confused_tokens_stop_start_up(environment: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(environment)


def test_tokens_stay_out_of_the_settings_repr() -> None:
    settings = Settings.from_env({"CRON_SECRET": ADMIN, "OPS_READ_TOKEN": READ})
    assert ADMIN not in repr(settings) and READ not in repr(settings)
    assert settings.ops_cookie_secure is True


def test_the_failure_table_holds_a_bounded_number_of_clients() -> None:
    """A scanner from a million addresses must not grow the table (memory) without end."""
    clock = Clock()
    auth = OpsAuth(admin_token=ADMIN, clock=clock)
    for n in range(MAX_TRACKED_CLIENTS + 500):
        auth.record_failure(f"client-{n}")
    assert len(auth._failures) <= MAX_TRACKED_CLIENTS
    for _ in range(MAX_FAILURES):
        auth.record_failure("latest")
    with pytest.raises(ApiError):
        auth.check_throttle("latest")  # the most recent clients are the ones kept
