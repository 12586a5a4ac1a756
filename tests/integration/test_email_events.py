"""Resend's delivery events over real HTTP: signatures, replays, the ordering rule, suppression, bad input.

Events are signed by the ``svix`` package (``tests.support.delivery_support``), not
by our code. The app runs under uvicorn in a thread of this process, on the run's
PostgreSQL; sends go through the session's in-process worker to the fake Resend.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from actors.fan_out import enqueue_due_emails
from bench.harness.fake_resend import FakeResend
from pipeline.providers.resend import WITH_DELIVERY_EVENTS
from storage import delivery_events
from storage.clock import utcnow
from tests.support.delivery_support import (
    OLD_SECRET,
    STRANGER_SECRET,
    bounce,
    count_events,
    email_row,
    event,
    post_event,
    sent_email,
    signed_headers,
    stale,
    suppression,
)
from tests.support.helpers import insert_email, unique_address, wait_until
from tests.support.webhook_support import SHARED_SECRET, signature_header

pytestmark = pytest.mark.usefixtures("runtime")


# --- signatures ---------------------------------------------------------------------------


def test_a_signed_delivered_event_is_stored_once_with_its_payload_and_moves_the_email(
    intake: str, sessions: sessionmaker[Session]
) -> None:
    email_id, provider_id = sent_email(sessions, unique_address("delivered"))
    body = event("email.delivered", provider_id)

    answer = post_event(intake, body, msg_id="msg_delivered_" + provider_id)

    assert answer.status_code == 200, answer.text
    assert answer.json()["duplicate"] is False and answer.json()["email_id"] == email_id
    with sessions() as session:
        stored = session.execute(
            text("SELECT type, email_id, payload FROM email_events WHERE svix_id = :id"),
            {"id": "msg_delivered_" + provider_id},
        ).one()
    assert (stored.type, stored.email_id, stored.payload) == ("email.delivered", email_id, body)
    assert email_row(sessions, email_id).delivery_status == "delivered"


def test_a_replayed_event_answers_200_and_changes_nothing(intake: str, sessions: sessionmaker[Session]) -> None:
    email_id, provider_id = sent_email(sessions, unique_address("replayed"))
    msg_id = "msg_replay_" + provider_id
    first = post_event(intake, event("email.delivered", provider_id), msg_id=msg_id)
    before = email_row(sessions, email_id).delivery_updated_at

    again = post_event(intake, event("email.delivered", provider_id), msg_id=msg_id)

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["duplicate"] is True and again.json()["id"] == first.json()["id"]
    assert count_events(sessions, svix_id=msg_id) == 1
    assert email_row(sessions, email_id).delivery_updated_at == before


def test_either_secret_of_a_rotation_verifies_and_a_stranger_does_not(
    intake: str, sessions: sessionmaker[Session]
) -> None:
    _, provider_id = sent_email(sessions, unique_address("rotation"))

    old = post_event(intake, event("email.opened", provider_id), secret=OLD_SECRET)
    stranger = post_event(
        intake, event("email.clicked", provider_id), secret=STRANGER_SECRET, msg_id="msg_x_" + provider_id
    )

    assert old.status_code == 200, old.text
    assert stranger.status_code == 401
    assert count_events(sessions, svix_id="msg_x_" + provider_id) == 0


def test_a_timestamp_older_than_five_minutes_is_refused(intake: str, sessions: sessionmaker[Session]) -> None:
    _, provider_id = sent_email(sessions, unique_address("stale"))

    answer = post_event(intake, event("email.delivered", provider_id), at=stale(6), msg_id="msg_stale_" + provider_id)

    assert answer.status_code == 401 and "5 minutes" in answer.json()["error"]
    assert count_events(sessions, svix_id="msg_stale_" + provider_id) == 0


# --- the ordering rule, unknown emails ----------------------------------------------------


def test_an_older_delivered_after_a_bounce_leaves_bounced_and_a_complaint_moves_on(
    intake: str, sessions: sessionmaker[Session]
) -> None:
    email_id, provider_id = sent_email(sessions, unique_address("order"))

    assert post_event(intake, event("email.delivery_delayed", provider_id)).status_code == 200
    assert email_row(sessions, email_id).delivery_status == "delivery_delayed"
    assert post_event(intake, bounce(provider_id)).status_code == 200
    assert post_event(intake, event("email.delivered", provider_id)).status_code == 200
    assert email_row(sessions, email_id).delivery_status == "bounced"
    assert post_event(intake, event("email.opened", provider_id)).status_code == 200
    assert email_row(sessions, email_id).delivery_status == "bounced"
    assert post_event(intake, event("email.complained", provider_id)).status_code == 200
    assert email_row(sessions, email_id).delivery_status == "complained"


def test_an_event_for_an_unknown_email_is_kept_and_counted(intake: str, sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        before = delivery_events.unmatched(session)

    answer = post_event(intake, event("email.delivered", "re_not_ours_" + unique_address("x")))

    assert answer.status_code == 200 and answer.json()["email_id"] is None
    with sessions() as session:
        assert delivery_events.unmatched(session) == before + 1


# --- bad input: 4xx, nothing stored, never 5xx --------------------------------------------


def _refused(intake: str, sessions: sessionmaker[Session], raw: str | bytes, **kwargs: object) -> int:
    msg_id = "msg_bad_" + unique_address("b")
    before = count_events(sessions)
    answer = post_event(intake, raw, msg_id=msg_id, **kwargs)  # type: ignore[arg-type]
    assert count_events(sessions) == before
    return answer.status_code


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        json.dumps(event("email.teleported", "re_1")),
        json.dumps({"type": "email.delivered", "data": {"to": ["a@example.com"]}}),
        json.dumps({"type": "email.delivered", "data": {"email_id": ""}}),
        json.dumps({"type": "email.delivered", "data": "re_1"}),
        json.dumps([1, 2, 3]),
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"type": "email.delivered", "data": {"email_id": "re_1", "x": "\u0000"}}),
    ],
    ids=["malformed", "unknown-type", "no-email-id", "empty-email-id", "data-not-object", "array", "deep", "nul"],
)
def test_signed_bodies_that_are_not_events_are_400(intake: str, sessions: sessionmaker[Session], raw: str) -> None:
    assert _refused(intake, sessions, raw) == 400


def test_a_ten_megabyte_body_is_413(intake: str, sessions: sessionmaker[Session]) -> None:
    assert _refused(intake, sessions, "x" * (10 * 1024 * 1024)) == 413


def test_a_signature_made_with_the_payment_secret_is_401(intake: str, sessions: sessionmaker[Session]) -> None:
    _, provider_id = sent_email(sessions, unique_address("payment-secret"))
    raw = json.dumps(event("email.delivered", provider_id))
    assert _refused(intake, sessions, raw, secret=SHARED_SECRET.encode()) == 401
    # And the payment intake's own scheme, on this path.
    stamp = str(int(time.time()))
    headers = {
        "X-Webhook-Timestamp": stamp,
        "X-Webhook-Signature": signature_header([SHARED_SECRET], stamp, raw.encode()),
    }
    answer = requests.post(intake + "/api/email-events/resend", data=raw, headers=headers, timeout=10)
    assert answer.status_code == 401


def test_missing_headers_and_a_tampered_body_are_401(intake: str, sessions: sessionmaker[Session]) -> None:
    _, provider_id = sent_email(sessions, unique_address("tampered"))
    raw = json.dumps(event("email.delivered", provider_id))
    headers = signed_headers(raw)
    tampered = requests.post(
        intake + "/api/email-events/resend", data=raw.replace("delivered", "bounced"), headers=headers, timeout=10
    )
    bare = requests.post(intake + "/api/email-events/resend", data=raw, timeout=10)
    assert (tampered.status_code, bare.status_code) == (401, 401)


# --- suppression ----------------------------------------------------------------------------


def _send_one(sessions: sessionmaker[Session], address: str, **columns: object) -> int:
    with sessions.begin() as session:
        email_id = insert_email(session, address, **columns)
    enqueue_due_emails()
    return email_id


def _status(sessions: sessionmaker[Session], email_id: int) -> str:
    return str(email_row(sessions, email_id).status)


def test_a_permanent_bounce_suppresses_the_address_and_the_next_email_is_not_sent(
    intake: str, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    address = unique_address("Bounced").replace("Bounced", "BoUnCeD")
    email_id, provider_id = sent_email(sessions, address)

    assert post_event(intake, bounce(provider_id, to=address)).status_code == 200

    held = suppression(sessions, address)
    assert held is not None and held.reason == "bounced (permanent)" and held.email_id == email_id
    requests_before = fake_resend.requests_to("/emails")
    nxt = _send_one(sessions, address.upper())
    wait_until(lambda: _status(sessions, nxt) == "suppressed", what="the next email held back")
    assert email_row(sessions, nxt).last_error == "suppressed: bounced (permanent)"
    assert fake_resend.deliveries_to(address) == [] and fake_resend.deliveries_to(address.upper()) == []
    assert fake_resend.requests_to("/emails") == requests_before


def test_a_temporary_bounce_suppresses_nothing(intake: str, sessions: sessionmaker[Session]) -> None:
    address = unique_address("soft")
    email_id, provider_id = sent_email(sessions, address)

    assert post_event(intake, bounce(provider_id, to=address, kind="Temporary")).status_code == 200

    assert suppression(sessions, address) is None
    assert email_row(sessions, email_id).delivery_status is None
    with sessions() as session:
        assert [e["type"] for e in delivery_events.events_of(session, email_id)] == ["email.bounced"]


@pytest.mark.parametrize("kind", ["email.complained", "email.suppressed"])
def test_a_complaint_and_the_providers_suppression_suppress_the_address(
    intake: str, sessions: sessionmaker[Session], kind: str
) -> None:
    address = unique_address("complains")
    _, provider_id = sent_email(sessions, address)
    assert post_event(intake, event(kind, provider_id, to=address)).status_code == 200
    held = suppression(sessions, address)
    assert held is not None and held.reason == kind.removeprefix("email.").replace("complained", "complained")


def test_inside_a_batch_the_suppressed_member_is_held_back_and_the_others_are_sent(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    addresses = [unique_address(f"member{n}") for n in range(4)]
    with sessions.begin() as session:
        session.execute(
            text("INSERT INTO email_suppressions (address, reason, created_by) VALUES (lower(:a), 'bounced', 'test')"),
            {"a": addresses[1]},
        )
        ids = [insert_email(session, address, priority="bulk") for address in addresses]
    enqueue_due_emails()

    wait_until(
        lambda: [_status(sessions, i) for i in ids] == ["sent", "suppressed", "sent", "sent"],
        what="three members sent, one held back",
    )
    assert fake_resend.deliveries_to(addresses[1]) == []
    assert all(
        len(fake_resend.deliveries_to(a)) == 1 and fake_resend.deliveries_to(a)[0].in_batch for a in addresses[::2]
    )
    assert email_row(sessions, ids[1]).last_error == "suppressed: bounced"


def test_a_lifted_suppression_lets_the_next_email_through(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    from pipeline.ops import suppressions

    address = unique_address("lifted")
    assert suppressions.add(sessions, address, reason="test", who="test") is True
    held = _send_one(sessions, address)
    wait_until(lambda: _status(sessions, held) == "suppressed", what="held back")

    assert suppressions.remove(sessions, address.upper(), who="test") is True
    sent = _send_one(sessions, address)

    wait_until(lambda: _status(sessions, sent) == "sent", what="the next email sent")
    assert len(fake_resend.deliveries_to(address)) == 1
    assert _status(sessions, held) == "suppressed"


# --- the rates on a seeded history ------------------------------------------------------


def test_rates_over_24_hours_and_7_days_of_resends_sends(sessions: sessionmaker[Session]) -> None:
    """Only the sends of providers with delivery events count: before, SMTP's diluted Resend's rates."""
    now = utcnow() + timedelta(days=3650)  # a window of its own, far from every other test's sends
    rows = [
        (1, "bounced", "resend"),
        (2, "delivered", None),  # sent before email_queue.provider was recorded: Resend's
        (2, "complained", "resend"),
        (3, None, "smtp"),
        (3, None, "smtp"),
        (30, "bounced", "resend"),
        (30, "delivered", "resend"),
        (30, None, "resend"),
        (30, None, "smtp"),
        (24 * 8, "bounced", "resend"),
    ]
    with sessions.begin() as session:
        for hours_ago, delivery, provider in rows:
            session.execute(
                text(
                    "INSERT INTO email_queue (recipient, subject, html, status, sent_at, delivery_status, provider) "
                    "VALUES ('r@example.com', 's', 'h', 'sent', :at, :d, :p)"
                ),
                {"at": now - timedelta(hours=hours_ago), "d": delivery, "p": provider},
            )
        figures = delivery_events.rates(session, providers=WITH_DELIVERY_EVENTS, now=now)
        session.rollback()
    assert figures["24h"] == {
        "sent": 3,
        "bounced": 1,
        "complained": 1,
        "bounce_rate": 1 / 3,
        "complaint_rate": 1 / 3,
    }
    assert figures["7d"]["sent"] == 6 and figures["7d"]["bounced"] == 2 and figures["7d"]["bounce_rate"] == 2 / 6


# --- a burst ----------------------------------------------------------------------------------


def test_a_burst_of_2000_signed_events_from_50_clients_is_stored_once_each_without_a_5xx(
    intake: str, sessions: sessionmaker[Session]
) -> None:
    email_id, provider_id = sent_email(sessions, unique_address("burst"))
    prefix = "msg_burst_" + provider_id
    bodies = [(f"{prefix}_{n % 1000}", json.dumps(event("email.opened", provider_id))) for n in range(2000)]

    def client(index: int) -> list[int]:
        with requests.Session() as http:
            return [
                post_event(intake, raw, msg_id=msg_id, session=http).status_code for msg_id, raw in bodies[index::50]
            ]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = [code for codes in pool.map(client, range(50)) for code in codes]
    elapsed = time.perf_counter() - started

    assert len(codes) == 2000 and set(codes) == {200}, {code: codes.count(code) for code in set(codes)}
    with sessions() as session:
        stored = session.execute(
            text("SELECT COUNT(*), COUNT(DISTINCT svix_id) FROM email_events WHERE svix_id LIKE :p"),
            {"p": prefix + "%"},
        ).one()
    assert tuple(stored) == (1000, 1000)  # each of the 1,000 ids twice: stored once
    print(f"\n2000 signed events from 50 clients in {elapsed:.2f} s: {2000 / elapsed:.0f} events/s")
