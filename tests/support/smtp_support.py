"""A real SMTP server for tests (aiosmtpd) on loopback, recording what it accepted and scriptable.

``refuse`` answers RCPT of an address with 550; ``drop_after_data`` stores the
message of an address and then drops the connection before its ``250`` (once per
address): the client cannot know it was accepted.
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class Received:
    recipient: str
    message_id: str
    has_date: bool
    parts: tuple[str, ...]


class RecordingHandler:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.refused: set[str] = set()
        self.drop_once: set[str] = set()
        self.rcpt_seen: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        with self.lock:
            self.rcpt_seen.append(address)
            if address in self.refused:
                return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.SMTP)
        parts = tuple(part.get_content_type() for part in parsed.walk() if not part.is_multipart())
        drop = False
        with self.lock:
            for recipient in envelope.rcpt_tos:
                self.received.append(Received(recipient, str(parsed["Message-ID"]), parsed["Date"] is not None, parts))
                if recipient in self.drop_once:
                    self.drop_once.discard(recipient)
                    drop = True
        if drop:
            server.transport.abort()
        return "250 Message accepted for delivery"

    def to(self, recipient: str) -> list[Received]:
        with self.lock:
            return [message for message in self.received if message.recipient == recipient]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def smtp_server() -> Iterator[tuple[RecordingHandler, str]]:
    """A running server and its ``SMTP_URL`` (plain: this server offers no STARTTLS)."""
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()
