"""Unit: webhook signatures, event parsing and the webhook settings; no services needed."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from pipeline.core.declare import minutes_ms
from pipeline.core.errors import ConfigError
from pipeline.core.retry_policy import retry_delay_ms
from pipeline.core.settings import Settings
from pipeline.web.intake import (
    SignatureRejected,
    compute_signature,
    parse_signatures,
    signature_header,
    verify_signature,
)
from storage.payments import InvalidEvent, parse_event

SECRET = "whsec_unit"
NOW = 1_800_000_000
BODY = json.dumps(
    {"event_id": "evt_1", "type": "payment.succeeded", "order_id": "MN-1", "amount": 10, "currency": "ETB"}
).encode()


def verify(**overrides: Any) -> None:
    arguments: dict[str, Any] = {
        "secret": SECRET,
        "timestamp": str(NOW),
        "signature": signature_header([SECRET], str(NOW), BODY),
        "body": BODY,
        "now": float(NOW),
    }
    arguments.update(overrides)
    verify_signature(**arguments)


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert compute_signature(SECRET, str(NOW), BODY) == expected
    assert signature_header([SECRET], str(NOW), BODY) == f"v1={expected}"


def test_good_signature_is_accepted() -> None:
    verify()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"signature": signature_header(["another secret"], str(NOW), BODY)}, "does not match"),
        ({"body": BODY.replace(b"10", b"11")}, "does not match"),
        ({"body": BODY + b" "}, "does not match"),
        ({"timestamp": str(NOW + 1)}, "does not match"),
        ({"signature": None}, "are required"),
        ({"timestamp": None}, "are required"),
        ({"signature": ""}, "are required"),
        ({"signature": "v0=" + compute_signature(SECRET, str(NOW), BODY)}, "no v1= value"),
        ({"signature": "garbage"}, "no v1= value"),
        ({"signature": "v1=ünïcode"}, "does not match"),
        ({"timestamp": "soon"}, "unix seconds"),
        ({"timestamp": "-5"}, "unix seconds"),
        ({"timestamp": "1e9"}, "unix seconds"),
        ({"secret": None}, "^signature does not match$"),
        ({"secret": ""}, "^signature does not match$"),
        ({"secret": None, "timestamp": str(NOW - 301)}, "300s"),
    ],
)
def test_bad_signatures_are_rejected(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(SignatureRejected, match=reason):
        verify(**overrides)


@pytest.mark.parametrize(("age", "accepted"), [(0, True), (300, True), (-300, True), (301, False), (-301, False)])
def test_timestamps_more_than_300_seconds_away_are_replays(age: int, accepted: bool) -> None:
    stamp = str(NOW - age)
    signed = {"timestamp": stamp, "signature": signature_header([SECRET], stamp, BODY)}
    if accepted:
        verify(**signed)
    else:
        with pytest.raises(SignatureRejected, match="300s"):
            verify(**signed)


def test_any_v1_value_may_match_during_a_rotation() -> None:
    rotating = signature_header(["old secret", SECRET], str(NOW), BODY)
    assert rotating.count("v1=") == 2
    verify(signature=rotating)
    verify(signature=" v1=" + "0" * 64 + " , v0=abc, v1=" + compute_signature(SECRET, str(NOW), BODY).upper())
    with pytest.raises(SignatureRejected):
        verify(signature=signature_header(["old secret", "older secret"], str(NOW), BODY))


def test_parse_signatures_keeps_only_v1_values() -> None:
    assert parse_signatures("v1=AB, v0=cd,v1=ef ,t=1, v1=") == ["ab", "ef"]


def test_every_candidate_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)  # the module webhook_server calls through
    good = compute_signature(SECRET, str(NOW), BODY)
    verify(signature=f"v1={good},v1={'0' * 64}")
    assert len(calls) == 2  # the match did not stop the loop early


def event(**fields: Any) -> bytes:
    payload: dict[str, Any] = {
        "event_id": "evt_1",
        "type": "payment.failed",
        "order_id": "MN-1",
        "amount": "10.50",
        "currency": "ETB",
    }
    payload.update(fields)
    return json.dumps({k: v for k, v in payload.items() if v is not ...}).encode()


def test_parse_event_keeps_the_whole_payload() -> None:
    parsed = parse_event(event(customer_email="a@example.com", extra={"nested": [1, 2]}))
    assert parsed.event_id == "evt_1" and parsed.type == "payment.failed" and parsed.order_id == "MN-1"
    assert parsed.payload["extra"] == {"nested": [1, 2]}
    assert parse_event(event(event_id=12345, order_id=77)).event_id == "12345"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (event(event_id=...), "missing fields: event_id"),
        (event(type=...), "missing fields: type"),
        (event(order_id=""), "missing fields: order_id"),
        (event(amount=None), "missing fields: amount"),
        (event(currency=..., amount=...), "missing fields: amount, currency"),
        (event(type="payment.refunded"), "type must be one of"),
        (event(amount="ten"), "amount must be a number"),
        (event(amount=True), "amount must be a number"),
        (event(amount=-1), "0 or more"),
        (b'{"event_id": "e", "type": "payment.failed", "order_id": "o", "amount": NaN, "currency": "ETB"}', "not JSON"),
        (event(event_id={"id": 1}), "event_id must be a string"),
        (event(currency=5), "currency must be a string"),
        (event(customer_email=["a@b"]), "customer_email must be a string"),
    ],
)
def test_malformed_events_are_rejected_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        parse_event(body)


def test_webhook_settings_defaults_are_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.webhook_initial_retry_delay_minutes == 1
    assert settings.webhook_max_retry_delay_minutes == 60
    assert settings.webhook_max_retries == 5 and settings.webhook_max_attempts == 6
    assert settings.webhook_schedule == "*/10 * * * *"
    assert settings.webhook_batch_size == 10
    assert settings.webhook_secret("telebirr") is None


def test_provider_secret_wins_over_the_shared_one_and_is_never_printed() -> None:
    settings = Settings.from_env({"CBE_WEBHOOK_SECRET": "cbe-secret", "PAYMENT_WEBHOOK_SECRET": "shared-secret"})
    assert settings.webhook_secret("cbe") == "cbe-secret"
    assert settings.webhook_secret("awash") == "shared-secret"
    assert settings.webhook_secret("generic") == "shared-secret"
    assert "secret" not in repr(settings).replace("webhook_secret", "")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOK_INITIAL_RETRY_DELAY_MINUTES", "0"),
        ("WEBHOOK_MAX_RETRY_DELAY_MINUTES", "never"),
        ("WEBHOOK_MAX_RETRIES", "-1"),
        ("WEBHOOK_SCHEDULE", "every ten minutes"),
        ("WEBHOOK_BATCH_SIZE", "0"),
        ("WEBHOOK_LEASE_MINUTES", "-2"),
    ],
)
def test_invalid_webhook_setting_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}="):
        Settings.from_env({name: value})


def test_max_delay_below_the_initial_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_MAX_RETRY_DELAY_MINUTES must not be below"):
        Settings.from_env({"WEBHOOK_INITIAL_RETRY_DELAY_MINUTES": "5", "WEBHOOK_MAX_RETRY_DELAY_MINUTES": "2"})


def test_the_schedule_is_1_2_4_8_16_minutes_capped_at_60() -> None:
    base, cap = 60_000, 60 * 60_000
    assert [retry_delay_ms(n, base_ms=base, cap_ms=cap) / 60_000 for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_fractional_minutes_give_the_test_schedule() -> None:
    settings = Settings.from_env(
        {"WEBHOOK_INITIAL_RETRY_DELAY_MINUTES": "0.002", "WEBHOOK_MAX_RETRY_DELAY_MINUTES": "0.012"}
    )
    base = minutes_ms(settings.webhook_initial_retry_delay_minutes)
    cap = minutes_ms(settings.webhook_max_retry_delay_minutes)
    assert [retry_delay_ms(n, base_ms=base, cap_ms=cap) for n in range(5)] == [120, 240, 480, 720, 720]


def test_a_timestamp_is_trimmed_but_must_be_at_most_12_ascii_digits() -> None:
    verify(timestamp=f" {NOW} ")  # signed over the digits alone
    for stamp in ("000" + str(NOW), "١٨٠٠٠٠٠٠٠٠"):  # the same number padded to 13 digits; Arabic-Indic digits
        with pytest.raises(SignatureRejected, match="unix seconds"):
            verify(timestamp=stamp)


def test_the_signature_scheme_is_matched_exactly() -> None:
    with pytest.raises(SignatureRejected, match="no v1= value"):
        verify(signature="V1=" + compute_signature(SECRET, str(NOW), BODY))


def test_identifiers_are_trimmed_and_at_most_200_characters() -> None:
    parsed = parse_event(event(event_id="  evt_9 ", order_id=" MN-9"))
    assert (parsed.event_id, parsed.order_id) == ("evt_9", "MN-9")
    assert parsed.payload["event_id"] == "  evt_9 "  # the payload is kept as sent
    assert parse_event(event(event_id="e" * 200)).event_id == "e" * 200


@pytest.mark.parametrize(
    ("amount", "accepted"),
    [(0, True), ("  12.50 ", True), (12.5, True), ("1e3", True), ("Infinity", False), ("-0.01", False)],
)
def test_amounts_are_finite_numbers_of_zero_or_more(amount: Any, accepted: bool) -> None:
    if accepted:
        assert parse_event(event(amount=amount)).payload["amount"] == amount
    else:
        with pytest.raises(InvalidEvent, match="finite number, 0 or more"):
            parse_event(event(amount=amount))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (event(event_id="e" * 201), "event_id must be 1 to 200 characters"),
        (event(order_id="   "), "order_id must be 1 to 200 characters"),
        (event(event_id=True), "event_id must be a string"),
        (event(currency="  "), "currency must be a string"),
        (event().replace(b'"10.50"', b"1e999"), "finite number, 0 or more"),  # a float overflowing to inf
        (event().replace(b'"10.50"', b"Infinity"), "not JSON"),
    ],
)
def test_more_malformed_events_are_rejected_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        parse_event(body)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (event(reason="card\u0000declined"), "reason"),
        (event(customer_name="\ud800"), "customer_name"),
        (event(customer_name="x\udfffy"), "customer_name"),
        (event(event_id="evt\u0000"), "event_id"),
        (event(extra={"nested": ["ok", "\u0000"]}), "extra.nested[1]"),
        (event(extra={"ke\u0000y": 1}), "a key in extra"),
        (event(**{"\ud83d": 1}), "a key"),
    ],
    ids=["nul", "high-surrogate", "low-surrogate", "nul-in-id", "nested", "nul-in-nested-key", "surrogate-key"],
)
def test_text_postgresql_cannot_store_is_an_invalid_event(body: bytes, where: str) -> None:
    """PostgreSQL's text and jsonb refuse NUL and unpaired surrogates: a 400 names them, never a 5xx."""
    with pytest.raises(InvalidEvent) as raised:
        parse_event(body)
    assert str(raised.value) == (
        f"{where} holds \\u0000 or an unpaired surrogate (\\ud800-\\udfff), which cannot be stored"
    )


def test_paired_surrogates_and_other_controls_are_ordinary_text() -> None:
    parsed = parse_event(event(customer_name="Abebe \ud83d\ude00", reason="line\nbreak\u0001"))
    assert parsed.payload["customer_name"] == "Abebe 😀" and parsed.payload["reason"] == "line\nbreak\u0001"
