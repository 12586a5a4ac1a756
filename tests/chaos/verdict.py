"""What a chaos run came to, read from the fake provider's own count and the database.

Nothing here trusts the workers' logs or their view of themselves: a delivery is a
send the fake accepted (replays excluded), a state is a row.

* **lost**: an item that ended without its effect and without a trace: a good email
  (one of the 1,000, or an order's confirmation) never delivered, a good event never
  processed, a paid order without its confirmation email, an item ``failed`` with no
  dead letter, an event the intake took and did not store;
* **twice**: a recipient delivered more than once, an order confirmed by more than
  one email;
* **stuck**: an item still not in a final state when the run's deadline passed;
* **recovery**: seconds from the fault's end to the last item done (its final state
  written), from the rows' own timestamps.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.fake_resend import FakeResend
from tests.chaos.load import Load

#: Final states; anything else at the deadline is stuck.
EMAIL_FINAL = ("sent", "failed")
EVENT_FINAL = ("processed", "failed")
#: An item named in a problem: its kind, its id, and the last of what the parentheses say (its status).
_NAMED = re.compile(r"^(email|event|order|recipient) \S+(?: \((?:[^,)]*, )*([^,)]*)\))?")


@dataclass
class Verdict:
    items: int
    lost: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    #: Items failed by design (refused, orphaned, mismatched, or given up in a storm), each with its dead letter.
    failed_by_design: int = 0
    recovery_seconds: Optional[float] = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        recovered = "-" if self.recovery_seconds is None else f"{self.recovery_seconds:.1f}s"
        return (
            f"{self.items} items, {len(self.lost)} lost, {len(self.twice)} twice, {len(self.stuck)} stuck, "
            f"{self.failed_by_design} failed by design, recovery {recovered}"
        )

    def breakdown(self) -> str:
        """How many of each kind of broken promise: ``lost: 6 email failed without a dead letter, …``."""
        parts = []
        for name, values in (("lost", self.lost), ("twice", self.twice), ("stuck", self.stuck)):
            kinds = Counter(_kind(value) for value in values)
            if kinds:
                parts.append(f"{name}: " + ", ".join(f"{count} {kind}" for kind, count in kinds.most_common()))
        return "; ".join(parts)

    def problems(self) -> str:
        """The first few of each kind, for an assertion message."""
        parts = [f"{name}: {values[:8]}" for name, values in
                 (("lost", self.lost), ("twice", self.twice), ("stuck", self.stuck)) if values]
        return "; ".join(parts + self.notes)


def _kind(problem: str) -> str:
    """``email 546 (a@x, failed) without a dead letter`` -> ``email (failed) without a dead letter``."""
    return _NAMED.sub(r"\1 (\2)", problem).replace(" ()", "")


#: SQL: ``d`` is a dead letter of email ``e``: its own message's, or its batch's when the batch was
#: given up as a whole (one dead letter whose replay sends each member once; tests/integration/test_batches.py).
EMAILS_DEAD_LETTER = (
    "(d.actor IN ('send_email', 'send_bulk_email') AND d.args = jsonb_build_array(e.id))"
    " OR (e.batch_id IS NOT NULL AND d.actor IN ('send_email_batch', 'send_bulk_email_batch')"
    " AND d.args = jsonb_build_array(e.batch_id))"
)

def _rows(sessions: sessionmaker[Session], statement: str) -> list[dict[str, Any]]:
    with sessions() as session:
        return [dict(row) for row in session.execute(text(statement)).mappings()]


def _settled_counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        row = session.execute(
            text(
                "SELECT (SELECT COUNT(*) FROM email_queue WHERE status NOT IN ('sent', 'failed')) AS emails,"
                " (SELECT COUNT(*) FROM webhook_events WHERE status NOT IN ('processed', 'failed')) AS events,"
                " (SELECT COUNT(*) FROM email_queue e WHERE e.status = 'failed' AND NOT EXISTS ("
                f"   SELECT 1 FROM dead_letters d WHERE {EMAILS_DEAD_LETTER})) AS unarchived_emails,"
                " (SELECT COUNT(*) FROM webhook_events w WHERE w.status = 'failed' AND NOT EXISTS ("
                "   SELECT 1 FROM dead_letters d WHERE d.actor = 'process_webhook_event'"
                "   AND d.args = jsonb_build_array(w.id))) AS unarchived_events"
            )
        ).mappings().one()
        return {name: int(value) for name, value in row.items()}


def settled(sessions: sessionmaker[Session], load: Load) -> bool:
    """The poster done, every row final, every failure archived, every confirmation queued."""
    if len(load.answers) + len(load.unposted) < len(load.events) or any(_settled_counts(sessions).values()):
        return False
    confirmations = _rows(
        sessions, "SELECT COUNT(*) AS n FROM email_queue WHERE template = 'order_confirmation'"
    )[0]["n"]
    return int(confirmations) >= len(load.paid_orders)


def judge(
    sessions: sessionmaker[Session],
    provider: FakeResend,
    load: Load,
    *,
    fault_ended: datetime,
    emails_may_fail: bool = False,
) -> Verdict:
    """The figures of one run; ``emails_may_fail``: a good email given up (with its dead letter) is by design."""
    verdict = Verdict(items=len(load.email_ids) + len(load.events))
    delivered = Counter(to for delivery in provider.deliveries for to in delivery.to)
    emails = _rows(
        sessions,
        "SELECT e.id, e.recipient, e.status, e.template, e.template_data->>'order_id' AS order_id,"
        " GREATEST(COALESCE(e.sent_at, e.updated_at), d.archived_at) AS done_at,"
        " d.archived_at IS NOT NULL AS archived"
        " FROM email_queue e LEFT JOIN LATERAL (SELECT MAX(d.archived_at) AS archived_at FROM dead_letters d"
        f"   WHERE {EMAILS_DEAD_LETTER}) d ON true",
    )
    events = _rows(
        sessions,
        "SELECT w.id, w.event_id, w.status,"
        " GREATEST(COALESCE(w.processed_at, w.updated_at), d.archived_at) AS done_at,"
        " d.archived_at IS NOT NULL AS archived"
        " FROM webhook_events w LEFT JOIN LATERAL (SELECT MAX(archived_at) AS archived_at FROM dead_letters"
        "   WHERE actor = 'process_webhook_event' AND args = jsonb_build_array(w.id)) d ON true",
    )
    refused = set(load.refused_addresses)
    for row in emails:
        _judge_email(verdict, row, delivered, refused=row["recipient"] in refused, may_fail=emails_may_fail)
    by_event = {row["event_id"]: row for row in events}
    for event in load.events:
        _judge_event(verdict, event["event_id"], by_event.get(event["event_id"]), load)
    # An order's payment and confirmation are judged once its event is processed (until then it is stuck).
    processed = {event["order_id"] for event in load.events
                 if (by_event.get(event["event_id"]) or {}).get("status") == "processed"}
    _judge_confirmations(verdict, emails, load, processed)
    _judge_orders(verdict, _rows(sessions, "SELECT id, payment_status FROM orders"), load, processed)
    for address, count in delivered.items():
        if count > 1:
            verdict.twice.append(f"recipient {address} delivered {count}x")
    if not verdict.stuck:  # with items unfinished there was no recovery to time
        verdict.recovery_seconds = _recovery(emails + events, fault_ended)
    return verdict


def _judge_email(verdict: Verdict, row: dict[str, Any], delivered: Counter[str], *, refused: bool,
                 may_fail: bool) -> None:
    name = f"email {row['id']} ({row['recipient']}, {row['status']})"
    if row["status"] not in EMAIL_FINAL:
        verdict.stuck.append(name)
    elif row["status"] == "failed":
        if not row["archived"]:
            verdict.lost.append(f"{name} without a dead letter")
        elif refused or may_fail:
            verdict.failed_by_design += 1
        else:
            verdict.lost.append(f"{name} gave up")
    elif refused:
        verdict.notes.append(f"{name} sent though the provider refuses it")
    elif delivered[row["recipient"]] == 0:
        verdict.lost.append(f"{name} marked sent, never delivered")


def _judge_event(verdict: Verdict, event_id: str, row: Optional[dict[str, Any]], load: Load) -> None:
    if event_id in load.unposted:
        verdict.lost.append(f"event {event_id} never taken by the intake")
        return
    if row is None:
        verdict.lost.append(f"event {event_id} answered {load.answers.get(event_id)} but not stored")
        return
    name = f"event {row['id']} ({event_id}, {row['status']})"
    designed = event_id in load.failing_events
    if row["status"] not in EVENT_FINAL:
        verdict.stuck.append(name)
    elif row["status"] == "failed" and not row["archived"]:
        verdict.lost.append(f"{name} without a dead letter")
    elif row["status"] == "failed" and designed:
        verdict.failed_by_design += 1
    elif row["status"] == "failed":
        verdict.lost.append(f"{name} gave up")
    elif designed:
        verdict.notes.append(f"{name} processed though designed to fail")


def _judge_confirmations(verdict: Verdict, emails: list[dict[str, Any]], load: Load, processed: set[str]) -> None:
    per_order = Counter(row["order_id"] for row in emails if row["template"] == "order_confirmation")
    for order_id in load.paid_orders:
        if per_order[order_id] == 0 and order_id in processed:
            verdict.lost.append(f"order {order_id} paid without a confirmation email")
        elif per_order[order_id] > 1:
            verdict.twice.append(f"order {order_id} has {per_order[order_id]} confirmation emails")


def _judge_orders(verdict: Verdict, orders: list[dict[str, Any]], load: Load, processed: set[str]) -> None:
    """Every order whose payment was processed is paid; an order paid the wrong amount is not."""
    for row in orders:
        paid = row["payment_status"] == "paid"
        if row["id"] in load.paid_orders and row["id"] in processed and not paid:
            verdict.lost.append(f"order {row['id']} {row['payment_status']} though its payment was processed")
        elif row["id"] not in load.paid_orders and paid:
            verdict.notes.append(f"order {row['id']} paid though its payment had the wrong amount")


def _recovery(rows: list[dict[str, Any]], fault_ended: datetime) -> Optional[float]:
    """Seconds from the fault's end to the last item done; 0 when all were done before it ended."""
    finished = [row["done_at"] for row in rows if row["done_at"] is not None]
    if not finished:
        return None
    return max(0.0, (max(finished) - fault_ended).total_seconds())
