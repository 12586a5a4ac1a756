"""The smtp provider against a real SMTP server (aiosmtpd): Message-IDs, refusals, a drop after DATA."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.core.errors import TransientError
from pipeline.providers.base import EmailRefused, NotReached, OutcomeUnknown, OutgoingEmail, PartlySent, Refused
from pipeline.providers.smtp import SmtpProvider, message_id
from tests.support.smtp_support import RecordingHandler, free_port, smtp_server


@pytest.fixture
def server() -> Iterator[tuple[RecordingHandler, str]]:
    with smtp_server() as running:
        yield running


def outgoing(n: int, recipient: str) -> OutgoingEmail:
    return OutgoingEmail(
        sender="Shop <shop@minalesh.test>",
        recipient=recipient,
        subject=f"Order {n}",
        html=f"<p>order {n}</p>",
        text=f"order {n}",
        idempotency_key=f"minalesh-email-{n}-1700000000000000",
        email_id=n,
    )


def test_each_email_once_with_its_own_message_id_date_and_both_parts_on_one_connection(
    server: tuple[RecordingHandler, str],
) -> None:
    handler, url = server
    provider = SmtpProvider(url)
    ids = [provider.send(outgoing(n, f"r{n}@example.com")).provider_id for n in range(50)]
    provider.close()
    assert len(set(ids)) == 50
    got = [handler.to(f"r{n}@example.com") for n in range(50)]
    assert all(len(messages) == 1 for messages in got)
    assert {messages[0].message_id for messages in got} == {f"<{mid}>" for mid in ids}
    assert all(messages[0].has_date and messages[0].parts == ("text/plain", "text/html") for messages in got)


def test_a_550_to_rcpt_refuses_that_email_only_and_the_connection_goes_on(
    server: tuple[RecordingHandler, str],
) -> None:
    handler, url = server
    handler.refused.add("nobody@example.com")
    provider = SmtpProvider(url)
    with pytest.raises(EmailRefused, match="550"):
        provider.send(outgoing(1, "nobody@example.com"))
    provider.send(outgoing(2, "somebody@example.com"))
    answer = provider.send_batch([outgoing(3, "nobody@example.com"), outgoing(4, "b@example.com")], idempotency_key="k")
    provider.close()
    assert isinstance(answer.results[0], Refused) and isinstance(answer.results[1], str)
    assert not isinstance(EmailRefused("x"), TransientError)


def test_a_connection_dropped_after_data_is_outcome_unknown_and_the_resend_is_the_same_message(
    server: tuple[RecordingHandler, str],
) -> None:
    handler, url = server
    handler.drop_once.add("dropped@example.com")
    provider = SmtpProvider(url)
    email = outgoing(7, "dropped@example.com")
    with pytest.raises(OutcomeUnknown):
        provider.send(email)
    provider.send(email)
    provider.close()
    received = handler.to("dropped@example.com")
    assert [message.message_id for message in received] == [message_id(email)] * 2


def test_a_batch_that_fails_part_way_says_which_members_were_answered(server: tuple[RecordingHandler, str]) -> None:
    """So the batch actor records them before the retry, which sends only the rest (SMTP has no key)."""
    handler, url = server
    handler.drop_once.add("dropped@example.com")
    handler.refused.add("nobody@example.com")
    provider = SmtpProvider(url)
    batch = [outgoing(1, "a@example.com"), outgoing(2, "nobody@example.com"), outgoing(3, "dropped@example.com")]
    with pytest.raises(PartlySent) as raised:
        provider.send_batch([*batch, outgoing(4, "b@example.com")], idempotency_key="k")
    handler.drop_once.add("first@example.com")
    with pytest.raises(OutcomeUnknown) as first:  # nothing answered: the failure itself, not PartlySent
        provider.send_batch([outgoing(5, "first@example.com")], idempotency_key="k2")
    provider.close()
    results = raised.value.results
    assert len(results) == 2 and isinstance(results[0], str) and isinstance(results[1], Refused)
    assert raised.value.maybe_accepted and raised.value.provider == "smtp"
    assert not isinstance(first.value, PartlySent)
    assert handler.to("b@example.com") == []


def test_a_server_that_is_down_is_not_reached_and_starttls_required_refuses_a_plain_server(
    server: tuple[RecordingHandler, str],
) -> None:
    _, url = server
    with pytest.raises(NotReached):
        SmtpProvider(f"smtp://127.0.0.1:{free_port()}").send(outgoing(1, "a@example.com"))
    with pytest.raises(NotReached, match="STARTTLS"):
        SmtpProvider(f"{url}?starttls=required").send(outgoing(1, "a@example.com"))
