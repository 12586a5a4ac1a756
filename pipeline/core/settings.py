"""Every setting of the workers, read from the environment in one place.

A bad value fails at start-up with a message that names the variable, rather
than at the first email an hour later. Durations are minutes and accept
fractions (0.01 = 0.6 s) so tests can run the real schedule quickly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Optional, TypeVar
from urllib.parse import urlsplit

from periodiq import cron

from pipeline.core.errors import ConfigError
from storage.database import DEFAULT_DATABASE_URL, normalize_url
from storage.errors import InvalidDatabaseUrl

T = TypeVar("T")

#: RabbitMQ of docker-compose.yml and of a development machine.
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Resend's documented base URL; RESEND_API_URL is the SDK's own override.
DEFAULT_RESEND_API_URL = "https://api.resend.com"
#: Resend's default team limit is 2 requests a second; 10% below it absorbs network
#: jitter, which otherwise lets three requests meet inside one second now and then.
DEFAULT_EMAIL_RATE_LIMIT = 1.8
#: The payment providers that may call the webhook intake; each may have ``{NAME}_WEBHOOK_SECRET``.
PAYMENT_PROVIDERS = ("telebirr", "cbe", "awash", "generic")


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    resend_api_key: Optional[str] = field(default=None, repr=False)
    resend_api_url: str = DEFAULT_RESEND_API_URL
    email_from: str = "Minalesh <no-reply@minalesh.local>"
    email_max_retries: int = 3
    email_retry_delay_minutes: float = 1.0
    email_max_retry_delay_minutes: float = 60.0
    email_schedule: str = "*/2 * * * *"
    email_batch_size: int = 500
    email_lease_minutes: float = 15.0
    email_rate_limit_per_second: float = DEFAULT_EMAIL_RATE_LIMIT
    email_outbox_dir: str = "outbox"
    broker_max_hold_minutes: float = 10.0
    reservation_timeout_minutes: float = 15.0
    reservation_schedule: str = "*/5 * * * *"
    reservation_batch_size: int = 500
    log_level: str = "INFO"
    webhook_initial_retry_delay_minutes: float = 1.0
    webhook_max_retry_delay_minutes: float = 60.0
    webhook_max_retries: int = 5
    webhook_schedule: str = "*/10 * * * *"
    webhook_batch_size: int = 10
    #: How long a stored event is left to whoever holds it (a message on its way, a worker
    #: on it, a retry waiting past its due time) before ``retry_webhooks`` re-enqueues it.
    webhook_lease_minutes: float = 5.0
    #: PAYMENT_WEBHOOK_SECRET: the key of every provider without a secret of its own.
    payment_webhook_secret: Optional[str] = field(default=None, repr=False)
    #: (provider, secret) pairs from ``{PROVIDER}_WEBHOOK_SECRET``; a tuple keeps Settings hashable.
    provider_webhook_secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: ALERT_WEBHOOK_URL: where dead-letter digests are POSTed (a Slack incoming webhook works);
    #: its path is a secret at Slack, hence kept out of the repr.
    alert_webhook_url: Optional[str] = field(default=None, repr=False)
    #: ALERT_EMAIL: who gets dead-letter digests by email, sent straight through the mailer.
    alert_email: Optional[str] = None
    alert_min_interval_minutes: float = 10.0
    dead_letter_retention_days: int = 180
    dead_letter_prune_schedule: str = "17 3 * * *"

    @property
    def email_max_attempts(self) -> int:
        """The first attempt plus the retries."""
        return self.email_max_retries + 1

    @property
    def webhook_max_attempts(self) -> int:
        """The first attempt at processing an event plus its retries."""
        return self.webhook_max_retries + 1

    def webhook_secret(self, provider: str) -> Optional[str]:
        """``{PROVIDER}_WEBHOOK_SECRET``, or else PAYMENT_WEBHOOK_SECRET, or None."""
        return dict(self.provider_webhook_secrets).get(provider, self.payment_webhook_secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read and check every variable; raise ConfigError naming the first bad one."""
        read = _Reader(environ)
        defaults = cls()
        settings = cls(
            database_url=read("DATABASE_URL", _database_url, defaults.database_url),
            broker_url=read("BROKER_URL", _amqp_url, defaults.broker_url),
            resend_api_key=read("RESEND_API_KEY", str, None),
            resend_api_url=read("RESEND_API_URL", _http_url, defaults.resend_api_url),
            email_from=read("EMAIL_FROM", _sender, defaults.email_from),
            email_max_retries=read("EMAIL_MAX_RETRIES", _count, defaults.email_max_retries),
            email_retry_delay_minutes=read(
                "EMAIL_RETRY_DELAY_MINUTES", _positive_minutes, defaults.email_retry_delay_minutes
            ),
            email_max_retry_delay_minutes=read(
                "EMAIL_MAX_RETRY_DELAY_MINUTES", _positive_minutes, defaults.email_max_retry_delay_minutes
            ),
            email_schedule=read("EMAIL_SCHEDULE", _cron, defaults.email_schedule),
            email_batch_size=read("EMAIL_BATCH_SIZE", _positive_count, defaults.email_batch_size),
            email_lease_minutes=read("EMAIL_LEASE_MINUTES", _positive_minutes, defaults.email_lease_minutes),
            email_rate_limit_per_second=read(
                "EMAIL_RATE_LIMIT_PER_SECOND", _positive_float, defaults.email_rate_limit_per_second
            ),
            email_outbox_dir=read("EMAIL_OUTBOX_DIR", str, defaults.email_outbox_dir),
            broker_max_hold_minutes=read(
                "BROKER_MAX_HOLD_MINUTES", _positive_minutes, defaults.broker_max_hold_minutes
            ),
            reservation_timeout_minutes=read(
                "RESERVATION_TIMEOUT_MINUTES", _positive_minutes, defaults.reservation_timeout_minutes
            ),
            reservation_schedule=read("RESERVATION_SCHEDULE", _cron, defaults.reservation_schedule),
            reservation_batch_size=read(
                "RESERVATION_BATCH_SIZE", _positive_count, defaults.reservation_batch_size
            ),
            log_level=read("LOG_LEVEL", _log_level, defaults.log_level),
            webhook_initial_retry_delay_minutes=read(
                "WEBHOOK_INITIAL_RETRY_DELAY_MINUTES",
                _positive_minutes,
                defaults.webhook_initial_retry_delay_minutes,
            ),
            webhook_max_retry_delay_minutes=read(
                "WEBHOOK_MAX_RETRY_DELAY_MINUTES", _positive_minutes, defaults.webhook_max_retry_delay_minutes
            ),
            webhook_max_retries=read("WEBHOOK_MAX_RETRIES", _count, defaults.webhook_max_retries),
            webhook_schedule=read("WEBHOOK_SCHEDULE", _cron, defaults.webhook_schedule),
            webhook_batch_size=read("WEBHOOK_BATCH_SIZE", _positive_count, defaults.webhook_batch_size),
            webhook_lease_minutes=read(
                "WEBHOOK_LEASE_MINUTES", _positive_minutes, defaults.webhook_lease_minutes
            ),
            payment_webhook_secret=read("PAYMENT_WEBHOOK_SECRET", str, None),
            provider_webhook_secrets=tuple(
                (provider, secret)
                for provider in PAYMENT_PROVIDERS
                if (secret := read(f"{provider.upper()}_WEBHOOK_SECRET", str, None)) is not None
            ),
            alert_webhook_url=read("ALERT_WEBHOOK_URL", _webhook_url, None),
            alert_email=read("ALERT_EMAIL", _address, None),
            alert_min_interval_minutes=read(
                "ALERT_MIN_INTERVAL_MINUTES", _positive_minutes, defaults.alert_min_interval_minutes
            ),
            dead_letter_retention_days=read(
                "DEAD_LETTER_RETENTION_DAYS", _positive_count, defaults.dead_letter_retention_days
            ),
            dead_letter_prune_schedule=read("DEAD_LETTER_PRUNE_SCHEDULE", _cron, defaults.dead_letter_prune_schedule),
        )
        if settings.email_max_retry_delay_minutes < settings.email_retry_delay_minutes:
            raise ConfigError(
                "EMAIL_MAX_RETRY_DELAY_MINUTES must not be below EMAIL_RETRY_DELAY_MINUTES "
                f"({settings.email_max_retry_delay_minutes} < {settings.email_retry_delay_minutes})"
            )
        if settings.webhook_max_retry_delay_minutes < settings.webhook_initial_retry_delay_minutes:
            raise ConfigError(
                "WEBHOOK_MAX_RETRY_DELAY_MINUTES must not be below WEBHOOK_INITIAL_RETRY_DELAY_MINUTES "
                f"({settings.webhook_max_retry_delay_minutes} < {settings.webhook_initial_retry_delay_minutes})"
            )
        return settings


class _Reader:
    """Reads one variable, applying its parser and naming it in any error."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def __call__(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None


def _database_url(raw: str) -> str:
    try:
        normalize_url(raw)
    except InvalidDatabaseUrl as exc:
        raise ValueError(str(exc)) from None
    return raw


def _amqp_url(raw: str) -> str:
    if not raw.startswith(("amqp://", "amqps://")):
        raise ValueError("expected an amqp:// or amqps:// URL")
    return raw


def _http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


def _sender(raw: str) -> str:
    if "@" not in raw:
        raise ValueError("expected an address such as 'Shop <no-reply@example.com>'")
    return raw


def _webhook_url(raw: str) -> str:
    parsed = urlsplit(raw)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        # Not ValueError: the reader would quote the value, and a webhook URL's path is its secret.
        raise ConfigError("ALERT_WEBHOOK_URL is invalid (value not shown): expected an http:// or https:// URL")
    return raw


def _address(raw: str) -> str:
    local, _, domain = raw.partition("@")
    if not local or "." not in domain or any(c.isspace() or c in ",;<>" for c in raw):
        raise ValueError("expected one plain address such as 'ops@example.com'")
    return raw


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_count(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _positive_minutes(raw: str) -> float:
    try:
        return _positive_float(raw)
    except ValueError:
        raise ValueError("must be a positive number of minutes (fractions allowed)") from None


#: (low, high) of each cron field, in order; periodiq accepts out-of-range values silently.
_CRON_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _cron(raw: str) -> str:
    if not raw.startswith("@") and len(raw.split()) != 5:
        raise ValueError("a cron expression has five fields: minute hour day month weekday")
    try:
        spec = cron(raw)
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(f"not a cron expression ({exc})") from None
    for values, (low, high) in zip(spec.astuple(), _CRON_BOUNDS, strict=True):
        if not values or values[0] < low or values[-1] > high:
            raise ValueError(f"a field is outside {low}-{high}")
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level
