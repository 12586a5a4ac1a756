"""SMTP as a provider: the standard library's ``smtplib``, one connection per worker thread, kept open.

Why ``smtplib`` and not ``aiosmtplib``: Dramatiq runs actors in threads; a blocking
client in each thread is what the rest of the pipeline does (requests, psycopg2), and
an event loop per thread would buy nothing. One connection per thread
(``threading.local``) is reused between sends and checked with ``NOOP`` after
``IDLE_CHECK_SECONDS`` of silence; a dead one is replaced before anything is sent.

``SMTP_URL``: ``smtp://user:password@host:port`` upgrades with STARTTLS when the
server offers it (``?starttls=required``: refuse a server that does not);
``smtps://`` speaks TLS from the first byte. Each phase is answered neutrally:

* connecting, TLS, login, ``MAIL FROM`` failing, or a ``421`` anywhere before DATA:
  ``NotReached`` (nothing was accepted; the server as a whole is failing);
* ``RCPT`` or ``DATA`` answered 5xx: ``EmailRefused`` (this email fails for good);
* ``RCPT`` or ``DATA`` answered 4xx: ``TransientError`` (this email is retried);
* the connection lost after the message went out and before the ``250``:
  ``OutcomeUnknown``; the retry goes to this same server (never failed over) with the
  same ``Message-ID``, derived from the row (``message_id``), so a resend is the same message.

SMTP has no idempotency key: ``Capabilities.idempotency_window`` is None.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qsl, unquote, urlsplit

from pipeline.core.errors import TransientError
from pipeline.providers.base import (
    Accepted,
    BatchAccepted,
    Capabilities,
    EmailRefused,
    NotReached,
    OutcomeUnknown,
    OutgoingEmail,
    PartlySent,
    ProviderUnavailable,
    Refused,
)
from pipeline.providers.mime import as_mime

logger = logging.getLogger(__name__)

#: The provider's name in ``EMAIL_PROVIDERS`` and ``email_queue.provider``.
NAME = "smtp"
#: Seconds before a silent server counts as failing (connect, each command).
TIMEOUT_SECONDS = 15.0
#: A connection idle this long is checked with NOOP before it is used.
IDLE_CHECK_SECONDS = 30.0
#: Emails handed over per ``send_batch`` call (one by one on one connection).
BATCH_SIZE = 100
#: The server as a whole is not available (RFC 5321).
SERVICE_NOT_AVAILABLE = 421


@dataclass(frozen=True, kw_only=True)
class SmtpServer:
    """``SMTP_URL`` parsed (the password is never logged)."""

    host: str
    port: int
    implicit_tls: bool
    starttls_required: bool
    user: Optional[str]
    password: Optional[str]

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        parsed = urlsplit(url)
        implicit = parsed.scheme == "smtps"
        query = dict(parse_qsl(parsed.query))
        return cls(
            host=parsed.hostname or "localhost",
            port=parsed.port or (465 if implicit else 25),
            implicit_tls=implicit,
            starttls_required=query.get("starttls") == "required",
            user=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
        )


def message_id(email: OutgoingEmail) -> str:
    """``<key@domain of the sender>``: the row's idempotency key, so every attempt is the same message."""
    address = email.sender.rsplit("<", 1)[-1].rstrip(">").strip()
    domain = address.rsplit("@", 1)[-1] or "minalesh.local"
    return f"<{email.idempotency_key}@{domain}>"


def _address(sender: str) -> str:
    return sender.rsplit("<", 1)[-1].rstrip(">").strip()


class _Open:
    """A thread's connection and when it was last used."""

    def __init__(self, client: smtplib.SMTP) -> None:
        self.client = client
        self.used_at = time.monotonic()


class SmtpProvider:
    """Sends over SMTP with a kept-open connection per thread; see the module's docstring."""

    name = NAME
    capabilities = Capabilities(batch_size=BATCH_SIZE, idempotency_window=None)

    def __init__(self, url: str, *, timeout: float = TIMEOUT_SECONDS, tls: Optional[ssl.SSLContext] = None) -> None:
        self.server = SmtpServer.from_url(url)
        self.timeout = timeout
        self.tls = tls or ssl.create_default_context()
        self._local = threading.local()

    # --- the two calls ---------------------------------------------------------------------------

    def send(self, email: OutgoingEmail) -> Accepted:
        mid = message_id(email)
        body = as_mime(email, message_id=mid)
        self._transfer(_address(email.sender), email.recipient, body)
        return Accepted(mid.strip("<>"))

    def send_batch(self, emails: list[OutgoingEmail], *, idempotency_key: str) -> BatchAccepted:
        """One by one on this thread's connection; an email refused for good is listed, any other failure raises.

        A failure part-way raises ``PartlySent`` with the results of the members before
        it, which the batch actor records before the retry: SMTP has no key to answer a
        member sent again, so the retry sends only the members still to send.
        """
        results: list[str | Refused] = []
        for email in emails:
            try:
                results.append(self.send(email).provider_id)
            except EmailRefused as refused:
                results.append(Refused(str(refused)))
            except ProviderUnavailable as failure:
                if not results:
                    raise
                done = f"after {len(results)} of {len(emails)} were answered"
                raise PartlySent(f"{failure} ({done})", results=results, provider=self.name) from failure
        return BatchAccepted(results)

    def close(self) -> None:
        """Close this thread's connection (tests; a worker's connections end with its process)."""
        opened: Optional[_Open] = getattr(self._local, "open", None)
        self._local.open = None
        if opened is not None:
            try:
                opened.client.quit()
            except (smtplib.SMTPException, OSError):
                opened.client.close()

    # --- the conversation ------------------------------------------------------------------------

    def _transfer(self, sender: str, recipient: str, body: bytes) -> None:
        """MAIL, RCPT, DATA on a live connection; a connection found dead before DATA is replaced once."""
        for fresh in (False, True):
            client = self._client(fresh=fresh)
            try:
                self._envelope(client, sender, recipient)
            except (smtplib.SMTPServerDisconnected, OSError) as lost:
                self._drop()
                if fresh:
                    raise NotReached(f"SMTP {self.server.host}: connection lost before DATA ({lost})") from lost
                continue
            self._data(client, body, recipient)
            return

    def _envelope(self, client: smtplib.SMTP, sender: str, recipient: str) -> None:
        code, reply = client.mail(sender)
        if code != 250:
            self._reset(client)
            raise NotReached(f"SMTP {self.server.host} refused MAIL FROM: {code} {_text(reply)}")
        code, reply = client.rcpt(recipient)
        if code in (250, 251):
            return
        self._reset(client)
        detail = f"SMTP {self.server.host} answered RCPT TO {recipient}: {code} {_text(reply)}"
        if code == SERVICE_NOT_AVAILABLE:
            self._drop()
            raise NotReached(detail)
        if 500 <= code < 600:
            raise EmailRefused(detail)
        raise TransientError(detail)

    def _data(self, client: smtplib.SMTP, body: bytes, recipient: str) -> None:
        try:
            client.data(body)
        except smtplib.SMTPDataError as refused:
            self._reset(client)
            code, reply = refused.smtp_code, _text(refused.smtp_error)
            detail = f"SMTP {self.server.host} answered DATA for {recipient}: {code} {reply}"
            if refused.smtp_code == SERVICE_NOT_AVAILABLE:
                self._drop()
                raise NotReached(detail) from refused
            if 500 <= refused.smtp_code < 600:
                raise EmailRefused(detail) from refused
            raise TransientError(detail) from refused
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError) as lost:
            self._drop()
            raise OutcomeUnknown(
                f"SMTP {self.server.host}: connection lost during DATA for {recipient}, outcome unknown ({lost})"
            ) from lost
        opened: Optional[_Open] = getattr(self._local, "open", None)
        if opened is not None:
            opened.used_at = time.monotonic()

    def _client(self, *, fresh: bool) -> smtplib.SMTP:
        opened: Optional[_Open] = getattr(self._local, "open", None)
        if opened is not None and not fresh:
            if time.monotonic() - opened.used_at < IDLE_CHECK_SECONDS or self._alive(opened.client):
                return opened.client
        self._drop()
        client = self._connect()
        self._local.open = _Open(client)
        return client

    def _alive(self, client: smtplib.SMTP) -> bool:
        try:
            return client.noop()[0] == 250
        except (smtplib.SMTPException, OSError):
            return False

    def _connect(self) -> smtplib.SMTP:
        server = self.server
        try:
            client: smtplib.SMTP
            if server.implicit_tls:
                client = smtplib.SMTP_SSL(server.host, server.port, timeout=self.timeout, context=self.tls)
            else:
                client = smtplib.SMTP(server.host, server.port, timeout=self.timeout)
            client.ehlo_or_helo_if_needed()
            if not server.implicit_tls:
                if client.has_extn("starttls"):
                    client.starttls(context=self.tls)
                    client.ehlo()
                elif server.starttls_required:
                    client.close()
                    raise NotReached(f"SMTP {server.host} does not offer STARTTLS, and SMTP_URL requires it")
            if server.user is not None:
                client.login(server.user, server.password or "")
        except NotReached:
            raise
        except smtplib.SMTPAuthenticationError as refused:
            raise NotReached(f"SMTP {server.host} refused the login: {refused.smtp_code}") from refused
        except (smtplib.SMTPException, OSError, socket.timeout) as failed:
            raise NotReached(
                f"SMTP {server.host}:{server.port} unreachable ({type(failed).__name__}: {failed})"
            ) from failed
        return client

    def _reset(self, client: smtplib.SMTP) -> None:
        try:
            client.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        opened: Optional[_Open] = getattr(self._local, "open", None)
        self._local.open = None
        if opened is not None:
            try:
                opened.client.close()
            except OSError:
                pass


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
