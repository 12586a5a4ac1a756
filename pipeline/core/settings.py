"""Every setting of the workers, read from the environment in one place.

A bad value fails at start-up with a message that names the variable, rather
than at the first email an hour later. Durations are minutes and accept
fractions (0.01 = 0.6 s) so tests can run the real schedule quickly.

Secrets are never printed: a ``secret`` setting is left out of the repr and its
value out of error messages; the URLs, which carry passwords, are shown through
``mask_password`` in both (``postgresql://app:***@db/shop``), and their parsers'
messages never quote them.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Optional, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from periodiq import cron
from sqlalchemy.engine import make_url

from pipeline.core.errors import ConfigError
from storage.database import SUPPORTED_DRIVERS, mask_password, normalize_url
from storage.errors import InvalidDatabaseUrl

T = TypeVar("T")

#: The PostgreSQL of docker-compose.yml.
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/minalesh"
#: RabbitMQ of docker-compose.yml and of a development machine.
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Resend's documented base URL; RESEND_API_URL is the SDK's own override.
DEFAULT_RESEND_API_URL = "https://api.resend.com"
#: Resend's default team limit is 2 requests a second; 10% below it absorbs network
#: jitter, which otherwise lets three requests meet inside one second now and then.
DEFAULT_EMAIL_RATE_LIMIT = 1.8
#: Resend's batch endpoint takes at most this many emails in one request.
MAX_PER_REQUEST = 100
#: RabbitMQ's default ``consumer_timeout``: a consumer holding a delivery longer is cancelled.
DEFAULT_CONSUMER_TIMEOUT_MINUTES = 30.0
#: The payment providers that may call the webhook intake; each may have ``{NAME}_WEBHOOK_SECRET``.
PAYMENT_PROVIDERS = ("telebirr", "cbe", "awash", "generic")
#: The largest subject and body (each of html and text) a template may render, in UTF-8 bytes.
DEFAULT_EMAIL_MAX_SUBJECT_BYTES = 2048
DEFAULT_EMAIL_MAX_BODY_BYTES = 1024 * 1024
#: The email providers EMAIL_PROVIDERS may name (``pipeline.providers``).
EMAIL_PROVIDER_NAMES = ("resend", "smtp", "outbox")
#: CRON_SECRET and OPS_READ_TOKEN are bearer tokens on the internet: shorter ones are refused.
MIN_TOKEN_LENGTH = 32


def _database_url(raw: str) -> str:
    """A PostgreSQL URL (or SQLite, for ``dev``): another scheme fails here, not as a missing driver module later."""
    try:
        driver = make_url(normalize_url(raw)).drivername
    except InvalidDatabaseUrl:
        raise ValueError("expected a URL such as postgresql://user:password@host:5432/name") from None
    if driver not in SUPPORTED_DRIVERS:
        scheme = make_url(raw).drivername
        raise ValueError(f"unsupported scheme {scheme!r} (expected postgresql://user:password@host:5432/name)")
    return raw


def _amqp_url(raw: str) -> str:
    """One ``amqp://`` or ``amqps://`` URL, or several separated by ``;`` (the nodes of a cluster).

    The port is checked here, where the error can mask the URL, rather than by pika at
    bootstrap; the messages never quote the URL.
    """
    for node in raw.split(";"):
        parsed = urlsplit(node.strip())
        if parsed.scheme not in ("amqp", "amqps"):
            raise ValueError("expected amqp:// or amqps:// URLs (a cluster's nodes separated by ';')")
        try:
            valid_port = parsed.port is None or parsed.port > 0
        except ValueError:  # urllib's message quotes the port, which may be a misplaced password
            valid_port = False
        if not valid_port:
            raise ValueError("a port is not a number from 1 to 65535")
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


def _per_request(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= MAX_PER_REQUEST:
        raise ValueError(f"must be 1 to {MAX_PER_REQUEST} (Resend's batch endpoint takes at most {MAX_PER_REQUEST})")
    return value


def _rate(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be 0 (no limit) or a positive number of requests per second")
    return value


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _positive_minutes(raw: str) -> float:
    try:
        return _positive_float(raw)
    except ValueError:
        raise ValueError("must be a positive number of minutes (fractions allowed)") from None


#: (low, high) of each cron field, in order; periodiq accepts out-of-range values silently.
_CRON_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _providers(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip().lower() for name in raw.split(",") if name.strip())
    unknown = [name for name in names if name not in EMAIL_PROVIDER_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"expected names among {', '.join(EMAIL_PROVIDER_NAMES)}, each once, comma-separated")
    return names


def _smtp_url(raw: str) -> str:
    parsed = urlsplit(raw)
    if parsed.scheme not in ("smtp", "smtps") or not parsed.hostname:
        raise ValueError("expected smtp://user:password@host:port (STARTTLS when offered) or smtps://…")
    try:
        _ = parsed.port
    except ValueError:
        raise ValueError("the port is not a number") from None
    query = dict(parse_qsl(parsed.query))
    if set(query) - {"starttls"} or query.get("starttls", "required") != "required":
        raise ValueError("the only option is ?starttls=required")
    return raw


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


def _token(raw: str) -> str:
    if len(raw) < MIN_TOKEN_LENGTH:
        raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters (e.g. `openssl rand -hex 32`)")
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _log_format(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in ("text", "json"):
        raise ValueError("expected text or json")
    return lowered


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("expected 0 (off) or a TCP port up to 65535")
    return value


def _proxies(raw: str) -> tuple[str, ...]:
    """Addresses or networks (``10.0.0.1``, ``10.0.0.0/24``, ``::1``), comma-separated; ``*`` trusts every peer."""
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        if item != "*":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
    return items


def _host_names(raw: str) -> tuple[str, ...]:
    """Host names, comma-separated, without port; ``*.example.com`` matches its subdomains."""
    items = tuple(item.strip().lower() for item in raw.split(",") if item.strip())
    for item in items:
        if ":" in item.strip("[]") and not item.startswith("[") or "/" in item or " " in item:
            raise ValueError(f"{item!r} is not a host name (no port, no scheme)")
    return items


def _wait_minutes(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise ValueError("must be 0 (one attempt, no wait) or a positive number of minutes")
    return value


def _svix_secrets(raw: str) -> str:
    """Svix signing secrets (``whsec_`` and base64), space-separated; kept as written, checked each."""
    for item in raw.split():
        key = item.removeprefix("whsec_")
        try:
            decoded = base64.b64decode(key, validate=True)
        except (ValueError, binascii.Error):
            decoded = b""
        if not decoded:
            raise ValueError("expected whsec_ secrets (Resend's webhook page), space-separated")
    return " ".join(raw.split())


def _hidden(_raw: str) -> str:
    return "(value not shown)"


def setting(
    variable: str,
    parse: Callable[[str], Any],
    default: Any = None,
    *,
    secret: bool = False,
    shown: Callable[[str], str] = str,
) -> Any:
    """A field of ``Settings`` read from ``variable`` with ``parse``.

    ``secret`` keeps it out of the repr and its value out of error messages;
    ``shown`` is how its text is printed otherwise (``mask_password`` for URLs).
    """
    show = _hidden if secret else shown
    return field(
        default=default,
        repr=not secret,
        metadata={"variable": variable, "parse": parse, "shown": show, "secret": secret},
    )


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How an actor's failed messages are retried: ``delay × 2ⁿ``, capped, ``max_retries`` times."""

    max_retries: int
    delay_minutes: float
    max_delay_minutes: float


@dataclass(frozen=True, kw_only=True, repr=False)
class Settings:
    """Every variable, its parser and its default, declared once; ``from_env`` reads them all."""

    database_url: str = setting("DATABASE_URL", _database_url, DEFAULT_DATABASE_URL, shown=mask_password)
    broker_url: str = setting("BROKER_URL", _amqp_url, DEFAULT_BROKER_URL, shown=mask_password)
    #: How long a process starting waits for PostgreSQL and RabbitMQ to accept connections before it
    #: exits (``pipeline.core.preflight``); a refusal (credentials, vhost, database, schema) exits at once.
    startup_wait_minutes: float = setting("STARTUP_WAIT_MINUTES", _wait_minutes, 0.5)
    resend_api_key: Optional[str] = setting("RESEND_API_KEY", str, secret=True)
    resend_api_url: str = setting("RESEND_API_URL", _http_url, DEFAULT_RESEND_API_URL)
    email_from: str = setting("EMAIL_FROM", _sender, "Minalesh <no-reply@minalesh.local>")
    email_max_retries: int = setting("EMAIL_MAX_RETRIES", _count, 3)
    email_retry_delay_minutes: float = setting("EMAIL_RETRY_DELAY_MINUTES", _positive_minutes, 1.0)
    email_max_retry_delay_minutes: float = setting("EMAIL_MAX_RETRY_DELAY_MINUTES", _positive_minutes, 60.0)
    email_schedule: str = setting("EMAIL_SCHEDULE", _cron, "*/2 * * * *")
    email_batch_size: int = setting("EMAIL_BATCH_SIZE", _positive_count, 500)
    email_lease_minutes: float = setting("EMAIL_LEASE_MINUTES", _positive_minutes, 15.0)
    #: Requests per second to the provider until it tells its own limit; 0: no limit at all.
    email_rate_limit_per_second: float = setting("EMAIL_RATE_LIMIT_PER_SECOND", _rate, DEFAULT_EMAIL_RATE_LIMIT)
    #: Never more than this, whatever the provider allows (a share of the team's limit); None: no cap.
    email_rate_limit_cap: Optional[float] = setting("EMAIL_RATE_LIMIT_CAP", _positive_float)
    #: Emails per provider request when several are ready together (a batch); 1: one per request.
    email_per_request: int = setting("EMAIL_PER_REQUEST", _per_request, 100)
    #: How long a quota 429 pauses sending when the provider does not say when its quota resets.
    email_quota_pause_minutes: float = setting("EMAIL_QUOTA_PAUSE_MINUTES", _positive_minutes, 60.0)
    #: Wake the email fan-out on PostgreSQL NOTIFY (needs a direct connection, not a
    #: transaction-pooling PgBouncer); false: only the cron tick picks emails up.
    email_listen: bool = setting("EMAIL_LISTEN", _boolean, True)
    email_outbox_dir: str = setting("EMAIL_OUTBOX_DIR", str, "outbox")
    #: The email providers, comma-separated, in order of preference (``resend``, ``smtp``, ``outbox``);
    #: unset: ``resend`` when RESEND_API_KEY is set, ``outbox`` otherwise (``Settings.providers``).
    email_providers: Optional[tuple[str, ...]] = setting("EMAIL_PROVIDERS", _providers)
    #: The SMTP server of the ``smtp`` provider: ``smtp://user:password@host:port`` (STARTTLS when the
    #: server offers it; ``?starttls=required`` to insist) or ``smtps://`` (TLS from the first byte).
    smtp_url: Optional[str] = setting("SMTP_URL", _smtp_url, shown=mask_password)
    #: Requests per second to the SMTP server, the fleet's (a batch's emails are one request, on one
    #: connection); 0: not paced (a server that limits answers 4xx, and the email is retried).
    smtp_rate_limit_per_second: float = setting("SMTP_RATE_LIMIT_PER_SECOND", _rate, 0.0)
    #: Let failover hand an email whose attempt may have reached one provider (a timeout, a 5xx) to the
    #: next one; it may then be delivered twice. false: it waits for that provider.
    email_failover_accept_duplicates: bool = setting("EMAIL_FAILOVER_ACCEPT_DUPLICATES", _boolean, False)
    #: During a provider's outage pause, one request probes it this often (seconds).
    email_outage_probe_seconds: float = setting("EMAIL_OUTAGE_PROBE_SECONDS", _positive_float, 3.0)
    #: A templated email whose subject, or either body, renders larger than this fails permanently;
    #: no value one render builds may be larger than the body's limit either (docs/security.md).
    email_max_subject_bytes: int = setting("EMAIL_MAX_SUBJECT_BYTES", _positive_count, DEFAULT_EMAIL_MAX_SUBJECT_BYTES)
    #: The largest rendered html or text body, and the largest value one render may build (bytes).
    email_max_body_bytes: int = setting("EMAIL_MAX_BODY_BYTES", _positive_count, DEFAULT_EMAIL_MAX_BODY_BYTES)
    #: Longest a worker holds a delayed message; must be below RabbitMQ's ``consumer_timeout``.
    broker_max_hold_minutes: float = setting("BROKER_MAX_HOLD_MINUTES", _positive_minutes, 10.0)
    #: RabbitMQ's ``consumer_timeout``, for the check of ``broker_max_hold_minutes``: set it
    #: where the broker's own was raised (``rabbitmq.conf``), never above it.
    broker_consumer_timeout_minutes: float = setting(
        "BROKER_CONSUMER_TIMEOUT_MINUTES", _positive_minutes, DEFAULT_CONSUMER_TIMEOUT_MINUTES
    )
    reservation_schedule: str = setting("RESERVATION_SCHEDULE", _cron, "*/5 * * * *")
    reservation_batch_size: int = setting("RESERVATION_BATCH_SIZE", _positive_count, 500)
    #: Minutes a reservation holds stock when the host's ``reserve()`` names no hold (fractions allowed).
    reservation_timeout_minutes: float = setting("RESERVATION_TIMEOUT_MINUTES", _positive_minutes, 15.0)
    log_level: str = setting("LOG_LEVEL", _log_level, "INFO")
    #: ``text`` (one line for people) or ``json`` (one JSON object a line, extras as fields).
    log_format: str = setting("LOG_FORMAT", _log_format, "text")
    #: A bearer token ``/metrics`` asks for; unset: it answers anyone who reaches it (a private network).
    metrics_token: Optional[str] = setting("METRICS_TOKEN", str, secret=True)
    #: Where each worker command serves Dramatiq's Prometheus metrics; 0: not served (the default:
    #: two worker commands on one host would both want the port).
    worker_metrics_port: int = setting("WORKER_METRICS_PORT", _port, 0)
    webhook_initial_retry_delay_minutes: float = setting(
        "WEBHOOK_INITIAL_RETRY_DELAY_MINUTES", _positive_minutes, 1.0
    )
    webhook_max_retry_delay_minutes: float = setting("WEBHOOK_MAX_RETRY_DELAY_MINUTES", _positive_minutes, 60.0)
    webhook_max_retries: int = setting("WEBHOOK_MAX_RETRIES", _count, 5)
    webhook_schedule: str = setting("WEBHOOK_SCHEDULE", _cron, "*/10 * * * *")
    webhook_batch_size: int = setting("WEBHOOK_BATCH_SIZE", _positive_count, 10)
    #: How long a stored event is left to whoever holds it (a message on its way, a worker
    #: on it, a retry waiting past its due time) before ``retry_webhooks`` re-enqueues it.
    webhook_lease_minutes: float = setting("WEBHOOK_LEASE_MINUTES", _positive_minutes, 5.0)
    #: The key of every provider without a secret of its own.
    payment_webhook_secret: Optional[str] = setting("PAYMENT_WEBHOOK_SECRET", str, secret=True)
    #: The signing secret(s) of Resend's delivery-event webhook (``whsec_…``), space-separated while
    #: Resend rotates it; unset: ``POST /api/email-events/resend`` refuses every event (401).
    resend_webhook_secret: Optional[str] = setting("RESEND_WEBHOOK_SECRET", _svix_secrets, secret=True)
    #: When a worker checks the bounce and complaint rates against Resend's thresholds (4%, 0.08%)
    #: and alerts through ALERT_* (at most once per ALERT_MIN_INTERVAL_MINUTES per rate).
    delivery_rates_schedule: str = setting("DELIVERY_RATES_SCHEDULE", _cron, "*/15 * * * *")
    #: (provider, secret) pairs from ``{PROVIDER}_WEBHOOK_SECRET``; a tuple keeps Settings hashable.
    provider_webhook_secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: The variables this process's environment set (non-empty), whatever their values: a mode
    #: that changes a default (``dev --demo``) leaves an operator's own choice alone.
    set_in_environment: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    #: Where dead-letter digests are POSTed (a Slack incoming webhook works); its path is a
    #: secret at Slack, hence kept out of the repr.
    alert_webhook_url: Optional[str] = setting("ALERT_WEBHOOK_URL", _webhook_url, secret=True)
    #: Who gets dead-letter digests and the other alerts by email, sent straight through the providers
    #: of EMAIL_PROVIDERS in order, the next after any failure (so "Resend is down" arrives over SMTP
    #: when SMTP is configured).
    alert_email: Optional[str] = setting("ALERT_EMAIL", _address)
    alert_min_interval_minutes: float = setting("ALERT_MIN_INTERVAL_MINUTES", _positive_minutes, 10.0)
    dead_letter_retention_days: int = setting("DEAD_LETTER_RETENTION_DAYS", _positive_count, 180)
    dead_letter_prune_schedule: str = setting("DEAD_LETTER_PRUNE_SCHEDULE", _cron, "17 3 * * *")
    #: The bearer token of the shop's cron endpoints and of the ops API's admin role; unset: ``serve``
    #: serves neither (only the webhook intake and health).
    cron_secret: Optional[str] = setting("CRON_SECRET", _token, secret=True)
    #: A bearer token that may only read the ops API (``role: read``); needs CRON_SECRET.
    ops_read_token: Optional[str] = setting("OPS_READ_TOKEN", _token, secret=True)
    #: The ops session cookie is ``Secure``; false only for plain-http use on one's own machine.
    ops_cookie_secure: bool = setting("OPS_COOKIE_SECURE", _boolean, True)
    #: The proxies whose ``X-Forwarded-For``/``-Proto`` ``serve`` believes (uvicorn's ``forwarded_allow_ips``);
    #: empty: none, the peer is the client (docs/security.md).
    forwarded_allow_ips: tuple[str, ...] = setting("FORWARDED_ALLOW_IPS", _proxies, ())
    #: The ``Host`` names ``serve`` answers; empty: any (docs/security.md: DNS rebinding).
    ops_allowed_hosts: tuple[str, ...] = setting("OPS_ALLOWED_HOSTS", _host_names, ())

    @property
    def broker_nodes(self) -> list[str]:
        """``BROKER_URL``'s nodes, one URL each: one for a single RabbitMQ, several for a cluster."""
        return [node.strip() for node in self.broker_url.split(";")]

    @property
    def email_max_attempts(self) -> int:
        """The first attempt plus the retries."""
        return self.email_max_retries + 1

    @property
    def webhook_max_attempts(self) -> int:
        """The first attempt at processing an event plus its retries."""
        return self.webhook_max_retries + 1

    @property
    def email_retries(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.email_max_retries,
            delay_minutes=self.email_retry_delay_minutes,
            max_delay_minutes=self.email_max_retry_delay_minutes,
        )

    @property
    def webhook_retries(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.webhook_max_retries,
            delay_minutes=self.webhook_initial_retry_delay_minutes,
            max_delay_minutes=self.webhook_max_retry_delay_minutes,
        )

    def __repr__(self) -> str:
        """Every field but the secrets, each shown as its setting says (URLs with their passwords masked)."""
        shown = []
        for spec in fields(self):
            if not spec.repr:
                continue
            value = getattr(self, spec.name)
            show = spec.metadata.get("shown", str)
            shown.append(f"{spec.name}={show(value)!r}" if isinstance(value, str) else f"{spec.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def secret_values(self) -> set[str]:
        """Every secret this process knows: secret settings, webhook secrets, the URLs' passwords.

        What the logs' last line of defence (``pipeline.core.logs``) masks wherever it appears.
        """
        values = {getattr(self, spec.name) for spec in fields(self) if spec.metadata.get("secret")}
        values.update(secret for _, secret in self.provider_webhook_secrets)
        values.update(self.resend_webhook_secrets)
        for url in (self.database_url, self.broker_url, self.smtp_url or ""):
            values.update(url_passwords(url))
        return {value for value in values if value}

    @property
    def providers(self) -> tuple[str, ...]:
        """EMAIL_PROVIDERS, or its default: ``resend`` when RESEND_API_KEY is set, ``outbox`` otherwise."""
        if self.email_providers:
            return self.email_providers
        return ("resend",) if self.resend_api_key else ("outbox",)

    @property
    def resend_webhook_secrets(self) -> tuple[str, ...]:
        """RESEND_WEBHOOK_SECRET's secrets, the newest first as written (any of them verifies)."""
        return tuple((self.resend_webhook_secret or "").split())

    def webhook_secret(self, provider: str) -> Optional[str]:
        """``{PROVIDER}_WEBHOOK_SECRET``, or else PAYMENT_WEBHOOK_SECRET, or None."""
        return dict(self.provider_webhook_secrets).get(provider, self.payment_webhook_secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read and check every variable; raise ConfigError naming the first bad one."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if "variable" in spec.metadata:
                values[spec.name] = _read(
                    environ, spec.metadata["variable"], spec.metadata["parse"], spec.default, spec.metadata["shown"]
                )
        values["provider_webhook_secrets"] = tuple(
            (provider, secret)
            for provider in PAYMENT_PROVIDERS
            if (secret := _read(environ, f"{provider.upper()}_WEBHOOK_SECRET", str, None, _hidden)) is not None
        )
        values["set_in_environment"] = frozenset(
            spec.metadata["variable"]
            for spec in fields(cls)
            if "variable" in spec.metadata and environ.get(spec.metadata["variable"], "").strip()
        )
        settings = cls(**values)
        _check_delays(settings.email_retries, "EMAIL_MAX_RETRY_DELAY_MINUTES", "EMAIL_RETRY_DELAY_MINUTES")
        _check_delays(
            settings.webhook_retries, "WEBHOOK_MAX_RETRY_DELAY_MINUTES", "WEBHOOK_INITIAL_RETRY_DELAY_MINUTES"
        )
        _check_hold(settings)
        _check_ops_tokens(settings)
        _check_providers(settings)
        return settings


def url_passwords(url: str) -> set[str]:
    """The passwords in ``url`` (each node of a broker URL; a ``password=`` parameter), as written and decoded."""
    found: set[str] = set()
    for node in url.split(";"):
        parsed = urlsplit(node.strip())
        try:
            password = parsed.password
        except ValueError:
            password = None
        candidates = [password] + [
            value for key, value in parse_qsl(parsed.query, keep_blank_values=True) if key.lower() == "password"
        ]
        for candidate in filter(None, candidates):
            found.update({candidate, unquote(candidate)})
    return found


def _read(
    environ: Mapping[str, str], name: str, parse: Callable[[str], T], default: T, shown: Callable[[str], str]
) -> T:
    """One variable through its parser, or ``default`` when unset; errors name the variable.

    The value in an error is ``shown(raw)``: a secret's is not shown, a URL's password is masked.
    """
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}={shown(raw)!r} is invalid: {exc}") from None


def _check_delays(policy: RetryPolicy, cap_variable: str, delay_variable: str) -> None:
    if policy.max_delay_minutes < policy.delay_minutes:
        raise ConfigError(
            f"{cap_variable} must not be below {delay_variable} "
            f"({policy.max_delay_minutes} < {policy.delay_minutes})"
        )


def _check_hold(settings: Settings) -> None:
    """A delayed message held until RabbitMQ's ``consumer_timeout`` gets the worker's consumer cancelled.

    RabbitMQ then closes the channel and requeues every unacked message of it, so
    the hold that was meant to keep long delays cheap would redeliver all of them
    each time. The hold must end before the timeout does.
    """
    hold, timeout = settings.broker_max_hold_minutes, settings.broker_consumer_timeout_minutes
    if hold >= timeout:
        raise ConfigError(
            "BROKER_MAX_HOLD_MINUTES must be below BROKER_CONSUMER_TIMEOUT_MINUTES, RabbitMQ's consumer_timeout "
            f"({DEFAULT_CONSUMER_TIMEOUT_MINUTES:g} minutes by default): {hold:g} >= {timeout:g}"
        )


def _check_ops_tokens(settings: Settings) -> None:
    """The read token is a second, lesser key: it needs the first and must not be it."""
    if settings.ops_read_token is None:
        return
    if settings.cron_secret is None:
        raise ConfigError("OPS_READ_TOKEN needs CRON_SECRET: without it, serve has no ops API to read")
    if settings.ops_read_token == settings.cron_secret:
        raise ConfigError("OPS_READ_TOKEN must differ from CRON_SECRET (the read role could act)")


def _check_providers(settings: Settings) -> None:
    """Each provider EMAIL_PROVIDERS names has what it needs."""
    if "smtp" in settings.providers and not settings.smtp_url:
        raise ConfigError("EMAIL_PROVIDERS names smtp but SMTP_URL is not set")
    if "resend" in settings.providers and not settings.resend_api_key:
        raise ConfigError("EMAIL_PROVIDERS names resend but RESEND_API_KEY is not set")
