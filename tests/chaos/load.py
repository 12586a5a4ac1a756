"""The load every chaos scenario puts in flight: 1,000 emails and 200 signed payment webhook events.

Emails are inserted by SQL, as the shop does; events are posted signed to ``serve``
by a poster that behaves like a payment provider: it sends again whatever was not
answered 2xx or 4xx (a 5xx, a refused connection) until it is, so an intake that
answers 503 during an outage loses nothing the provider still holds. Half the events
go before the fault, the other half once it has begun.

A few items fail by design, so the failure path is under the fault too: emails the
provider refuses (422, dead-lettered at once), events whose order never comes
(retried on the webhook schedule, then dead-lettered) and events paying the wrong
amount (dead-lettered at once). Every other event pays its order, whose customer
gets one order confirmation.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

import requests
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.fake_resend import FakeResend
from bench.harness.shipped import insert_emails
from bench.harness.waiting import wait_until
from tests.support.helpers import unique_address
from tests.support.webhook_support import new_id, payment, post

T = TypeVar("T")

EMAILS = 1000
EVENTS = 200
#: Emails the provider refuses for good (422): failed, with a dead letter.
REFUSED_EMAILS = 10
#: Events whose order is never inserted: retried WEBHOOK_MAX_RETRIES times, then failed.
ORPHAN_EVENTS = 5
#: Events paying another amount than their order's: failed at once (a person must look).
MISMATCHED_EVENTS = 5
#: The secret ``serve`` checks (PAYMENT_WEBHOOK_SECRET of the scenario's environment).
WEBHOOK_SECRET = "whsec_chaos"
#: How long the poster keeps sending one event the intake does not take (a provider retries for days).
POST_DEADLINE_SECONDS = 180.0
TOTAL = "250.00"


@dataclass
class Load:
    """What one scenario put in flight, and what it should come to."""

    email_ids: list[int]
    good_addresses: list[str]
    refused_addresses: list[str]
    #: order id -> the customer's address, for the events that pay their order.
    paid_orders: dict[str, str]
    events: list[dict[str, Any]]
    #: event ids expected ``failed`` with a dead letter.
    failing_events: set[str]
    answers: dict[str, int] = field(default_factory=dict)
    #: Events the poster gave up on (never answered 2xx/4xx before its deadline).
    unposted: list[str] = field(default_factory=list)

    @property
    def confirmation_addresses(self) -> list[str]:
        return list(self.paid_orders.values())


def prepare(sessions: sessionmaker[Session], provider: FakeResend) -> Load:
    """The orders the events pay (inserted first, as at checkout), the refusals scripted, nothing sent yet."""
    good = [unique_address(f"chaos{n}") for n in range(EMAILS - REFUSED_EMAILS)]
    refused = [unique_address(f"refused{n}") for n in range(REFUSED_EMAILS)]
    for address in refused:
        provider.fail_recipient(address, status=422, name="validation_error", message="Invalid `to` field.")
    paying = EVENTS - ORPHAN_EVENTS - MISMATCHED_EVENTS
    orders = {new_id("MN"): unique_address(f"buyer{n}") for n in range(paying + MISMATCHED_EVENTS)}
    with sessions.begin() as session:
        for order_id, address in orders.items():
            session.execute(
                text("INSERT INTO orders (id, total, currency, customer_email) VALUES (:id, :total, 'ETB', :email)"),
                {"id": order_id, "total": TOTAL, "email": address},
            )
    order_ids = list(orders)
    paid = {order_id: orders[order_id] for order_id in order_ids[:paying]}
    events = [payment(order_id, amount=TOTAL) for order_id in paid]
    mismatched = [payment(order_id, amount="1.00") for order_id in order_ids[paying:]]
    orphans = [payment(new_id("MN-never"), amount=TOTAL) for _ in range(ORPHAN_EVENTS)]
    interleaved = _interleave(events, mismatched + orphans)
    return Load(
        email_ids=[],
        good_addresses=good,
        refused_addresses=refused,
        paid_orders=paid,
        events=interleaved,
        failing_events={event["event_id"] for event in mismatched + orphans},
    )


def _interleave(many: list[T], few: list[T]) -> list[T]:
    """``few`` spread evenly through ``many``, so designed failures meet the fault too."""
    step = max(1, len(many) // (len(few) + 1))
    merged = list(many)
    for position, item in enumerate(few):
        merged.insert(min(len(merged), (position + 1) * step + position), item)
    return merged


def insert(sessions: sessionmaker[Session], load: Load) -> None:
    """The 1,000 emails in one INSERT burst, refused ones spread among them."""
    load.email_ids = insert_emails(sessions, _interleave(load.good_addresses, load.refused_addresses))


class Poster:
    """Posts the load's events signed, in two halves around the fault's start, as a provider retrying."""

    def __init__(self, base: str, load: Load) -> None:
        self.base = base
        self.load = load
        self.fault_started = threading.Event()
        self.first_half_posted = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-poster", daemon=True)
        self.error: Optional[BaseException] = None

    def start(self) -> None:
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            half = len(self.load.events) // 2
            for event in self.load.events[:half]:
                self._deliver(event)
            self.first_half_posted.set()
            if not self.fault_started.wait(POST_DEADLINE_SECONDS):
                raise AssertionError("the fault never started")
            for event in self.load.events[half:]:
                self._deliver(event)
        except BaseException as exc:  # reported by the runner, never swallowed
            self.error = exc
            self.first_half_posted.set()

    def _deliver(self, event: dict[str, Any]) -> None:
        """Send until answered 2xx or 4xx (a provider gives up only after days); 5xx and refusals are retried."""
        deadline = time.monotonic() + POST_DEADLINE_SECONDS
        pause = 0.05
        while time.monotonic() < deadline:
            try:
                status = post(self.base, event, secret=WEBHOOK_SECRET).status_code
            except requests.RequestException:
                status = 0
            if 200 <= status < 500:
                self.load.answers[event["event_id"]] = status
                return
            time.sleep(pause)  # the provider's pause before its next try: pacing, not synchronisation
            pause = min(pause * 2, 1.0)
        self.load.unposted.append(event["event_id"])


def intake_answers(base: str) -> bool:
    """``serve`` answers its health check."""
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def wait_for_intake(base: str) -> None:
    wait_until(lambda: intake_answers(base), timeout=60, what=f"serve to answer at {base}")
