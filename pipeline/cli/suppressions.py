"""``minalesh-workers suppressions``: the addresses no email is sent to.

The same list as ``/api/ops/suppressions`` and the dashboard's Suppressions page
(``pipeline.ops.suppressions``); every change is an audit line by ``cli``.
"""

from __future__ import annotations

import json
from typing import Optional

import click

from pipeline.cli.common import runtime_from_env
from pipeline.ops import suppressions
from pipeline.ops.suppressions import InvalidAddress


@click.group(name="suppressions")
def suppressions_group() -> None:
    """List, add or remove suppressed addresses (bounced, complained, or added by hand)."""


@suppressions_group.command(name="list")
@click.option("--prefix", help="Only addresses starting with this (any case).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(prefix: Optional[str], limit: int, as_json: bool) -> None:
    """The suppressed addresses, with why and since when."""
    items = suppressions.listing(runtime_from_env(broker=False).sessions, prefix=prefix, limit=limit)
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("No suppressed address.")
    for item in items:
        cause = f" (email {item['email_id']})" if item["email_id"] else ""
        click.echo(f"{item['address']}  {item['reason']}{cause}  by {item['created_by']} at {item['created_at']}")


@suppressions_group.command()
@click.argument("address")
@click.option("--reason", help="Why, for whoever looks next.")
def add(address: str, reason: Optional[str]) -> None:
    """Suppress ADDRESS: no email is sent to it until it is removed."""
    try:
        added = suppressions.add(runtime_from_env(broker=False).sessions, address, reason=reason, who="cli")
    except InvalidAddress as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from None
    shown = address.strip().lower()
    click.echo(f"Suppressed {shown}." if added else f"{shown} was suppressed already.")


@suppressions_group.command()
@click.argument("address")
def remove(address: str) -> None:
    """Lift the suppression of ADDRESS: the next email to it is sent."""
    try:
        removed = suppressions.remove(runtime_from_env(broker=False).sessions, address, who="cli")
    except InvalidAddress as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from None
    if not removed:
        raise click.ClickException(f"{address.strip().lower()} is not suppressed.")
    click.echo(f"Removed {address.strip().lower()}: the next email to it is sent.")
