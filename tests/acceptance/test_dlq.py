"""Dead letters through the `dlq` command: list, show, stats, purge, and a replay checked with `dlq show`."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.fake_resend import FakeResend
from bench.harness.processes import run_cli
from pipeline.core.runtime import Runtime
from pipeline.ops.dlq import ReplayStatus
from storage import leases, webhooks
from storage.clock import utcnow
from tests.support.dlq_support import add_dead_letter, dead_email, dlq_json, letter, replay
from tests.support.helpers import wait_until
from tests.support.webhook_support import new_id, payment, store_event

pytestmark = pytest.mark.usefixtures("runtime")


def test_an_archived_webhook_event_is_replayed_once_its_order_exists(
    runtime: Runtime, sessions: sessionmaker[Session], environment: dict[str, str], tmp_path: Path
) -> None:
    order_id = new_id("MN-late")
    body = payment(order_id)
    with sessions.begin() as session:
        row_id = store_event(session, body).id
        leases.give_up(webhooks.TABLE, session, row_id, error=f"OrderNotFound: order {order_id} does not exist (yet)")
    dead = add_dead_letter(
        sessions, actor="process_webhook_event", args=[row_id], queue="webhooks.XQ", error="OrderNotFound: ..."
    )
    shown_before = dlq_json(environment, tmp_path, "show", str(dead))
    with sessions.begin() as session:
        session.execute(text("INSERT INTO orders (id, total, currency) VALUES (:id, 250.00, 'ETB')"), {"id": order_id})

    outcome = replay(runtime, dead)

    def event() -> Any:
        with sessions() as session:
            return webhooks.get(session, row_id)

    processed = wait_until(lambda: e if (e := event()).status == "processed" else None, what="the event processed")
    assert outcome.status is ReplayStatus.REPLAYED, outcome
    assert processed.archived is False and processed.attempts == 1 and processed.retry_count == 0
    with sessions() as session:
        assert session.scalar(text("SELECT payment_status FROM orders WHERE id = :id"), {"id": order_id}) == "paid"
    assert shown_before["item"]["kind"] == "webhook event" and shown_before["item"]["status"] == "failed, archived"
    assert replay(runtime, dead).status is ReplayStatus.ALREADY_REPLAYED


def test_list_filters_and_aligns_and_json_has_the_contract_keys(
    sessions: sessionmaker[Session], environment: dict[str, str], tmp_path: Path
) -> None:
    queue = f"test-{uuid.uuid4().hex[:8]}.XQ"
    now = utcnow()
    old = add_dead_letter(sessions, actor="send_email", args=[10**9], queue=queue, dead_at=now - timedelta(hours=3))
    recent = add_dead_letter(
        sessions, actor="send_email", args=[10**9 + 1], queue=queue, dead_at=now - timedelta(minutes=30)
    )
    raw = add_dead_letter(sessions, actor=None, args=None, queue=queue, raw_body="garbage", error="DecodeError: x")

    everything = dlq_json(environment, tmp_path, "list", "--queue", queue)
    since = dlq_json(environment, tmp_path, "list", "--queue", queue, "--since", "1h")
    four_hours_ago = (now - timedelta(hours=4)).isoformat()
    since_iso = dlq_json(environment, tmp_path, "list", "--queue", queue, "--since", four_hours_ago)
    by_actor = dlq_json(environment, tmp_path, "list", "--queue", queue, "--actor", "send_email")
    limited = run_cli("dlq", "list", "--queue", queue, "--limit", "1", "--json", env=environment, cwd=tmp_path)
    table = run_cli("dlq", "list", "--queue", queue, env=environment, cwd=tmp_path)
    bad = run_cli("dlq", "list", "--since", "yesterday-ish", env=environment, cwd=tmp_path)

    assert [item["id"] for item in everything] == [raw, recent, old]  # newest first
    contract = {"id", "queue", "actor", "message_id", "error", "retries", "dead_at", "replayed_at"}
    assert all(contract <= set(item) for item in everything)
    assert everything[0]["raw"] is True and everything[0]["actor"] is None and everything[1]["args"] == [10**9 + 1]
    assert [item["id"] for item in since] == [raw, recent]
    assert [item["id"] for item in since_iso] == [raw, recent, old]
    assert [item["id"] for item in by_actor] == [recent, old]
    assert [item["id"] for item in json.loads(limited.stdout)] == [raw] and "1 of 3 shown" in limited.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "DEAD", "AT"] and len(lines) == 4, table.stdout
    assert len({line.index(queue) for line in lines[1:]}) == 1 and lines[0].index("QUEUE") == lines[1].index(queue)
    assert "(undecodable)" in lines[1] and "DecodeError: x" in lines[1]
    assert bad.returncode == 2 and "neither a duration" in bad.stderr


def test_show_gives_the_error_traceback_and_the_item_now(
    sessions: sessionmaker[Session], fake_resend: FakeResend, environment: dict[str, str], tmp_path: Path
) -> None:
    email_id, address, dead = dead_email(sessions, fake_resend, "shown")

    shown = run_cli("dlq", "show", str(dead.id), env=environment, cwd=tmp_path)
    by_message_id = dlq_json(environment, tmp_path, "show", dead.message_id)
    missing = run_cli("dlq", "show", "987654321", env=environment, cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    assert f"call:        send_email({email_id})" in shown.stdout
    # EmailRefused: the providers' PermanentError for one email the provider refused (#18).
    assert "error:       EmailRefused: Resend 422 validation_error: Invalid `to` field." in shown.stdout
    assert f"item:        email {email_id} is failed" in shown.stdout and f"recipient: {address}" in shown.stdout
    assert "Traceback:" in shown.stdout and "EmailRefused" in shown.stdout.split("Traceback:")[1]
    assert by_message_id["id"] == dead.id and by_message_id["item"]["status"] == "failed"
    assert by_message_id["traceback"] and by_message_id["replayed_at"] is None
    assert missing.returncode == 1 and "No dead letter 987654321" in missing.stderr


def test_stats_count_by_queue_and_actor(
    sessions: sessionmaker[Session], environment: dict[str, str], tmp_path: Path
) -> None:
    queue = f"test-{uuid.uuid4().hex[:8]}.XQ"
    now = utcnow()
    for hours in (5, 1):
        add_dead_letter(sessions, actor="send_email", args=[10**9], queue=queue, dead_at=now - timedelta(hours=hours))
    add_dead_letter(sessions, actor=None, args=None, queue=queue, raw_body="?", dead_at=now - timedelta(hours=2))

    figures = dlq_json(environment, tmp_path, "stats")
    human = run_cli("dlq", "stats", env=environment, cwd=tmp_path)

    mine = {(g["actor"], g["count"], g["unreplayed"]) for g in figures["groups"] if g["queue"] == queue}
    assert mine == {("send_email", 2, 2), (None, 1, 1)}
    assert figures["by_queue"][queue] == 3 and figures["total"] >= 3
    assert figures["oldest"] <= (now - timedelta(hours=5)).isoformat() <= figures["newest"]
    (send_group,) = [g for g in figures["groups"] if g["queue"] == queue and g["actor"] == "send_email"]
    assert send_group["oldest"] < send_group["newest"]
    assert human.returncode == 0 and human.stdout.startswith("Dead letters: ")
    assert any(line.split()[:4] == [queue, "send_email", "2", "2"] for line in human.stdout.splitlines())


def test_purge_by_id_and_by_age(sessions: sessionmaker[Session], environment: dict[str, str], tmp_path: Path) -> None:
    now = utcnow()
    old = [add_dead_letter(sessions, actor="send_email", args=[10**9], dead_at=now - timedelta(days=40)) for _ in "ab"]
    young = add_dead_letter(sessions, actor="send_email", args=[10**9], dead_at=now - timedelta(days=10))
    chosen = [add_dead_letter(sessions, actor="send_email", args=[10**9]) for _ in "ab"]

    with sessions() as session:  # other tests may have left old ones too
        statement = text("SELECT COUNT(*) FROM dead_letters WHERE dead_at < now() - interval '30 days'")
        older = int(session.scalar(statement) or 0)
    by_age = run_cli("dlq", "purge", "--older-than", "30d", env=environment, cwd=tmp_path)
    by_id = run_cli("dlq", "purge", *map(str, chosen), "987654321", env=environment, cwd=tmp_path)
    neither = run_cli("dlq", "purge", env=environment, cwd=tmp_path)
    both = run_cli("dlq", "purge", "1", "--older-than", "30d", env=environment, cwd=tmp_path)
    nonsense = run_cli("dlq", "purge", "--older-than", "a month", env=environment, cwd=tmp_path)

    assert older >= 2 and by_age.stdout.startswith(f"Purged {older} dead letters that died before "), by_age
    assert by_id.stdout.strip() == "Purged 2 dead letters (1 of the IDs did not exist)."
    assert [letter(sessions, i) for i in [*old, *chosen]] == [None] * 4 and letter(sessions, young) is not None
    assert neither.returncode == both.returncode == nonsense.returncode == 2
    assert "Give dead letter IDs, or --older-than DURATION" in neither.stderr
    assert "not a duration such as 30d" in nonsense.stderr
