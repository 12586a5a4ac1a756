"""Delivery events without services: parsing, the ordering rule, verification, suppression, the rate alert's rule.

Bodies are signed with the ``svix`` package's own signer; the storage tests run on SQLite,
migrated with the shipped migrations (``tests/unit/conftest.py``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from svix.webhooks import Webhook

from actors.delivery_rates import crossings
from pipeline.cli.readable import percent
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings
from pipeline.web.email_events import Unverified, verify
from storage import delivery_events, suppressions
from storage.delivery_events import InvalidDeliveryEvent, parse_event
from storage.models import DELIVERY_RANK
from tests.support.delivery_support import NEW_SECRET, OLD_SECRET, STRANGER_SECRET, bounce, event


def _signed(body: str, secret: str = NEW_SECRET, *, at: datetime | None = None) -> dict[str, Any]:
    moment = at or datetime.now(UTC)
    return {
        "svix_id": "msg_1",
        "timestamp": str(int(moment.timestamp())),
        "signature": Webhook(secret).sign("msg_1", moment, body),
    }


# --- verification ---------------------------------------------------------------------------


def test_a_body_signed_by_svix_verifies_under_either_secret_of_a_rotation() -> None:
    body = json.dumps(event("email.delivered", "re_1"))
    for secret in (NEW_SECRET, OLD_SECRET):
        assert verify(body, **_signed(body, secret), secrets=[NEW_SECRET, OLD_SECRET]) == json.loads(body)


def test_another_secret_a_stale_timestamp_and_missing_headers_are_unverified() -> None:
    body = json.dumps(event("email.delivered", "re_1"))
    with pytest.raises(Unverified, match="does not match"):
        verify(body, **_signed(body, STRANGER_SECRET), secrets=[NEW_SECRET])
    with pytest.raises(Unverified, match="5 minutes"):
        verify(body, **_signed(body, at=datetime.now(UTC) - timedelta(minutes=6)), secrets=[NEW_SECRET])
    with pytest.raises(Unverified, match="required"):
        verify(body, svix_id=None, timestamp="1", signature="v1,x", secrets=[NEW_SECRET])
    with pytest.raises(Unverified, match="no secret"):
        verify(body, **_signed(body), secrets=[])


def test_a_signed_body_that_is_not_json_is_invalid_not_unverified() -> None:
    for body in ("{nope", "[" * 50_000 + "]" * 50_000):
        with pytest.raises(InvalidDeliveryEvent):
            verify(body, **_signed(body), secrets=[NEW_SECRET])


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "JSON object"),
        ({"type": "email.teleported", "data": {"email_id": "re_1"}}, "type must be"),
        ({"type": "contact.created", "data": {"email_id": "re_1"}}, "type must be"),
        ({"type": "email.delivered", "data": {}}, "email_id"),
        ({"type": "email.delivered", "data": {"email_id": 7}}, "email_id"),
        ({"type": "email.delivered", "data": {"email_id": "x" * 201}}, "email_id"),
        ({"type": "email.delivered"}, "data must be"),
        ({"type": "email.delivered", "data": {"email_id": "re_1", "deep": json.loads("[" * 40 + "]" * 40)}}, "nested"),
        ({"type": "email.delivered", "data": {"email_id": "re\u00001"}}, "cannot be stored"),
    ],
)
def test_what_is_not_a_delivery_event_is_named(payload: Any, message: str) -> None:
    with pytest.raises(InvalidDeliveryEvent, match=message):
        parse_event("msg_1", payload)


def test_a_bounce_is_parsed_with_its_type_recipients_and_time() -> None:
    parsed = parse_event("msg_1", bounce("re_1", to="Ann@Example.com"))
    assert (parsed.type, parsed.provider_message_id, parsed.bounce_type) == ("email.bounced", "re_1", "permanent")
    assert parsed.recipients == ("Ann@Example.com",) and parsed.occurred_at is not None
    assert parsed.status is not None and parsed.status.value == "bounced"
    assert parsed.suppression_reason == "bounced (permanent)"


def test_a_temporary_bounce_moves_nothing_and_suppresses_nothing() -> None:
    parsed = parse_event("msg_1", bounce("re_1", kind="Temporary"))
    assert (parsed.status, parsed.suppression_reason) == (None, None)


@pytest.mark.parametrize("kind", ["email.opened", "email.clicked", "email.sent", "email.failed"])
def test_engagement_and_sending_events_are_recorded_only(kind: str) -> None:
    parsed = parse_event("msg_1", event(kind, "re_1"))
    assert (parsed.status, parsed.suppression_reason) == (None, None)


def test_the_ranks_never_let_delivered_undo_a_bounce_or_a_complaint() -> None:
    assert DELIVERY_RANK["delivery_delayed"] < DELIVERY_RANK["delivered"] < DELIVERY_RANK["bounced"]
    assert DELIVERY_RANK["bounced"] < DELIVERY_RANK["complained"]
    assert DELIVERY_RANK["suppressed"] > DELIVERY_RANK["delivered"]


# --- storage on SQLite ----------------------------------------------------------------------


def _sent(session: Session, recipient: str, provider_id: str) -> int:
    statement = text(
        "INSERT INTO email_queue (recipient, subject, html, status, provider_message_id, sent_at) "
        "VALUES (:r, 's', 'h', 'sent', :p, CURRENT_TIMESTAMP) RETURNING id"
    )
    return int(session.execute(statement, {"r": recipient, "p": provider_id}).scalar_one())


def _status(session: Session, email_id: int) -> Any:
    return session.execute(text("SELECT delivery_status FROM email_queue WHERE id = :i"), {"i": email_id}).scalar()


def test_recording_follows_the_ordering_rule_and_suppresses_once(lite: sessionmaker[Session]) -> None:
    with lite.begin() as session:
        email_id = _sent(session, "Ann@Example.com", "re_a")
        first = delivery_events.record(session, parse_event("m1", bounce("re_a")))
        again = delivery_events.record(session, parse_event("m1", bounce("re_a")))
        late = delivery_events.record(session, parse_event("m2", event("email.delivered", "re_a")))
        assert (first.created, first.status_changed, first.suppressed) == (True, True, ("ann@example.com",))
        assert (again.created, again.id) == (False, first.id)
        assert (late.created, late.status_changed, late.suppressed) == (True, False, ())
        assert _status(session, email_id) == "bounced"
        assert suppressions.get(session, "ANN@example.com") is not None
        assert [e["type"] for e in delivery_events.events_of(session, email_id)] == ["email.bounced", "email.delivered"]


def test_an_unknown_email_is_kept_and_its_addresses_still_suppressed(lite: sessionmaker[Session]) -> None:
    with lite.begin() as session:
        before = delivery_events.unmatched(session)
        recorded = delivery_events.record(session, parse_event("m9", event("email.complained", "re_zz", to="b@x.io")))
        assert recorded.email_id is None and recorded.suppressed == ("b@x.io",)
        assert delivery_events.unmatched(session) == before + 1


def test_the_rate_alert_throttle_lets_one_through_per_interval(lite: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    with lite.begin() as session:
        assert delivery_events.claim_rate_alert(session, "bounce", now=now, interval=hour) is True
        assert delivery_events.claim_rate_alert(session, "bounce", now=now + hour / 2, interval=hour) is False
        assert delivery_events.claim_rate_alert(session, "complaint", now=now, interval=hour) is True
        assert delivery_events.claim_rate_alert(session, "bounce", now=now + hour, interval=hour) is True


# --- the alert's rule, settings, the text form ---------------------------------------------


def _rates(sent: int, bounced: int, complained: int) -> dict[str, dict[str, Any]]:
    day = {
        "sent": sent,
        "bounced": bounced,
        "complained": complained,
        "bounce_rate": bounced / sent if sent else 0.0,
        "complaint_rate": complained / sent if sent else 0.0,
    }
    return {"24h": day, "7d": day}


@pytest.mark.parametrize(
    ("sent", "bounced", "complained", "crossed"),
    [
        (10_000, 399, 7, []),
        (10_000, 400, 7, ["bounce"]),
        (10_000, 0, 8, ["complaint"]),
        (10_000, 500, 9, ["bounce", "complaint"]),
        (99, 50, 50, []),
    ],
)
def test_an_alert_is_due_at_resends_limits_once_enough_emails_were_sent(
    sent: int, bounced: int, complained: int, crossed: list[str]
) -> None:
    assert [c.rate for c in crossings(_rates(sent, bounced, complained))] == crossed


def test_resend_webhook_secret_takes_several_whsec_secrets_and_refuses_others() -> None:
    settings = Settings.from_env({"RESEND_WEBHOOK_SECRET": f" {NEW_SECRET}   {OLD_SECRET} "})
    assert settings.resend_webhook_secrets == (NEW_SECRET, OLD_SECRET)
    assert {NEW_SECRET, OLD_SECRET} <= settings.secret_values()
    assert NEW_SECRET not in repr(settings)
    with pytest.raises(ConfigError, match="RESEND_WEBHOOK_SECRET"):
        Settings.from_env({"RESEND_WEBHOOK_SECRET": "not-a-secret!"})


def test_rates_read_as_percentages() -> None:
    assert (percent(0.04), percent(0.0008), percent(0.0), percent(1 / 3)) == ("4%", "0.08%", "0%", "33.3333%")


def test_hold_back_ends_only_attempted_emails_to_suppressed_addresses(lite: sessionmaker[Session]) -> None:
    with lite.begin() as session:
        insert = text(
            "INSERT INTO email_queue (recipient, subject, html, status, attempts) "
            "VALUES (:r, 's', 'h', :s, :a) RETURNING id"
        )
        ids = [
            int(session.execute(insert, {"r": r, "s": s, "a": a}).scalar_one())
            for r, s, a in (
                (" Ann@Example.com", "sending", 1),
                ("ann@example.com", "sent", 1),
                ("bob@example.com", "sending", 1),
                ("ann@example.com", "sending", 2),
            )
        ]
        suppressions.add(session, "ANN@example.com", reason="bounced", created_by="test")
        assert suppressions.hold_back(session, ids, first_attempt_only=True) == {ids[0]: "suppressed: bounced"}
        assert suppressions.hold_back(session, ids) == {ids[3]: "suppressed: bounced"}
        statuses = session.execute(text("SELECT status FROM email_queue ORDER BY id")).scalars().all()
        assert statuses == ["suppressed", "sent", "sending", "suppressed"]
