"""The dead-letter search (``q``) on the real PostgreSQL: what it finds, what it does not, and how it is read.

A database of its own, so the counts are exact. Items are made as the pipeline makes them
(emails, a batch, a webhook event) and their dead letters as the archiver writes them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from actors.email_batches import send_email_batch
from actors.emails import send_email
from actors.webhooks import process_webhook_event
from bench.harness import services
from bench.harness.private import run_sql
from bench.harness.processes import run_cli
from pipeline.ops.dlq import ITEM_ACTORS
from storage import batches, dead_letters, migrate
from storage.clock import utcnow
from storage.database import get_engine, get_sessionmaker
from storage.dead_letters import LetterFilter
from storage.models import DeadLetter
from tests.support.dlq_support import add_dead_letter, own_env, own_services, own_sessions  # noqa: F401
from tests.support.helpers import insert_email, unique_address
from tests.support.webhook_support import add_order, payment, store_event

#: Newer dead letters than the one searched for: more than the 2,000 the browser used to read.
NEWER = 2_100


@dataclass(frozen=True)
class Archive:
    alone: str  # the recipient of an email dead-lettered alone
    member: str  # the recipient of a member of a dead-lettered batch
    event_id: str
    order_id: str
    letters: dict[str, int]  # dead letter ids by what they are
    message_ids: dict[str, str]


def _message_id(sessions: sessionmaker[Session], letter_id: int) -> str:
    with sessions() as session:
        found = dead_letters.get(session, letter_id)
        assert found is not None
        return found.message_id


@pytest.fixture(scope="module")
def archive(own_services: services.RunServices) -> Archive:  # noqa: F811
    sessions = get_sessionmaker(own_services.database_url)
    alone, member = unique_address("Amara.Alone"), unique_address("bekele-member")
    order_id = add_order(sessions)
    body = payment(order_id)
    with sessions.begin() as session:
        email_id = insert_email(session, alone)
        members = [insert_email(session, member), insert_email(session, unique_address("other-member"))]
        (batch_id,) = batches.form(session, members, size=100)
        event_row = store_event(session, body).id
    old = utcnow() - timedelta(days=60)
    letters = {
        "alone": add_dead_letter(
            sessions, actor=send_email.actor_name, args=[email_id], dead_at=old, error="PermanentError: Resend 422"
        ),
        "batch": add_dead_letter(sessions, actor=send_email_batch.actor_name, args=[batch_id], dead_at=old),
        "webhook": add_dead_letter(
            sessions, actor=process_webhook_event.actor_name, args=[event_row], queue="webhooks.XQ", dead_at=old
        ),
        "tick": add_dead_letter(
            sessions, actor="fan_out_emails", args=[], queue="ticks.XQ", error="OperationalError: 50% of pool_timeout"
        ),
    }
    with sessions.begin() as session:  # newer dead letters of other emails, as a big archive has
        session.execute(
            text(
                "INSERT INTO dead_letters (message_id, queue, actor, args, kwargs, options, error, retries, dead_at,"
                " archived_at) SELECT 'newer-' || i, 'emails.XQ', 'send_email', jsonb_build_array(1000000 + i),"
                " '{}', '{}', 'TransientError: test', 3, now() - i * interval '1 second', now()"
                " FROM generate_series(1, :n) AS i"
            ),
            {"n": NEWER},
        )
    return Archive(
        alone=alone,
        member=member,
        event_id=body["event_id"],
        order_id=order_id,
        letters=letters,
        message_ids={name: _message_id(sessions, letter_id) for name, letter_id in letters.items()},
    )


def found(sessions: sessionmaker[Session], q: str, **filters: object) -> list[int]:
    """The ids of the dead letters ``q`` finds (first page, newest first), checked against the count."""
    chosen = LetterFilter(q=q, items=ITEM_ACTORS, **filters)  # type: ignore[arg-type]
    with sessions() as session:
        ids = [letter.id for letter in dead_letters.search(session, chosen, limit=50)]
        assert dead_letters.count_matching(session, chosen) == len(ids)
        assert dead_letters.matching_ids(session, chosen) == sorted(ids)
    return ids


def test_a_recipient_prefix_in_any_case_finds_its_email_beyond_thousands_of_newer_letters(
    own_sessions: sessionmaker[Session],  # noqa: F811
    archive: Archive,
) -> None:
    assert found(own_sessions, archive.alone.upper()[:12]) == [archive.letters["alone"]]
    assert found(own_sessions, f"  {archive.alone}  ") == [archive.letters["alone"]]  # the whole address, trimmed
    with own_sessions() as session:
        newest = dead_letters.search(session, limit=NEWER)
    assert archive.letters["alone"] not in [letter.id for letter in newest]  # older than 2,100 others


def test_a_batch_is_found_by_a_member_recipient(own_sessions: sessionmaker[Session], archive: Archive) -> None:  # noqa: F811
    assert found(own_sessions, archive.member) == [archive.letters["batch"]]


def test_a_webhook_event_is_found_by_its_event_id_and_its_order_id(
    own_sessions: sessionmaker[Session],  # noqa: F811
    archive: Archive,
) -> None:
    assert found(own_sessions, archive.event_id) == [archive.letters["webhook"]]
    assert found(own_sessions, archive.order_id) == [archive.letters["webhook"]]


def test_an_item_id_a_message_id_and_the_error_text_find_theirs(
    own_sessions: sessionmaker[Session],  # noqa: F811
    archive: Archive,
) -> None:
    assert found(own_sessions, archive.message_ids["tick"]) == [archive.letters["tick"]]
    assert found(own_sessions, "newer-") == []  # a message id matches whole, not as a prefix
    newer_item = found(own_sessions, "1000007")
    assert len(newer_item) == 1 and _message_id(own_sessions, newer_item[0]) == "newer-7"
    assert found(own_sessions, "resend 422") == [archive.letters["alone"]]  # any case, anywhere in the error
    assert found(own_sessions, "50%") == [archive.letters["tick"]]  # a LIKE wildcard is matched literally


def test_a_search_matching_nothing_finds_nothing_and_combines_with_the_other_filters(
    own_sessions: sessionmaker[Session],  # noqa: F811
    archive: Archive,
) -> None:
    assert found(own_sessions, "nobody-by-this-name@example.org") == []
    assert found(own_sessions, "Resend_422") == []  # "_" is no wildcard: "Resend 422" does not match
    assert found(own_sessions, archive.alone, queue="webhooks.XQ") == []
    assert found(own_sessions, archive.alone, since=utcnow() - timedelta(days=1)) == []
    assert found(own_sessions, archive.alone, actor=send_email.actor_name) == [archive.letters["alone"]]


def test_the_search_reads_indexes_not_the_archive(own_sessions: sessionmaker[Session], archive: Archive) -> None:  # noqa: F811
    statement = select(DeadLetter.id).where(dead_letters.search_clause(archive.alone, ITEM_ACTORS))
    with own_sessions.begin() as session:
        connection = session.connection()
        sql = str(statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
        connection.exec_driver_sql("ANALYZE dead_letters")
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a small table: can an index serve each part?
        plan = "\n".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {sql}"))
    assert "Seq Scan on dead_letters" not in plan, plan
    assert "ix_dead_letters_item" in plan and "ix_dead_letters_error_trgm" in plan, plan


def test_dlq_list_q_prints_what_the_search_finds(
    own_env: dict[str, str],  # noqa: F811
    archive: Archive,
    tmp_path: Path,
) -> None:
    result = run_cli("dlq", "list", "-q", archive.member.upper(), "--json", env=own_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [letter["id"] for letter in json.loads(result.stdout)] == [archive.letters["batch"]]
    table = run_cli("dlq", "list", "--search", archive.event_id, env=own_env, cwd=tmp_path)
    assert table.returncode == 0 and "process_webhook_event" in table.stdout
    blank = run_cli("dlq", "purge", "-q", "  ", env=own_env, cwd=tmp_path)
    assert blank.returncode == 2 and "give some text to search for" in blank.stderr
    with_ids = run_cli("dlq", "replay", "1", "-q", archive.alone, env=own_env, cwd=tmp_path)
    assert with_ids.returncode == 2 and "--search select for --all" in with_ids.stderr


def test_dlq_purge_q_deletes_what_the_search_finds_and_nothing_else(
    own_env: dict[str, str],  # noqa: F811
    own_sessions: sessionmaker[Session],  # noqa: F811
    archive: Archive,
    tmp_path: Path,
) -> None:
    doomed = add_dead_letter(own_sessions, actor="fan_out_emails", args=[], queue="ticks.XQ", error="Doomed: purge me")
    with own_sessions() as session:
        before = dead_letters.count(session)
    result = run_cli("dlq", "purge", "--search", "DOOMED: purge", env=own_env, cwd=tmp_path)
    assert result.returncode == 0 and "Purged 1 dead letter found by 'DOOMED: purge'." in result.stdout, result.stderr
    with own_sessions() as session:
        assert dead_letters.get(session, doomed) is None and dead_letters.count(session) == before - 1


def test_a_role_that_may_not_create_pg_trgm_migrates_without_the_trigram_index() -> None:
    """Migration 0011 must not stop a deploy whose role lacks CREATE on the database: it warns and skips."""
    name = f"mw_noext_{uuid.uuid4().hex[:8]}"
    role = f"{name}_owner"
    admin_url = services.create_database(name)
    services.admin_sql(f'CREATE ROLE "{role}" LOGIN')
    try:
        run_sql(admin_url, f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"')
        role_url = admin_url.replace("://postgres@", f"://{role}@", 1)
        migrate.upgrade(role_url)
        with get_engine(role_url).connect() as connection:
            indexes = set(connection.scalars(text("SELECT indexname FROM pg_indexes WHERE tablename = 'dead_letters'")))
            version = connection.scalar(text("SELECT version_num FROM alembic_version"))
        get_engine(role_url).dispose()
        assert "ix_dead_letters_item" in indexes and "ix_dead_letters_error_trgm" not in indexes
        assert version == migrate.head_revision()
    finally:
        services.drop_database(name)
        services.admin_sql(f'DROP ROLE IF EXISTS "{role}"')
