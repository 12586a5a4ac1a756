"""Tests of the fake Resend server, through the real SDK and raw HTTP.

Why: integration tests of the email actors trust this fake to behave like
Resend; these tests pin that behaviour so a regression in the fake cannot
silently make those tests meaningless.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import resend
from resend.exceptions import (
    ApplicationError,
    InvalidApiKeyError,
    MissingRequiredFieldsError,
    RateLimitError,
    ResendError,
)
from resend.http_client_requests import RequestsClient

from bench.harness.fake_resend import FakeResend

SENDER = "Minalesh <orders@minalesh.test>"
CUSTOMER = "customer@example.com"


def params(to: str | list[str] = CUSTOMER, subject: str = "Your order") -> dict[str, Any]:
    """A valid send body."""
    return {"from": SENDER, "to": to, "subject": subject, "html": "<p>Thanks</p>"}


def post(fake: FakeResend, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    """POST /emails with the right key unless headers say otherwise."""
    sent = {"Authorization": f"Bearer {fake.api_key}", **(headers or {})}
    return requests.post(f"{fake.url}/emails", json=body, headers=sent, timeout=5)


def assert_error(response: requests.Response, status: int, name: str) -> None:
    """Resend error bodies are exactly statusCode, name and message, as JSON."""
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"statusCode", "name", "message"}
    assert body["statusCode"] == status
    assert body["name"] == name
    assert isinstance(body["message"], str) and body["message"]


@pytest.fixture
def fake() -> Iterator[FakeResend]:
    with FakeResend() as server:
        yield server


@pytest.fixture
def sdk(fake: FakeResend, monkeypatch: pytest.MonkeyPatch) -> FakeResend:
    """Point the SDK at the fake; module attributes because RESEND_API_URL is read at import."""
    monkeypatch.setattr(resend, "api_url", fake.url)
    monkeypatch.setattr(resend, "api_key", fake.api_key)
    return fake


def test_sdk_send_returns_id_and_records_one_delivery(sdk: FakeResend) -> None:
    response = resend.Emails.send(params(), options={"idempotency_key": "k1"})

    assert uuid.UUID(response["id"]).version == 4
    assert sdk.delivery_count() == 1
    delivery = sdk.deliveries[0]
    assert delivery.id == response["id"]
    assert delivery.to == [CUSTOMER]
    assert delivery.from_ == SENDER
    assert delivery.idempotency_key == "k1"
    [request] = sdk.requests
    assert (request.method, request.path, request.status) == ("POST", "/emails", 200)
    assert request.headers["idempotency-key"] == "k1"
    assert request.body["subject"] == "Your order"


def test_replay_with_same_key_returns_same_id_without_new_delivery(sdk: FakeResend) -> None:
    first = resend.Emails.send(params(), options={"idempotency_key": "k1"})
    second = resend.Emails.send(params(), options={"idempotency_key": "k1"})

    assert second["id"] == first["id"]
    assert sdk.delivery_count() == 1
    assert [r.status for r in sdk.requests] == [200, 200]
    assert sdk.attempts_for(CUSTOMER) == 2


def test_same_key_with_different_body_is_409(sdk: FakeResend) -> None:
    resend.Emails.send(params(), options={"idempotency_key": "k1"})

    with pytest.raises(ResendError) as caught:
        resend.Emails.send(params(subject="Other"), options={"idempotency_key": "k1"})

    assert caught.value.code == 409
    assert caught.value.error_type == "invalid_idempotent_request"
    assert sdk.delivery_count() == 1


def test_second_request_while_first_in_flight_is_409_concurrent(fake: FakeResend) -> None:
    fake.delay_seconds = 0.5
    answers: list[int] = []
    first = threading.Thread(
        target=lambda: answers.append(post(fake, params(), {"Idempotency-Key": "k1"}).status_code)
    )
    first.start()
    fake.wait_for(lambda: len(fake.requests) == 1, description="first request to arrive")

    second = post(fake, params(), {"Idempotency-Key": "k1"})
    first.join(timeout=5)

    assert_error(second, 409, "concurrent_idempotent_requests")
    assert answers == [200]
    assert fake.delivery_count() == 1


def test_missing_field_is_422_through_sdk(sdk: FakeResend) -> None:
    body = params()
    del body["subject"]

    with pytest.raises(ResendError) as caught:
        resend.Emails.send(body)  # type: ignore[arg-type]

    assert isinstance(caught.value, MissingRequiredFieldsError)
    assert caught.value.code == 422
    assert "subject" in caught.value.message
    assert sdk.delivery_count() == 0
    assert sdk.requests[0].status == 422


@pytest.mark.parametrize(
    ("body", "status", "name"),
    [
        ({"from": SENDER, "to": CUSTOMER, "subject": "s"}, 422, "missing_required_field"),
        ({"from": SENDER, "to": [], "subject": "s", "text": "t"}, 422, "missing_required_field"),
        ({"from": SENDER, "to": "not-an-address", "subject": "s", "text": "t"}, 422, "validation_error"),
        (["not", "an", "object"], 400, "validation_error"),
    ],
)
def test_invalid_bodies_are_rejected(fake: FakeResend, body: Any, status: int, name: str) -> None:
    assert_error(post(fake, body), status, name)
    assert fake.delivery_count() == 0


def test_body_that_is_not_json_is_400(fake: FakeResend) -> None:
    response = requests.post(
        f"{fake.url}/emails",
        data=b"{not json",
        headers={"Authorization": f"Bearer {fake.api_key}"},
        timeout=5,
    )

    assert_error(response, 400, "validation_error")
    assert fake.requests[0].is_json is False


def test_missing_authorization_is_401_with_resend_body(fake: FakeResend) -> None:
    response = requests.post(f"{fake.url}/emails", json=params(), timeout=5)

    assert_error(response, 401, "missing_api_key")
    assert response.json()["message"] == (
        "Missing API key in the authorization header. Include the following "
        "header Authorization: Bearer YOUR_API_KEY in the request."
    )
    assert fake.delivery_count() == 0


def test_wrong_key_is_403_through_sdk(sdk: FakeResend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resend, "api_key", "re_wrong")

    with pytest.raises(InvalidApiKeyError) as caught:
        resend.Emails.send(params())

    assert caught.value.code == 403
    assert sdk.requests[0].status == 403
    assert sdk.delivery_count() == 0


def test_idempotency_key_longer_than_256_is_400(fake: FakeResend) -> None:
    response = post(fake, params(), {"Idempotency-Key": "k" * 257})

    assert_error(response, 400, "validation_error")
    assert post(fake, params(), {"Idempotency-Key": "k" * 256}).status_code == 200


def test_fail_recipient_times_two_then_success_with_same_key(sdk: FakeResend) -> None:
    sdk.fail_recipient(CUSTOMER, status=500, name="application_error", message="boom", times=2)
    codes: list[int | str] = []

    for _ in range(2):
        with pytest.raises(ResendError) as caught:
            resend.Emails.send(params(), options={"idempotency_key": "order-1"})
        codes.append(caught.value.code)
    response = resend.Emails.send(params(), options={"idempotency_key": "order-1"})

    assert codes == [500, 500]
    assert sdk.attempts_for(CUSTOMER) == 3
    assert [d.id for d in sdk.deliveries_to(CUSTOMER)] == [response["id"]]
    assert [r.status for r in sdk.requests] == [500, 500, 200]


def test_fail_recipient_forever_only_hits_that_address(fake: FakeResend) -> None:
    fake.fail_recipient("bounce@example.com")

    for _ in range(3):
        assert_error(post(fake, params(to=["Bob <Bounce@Example.com>"])), 422, "validation_error")
    assert post(fake, params()).status_code == 200

    assert fake.attempts_for("bounce@example.com") == 3
    assert fake.deliveries_to("bounce@example.com") == []
    assert fake.delivery_count() == 1


def test_rate_limit_next_gives_429_with_retry_after(sdk: FakeResend) -> None:
    sdk.rate_limit_next(1, retry_after=3)

    with pytest.raises(RateLimitError) as caught:
        resend.Emails.send(params())
    response = resend.Emails.send(params())

    assert caught.value.code == 429
    assert caught.value.error_type == "rate_limit_exceeded"
    assert caught.value.headers["retry-after"] == "3"
    assert caught.value.headers["ratelimit-remaining"] == "0"
    assert {"ratelimit-limit", "ratelimit-reset"} <= set(caught.value.headers)
    assert sdk.deliveries[0].id == response["id"]
    assert sdk.delivery_count() == 1


def test_max_requests_per_second_rejects_third_immediate_request() -> None:
    with FakeResend(max_requests_per_second=2) as fake:
        responses = [post(fake, params()) for _ in range(3)]

        assert [r.status_code for r in responses] == [200, 200, 429]
        assert_error(responses[2], 429, "rate_limit_exceeded")
        assert responses[2].headers["retry-after"] == "1"
        assert fake.delivery_count() == 2
        assert fake.requests[2].arrived_at - fake.requests[0].arrived_at < 1.0


def test_get_email_returns_stored_delivery_or_404(sdk: FakeResend) -> None:
    sent = resend.Emails.send(params(to=[CUSTOMER, "other@example.com"]))

    email = resend.Emails.get(sent["id"])
    with pytest.raises(ResendError) as caught:
        resend.Emails.get(str(uuid.uuid4()))

    assert email["object"] == "email"
    assert email["id"] == sent["id"]
    assert email["to"] == [CUSTOMER, "other@example.com"]
    assert email["from"] == SENDER
    assert caught.value.code == 404
    assert caught.value.error_type == "not_found"


def test_wait_for_returns_once_predicate_holds(fake: FakeResend) -> None:
    sender = threading.Thread(target=lambda: post(fake, params()))
    sender.start()

    fake.wait_for(lambda: fake.delivery_count() == 1, timeout=5)
    sender.join(timeout=5)

    assert fake.delivery_count() == 1


def test_wait_for_raises_assertion_error_on_timeout(fake: FakeResend) -> None:
    with pytest.raises(AssertionError, match="timed out after 0.10s waiting for a delivery"):
        fake.wait_for(lambda: fake.delivery_count() > 0, timeout=0.1, description="a delivery")


def test_stop_closes_the_port() -> None:
    fake = FakeResend().start()
    url = fake.url
    fake.stop()
    fake.stop()

    with pytest.raises(requests.ConnectionError):
        requests.post(f"{url}/emails", json=params(), timeout=2)


def rate(response: requests.Response) -> tuple[str, str, str]:
    """The three rate headers Resend puts on every answer."""
    headers = response.headers
    return headers["ratelimit-limit"], headers["ratelimit-remaining"], headers["ratelimit-reset"]


def test_every_answer_carries_rate_headers_and_only_admitted_requests_spend_slots() -> None:
    with FakeResend(max_requests_per_second=3) as fake:
        sent = post(fake, params())
        invalid = post(fake, {"from": SENDER})
        unauthenticated = requests.post(f"{fake.url}/emails", json=params(), timeout=5)
        last = post(fake, params())
        refused = post(fake, params())

        assert [r.status_code for r in (sent, invalid, unauthenticated, last, refused)] == [200, 422, 401, 200, 429]
        assert rate(sent) == ("3", "2", "1")
        assert rate(invalid) == ("3", "1", "1")  # a malformed send still spends a slot
        assert rate(unauthenticated) == ("3", "1", "1")  # no team known: nothing spent
        assert rate(last) == ("3", "0", "1")
        assert rate(refused) == ("3", "0", "1") and refused.headers["retry-after"] == "1"
        assert "retry-after" not in sent.headers
        assert fake.delivery_count() == 2


def test_without_enforcement_a_limit_is_still_advertised(sdk: FakeResend) -> None:
    answers = [resend.Emails.send(params()) for _ in range(3)]

    assert [a["http_headers"]["ratelimit-limit"] for a in answers] == ["2", "2", "2"]
    assert [a["http_headers"]["ratelimit-remaining"] for a in answers] == ["1", "0", "0"]
    assert sdk.delivery_count() == 3
    with FakeResend(advertised_limit=10) as other:
        assert rate(post(other, params()))[:2] == ("10", "9")


def test_set_rate_limit_raises_the_enforced_and_advertised_limit() -> None:
    with FakeResend(max_requests_per_second=1) as fake:
        first, refused = post(fake, params()), post(fake, params())
        fake.set_rate_limit(3)
        raised = post(fake, params())

        assert [r.status_code for r in (first, refused, raised)] == [200, 429, 200]
        assert rate(refused)[0] == "1" and "1 requests per second" in refused.json()["message"]
        assert rate(raised)[:2] == ("3", "1")
        assert fake.delivery_count() == 2


def test_another_app_of_the_team_spends_the_same_window(sdk: FakeResend) -> None:
    sdk.set_rate_limit(2)
    sdk.consume_from_other_app(1)

    answer = resend.Emails.send(params())
    with pytest.raises(RateLimitError) as caught:
        resend.Emails.send(params())

    assert answer["http_headers"]["ratelimit-remaining"] == "0"
    assert caught.value.error_type == "rate_limit_exceeded"
    assert caught.value.headers["retry-after"] == "1"
    assert sdk.delivery_count() == 1
    time_to_free = sdk.requests[-1].arrived_at + 1.0
    sdk.wait_for(lambda: time.monotonic() > time_to_free, timeout=2, description="the window to pass")
    assert resend.Emails.send(params())["http_headers"]["ratelimit-remaining"] == "1"


def test_exhausted_daily_quota_refuses_every_send_until_restored(sdk: FakeResend) -> None:
    sdk.exhaust_quota("daily_quota_exceeded", reset_after=120)

    with pytest.raises(RateLimitError) as caught:
        resend.Emails.send(params(), options={"idempotency_key": "q1"})
    sdk.restore_quota()
    answer = resend.Emails.send(params(), options={"idempotency_key": "q1"})

    assert caught.value.code == 429
    assert caught.value.error_type == "daily_quota_exceeded"
    assert caught.value.message == "You have reached your daily email sending quota."
    assert caught.value.headers["retry-after"] == caught.value.headers["ratelimit-reset"] == "120"
    assert [r.status for r in sdk.requests] == [429, 200]
    assert [d.id for d in sdk.deliveries] == [answer["id"]]


def test_monthly_quota_resets_by_itself_after_its_time(fake: FakeResend) -> None:
    exhausted_at = time.monotonic()
    # A second, so the first request is refused even on a loaded machine (0.3 s flaked once in a full unit run).
    fake.exhaust_quota("monthly_quota_exceeded", reset_after=1.0)

    refused = post(fake, params())
    fake.wait_for(lambda: post(fake, params()).status_code == 200, timeout=5, description="the quota to reset")

    assert_error(refused, 429, "monthly_quota_exceeded")
    assert refused.json()["message"] == "You have reached your monthly email sending quota."
    assert refused.headers["retry-after"] == "1"
    # From when the quota ran out, not from the first refusal, which came a little later.
    assert fake.requests[-1].arrived_at - exhausted_at >= 1.0
    assert fake.delivery_count() == 1


def batch_post(fake: FakeResend, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    """POST /emails/batch with the right key."""
    sent = {"Authorization": f"Bearer {fake.api_key}", **(headers or {})}
    return requests.post(f"{fake.url}/emails/batch", json=body, headers=sent, timeout=5)


def addressed(*names: str) -> list[dict[str, Any]]:
    """One valid email per name, to ``<name>@example.com``."""
    return [params(to=f"{name}@example.com", subject=f"For {name}") for name in names]


def test_batch_delivers_each_email_in_order_and_counts_once_against_the_limit(sdk: FakeResend) -> None:
    sdk.set_rate_limit(2)

    answer = resend.Batch.send(addressed("a", "b", "c"), options={"idempotency_key": "batch-1"})  # type: ignore[arg-type]
    single = resend.Emails.send(params())

    ids = [item["id"] for item in answer["data"]]
    assert "errors" not in answer  # strict mode lists no errors
    assert answer["http_headers"]["ratelimit-remaining"] == "1"
    assert single["http_headers"]["ratelimit-remaining"] == "0"
    assert sdk.delivery_count() == 4
    batch = [d for d in sdk.deliveries if d.in_batch]
    assert [d.id for d in batch] == ids
    assert [(d.batch_index, d.to, d.idempotency_key) for d in batch] == [
        (0, ["a@example.com"], "batch-1"),
        (1, ["b@example.com"], "batch-1"),
        (2, ["c@example.com"], "batch-1"),
    ]
    assert sdk.deliveries_to("b@example.com")[0].subject == "For b"
    assert sdk.attempts_for("c@example.com") == 1
    assert sdk.deliveries[-1].in_batch is False


def test_batch_replay_returns_the_first_answer_and_a_changed_payload_is_409(sdk: FakeResend) -> None:
    first = resend.Batch.send(addressed("a", "b"), options={"idempotency_key": "batch-1"})  # type: ignore[arg-type]
    again = resend.Batch.send(addressed("a", "b"), options={"idempotency_key": "batch-1"})  # type: ignore[arg-type]
    with pytest.raises(ResendError) as changed:
        resend.Batch.send(addressed("a", "c"), options={"idempotency_key": "batch-1"})  # type: ignore[arg-type]
    with pytest.raises(ResendError) as other_endpoint:
        resend.Emails.send(params(), options={"idempotency_key": "batch-1"})

    assert again["data"] == first["data"]
    assert sdk.delivery_count() == 2
    assert (changed.value.code, changed.value.error_type) == (409, "invalid_idempotent_request")
    assert (other_endpoint.value.code, other_endpoint.value.error_type) == (409, "invalid_idempotent_request")
    assert [r.status for r in sdk.requests] == [200, 200, 409, 409]


def test_batch_retried_while_the_first_is_in_flight_is_409_concurrent(fake: FakeResend) -> None:
    fake.delay_seconds = 0.5
    answers: list[int] = []
    key = {"Idempotency-Key": "batch-1"}
    first = threading.Thread(target=lambda: answers.append(batch_post(fake, addressed("a", "b"), key).status_code))
    first.start()
    fake.wait_for(lambda: len(fake.requests) == 1, description="first batch to arrive")

    second = batch_post(fake, addressed("a", "b"), key)
    first.join(timeout=5)

    assert_error(second, 409, "concurrent_idempotent_requests")
    assert answers == [200]
    assert fake.delivery_count() == 2


@pytest.mark.parametrize("size", [0, 101])
def test_batch_of_no_or_more_than_100_emails_is_422(sdk: FakeResend, size: int) -> None:
    with pytest.raises(ResendError) as caught:
        resend.Batch.send([params()] * size)  # type: ignore[list-item]

    assert (caught.value.code, caught.value.error_type) == (422, "validation_error")
    assert str(size) in caught.value.message
    assert sdk.delivery_count() == 0


def test_batch_of_100_emails_is_accepted(fake: FakeResend) -> None:
    response = batch_post(fake, [params()] * 100)

    assert response.status_code == 200 and len(response.json()["data"]) == 100
    assert fake.delivery_count() == 100
    assert [d.batch_index for d in fake.deliveries] == list(range(100))


def test_strict_batch_with_one_invalid_email_is_refused_whole_naming_it(sdk: FakeResend) -> None:
    emails = addressed("a", "b", "c")
    emails[1]["attachments"] = [{"filename": "x.txt", "content": "eA=="}]

    with pytest.raises(ResendError) as caught:
        resend.Batch.send(emails, options={"idempotency_key": "batch-1", "batch_validation": "strict"})  # type: ignore[arg-type]
    del emails[1]["attachments"]
    answer = resend.Batch.send(emails, options={"idempotency_key": "batch-1"})  # type: ignore[arg-type]

    assert (caught.value.code, caught.value.error_type) == (422, "validation_error")
    assert "emails[1]" in caught.value.message and "attachments" in caught.value.message
    assert len(answer["data"]) == 3  # the refused batch did not claim the key
    assert sdk.delivery_count() == 3


def test_permissive_batch_delivers_the_valid_emails_and_lists_the_others(sdk: FakeResend) -> None:
    emails = addressed("a", "b", "c", "d", "e")
    emails[1]["scheduled_at"] = "in 1 hour"
    del emails[3]["to"]
    emails[4]["to"] = "not-an-address"

    answer = resend.Batch.send(emails, options={"batch_validation": "permissive"})  # type: ignore[arg-type]

    assert [e["index"] for e in answer["errors"]] == [1, 3, 4]
    assert "scheduled_at" in answer["errors"][0]["message"] and "`to`" in answer["errors"][1]["message"]
    assert [item["id"] for item in answer["data"]] == [d.id for d in sdk.deliveries]
    assert [(d.batch_index, d.to) for d in sdk.deliveries] == [(0, ["a@example.com"]), (2, ["c@example.com"])]
    assert sdk.requests[0].headers["x-batch-validation"] == "permissive"


def test_scripted_recipients_in_a_batch_fail_per_email_or_the_whole_request(sdk: FakeResend) -> None:
    sdk.fail_recipient("b@example.com", status=422, name="validation_error", message="b refused", times=2)
    sdk.fail_recipient("c@example.com", status=500, name="application_error", message="crash", times=1)
    options: Any = {"idempotency_key": "batch-1", "batch_validation": "permissive"}

    with pytest.raises(ResendError) as crashed:
        resend.Batch.send(addressed("a", "b", "c"), options=options)
    answer = resend.Batch.send(addressed("a", "b", "c"), options=options)
    with pytest.raises(ResendError) as strict:
        resend.Batch.send(addressed("b", "d"))

    assert (crashed.value.code, crashed.value.error_type, crashed.value.message) == (500, "application_error", "crash")
    assert answer["errors"] == [{"index": 1, "message": "b refused"}]
    assert [d.to for d in sdk.deliveries] == [["a@example.com"], ["c@example.com"]]
    assert (strict.value.code, strict.value.message) == (422, "emails[0]: b refused")
    assert sdk.deliveries_to("d@example.com") == []
    assert [r.status for r in sdk.requests] == [500, 200, 422]


def test_exhausted_quota_refuses_a_batch_too(sdk: FakeResend) -> None:
    sdk.exhaust_quota("monthly_quota_exceeded", reset_after=30)

    with pytest.raises(RateLimitError) as caught:
        resend.Batch.send(addressed("a", "b"))

    assert caught.value.error_type == "monthly_quota_exceeded"
    assert caught.value.headers["retry-after"] == "30"
    assert sdk.delivery_count() == 0


def test_batch_body_must_be_an_array_of_objects_and_the_mode_known(fake: FakeResend) -> None:
    not_array = batch_post(fake, params())
    unknown_mode = batch_post(fake, [params()], {"x-batch-validation": "lenient"})
    odd_item = batch_post(fake, [params(), "not an email"], {"x-batch-validation": "permissive"})

    assert_error(not_array, 400, "validation_error")
    assert_error(unknown_mode, 422, "validation_error")
    assert odd_item.status_code == 200 and [e["index"] for e in odd_item.json()["errors"]] == [1]
    assert fake.delivery_count() == 1


def test_delay_next_delivers_though_the_client_timed_out(sdk: FakeResend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resend, "default_http_client", RequestsClient(timeout=0.2))  # type: ignore[arg-type]
    sdk.delay_next(1, 0.8)
    options: Any = {"idempotency_key": "k1"}

    with pytest.raises(ResendError) as timed_out:
        resend.Emails.send(params(), options=options)
    with pytest.raises(ResendError) as in_flight:
        resend.Emails.send(params(), options=options)
    sdk.wait_for(lambda: sdk.requests[0].status == 200, timeout=5, description="the held send to complete")
    replay = resend.Emails.send(params(), options=options)

    assert timed_out.value.error_type == "HttpClientError"
    assert (in_flight.value.code, in_flight.value.error_type) == (409, "concurrent_idempotent_requests")
    assert [d.id for d in sdk.deliveries] == [replay["id"]]
    assert [r.status for r in sdk.requests] == [200, 409, 200]


def test_delay_next_not_delivered_releases_the_key(fake: FakeResend) -> None:
    fake.delay_next(1, 0.5, delivered=False)
    headers = {"Authorization": f"Bearer {fake.api_key}", "Idempotency-Key": "k1"}

    with pytest.raises(requests.Timeout):
        requests.post(f"{fake.url}/emails", json=params(), headers=headers, timeout=0.1)
    fake.wait_for(lambda: fake.requests[0].status is not None, timeout=5, description="the held send to end")
    retry = post(fake, params(), {"Idempotency-Key": "k1"})

    assert fake.requests[0].status == 500
    assert retry.status_code == 200
    assert [d.id for d in fake.deliveries] == [retry.json()["id"]]
    assert fake.requests[1].arrived_at - fake.requests[0].arrived_at >= 0.5


def test_fail_next_fails_whole_requests_before_anything_is_decided(sdk: FakeResend) -> None:
    sdk.set_rate_limit(5)
    sdk.fail_next(2, status=503, name="service_unavailable", message="try later")
    codes: list[int | str] = []

    for _ in range(2):
        with pytest.raises(ResendError) as caught:
            resend.Emails.send(params(), options={"idempotency_key": "k1"})
        codes.append(caught.value.code)
    answer = resend.Emails.send(params(), options={"idempotency_key": "k1"})

    assert codes == [503, 503]
    assert caught.value.error_type == "service_unavailable" and caught.value.message == "try later"
    assert caught.value.headers["ratelimit-remaining"] == "5"  # the failed requests spent no slot
    assert answer["http_headers"]["ratelimit-remaining"] == "4"
    assert [d.id for d in sdk.deliveries] == [answer["id"]]
    sdk.fail_next(1)  # any endpoint, not only sends
    with pytest.raises(ApplicationError) as failed_get:
        resend.Emails.get(answer["id"])
    assert (failed_get.value.code, failed_get.value.error_type) == (500, "application_error")


def test_counters_of_429s_paths_and_connections() -> None:
    with FakeResend(max_requests_per_second=2) as fake:
        fake.exhaust_quota(reset_after=60)
        quota = post(fake, params())
        fake.restore_quota()
        statuses = [post(fake, params()).status_code, post(fake, params()).status_code]
        batch = batch_post(fake, addressed("a"))

        assert [quota.status_code, *statuses, batch.status_code] == [429, 200, 429, 429]
        assert fake.count_429() == 3
        assert fake.requests_to("/emails") == 3
        assert fake.requests_to("/emails/batch") == 1
        assert fake.requests_to("/domains") == 0
        assert fake.connections_opened() == 4  # requests.post opens one connection per call


def test_pooled_client_reuses_a_connection_until_it_asks_to_close(fake: FakeResend) -> None:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {fake.api_key}"
        kept = [session.post(f"{fake.url}/emails", json=params(), timeout=5) for _ in range(3)]
        reused = fake.connections_opened()
        closing = session.post(f"{fake.url}/emails", json=params(), headers={"Connection": "close"}, timeout=5)
        after_close = session.get(f"{fake.url}/emails/{kept[0].json()['id']}", timeout=5)

    assert [r.status_code for r in (*kept, closing, after_close)] == [200, 200, 200, 200, 200]
    assert reused == 1
    assert all(r.headers.get("Connection") != "close" for r in kept)
    assert closing.headers["Connection"] == "close"
    assert fake.connections_opened() == 2
    assert fake.requests_to("/emails") == 4


def test_stop_closes_kept_alive_connections_too() -> None:
    fake = FakeResend().start()
    with requests.Session() as session:
        assert session.post(f"{fake.url}/emails", json=params(), timeout=5).status_code == 401
        url = fake.url
        fake.stop()

        with pytest.raises(requests.ConnectionError):
            session.post(f"{url}/emails", json=params(), timeout=2)
    assert fake.connections_opened() == 1


def test_scripts_aimed_at_a_recipient_wait_for_its_request(fake: FakeResend) -> None:
    """A straggler to someone else, arriving first, takes neither the failure nor the delay."""
    fake.fail_next(1, status=503, to="aimed@example.com")
    fake.delay_next(1, 0.3, to="Aimed@Example.com")

    straggler = post(fake, params("someone.else@example.com"))
    aimed = post(fake, params("aimed@example.com"))
    retried = post(fake, params("aimed@example.com"))
    held = [response.elapsed.total_seconds() >= 0.3 for response in (straggler, aimed, retried)]

    assert (straggler.status_code, aimed.status_code, retried.status_code) == (200, 503, 200)
    statuses = [(r.to, r.status) for r in fake.requests]
    assert statuses == [
        (["someone.else@example.com"], 200),
        (["aimed@example.com"], 503),
        (["aimed@example.com"], 200),
    ]
    assert held == [False, True, False]
    assert fake.deliveries_to("aimed@example.com")[0].id == retried.json()["id"]


def test_any_429_says_when_to_retry_even_a_scripted_one(fake: FakeResend) -> None:
    fake.fail_next(1, status=429, name="rate_limit_exceeded", message="slow down")
    fake.fail_recipient(CUSTOMER, status=429, name="rate_limit_exceeded", times=1)

    scripted, recipient = post(fake, params()), post(fake, params())

    assert [r.headers["retry-after"] for r in (scripted, recipient)] == ["1", "1"]
    assert fake.count_429() == 2 and fake.delivery_count() == 0


def test_a_storm_fails_a_share_of_requests_holds_another_and_calm_ends_it(fake: FakeResend) -> None:
    fake.storm(server_errors=0.3, timeouts=0.1, hold_seconds=0.3, seed=7)
    answers = [post(fake, params(to=f"storm{n}@example.com"), {"Idempotency-Key": f"s{n}"}) for n in range(60)]
    fake.calm()
    after = post(fake, params(to="calm@example.com"))

    failed = [a for a in answers if a.status_code == 500]
    held = [a for a in answers if a.status_code == 200 and a.elapsed.total_seconds() >= 0.3]
    assert 8 <= len(failed) <= 30 and 1 <= len(held) <= 15, (len(failed), len(held))
    assert all(a.json()["name"] == "application_error" for a in failed)
    assert fake.delivery_count() == 60 - len(failed) + 1  # a held answer is still delivered
    assert after.status_code == 200 and after.elapsed.total_seconds() < 0.3
