"""``minalesh-workers dev``: the whole system in one process, nothing to install.

SQLite stands in for PostgreSQL, Dramatiq's in-memory broker for RabbitMQ, and
without RESEND_API_KEY the outbox folder for Resend. The code paths are the
production ones; only the three backends differ.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from actors.fan_out import enqueue_due_emails
from pipeline.archiver import StubArchiver
from pipeline.bootstrap import bootstrap, default_mailer
from pipeline.core.errors import PermanentError, TransientError
from pipeline.core.mailer import BatchSent, Mailer, OutgoingEmail, Refused, Sent
from pipeline.core.runtime import Runtime
from pipeline.core.settings import Settings
from pipeline.stats import collect
from pipeline.ticker import run_ticker
from storage import emails, migrate
from storage.database import get_sessionmaker

logger = logging.getLogger(__name__)

#: Demo recipients at this domain are refused by the provider: one attempt, then a dead letter.
BOUNCING_DOMAIN = "bounce.demo"
#: Demo recipients at this domain always time out: every retry, then a dead letter.
FLAKY_DOMAIN = "flaky.demo"
#: With --demo and no EMAIL_RETRY_DELAY_MINUTES, retries come after 3 s, 6 s, 12 s.
DEMO_RETRY_DELAY_MINUTES = 0.05
#: Seconds between the status lines dev prints.
STATUS_INTERVAL_SECONDS = 5.0


class DemoMailer:
    """Fails the demo's bad recipients the way Resend would, passes the rest on."""

    def __init__(self, inner: Mailer) -> None:
        self.inner = inner

    def send(self, email: OutgoingEmail) -> Sent:
        domain = email.recipient.rsplit("@", 1)[-1]
        if domain == BOUNCING_DOMAIN:
            raise PermanentError(f"Resend 422 validation_error: {email.recipient} is not deliverable (demo)")
        if domain == FLAKY_DOMAIN:
            raise TransientError(f"Resend 500 application_error: upstream timeout for {email.recipient} (demo)")
        return self.inner.send(email)

    def send_batch(self, emails: list[OutgoingEmail], *, idempotency_key: str) -> BatchSent:
        """As a permissive batch: bouncing members refused, a flaky one fails the whole request."""
        results: list[str | Refused] = []
        for email in emails:
            try:
                results.append(self.send(email).provider_id)
            except PermanentError as refused:
                results.append(Refused(str(refused)))
        return BatchSent(results)


def dev_settings(settings: Settings, *, database: str, demo: bool) -> Settings:
    path = Path(database).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    changes: dict[str, object] = {"database_url": f"sqlite:///{path}"}
    if demo and not os.environ.get("EMAIL_RETRY_DELAY_MINUTES"):
        changes["email_retry_delay_minutes"] = DEMO_RETRY_DELAY_MINUTES
    if demo:
        # One email per request, so the demo's flaky address retries alone: a provider error
        # answering a batch would fail its batch-mates' attempts too.
        changes["email_per_request"] = 1
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


def seed_demo(settings: Settings) -> None:
    """A few good emails, a templated one, and the failing kinds a newcomer should see."""

    with get_sessionmaker(settings.database_url).begin() as session:
        for number in range(1, 6):
            emails.enqueue(
                session,
                recipient=f"customer{number}@example.com",
                subject=f"Hello #{number}",
                html=f"<p>Hello {number}</p>",
            )
        emails.enqueue(
            session,
            recipient="buyer@example.com",
            subject="Order {{ order_id }} confirmed",
            template="order_confirmation",
            template_data={"order_id": "MN-1001", "total": "1,250.00", "currency": "ETB"},
        )
        emails.enqueue(session, recipient=f"nobody@{BOUNCING_DOMAIN}", subject="Refused at once", text="bounce")
        emails.enqueue(session, recipient=f"someone@{FLAKY_DOMAIN}", subject="Retried, then dead", text="flaky")
        emails.enqueue(session, recipient="typo@example.com", subject="Unknown template", template="no_such_template")
    logger.info("Demo: seeded 9 emails (2 fail permanently, 1 fails after every retry).")


def run_dev(settings: Settings, *, database: str, demo: bool) -> None:
    settings = dev_settings(settings, database=database, demo=demo)
    migrate.upgrade(settings.database_url)
    mailer = default_mailer(settings)
    current = bootstrap(settings, embedded=True, mailer=DemoMailer(mailer) if demo else mailer)
    assert isinstance(current.broker, StubBroker)
    if demo:
        seed_demo(settings)
    stop = threading.Event()
    worker = Worker(current.broker, worker_threads=4)
    current.broker.emit_after("process_boot")
    worker.start()
    threads = [
        threading.Thread(target=StubArchiver(current.broker, current.sessions).run, args=(stop,), daemon=True),
        threading.Thread(target=_report, args=(current, stop), daemon=True),
    ]
    for thread in threads:
        thread.start()
    logger.info("Dev: database %s; first fan-out enqueued %d emails.", settings.database_url, enqueue_due_emails())
    try:
        run_ticker(current)
    except KeyboardInterrupt:
        logger.info("Dev: stopping.")
    finally:
        stop.set()
        worker.stop()


def _report(current: Runtime, stop: threading.Event) -> None:
    """Print the counts now and then, so the newcomer sees sends, retries and dead letters."""
    last = None
    while not stop.wait(STATUS_INTERVAL_SECONDS):
        figures = collect(current)
        figures.pop("sending")  # the limiter's clock-driven figures would print a line every time
        if figures != last:
            logger.info("Status: emails %s, dead letters %s", figures["emails"], figures["dead_letters"])
            last = figures
