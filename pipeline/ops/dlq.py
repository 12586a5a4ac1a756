"""Dead letters for operators: list, show, replay and purge (what ``minalesh-workers dlq`` runs).

A dead letter is a promise that was not kept; an operator reads why, fixes the
cause and redrives, as with Sidekiq's dead set or an SQS redrive to source.

Replay, and why it is shaped so:

* It sends a **new** Dramatiq message (new message id; the spent options
  ``retries``, ``traceback``, ``eta``, ``not_before``, ``scheduled_at`` dropped, so
  the retry budget is whole again; ``replay_of`` names the original). The original
  id is the dead letter's unique key: a replay that dies again is archived as a
  row of its own, and ``replay_of`` links the two.
* Per dead letter, ONE transaction locks the row (``FOR UPDATE``), skips it if
  ``replayed_at`` is set, asks the actor's item hooks to ``revive`` the item
  (an email back to ``queued``, a webhook event out of the archive) and stamps
  ``replayed_at``; only after the commit is the message enqueued. Two replays of
  one dead letter, at once or one after the other, therefore send one message.
* If the enqueue fails after the commit, the revived item is leased, and its
  periodic re-enqueue (the email fan-out, the webhook retry tick) sends it once
  the lease runs out: nothing is lost. A dead letter without an item (a tick)
  has nothing to fall back on, so its stamp is taken back for another try.
* An item that is not failed any more (sent since, or revived by a replay of an
  earlier dead letter of it) is not revived and nothing is sent; the dead letter
  is still stamped, since it needs nothing more, and the outcome says why.
* A body kept raw (not a well-formed message, or one the archive could not take
  as a message), an actor this release does not have, or arguments that do not
  fit the actor cannot be replayed: reported and skipped, unstamped.

``dry_run`` runs the same transaction (locks, revive included) and rolls it back,
so it reports exactly what a replay would do at that moment, and sends nothing.

No SQL here: statements live in ``storage.dead_letters``; the item's own rows are
the actors' hooks' business.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Optional

from dramatiq import Broker, Message
from dramatiq.errors import ActorNotFound
from sqlalchemy.orm import Session, sessionmaker

from actors.email_batches import send_bulk_email_batch, send_email_batch
from actors.emails import send_bulk_email, send_email
from actors.webhooks import process_webhook_event
from pipeline.core.errors import describe
from pipeline.core.item_hooks import ItemHooks, hooks_of
from pipeline.middleware.poison import misfit
from pipeline.providers.outbox import OutboxProvider
from pipeline.providers.resend import ResendProvider
from pipeline.providers.smtp import SmtpProvider
from storage import dead_letters
from storage.clock import utcnow
from storage.dead_letters import EVERY, ItemActors, LetterFilter
from storage.models import DeadLetter

#: What a search (``LetterFilter.q``) follows from an email, a batch or an event to its dead letters.
ITEM_ACTORS = ItemActors(
    emails=(send_email.actor_name, send_bulk_email.actor_name),
    batches=(send_email_batch.actor_name, send_bulk_email_batch.actor_name),
    webhooks=(process_webhook_event.actor_name,),
)

logger = logging.getLogger(__name__)

#: Options that belong to a dead message's past deliveries; a replay starts without them.
SPENT_OPTIONS = frozenset({"retries", "traceback", "eta", "not_before", "scheduled_at", "replay_of"})
#: ``dlq list`` shows this many dead letters unless told otherwise.
DEFAULT_LIST_LIMIT = 50

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class ReplayStatus(str, enum.Enum):
    """What replaying one dead letter did (or, with ``dry_run``, would do)."""

    #: A new message was enqueued; the item, if any, is back in play.
    REPLAYED = "replayed"
    #: ``dry_run``: it would be replayed now.
    WOULD_REPLAY = "would_replay"
    #: ``replayed_at`` was set already: nothing sent.
    ALREADY_REPLAYED = "already_replayed"
    #: The item is not failed any more (it succeeded since, or is in play): nothing sent, stamped.
    ITEM_NOT_FAILED = "item_not_failed"
    #: Raw body, unknown actor, misfitting arguments, an item that is gone: skipped, unstamped.
    NOT_REPLAYABLE = "not_replayable"
    #: No dead letter has this id.
    NOT_FOUND = "not_found"
    #: Committed, but RabbitMQ did not take the message (see the module docstring).
    ENQUEUE_FAILED = "enqueue_failed"
    #: Something unexpected went wrong (the database, a hook); nothing was changed.
    ERROR = "error"
    #: Its last attempt may have reached a provider that no longer remembers (or never kept) its
    #: idempotency key: not replayed without ``accept_duplicate_risk``; nothing changed.
    DUPLICATE_RISK = "duplicate_risk"


#: Outcomes whose transaction changed something (revive, stamp) and commits unless a dry run.
_CHANGING = frozenset({ReplayStatus.REPLAYED, ReplayStatus.WOULD_REPLAY, ReplayStatus.ITEM_NOT_FAILED})
#: Outcomes that mean the operator asked for something that did not happen.
FAILED_STATUSES = frozenset(
    {ReplayStatus.NOT_FOUND, ReplayStatus.ENQUEUE_FAILED, ReplayStatus.ERROR, ReplayStatus.DUPLICATE_RISK}
)


@dataclass(frozen=True, kw_only=True)
class ReplayOutcome:
    dead_letter_id: int
    status: ReplayStatus
    detail: str
    #: The id of the new message, when one was (or would be) sent.
    message_id: Optional[str] = None
    #: The dead message's id.
    replay_of: Optional[str] = None
    #: What the operator should know before trusting the replay (it may do the work twice).
    warning: Optional[str] = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.dead_letter_id,
            "status": self.status.value,
            "detail": self.detail,
            "message_id": self.message_id,
            "replay_of": self.replay_of,
            "warning": self.warning,
        }


@dataclass(frozen=True)
class _Decision:
    outcome: ReplayOutcome
    #: The message to enqueue after the commit, if any.
    message: Optional[Message] = None
    #: Whether an item was revived (its lease then covers a failed enqueue).
    revived: bool = False


# --- replay -------------------------------------------------------------------------------------


def replay(
    broker: Broker,
    sessions: sessionmaker[Session],
    dead_letter_id: int,
    *,
    dry_run: bool = False,
    accept_duplicate_risk: bool = False,
) -> ReplayOutcome:
    """Replay one dead letter (see the module docstring); never raises for one bad letter."""
    try:
        with sessions() as session:
            decision = _decide(
                session, broker, dead_letter_id, dry_run=dry_run, accept_duplicate_risk=accept_duplicate_risk
            )
            if decision.outcome.status in _CHANGING and not dry_run:
                session.commit()
            else:
                session.rollback()  # a dry run's revive and stamp, or the lock of a skipped letter
    except Exception as exc:
        logger.exception("Could not replay dead letter %s.", dead_letter_id)
        return ReplayOutcome(dead_letter_id=dead_letter_id, status=ReplayStatus.ERROR, detail=describe(exc))
    if decision.message is None or dry_run:
        return decision.outcome
    try:
        broker.enqueue(decision.message)
    except Exception as exc:
        return _enqueue_failed(sessions, decision, exc)
    logger.info(
        "Replayed dead letter %s (message %s) as message %s.",
        dead_letter_id,
        decision.outcome.replay_of,
        decision.message.message_id,
    )
    return decision.outcome


def replay_all(
    broker: Broker,
    sessions: sessionmaker[Session],
    chosen: LetterFilter = EVERY,
    *,
    dry_run: bool = False,
    accept_duplicate_risk: bool = False,
) -> Iterator[ReplayOutcome]:
    """Replay every dead letter ``chosen`` matches that is not replayed yet, oldest first."""
    with sessions() as session:
        ids = dead_letters.matching_ids(session, dataclasses.replace(chosen, unreplayed=True))
    for dead_letter_id in ids:
        yield replay(broker, sessions, dead_letter_id, dry_run=dry_run, accept_duplicate_risk=accept_duplicate_risk)


def _decide(
    session: Session, broker: Broker, dead_letter_id: int, *, dry_run: bool, accept_duplicate_risk: bool
) -> _Decision:
    """Inside the caller's transaction: lock, check, revive and stamp one dead letter."""
    letter = dead_letters.lock(session, dead_letter_id)
    if letter is None:
        return _Decision(_outcome(dead_letter_id, ReplayStatus.NOT_FOUND, "no dead letter with this id"))
    original = letter.message_id
    if letter.replayed_at is not None:
        detail = f"replayed already at {_iso(letter.replayed_at)}: nothing sent"
        return _Decision(_outcome(dead_letter_id, ReplayStatus.ALREADY_REPLAYED, detail, replay_of=original))
    built = replay_message(broker, letter)
    if isinstance(built, str):
        return _Decision(_outcome(dead_letter_id, ReplayStatus.NOT_REPLAYABLE, built, replay_of=original))
    message = built
    hooks = hooks_of(broker, message.actor_name)
    risk = duplicate_risk(session, hooks, letter, message)
    if risk is not None and not accept_duplicate_risk:
        detail = f"{risk}; nothing sent (replay with --accept-duplicate-risk to send it anyway)"
        return _Decision(_outcome(dead_letter_id, ReplayStatus.DUPLICATE_RISK, detail, replay_of=original))
    revived = False
    if hooks is not None:
        revive = getattr(hooks, "revive", None)
        if revive is None:
            detail = f"the item hooks of {message.actor_name} cannot revive an item"
            return _Decision(_outcome(dead_letter_id, ReplayStatus.NOT_REPLAYABLE, detail, replay_of=original))
        revived = bool(revive(session, message))
        if not revived and _describe_item(session, hooks, message) is None:
            detail = "its item no longer exists: nothing to replay"
            return _Decision(_outcome(dead_letter_id, ReplayStatus.NOT_REPLAYABLE, detail, replay_of=original))
        if not revived:
            dead_letters.mark_replayed(session, dead_letter_id, at=utcnow())
            detail = f"{_item_label(session, hooks, message)} is not failed any more: nothing sent"
            return _Decision(_outcome(dead_letter_id, ReplayStatus.ITEM_NOT_FAILED, detail, replay_of=original))
    dead_letters.mark_replayed(session, dead_letter_id, at=utcnow())
    item = f"; {_item_label(session, hooks, message)} back in play" if revived and hooks is not None else ""
    status = ReplayStatus.WOULD_REPLAY if dry_run else ReplayStatus.REPLAYED
    verb = "would send" if dry_run else "sent"
    detail = f"{verb} {message.actor_name}{_call(message)} as message {message.message_id}{item}"
    outcome = _outcome(dead_letter_id, status, detail, message_id=message.message_id, replay_of=original)
    if risk is not None:
        outcome = dataclasses.replace(outcome, warning=f"{risk} (accepted)")
    return _Decision(outcome, message=message, revived=revived)


#: How long each provider answers a repeated key with its first answer; None: it keeps no keys.
IDEMPOTENCY_WINDOWS: dict[str, Optional[timedelta]] = {
    provider.name: provider.capabilities.idempotency_window
    for provider in (ResendProvider, SmtpProvider, OutboxProvider)
}


def duplicate_risk(
    session: Session, hooks: Optional[ItemHooks], letter: DeadLetter, message: Message
) -> Optional[str]:
    """Why a replay may deliver the item twice, or None.

    The item's last attempt may have reached a provider (a timeout, a 5xx; the email's
    ``maybe_sent_by``) longer ago than that provider remembers idempotency keys (Resend:
    24 h), or a provider that keeps none (SMTP). Where no such attempt is recorded, the
    letter's death is taken as the last attempt, against the actor's ``idempotent_for``.
    An item whose actor declares no window (a webhook event) runs no provider request.
    """
    default = getattr(hooks, "idempotent_for", None)
    if hooks is None or default is None:
        return None
    last_reached = getattr(hooks, "last_reached", None)
    reached = last_reached(session, message) if last_reached is not None else None
    if reached is not None:
        provider, at = reached
        window = IDEMPOTENCY_WINDOWS.get(provider, default)
    elif letter.dead_at is not None:
        provider, at, window = "the provider", letter.dead_at, default
    else:
        return None
    age = utcnow() - _aware(at)
    hours = f"{age.total_seconds() / 3600:.1f} h"
    if window is None:
        return (
            f"its last attempt may have reached {provider} {hours} ago, which keeps no idempotency keys: "
            "a replay may deliver it twice"
        )
    if age <= window:
        return None
    return (
        f"its last attempt may have reached {provider} {hours} ago and {provider} keeps idempotency keys "
        f"{window.total_seconds() / 3600:.0f} h: a replay may deliver it twice"
    )


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def replay_message(broker: Broker, letter: DeadLetter) -> Message | str:
    """The fresh message replaying ``letter``, or why there can be none."""
    if letter.actor is None or letter.args is None:
        return "the body was kept raw: nothing to replay (its raw body is in `dlq show`)"
    options = {name: value for name, value in (letter.options or {}).items() if name not in SPENT_OPTIONS}
    options["replay_of"] = letter.message_id
    try:
        queue_name = broker.get_actor(letter.actor).queue_name
    except ActorNotFound:
        return f"no actor named {letter.actor!r} in this release"
    message: Message = Message(
        queue_name=queue_name,
        actor_name=letter.actor,
        args=tuple(letter.args),
        kwargs=dict(letter.kwargs or {}),
        options=options,
    )
    reason = misfit(broker, message)
    return reason if reason is not None else message


def _enqueue_failed(sessions: sessionmaker[Session], decision: _Decision, exc: Exception) -> ReplayOutcome:
    dead_letter_id = decision.outcome.dead_letter_id
    logger.error("Could not enqueue the replay of dead letter %s: %s", dead_letter_id, describe(exc))
    if decision.revived:
        detail = f"{describe(exc)}; the item is revived and its periodic re-enqueue will send it"
    else:
        try:
            with sessions.begin() as session:
                dead_letters.clear_replayed(session, dead_letter_id)
            detail = f"{describe(exc)}; not stamped, replay it again"
        except Exception:
            logger.exception("Could not take back the replay stamp of dead letter %s.", dead_letter_id)
            detail = f"{describe(exc)}; stamped as replayed all the same"
    return _outcome(dead_letter_id, ReplayStatus.ENQUEUE_FAILED, detail, replay_of=decision.outcome.replay_of)


def _outcome(
    dead_letter_id: int,
    status: ReplayStatus,
    detail: str,
    *,
    message_id: Optional[str] = None,
    replay_of: Optional[str] = None,
) -> ReplayOutcome:
    return ReplayOutcome(
        dead_letter_id=dead_letter_id, status=status, detail=detail, message_id=message_id, replay_of=replay_of
    )


def _item_label(session: Session, hooks: Optional[ItemHooks], message: Message) -> str:
    item = _describe_item(session, hooks, message)
    if item is None:
        return "its item"
    return f"{item.get('kind', 'item')} {item.get('id')} ({item.get('status')})"


def _describe_item(session: Session, hooks: Optional[ItemHooks], message: Message) -> Optional[dict[str, Any]]:
    describe_item = getattr(hooks, "describe", None)
    if describe_item is None:
        return None
    try:
        with session.begin_nested():
            return describe_item(session, message)
    except Exception:
        logger.exception("Could not describe the item of message %s.", message.message_id)
        return None


def _call(message: Message) -> str:
    parts = [repr(arg) for arg in message.args] + [f"{name}={value!r}" for name, value in message.kwargs.items()]
    text = ", ".join(parts)
    return f"({text if len(text) <= 60 else text[:57] + '...'})"


# --- inspection ---------------------------------------------------------------------------------


def summary_of(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as ``dlq list --json`` gives it."""
    options = letter.options or {}
    return {
        "id": letter.id,
        "queue": letter.queue,
        "actor": letter.actor,
        "message_id": letter.message_id,
        "args": letter.args,
        "kwargs": letter.kwargs,
        "error": letter.error,
        "retries": letter.retries,
        "dead_at": _iso(letter.dead_at),
        "archived_at": _iso(letter.archived_at),
        "replayed_at": _iso(letter.replayed_at),
        "replay_of": options.get("replay_of"),
        "raw": letter.raw_body is not None,
    }


def list_letters(
    sessions: sessionmaker[Session],
    chosen: LetterFilter = EVERY,
    *,
    limit: Optional[int] = DEFAULT_LIST_LIMIT,
    before: Optional[tuple[datetime, int]] = None,
) -> tuple[list[dict[str, Any]], int]:
    """The dead letters ``chosen`` matches, newest first (at most ``limit``; below ``before``, a page's end),
    and how many match in all."""
    with sessions() as session:
        letters = dead_letters.search(session, chosen, limit=limit, before=before)
        total = dead_letters.count_matching(session, chosen)
    return [summary_of(letter) for letter in letters], total


def show(broker: Broker, sessions: sessionmaker[Session], key: str) -> Optional[dict[str, Any]]:
    """Everything about one dead letter (by id, or by message id) and its item's current state."""
    with sessions() as session:
        letter = _find(session, key)
        if letter is None:
            return None
        details = summary_of(letter)
        details["options"] = {k: v for k, v in (letter.options or {}).items() if k != "traceback"}
        details["traceback"] = letter.traceback
        details["raw_body"] = letter.raw_body
        details["alerted_at"] = _iso(letter.alerted_at)
        details["item"], details["item_note"] = _item_of(session, broker, letter)
    return details


def _find(session: Session, key: str) -> Optional[DeadLetter]:
    if key.isdigit():
        found = dead_letters.get(session, int(key))
        if found is not None:
            return found
    return dead_letters.get_by_message_id(session, key)


def _item_of(session: Session, broker: Broker, letter: DeadLetter) -> tuple[Optional[dict[str, Any]], str]:
    built = replay_message(broker, letter)
    if isinstance(built, str):
        return None, built
    hooks = hooks_of(broker, built.actor_name)
    if hooks is None:
        return None, f"{built.actor_name} has no item (a periodic tick, or an actor without item hooks)"
    item = _describe_item(session, hooks, built)
    if item is None:
        return None, "the item is gone"
    jsonable = {name: _iso(value) if isinstance(value, datetime) else value for name, value in item.items()}
    return jsonable, f"{jsonable.get('kind', 'item')} {jsonable.get('id')} is {jsonable.get('status')}"


def stats(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """``dlq stats``: counts by queue, by actor and by both; the oldest and newest death."""
    with sessions() as session:
        figures = dead_letters.summary(session)
    figures["oldest"] = _iso(figures["oldest"])
    figures["newest"] = _iso(figures["newest"])
    for group in figures["groups"]:
        group["oldest"], group["newest"] = _iso(group["oldest"]), _iso(group["newest"])
    return figures


# --- values -------------------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """``30d``, ``2h``, ``15m`` (fractions allowed) as a timedelta; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 30d, 2h or 15m")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def parse_since(text: str, *, now: Optional[datetime] = None) -> datetime:
    """A duration back from ``now`` (``2h``) or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return (now or utcnow()) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (2h, 30d, 15m) nor an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(value: Optional[datetime]) -> Optional[str]:
    return value.astimezone(UTC).isoformat() if value is not None else None
