"""What every command does first: read the settings, set up logging, check the services, bootstrap.

A command that cannot start says why in one line and exits non-zero, for a supervisor
to restart it: 1 when a setting is invalid, printed by click (``Error: ...``) as
logging is not set up yet; when a service cannot be used (``pipeline.core.preflight``),
a line logged at CRITICAL in LOG_FORMAT like every other line of the process, and a
status from sysexits.h: 78 (EX_CONFIG) when the service refused (credentials, vhost,
database, schema), 75 (EX_TEMPFAIL) when it did not answer within STARTUP_WAIT_MINUTES.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from pipeline.bootstrap import bootstrap
from pipeline.cli.readable import render
from pipeline.core import preflight
from pipeline.core.errors import ConfigError, ServiceNotReady
from pipeline.core.logs import configure_logging
from pipeline.core.runtime import Runtime
from pipeline.core.settings import Settings

logger = logging.getLogger(__name__)


def settings_from_env() -> Settings:
    """The settings, or a one-line error naming the bad variable."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings)
    return settings


def ready_settings(*, broker: bool = True, schema: bool = True) -> Settings:
    """The settings, once the database (at the code's schema, with ``schema``) and, with ``broker``,
    RabbitMQ answer; otherwise one line and the process's exit (see the module's docstring)."""
    settings = settings_from_env()
    try:
        preflight.check(settings, broker=broker, schema=schema)
    except ServiceNotReady as exc:
        logger.critical("%s", exc)
        sys.exit(exc.exit_status)
    return settings


def runtime_from_env(*, broker: bool = True) -> Runtime:
    """This process bootstrapped from its environment: the one bootstrap of every command.

    ``broker=False`` for the commands that only read and write the database (``stats``,
    ``sending``, most of ``dlq``): they still work while RabbitMQ is away.
    """
    return bootstrap(ready_settings(broker=broker))


def print_nested(figures: dict[str, Any]) -> None:
    """Nested figures for people: indented sections, aligned numbers, times in UTC and how long ago."""
    click.echo("\n".join(render(figures)))
