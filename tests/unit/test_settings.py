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


def test_blank_values_mean_the_default_and_values_are_trimmed() -> None:
    settings = Settings.from_env({"EMAIL_MAX_RETRIES": "  ", "LOG_LEVEL": "", "EMAIL_BATCH_SIZE": " 50 "})
    assert (settings.email_max_retries, settings.log_level, settings.email_batch_size) == (3, "INFO", 50)


def test_accepted_values_are_normalized() -> None:
    settings = Settings.from_env(
        {
            "LOG_LEVEL": "debug",
            "RESEND_API_URL": "http://127.0.0.1:9999/",
            "EMAIL_SCHEDULE": "@hourly",
            "BROKER_URL": "amqps://user:pw@mq.example.com:5671/shop",
            "DATABASE_URL": "sqlite:///dev.sqlite3",
        }
    )
    assert settings.log_level == "DEBUG" and settings.resend_api_url == "http://127.0.0.1:9999"
    assert settings.email_schedule == "@hourly" and settings.broker_url.startswith("amqps://")
    assert settings.database_url == "sqlite:///dev.sqlite3"


def test_zero_retries_leave_one_attempt() -> None:
    settings = Settings.from_env({"EMAIL_MAX_RETRIES": "0", "WEBHOOK_MAX_RETRIES": "0"})
    assert (settings.email_max_attempts, settings.webhook_max_attempts) == (1, 1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EMAIL_LEASE_MINUTES", "nan"),
        ("BROKER_MAX_HOLD_MINUTES", "inf"),
        ("EMAIL_QUOTA_PAUSE_MINUTES", "-1"),
        ("EMAIL_RATE_LIMIT_PER_SECOND", "-1"),
        ("EMAIL_RATE_LIMIT_CAP", "0"),
        ("EMAIL_LISTEN", "maybe"),
        ("RESERVATION_BATCH_SIZE", "1.5"),
        ("EMAIL_SCHEDULE", "* * * * * *"),
        ("RESERVATION_SCHEDULE", "0 24 * * *"),
        ("ALERT_EMAIL", "ops@localhost"),
    ],
)
def test_more_invalid_values_fail_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value).startswith(f"{name}={value!r} is invalid")


def test_only_the_known_providers_have_secrets_of_their_own() -> None:
    settings = Settings.from_env({"PAYPAL_WEBHOOK_SECRET": "pp", "TELEBIRR_WEBHOOK_SECRET": "tb"})
    assert settings.webhook_secret("telebirr") == "tb"
    assert settings.webhook_secret("paypal") is None and settings.webhook_secret("cbe") is None
