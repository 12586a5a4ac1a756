"""``minalesh-workers``: the one command operators and deploy scripts use."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import click

from pipeline.core.errors import ConfigError
from pipeline.core.logs import configure_logging
from pipeline.core.runtime import Runtime
from pipeline.core.settings import Settings
from storage import migrate


def _settings() -> Settings:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level)
    return settings


def _runtime() -> Runtime:
    from pipeline.bootstrap import bootstrap

    return bootstrap(_settings())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Background workers of the Minalesh shop: emails, payment webhooks, inventory."""


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration (safe to run again, and concurrently)."""
    settings = _settings()
    migrate.upgrade(settings.database_url)
    click.echo(f"Database at revision {migrate.current_revision(settings.database_url)}.")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and the newest one shipped."""
    settings = _settings()
    click.echo(f"current: {migrate.current_revision(settings.database_url)}  head: {migrate.head_revision()}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-p", "--processes", type=click.IntRange(min=1), default=None, help="Worker processes (default: CPUs).")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None, help="Threads per process (default: 8).")
@click.argument("dramatiq_args", nargs=-1, type=click.UNPROCESSED)
def worker(processes: int | None, threads: int | None, dramatiq_args: tuple[str, ...]) -> None:
    """Run the Dramatiq workers; other options are passed to `dramatiq`."""
    _settings()
    command = [sys.executable, "-m", "dramatiq", "pipeline.entry:broker"]
    if processes:
        command += ["--processes", str(processes)]
    if threads:
        command += ["--threads", str(threads)]
    os.execv(sys.executable, [*command, *dramatiq_args])


@main.command()
def ticker() -> None:
    """Emit the periodic ticks (emails on EMAIL_SCHEDULE, …) into RabbitMQ."""
    from pipeline.ticker import run_ticker

    run_ticker(_runtime().broker)


@main.command()
def archiver() -> None:
    """Move dead-lettered messages from RabbitMQ into the dead_letters table."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from pipeline.archiver import RabbitmqArchiver

    current = _runtime()
    assert isinstance(current.broker, RabbitmqBroker)
    stop = threading.Event()
    try:
        RabbitmqArchiver(current.broker, current.sessions).run(stop)
    except KeyboardInterrupt:
        stop.set()


@main.group()
def tick() -> None:
    """Run one periodic job now (the manual trigger)."""


@tick.command("emails")
def tick_emails() -> None:
    """Claim every due email and enqueue its send."""
    from actors.emails import enqueue_due_emails

    _runtime()
    click.echo(f"Enqueued {enqueue_due_emails()} emails.")


@tick.command("webhooks")
def tick_webhooks() -> None:
    """Re-enqueue payment webhook events whose message was lost (at most WEBHOOK_BATCH_SIZE)."""
    from actors.webhooks import enqueue_due_webhooks

    _runtime()
    click.echo(f"Enqueued {enqueue_due_webhooks()} webhook events.")


@tick.command("reservations")
def tick_reservations() -> None:
    """Expire every active reservation past its expires_at, giving its stock back."""
    from actors.inventory import release_expired_reservations

    _runtime()
    expired = release_expired_reservations()
    for reservation in expired:
        click.echo(
            f"released reservation {reservation.id}: product {reservation.product_id}, {reservation.quantity} units"
        )
    click.echo(f"Expired {len(expired)} reservations, {sum(r.quantity for r in expired)} units back in stock.")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port.")
def serve(host: str, port: int) -> None:
    """Answer payment provider webhooks: POST /api/payments/webhook/{provider}."""
    from pipeline.webhook_server import serve as run_server

    run_server(_runtime(), host=host, port=port)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(as_json: bool) -> None:
    """Counts an operator watches: emails by status, dead letters."""
    from pipeline.stats import collect

    figures = collect(_runtime().sessions)
    if as_json:
        click.echo(json.dumps(figures, indent=2, default=str))
    else:
        _print_nested(figures)


def _print_nested(figures: dict[str, Any], indent: int = 0) -> None:
    for key, value in figures.items():
        if isinstance(value, dict):
            click.echo(f"{' ' * indent}{key}:")
            _print_nested(value, indent + 2)
        else:
            click.echo(f"{' ' * indent}{key}: {value}")


@main.command()
@click.option("--demo", is_flag=True, help="Seed sample emails, some failing, to watch retries and dead letters.")
@click.option(
    "--database",
    type=click.Path(dir_okay=False),
    default=".minalesh-dev/dev.sqlite3",
    show_default=True,
    help="The SQLite file of the embedded mode.",
)
def dev(demo: bool, database: str) -> None:
    """Worker, ticker and archiver in one process, on SQLite and an in-memory broker."""
    from pipeline.dev import run_dev

    run_dev(_settings(), database=database, demo=demo)


from pipeline.cli.dlq import dlq  # noqa: E402  (last: its commands bootstrap through this module)

main.add_command(dlq)
