"""The pipeline's exceptions, below the project's root in ``storage.errors``.

Provider and driver errors are converted into these at the boundary (see
``pipeline.providers``), so the backoff middleware classifies by class alone,
and the log tells an expected failure from a bug by the same classes (``expected``).
"""

from __future__ import annotations

from typing import Optional

from storage.database import transient_failure
from storage.errors import MinaleshError, PermanentError, TransientError

__all__ = [
    "ConfigError",
    "Deferred",
    "MinaleshError",
    "PermanentError",
    "RateLimited",
    "RetriesExhausted",
    "ServiceNotReady",
    "ServiceRefused",
    "ServiceUnreachable",
    "TransientError",
    "describe",
    "expected",
]


class ConfigError(MinaleshError):
    """A setting is missing or invalid; the message names the variable."""


class ServiceNotReady(MinaleshError):
    """PostgreSQL or RabbitMQ cannot be used by a process starting; the message names the setting and the cause.

    Raised by ``pipeline.core.preflight`` and turned into one line and an exit status
    (``exit_status``, from sysexits.h) at the command's boundary (``pipeline.cli.common``).
    """

    exit_status = 1


class ServiceUnreachable(ServiceNotReady):
    """Nothing answered at the setting's address for the whole start-up wait: it may come back, a restart may do."""

    #: EX_TEMPFAIL: a temporary failure, the supervisor should try again.
    exit_status = 75


class ServiceRefused(ServiceNotReady):
    """The service answered and said no (credentials, vhost, database, schema): waiting cannot help."""

    #: EX_CONFIG: the configuration is wrong.
    exit_status = 78


class RetriesExhausted(PermanentError):
    """More attempts were started than allowed, some by workers that died mid-way."""


#: How long a 429 that names no ``retry-after`` waits (seconds): the fleet's pause and the message's.
DEFAULT_RETRY_AFTER_SECONDS = 1.0


class RateLimited(MinaleshError):
    """The provider asked us to slow down, or our own limiter did; retry after ``retry_after`` seconds.

    Not the item's fault, so the attempt is given back rather than spent. ``reason``
    is the provider's error name (``rate_limit_exceeded``, ``daily_quota_exceeded``,
    ``monthly_quota_exceeded``, ``concurrent_idempotent_requests``) or ``local``.
    """

    def __init__(self, message: str, *, retry_after: float, reason: str = "local") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason


class Deferred(MinaleshError):
    """Not now, and not the item's failure: run this message again after ``retry_after`` seconds, unchanged."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def describe(exception: BaseException) -> str:
    """A one-line ``Type: message`` for logs and the ``last_error`` columns."""
    text = str(exception).strip().splitlines()
    first: Optional[str] = text[0] if text else None
    return f"{type(exception).__name__}: {first}" if first else type(exception).__name__


#: The classes of a failure some code foresaw: retried, refused, or waited for.
EXPECTED_FAILURES = (TransientError, PermanentError, RateLimited, Deferred)


def expected(exception: BaseException) -> bool:
    """Whether an actor's ``exception`` is a failure its code foresaw, which the backoff middleware settles.

    One of ``EXPECTED_FAILURES`` (a retry: ``TransientError``; a refusal: ``PermanentError``; a wait:
    ``RateLimited``, ``Deferred``), or the database failing for now (``storage.database.transient_failure``):
    logged as one WARNING line without a traceback. Anything else is a bug and keeps its traceback.
    """
    return isinstance(exception, EXPECTED_FAILURES) or transient_failure(exception)
