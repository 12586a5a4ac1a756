"""``minalesh-workers dev``: the whole system in one process, nothing to install.

SQLite stands in for PostgreSQL, Dramatiq's in-memory broker for RabbitMQ, and
without RESEND_API_KEY the outbox folder for Resend. The code paths are the
production ones; only the three backends differ. Worker, ticker and archiver run
beside the web app ``serve`` runs (intake, health, ops API, dashboard, /metrics),
on 127.0.0.1 in a thread of this process; without CRON_SECRET the run makes up
its own sign-in token, and prints it.

``--demo`` starts from an empty database and outbox, seeds emails, orders and
reservations, and posts signed payment webhooks to the running intake, so every
page of the dashboard has something on it. Without it the data of earlier runs is
kept (``--reset`` starts afresh).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import click
import requests
import uvicorn
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.orm import Session, sessionmaker

from actors.fan_out import enqueue_due_emails
from pipeline.archiver import StubArchiver
from pipeline.bootstrap import bootstrap, default_mailer
from pipeline.core.errors import ConfigError, MinaleshError, PermanentError, TransientError
from pipeline.core.logs import configure_logging
from pipeline.core.runtime import Runtime
from pipeline.core.settings import Settings
from pipeline.ops.stats import collect
from pipeline.providers.base import Accepted, BatchAccepted, Capabilities, OutgoingEmail, Provider, Refused
from pipeline.ticker import run_ticker
from pipeline.web.app import DEFAULT_PORT, server_config
from pipeline.web.dashboard import BASE_PATH as DASHBOARD_PATH
from pipeline.web.intake import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_PATH,
    signature_header,
)
from storage import emails, inventory, migrate, orders

logger = logging.getLogger(__name__)

#: Demo recipients at this domain are refused by the provider: one attempt, then a dead letter.
BOUNCING_DOMAIN = "bounce.demo"
#: Demo recipients at this domain always time out: every retry, then a dead letter.
FLAKY_DOMAIN = "flaky.demo"
#: With --demo and no EMAIL_RETRY_DELAY_MINUTES, retries come after 3 s, 6 s, 12 s.
DEMO_RETRY_DELAY_MINUTES = 0.05
#: Seconds between the status lines dev prints.
STATUS_INTERVAL_SECONDS = 5.0
#: The web app listens here only: the sign-in token is printed, and the intake takes a made-up secret.
DEV_HOST = "127.0.0.1"
#: The web app must answer within this many seconds of its start.
WEB_START_SECONDS = 10.0
#: How long its in-flight requests get at Ctrl-C (uvicorn's graceful shutdown is 10 s).
WEB_STOP_SECONDS = 15.0
#: The provider the demo's payment webhooks come from.
DEMO_PROVIDER = "telebirr"
#: What ``--reset`` (and ``--demo``) deletes beside the database: the OutboxMailer's files.
OUTBOX_PATTERN = "*.eml"


class DemoMailer:
    """Fails the demo's bad recipients the way Resend would, passes the rest on."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.capabilities: Capabilities = inner.capabilities

    def send(self, email: OutgoingEmail) -> Accepted:
        domain = email.recipient.rsplit("@", 1)[-1]
        if domain == BOUNCING_DOMAIN:
            raise PermanentError(f"Resend 422 validation_error: {email.recipient} is not deliverable (demo)")
        if domain == FLAKY_DOMAIN:
            raise TransientError(f"Resend 500 application_error: upstream timeout for {email.recipient} (demo)")
        return self.inner.send(email)

    def send_batch(self, emails: list[OutgoingEmail], *, idempotency_key: str) -> BatchAccepted:
        """As a permissive batch: bouncing members refused, a flaky one fails the whole request."""
        results: list[str | Refused] = []
        for email in emails:
            try:
                results.append(self.send(email).provider_id)
            except PermanentError as refused:
                results.append(Refused(str(refused)))
        return BatchAccepted(results)


#: The demo's payment events, posted to the running intake as the provider would: MN-1001 paid (its
#: stock committed, its confirmation emailed), MN-1002 declined (its stock released, the customer told);
#: MN-1003 gets none, so its hold stays active, then lapses and the cleanup gives its stock back.
DEMO_EVENTS: tuple[dict[str, Any], ...] = (
    {
        "event_id": "evt-demo-1001",
        "type": "payment.succeeded",
        "order_id": "MN-1001",
        "amount": "1250.00",
        "currency": "ETB",
        "customer_name": "Almaz",
    },
    {
        "event_id": "evt-demo-1002",
        "type": "payment.failed",
        "order_id": "MN-1002",
        "amount": "480.00",
        "currency": "ETB",
        "reason": "The card was declined.",
    },
)


def dev_settings(settings: Settings, *, database: Path, demo: bool) -> Settings:
    """``settings`` on the SQLite file ``database``, with a sign-in token and a webhook secret made up if unset."""
    database.parent.mkdir(parents=True, exist_ok=True)
    changes: dict[str, Any] = {"database_url": f"sqlite:///{database}"}
    if settings.cron_secret is None:
        changes["cron_secret"] = secrets.token_urlsafe(32)
    if settings.payment_webhook_secret is None:
        # The intake refuses unsigned webhooks; the demo signs its own with this one.
        changes["payment_webhook_secret"] = secrets.token_urlsafe(32)
    if demo and "EMAIL_RETRY_DELAY_MINUTES" not in settings.set_in_environment:
        changes["email_retry_delay_minutes"] = DEMO_RETRY_DELAY_MINUTES
    if demo:
        # One email per request, so the demo's flaky address retries alone: a provider error
        # answering a batch would fail its batch-mates' attempts too.
        changes["email_per_request"] = 1
    return dataclasses.replace(settings, **changes)


def reset_data(database: Path, outbox: Path) -> None:
    """Delete the SQLite file (with its WAL and journal) and the emails of the outbox."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    for written in outbox.glob(OUTBOX_PATTERN):
        written.unlink()


def seed_demo(sessions: sessionmaker[Session], *, hold_minutes: float) -> None:
    """A few good emails and the failing kinds a newcomer should see; orders holding stock, for the webhooks."""
    with sessions.begin() as session:
        for number in range(1, 6):
            emails.enqueue(
                session,
                recipient=f"customer{number}@example.com",
                subject=f"Hello #{number}",
                html=f"<p>Hello {number}</p>",
            )
        emails.enqueue(session, recipient=f"nobody@{BOUNCING_DOMAIN}", subject="Refused at once", text="bounce")
        emails.enqueue(session, recipient=f"someone@{FLAKY_DOMAIN}", subject="Retried, then dead", text="flaky")
        emails.enqueue(session, recipient="typo@example.com", subject="Unknown template", template="no_such_template")
        jebena = inventory.create_product(session, sku="JEBENA-1L", name="Jebena, 1 l", stock=12)
        mesob = inventory.create_product(session, sku="MESOB-S", name="Mesob, small", stock=4)
        for order_id, total, customer, product, quantity in (
            ("MN-1001", "1250.00", "buyer@example.com", jebena, 2),
            ("MN-1002", "480.00", "abebe@example.com", mesob, 1),
            ("MN-1003", "300.00", "hana@example.com", jebena, 1),
        ):
            orders.create(session, order_id=order_id, total=Decimal(total), customer_email=customer)
            inventory.reserve(session, product, quantity, ttl_minutes=hold_minutes, order_id=order_id)
    logger.info("Demo: seeded 8 emails (2 fail permanently, 1 fails after every retry) and 3 orders holding stock.")


def post_demo_webhooks(base_url: str, settings: Settings) -> None:
    """``DEMO_EVENTS``, signed with this run's secret, through the intake of ``base_url``, as a provider posts."""
    secret = settings.webhook_secret(DEMO_PROVIDER)
    assert secret is not None, "dev_settings makes one up"
    url = base_url + WEBHOOK_PATH.format(provider=DEMO_PROVIDER)
    for event in DEMO_EVENTS:
        body = json.dumps(event).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: signature_header([secret], stamp, body),
        }
        try:
            answer = requests.post(url, data=body, headers=headers, timeout=10)
        except requests.RequestException as exc:
            logger.warning("Demo: could not post the %s webhook: %s", event["type"], exc)
            continue
        if answer.ok:
            logger.info(
                "Demo: posted a signed %s webhook (%s, order %s): stored as event %s.",
                DEMO_PROVIDER,
                event["type"],
                event["order_id"],
                answer.json()["id"],
            )
        else:
            logger.warning(
                "Demo: the intake answered %d to the %s webhook: %s", answer.status_code, event["type"], answer.text
            )


def listen(port: int) -> socket.socket:
    """A socket listening on ``DEV_HOST:port`` (0: any free port), before anything starts: a taken port is one line."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait out TIME_WAIT
    try:
        listener.bind((DEV_HOST, port))
        listener.listen()
    except OSError as exc:
        listener.close()
        raise ConfigError(
            f"cannot listen on {DEV_HOST}:{port} ({exc.strerror}): choose another port with --port (0: any free one)"
        ) from None
    return listener


def serve_in_thread(current: Runtime, listener: socket.socket, running: ExitStack) -> str:
    """``serve``'s app under uvicorn in a thread, on ``listener``, until ``running`` closes; return its URL."""
    port = listener.getsockname()[1]
    server = uvicorn.Server(server_config(current, host=DEV_HOST, port=port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="web", daemon=True)
    thread.start()
    running.callback(_stop_server, server, thread)
    deadline = time.monotonic() + WEB_START_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise MinaleshError(f"the web app did not start on {DEV_HOST}:{port}; see the log above")
        time.sleep(0.05)
    return f"http://{DEV_HOST}:{port}"


def _stop_server(server: uvicorn.Server, thread: threading.Thread) -> None:
    """Its in-flight requests finish first (uvicorn's graceful shutdown)."""
    server.should_exit = True
    thread.join(timeout=WEB_STOP_SECONDS)


def announce(base_url: str, settings: Settings, *, own_token: bool, data: str) -> None:
    """The dashboard's address and how to sign in, on stdout where a newcomer looks.

    The token is printed only when this run made it up; a CRON_SECRET of one's own never is.
    """
    sign_in = f"sign-in token: {settings.cron_secret}" if own_token else "sign in with your CRON_SECRET"
    click.echo("")
    click.echo(click.style(f"Dashboard: {base_url}{DASHBOARD_PATH}  {sign_in}", bold=True))
    click.echo(f"Also on {base_url}: the webhook intake {WEBHOOK_PATH}, the ops API /api/ops, /metrics, /healthz.")
    click.echo(data)
    click.echo("")


def describe_data(database: Path, settings: Settings, *, fresh: bool) -> str:
    """Where this run's data lives, and whether it was reset."""
    outbox = Path(settings.email_outbox_dir).resolve()
    sent = "emails go to Resend" if settings.resend_api_key else f"emails in {outbox}"
    state = "reset for this run" if fresh else "kept from earlier runs (`minalesh-workers dev --reset` starts afresh)"
    return f"Data: {database} and {sent}, {state}."


def run_dev(settings: Settings, *, database: str, demo: bool, reset: bool = False, port: int = DEFAULT_PORT) -> None:
    """Everything until Ctrl-C, which stops it all (a second one quits at once); ConfigError if ``port`` is taken."""
    listener = listen(port)
    with ExitStack() as running:
        running.callback(listener.close)
        try:
            _run(settings, Path(database).resolve(), demo=demo, fresh=demo or reset, listener=listener, running=running)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, _quit_at_once)
            logger.info("Dev: stopping.")


def _run(
    settings: Settings, database: Path, *, demo: bool, fresh: bool, listener: socket.socket, running: ExitStack
) -> None:
    own_token = settings.cron_secret is None
    settings = dev_settings(settings, database=database, demo=demo)
    configure_logging(settings)  # the secrets made up for the run are masked in the log like any other
    if fresh:
        reset_data(database, Path(settings.email_outbox_dir))
    migrate.upgrade(settings.database_url)
    mailer = default_mailer(settings)
    current = bootstrap(settings, embedded=True, mailer=DemoMailer(mailer) if demo else mailer)
    assert isinstance(current.broker, StubBroker)
    if demo:
        seed_demo(current.sessions, hold_minutes=current.settings.reservation_timeout_minutes)
    base_url = serve_in_thread(current, listener, running)
    announce(base_url, settings, own_token=own_token, data=describe_data(database, settings, fresh=fresh))
    _start_workers(current, running)
    if demo:
        post_demo_webhooks(base_url, settings)
    logger.info("Dev: database %s; first fan-out enqueued %d emails.", settings.database_url, enqueue_due_emails())
    run_ticker(current)


def _start_workers(current: Runtime, running: ExitStack) -> None:
    """The Dramatiq worker, the archiver and the status lines, stopped when ``running`` closes."""
    assert isinstance(current.broker, StubBroker)  # the archiver drains the in-memory broker
    stop = threading.Event()
    worker = Worker(current.broker, worker_threads=4)
    current.broker.emit_after("process_boot")
    worker.start()
    running.callback(worker.stop)
    running.callback(stop.set)
    archiver = StubArchiver(current.broker, current.sessions, alerter=current.alerter)
    for target in (archiver.run, functools.partial(_report, current)):
        threading.Thread(target=target, args=(stop,), daemon=True).start()


def _quit_at_once(_signal: int, _frame: Optional[FrameType]) -> None:
    """A second Ctrl-C while stopping: leave now, as a process killed by SIGINT would."""
    os._exit(130)


def _report(current: Runtime, stop: threading.Event) -> None:
    """Print the counts now and then, so the newcomer sees sends, retries and dead letters."""
    last = None
    while not stop.wait(STATUS_INTERVAL_SECONDS):
        figures = collect(current)
        figures.pop("sending")  # the limiter's clock-driven figures would print a line every time
        if figures != last:
            logger.info("Status: emails %s, dead letters %s", figures["emails"], figures["dead_letters"])
            last = figures
