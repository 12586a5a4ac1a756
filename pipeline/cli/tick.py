"""``minalesh-workers tick <job>``: run one periodic job now, one subcommand per declared job."""

from __future__ import annotations

import click

from pipeline.bootstrap import periodic_jobs
from pipeline.cli.common import runtime_from_env
from pipeline.core.declare import PeriodicJob


@click.group()
def tick() -> None:
    """Run one periodic job now (the manual trigger)."""


def _command(job: PeriodicJob) -> click.Command:
    def run() -> None:
        runtime_from_env()
        report = job.run()
        for line in report.details:
            click.echo(line)
        click.echo(report.summary)

    return click.Command(job.tick, callback=run, help=job.help)


for _job in periodic_jobs():
    tick.add_command(_command(_job))
