"""``/metrics`` on a small Starlette app of the test's own, against the run's PostgreSQL and RabbitMQ.

The run's database is shared by the whole tier, so each test asserts what its own
rows add (a dead letter under an actor name of its own, a due email of its own), not
totals. ``serve`` gets the same route when the lead wires it into the app.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import requests
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from actors.maintenance import prune_dead_letters
from pipeline.core.broker import RabbitmqBroker
from pipeline.core.runtime import Runtime
from pipeline.ops.stats import collect
from pipeline.web.depths import QueueDepths
from pipeline.web.metrics import metrics_route
from storage import periodic_runs
from storage.clock import utcnow
from tests.support.dlq_support import add_dead_letter
from tests.support.helpers import insert_email, unique_address, wait_until
from tests.support.webhook_support import serving

#: {(metric name, labels): value} of one scrape.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@contextmanager
def metrics_app(current: Runtime) -> Iterator[str]:
    """A Starlette app with only the metrics route, under uvicorn on a free port; yields its URL."""
    app = Starlette(routes=[metrics_route(current, QueueDepths(current.broker))])
    with serving(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")) as url:
        yield f"{url}/metrics"


def scrape(url: str, **headers: str) -> Samples:
    answer = requests.get(url, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_answer_the_domain_gauges(runtime: Runtime, sessions: sessionmaker[Session]) -> None:
    actor = f"metrics_probe_{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        add_dead_letter(sessions, actor=actor, args=[1], queue="emails.XQ")
    with sessions.begin() as session:  # due 30 minutes ago and never sent: the oldest due email
        insert_email(session, unique_address("metrics"), scheduled_at=utcnow() - timedelta(minutes=30), status="failed")
    prune_dead_letters.send()
    wait_until(
        lambda: _last_success(sessions, "prune_dead_letters"), what="the periodic run stamped in periodic_runs"
    )

    with metrics_app(runtime) as url:
        samples = scrape(url)

    assert value(samples, "minalesh_up", source="postgres") == 1
    assert value(samples, "minalesh_up", source="rabbitmq") == 1
    assert value(samples, "minalesh_up", source="limiter") == 1
    assert value(samples, "minalesh_dead_letters", queue="emails.XQ", actor=actor) == 2
    assert value(samples, "minalesh_emails", status="failed", priority="transactional") >= 1
    assert ("minalesh_dead_letter_queue_messages", frozenset({("queue", "emails.XQ")})) in samples
    assert ("minalesh_dead_letter_queue_messages", frozenset({("queue", "webhooks.XQ")})) in samples
    names = {name for name, _ in samples}
    assert {"minalesh_reservations_active", "minalesh_reservations_expired_not_released"} <= names
    stamped = value(samples, "minalesh_periodic_job_last_success_timestamp_seconds", job="prune_dead_letters")
    assert abs(stamped - utcnow().timestamp()) < 60
    assert value(samples, "minalesh_periodic_job_interval_seconds", job="prune_dead_letters") == 86400
    assert value(samples, "minalesh_periodic_job_interval_seconds", job="fan_out_emails") == 120
    assert collect(runtime)["periodic"]["prune_dead_letters"]["last_success_at"] is not None  # stats --json
    assert value(samples, "minalesh_send_limit_requests_per_second") > 0
    assert value(samples, "minalesh_send_paused") == 0
    assert value(samples, "minalesh_send_operator_paused", scope="bulk") == 0


def test_sent_emails_are_counted_by_the_provider_that_took_them(
    runtime: Runtime, sessions: sessionmaker[Session]
) -> None:
    with metrics_app(runtime) as url:
        before = scrape(url)
    with sessions.begin() as session:
        for provider in ("smtp", "smtp", "resend"):
            insert_email(session, unique_address("by-provider"), status="sent", provider=provider)
    with metrics_app(runtime) as url:  # a new collector: the settled counts are read afresh
        after = scrape(url)

    def grew(provider: str) -> float:
        name = "minalesh_emails_sent_by_provider"
        return value(after, name, provider=provider) - before.get((name, frozenset({("provider", provider)})), 0)

    assert (grew("smtp"), grew("resend")) == (2, 1)


def test_oldest_due_email_age(runtime: Runtime, sessions: sessionmaker[Session]) -> None:
    """A retry due an hour ago (no lease: no fan-out takes it) makes the oldest due email at least that old."""
    with sessions.begin() as session:
        email_id = insert_email(
            session, unique_address("late"), status="retrying", next_attempt_at=utcnow() - timedelta(hours=1)
        )
    try:
        with metrics_app(runtime) as url:
            age = value(scrape(url), "minalesh_oldest_due_email_age_seconds")
        assert age >= 3600
    finally:
        with sessions.begin() as session:
            session.execute(text("UPDATE email_queue SET status = 'failed' WHERE id = :id"), {"id": email_id})


def test_a_source_that_fails_is_reported_not_raised(runtime: Runtime) -> None:
    """RabbitMQ unreachable: the database gauges still come, with ``minalesh_up{source="rabbitmq"} 0``."""
    unreachable = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:1/%2F", prefetch_caps={}, middleware=[])
    unreachable.declare_queue("emails")  # known, not declared in RabbitMQ yet: no connection
    with metrics_app(dataclasses.replace(runtime, broker=unreachable)) as url:
        samples = scrape(url)
    assert value(samples, "minalesh_up", source="rabbitmq") == 0
    assert value(samples, "minalesh_up", source="postgres") == 1
    assert not any(name == "minalesh_dead_letter_queue_messages" for name, _ in samples)


def test_metrics_token_is_asked_for_when_set(runtime: Runtime) -> None:
    guarded = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, metrics_token="scrape-tok"))
    with metrics_app(guarded) as url:
        assert requests.get(url, timeout=10).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        assert value(scrape(url, Authorization="Bearer scrape-tok"), "minalesh_up", source="postgres") == 1


def _last_success(sessions: sessionmaker[Session], job: str) -> bool:
    with sessions() as session:
        return any(run.job == job and run.last_success_at for run in periodic_runs.all_runs(session))
