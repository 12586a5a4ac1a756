"""``minalesh-workers sending``: pause and resume sending (all of it, or bulk only), and see its state.

The same pause as ``POST /api/ops/sending/pause``: a row every worker host sees
(``storage.sending_pauses``); held emails wait without spending retries.
"""

from __future__ import annotations

import json
from typing import Optional

import click

from pipeline.cli.common import print_nested, runtime_from_env
from pipeline.core.audit import audit
from storage.sending_pauses import ALL, BULK


@click.group()
def sending() -> None:
    """Pause or resume sending emails; `sending status` shows the limiter's state."""


@sending.command()
@click.option("--bulk", is_flag=True, help="Only bulk emails; transactional ones keep going.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), help="End by itself after this long.")
@click.option("--reason", help="Why, for whoever looks next.")
def pause(bulk: bool, minutes: Optional[float], reason: Optional[str]) -> None:
    """Pause sending until `sending resume` (or for --minutes)."""
    scope = BULK if bulk else ALL
    sending_ = runtime_from_env(broker=False).sending
    sending_.pause(scope, minutes=minutes, reason=reason, by="cli")
    audit("cli", "pause", scope=scope, minutes=minutes, reason=reason)
    until = f"for {minutes:g} minutes" if minutes else "until `minalesh-workers sending resume`"
    click.echo(f"Paused {'bulk sending' if bulk else 'all sending'} {until}.")


@sending.command()
@click.option("--bulk", is_flag=True, help="End the bulk-only pause.")
def resume(bulk: bool) -> None:
    """End an operator's pause of sending."""
    scope = BULK if bulk else ALL
    ended = runtime_from_env(broker=False).sending.resume(scope)
    audit("cli", "resume", scope=scope, ended=ended)
    what = "bulk sending" if bulk else "all sending"
    click.echo(f"Resumed {what}." if ended else f"No pause of {what} was in force.")


@sending.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """The rate in use, the provider's pauses and the operator's."""
    state = runtime_from_env(broker=False).sending.state()
    if as_json:
        click.echo(json.dumps(state, indent=2))
    else:
        print_nested(state)
