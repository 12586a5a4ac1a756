"""Bootstrap: broker, middleware, actors and runtime, in the order Dramatiq needs.

Actors bind to the broker that is global when their module is imported, and their
options are checked against that broker's middleware, so the broker comes first.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Optional

import dramatiq
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import TimeLimit
from periodiq import PeriodiqMiddleware, cron

from pipeline.core import runtime
from pipeline.core.mailer import Mailer, OutboxMailer, ResendMailer
from pipeline.core.runtime import Runtime
from pipeline.core.settings import Settings
from pipeline.middleware.backoff import Backoff
from pipeline.middleware.long_delays import LongDelays
from pipeline.middleware.poison import RejectPoison
from storage.database import get_sessionmaker

#: Modules whose actors make up the system; each is imported once the broker is set.
ACTOR_MODULES = ("actors.emails", "actors.inventory", "actors.webhooks", "actors.maintenance")

#: A periodic tick older than this when a worker gets to it is skipped (the next comes).
TICK_SKIP_SECONDS = 60


def _minutes_ms(minutes: float) -> int:
    return max(int(minutes * 60_000), 1)


def build_broker(settings: Settings, *, embedded: bool = False) -> Broker:
    """RabbitMQ with publisher confirms, or Dramatiq's in-memory broker for ``dev``."""
    broker: Broker
    if embedded:
        broker = StubBroker(middleware=[])
    else:
        broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True, middleware=[])
    sessions = get_sessionmaker(settings.database_url)
    max_hold_ms = _minutes_ms(settings.broker_max_hold_minutes)
    for middleware in (
        LongDelays(max_hold_ms=max_hold_ms),
        RejectPoison(sessions),  # before periodiq's and the others' lookups of an unknown actor
        TimeLimit(),
        PeriodiqMiddleware(skip_delay=TICK_SKIP_SECONDS),
        Backoff(sessions, max_hold_ms=max_hold_ms),
    ):
        broker.add_middleware(middleware)
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
    settings: Settings, *, embedded: bool = False, mailer: Optional[Mailer] = None
) -> Runtime:
    """Wire this process: set the broker, import the actors, apply the settings to them."""
    global _broker_set
    broker = build_broker(settings, embedded=embedded)
    dramatiq.set_broker(broker)
    _broker_set = True
    for name in ACTOR_MODULES:
        module = importlib.import_module(name)
        for actor in _actors_of(module):
            actor.broker = broker
            broker.declare_actor(actor)
    _apply_settings(broker, settings)
    installed = Runtime(
        settings=settings,
        broker=broker,
        sessions=get_sessionmaker(settings.database_url),
        mailer=mailer or default_mailer(settings),
    )
    runtime.install(installed)
    return installed


def prepare_declarations() -> None:
    """Let the actor modules be imported before ``bootstrap`` (by tests, or a host).

    Until a process bootstraps, actors are declared on a stub broker with the real
    middleware stack, so their options are checked; ``bootstrap`` rebinds them.
    """
    global _broker_set
    if _broker_set:
        return
    dramatiq.set_broker(build_broker(Settings(), embedded=True))
    _broker_set = True


#: Whether this process has a broker the actors may be declared on.
_broker_set = False


def _actors_of(module: object) -> list[dramatiq.Actor]:  # type: ignore[type-arg]
    return [value for value in vars(module).values() if isinstance(value, dramatiq.Actor)]


def _apply_settings(broker: Broker, settings: Settings) -> None:
    """Schedules and retry policies come from the environment, not from the code."""
    fan_out = broker.get_actor("fan_out_emails")
    fan_out.options["periodic"] = cron(settings.email_schedule)
    send = broker.get_actor("send_email")
    send.options["max_retries"] = settings.email_max_retries
    send.options["retry_delay"] = _minutes_ms(settings.email_retry_delay_minutes)
    send.options["max_retry_delay"] = _minutes_ms(settings.email_max_retry_delay_minutes)
    broker.get_actor("cleanup_reservations").options["periodic"] = cron(settings.reservation_schedule)
    broker.get_actor("retry_webhooks").options["periodic"] = cron(settings.webhook_schedule)
    process = broker.get_actor("process_webhook_event")
    process.options["max_retries"] = settings.webhook_max_retries
    process.options["retry_delay"] = _minutes_ms(settings.webhook_initial_retry_delay_minutes)
    process.options["max_retry_delay"] = _minutes_ms(settings.webhook_max_retry_delay_minutes)
    broker.get_actor("prune_dead_letters").options["periodic"] = cron(settings.dead_letter_prune_schedule)


def periodic_actors(broker: Broker) -> list[dramatiq.Actor]:  # type: ignore[type-arg]
    """The actors the ticker emits."""
    return [actor for actor in broker.actors.values() if "periodic" in actor.options]
