"""The one call an actor makes: send through the providers of EMAIL_PROVIDERS, paced, paused, failing over.

``Sending`` holds one ``Route`` per provider (the provider and its ``SendLimiter``), in
order of preference. A send goes to the first provider that takes it:

* the next provider is tried only when the one before **surely did not take** the
  email: it is paused (``ProviderPaused``: an outage, a quota, a long 429), it
  refused the request for rate or quota (a 429), or the request never reached it
  (``NotReached``: connection refused);
* an email an attempt may have reached (``OutcomeUnknown``: a timeout, a 5xx, a
  connection dropped after DATA) is recorded (``email_queue.maybe_sent_by``) and from
  then on is only ever handed to that provider, which answers its idempotency key
  (Resend) or gets the same Message-ID (SMTP). EMAIL_FAILOVER_ACCEPT_DUPLICATES=true
  lifts this rule: such an email may then go to the next provider too, and may be
  delivered twice;
* an operator's pause holds every provider: it is never failed over.

Failback needs nothing of its own: every send asks the first provider first, so its
outage probe comes from ordinary sends, and when it succeeds new emails go back to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.errors import RateLimited
from pipeline.core.operator_pauses import OperatorPauses
from pipeline.providers.base import (
    KeyInFlight,
    NotReached,
    OutgoingEmail,
    Provider,
    ProviderPaused,
    ProviderRateLimited,
    ProviderUnavailable,
    QuotaExhausted,
    Refused,
)
from pipeline.providers.pacing import SendLimiter
from storage import emails
from storage.clock import utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A provider and the fleet's pace and pauses at it."""

    provider: Provider
    limiter: SendLimiter

    @property
    def name(self) -> str:
        return self.provider.name


@dataclass(frozen=True)
class Sent:
    """An email accepted: the provider's id for it, and which provider."""

    provider_id: str
    provider: str


@dataclass(frozen=True)
class BatchSent:
    """A batch answered by ``provider``: per email, in request order, its id or why it was refused."""

    results: list[Union[str, Refused]]
    #: None: no request was made (every member held back or unrenderable).
    provider: Optional[str]


def surely_not_taken(error: BaseException) -> bool:
    """Whether the provider surely did not take the email, so the next provider may (the failover rule)."""
    if isinstance(error, KeyInFlight) or maybe_accepted(error):
        return False
    return isinstance(error, (ProviderPaused, ProviderRateLimited, QuotaExhausted, NotReached))


def maybe_accepted(error: BaseException) -> bool:
    """Whether the request behind ``error`` may have been accepted (itself, or the failure it turned into a pause)."""
    for candidate in (error, error.__cause__):
        if isinstance(candidate, ProviderUnavailable) and candidate.maybe_accepted:
            return True
    return False


class Sending:
    """Send emails through the routes in order of preference; see the module's docstring."""

    def __init__(
        self, routes: Sequence[Route], sessions: sessionmaker[Session], *, accept_duplicates: bool = False
    ) -> None:
        if not routes:
            raise ValueError("Sending needs at least one provider")
        self.routes = list(routes)
        self.sessions = sessions
        #: EMAIL_FAILOVER_ACCEPT_DUPLICATES: an email that may have reached one provider may go to the next.
        self.accept_duplicates = accept_duplicates

    @property
    def primary(self) -> Route:
        return self.routes[0]

    @property
    def pauses(self) -> OperatorPauses:
        return self.primary.limiter.pauses

    def route(self, name: str) -> Optional[Route]:
        return next((route for route in self.routes if route.name == name), None)

    def candidates(self, maybe_sent_by: Optional[str]) -> list[Route]:
        """The routes an email may take: only the one an attempt may have reached, unless duplicates are accepted."""
        if maybe_sent_by is not None and not self.accept_duplicates:
            pinned = self.route(maybe_sent_by)
            if pinned is not None:
                return [pinned]
        return self.routes

    def send(self, email: OutgoingEmail, *, transactional: bool, maybe_sent_by: Optional[str] = None) -> Sent:
        """Send one email through the first provider that takes it; raise the last provider's error."""
        routes = self.candidates(maybe_sent_by)
        for index, route in enumerate(routes):
            try:
                with route.limiter.request(transactional=transactional) as request:
                    answer = route.provider.send(email)
                    request.answered(answer.pacing)
                return Sent(answer.provider_id, route.name)
            except (RateLimited, ProviderUnavailable) as error:
                self._after_failure(error, route, [email.email_id])
                if index == len(routes) - 1 or not surely_not_taken(error):
                    raise
                logger.debug(
                    "%s did not take email %s (%s): trying %s.",
                    route.name,
                    email.email_id,
                    error,
                    routes[index + 1].name,
                )
        raise AssertionError("unreachable")

    def send_batch(
        self,
        batch: list[OutgoingEmail],
        *,
        idempotency_key: str,
        transactional: bool,
        maybe_sent_by: Optional[str] = None,
    ) -> BatchSent:
        """Send a batch in one request through the first provider that takes it (one by one where it has no batch)."""
        routes = self.candidates(maybe_sent_by)
        for index, route in enumerate(routes):
            try:
                with route.limiter.request(transactional=transactional) as request:
                    answer = route.provider.send_batch(batch, idempotency_key=idempotency_key)
                    request.answered(answer.pacing)
                return BatchSent(answer.results, route.name)
            except (RateLimited, ProviderUnavailable) as error:
                self._after_failure(error, route, [email.email_id for email in batch])
                if index == len(routes) - 1 or not surely_not_taken(error):
                    raise
        raise AssertionError("unreachable")

    def _after_failure(self, error: BaseException, route: Route, email_ids: list[Optional[int]]) -> None:
        """An attempt that may have reached ``route``'s provider is recorded on its emails' rows."""
        ids = [email_id for email_id in email_ids if email_id is not None]
        if ids and maybe_accepted(error):
            with self.sessions.begin() as session:
                emails.record_maybe_sent(session, ids, provider=route.name, at=utcnow())

    def outage_wait(self) -> Optional[float]:
        """When every provider is paused for an outage: seconds until the first probe is due (0: now).

        None when some provider may take an email. While it is positive the fan-out
        claims nothing: the emails wait in the table, not in the broker, and are
        claimed together (in batches) when a probe is due or one got through.
        """
        with self.sessions.begin() as session:
            return self.outage_wait_in(session, time.time())

    def outage_wait_in(self, session: Session, now: float) -> Optional[float]:
        """``outage_wait`` in the caller's transaction."""
        waits = []
        for route in self.routes:
            wait = route.limiter.outage_wait_in(session, now)
            if wait is None:
                return None
            waits.append(wait)
        return min(waits)

    # --- what the CLI, the ops API and stats ask (the operator's pauses are the fleet's, not a provider's)

    @property
    def unlimited(self) -> bool:
        return self.primary.limiter.unlimited

    def per_second(self) -> float:
        return self.primary.limiter.per_second()

    def holds(self, *, transactional: bool) -> bool:
        return self.primary.limiter.holds(transactional=transactional)

    def pause(self, scope: str, *, minutes: Optional[float], reason: Optional[str], by: str) -> None:
        self.primary.limiter.pause(scope, minutes=minutes, reason=reason, by=by)

    def resume(self, scope: str) -> bool:
        return self.primary.limiter.resume(scope)

    def state(self) -> dict[str, Any]:
        """The first provider's pace and pauses (as before providers were several), and each provider's."""
        states = [route.limiter.state() for route in self.routes]
        return {
            **states[0],
            "providers": {route.name: _own(state) for route, state in zip(self.routes, states, strict=True)},
        }


#: The keys of a limiter's state that are the operators' (shared by every provider).
_OPERATOR_KEYS = ("paused_by_operator", "bulk_paused", "operator_pauses")


def _own(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in state.items() if key not in _OPERATOR_KEYS}
