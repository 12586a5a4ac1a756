"""``minalesh-workers stats``: the counts an operator watches."""

from __future__ import annotations

import json

import click

from pipeline.cli.common import print_nested, runtime_from_env
from pipeline.ops.stats import collect


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(as_json: bool) -> None:
    """Counts an operator watches: emails by status, webhook events, reservations, dead letters."""
    figures = collect(runtime_from_env(broker=False))
    if as_json:
        click.echo(json.dumps(figures, indent=2, default=str))
    else:
        print_nested(figures)
