"""The cron endpoints, health and the ops API over a real uvicorn server, on the run's PostgreSQL and RabbitMQ."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Optional

import pytest
import requests
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.fake_resend import FakeResend
from pipeline.core.runtime import Runtime
from pipeline.web.auth import COOKIE_NAME
from storage import dead_letters, inventory, periodic_runs
from storage.clock import utcnow
from storage.database import get_sessionmaker
from storage.dead_letters import LetterFilter
from storage.models import EmailQueue, InventoryReservation, WebhookEvent
from tests.support.dlq_support import add_dead_letter, dead_email, letter
from tests.support.helpers import insert_email, unique_address, wait_until
from tests.support.ops_support import (
    ADMIN_TOKEN,
    READ_TOKEN,
    call,
    running_app,
    sign_in,
    with_cookie,
    with_tokens,
)
from tests.support.webhook_support import add_order, payment, store_event, store_lost

#: An id no row has.
MISSING = 987_654_321
#: A scheduled time no test reaches: the row stays pending whatever the cron calls claim.
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ops_runtime(runtime: Runtime) -> Iterator[Runtime]:
    current = with_tokens(runtime)
    yield current
    for scope in ("all", "bulk"):  # whatever a failed test left paused
        current.sending.resume(scope)


@pytest.fixture(scope="module")
def ops(ops_runtime: Runtime) -> Iterator[str]:
    with running_app(ops_runtime) as url:
        yield url


@pytest.fixture(scope="module")
def rows(runtime: Runtime) -> dict[str, int]:
    """One email, one webhook event and one dead letter, for the routes that show one."""
    sessions = runtime.sessions
    with sessions.begin() as session:
        email_id = insert_email(session, unique_address("ops-row"), scheduled_at=FAR_FUTURE)
        event_id = store_event(session, payment(add_order(sessions))).id
    letter_id = add_dead_letter(sessions, actor=None, args=None, raw_body="raw", queue="ops-rows.XQ")
    return {"email": email_id, "webhook": event_id, "letter": letter_id}


# --- every route, every kind of caller --------------------------------------------------------------

#: (method, path, body, who may call it): ``read`` routes answer either role, ``admin`` ones the admin only.
ROUTES: list[tuple[str, str, Optional[dict[str, Any]], str]] = [
    ("GET", "/api/ops/session", None, "read"),
    ("GET", "/api/ops/stats", None, "read"),
    ("GET", "/api/ops/activity?minutes=5", None, "read"),
    ("GET", "/api/ops/emails?limit=5", None, "read"),
    ("GET", "/api/ops/emails/{email}", None, "read"),
    ("GET", "/api/ops/webhooks?limit=5", None, "read"),
    ("GET", "/api/ops/webhooks/{webhook}", None, "read"),
    ("GET", "/api/ops/reservations?state=active", None, "read"),
    ("GET", "/api/ops/dead-letters?limit=5", None, "read"),
    ("GET", "/api/ops/dead-letters/{letter}", None, "read"),
    ("DELETE", "/api/ops/session", None, "read"),
    ("POST", "/api/ops/dead-letters/replay", {"ids": [MISSING], "dry_run": True}, "admin"),
    ("POST", "/api/ops/dead-letters/purge", {"ids": [MISSING], "dry_run": True}, "admin"),
    ("DELETE", f"/api/ops/dead-letters/{MISSING}", None, "admin"),
    ("POST", "/api/ops/sending/pause", {"scope": "bulk", "minutes": 0.001}, "admin"),
    ("POST", "/api/ops/sending/resume", {"scope": "bulk"}, "admin"),
    ("GET", "/api/cron/process-email-queue", None, "admin"),
    ("POST", "/api/cron/process-email-queue", None, "admin"),
    ("GET", "/api/cron/retry-webhooks", None, "admin"),
    ("POST", "/api/cron/retry-webhooks", None, "admin"),
    ("GET", "/api/cron/cleanup-reservations", None, "admin"),
    ("POST", "/api/cron/cleanup-reservations", None, "admin"),
]
#: What the admin gets where 200 is not the answer: the route ran and found nothing to act on.
ADMIN_STATUS = {f"/api/ops/dead-letters/{MISSING}": 404}


@pytest.mark.parametrize("caller", ["none", "wrong", "read", "admin"])
@pytest.mark.parametrize(("method", "path", "body", "allowed"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_route_answers_each_caller(
    ops: str, rows: dict[str, int], caller: str, method: str, path: str, body: Any, allowed: str
) -> None:
    token = {"none": None, "wrong": "x" * 40, "read": READ_TOKEN, "admin": ADMIN_TOKEN}[caller]
    answer = call(ops, method, path.format(**rows), token=token, body=body)
    if caller in ("none", "wrong"):
        expected = 401
    elif caller == "read" and allowed == "admin":
        expected = 403
    else:
        expected = ADMIN_STATUS.get(path, 200)
    assert answer.status_code == expected, answer.text
    if expected in (401, 403):
        assert set(answer.json()) == {"error"}


# --- the cron endpoints do the work, or none -------------------------------------------------------


def test_process_email_queue_enqueues_due_emails_and_refuses_without_the_token(
    ops: str, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    address = unique_address("cron-email")
    with sessions.begin() as session:
        email_id = insert_email(session, address)
    for token in (None, "y" * 40, READ_TOKEN):
        refused = call(ops, "GET", "/api/cron/process-email-queue", token=token)
        assert refused.status_code in (401, 403)
        assert _email(sessions, email_id).status == "pending"

    answer = call(ops, "GET", "/api/cron/process-email-queue")

    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is True and body["failed"] == 0
    assert body["processed"] == body["succeeded"] >= 1
    wait_until(lambda: _email(sessions, email_id).status == "sent", what="the worker to send the claimed email")
    assert len(fake_resend.deliveries_to(address)) == 1


def test_retry_webhooks_enqueues_lost_events(ops: str, sessions: sessionmaker[Session]) -> None:
    (event_id,) = store_lost(sessions, 1)
    assert call(ops, "POST", "/api/cron/retry-webhooks", token=None).status_code == 401
    assert _event(sessions, event_id).attempts == 0

    answer = call(ops, "POST", "/api/cron/retry-webhooks")

    assert answer.status_code == 200 and answer.json()["processed"] >= 1
    wait_until(lambda: _event(sessions, event_id).status == "processed", what="the re-enqueued event to be applied")


def test_cleanup_reservations_releases_expired_holds(ops: str, sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        product = inventory.create_product(session, sku=f"SKU-{uuid.uuid4().hex[:8]}", name="Mesob", stock=5)
        held = inventory.reserve(session, product, 2, ttl_minutes=0.0001)
    wait_until(lambda: _reservation(sessions, held).expires_at < utcnow(), what="the hold to lapse")
    assert call(ops, "GET", "/api/cron/cleanup-reservations", token="z" * 40).status_code == 401
    assert _reservation(sessions, held).status == "active"

    answer = call(ops, "GET", "/api/cron/cleanup-reservations")

    assert answer.status_code == 200
    assert answer.json()["succeeded"] >= 1
    assert _reservation(sessions, held).status == "expired"


def test_a_cron_call_is_stamped_in_periodic_runs_as_the_tickers_runs_are(
    ops: str, sessions: sessionmaker[Session]
) -> None:
    before = utcnow()

    assert call(ops, "POST", "/api/cron/cleanup-reservations").status_code == 200
    assert call(ops, "GET", "/api/cron/retry-webhooks").status_code == 200

    with sessions() as session:
        stamped = {run.job: run.last_success_at for run in periodic_runs.all_runs(session)}
    for job in ("cleanup_reservations", "retry_webhooks"):
        last_success = stamped.get(job)
        assert last_success is not None and last_success >= before, job


# --- sessions and CSRF --------------------------------------------------------------------------


def test_a_cookie_session_needs_its_csrf_token_to_act(ops: str) -> None:
    cookie, csrf, answer = sign_in(ops, ADMIN_TOKEN)
    set_cookie = answer.headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/", "Max-Age=28800"):
        assert attribute in set_cookie
    assert ADMIN_TOKEN not in set_cookie

    who = call(ops, "GET", "/api/ops/session", token=None, headers=with_cookie(cookie))
    assert who.json() == {"role": "admin", "csrf_token": csrf}
    resume = "/api/ops/sending/resume"
    assert call(ops, "POST", resume, token=None, body={}, headers=with_cookie(cookie)).status_code == 403
    assert call(ops, "POST", resume, token=None, body={}, headers=with_cookie(cookie, "forged")).status_code == 403
    assert call(ops, "POST", resume, token=None, body={}, headers=with_cookie(cookie, csrf)).status_code == 200
    out = call(ops, "DELETE", "/api/ops/session", token=None, headers=with_cookie(cookie, csrf))
    assert out.status_code == 200 and f"{COOKIE_NAME}=" in out.headers["set-cookie"]


def test_a_read_session_reads_and_may_not_act(ops: str) -> None:
    cookie, csrf, _ = sign_in(ops, READ_TOKEN)
    assert call(ops, "GET", "/api/ops/stats", token=None, headers=with_cookie(cookie)).status_code == 200
    pause = call(ops, "POST", "/api/ops/sending/pause", token=None, body={}, headers=with_cookie(cookie, csrf))
    assert pause.status_code == 403


def test_forged_cookies_and_wrong_sign_ins_are_refused(ops: str) -> None:
    cookie, _, _ = sign_in(ops, READ_TOKEN)
    payload, _, signature = cookie.partition(".")
    forged = payload.replace(payload[5], "A" if payload[5] != "A" else "B") + "." + signature
    assert call(ops, "GET", "/api/ops/stats", token=None, headers=with_cookie(forged)).status_code == 401
    wrong = requests.post(f"{ops}/api/ops/session", json={"token": "w" * 40}, timeout=10)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    as_form = requests.post(f"{ops}/api/ops/session", data={"token": ADMIN_TOKEN}, timeout=10)
    assert as_form.status_code in (415, 422) and "set-cookie" not in as_form.headers


# --- lists -----------------------------------------------------------------------------------------


def test_emails_are_searched_by_recipient_prefix_and_paged_by_cursor(ops: str, sessions: sessionmaker[Session]) -> None:
    prefix = f"Pager-{uuid.uuid4().hex[:6]}"
    with sessions.begin() as session:
        ids = [insert_email(session, f"{prefix}-{i}@Example.com", status="failed") for i in range(5)]
        other = insert_email(session, f"x{prefix}@example.com", status="failed")

    seen: list[int] = []
    cursor: Optional[str] = None
    for _ in range(4):
        query = f"/api/ops/emails?q={prefix.upper()}&status=failed&priority=transactional&limit=2"
        page = call(ops, "GET", query + (f"&cursor={cursor}" if cursor else ""), token=READ_TOKEN).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == sorted(ids, reverse=True) and other not in seen
    one = call(ops, "GET", f"/api/ops/emails/{ids[0]}", token=READ_TOKEN).json()
    assert one["to"] == f"{prefix}-0@Example.com" and one["status"] == "failed" and "html" not in one
    assert call(ops, "GET", "/api/ops/emails?cursor=abc").status_code == 422
    assert call(ops, "GET", "/api/ops/emails?status=lost").status_code == 422
    assert call(ops, "GET", f"/api/ops/emails/{MISSING}").status_code == 404


def test_webhooks_reservations_and_stats(ops: str, sessions: sessionmaker[Session], rows: dict[str, int]) -> None:
    with sessions() as session:
        event = session.get(WebhookEvent, rows["webhook"])
        assert event is not None
    found = call(ops, "GET", f"/api/ops/webhooks?q={event.order_id}").json()["items"]
    assert [item["id"] for item in found] == [event.id]
    assert call(ops, "GET", f"/api/ops/webhooks/{event.id}").json()["payload"]["order_id"] == event.order_id

    with sessions.begin() as session:
        product = inventory.create_product(session, sku=f"SKU-{uuid.uuid4().hex[:8]}", name="Jebena", stock=5)
        held = inventory.reserve(session, product, 1, ttl_minutes=60)
    active = call(ops, "GET", "/api/ops/reservations?state=active&limit=500").json()["items"]
    assert held in [item["id"] for item in active]
    assert held not in [item["id"] for item in call(ops, "GET", "/api/ops/reservations?state=expired").json()["items"]]

    stats = call(ops, "GET", "/api/ops/stats").json()
    assert {"emails", "webhooks", "reservations", "dead_letters", "sending", "oldest_due_email"} <= set(stats)
    queues = {queue["name"]: queue for queue in stats["queues"]}
    assert {"emails", "emails_bulk", "webhooks"} <= set(queues)
    assert all(isinstance(queues["emails"][key], int) for key in ("ready", "delayed", "dead"))
    minutes = call(ops, "GET", "/api/ops/activity?minutes=3").json()["minutes"]
    assert len(minutes) == 3 and minutes[0]["at"] < minutes[-1]["at"]


# --- actions ----------------------------------------------------------------------------------------


def test_replay_and_purge_by_ids_and_by_filter(
    ops: str, sessions: sessionmaker[Session], fake_resend: FakeResend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.audit")
    email_id, _, dead = dead_email(sessions, fake_resend, "ops-replay")

    dry = call(ops, "POST", "/api/ops/dead-letters/replay", body={"ids": [dead.id], "dry_run": True}).json()
    assert (dry["matched"], dry["replayed"], dry["dry_run"], dry["ids"]) == (1, 1, True, [dead.id])
    assert _email(sessions, email_id).status == "failed"
    done = call(ops, "POST", "/api/ops/dead-letters/replay", body={"ids": [dead.id]}).json()
    assert done["replayed"] == 1 and done["outcomes"][0]["status"] == "replayed"
    stamped = letter(sessions, dead.id)
    assert stamped is not None and stamped.replayed_at is not None

    queue = f"ops-purge-{uuid.uuid4().hex[:6]}.XQ"
    letters = [add_dead_letter(sessions, actor=None, args=None, raw_body="x", queue=queue) for _ in range(3)]
    listed = call(ops, "GET", f"/api/ops/dead-letters?queue={queue}&limit=2").json()
    assert listed["total"] == 3 and len(listed["items"]) == 2 and listed["next_cursor"]
    rest = call(ops, "GET", f"/api/ops/dead-letters?queue={queue}&limit=2&cursor={listed['next_cursor']}").json()
    assert sorted(item["id"] for item in listed["items"] + rest["items"]) == letters
    selection = {"filter": {"queue": queue}}
    assert call(ops, "POST", "/api/ops/dead-letters/purge", body={**selection, "dry_run": True}).json() == {
        "matched": 3,
        "deleted": 0,
        "dry_run": True,
    }
    assert call(ops, "POST", "/api/ops/dead-letters/purge", body=selection).json()["deleted"] == 3
    with sessions() as session:
        assert dead_letters.count_matching(session, LetterFilter(queue=queue)) == 0
    both = call(ops, "POST", "/api/ops/dead-letters/purge", body={"ids": [1], "filter": {}})
    assert both.status_code == 422  # ids or filter, not both

    lines = [record.getMessage() for record in caplog.records if record.name == "pipeline.audit"]
    assert any("role=admin action=replay" in line and "matched=1 replayed=1" in line for line in lines)
    assert any("action=purge" in line and queue in line and "deleted=3" in line for line in lines)
    assert not any(ADMIN_TOKEN in record.getMessage() for record in caplog.records)


def test_a_search_finds_a_dead_email_by_recipient_and_a_filter_with_it_replays_just_that(
    ops: str, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    email_id, address, dead = dead_email(sessions, fake_resend, "Ops-Search")
    prefix = address.upper()[: address.index("@")]
    listed = call(ops, "GET", "/api/ops/dead-letters", params={"q": prefix}).json()
    assert (listed["total"], [item["id"] for item in listed["items"]]) == (1, [dead.id])
    groups = call(ops, "GET", "/api/ops/stats").json()["dead_letter_groups"]
    (emails_group,) = [group for group in groups if (group["queue"], group["actor"]) == ("emails.XQ", "send_email")]
    assert emails_group["count"] >= 1 and emails_group["newest"] is not None

    selection = {"filter": {"q": prefix}}
    dry = call(ops, "POST", "/api/ops/dead-letters/replay", body={**selection, "dry_run": True}).json()
    assert (dry["matched"], dry["replayed"], dry["ids"]) == (1, 1, [dead.id])
    assert _email(sessions, email_id).status == "failed"  # a dry run changes nothing
    fake_resend.clear_failures(address)
    done = call(ops, "POST", "/api/ops/dead-letters/replay", body=selection).json()
    assert (done["matched"], done["replayed"], done["ids"]) == (1, 1, [dead.id])
    wait_until(lambda: len(fake_resend.deliveries_to(address)) == 1, what="the replayed email sent")
    again = call(ops, "POST", "/api/ops/dead-letters/replay", body=selection).json()
    assert (again["matched"], again["replayed"]) == (0, 0)  # replayed already: a filter replays the others
    too_long = call(ops, "GET", "/api/ops/dead-letters", params={"q": "x" * 321})
    assert too_long.status_code == 422


def test_a_bulk_pause_holds_bulk_emails_while_transactional_ones_go(
    ops: str, sessions: sessionmaker[Session], fake_resend: FakeResend
) -> None:
    bulk, urgent = unique_address("paused-bulk"), unique_address("urgent")
    state = call(ops, "POST", "/api/ops/sending/pause", body={"scope": "bulk", "reason": "campaign check"}).json()
    assert state["bulk_paused"] is True and state["paused_by_operator"] is False
    with sessions.begin() as session:
        bulk_id = insert_email(session, bulk, priority="bulk")
        urgent_id = insert_email(session, urgent)

    call(ops, "GET", "/api/cron/process-email-queue")
    wait_until(lambda: _email(sessions, urgent_id).status == "sent", what="the transactional email to go")
    held = _email(sessions, bulk_id)
    assert (held.status, held.retry_count, held.attempts) == ("pending", 0, 0)

    assert call(ops, "POST", "/api/ops/sending/resume", body={"scope": "bulk"}).json()["bulk_paused"] is False
    call(ops, "GET", "/api/cron/process-email-queue")
    wait_until(lambda: _email(sessions, bulk_id).status == "sent", what="the bulk email after the resume")
    assert len(fake_resend.deliveries_to(bulk)) == 1


# --- health, and serve without CRON_SECRET ---------------------------------------------------------------


def test_readyz_is_503_without_details_when_postgresql_is_unreachable(ops_runtime: Runtime, ops: str) -> None:
    assert requests.get(f"{ops}/readyz", timeout=10).json() == {"status": "ready"}
    closed = dataclasses.replace(ops_runtime, sessions=get_sessionmaker("postgresql://postgres@127.0.0.1:9/none"))
    with running_app(closed) as base:
        answer = requests.get(f"{base}/readyz", timeout=10)
        assert (answer.status_code, answer.json()) == (503, {"status": "unavailable"})
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200


def test_readyz_is_503_when_rabbitmq_is_unreachable(ops_runtime: Runtime) -> None:
    settings = dataclasses.replace(ops_runtime.settings, broker_url="amqp://guest:guest@127.0.0.1:9/%2F")
    with running_app(dataclasses.replace(ops_runtime, settings=settings)) as base:
        answer = requests.get(f"{base}/readyz", timeout=10)
        assert (answer.status_code, answer.json()) == (503, {"status": "unavailable"})


def test_without_cron_secret_no_cron_or_ops_route_exists(intake: str) -> None:
    for path in ("/api/cron/process-email-queue", "/api/ops/stats", "/api/ops/openapi.json", "/api/ops/session"):
        assert requests.get(f"{intake}{path}", headers={"Authorization": "Bearer x"}, timeout=10).status_code == 404
    assert requests.get(f"{intake}/healthz", timeout=10).status_code == 200


# --- helpers -----------------------------------------------------------------------------------------


def _email(sessions: sessionmaker[Session], email_id: int) -> EmailQueue:
    with sessions() as session:
        row = session.get(EmailQueue, email_id)
        assert row is not None
        return row


def _event(sessions: sessionmaker[Session], event_id: int) -> WebhookEvent:
    with sessions() as session:
        row = session.get(WebhookEvent, event_id)
        assert row is not None
        return row


def _reservation(sessions: sessionmaker[Session], reservation_id: int) -> InventoryReservation:
    with sessions() as session:
        row = session.get(InventoryReservation, reservation_id)
        assert row is not None
        return row
