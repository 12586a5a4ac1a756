"""The webhook intake over real HTTP: signatures, refusals, duplicates, and what a good event does.

A real uvicorn server on 127.0.0.1 runs the intake app in a thread of this
process; the session's in-process worker processes what it enqueues, on the
run's PostgreSQL database and RabbitMQ vhost.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import pytest
import requests
from dramatiq.errors import ConnectionClosed
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from actors.webhooks import enqueue_due_webhooks, process_webhook_event
from bench.harness import services
from bench.harness.fake_resend import FakeResend
from pipeline.core.enqueue import send_or_release
from pipeline.core.runtime import Runtime
from pipeline.web.intake import MAX_BODY_BYTES, signature_header
from storage import inventory, webhooks
from tests.support.helpers import unique_address, wait_until
from tests.support.webhook_support import (
    SHARED_SECRET,
    TELEBIRR_SECRET,
    add_order,
    count_events,
    drain_tick,
    emails_for,
    event_row,
    new_id,
    order,
    payment,
    post,
    reservation_statuses,
    reserve_for,
    stock,
    store_event,
    wait_for_event,
)

# --- intake: the happy path -----------------------------------------------------------


def test_signed_success_marks_the_order_paid_commits_stock_and_sends_one_confirmation(
    intake: str, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    address = unique_address("paid")
    order_id = add_order(sessions, total="1250.00", email=address)
    product = reserve_for(sessions, order_id, quantity=3)
    body = payment(order_id, amount=1250, customer_name="Abebe")

    answer = post(intake, body, provider="telebirr", secret=TELEBIRR_SECRET)

    assert answer.status_code == 200, answer.text
    assert answer.json()["duplicate"] is False
    row = wait_for_event(sessions, "telebirr", body["event_id"], lambda r: r.status == "processed", what="processed")
    assert (row.retry_count, row.attempts, row.archived, row.last_error) == (0, 1, False, None)
    assert row.processed_at is not None and row.order_id == order_id and row.payload == body
    paid = order(sessions, order_id)
    assert (paid["status"], paid["payment_status"]) == ("paid", "paid") and paid["paid_at"] is not None
    assert reservation_statuses(sessions, order_id) == ["committed"]
    assert stock(sessions, product) == 7
    (email,) = emails_for(sessions, address)
    assert email.template == "order_confirmation"
    assert email.template_data == {
        "order_id": order_id,
        "total": "1,250.00",
        "currency": "ETB",
        "customer_name": "Abebe",
    }
    wait_until(lambda: len(fake_resend.deliveries_to(address)) == 1, what="the confirmation to be sent")
    assert fake_resend.deliveries_to(address)[0].subject == f"Order {order_id} confirmed"


def test_payment_failed_releases_stock_and_emails_the_event_address(
    intake: str, sessions: sessionmaker[Session]
) -> None:
    on_file, in_event = unique_address("on-file"), unique_address("in-event")
    order_id = add_order(sessions, email=on_file)
    product = reserve_for(sessions, order_id)
    body = payment(order_id, "payment.failed", customer_email=in_event, reason="card declined")

    assert post(intake, body, provider="cbe").status_code == 200  # CBE has no secret of its own: the shared one

    wait_for_event(sessions, "cbe", body["event_id"], lambda r: r.status == "processed", what="processed")
    failed = order(sessions, order_id)
    assert (failed["status"], failed["payment_status"], failed["paid_at"]) == ("failed", "failed", None)
    assert reservation_statuses(sessions, order_id) == ["released"]
    with sessions() as session:
        assert inventory.available(session, product) == 10
    assert emails_for(sessions, on_file) == []
    (email,) = emails_for(sessions, in_event)
    assert email.template == "payment_failed" and (email.template_data or {}).get("reason") == "card declined"


def test_a_repeated_payment_failure_sends_one_payment_failed_email(
    intake: str, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    """A second failed event for the order (a retry with another card), and redeliveries, email nobody again."""
    address = unique_address("failed-twice")
    order_id = add_order(sessions, email=address)
    first, second = payment(order_id, "payment.failed"), payment(order_id, "payment.failed", reason="again")

    assert post(intake, first).status_code == 200
    row = wait_for_event(sessions, "generic", first["event_id"], lambda r: r.status == "processed", what="first")
    assert post(intake, second).status_code == 200
    wait_for_event(sessions, "generic", second["event_id"], lambda r: r.status == "processed", what="second")
    assert post(intake, second).json()["duplicate"] is True
    process_webhook_event.fn(row.id)  # a stray redelivery of the first event's message

    (email,) = emails_for(sessions, address)
    assert email.template == "payment_failed" and (email.template_data or {}).get("reason") is None
    wait_until(lambda: len(fake_resend.deliveries_to(address)) == 1, what="the one payment-failed email")
    assert order(sessions, order_id)["payment_status"] == "failed"


def test_a_late_failure_does_not_unpay_and_an_order_without_address_gets_no_email(
    intake: str, sessions: sessionmaker[Session]
) -> None:
    order_id = add_order(sessions)
    success, failure = payment(order_id), payment(order_id, "payment.failed")
    assert post(intake, success).status_code == 200
    wait_for_event(sessions, "generic", success["event_id"], lambda r: r.status == "processed", what="success")
    assert post(intake, failure).status_code == 200
    wait_for_event(sessions, "generic", failure["event_id"], lambda r: r.status == "processed", what="failure")

    assert order(sessions, order_id)["payment_status"] == "paid"
    with sessions() as session:
        count = session.execute(
            text("SELECT COUNT(*) FROM email_queue WHERE template_data->>'order_id' = :id"), {"id": order_id}
        ).scalar_one()
    assert count == 0


def test_wrong_amount_is_archived_at_once_without_touching_the_order(
    intake: str, sessions: sessionmaker[Session]
) -> None:
    order_id = add_order(sessions, total="99.00")
    body = payment(order_id, amount="9.90")
    assert post(intake, body).status_code == 200

    row = wait_for_event(sessions, "generic", body["event_id"], lambda r: r.archived, what="archived")
    assert row.status == "failed" and row.attempts == 1 and row.retry_count == 0
    assert "PaymentMismatch" in (row.last_error or "") and "paid 9.90 ETB" in (row.last_error or "")
    assert order(sessions, order_id)["payment_status"] == "pending"


def test_intake_answers_quickly(intake: str, sessions: sessionmaker[Session]) -> None:
    order_ids = [add_order(sessions) for _ in range(20)]
    durations = []
    for order_id in order_ids:
        started = time.perf_counter()
        answer = post(intake, payment(order_id))
        durations.append(time.perf_counter() - started)
        assert answer.status_code == 200
    median = statistics.median(durations)
    print(f"\nintake: median {median * 1000:.1f} ms, max {max(durations) * 1000:.1f} ms over 20 requests")
    assert median < 0.25 and max(durations) < 2.0, durations


# --- intake: refusals -----------------------------------------------------------------

#: The end of the 400 answer to text PostgreSQL cannot store.
UNSTORABLE = "which cannot be stored"


@pytest.mark.parametrize(
    "case",
    [
        "wrong_secret",
        "shared_secret_for_a_provider_with_its_own",
        "stale_timestamp",
        "future_timestamp",
        "tampered_body",
        "missing_signature",
        "missing_timestamp",
        "not_v1",
    ],
)
def test_bad_signatures_get_401_and_store_nothing(intake: str, sessions: sessionmaker[Session], case: str) -> None:
    body = payment(add_order(sessions))
    raw = json.dumps(body).encode()
    now = int(time.time())
    cases: dict[str, dict[str, Any]] = {
        "wrong_secret": {"secret": "not the secret"},
        "shared_secret_for_a_provider_with_its_own": {"provider": "telebirr", "secret": SHARED_SECRET},
        "stale_timestamp": {"timestamp": now - 301},
        "future_timestamp": {"timestamp": now + 301},
        "tampered_body": {"sign": raw.replace(b"250.00", b"2.50")},
        "missing_signature": {"headers": {"X-Webhook-Signature": ""}},
        "missing_timestamp": {"headers": {"X-Webhook-Timestamp": ""}},
        "not_v1": {"headers": {"X-Webhook-Signature": "v2=" + "0" * 64}},
    }
    arguments = cases[case]

    answer = post(intake, raw, **arguments)

    assert answer.status_code == 401, answer.text
    assert "invalid signature" in answer.json()["error"]
    assert count_events(sessions, body["event_id"]) == 0


def test_a_timestamp_299_seconds_old_is_still_accepted(intake: str, sessions: sessionmaker[Session]) -> None:
    body = payment(add_order(sessions))
    assert post(intake, body, timestamp=int(time.time()) - 299).status_code == 200
    assert count_events(sessions, body["event_id"]) == 1


def test_unknown_provider_is_404(intake: str, sessions: sessionmaker[Session]) -> None:
    body = payment(add_order(sessions))
    answer = post(intake, body, provider="paypal")
    assert answer.status_code == 404 and "telebirr" in answer.json()["error"]
    assert count_events(sessions, body["event_id"]) == 0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (json.dumps({"type": "payment.succeeded", "order_id": "x"}).encode(), "fields: event_id, amount, currency"),
        (
            json.dumps({"event_id": "e-bad-type", "type": "refund", "order_id": "x", "amount": 1, "currency": "ETB"}),
            "type must be one of",
        ),
    ],
)
def test_signed_malformed_bodies_are_400(
    intake: str, sessions: sessionmaker[Session], raw: bytes | str, message: str
) -> None:
    answer = post(intake, raw if isinstance(raw, bytes) else raw.encode())
    assert answer.status_code == 400 and message in answer.json()["error"]
    assert count_events(sessions, "e-bad-type") == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("reason", "card\u0000declined"), ("customer_name", "\ud800"), ("event_id", "evt-nul\u0000")],
    ids=["nul", "lone-surrogate", "nul-in-event-id"],
)
def test_text_postgresql_cannot_store_is_400_naming_it_never_503(
    intake: str, sessions: sessionmaker[Session], field: str, value: str
) -> None:
    """The parser takes \\u0000 and lone surrogates; PostgreSQL does not: 503 would be refused on every retry."""
    order_id = add_order(sessions)
    body = {**payment(order_id, "payment.failed"), field: value}

    answer = post(intake, body)

    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == f"{field} holds \\u0000 or an unpaired surrogate (\\ud800-\\udfff), {UNSTORABLE}"
    with sessions() as session:
        stored = session.execute(text("SELECT COUNT(*) FROM webhook_events WHERE order_id = :o"), {"o": order_id})
        assert stored.scalar_one() == 0
    fixed = {**body, field: new_id("fine")}
    assert post(intake, fixed).status_code == 200  # the provider's corrected event goes through
    wait_for_event(sessions, "generic", fixed["event_id"], lambda r: r.status == "processed", what="processed")


def test_bodies_over_one_mib_are_413_whether_declared_or_streamed(intake: str, sessions: sessionmaker[Session]) -> None:
    body = payment(add_order(sessions), padding="x" * MAX_BODY_BYTES)
    raw = json.dumps(body).encode()
    assert post(intake, raw).status_code == 413

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 64 * 1024):
            yield raw[start : start + 64 * 1024]

    stamp = str(int(time.time()))
    streamed = requests.post(
        f"{intake}/api/payments/webhook/generic",
        data=chunks(),
        headers={"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": signature_header([SHARED_SECRET], stamp, raw)},
        timeout=10,
    )
    assert streamed.status_code == 413
    assert count_events(sessions, body["event_id"]) == 0
    exactly = payment(add_order(sessions))
    exactly_raw = json.dumps(exactly).encode()
    exactly_raw += b" " * (MAX_BODY_BYTES - len(exactly_raw))
    assert len(exactly_raw) == MAX_BODY_BYTES and post(intake, exactly_raw).status_code == 200


# --- at most once -----------------------------------------------------------------------


def test_a_repeated_event_is_answered_200_stored_and_applied_once(intake: str, sessions: sessionmaker[Session]) -> None:
    address = unique_address("dupe")
    order_id = add_order(sessions, email=address)
    body = payment(order_id)

    answers = [post(intake, body) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["duplicate"] for a in answers] == [False, True, True]
    row = wait_for_event(sessions, "generic", body["event_id"], lambda r: r.status == "processed", what="processed")
    for _ in range(3):  # stray redeliveries of its message, too
        process_webhook_event.send(row.id)
    process_webhook_event.fn(row.id)
    wait_until(lambda: len(emails_for(sessions, address)) == 1, what="the one email")

    assert count_events(sessions, body["event_id"]) == 1
    assert event_row(sessions, "generic", body["event_id"]).attempts == 1  # type: ignore[union-attr]
    assert len(emails_for(sessions, address)) == 1
    another = {**body, "amount": "1.00"}  # unique per provider: Awash's event of the same id is another event
    assert post(intake, another, provider="awash").json()["duplicate"] is False


def signed_request(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The exact bytes and headers of a provider's request, as someone who saw them would replay them."""
    raw = json.dumps(body).encode()
    stamp = str(int(time.time()))
    return raw, {"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": signature_header([SHARED_SECRET], stamp, raw)}


def test_a_signed_request_replayed_to_other_providers_paths_makes_no_second_event(
    intake: str, sessions: sessionmaker[Session]
) -> None:
    """CBE, Awash and generic share PAYMENT_WEBHOOK_SECRET: one's signed request verifies on the others' paths."""
    address = unique_address("replayed")
    order_id = add_order(sessions, email=address)
    body = payment(order_id, "payment.failed")
    raw, headers = signed_request(body)

    answers = {
        provider: requests.post(f"{intake}/api/payments/webhook/{provider}", data=raw, headers=headers, timeout=10)
        for provider in ("cbe", "awash", "generic")
    }

    assert answers["cbe"].status_code == 200
    for replayed in (answers["awash"], answers["generic"]):
        assert replayed.status_code == 409
        assert replayed.json() == {"error": f"event {body['event_id']} was received from another provider"}
    assert count_events(sessions, body["event_id"]) == 1
    wait_for_event(sessions, "cbe", body["event_id"], lambda r: r.status == "processed", what="processed")
    assert len(emails_for(sessions, address)) == 1


def test_replays_racing_the_original_on_every_path_store_one_event(
    intake: str, sessions: sessionmaker[Session]
) -> None:
    """Simultaneous copies on three paths: the first to commit is the event, whichever path it took."""
    body = payment(add_order(sessions))
    raw, headers = signed_request(body)
    paths = [provider for provider in ("cbe", "awash", "generic") for _ in range(4)]

    def send(provider: str) -> tuple[str, int]:
        url = f"{intake}/api/payments/webhook/{provider}"
        return provider, requests.post(url, data=raw, headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        results = list(pool.map(send, paths))

    with sessions() as session:
        (stored,) = session.execute(
            text("SELECT provider FROM webhook_events WHERE event_id = :e"), {"e": body["event_id"]}
        ).scalars()
    assert sorted(status for provider, status in results if provider == stored) == [200] * 4
    assert [status for provider, status in results if provider != stored] == [409] * 8


def test_intake_answers_200_when_rabbitmq_refuses_and_the_tick_enqueues_it_later(
    intake: str,
    sessions: sessionmaker[Session],
    test_services: services.RunServices,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = payment(add_order(sessions))
    services.reject_publishes(test_services, "webhooks")
    try:
        answer = post(intake, body)
        wait_until(lambda: "Could not enqueue process_webhook_event" in caplog.text, what="the refused enqueue")
    finally:
        services.accept_publishes(test_services, "webhooks")
    assert answer.status_code == 200
    row = event_row(sessions, "generic", body["event_id"])
    assert row is not None and row.status == "pending" and row.attempts == 0
    assert row.locked_until is None  # handed back at once: the next poll takes it, not the end of a lease

    drain_tick()

    wait_for_event(sessions, "generic", body["event_id"], lambda r: r.status == "processed", what="processed")


def test_an_event_whose_message_rabbitmq_refused_is_handed_back_at_once(
    runtime: Runtime, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, it waited its 5-minute lease and the 10-minute retry tick (the chaos suite's RabbitMQ
    restart left 100 events so); now the claim goes back and the next poll enqueues it."""
    order_id = add_order(sessions)
    with sessions.begin() as session:
        body = payment(order_id)
        stored = store_event(session, body)

    def refuse(message: Any, *, delay: Optional[int] = None) -> Any:
        raise ConnectionClosed(RuntimeError("RabbitMQ is restarting"))

    monkeypatch.setattr(runtime.broker, "enqueue", refuse)
    sent = send_or_release(process_webhook_event, webhooks.TABLE, stored.id)
    monkeypatch.undo()

    assert sent is False
    assert enqueue_due_webhooks() >= 1  # at once, not after the lease
    wait_for_event(sessions, "generic", body["event_id"], lambda row: row.status == "processed", "processed")
