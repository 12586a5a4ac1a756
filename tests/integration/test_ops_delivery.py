"""The ops API's delivery routes: the suppression list (read role sees, admin changes, each change audited),
an email's events in order, and the rates in ``/stats`` and ``/metrics``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.runtime import Runtime
from tests.support.delivery_support import bounce, event, post_event, sent_email, suppression
from tests.support.helpers import unique_address
from tests.support.ops_support import ADMIN_TOKEN, READ_TOKEN, call, running_app, with_tokens


@pytest.fixture(scope="module")
def ops(runtime: Runtime) -> Iterator[str]:
    with running_app(with_tokens(runtime)) as url:
        yield url


def test_the_read_role_sees_the_list_and_only_the_admin_changes_it_each_change_audited(
    ops: str, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.audit")
    address = unique_address("Ops")

    refused = call(ops, "POST", "/api/ops/suppressions", token=READ_TOKEN, body={"address": address})
    added = call(ops, "POST", "/api/ops/suppressions", body={"address": address, "reason": "asked to stop"})
    again = call(ops, "POST", "/api/ops/suppressions", body={"address": address.upper()})
    listed = call(ops, "GET", "/api/ops/suppressions", token=READ_TOKEN, params={"prefix": address[:12]})
    anonymous = call(ops, "GET", "/api/ops/suppressions", token=None)
    not_removed = call(ops, "DELETE", f"/api/ops/suppressions/{address}", token=READ_TOKEN)

    assert (refused.status_code, added.status_code, again.status_code) == (403, 200, 200)
    assert added.json() == {"address": address.lower(), "changed": True} and again.json()["changed"] is False
    assert [item["address"] for item in listed.json()["items"]] == [address.lower()]
    assert listed.json()["items"][0]["reason"] == "asked to stop"
    assert (anonymous.status_code, not_removed.status_code) == (401, 403)
    assert suppression(sessions, address) is not None

    removed = call(ops, "DELETE", f"/api/ops/suppressions/{address.upper()}")
    gone = call(ops, "DELETE", f"/api/ops/suppressions/{address}")
    assert (removed.status_code, gone.status_code) == (200, 404)
    assert suppression(sessions, address) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.audit"]
    assert sum("role=read action=refused" in line for line in lines) == 2
    lines = [line for line in lines if "role=admin" in line]
    assert [line.split()[1:3] for line in lines] == [
        ["role=admin", "action=suppress"],
        ["role=admin", "action=suppress"],
        ["role=admin", "action=unsuppress"],
        ["role=admin", "action=unsuppress"],
    ]
    assert all(address.lower() in line for line in lines) and not any(ADMIN_TOKEN in line for line in lines)


@pytest.mark.parametrize("address", ["no-at-sign", "a b@example.com", "x" * 400 + "@example.com"])
def test_an_address_that_is_not_one_is_refused_without_a_5xx(ops: str, address: str) -> None:
    answer = call(ops, "POST", "/api/ops/suppressions", body={"address": address})
    assert answer.status_code in (400, 422), answer.text


def test_an_emails_events_are_listed_in_the_order_they_happened(
    ops: str, intake: str, sessions: sessionmaker[Session]
) -> None:
    email_id, provider_id = sent_email(sessions, unique_address("timeline"))
    later = event("email.delivered", provider_id)
    earlier = event("email.delivery_delayed", provider_id)
    earlier["created_at"], later["created_at"] = "2026-01-01T10:00:00.000Z", "2026-01-01T10:05:00.000Z"
    assert post_event(intake, later).status_code == 200
    assert post_event(intake, earlier).status_code == 200

    answer = call(ops, "GET", f"/api/ops/emails/{email_id}/events", token=READ_TOKEN)
    one = call(ops, "GET", f"/api/ops/emails/{email_id}", token=READ_TOKEN)

    assert [item["type"] for item in answer.json()["items"]] == ["email.delivery_delayed", "email.delivered"]
    assert one.json()["delivery_status"] == "delivered"


def test_stats_and_metrics_carry_the_rates(ops: str, intake: str, sessions: sessionmaker[Session]) -> None:
    _, provider_id = sent_email(sessions, unique_address("rated"))
    assert post_event(intake, bounce(provider_id)).status_code == 200

    stats = call(ops, "GET", "/api/ops/stats", token=READ_TOKEN).json()["delivery"]
    metrics = call(ops, "GET", "/metrics", token=None).text

    assert stats["rates"]["24h"]["bounced"] >= 1 and stats["rates"]["24h"]["bounce_rate"] > 0
    assert stats["thresholds"] == {"bounce_rate": 0.04, "complaint_rate": 0.0008}
    assert stats["suppressed_addresses"] >= 1
    for line in ('minalesh_email_bounce_rate{window="24h"}', 'minalesh_email_complaint_rate{window="7d"}'):
        assert line in metrics
    assert "minalesh_email_suppressions " in metrics
