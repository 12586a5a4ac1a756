"""``/metrics`` of ``serve``: the domain gauges, read at scrape time, in Prometheus' text format.

Nothing is counted in this process: every scrape asks PostgreSQL (``storage.gauges``,
grouped counts answered from indexes), RabbitMQ (the depth of each dead-letter queue,
as the ops API asks it: ``pipeline.web.depths``) and the limiter's row, so any number
of ``serve`` processes answer the same figures. The rows that only pile up (sent and
failed emails, processed and archived events) are recounted at most every
``SETTLED_RECOUNT_SECONDS``: counting them is a scan of a million index entries for a
million emails, while everything an alert reads is counted at every scrape. The
workers' own counters (messages processed, errors, durations) are Dramatiq's, on each
worker command's ``WORKER_METRICS_PORT``.

A source that fails is reported, not raised: the scrape answers what the others
gave and ``minalesh_up{source="postgres"|"rabbitmq"|"limiter"} 0``, never a 500, so
an alert can tell "no dead letters" from "could not look".

Auth: none by default, as Prometheus scrapes go over a private network; with
``METRICS_TOKEN`` set, a scrape must send ``Authorization: Bearer <token>``
(Prometheus' ``authorization`` scrape option), else it gets 401.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Optional, TypeVar

import pendulum
from dramatiq.common import xq_name
from periodiq import cron
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pipeline.bootstrap import periodic_jobs
from pipeline.core.declare import PeriodicJob
from pipeline.core.errors import describe
from pipeline.core.runtime import Runtime
from pipeline.providers.resend import WITH_DELIVERY_EVENTS
from pipeline.web.depths import QueueDepths
from storage import delivery_events, emails, gauges, periodic_runs, suppressions
from storage.clock import utcnow

logger = logging.getLogger(__name__)

#: Where ``serve`` answers scrapes.
METRICS_PATH = "/metrics"
#: What a dead letter without an actor (a body kept raw) is labelled.
NO_ACTOR = "(none)"
#: How often the settled rows (sent, failed, processed, archived) are counted again.
SETTLED_RECOUNT_SECONDS = 300.0

Gauges = list[Metric]
T = TypeVar("T")


class SourceUnavailable(Exception):
    """A source of the gauges could not be read in this scrape."""


class Recounted(Generic[T]):
    """A count read again only once it is ``seconds`` old: for rows that only pile up."""

    def __init__(self, read: Callable[[Session], T], seconds: float = SETTLED_RECOUNT_SECONDS) -> None:
        self.read = read
        self.seconds = seconds
        self.value: Optional[T] = None
        self.read_at = -float("inf")

    def get(self, session: Session) -> T:
        if self.value is None or time.monotonic() - self.read_at >= self.seconds:
            self.value, self.read_at = self.read(session), time.monotonic()
        return self.value


class DomainCollector(Collector):
    """The shop's gauges, read from their sources at each ``collect``."""

    def __init__(self, current: Runtime, jobs: Iterable[PeriodicJob], queue_depths: QueueDepths) -> None:
        self.current = current
        #: Every periodic job, so each has its interval even before its first run.
        self.jobs = list(jobs)
        #: The ops API's own (one thread and one connection per process): passive declares.
        self.queue_depths = queue_depths
        self.settled_emails = Recounted(lambda session: gauges.emails_by_status_and_priority(session, gauges.SETTLED))
        self.settled_events = Recounted(lambda session: gauges.webhook_events_by_status(session, settled=True))
        self.sent_by_provider = Recounted(gauges.sent_by_provider)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "minalesh_up", "Whether this scrape could read the source (1) or not (0).", labels=["source"]
        )
        for source, read in (("postgres", self._database), ("rabbitmq", self._queues), ("limiter", self._limiter)):
            try:
                gauges_read = read()
            except Exception as exc:
                logger.warning("Metrics: could not read %s (%s).", source, describe(exc))
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from gauges_read
        yield up

    def _database(self) -> Gauges:
        now = utcnow()
        with self.current.sessions() as session:
            by_status = {
                **gauges.emails_by_status_and_priority(session, emails.UNSENT),
                **self.settled_emails.get(session),
            }
            due_since = gauges.oldest_due_email_since(session, now=now)
            sent_by_provider = self.sent_by_provider.get(session)
            events = {**gauges.webhook_events_by_status(session, settled=False), **self.settled_events.get(session)}
            reservations = gauges.reservations(session, now=now)
            dead = gauges.dead_letters_by_queue_and_actor(session)
            runs = periodic_runs.all_runs(session)
            delivery = self._delivery(session)
        return [
            *delivery,
            _labelled("minalesh_emails", "Emails by status and priority.", ["status", "priority"], by_status),
            _labelled(
                "minalesh_emails_sent_by_provider",
                "Emails sent, by the provider that took each (EMAIL_PROVIDERS; unknown: sent before it was stored).",
                ["provider"],
                sent_by_provider,
            ),
            GaugeMetricFamily(
                "minalesh_oldest_due_email_age_seconds",
                "How long the longest-waiting unsent email has been due (0: none is).",
                value=(now - due_since).total_seconds() if due_since else 0.0,
            ),
            _labelled(
                "minalesh_webhook_events",
                "Webhook events by status and whether archived (given up).",
                ["status", "archived"],
                {(status, str(archived).lower()): count for (status, archived), count in events.items()},
            ),
            GaugeMetricFamily("minalesh_reservations_active", "Reservations holding stock.", value=reservations.active),
            GaugeMetricFamily(
                "minalesh_reservations_expired_not_released",
                "Active reservations past their expiry, not released yet (the cleanup's backlog).",
                value=reservations.expired_not_released,
            ),
            _labelled(
                "minalesh_dead_letters",
                "Dead letters archived, by dead-letter queue and actor.",
                ["queue", "actor"],
                {(queue, actor or NO_ACTOR): count for (queue, actor), count in dead.items()},
            ),
            *self._periodic(runs),
        ]

    @staticmethod
    def _delivery(session: Session) -> Gauges:
        """The rates Resend's acceptable-use policy watches, per window, from one index range scan."""
        rates = delivery_events.rates(session, providers=WITH_DELIVERY_EVENTS)
        bounce = GaugeMetricFamily(
            "minalesh_email_bounce_rate",
            "Permanently bounced among the emails sent in the window (Resend's limit: 0.04).",
            labels=["window"],
        )
        complaint = GaugeMetricFamily(
            "minalesh_email_complaint_rate",
            "Complained-of among the emails sent in the window (Resend's limit: 0.0008).",
            labels=["window"],
        )
        sends = GaugeMetricFamily("minalesh_emails_sent_in_window", "Emails sent in the window.", labels=["window"])
        for window, figures in rates.items():
            bounce.add_metric([window], figures["bounce_rate"])
            complaint.add_metric([window], figures["complaint_rate"])
            sends.add_metric([window], figures["sent"])
        return [
            bounce,
            complaint,
            sends,
            GaugeMetricFamily(
                "minalesh_email_suppressions", "Addresses on the suppression list.", value=suppressions.count(session)
            ),
            GaugeMetricFamily(
                "minalesh_email_events_unmatched",
                "Delivery events that named no email of ours.",
                value=delivery_events.unmatched(session),
            ),
        ]

    def _periodic(self, runs: list[periodic_runs.JobRuns]) -> Gauges:
        success = GaugeMetricFamily(
            "minalesh_periodic_job_last_success_timestamp_seconds",
            "When each periodic job last finished a scheduled run (Unix time).",
            labels=["job"],
        )
        failure = GaugeMetricFamily(
            "minalesh_periodic_job_last_failure_timestamp_seconds",
            "When each periodic job last failed a scheduled run (Unix time).",
            labels=["job"],
        )
        for run in runs:
            if run.last_success_at is not None:
                success.add_metric([run.job], run.last_success_at.timestamp())
            if run.last_failure_at is not None:
                failure.add_metric([run.job], run.last_failure_at.timestamp())
        interval = GaugeMetricFamily(
            "minalesh_periodic_job_interval_seconds",
            "The time between two runs of each periodic job on its schedule (from its *_SCHEDULE).",
            labels=["job"],
        )
        for job in self.jobs:
            schedule = getattr(self.current.settings, job.actor.schedule_setting or "")
            interval.add_metric([job.actor.actor_name], schedule_interval_seconds(schedule))
        return [success, failure, interval]

    def _queues(self) -> Gauges:
        depths = self.queue_depths.depths()
        if depths is None:  # logged by QueueDepths
            raise SourceUnavailable("RabbitMQ's queue depths")
        return [
            _labelled(
                "minalesh_dead_letter_queue_messages",
                "Messages waiting in each dead-letter queue for the archiver.",
                ["queue"],
                {(xq_name(queue["name"]),): int(queue["dead"]) for queue in depths},
            )
        ]

    def _limiter(self) -> Gauges:
        state = self.current.sending.state()
        paused_until: Optional[float] = state["paused_until"]
        provider_limit: Optional[float] = state["provider_limit"]
        families = [
            GaugeMetricFamily(
                "minalesh_send_limit_requests_per_second",
                "Requests per second the fleet sends to the provider now (0: no limit).",
                value=float(state["per_second"]),
            ),
            GaugeMetricFamily(
                "minalesh_send_paused",
                "Whether the provider paused sending (a 429, a quota).",
                value=int(bool(state["paused"])),
            ),
            _labelled(
                "minalesh_send_operator_paused",
                "Whether an operator paused sending (scope all) or bulk sending (scope bulk) through the ops API.",
                ["scope"],
                {("all",): int(bool(state["paused_by_operator"])), ("bulk",): int(bool(state["bulk_paused"]))},
            ),
            GaugeMetricFamily(
                "minalesh_send_pause_remaining_seconds",
                "How long the pause still lasts (0: not paused, or a quota pause waiting for its probe).",
                value=max((paused_until or 0.0) - time.time(), 0.0),
            ),
        ]
        providers: dict[str, dict[str, Any]] = state.get("providers") or {}
        families.append(
            _labelled(
                "minalesh_send_provider_outage",
                "Whether the fleet paused this email provider for an outage (it failed as a whole), probing it.",
                ["provider"],
                {(name,): int(bool(own.get("outage"))) for name, own in providers.items()},
            )
        )
        if provider_limit:
            families.append(
                GaugeMetricFamily(
                    "minalesh_send_provider_limit_requests_per_second",
                    "The provider's own limit, from its last ratelimit-limit header.",
                    value=float(provider_limit),
                )
            )
        return families


def _labelled(name: str, documentation: str, labels: list[str], counts: dict[tuple[Any, ...], int]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, count in sorted(counts.items()):
        family.add_metric([str(value) for value in values], count)
    return family


def schedule_interval_seconds(schedule: str) -> float:
    """The time between the next two runs of a cron ``schedule`` (a day for ``17 3 * * *``)."""
    spec = cron(schedule)
    first = spec.next_valid_date(pendulum.now("UTC"))
    second = spec.next_valid_date(first.add(minutes=1))
    return float((second - first).total_seconds())


def metrics_registry(current: Runtime, queue_depths: QueueDepths) -> CollectorRegistry:
    """A registry holding only the domain gauges (none of this process's own counters)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DomainCollector(current, periodic_jobs(), queue_depths))
    return registry


def metrics_endpoint(current: Runtime, queue_depths: QueueDepths) -> Callable[[Request], Response]:
    """The ASGI endpoint of ``/metrics``: the text exposition format, behind ``METRICS_TOKEN`` if set.

    Synchronous on purpose: Starlette runs it in its thread pool, so the queries never
    block the event loop that answers webhooks.
    """
    registry = metrics_registry(current, queue_depths)
    token = current.settings.metrics_token

    def metrics(request: Request) -> Response:
        if token and not _bearer_matches(request, token):
            return PlainTextResponse("Unauthorized", status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


def metrics_route(current: Runtime, queue_depths: QueueDepths) -> Route:
    """``GET /metrics`` for ``serve``'s app (outside the OpenAPI document)."""
    return Route(METRICS_PATH, metrics_endpoint(current, queue_depths), methods=["GET"], include_in_schema=False)


def _bearer_matches(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
