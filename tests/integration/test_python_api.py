"""queue_email: the Python host's way in, sent at once after commit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.fake_resend import FakeResend
from pipeline.api import queue_email
from storage import emails
from storage.clock import utcnow
from storage.emails import InvalidEmail
from tests.support.helpers import unique_address, wait_until

pytestmark = pytest.mark.usefixtures("runtime")


def status_of(sessions: sessionmaker[Session], email_id: int) -> str:
    with sessions() as session:
        row = emails.get(session, email_id)
        assert row is not None
        return row.status


def test_queued_email_is_sent_without_waiting_for_a_tick(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    address = unique_address("api")
    email_id = queue_email(address, "Welcome", text="Hello")

    wait_until(lambda: status_of(sessions, email_id) == "sent", what="the email sent")
    assert len(fake_resend.deliveries_to(address)) == 1


def test_email_in_the_callers_transaction_goes_out_only_after_commit(
    sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    kept, dropped = unique_address("commit"), unique_address("rollback")
    with sessions() as session:
        queue_email(dropped, "Never", text="rolled back", session=session)
        session.rollback()
    with sessions() as session:
        email_id = queue_email(kept, "Kept", text="committed", session=session)
        session.commit()

    wait_until(lambda: status_of(sessions, email_id) == "sent", what="the committed email sent")
    assert fake_resend.attempts_for(dropped) == 0


def test_scheduled_email_is_left_for_its_time(sessions: sessionmaker[Session], fake_resend: FakeResend) -> None:
    address = unique_address("api-later")
    email_id = queue_email(address, "Later", text="t", scheduled_at=utcnow() + timedelta(hours=1))

    assert status_of(sessions, email_id) == "pending"
    assert fake_resend.attempts_for(address) == 0


def test_bad_input_raises_and_stores_nothing(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(InvalidEmail, match="not an email address"):
        queue_email("not-an-address", "Subject", text="t")
