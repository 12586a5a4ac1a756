"""Poison messages on the real RabbitMQ: archived with their raw body, never run; `dlq` lists and skips them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from actors.emails import send_email
from bench.harness.fake_resend import FakeResend
from bench.harness.processes import run_cli
from pipeline.core.runtime import Runtime
from storage import dead_letters, emails
from storage.models import DeadLetter
from tests.support.dlq_support import dlq_json, dramatiq_body, garbage, publish, raw_letters
from tests.support.helpers import insert_email, unique_address, wait_until

pytestmark = pytest.mark.usefixtures("runtime")


def dead_letter(sessions: sessionmaker[Session], message_id: str) -> DeadLetter | None:
    with sessions() as session:
        return dead_letters.get_by_message_id(session, message_id)


def test_garbage_unknown_actor_and_misfitting_arguments_are_dead_lettered_while_sending_goes_on(
    runtime: Runtime,
    sessions: sessionmaker[Session],
    fake_resend: FakeResend,
    environment: dict[str, str],
    tmp_path: Path,
) -> None:
    victim = unique_address("victim")
    good = unique_address("after-poison")
    with sessions.begin() as session:
        victim_id = insert_email(session, victim)
    body = garbage("poison-test")
    unknown_id, unknown = dramatiq_body("no_such_actor", ["bad\u0000arg", 1])
    misfit_id, misfitting = dramatiq_body("send_email", [victim_id, "extra"], kwargs={"urgent": True})
    publish(runtime.settings.broker_url, "emails", [body, unknown, misfitting])

    with sessions.begin() as session:
        good_id = insert_email(session, good)
    send_email.send(good_id)
    wait_until(lambda: len(fake_resend.deliveries_to(good)) == 1, what="the good email sent after the poison")
    letters = {
        kind: wait_until(lambda m=message_id: dead_letter(sessions, m), what=f"the {kind} dead letter")
        for kind, message_id in (("unknown", unknown_id), ("misfit", misfit_id))
    }
    (letters["garbage"],) = wait_until(lambda: raw_letters(sessions, "poison-test"), what="the garbage dead letter")
    garbage_id = letters["garbage"].message_id

    garbage_letter, unknown_letter, misfit_letter = letters["garbage"], letters["unknown"], letters["misfit"]
    assert garbage_letter.actor is None and garbage_letter.error.startswith("DecodeError")
    assert garbage_letter.raw_body is not None and "not a message poison-test" in garbage_letter.raw_body
    assert unknown_letter.error == "ActorNotFound: no actor named 'no_such_actor'"
    assert unknown_letter.args == ["bad\ufffdarg", 1]  # PostgreSQL refuses NUL: replaced, not lost
    assert '"no_such_actor"' in (unknown_letter.raw_body or "")
    assert misfit_letter.error == (
        "PoisonMessage: arguments do not fit send_email(email_id): too many positional arguments"
    )
    assert misfit_letter.retries == 0 and '"extra"' in (misfit_letter.raw_body or "")
    assert all(letter.queue == "emails.XQ" for letter in letters.values())
    # The misfit never ran, was never retried, and its hooks never touched the email its first argument names.
    with sessions() as session:
        row = emails.get(session, victim_id)
        assert row is not None and (row.status, row.attempts) == ("pending", 0)
    assert fake_resend.attempts_for(victim) == 0

    listed = {letter["message_id"]: letter for letter in dlq_json(environment, tmp_path, "list", "--limit", "0")}
    assert {garbage_id, unknown_id, misfit_id} <= set(listed)
    assert listed[garbage_id]["raw"] is True and listed[garbage_id]["actor"] is None
    assert listed[misfit_id]["actor"] == "send_email" and listed[misfit_id]["retries"] == 0

    replay = run_cli("dlq", "replay", *(str(letter.id) for letter in letters.values()), env=environment, cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr
    skipped = [line for line in replay.stdout.splitlines() if line.startswith("#") and " not replayable: " in line]
    assert len(skipped) == 3, replay.stdout
    assert "Replayed 0 of 3 dead letters; 3 not replayable." in replay.stdout
