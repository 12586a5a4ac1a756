"""What both plain pipelines share: the settings they read, the claim, the send.

Each statement is one round trip on a plain psycopg2 connection in autocommit mode:
the claim (one ``UPDATE … RETURNING`` per batch), then per email a SELECT, the
provider request, and an UPDATE. The SDK is used as its README shows it (module-level
key and URL, its own HTTP client, which opens a connection per request).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import resend

#: What the fan-out claims per statement (the project's EMAIL_BATCH_SIZE default).
BATCH_SIZE = 500
#: The sender of every email.
EMAIL_FROM = "Minalesh <no-reply@minalesh.local>"

#: Pending and due emails, oldest first, claimed so no other fan-out takes them.
CLAIM = """
WITH due AS MATERIALIZED (
    SELECT id FROM email_queue
    WHERE status = 'pending' AND (scheduled_at IS NULL OR scheduled_at <= now())
    ORDER BY id LIMIT %s
    FOR UPDATE SKIP LOCKED
)
UPDATE email_queue SET status = 'queued', updated_at = now()
FROM due WHERE email_queue.id = due.id
RETURNING email_queue.id
"""
#: The row a task sends.
SELECT = "SELECT id, recipient, subject, html, text, created_at FROM email_queue WHERE id = %s"
#: The provider took it.
MARK_SENT = """
UPDATE email_queue SET status = 'sent', provider_message_id = %s, sent_at = now(), updated_at = now()
WHERE id = %s
"""


def database_url() -> str:
    return os.environ["DATABASE_URL"]


def broker_url() -> str:
    return os.environ["BROKER_URL"]


def connect() -> Any:
    """One autocommit connection: each statement is its own transaction and round trip."""
    connection = psycopg2.connect(database_url())
    connection.autocommit = True
    return connection


def claim_batches(connection: Any) -> Iterator[list[int]]:
    """Claim due emails a batch at a time until none is left."""
    while True:
        with connection.cursor() as cursor:
            cursor.execute(CLAIM, (BATCH_SIZE,))
            ids = sorted(row[0] for row in cursor.fetchall())
        if ids:
            yield ids
        if len(ids) < BATCH_SIZE:
            return


def fan_out(send: Callable[[int], object]) -> int:
    """Claim every due email and ``send`` one task per email; return how many."""
    connection = connect()
    try:
        count = 0
        for ids in claim_batches(connection):
            for email_id in ids:
                send(email_id)
            count += len(ids)
        return count
    finally:
        connection.close()


def send_email(connection: Any, email_id: int) -> None:
    """SELECT the row, send it through the SDK with an idempotency key, mark it sent."""
    with connection.cursor() as cursor:
        cursor.execute(SELECT, (email_id,))
        row = cursor.fetchone()
    if row is None:
        return
    _, recipient, subject, html, text, created_at = row
    params: dict[str, Any] = {"from": EMAIL_FROM, "to": [recipient], "subject": subject}
    if html is not None:
        params["html"] = html
    if text is not None:
        params["text"] = text
    key = f"minalesh-email-{email_id}-{int(created_at.timestamp() * 1_000_000)}"
    sent = resend.Emails.send(params, {"idempotency_key": key})  # type: ignore[arg-type]
    with connection.cursor() as cursor:
        cursor.execute(MARK_SENT, (sent["id"], email_id))


def configure_resend() -> None:
    """The SDK reads RESEND_API_KEY and RESEND_API_URL at import; say so explicitly."""
    resend.api_key = os.environ["RESEND_API_KEY"]
    resend.api_url = os.environ["RESEND_API_URL"]


def command_line(name: str, fan_out_command: Callable[[], int]) -> None:
    """``python -m bench.peers.<name> fan-out``: one fan-out, printing how many it sent."""
    if sys.argv[1:] != ["fan-out"]:
        raise SystemExit(f"usage: python -m bench.peers.{name} fan-out")
    print(fan_out_command())
