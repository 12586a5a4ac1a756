"""What every command does first: read the settings, set up logging, bootstrap."""

from __future__ import annotations

from typing import Any

import click

from pipeline.bootstrap import bootstrap
from pipeline.cli.readable import render
from pipeline.core.errors import ConfigError
from pipeline.core.logs import configure_logging
from pipeline.core.runtime import Runtime
from pipeline.core.settings import Settings


def settings_from_env() -> Settings:
    """The settings, or a one-line error naming the bad variable."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings)
    return settings


def runtime_from_env() -> Runtime:
    """This process bootstrapped from its environment: the one bootstrap of every command."""
    return bootstrap(settings_from_env())


def print_nested(figures: dict[str, Any]) -> None:
    """Nested figures for people: indented sections, aligned numbers, times in UTC and how long ago."""
    click.echo("\n".join(render(figures)))
