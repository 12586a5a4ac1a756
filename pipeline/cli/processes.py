"""The long-running processes: ``worker``, ``ticker``, ``archiver``, ``serve`` and ``dev``.

Each but ``dev`` checks its services first (``pipeline.cli.common.ready_settings``).
Ctrl-C is how an operator stops one at a terminal, so it ends ``ticker``, ``archiver``
and ``serve`` quietly with status 0, as Dramatiq's ``worker`` does, rather than with
click's ``Aborted!`` and status 1 (``serve`` finishes its requests first, uvicorn's own
handling; the ticker's ticks are claims in the database, so one cut short loses nothing).
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import suppress

import click
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from pipeline.archiver import RabbitmqArchiver
from pipeline.cli.common import ready_settings, runtime_from_env, settings_from_env
from pipeline.core.errors import ConfigError
from pipeline.dev import run_dev
from pipeline.ticker import run_ticker
from pipeline.web.app import DEFAULT_PORT
from pipeline.web.app import serve as run_server


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-p", "--processes", type=click.IntRange(min=1), default=None, help="Worker processes (default: CPUs).")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None, help="Threads per process (default: 8).")
@click.argument("dramatiq_args", nargs=-1, type=click.UNPROCESSED)
def worker(processes: int | None, threads: int | None, dramatiq_args: tuple[str, ...]) -> None:
    """Run the Dramatiq workers; other options are passed to `dramatiq`."""
    try:
        ready_settings()  # here, once, rather than in each of Dramatiq's processes
    except KeyboardInterrupt:  # Ctrl-C while the services are waited for
        return
    command = [sys.executable, "-m", "pipeline.worker_main", "pipeline.entry:broker", "--skip-logging"]
    if processes:
        command += ["--processes", str(processes)]
    if threads:
        command += ["--threads", str(threads)]
    os.execv(sys.executable, [*command, *dramatiq_args])


@click.command()
def ticker() -> None:
    """Emit the periodic ticks (emails on EMAIL_SCHEDULE, …) into RabbitMQ."""
    with suppress(KeyboardInterrupt):
        run_ticker(runtime_from_env())


@click.command()
def archiver() -> None:
    """Move dead-lettered messages from RabbitMQ into the dead_letters table."""
    stop = threading.Event()
    try:
        current = runtime_from_env()
        assert isinstance(current.broker, RabbitmqBroker)
        RabbitmqArchiver(current.broker, current.sessions, alerter=current.alerter).run(stop)
    except KeyboardInterrupt:
        stop.set()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port.")
def serve(host: str, port: int) -> None:
    """Payment provider webhooks, health; with CRON_SECRET, the cron endpoints and the ops API."""
    with suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT once it has shut down
        run_server(runtime_from_env(), host=host, port=port)


@click.command()
@click.option("--demo", is_flag=True, help="Start afresh, seed emails (some failing), orders and payment webhooks.")
@click.option(
    "--database",
    type=click.Path(dir_okay=False),
    default=".minalesh-dev/dev.sqlite3",
    show_default=True,
    help="The SQLite file of the embedded mode.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port of the web app on 127.0.0.1 (0: any free one).",
)
@click.option("--reset", is_flag=True, help="Delete the database and the outbox's emails first (--demo always does).")
def dev(demo: bool, database: str, port: int, reset: bool) -> None:
    """Worker, ticker, archiver and the web app (dashboard: /ops) in one process, on SQLite and an in-memory broker."""
    try:
        run_dev(settings_from_env(), database=database, demo=demo, reset=reset, port=port)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
