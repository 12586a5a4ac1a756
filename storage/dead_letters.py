"""Statements on ``dead_letters`` and ``final_errors``: the archive of given-up messages."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import ColumnElement, Text, cast, delete, func, select, tuple_, union, update
from sqlalchemy.orm import Session, sessionmaker

from storage import emails, webhooks
from storage.clock import utcnow
from storage.dialect import insert_ignoring_conflicts
from storage.models import DEAD_LETTER_ITEM_ID, DeadLetter, EmailQueue, FinalError, WebhookEvent
from storage.rowcount import rows_affected

#: Random bytes (hex) after the id of a ``fresh`` message whose id was taken.
FRESH_SUFFIX_BYTES = 8


@dataclass(frozen=True, kw_only=True)
class DeadMessage:
    """A message as it came off a dead-letter queue, decoded as far as it would go."""

    message_id: str
    queue: str
    actor: Optional[str] = None
    args: Optional[list[Any]] = None
    kwargs: Optional[dict[str, Any]] = None
    options: dict[str, Any] = field(default_factory=dict)
    raw_body: Optional[str] = None
    #: What the message itself says of its death, when nothing better is known.
    fallback_error: str = "unknown error"
    fallback_traceback: Optional[str] = None
    retries: int = 0
    dead_at: Optional[datetime] = None


def record_final_error(
    session: Session, *, message_id: str, error: str, traceback: Optional[str], retries: int
) -> None:
    """Remember the error a message finally died of, for the archiver to pick up."""
    insert_ignoring_conflicts(
        session,
        FinalError.__table__,
        {"message_id": message_id, "error": error, "traceback": traceback, "retries": retries},
        key="message_id",
    )


def archive(session: Session, message: DeadMessage, *, fresh: bool = False) -> bool:
    """Write ``message`` to ``dead_letters`` once; True if this call wrote it.

    The final error recorded by the pipeline wins over the one the message carries
    (RabbitMQ dead-letters the bytes of the delivery before the last attempt).

    ``fresh``: the caller knows this message cannot be in the archive yet. If its
    id is taken all the same, the row is another message's that got the same id,
    and this one is written too, under the id with a random suffix.
    """
    message = replace(message, message_id=storable(message.message_id), actor=storable(message.actor))
    final = session.get(FinalError, message.message_id)
    now = utcnow()
    values: dict[str, Any] = {
        "message_id": message.message_id,
        "queue": message.queue,
        "actor": message.actor,
        "args": storable(message.args),
        "kwargs": storable(message.kwargs),
        "options": storable(message.options),
        "raw_body": storable(message.raw_body),
        "error": storable(final.error if final else message.fallback_error),
        "traceback": storable(final.traceback if final else message.fallback_traceback),
        "retries": final.retries if final else message.retries,
        "dead_at": final.failed_at if final else (message.dead_at or now),
        "archived_at": now,
    }
    table = DeadLetter.__table__
    written = insert_ignoring_conflicts(session, table, values, key="message_id")
    if not written and fresh:
        values["message_id"] = f"{message.message_id}-{secrets.token_hex(FRESH_SUFFIX_BYTES)}"
        written = insert_ignoring_conflicts(session, table, values, key="message_id")
    if final is not None:
        session.execute(delete(FinalError).where(FinalError.message_id == message.message_id))
    return written


def storable(value: Any) -> Any:
    """``value`` with what PostgreSQL refuses in text and JSONB replaced (NUL, lone surrogates).

    A poison body may carry either; refused, the archiver would retry it forever
    and the dead-letter queue behind it would wait until its messages expire.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(str(key)): storable(item) for key, item in value.items()}
    return value


def get_by_message_id(session: Session, message_id: str) -> Optional[DeadLetter]:
    """The dead letter of a Dramatiq message id, or None."""
    statement = select(DeadLetter).where(DeadLetter.message_id == storable(message_id))
    return session.scalars(statement).one_or_none()


def list_all(session: Session) -> list[DeadLetter]:
    """Every dead letter, oldest first."""
    return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def count(session: Session) -> int:
    """How many dead letters the archive holds."""
    return int(session.scalar(select(func.count()).select_from(DeadLetter)) or 0)


# --- inspection, replay and retention (``minalesh-workers dlq``) ----------------------------------

#: How counts by actor name the dead letters kept raw (no actor: the body did not decode to a message).
UNDECODABLE = "(undecodable)"


@dataclass(frozen=True, kw_only=True)
class ItemActors:
    """The actors whose first argument is an email's id, a batch's id, a webhook event's row id.

    What a search follows from an email or an event to its dead letters. The layer
    that declares the actors names them (``pipeline.ops.dlq.ITEM_ACTORS``); without
    them a search finds message ids and error text only.
    """

    emails: tuple[str, ...] = ()
    batches: tuple[str, ...] = ()
    webhooks: tuple[str, ...] = ()

    @property
    def every(self) -> tuple[str, ...]:
        return (*self.emails, *self.batches, *self.webhooks)


@dataclass(frozen=True, kw_only=True)
class LetterFilter:
    """What ``dlq list``, ``dlq replay --all``, ``dlq purge`` and the ops API select by; each given one must match.

    ``q`` (see ``search_clause``): a recipient's prefix, an id, a message id, or text of the error.
    """

    queue: Optional[str] = None
    actor: Optional[str] = None
    since: Optional[datetime] = None
    unreplayed: bool = False
    q: Optional[str] = None
    #: The actors ``q`` follows items through.
    items: ItemActors = ItemActors()


#: Every dead letter.
EVERY = LetterFilter()


def _matching(statement: Any, chosen: LetterFilter) -> Any:
    """``statement`` narrowed to the dead letters matching every filter given."""
    if chosen.queue is not None:
        statement = statement.where(DeadLetter.queue == chosen.queue)
    if chosen.actor is not None:
        statement = statement.where(DeadLetter.actor == chosen.actor)
    if chosen.since is not None:
        statement = statement.where(DeadLetter.dead_at >= chosen.since)
    if chosen.unreplayed:
        statement = statement.where(DeadLetter.replayed_at.is_(None))
    if chosen.q and chosen.q.strip():
        statement = statement.where(search_clause(chosen.q.strip(), chosen.items))
    return statement


def search_clause(text: str, items: ItemActors) -> ColumnElement[bool]:
    """Dead letters ``text`` finds: each way below is an index lookup, never a scan of the archive.

    * an email whose recipient starts with ``text`` (any case): the dead letters of ``items.emails``
      about it, and those of ``items.batches`` about the batch it was sent in;
    * a webhook event whose provider event id or order id is ``text``: its dead letters;
    * a message id, or an item id (an email's, a batch's, a webhook event's) equal to ``text``;
    * ``text`` anywhere in the error, any case (a trigram index on PostgreSQL: ``ix_dead_letters_error_trgm``).
    """
    text = storable(text)
    recipient = emails.recipient_starts_with(text)
    batches = select(cast(EmailQueue.batch_id, Text)).where(recipient, EmailQueue.batch_id.is_not(None))
    events = select(cast(WebhookEvent.id, Text)).where(webhooks.event_or_order(text))
    ids = union(
        select(DeadLetter.id).where(DeadLetter.message_id == text),
        select(DeadLetter.id).where(DEAD_LETTER_ITEM_ID == text, DeadLetter.actor.in_(items.every)),
        _of_items(items.emails, select(cast(EmailQueue.id, Text)).where(recipient)),
        _of_items(items.batches, batches),
        _of_items(items.webhooks, events),
        select(DeadLetter.id).where(DeadLetter.error.ilike(f"%{emails.escape_like(text)}%", escape="\\")),
    )
    return DeadLetter.id.in_(ids.scalar_subquery())


def _of_items(actors: tuple[str, ...], item_ids: Any) -> Any:
    """The dead letters of ``actors`` whose item id is one of ``item_ids`` (a select of text ids)."""
    return select(DeadLetter.id).where(DeadLetter.actor.in_(actors), DEAD_LETTER_ITEM_ID.in_(item_ids))


def search(
    session: Session,
    chosen: LetterFilter = EVERY,
    *,
    limit: Optional[int] = None,
    before: Optional[tuple[datetime, int]] = None,
) -> list[DeadLetter]:
    """Dead letters matching ``chosen``, newest first (as Sidekiq's dead set lists them).

    ``before``: the (``dead_at``, ``id``) where the previous page stopped (keyset paging).
    """
    statement = _matching(select(DeadLetter), chosen)
    if before is not None:
        statement = statement.where(tuple_(DeadLetter.dead_at, DeadLetter.id) < tuple_(*before))
    statement = statement.order_by(DeadLetter.dead_at.desc(), DeadLetter.id.desc()).limit(limit)
    return list(session.scalars(statement))


def count_matching(session: Session, chosen: LetterFilter = EVERY) -> int:
    """How many dead letters match ``chosen``."""
    return int(session.scalar(_matching(select(func.count()).select_from(DeadLetter), chosen)) or 0)


def matching_ids(session: Session, chosen: LetterFilter = EVERY) -> list[int]:
    """Ids of the dead letters matching ``chosen``, oldest first: what a replay or purge by filter works through."""
    return list(session.scalars(_matching(select(DeadLetter.id), chosen).order_by(DeadLetter.id)))


def get(session: Session, dead_letter_id: int) -> Optional[DeadLetter]:
    """The dead letter of ``dead_letter_id``, or None."""
    return session.get(DeadLetter, dead_letter_id)


def lock(session: Session, dead_letter_id: int) -> Optional[DeadLetter]:
    """The dead letter, locked for this transaction (``FOR UPDATE``): two replays take turns."""
    statement = select(DeadLetter).where(DeadLetter.id == dead_letter_id).with_for_update()
    return session.scalars(statement.execution_options(populate_existing=True)).one_or_none()


def mark_replayed(session: Session, dead_letter_id: int, *, at: datetime) -> None:
    """Stamp ``replayed_at``: this dead letter is handled, a second replay sends nothing."""
    session.execute(
        update(DeadLetter)
        .where(DeadLetter.id == dead_letter_id)
        .values(replayed_at=at)
        .execution_options(synchronize_session=False)
    )


def clear_replayed(session: Session, dead_letter_id: int) -> None:
    """Take a stamp back whose message could not be enqueued, so the replay can be run again."""
    session.execute(
        update(DeadLetter)
        .where(DeadLetter.id == dead_letter_id)
        .values(replayed_at=None)
        .execution_options(synchronize_session=False)
    )


def summary(session: Session) -> dict[str, Any]:
    """``dlq stats``: totals, counts by queue, by actor and by both, and the oldest and newest death.

    ``by_actor`` counts bodies kept raw (no actor) under ``UNDECODABLE``.
    """
    totals = session.execute(
        select(
            func.count().label("total"),
            func.count().filter(DeadLetter.replayed_at.is_(None)).label("unreplayed"),
            func.min(DeadLetter.dead_at).label("oldest"),
            func.max(DeadLetter.dead_at).label("newest"),
        )
    ).one()
    by_both = groups(session)
    by_actor: dict[str, int] = {}
    for group in by_both:
        actor = group["actor"] or UNDECODABLE
        by_actor[actor] = by_actor.get(actor, 0) + group["count"]
    return {
        "total": int(totals.total),
        "unreplayed": int(totals.unreplayed),
        "oldest": totals.oldest,
        "newest": totals.newest,
        "by_queue": by_queue(by_both),
        "by_actor": by_actor,
        "groups": by_both,
    }


def groups(session: Session) -> list[dict[str, Any]]:
    """Dead letters by queue and actor (None: bodies kept raw): count, not replayed, oldest and newest death.

    One GROUP BY over the archive, ordered by queue then actor: ``dlq stats``'s table and the ops
    API's ``dead_letter_groups``.
    """
    rows = session.execute(
        select(
            DeadLetter.queue,
            DeadLetter.actor,
            func.count().label("count"),
            func.count().filter(DeadLetter.replayed_at.is_(None)).label("unreplayed"),
            func.min(DeadLetter.dead_at).label("oldest"),
            func.max(DeadLetter.dead_at).label("newest"),
        )
        .group_by(DeadLetter.queue, DeadLetter.actor)
        .order_by(DeadLetter.queue, DeadLetter.actor)
    )
    found = [row._asdict() for row in rows]
    return [{**group, "count": int(group["count"]), "unreplayed": int(group["unreplayed"])} for group in found]


def by_queue(of_groups: list[dict[str, Any]]) -> dict[str, int]:
    """Dead letters per dead-letter queue, summed from ``groups`` (no second scan of the archive)."""
    counts: dict[str, int] = {}
    for group in of_groups:
        counts[group["queue"]] = counts.get(group["queue"], 0) + group["count"]
    return counts


def delete_ids(session: Session, dead_letter_ids: list[int]) -> int:
    """Delete the dead letters of ``dead_letter_ids``; return how many there were."""
    if not dead_letter_ids:
        return 0
    statement = delete(DeadLetter).where(DeadLetter.id.in_(dead_letter_ids))
    return rows_affected(session, statement.execution_options(synchronize_session=False))


def delete_dead_before(session: Session, cutoff: datetime, *, limit: int) -> int:
    """Delete up to ``limit`` dead letters that died before ``cutoff``, oldest first; return how many.

    Bounded so that pruning a large archive is many short transactions, never one
    long lock; the caller loops until a batch comes back short.
    """
    batch = select(DeadLetter.id).where(DeadLetter.dead_at < cutoff).order_by(DeadLetter.id).limit(limit)
    statement = delete(DeadLetter).where(DeadLetter.id.in_(batch.scalar_subquery()))
    return rows_affected(session, statement.execution_options(synchronize_session=False))


def delete_final_errors_before(session: Session, cutoff: datetime) -> int:
    """Forget final errors older than ``cutoff`` whose message never reached the archive."""
    statement = delete(FinalError).where(FinalError.failed_at < cutoff)
    return rows_affected(session, statement.execution_options(synchronize_session=False))


@dataclass(frozen=True, kw_only=True)
class AlertedLetter:
    """A dead letter as an alert digest reports it."""

    id: int
    message_id: str
    queue: str
    actor: Optional[str]
    error: str
    dead_at: datetime


def take_unalerted(session: Session, *, at: datetime) -> list[AlertedLetter]:
    """Stamp every dead letter no alert has counted yet with ``alerted_at`` and return them.

    One ``UPDATE ... RETURNING``: what is counted is exactly what is stamped, so a
    dead letter committed by another archiver while a digest is made goes into the
    next digest, never into none (counting by ``archived_at`` would miss rows whose
    transaction committed after the count but carry an earlier time).
    """
    statement = (
        update(DeadLetter)
        .where(DeadLetter.alerted_at.is_(None))
        .values(alerted_at=at)
        .returning(DeadLetter.id, DeadLetter.message_id, DeadLetter.queue, DeadLetter.actor)
        .returning(DeadLetter.error, DeadLetter.dead_at)
        .execution_options(synchronize_session=False)
    )
    letters = [AlertedLetter(**row._asdict()) for row in session.execute(statement)]
    return sorted(letters, key=lambda letter: letter.id)


def has_unalerted(session: Session) -> bool:
    """Whether some dead letter waits for an alert (an index-only probe)."""
    return session.scalar(select(DeadLetter.id).where(DeadLetter.alerted_at.is_(None)).limit(1)) is not None


#: Dead letters deleted per transaction by purge and prune.
DELETE_BATCH_SIZE = 1000
#: One prune deletes at most this many batches, so a tick always ends (the next goes on).
MAX_DELETE_BATCHES = 1000


def purge_ids(sessions: sessionmaker[Session], dead_letter_ids: list[int]) -> int:
    """Delete these dead letters; return how many existed."""
    deleted = 0
    for start in range(0, len(dead_letter_ids), DELETE_BATCH_SIZE):
        with sessions.begin() as session:
            deleted += delete_ids(session, dead_letter_ids[start : start + DELETE_BATCH_SIZE])
    return deleted


def purge_older_than(sessions: sessionmaker[Session], cutoff: datetime) -> int:
    """Delete dead letters that died before ``cutoff``, in short transactions; return how many.

    Also forgets final errors as old whose message never reached the archive.
    """
    deleted = 0
    for _ in range(MAX_DELETE_BATCHES):
        with sessions.begin() as session:
            batch = delete_dead_before(session, cutoff, limit=DELETE_BATCH_SIZE)
        deleted += batch
        if batch < DELETE_BATCH_SIZE:
            break
    with sessions.begin() as session:
        delete_final_errors_before(session, cutoff)
    return deleted


def prune(sessions: sessionmaker[Session], *, retention_days: int, now: Optional[datetime] = None) -> int:
    """Apply DEAD_LETTER_RETENTION_DAYS: delete dead letters older than it; return how many."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    return purge_older_than(sessions, cutoff)


def count_ids(session: Session, dead_letter_ids: list[int]) -> int:
    """How many of ``dead_letter_ids`` exist."""
    if not dead_letter_ids:
        return 0
    return int(session.scalar(select(func.count()).where(DeadLetter.id.in_(dead_letter_ids))) or 0)
