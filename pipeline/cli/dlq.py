"""``minalesh-workers dlq``: inspect, replay and purge dead letters.

Tables for people, ``--json`` for scripts (stdout holds the JSON alone; notes go
to stderr). The work is done by ``pipeline.ops.dlq``; this module parses and prints.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import click

from pipeline.cli.common import runtime_from_env
from pipeline.ops import dlq as operations
from pipeline.ops.dlq import FAILED_STATUSES, ReplayOutcome, ReplayStatus
from storage import dead_letters
from storage.clock import utcnow
from storage.dead_letters import LetterFilter

#: Widest a table gets when the terminal's width is unknown (a pipe, a log).
DEFAULT_WIDTH = 160
#: The error column never gets narrower than this.
MIN_ERROR_WIDTH = 30


def _duration(_ctx: click.Context, _param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """Check a --since / --older-than value at parse time, so a typo fails before any work."""
    if value is None:
        return None
    try:
        operations.parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


#: ``--search``/``-q``: what it finds is ``storage.dead_letters.search_clause``'s.
SEARCH_HELP = "A recipient (its start, any case), an email, batch or event id, a message id, or text of the error."


def _search_text(_ctx: click.Context, _param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """Refuse a blank search: it would select every dead letter, which a purge must never do by accident."""
    if value is not None and not value.strip():
        raise click.BadParameter("give some text to search for")
    return value.strip() if value is not None else None


def search_option(help_prefix: str = "") -> Any:
    """``--search``/``-q TEXT``: a filter of ``dlq list``, ``dlq replay --all`` and ``dlq purge``."""
    return click.option(
        "--search", "-q", "search", metavar="TEXT", callback=_search_text, help=help_prefix + SEARCH_HELP
    )


@click.group()
def dlq() -> None:
    """Dead letters: messages that failed for good (see also `stats`)."""


# --- list ---------------------------------------------------------------------------------------


@dlq.command("list")
@click.option("--queue", metavar="Q", help="Only this dead-letter queue (e.g. emails.XQ).")
@click.option("--actor", metavar="A", help="Only this actor (e.g. send_email).")
@click.option("--since", metavar="2h|ISO", callback=_duration, help="Dead since: 30m, 2h, 7d or an ISO time.")
@click.option("--unreplayed", is_flag=True, help="Only those not replayed yet.")
@search_option()
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=operations.DEFAULT_LIST_LIMIT,
    show_default=True,
    metavar="N",
    help="Newest N only; 0 for all.",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array, for scripts.")
def list_command(
    queue: Optional[str],
    actor: Optional[str],
    since: Optional[str],
    unreplayed: bool,
    search: Optional[str],
    limit: int,
    as_json: bool,
) -> None:
    """Dead letters, newest first."""
    current = runtime_from_env(broker=False)
    chosen = LetterFilter(
        queue=queue,
        actor=actor,
        since=operations.parse_since(since) if since else None,
        unreplayed=unreplayed,
        q=search,
        items=operations.ITEM_ACTORS,
    )
    letters, total = operations.list_letters(current.sessions, chosen, limit=limit or None)
    if as_json:
        click.echo(json.dumps(letters, indent=2))
        if len(letters) < total:
            click.echo(f"{len(letters)} of {total} shown; --limit 0 for all.", err=True)
        return
    if not letters:
        click.echo("No dead letters match.")
        return
    rows = [
        [
            str(letter["id"]),
            _short_time(letter["dead_at"]),
            letter["queue"],
            letter["actor"] or "(undecodable)",
            str(letter["retries"]),
            _short_time(letter["replayed_at"]),
            letter["error"],
        ]
        for letter in letters
    ]
    _table(["ID", "DEAD AT (UTC)", "QUEUE", "ACTOR", "RETRIES", "REPLAYED AT", "ERROR"], rows)
    if len(letters) < total:
        click.echo(f"{len(letters)} of {total} shown, newest first; --limit 0 for all.")


# --- show ---------------------------------------------------------------------------------------


@dlq.command("show")
@click.argument("key", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def show_command(key: str, as_json: bool) -> None:
    """Everything about one dead letter (ID, or its message id) and its item's state now."""
    current = runtime_from_env(broker=False)
    details = operations.show(current.broker, current.sessions, key)
    if details is None:
        raise click.ClickException(f"No dead letter {key}.")
    if as_json:
        click.echo(json.dumps(details, indent=2, default=str))
        return
    call = (
        f"{details['actor']}({_arguments(details['args'], details['kwargs'])})"
        if details["args"] is not None
        else "(undecodable)"
    )
    fields = [
        ("message id", details["message_id"]),
        ("replay of", details["replay_of"]),
        ("queue", details["queue"]),
        ("call", call),
        ("options", json.dumps(details["options"]) if details["options"] else None),
        ("retries", details["retries"]),
        ("dead at", details["dead_at"]),
        ("archived at", details["archived_at"]),
        ("replayed at", details["replayed_at"] or "not replayed"),
        ("error", details["error"]),
        ("item", details["item_note"]),
    ]
    click.echo(f"Dead letter {details['id']}")
    for name, value in fields:
        if value is not None:
            click.echo(f"  {name + ':':<13}{value}")
    if details["item"]:
        for name, value in details["item"].items():
            click.echo(f"  {'':<13}{name}: {value}")
    for title, text in (("Traceback", details["traceback"]), ("Raw body", details["raw_body"])):
        if text:
            click.echo(f"\n{title}:")
            click.echo(text.rstrip("\n"))


# --- stats --------------------------------------------------------------------------------------


@dlq.command("stats")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts and monitoring.")
def stats_command(as_json: bool) -> None:
    """Counts by queue and actor, oldest and newest."""
    figures = operations.stats(runtime_from_env(broker=False).sessions)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    click.echo(f"Dead letters: {figures['total']} ({figures['unreplayed']} not replayed)")
    if not figures["total"]:
        return
    click.echo(f"Oldest: {_short_time(figures['oldest'])} UTC   newest: {_short_time(figures['newest'])} UTC\n")
    rows = [
        [
            group["queue"],
            group["actor"] or "(undecodable)",
            str(group["count"]),
            str(group["unreplayed"]),
            _short_time(group["oldest"]),
            _short_time(group["newest"]),
        ]
        for group in figures["groups"]
    ]
    _table(["QUEUE", "ACTOR", "COUNT", "NOT REPLAYED", "OLDEST", "NEWEST"], rows)


# --- replay -------------------------------------------------------------------------------------


@dlq.command("replay")
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter not replayed yet, oldest first.")
@click.option("--queue", metavar="Q", help="With --all: only this dead-letter queue.")
@click.option("--actor", metavar="A", help="With --all: only this actor.")
@search_option("With --all: only those found by TEXT: ")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change and send nothing.")
@click.option(
    "--accept-duplicate-risk",
    is_flag=True,
    help="Also replay emails whose last attempt may have reached a provider that no longer remembers "
    "its idempotency key (Resend: after 24 h; SMTP keeps none): each may be delivered twice.",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array of outcomes, for scripts.")
def replay_command(
    ids: tuple[int, ...],
    replay_all: bool,
    queue: Optional[str],
    actor: Optional[str],
    search: Optional[str],
    dry_run: bool,
    accept_duplicate_risk: bool,
    as_json: bool,
) -> None:
    """Send dead letters' messages again, with a fresh retry budget, their items back in play.

    A dead letter is replayed at most once; one whose item has succeeded since sends nothing;
    one that may deliver its email twice is refused (exit 1) without --accept-duplicate-risk.
    """
    if bool(ids) == replay_all:
        raise click.UsageError("Give dead letter IDs, or --all (not both).")
    if (queue or actor or search) and not replay_all:
        raise click.UsageError("--queue, --actor and --search select for --all; with IDs, give just the IDs.")
    current = runtime_from_env()  # a replay sends a new message
    try:
        if replay_all:
            chosen = LetterFilter(queue=queue, actor=actor, q=search, items=operations.ITEM_ACTORS)
            outcomes: Iterable[ReplayOutcome] = operations.replay_all(
                current.broker, current.sessions, chosen, dry_run=dry_run, accept_duplicate_risk=accept_duplicate_risk
            )
        else:
            outcomes = (
                operations.replay(
                    current.broker, current.sessions, i, dry_run=dry_run, accept_duplicate_risk=accept_duplicate_risk
                )
                for i in ids
            )
        done = _report(outcomes, as_json=as_json, dry_run=dry_run)
    finally:
        current.broker.close()
    if any(outcome.status in FAILED_STATUSES for outcome in done):
        raise SystemExit(1)


def _report(outcomes: Iterable[ReplayOutcome], *, as_json: bool, dry_run: bool) -> list[ReplayOutcome]:
    """Print each outcome as it comes (a long --all shows progress), then the totals."""
    done: list[ReplayOutcome] = []
    for outcome in outcomes:
        done.append(outcome)
        if not as_json:
            click.echo(f"#{outcome.dead_letter_id} {outcome.status.value.replace('_', ' ')}: {outcome.detail}")
            if outcome.warning:
                click.echo(f"#{outcome.dead_letter_id} warning: {outcome.warning}", err=True)
    if as_json:
        click.echo(json.dumps([outcome.as_json() for outcome in done], indent=2))
        return done
    counts = Counter(outcome.status for outcome in done)
    sent = counts[ReplayStatus.WOULD_REPLAY if dry_run else ReplayStatus.REPLAYED]
    others = ", ".join(
        f"{count} {status.value.replace('_', ' ')}"
        for status, count in sorted(counts.items(), key=lambda item: item[0].value)
        if status not in (ReplayStatus.REPLAYED, ReplayStatus.WOULD_REPLAY)
    )
    verb = "Would replay" if dry_run else "Replayed"
    click.echo(f"{verb} {sent} of {_count(len(done))}" + (f"; {others}." if others else "."))
    return done


# --- purge --------------------------------------------------------------------------------------


@dlq.command("purge")
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--older-than", metavar="30d", help="Every dead letter that died longer ago than this (d, h or m).")
@search_option("Every dead letter found by TEXT (see `dlq list -q`): ")
def purge_command(ids: tuple[int, ...], older_than: Optional[str], search: Optional[str]) -> None:
    """Delete dead letters for good: by ID, all older than a duration, or all a search finds."""
    if [bool(ids), bool(older_than), bool(search)].count(True) != 1:
        raise click.UsageError("Give dead letter IDs, or --older-than DURATION (e.g. 30d), or --search TEXT: one.")
    if search:
        sessions = runtime_from_env(broker=False).sessions
        with sessions() as session:
            found = dead_letters.matching_ids(session, LetterFilter(q=search, items=operations.ITEM_ACTORS))
        click.echo(f"Purged {_count(dead_letters.purge_ids(sessions, found))} found by {search!r}.")
        return
    if older_than:
        try:
            age = operations.parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
        current = runtime_from_env(broker=False)
        cutoff = utcnow() - age
        deleted = dead_letters.purge_older_than(current.sessions, cutoff)
        click.echo(f"Purged {_count(deleted)} that died before {_short_time(cutoff.isoformat())} UTC.")
        return
    deleted = dead_letters.purge_ids(runtime_from_env(broker=False).sessions, sorted(set(ids)))
    missing = len(set(ids)) - deleted
    click.echo(f"Purged {_count(deleted)}" + (f" ({missing} of the IDs did not exist)." if missing else "."))


# --- printing -----------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: list[list[str]]) -> None:
    """An aligned table; the last column is cut to the terminal's width."""
    widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(headers[:-1])]
    room = shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns - sum(widths) - 2 * len(widths)
    last = max(room, MIN_ERROR_WIDTH)
    for row in [list(headers), *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        text = " ".join(row[-1].split())
        cells.append(text if len(text) <= last else text[: last - 1] + "…")
        click.echo("  ".join(cells).rstrip())


def _count(number: int) -> str:
    return f"{number} dead letter" + ("" if number == 1 else "s")


def _short_time(iso: Optional[str]) -> str:
    """``2026-12-03 10:02:11`` from an ISO time in UTC; ``-`` for none."""
    return iso[:19].replace("T", " ") if iso else "-"


def _arguments(args: Any, kwargs: Any) -> str:
    parts = [json.dumps(arg) for arg in args or []] + [f"{k}={json.dumps(v)}" for k, v in (kwargs or {}).items()]
    return ", ".join(parts)
