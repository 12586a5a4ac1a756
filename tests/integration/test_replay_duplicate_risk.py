"""``dlq replay`` past a provider's idempotency window (#18, part 5): the CLI and the ops API refuse
a replay that may deliver an email twice unless the operator accepts that risk, by name."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.processes import run_cli
from pipeline.core.runtime import Runtime
from storage import emails
from storage.clock import utcnow
from storage.models import EmailQueue
from tests.support.dlq_support import add_dead_letter, letter, own_env, own_services, own_sessions  # noqa: F401
from tests.support.helpers import insert_email, unique_address
from tests.support.ops_support import call, running_app, with_tokens


@pytest.fixture(scope="module")
def ops(runtime: Runtime) -> Iterator[str]:
    with running_app(with_tokens(runtime)) as url:
        yield url


def failed_email(sessions: sessionmaker[Session], tag: str, *, reached: str, hours_ago: float) -> tuple[int, int]:
    """A failed email whose last attempt may have reached ``reached`` ``hours_ago``, and its dead letter."""
    with sessions.begin() as session:
        email_id = insert_email(session, unique_address(tag))
        session.execute(update(EmailQueue).where(EmailQueue.id == email_id).values(status="failed", attempts=5))
        emails.record_maybe_sent(session, [email_id], provider=reached, at=utcnow() - timedelta(hours=hours_ago))
    return email_id, add_dead_letter(sessions, actor="send_email", args=[email_id])


def status_of(sessions: sessionmaker[Session], email_id: int) -> str:
    with sessions() as session:
        row = emails.get(session, email_id)
        assert row is not None
        return row.status


def test_the_cli_refuses_a_replay_that_may_deliver_twice_without_accept_duplicate_risk(
    own_env: dict[str, str],  # noqa: F811
    own_sessions: sessionmaker[Session],  # noqa: F811
    tmp_path: Path,
) -> None:
    old, dead_old = failed_email(own_sessions, "risk-resend", reached="resend", hours_ago=30)
    fresh, dead_fresh = failed_email(own_sessions, "risk-fresh", reached="resend", hours_ago=1)
    smtp, dead_smtp = failed_email(own_sessions, "risk-smtp", reached="smtp", hours_ago=0.01)

    refused = run_cli("dlq", "replay", str(dead_old), str(dead_smtp), str(dead_fresh), env=own_env, cwd=tmp_path)

    assert refused.returncode == 1, refused.stderr
    assert f"#{dead_old} duplicate risk: its last attempt may have reached resend 30.0 h ago" in refused.stdout
    assert "keeps idempotency keys 24 h" in refused.stdout and "--accept-duplicate-risk" in refused.stdout
    assert f"#{dead_smtp} duplicate risk" in refused.stdout and "keeps no idempotency keys" in refused.stdout
    assert f"#{dead_fresh} replayed" in refused.stdout  # within Resend's 24 h: its key answers
    assert (status_of(own_sessions, old), status_of(own_sessions, smtp)) == ("failed", "failed")
    stamped = letter(own_sessions, dead_old)
    assert stamped is not None and stamped.replayed_at is None

    accepted = run_cli(
        "dlq", "replay", str(dead_old), str(dead_smtp), "--accept-duplicate-risk", "--json", env=own_env, cwd=tmp_path
    )

    assert accepted.returncode == 0, accepted.stderr
    outcomes = json.loads(accepted.stdout)
    assert [outcome["status"] for outcome in outcomes] == ["replayed", "replayed"]
    assert all("(accepted)" in outcome["warning"] for outcome in outcomes)
    assert status_of(own_sessions, old) != "failed" and status_of(own_sessions, fresh) != "failed"


def test_the_ops_api_refuses_it_too_and_audits_the_accepted_risk(
    ops: str, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.audit")
    email_id, dead = failed_email(sessions, "risk-api", reached="smtp", hours_ago=0.5)
    body = {"ids": [dead]}

    refused = call(ops, "POST", "/api/ops/dead-letters/replay", body=body).json()

    assert (refused["matched"], refused["replayed"]) == (1, 0)
    assert refused["outcomes"][0]["status"] == "duplicate_risk" and "smtp" in refused["outcomes"][0]["detail"]
    assert status_of(sessions, email_id) == "failed"
    done = call(ops, "POST", "/api/ops/dead-letters/replay", body={**body, "accept_duplicate_risk": True}).json()
    assert done["replayed"] == 1 and "(accepted)" in done["outcomes"][0]["warning"]
    lines = [record.getMessage() for record in caplog.records if record.name == "pipeline.audit"]
    assert any("action=replay" in line and "replayed=1 accept_duplicate_risk=true" in line for line in lines), lines
    bad = call(ops, "POST", "/api/ops/dead-letters/replay", body={**body, "accept_duplicate_risk": "yes"})
    assert bad.status_code == 422
