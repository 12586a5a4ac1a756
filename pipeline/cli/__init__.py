"""``minalesh-workers``: the one command operators and deploy scripts use.

One module per command group; this one only assembles them.
"""

from __future__ import annotations

import click

from pipeline.cli.db import db
from pipeline.cli.dlq import dlq
from pipeline.cli.processes import archiver, dev, serve, ticker, worker
from pipeline.cli.sending import sending
from pipeline.cli.stats import stats
from pipeline.cli.suppressions import suppressions_group
from pipeline.cli.tick import tick


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Background workers of the Minalesh shop: emails, payment webhooks, inventory."""


for _command in (db, worker, ticker, archiver, tick, serve, stats, dev, dlq, sending, suppressions_group):
    main.add_command(_command)
