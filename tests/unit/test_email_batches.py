"""A batch message with nothing to send now, on the dev mode's SQLite: redelivered, or of no batch at all.

``deliver_batch`` asks ``storage.leases.not_started`` what to do when none of the
members' attempts started (they were sent, given up, or their retry is not due);
a message whose batch has no members at all is skipped. Neither may reach the provider.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Optional

import pytest
from sqlalchemy.orm import Session, sessionmaker

from actors import email_batches
from pipeline.core import runtime
from pipeline.core.attempts import GivenUpEarlier
from pipeline.core.errors import Deferred
from pipeline.core.outcomes import Outcome, clear, take_report
from pipeline.core.settings import Settings
from storage import batches, emails, leases
from storage.models import EmailPriority

#: The message id of the batch message: the members' lease holder once it started them.
MESSAGE_ID = "batch-message-1"
LEASE = timedelta(minutes=5)


class Unreachable:
    """The mailer and the limiter of these tests: nothing here may send."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the provider was reached ({name})")


@pytest.fixture
def sessions(lite: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> sessionmaker[Session]:
    settings = Settings.from_env({})
    current = SimpleNamespace(sessions=lite, settings=settings, mailer=Unreachable(), limiter=Unreachable())
    monkeypatch.setattr(runtime, "current", lambda: current)
    clear()
    return lite


def delivered_by(monkeypatch: pytest.MonkeyPatch, holder: Optional[str], batch_id: int) -> None:
    """``deliver_batch`` as the worker runs it for the message ``holder`` (None: outside a worker)."""
    monkeypatch.setattr(email_batches, "current_message_id", lambda: holder)
    email_batches.deliver_batch(batch_id, transactional=False)


def started_batch(sessions: sessionmaker[Session], size: int = 2) -> tuple[int, list[int]]:
    """A batch of ``size`` bulk emails whose attempts ``MESSAGE_ID`` started."""
    with sessions.begin() as session:
        ids = [
            emails.enqueue(
                session, recipient=f"r{n}@example.com", subject="s", html="<p>x</p>", priority=EmailPriority.BULK
            )
            for n in range(size)
        ]
        (batch_id,) = batches.form(session, ids, size=100)
        leases.start_attempts(emails.TABLE, session, ids, lease=LEASE, max_attempts=5, holder=MESSAGE_ID)
    return batch_id, ids


def test_a_batch_redelivered_after_its_members_were_sent_is_skipped(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id, ids = started_batch(sessions)
    with sessions.begin() as session:
        for email_id in ids:
            emails.mark_sent(session, email_id, f"provider-{email_id}")

    delivered_by(monkeypatch, MESSAGE_ID, batch_id)

    assert take_report() == (Outcome.SKIPPED, {})


def test_a_batch_redelivered_after_it_gave_its_members_up_is_dead_lettered_again(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id, ids = started_batch(sessions)
    with sessions.begin() as session:
        leases.give_up(emails.TABLE, session, ids, error="TransientError: 500")

    with pytest.raises(GivenUpEarlier):
        delivered_by(monkeypatch, MESSAGE_ID, batch_id)


def test_a_batch_message_back_before_its_retry_is_due_comes_back_later(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id, ids = started_batch(sessions)
    with sessions.begin() as session:
        leases.schedule_retry(
            emails.TABLE, session, ids, error="TransientError: 500", delay=timedelta(hours=1), lease=LEASE, refund=False
        )

    with pytest.raises(Deferred):
        delivered_by(monkeypatch, MESSAGE_ID, batch_id)


def test_a_message_of_no_batch_is_skipped(sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    delivered_by(monkeypatch, MESSAGE_ID, 404)

    assert take_report() == (Outcome.SKIPPED, {})
