"""Bootstrap: broker, middleware, actors and runtime, in the order Dramatiq needs.

Actors' options are checked against the broker's middleware when they are
declared, so the broker and its middleware come first; then every actor the
``actors`` package declares is bound to it with the options the settings give.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import dramatiq
from dramatiq import Broker, Middleware
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, TimeLimit
from periodiq import PeriodiqMiddleware
from sqlalchemy.orm import Session, sessionmaker

import actors
from actors.emails import BULK_EMAIL_QUEUE
from pipeline.core import alerts, runtime
from pipeline.core.broker import RabbitmqBroker
from pipeline.core.declare import PeriodicJob, actors_in, bind, jobs_in, minutes_ms
from pipeline.core.runtime import Runtime
from pipeline.core.settings import Settings
from pipeline.middleware.backoff import Backoff
from pipeline.middleware.long_delays import LongDelays
from pipeline.middleware.poison import RejectPoison
from pipeline.providers.base import Provider
from pipeline.providers.outbox import OutboxProvider
from pipeline.providers.pacing import SendLimiter
from pipeline.providers.resend import ResendProvider
from pipeline.providers.sending import Route, Sending
from pipeline.providers.smtp import SmtpProvider
from storage.database import get_sessionmaker
from storage.rate_limits import Rate

#: Bulk sends one worker process holds at once: enough to keep the provider's rate busy, few
#: enough to leave its other threads to transactional emails and webhooks (``pipeline.core.broker``).
BULK_PREFETCH = 3
#: A periodic tick older than this when a worker gets to it is skipped (the next comes).
TICK_SKIP_SECONDS = 60


def build_broker(settings: Settings, *, embedded: bool = False, middleware: Sequence[Middleware] = ()) -> Broker:
    """RabbitMQ with publisher confirms, or Dramatiq's in-memory broker for ``dev``; ``middleware`` added last."""
    broker: Broker
    if embedded:
        broker = StubBroker(middleware=[])
    else:
        broker = RabbitmqBroker(
            url=settings.broker_nodes,
            confirm_delivery=True,
            middleware=[],
            prefetch_caps={BULK_EMAIL_QUEUE: BULK_PREFETCH},
        )
    sessions = get_sessionmaker(settings.database_url)
    max_hold_ms = minutes_ms(settings.broker_max_hold_minutes)
    for added in (
        CurrentMessage(),
        LongDelays(max_hold_ms=max_hold_ms),
        RejectPoison(sessions),  # before periodiq's and the others' lookups of an unknown actor
        TimeLimit(),
        PeriodiqMiddleware(skip_delay=TICK_SKIP_SECONDS),
        Backoff(sessions, max_hold_ms=max_hold_ms),
        *middleware,
    ):
        broker.add_middleware(added)
    return broker


def build_provider(settings: Settings, name: str) -> Provider:
    """The provider EMAIL_PROVIDERS calls ``name``, from its settings (checked at start-up)."""
    if name == "resend":
        assert settings.resend_api_key is not None
        return ResendProvider(api_key=settings.resend_api_key, api_url=settings.resend_api_url)
    if name == "smtp":
        assert settings.smtp_url is not None
        return SmtpProvider(settings.smtp_url)
    return OutboxProvider(Path(settings.email_outbox_dir))


def default_providers(settings: Settings) -> list[Provider]:
    """EMAIL_PROVIDERS in order; by default Resend when an API key is set, otherwise the local outbox folder."""
    if settings.providers == ("outbox",) and not settings.email_providers:
        logging.getLogger(__name__).warning(
            "RESEND_API_KEY is not set: emails go to %s instead of Resend.", settings.email_outbox_dir
        )
    return [build_provider(settings, name) for name in settings.providers]


def default_mailer(settings: Settings) -> Provider:
    """The first provider of EMAIL_PROVIDERS (``dev`` wraps it for its demo)."""
    return default_providers(settings)[0]


def bootstrap(
    settings: Settings,
    *,
    embedded: bool = False,
    mailer: Optional[Provider] = None,
    providers: Optional[Sequence[Provider]] = None,
    middleware: Sequence[Middleware] = (),
) -> Runtime:
    """Wire this process: build the broker, bind every actor to it, install the runtime.

    ``providers`` (or ``mailer``, one provider) replace EMAIL_PROVIDERS' (tests, ``dev``'s demo);
    ``middleware``: more for this kind of process (the workers' Prometheus, ``pipeline.entry``).
    """
    broker = build_broker(settings, embedded=embedded, middleware=middleware)
    dramatiq.set_broker(broker)
    for declared in actors_in(actors.MODULES):
        bind(declared, broker, settings)
    sessions = get_sessionmaker(settings.database_url)
    chosen = list(providers) if providers else [mailer] if mailer is not None else default_providers(settings)
    alerter = alerts.from_settings(settings, sessions, chosen)
    installed = Runtime(
        settings=settings,
        broker=broker,
        sessions=sessions,
        sending=build_sending(settings, sessions, alerter, chosen),
        alerter=alerter,
    )
    runtime.install(installed)
    alerts.forward_alert_logs(alerter)  # actors' alerts (paid, short)
    return installed


def build_limiter(
    settings: Settings,
    sessions: sessionmaker[Session],
    alerter: Optional[alerts.Alerter],
    provider: Optional[Provider] = None,
) -> SendLimiter:
    """A provider's pace for this process (Resend's by default); its pauses alert through the process's alerter.

    Every paced provider shares EMAIL_RATE_LIMIT_PER_SECOND until it tells its own limit;
    SMTP tells none, and is paced at SMTP_RATE_LIMIT_PER_SECOND (by default not at all:
    Resend's request rate says nothing of a relay's, which answers 4xx past its limits).
    """
    rate = Rate(configured=settings.email_rate_limit_per_second, cap=settings.email_rate_limit_cap)
    if provider is not None and provider.name == "smtp":
        rate = Rate(configured=settings.smtp_rate_limit_per_second, cap=None)
    return SendLimiter(
        sessions,
        rate=rate,
        quota_pause_seconds=settings.email_quota_pause_minutes * 60,
        on_quota_pause=functools.partial(alerts.announce_quota_pause, alerter),
        on_outage=functools.partial(alerts.announce_outage, alerter),
        name=provider.name if provider is not None else "resend",
        probe_interval=settings.email_outage_probe_seconds,
        paced=provider.capabilities.paced if provider is not None else True,
    )


def build_sending(
    settings: Settings,
    sessions: sessionmaker[Session],
    alerter: Optional[alerts.Alerter],
    providers: Sequence[Provider],
) -> Sending:
    """The providers in order of preference, each paced and paused, failing over (``pipeline.providers.sending``)."""
    routes = [Route(provider, build_limiter(settings, sessions, alerter, provider)) for provider in providers]
    return Sending(routes, sessions, accept_duplicates=settings.email_failover_accept_duplicates)


def periodic_jobs() -> list[PeriodicJob]:
    """Every periodic job, in the order the actor modules declare them."""
    return jobs_in(actors.MODULES)


def periodic_actors(broker: Broker) -> list[dramatiq.Actor]:
    """The actors the ticker emits."""
    return [broker.get_actor(job.actor.actor_name) for job in periodic_jobs()]
