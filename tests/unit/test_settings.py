"""Configuration: defaults, fractions, and errors that name the variable."""

from __future__ import annotations

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings
from storage.database import get_engine, normalize_url


def test_defaults_match_the_documented_contract() -> None:
    settings = Settings.from_env({})
    assert settings.email_max_retries == 3
    assert settings.email_retry_delay_minutes == 1
    assert settings.email_max_retry_delay_minutes == 60
    assert settings.email_schedule == "*/2 * * * *"
    assert settings.email_max_attempts == 4
    assert settings.resend_api_url == "https://api.resend.com"


def test_fractional_minutes_are_accepted() -> None:
    settings = Settings.from_env({"EMAIL_RETRY_DELAY_MINUTES": "0.01", "EMAIL_MAX_RETRY_DELAY_MINUTES": "0.5"})
    assert settings.email_retry_delay_minutes == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EMAIL_MAX_RETRIES", "three"),
        ("EMAIL_MAX_RETRIES", "-1"),
        ("EMAIL_RETRY_DELAY_MINUTES", "0"),
        ("EMAIL_RETRY_DELAY_MINUTES", "soon"),
        ("EMAIL_MAX_RETRY_DELAY_MINUTES", "-5"),
        ("EMAIL_SCHEDULE", "every two minutes"),
        ("EMAIL_SCHEDULE", "61 * * * *"),
        ("DATABASE_URL", "not a url"),
        ("BROKER_URL", "http://127.0.0.1:5672"),
        ("RESEND_API_URL", "api.resend.com"),
        ("EMAIL_FROM", "no address here"),
        ("EMAIL_BATCH_SIZE", "0"),
        ("LOG_LEVEL", "LOUD"),
    ],
)
def test_invalid_value_fails_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value).startswith(f"{name}={value!r} is invalid")


def test_max_delay_below_first_delay_is_refused() -> None:
    with pytest.raises(ConfigError, match="EMAIL_MAX_RETRY_DELAY_MINUTES must not be below"):
        Settings.from_env({"EMAIL_RETRY_DELAY_MINUTES": "5", "EMAIL_MAX_RETRY_DELAY_MINUTES": "2"})


def test_secrets_stay_out_of_the_repr() -> None:
    assert "re_secret" not in repr(Settings.from_env({"RESEND_API_KEY": "re_secret"}))


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_platform_database_urls_use_psycopg2(scheme: str) -> None:
    url = f"{scheme}://user:pw@db.example.com:5432/shop"
    assert normalize_url(url) == "postgresql+psycopg2://user:pw@db.example.com:5432/shop"
    assert get_engine(url).dialect.driver == "psycopg2"
