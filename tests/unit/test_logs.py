"""Log lines: text or JSON, extras as fields, every known secret masked wherever it appears, and
Dramatiq's "unhandled exception" kept for bugs only."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy.exc import OperationalError

from pipeline.core.errors import (
    ConfigError,
    Deferred,
    PermanentError,
    RateLimited,
    RetriesExhausted,
    TransientError,
    expected,
)
from pipeline.core.logs import DRAMATIQ_THROWN, WORKER_THREAD_LOGGER, JsonFormatter, RedactSecrets, configure_logging
from pipeline.core.settings import Settings
from storage.errors import ItemNotFound

SECRETS = {
    "RESEND_API_KEY": "re_live_abcdef123",
    "PAYMENT_WEBHOOK_SECRET": "whsec_shared_987",
    "TELEBIRR_WEBHOOK_SECRET": "whsec_tele_654",
    "METRICS_TOKEN": "scrape-token-321",
    "DATABASE_URL": "postgresql://shop:pg-p%40ss-42@db:5432/shop",
    "BROKER_URL": "amqp://shop:mq-pass-77@rabbit-1:5672/%2F;amqp://shop:mq-pass-88@rabbit-2:5672/%2F",
}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger configured as a process does, writing to a buffer; restored afterwards."""
    root, worker_threads = logging.getLogger(), logging.getLogger(WORKER_THREAD_LOGGER)
    saved_handlers, saved_level, saved_filters = root.handlers[:], root.level, worker_threads.filters[:]
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    worker_threads.filters[:] = saved_filters


def configure(stream: io.StringIO, **environ: str) -> None:
    configure_logging(Settings.from_env({**SECRETS, **environ}))
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)


def test_json_lines_carry_the_extras_as_fields(captured: io.StringIO) -> None:
    configure(captured, LOG_FORMAT="json")
    logging.getLogger("probe").info("item=%s done", 42, extra={"item": 42, "outcome": "sent"})

    entry = json.loads(captured.getvalue())
    assert {key: entry[key] for key in ("level", "logger", "message", "item", "outcome")} == {
        "level": "INFO",
        "logger": "probe",
        "message": "item=42 done",
        "item": 42,
        "outcome": "sent",
    }
    assert entry["time"].endswith("+00:00") and isinstance(entry["process"], int)


def test_text_is_the_default(captured: io.StringIO) -> None:
    configure(captured)
    logging.getLogger("probe").warning("plain %s", "text")
    line = captured.getvalue().rstrip()
    assert " WARNING " in line and line.endswith(" probe: plain text") and not line.startswith("{")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_secret_is_masked_in_message_arguments_traceback_and_extras(
    captured: io.StringIO, log_format: str
) -> None:
    configure(captured, LOG_FORMAT=log_format)
    logger = logging.getLogger("probe")
    settings = Settings.from_env(SECRETS)
    logger.error("key %s and url %s", settings.resend_api_key, settings.database_url)
    logger.warning("headers", extra={"headers": {"Authorization": f"Bearer {SECRETS['METRICS_TOKEN']}"}})
    try:
        raise ConnectionError(f"cannot reach {SECRETS['BROKER_URL']} with whsec_tele_654")
    except ConnectionError:
        logger.exception("broker down")

    written = captured.getvalue()
    for secret in ("re_live_abcdef123", "scrape-token-321", "pg-p%40ss-42", "pg-p@ss-42", "mq-pass-77", "mq-pass-88",
                   "whsec_tele_654"):
        assert secret not in written
    assert written.count("***") >= 6


def test_the_filter_masks_decoded_passwords_and_the_longest_secret_first() -> None:
    redact = RedactSecrets(["abcd", "abcdefgh", "xy"])  # "xy" is too short to mask
    assert redact.redact("abcdefgh abcd xy") == "*** *** xy"


#: A CRON_SECRET as ``openssl rand -base64 32`` makes them: ``+``, ``/`` and ``=`` change when URL-encoded.
BASE64_SECRET = "q+3xT/9kLm2Zp8Rw+Vb1Nc4Hd6Jf0Gs/Ya7Ue5Io3Q="


def access_line(target: str) -> logging.LogRecord:
    """uvicorn's access log record of a request for ``target`` (its format and arguments, as uvicorn logs it)."""
    arguments = ("10.0.0.7:5123", "GET", target, "1.1", 401)
    return logging.makeLogRecord({"name": "uvicorn.access", "msg": '%s - "%s %s HTTP/%s" %d', "args": arguments})


@pytest.mark.parametrize(
    "written",
    [
        BASE64_SECRET,
        quote(BASE64_SECRET, safe=""),
        quote(BASE64_SECRET, safe="/"),
        quote_plus(BASE64_SECRET),
        re.sub("%[0-9A-F]{2}", lambda hex: hex.group().lower(), quote(BASE64_SECRET, safe="")),
        "".join(f"%{byte:02X}" for byte in BASE64_SECRET.encode()),  # every character encoded
    ],
    ids=["as-written", "encoded", "encoded-but-slash", "plus-form", "lower-hex", "all-encoded"],
)
def test_a_secret_in_a_query_string_is_masked_in_every_encoding(written: str) -> None:
    """A client putting CRON_SECRET in ``?token=`` got 401 and the access line kept it in clear, URL-encoded."""
    record = access_line(f"/api/cron/retry-webhooks?other={written}&x=1")
    RedactSecrets([BASE64_SECRET]).filter(record)
    line = record.getMessage()
    assert "other=***&x=1" in line, line


@pytest.mark.parametrize("name", ["token", "access_token", "secret", "api_key", "password", "X-Signature", "AUTH"])
def test_a_query_parameter_named_like_a_credential_is_masked_whatever_it_holds(name: str) -> None:
    record = access_line(f"/api/ops/stats?limit=5&{name}=not-a-known-secret%2B&q=abc")
    RedactSecrets([]).filter(record)
    assert record.getMessage().endswith(f'/api/ops/stats?limit=5&{name}=***&q=abc HTTP/1.1" 401'), record.getMessage()


def test_a_record_whose_arguments_do_not_fit_still_reaches_the_handler() -> None:
    record = logging.makeLogRecord({"msg": "two %s %s secret-value", "args": ("one",)})
    assert RedactSecrets(["secret-value"]).filter(record)
    assert record.msg == "two %s %s ***"


def test_json_formatter_keeps_a_traceback_as_one_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        record = logging.makeLogRecord({"msg": "failed", "exc_info": (type(exc), exc, exc.__traceback__)})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed" and "ValueError: boom" in entry["exception"]


# --- expected failures against bugs ---------------------------------------------------------------

UNHANDLED = "Failed to process message %s with unhandled exception."


def dramatiq_reports(exception: Exception) -> None:
    """What Dramatiq's worker thread logs when an actor raises ``exception`` (its ``throws`` aside)."""
    try:
        raise exception
    except Exception:
        logging.getLogger(WORKER_THREAD_LOGGER).error(UNHANDLED, "send_email(3)", exc_info=True)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_dramatiqs_line_is_dropped_for_an_expected_failure_and_kept_with_its_traceback_for_a_bug(
    captured: io.StringIO, log_format: str
) -> None:
    configure(captured, LOG_FORMAT=log_format)
    configure(captured, LOG_FORMAT=log_format)  # a second configuration installs no second filter

    dramatiq_reports(TransientError("Resend 500 application_error: down"))
    logging.getLogger(WORKER_THREAD_LOGGER).info(DRAMATIQ_THROWN, "send_email(3)", "PermanentError")
    assert captured.getvalue() == ""

    dramatiq_reports(KeyError(f"key {SECRETS['RESEND_API_KEY']}"))
    written = captured.getvalue()
    assert written.count("unhandled exception") == 1 and "Traceback" in written and "KeyError" in written
    assert SECRETS["RESEND_API_KEY"] not in written  # the filter of secrets still applies
    if log_format == "json":
        entry = json.loads(written)
        assert entry["level"] == "ERROR" and "KeyError" in entry["exception"]


@pytest.mark.parametrize(
    ("exception", "is_expected"),
    [
        (TransientError("Resend 500"), True),
        (PermanentError("Resend 422"), True),
        (RetriesExhausted("email 3: attempt 5 started, 4 allowed"), True),
        (RateLimited("429", retry_after=1), True),
        (Deferred("later", retry_after=1), True),
        (OperationalError("SELECT 1", {}, ConnectionError("connection refused")), True),  # the database, for now
        (ValueError("bad data"), False),
        (KeyError("missing"), False),
        (ItemNotFound("no email 3"), False),  # ours, but retried as a bug is
        (ConfigError("RESEND_API_KEY is missing"), False),
    ],
)
def test_expected_failures_are_the_ones_the_backoff_settles_by_class(exception: Exception, is_expected: bool) -> None:
    assert expected(exception) is is_expected
