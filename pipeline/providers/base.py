"""What every email provider is asked, and the provider-neutral answers it gives.

A provider (``resend``, ``smtp``, ``outbox``) turns its own protocol into these
answers at its boundary, and nothing of its headers or error names crosses it:

* ``Accepted``: the provider took the email; its id, and ``Pacing`` hints (its
  limit, what is left of its window, when the window resets) when it gave some;
* ``EmailRefused`` (a ``PermanentError``): refused for this email only (a 4xx, an
  SMTP 5xx to RCPT or DATA); retrying is useless, other emails are not concerned;
* ``ProviderRateLimited``: slow down, the whole fleet (a 429 rate limit);
* ``QuotaExhausted``: the account's quota is used up until the provider's reset;
* ``KeyInFlight``: a request under this email's key is still being handled;
* ``ProviderUnavailable``: the provider failed as a whole. ``NotReached`` when the
  request surely never arrived (connection refused, DNS, TLS); ``OutcomeUnknown``
  when it may have been accepted (a timeout, a 5xx or a dropped connection after
  the request went out): only that same provider may be asked again, under the
  same key or Message-ID.

The classes derive from the pipeline's retry classes (``pipeline.core.errors``), so
``pipeline.core.retry_policy.decide`` needs no provider knowledge: a refusal gives
up, a rate limit or a quota refunds the attempt, an unavailable provider retries
(or, while the fleet's outage pause is on, ``ProviderPaused`` refunds it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Optional, Protocol, Union

from pipeline.core.errors import PermanentError, RateLimited, TransientError


@dataclass(frozen=True, kw_only=True)
class OutgoingEmail:
    sender: str
    recipient: str
    subject: str
    html: Optional[str]
    text: Optional[str]
    #: Same key, same email: a provider with an idempotency window sends it at most once in it.
    idempotency_key: str
    #: The ``email_queue`` row; a provider without keys derives its Message-ID from it (None: an alert).
    email_id: Optional[int] = None


@dataclass(frozen=True, kw_only=True)
class Pacing:
    """What the provider said of its rate, all optional: requests/s, left in the window, seconds to reset."""

    limit: Optional[float] = None
    remaining: Optional[float] = None
    reset: Optional[float] = None


#: No pacing hint at all (SMTP, the outbox).
NO_HINTS = Pacing()


@dataclass(frozen=True)
class Accepted:
    """The provider took the email: its message id, and what it said of its rate."""

    provider_id: str
    pacing: Pacing = field(default=NO_HINTS)


@dataclass(frozen=True)
class Refused:
    """The provider's reason for refusing one email of a batch (the rest were sent)."""

    reason: str


@dataclass(frozen=True)
class BatchAccepted:
    """The provider answered a batch: per email, in request order, its message id or why it refused it."""

    results: list[Union[str, Refused]]
    pacing: Pacing = field(default=NO_HINTS)


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What a provider can do; the pipeline asks this, never the provider's name."""

    #: Emails in one request (1: no batch endpoint; ``send_batch`` then sends one by one).
    batch_size: int
    #: How long the provider answers a repeated key with its first answer; None: it has no keys.
    idempotency_window: Optional[timedelta]
    #: Whether the fleet paces its requests (a shared rate row); False: as fast as the threads go.
    paced: bool = True


class Provider(Protocol):
    """An email provider: a name (its rate-limit row, ``email_queue.provider``), capabilities, two calls."""

    name: str
    capabilities: Capabilities

    def send(self, email: OutgoingEmail) -> Accepted:
        """Hand ``email`` over; raise one of this module's errors when it was not accepted."""

    def send_batch(self, emails: list[OutgoingEmail], *, idempotency_key: str) -> BatchAccepted:
        """Hand ``emails`` over in one request under one key; a whole-batch failure raises."""


# --- the neutral errors ---------------------------------------------------------------------------


class EmailRefused(PermanentError):
    """The provider refused this email for good (a 4xx, an SMTP 5xx to RCPT or DATA)."""


class ProviderRateLimited(RateLimited):
    """The provider asked the whole fleet to slow down for ``retry_after`` seconds."""


class QuotaExhausted(RateLimited):
    """The account's sending quota is used up until ``retry_after`` (0: the provider did not say)."""


class KeyInFlight(RateLimited):
    """A request under this email's key is still being handled by the provider: ask again shortly."""


class ProviderUnavailable(TransientError):
    """The provider failed as a whole (5xx, timeout, connection): retried; counts toward an outage."""

    #: Whether the provider may have accepted the email anyway.
    maybe_accepted = False


class NotReached(ProviderUnavailable):
    """The request surely never reached the provider (connection refused, name or TLS failure)."""


class OutcomeUnknown(ProviderUnavailable):
    """The request went out and no clear answer came back (a timeout, a 5xx, a connection dropped after DATA)."""

    maybe_accepted = True


class PartlySent(OutcomeUnknown):
    """A batch sent one by one (SMTP) stopped part-way: ``results`` of the members before the failure.

    Those members were answered: their results must be recorded before the batch is
    retried, and the retry sends only the members still to send, or a provider
    without idempotency keys delivers them twice. The member that failed may have
    been taken (the connection dropped after DATA): it is an ``OutcomeUnknown``, so
    the batch never fails over to another provider within this call.
    """

    def __init__(self, message: str, *, results: list[Union[str, Refused]], provider: str) -> None:
        super().__init__(message)
        self.results = results
        self.provider = provider


class ProviderPaused(RateLimited):
    """The fleet paused this provider (an outage, a quota, a 429): the email waits, its attempt given back.

    ``provider`` names it, so failover can try the next provider at once.
    """

    def __init__(self, message: str, *, retry_after: float, reason: str, provider: str) -> None:
        super().__init__(message, retry_after=retry_after, reason=reason)
        self.provider = provider
