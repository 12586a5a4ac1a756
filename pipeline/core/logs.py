"""One log format for every process, text or JSON lines, with every known secret masked.

``LOG_FORMAT=text`` (the default) writes ``time LEVEL pid logger: message``;
``LOG_FORMAT=json`` one object a line: ``time`` (ISO 8601, UTC), ``level``,
``logger``, ``process``, ``message``, every ``extra`` the call passed as a field
of its own (the per-item line's ``item``, ``actor``, ``attempt``, ``outcome``,
``message_id``), and ``exception`` with the traceback when there is one.

Secrets are kept out of log calls in the first place (the settings' repr, the
URLs' ``mask_password``, the mailer's error messages). ``RedactSecrets`` is the
last line of defence: every secret value this process knows (``Settings.secret_values``)
is replaced by ``***`` in the message, its traceback and its extras, before any
handler formats it, in every form a URL may carry it: as written, percent-encoded
(any characters of it, hex in either case) and with ``+`` for a space. A base64
token (``openssl rand -base64 32``) has ``+``, ``/`` and ``=``, which a client
encodes, and uvicorn's access line shows the target as the client sent it. The
value of a query parameter named like a credential (``token``, ``secret``, ``key``,
``password``, ``signature``, ``auth``, in any case and part of any name) is masked
whatever it holds, a wrong token included.

An expected failure of a message (a retry, a deferral, a refusal: ``pipeline.core.errors.expected``)
is told once, at WARNING and without a traceback, by the message's own line
(``pipeline.middleware.item_log``); ``ExpectedFailures`` drops Dramatiq's line about it, which
would say "unhandled exception" at ERROR with the traceback. A bug keeps Dramatiq's line.
handler formats it. A lost RabbitMQ is one line per reconnect attempt (``pipeline.core.outages``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pipeline.core import outages
from pipeline.core.errors import expected
from pipeline.core.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
#: What a secret is shown as.
MASK = "***"
#: Shorter values are not masked: masking a two-letter password would garble every line.
MIN_SECRET_LENGTH = 4
#: A query parameter whose name holds one of these words (any case) is masked whatever its value.
CREDENTIAL_WORDS = ("token", "secret", "password", "passwd", "key", "signature", "auth")
_CREDENTIAL_PARAMETER = re.compile(
    r"([?&;][^=&#\s\"']*(?:" + "|".join(CREDENTIAL_WORDS) + r")[^=&#\s\"']*=)[^&#\s\"']*", re.IGNORECASE
)
#: The attributes every ``LogRecord`` has (and uvicorn's ANSI-coloured copy of its message); any other is an extra.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}
#: The logger on which Dramatiq's worker threads report what an actor raised.
WORKER_THREAD_LOGGER = "dramatiq.worker.WorkerThread"
#: Dramatiq's INFO line for an exception in the actor's ``throws`` (no traceback).
DRAMATIQ_THROWN = "Failed to process message %s with expected exception %s."


def configure_logging(settings: Settings) -> None:
    """Replace the root handlers with one on stderr, in LOG_FORMAT, at LOG_LEVEL, secrets masked.

    Replacing (not adding) matters in a Dramatiq worker process, whose root logger the
    ``dramatiq`` command configured already; its stderr is the pipe to the main process.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(LOG_FORMAT))
    handler.addFilter(outages.OneLinePerAttempt())  # first: RedactSecrets then masks the words it adds
    handler.addFilter(RedactSecrets(settings.secret_values()))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    outages.quiet_pika()
    worker_threads = logging.getLogger(WORKER_THREAD_LOGGER)
    if not any(isinstance(installed, ExpectedFailures) for installed in worker_threads.filters):
        worker_threads.addFilter(ExpectedFailures())


class ExpectedFailures(logging.Filter):
    """Drops Dramatiq's line about an actor's exception when the failure was expected.

    Dramatiq logs every exception an actor raises, before any middleware has settled the
    message: at ERROR with its traceback ("unhandled exception"), or at INFO when the actor
    declared it in ``throws``. For an expected failure (``pipeline.core.errors.expected``) and a
    declared one, the backoff middleware's line of the message (WARNING: item, actor, attempt,
    outcome, and the cause as ``error``) is the only line; anything else keeps Dramatiq's.
    Installed on ``WORKER_THREAD_LOGGER`` only, so no other logger's records are looked at.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == DRAMATIQ_THROWN:
            return False
        raised = record.exc_info[1] if record.exc_info else None
        return raised is None or not expected(raised)


class JsonFormatter(logging.Formatter):
    """One JSON object a line; extras as fields of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        entry.update(extras_of(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class RedactSecrets(logging.Filter):
    """Masks every known secret value in a record: its message, traceback, stack and extras."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        #: Longest first, so a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._patterns = [_any_encoding(secret) for secret in self.secrets]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, with the raw text masked
            record.msg = self.redact(str(record.msg))
            return True
        record.msg, record.args = self.redact(message), None
        if not self.secrets:
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name, value in extras_of(record).items():
            setattr(record, name, self.redact_value(value))
        return True

    def redact(self, text: str) -> str:
        """``text`` with credential parameters' values and every known secret, in any encoding, masked."""
        text = _CREDENTIAL_PARAMETER.sub(lambda found: found.group(1) + MASK, text)
        for pattern in self._patterns:
            text = pattern.sub(MASK, text)
        return text

    def redact_value(self, value: Any) -> Any:
        """A string masked; a dict's or list's strings masked inside; anything else as it is."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {key: self.redact_value(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact_value(item) for item in value]
        return value


def _any_encoding(secret: str) -> re.Pattern[str]:
    """A pattern of ``secret`` with each character as written or percent-encoded (hex in either case)."""
    parts = []
    for char in secret:
        encoded = "".join(f"%{_hex_digit(byte >> 4)}{_hex_digit(byte & 15)}" for byte in char.encode("utf-8"))
        plus = r"|\+" if char == " " else ""
        parts.append(f"(?:{re.escape(char)}|{encoded}{plus})")
    return re.compile("".join(parts))


def _hex_digit(value: int) -> str:
    digit = f"{value:X}"
    return f"[{digit}{digit.lower()}]" if digit.isalpha() else digit


def extras_of(record: logging.LogRecord) -> dict[str, Any]:
    """What the log call passed in ``extra``."""
    return {name: value for name, value in vars(record).items() if name not in _RECORD_ATTRIBUTES}
