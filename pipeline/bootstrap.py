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
from pipeline.core.limiter import SendLimiter
from pipeline.core.mailer import Mailer, OutboxMailer, ResendMailer
from pipeline.core.runtime import Runtime
from pipeline.core.settings import Settings
from pipeline.middleware.backoff import Backoff
from pipeline.middleware.long_delays import LongDelays
from pipeline.middleware.poison import RejectPoison
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


def default_mailer(settings: Settings) -> Mailer:
    """Resend when an API key is set; otherwise the local outbox folder."""
    if settings.resend_api_key:
        return ResendMailer(api_key=settings.resend_api_key, api_url=settings.resend_api_url)
    logging.getLogger(__name__).warning(
        "RESEND_API_KEY is not set: emails go to %s instead of Resend.", settings.email_outbox_dir
    )
    return OutboxMailer(Path(settings.email_outbox_dir))


def bootstrap(
    settings: Settings,
    *,
    embedded: bool = False,
    mailer: Optional[Mailer] = None,
    middleware: Sequence[Middleware] = (),
) -> Runtime:
    """Wire this process: build the broker, bind every actor to it, install the runtime.

    ``middleware``: more for this kind of process (the workers' Prometheus, ``pipeline.entry``).
    """
    broker = build_broker(settings, embedded=embedded, middleware=middleware)
    dramatiq.set_broker(broker)
    for declared in actors_in(actors.MODULES):
        bind(declared, broker, settings)
    sessions = get_sessionmaker(settings.database_url)
    mailer = mailer or default_mailer(settings)
    alerter = alerts.from_settings(settings, sessions, mailer)
    installed = Runtime(
        settings=settings,
        broker=broker,
        sessions=sessions,
        mailer=mailer,
        limiter=build_limiter(settings, sessions, alerter),
        alerter=alerter,
    )
    runtime.install(installed)
    alerts.forward_alert_logs(alerter)  # actors' alerts (paid, short)
    return installed


def build_limiter(
    settings: Settings, sessions: sessionmaker[Session], alerter: Optional[alerts.Alerter]
) -> SendLimiter:
    """The provider's pace for this process; a quota pause alerts through the process's alerter."""
    return SendLimiter(
        sessions,
        rate=Rate(configured=settings.email_rate_limit_per_second, cap=settings.email_rate_limit_cap),
        quota_pause_seconds=settings.email_quota_pause_minutes * 60,
        on_quota_pause=functools.partial(alerts.announce_quota_pause, alerter),
    )


def periodic_jobs() -> list[PeriodicJob]:
    """Every periodic job, in the order the actor modules declare them."""
    return jobs_in(actors.MODULES)


def periodic_actors(broker: Broker) -> list[dramatiq.Actor]:
    """The actors the ticker emits."""
    return [broker.get_actor(job.actor.actor_name) for job in periodic_jobs()]
