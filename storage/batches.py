"""Batch sends: emails that go to the provider in one ``POST /emails/batch``.

A batch is formed from claimed emails before its first request, and never changes:
its members (``email_queue.batch_id``) and its idempotency key are committed with
the claim, so a retry after a timeout or a 5xx sends exactly the same emails under
the same key, and the provider delivers each once (a different payload under a used
key would be refused with a 409). Every member keeps its own row, status, counts and
provider id; the lifecycle statements are ``storage.leases``'s, run on the members.

An email that fails inside a batch the provider accepted (``errors[i]`` of a
permissive batch) gets its own dead letter here, written with its failure in one
transaction, so it is listed and replayed like any other (alone, under its own key:
the provider refused it, so nothing was delivered).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import case, select, true, update
from sqlalchemy.orm import Session

from storage import dead_letters, emails, leases
from storage.clock import utcnow
from storage.dead_letters import DeadMessage
from storage.models import EmailBatch, EmailQueue


def form(session: Session, email_ids: Sequence[int], *, size: int) -> list[int]:
    """Split claimed emails into batches of at most ``size``; the new batch ids.

    Call in the claiming transaction: the membership is committed with the claim.
    """
    batch_ids = []
    for start in range(0, len(email_ids), size):
        batch = EmailBatch(idempotency_key=f"minalesh-batch-{uuid.uuid4()}")
        session.add(batch)
        session.flush()
        session.execute(
            update(EmailQueue)
            .where(EmailQueue.id.in_(email_ids[start : start + size]))
            .values(batch_id=batch.id)
            .execution_options(synchronize_session=False)
        )
        batch_ids.append(batch.id)
    return batch_ids


def member_ids(session: Session, batch_id: int) -> list[int]:
    """The batch's emails, in the order of its request."""
    return list(session.scalars(select(EmailQueue.id).where(EmailQueue.batch_id == batch_id).order_by(EmailQueue.id)))


def idempotency_key(session: Session, batch_id: int) -> Optional[str]:
    return session.scalar(select(EmailBatch.idempotency_key).where(EmailBatch.id == batch_id))


@dataclass(frozen=True)
class Plan:
    """How claimed emails go out: alone (their own key) or in batches (a batch's key)."""

    alone: list[int]
    batch_ids: list[int]


def plan(session: Session, email_ids: Sequence[int], *, size: int) -> Plan:
    """Claimed emails to messages, each email keeping the idempotency key it was first offered under.

    One that was offered alone goes alone again; a batch member goes in its own batch
    again (the provider may have taken that batch: under another key it would deliver
    the email twice); the rest, two or more, form new batches of at most ``size``, and
    a lone one is marked as sent alone. Call in the claiming transaction.
    """
    rows = session.execute(
        select(EmailQueue.id, EmailQueue.batch_id, EmailQueue.sent_alone).where(EmailQueue.id.in_(email_ids))
    ).all()
    alone = sorted(row.id for row in rows if row.sent_alone and row.batch_id is None)
    earlier = sorted({row.batch_id for row in rows if row.batch_id is not None})
    fresh = sorted(row.id for row in rows if not row.sent_alone and row.batch_id is None)
    if len(fresh) > 1 and size > 1:
        return Plan(alone=alone, batch_ids=earlier + form(session, fresh, size=size))
    if not fresh:  # none, or the claim marked them (``claimed_values``)
        return Plan(alone=alone, batch_ids=earlier)
    session.execute(
        update(EmailQueue)
        .where(EmailQueue.id.in_(fresh))
        .values(sent_alone=True)
        .execution_options(synchronize_session=False)
    )
    return Plan(alone=sorted(alone + fresh), batch_ids=earlier)


def claimed_values(*, size: int) -> dict[str, Any]:
    """What a claim writes with its claim when emails go ``size`` per request (``leases.claim_due``'s ``also``).

    One per request, every claimed email in no batch goes alone: the claim marks it sent
    alone in the row version it writes anyway, and ``plan`` then has nothing to write
    (an UPDATE of every claimed row, a row version and an entry in every index, saved).
    """
    if size > 1:
        return {}
    return {"sent_alone": case((EmailQueue.batch_id.is_(None), true()), else_=EmailQueue.sent_alone)}


def member_ids_of(session: Session, batch_ids: Sequence[int]) -> list[int]:
    """The emails of these batches (their membership never changes)."""
    return list(session.scalars(select(EmailQueue.id).where(EmailQueue.batch_id.in_(batch_ids))))


def fail_member(session: Session, email_id: int, *, error: str, queue: str, actor: str) -> None:
    """A member the provider refused: failed, with its own dead letter (replayable alone).

    The row's lease passes to the dead letter's message, so the batch's or group's own
    message, should it come back, does not take the failure for one it gave up itself.
    """
    message_id = str(uuid.uuid4())
    leases.give_up(emails.TABLE, session, email_id, error=error, holder=message_id)
    dead_letters.archive(
        session,
        DeadMessage(
            message_id=message_id,
            queue=queue,
            actor=actor,
            args=[email_id],
            kwargs={},
            options={},
            raw_body=None,
            fallback_error=error,
            dead_at=utcnow(),
        ),
    )


def describe(session: Session, batch_id: int) -> Optional[dict[str, Any]]:
    """``dlq show`` of a batch: its key and its members' states now."""
    key = idempotency_key(session, batch_id)
    if key is None:
        return None
    members, status = emails.describe_all(session, member_ids(session, batch_id))
    return {
        "kind": "email batch",
        "id": batch_id,
        "status": status,
        "idempotency_key": key,
        "members": members,
    }
