"""Configuration: defaults, fractions, and errors that name the variable."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings
from storage.database import get_engine, mask_password, normalize_url
from storage.errors import InvalidDatabaseUrl


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
        ("LOG_FORMAT", "xml"),
        ("WORKER_METRICS_PORT", "70000"),
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


# --- secrets in URLs: masked wherever a URL is shown, kept whole for use ------------------------------


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        (
            "DATABASE_URL",
            "postgresql://app:s3cr3t@db.example.com:notaport/shop",
            "postgresql://app:***@db.example.com:notaport/shop",
        ),
        ("DATABASE_URL", "postgresql//app:s3cr3t@db/shop", "postgresql//app:***@db/shop"),
        ("DATABASE_URL", "postgresql://app:s3:cr@3t@db:5432:5432/shop", "postgresql://app:***@db:5432:5432/shop"),
        ("DATABASE_URL", "app:s3cr3t@db/shop", "app:***@db/shop"),
        ("BROKER_URL", "amqp//guest:s3cr3t@mq:5672/%2F", "amqp//guest:***@mq:5672/%2F"),
        ("BROKER_URL", "amqp://guest:s3cr3t@mq:notaport/%2F", "amqp://guest:***@mq:notaport/%2F"),
        (
            "BROKER_URL",
            "amqp://guest:s3cr3t@mq1:5672/%2F;amqp://guest:s3cr3t@mq2:5672x/%2F",
            "amqp://guest:***@mq1:5672/%2F;amqp://guest:***@mq2:5672x/%2F",
        ),
    ],
    ids=["db-port", "db-scheme", "db-at-in-password", "db-no-scheme", "mq-scheme", "mq-port", "mq-second-node"],
)
def test_a_mistyped_url_is_refused_with_its_password_masked(name: str, value: str, shown: str) -> None:
    """The start-up error names the variable and shows the URL, but never its password."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    message = str(raised.value)
    assert message.startswith(f"{name}={shown!r} is invalid: "), message
    assert "s3" not in message and "cr3t" not in message


def test_the_cli_start_up_error_shows_no_password() -> None:
    """What an operator sees: ``minalesh-workers`` exits 1 with the masked URL and no password."""
    result = CliRunner().invoke(main, ["db", "current"], env={"DATABASE_URL": "postgresql://app:s3cr3t@db:x/shop"})
    assert result.exit_code == 1
    assert "DATABASE_URL='postgresql://app:***@db:x/shop' is invalid" in result.output
    assert "s3cr3t" not in result.output


def test_the_repr_masks_url_passwords_and_the_values_keep_them() -> None:
    database, broker = "postgresql://app:s3cr3t@db.example.com/shop", "amqps://shop:s3cr3t@mq.example.com/shop"
    settings = Settings.from_env({"DATABASE_URL": database, "BROKER_URL": broker})
    shown = repr(settings)
    assert "database_url='postgresql://app:***@db.example.com/shop'" in shown
    assert "broker_url='amqps://shop:***@mq.example.com/shop'" in shown
    assert "s3cr3t" not in shown and "guest:guest" not in repr(Settings.from_env({}))
    assert (settings.database_url, settings.broker_url) == (database, broker)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://postgres@127.0.0.1:5432/minalesh", "postgresql://postgres@127.0.0.1:5432/minalesh"),
        ("sqlite:///dev.sqlite3", "sqlite:///dev.sqlite3"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://h/db?user=u&password=secret&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("amqp://a:b@h1/v;amqp://c:d@h2/v", "amqp://a:***@h1/v;amqp://c:***@h2/v"),
        ("amqp://a:b;c@h1/v", "amqp://a:***@h1/v"),
    ],
)
def test_mask_password(url: str, masked: str) -> None:
    assert mask_password(url) == masked


def test_a_database_url_sqlalchemy_cannot_parse_is_refused_without_its_password() -> None:
    """Hosts call ``get_engine`` without our settings: storage's own error masks the password too."""
    with pytest.raises(InvalidDatabaseUrl) as raised:
        normalize_url("postgresql//app:s3cr3t@db/shop")
    assert "postgresql//app:***@db/shop" in str(raised.value) and "s3cr3t" not in str(raised.value)


# --- a delayed message held past RabbitMQ's consumer_timeout gets its consumer cancelled -------------


@pytest.mark.parametrize("hold", ["30", "31", "600"])
def test_a_hold_not_below_the_consumer_timeout_is_refused(hold: str) -> None:
    """RabbitMQ cancels a consumer that holds a delivery past ``consumer_timeout`` (30 min by default)."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"BROKER_MAX_HOLD_MINUTES": hold})
    assert str(raised.value) == (
        f"BROKER_MAX_HOLD_MINUTES must be below BROKER_CONSUMER_TIMEOUT_MINUTES, RabbitMQ's consumer_timeout "
        f"(30 minutes by default): {float(hold):g} >= 30"
    )


def test_a_hold_below_the_consumer_timeout_is_accepted_and_a_raised_timeout_allows_longer() -> None:
    assert Settings.from_env({"BROKER_MAX_HOLD_MINUTES": "29.5"}).broker_max_hold_minutes == 29.5
    raised = Settings.from_env({"BROKER_MAX_HOLD_MINUTES": "45", "BROKER_CONSUMER_TIMEOUT_MINUTES": "60"})
    assert (raised.broker_max_hold_minutes, raised.broker_consumer_timeout_minutes) == (45, 60)
    with pytest.raises(ConfigError, match="BROKER_MAX_HOLD_MINUTES must be below"):
        Settings.from_env({"BROKER_MAX_HOLD_MINUTES": "10", "BROKER_CONSUMER_TIMEOUT_MINUTES": "5"})


def test_secret_values_are_every_secret_setting_and_the_urls_passwords() -> None:
    settings = Settings.from_env(
        {
            "RESEND_API_KEY": "re_key",
            "METRICS_TOKEN": "metrics-tok",
            "CBE_WEBHOOK_SECRET": "cbe-secret",
            "DATABASE_URL": "postgresql://app:p%3Ass@db/shop?sslmode=require",
            "BROKER_URL": "amqp://a:one@x:5672/%2F;amqp://b:two@y:5672/%2F",
        }
    )
    assert settings.secret_values() == {"re_key", "metrics-tok", "cbe-secret", "p%3Ass", "p:ss", "one", "two"}
    assert "metrics-tok" not in repr(settings)
