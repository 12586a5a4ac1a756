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
handler formats it. A lost RabbitMQ is one line per reconnect attempt (``pipeline.core.outages``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pipeline.core import outages
from pipeline.core.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
#: What a secret is shown as.
MASK = "***"
#: Shorter values are not masked: masking a two-letter password would garble every line.
MIN_SECRET_LENGTH = 4
#: The attributes every ``LogRecord`` has (and uvicorn's ANSI-coloured copy of its message); any other is an extra.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


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

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, with the raw text masked
            record.msg = self.redact(str(record.msg))
            return True
        record.msg, record.args = self.redact(message), None
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
        for secret in self.secrets:
            text = text.replace(secret, MASK)
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


def extras_of(record: logging.LogRecord) -> dict[str, Any]:
    """What the log call passed in ``extra``."""
    return {name: value for name, value in vars(record).items() if name not in _RECORD_ATTRIBUTES}
