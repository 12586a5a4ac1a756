"""The outbox as a provider: each email written to ``<dir>/<key>.eml`` and logged (``dev``, no key set).

Writing the same key twice keeps the first file, as Resend keeps the first send: its
idempotency window is for ever. It is paced as any provider, so `dev` shows the pace a real one keeps.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from pathlib import Path

from pipeline.providers.base import Accepted, BatchAccepted, Capabilities, OutgoingEmail
from pipeline.providers.mime import as_mime

logger = logging.getLogger(__name__)

#: The provider's name in ``EMAIL_PROVIDERS`` and ``email_queue.provider``.
NAME = "outbox"
#: A file written is never written again: a window longer than any replay.
FOREVER = timedelta(days=36_500)


class OutboxProvider:
    """Writes each email to a file named by its key; a key written once is not written again."""

    name = NAME
    capabilities = Capabilities(batch_size=100, idempotency_window=FOREVER)

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def send(self, email: OutgoingEmail) -> Accepted:
        message_id = hashlib.sha256(email.idempotency_key.encode()).hexdigest()[:32]
        path = self.directory / f"{email.idempotency_key}.eml"
        if not path.exists():
            path.write_bytes(as_mime(email, message_id=f"<{message_id}@outbox.minalesh.local>"))
            logger.info("Outbox: %s to %s — %s (%s)", message_id, email.recipient, email.subject, path)
        return Accepted(message_id)

    def send_batch(self, emails: list[OutgoingEmail], *, idempotency_key: str) -> BatchAccepted:
        """Each email to its own file, as ``send`` does: a batch resent writes nothing twice."""
        return BatchAccepted([self.send(email).provider_id for email in emails])


#: The name the tree used before providers were neutral.
OutboxMailer = OutboxProvider
