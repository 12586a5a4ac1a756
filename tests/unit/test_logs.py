"""Log lines: text or JSON, extras as fields, and every known secret masked wherever it appears."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from pipeline.core.logs import JsonFormatter, RedactSecrets, configure_logging
from pipeline.core.settings import Settings

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
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


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
