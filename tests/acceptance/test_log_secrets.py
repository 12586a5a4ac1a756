"""No secret and no email body in any log line, with the shipped processes at DEBUG in JSON.

Every secret setting gets a distinctive value (the passwords of DATABASE_URL and
BROKER_URL too: a PostgreSQL role and a RabbitMQ user are made with them for this
run, and dropped after); the fleet (``worker -p 2 -t 8``, ``ticker``, ``archiver``,
``serve``) sends an email, fails one permanently and one until it is dead-lettered,
takes good, badly signed and malformed webhooks and requests with good and bad
tokens. Then every line of every process must parse as JSON, the per-item lines
must carry item, actor, attempt and outcome, and no secret value or body text may
appear anywhere. The emails the provider refuses (422) and fails (500) are expected
failures: one WARNING line per attempt with its cause, no "unhandled exception" and
no traceback.

The ops API's routes (cron, ``/api/ops/*``, the dashboard's sign-in) came with the
ops-api branch, merged here: each must answer (not 404), with its good token and a bad one.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.shipped import Fleet, default_environment, fleet
from storage.database import get_engine, get_sessionmaker
from tests.support.helpers import insert_email, wait_until
from tests.support.webhook_support import add_order, payment, post

pytestmark = pytest.mark.slow

#: Requests with a good and a bad token each: (method, path, the secret it carries).
OPS_REQUESTS = (
    ("POST", "/api/cron/process-email-queue", "CRON_SECRET"),
    ("GET", "/api/ops/stats", "OPS_READ_TOKEN"),
    ("GET", "/api/ops/dead-letters", "CRON_SECRET"),
    ("GET", "/metrics", "METRICS_TOKEN"),
)


@dataclass(frozen=True)
class Secrets:
    """One distinctive value per secret setting, and the body text of the emails."""

    tag: str

    def value(self, name: str) -> str:
        if name == "CRON_SECRET":  # base64, as ``openssl rand -base64 32`` makes one: + / = change when encoded
            return f"cr0n+LOGSECRET/{self.tag}+b64/x=="
        return f"{name.lower()}-LOGSECRET-{self.tag}"

    @property
    def body(self) -> str:
        return f"BODYTEXT-{self.tag}"

    @property
    def database_password(self) -> str:
        return self.value("pgpass")

    @property
    def broker_password(self) -> str:
        return self.value("mqpass")

    def all(self) -> list[str]:
        names = ("RESEND_API_KEY", "CRON_SECRET", "OPS_READ_TOKEN", "METRICS_TOKEN", "OPS_PASSWORD")
        webhook = ("PAYMENT_WEBHOOK_SECRET", "TELEBIRR_WEBHOOK_SECRET", "ALERT_WEBHOOK_URL")
        return [self.value(name) for name in (*names, *webhook)] + [self.database_password, self.broker_password]


@pytest.fixture
def secret_services(tmp_path: Path) -> Iterator[tuple[services.RunServices, str]]:
    """A database and vhost of this test, owned by a role and a user whose passwords are secrets."""
    created = services.create()
    login = f"mw_logs_{uuid.uuid4().hex[:8]}"
    yield created, login
    get_engine(created.database_url).dispose()
    services.destroy(created)
    services.admin_sql(f'DROP ROLE IF EXISTS "{login}"')
    services.rabbitmqctl("delete_user", login)


def test_no_secret_or_body_in_any_log_line(
    secret_services: tuple[services.RunServices, str], tmp_path: Path
) -> None:
    created, login = secret_services
    secrets = Secrets(uuid.uuid4().hex[:16])
    services.admin_sql(f"CREATE ROLE \"{login}\" LOGIN PASSWORD '{secrets.database_password}'")
    services.admin_sql(f'ALTER DATABASE "{created.database}" OWNER TO "{login}"')
    services.rabbitmqctl("add_user", login, secrets.broker_password)
    services.rabbitmqctl("set_permissions", "-p", created.vhost, login, ".*", ".*", ".*")
    host_part = services.POSTGRES_ADMIN_URL.split("@", 1)[1].rsplit("/", 1)[0]
    database_url = f"postgresql://{login}:{secrets.database_password}@{host_part}/{created.database}"
    broker_url = f"amqp://{login}:{secrets.broker_password}@{services.RABBITMQ_HOST}:5672/{created.vhost}"
    port = _free_port()
    with FakeResend(api_key=secrets.value("RESEND_API_KEY"), advertised_limit=1000) as provider:
        env = _environment(secrets, SecretLocation(database_url, broker_url), provider)
        sessions = get_sessionmaker(database_url)
        with fleet(env, tmp_path) as running:
            running.start("serve", "serve", "--port", str(port))
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: _answers(base), timeout=30, what="serve to answer")
            sent, refused, down = _drive(running, base, sessions, provider, secrets)
        get_engine(database_url).dispose()
    logs = {path.name: path.read_text(errors="replace") for path in tmp_path.glob("*.log")}
    assert set(logs) >= {"worker-0.log", "ticker.log", "archiver.log", "serve.log"}
    for name, content in logs.items():
        for secret in [*secrets.all(), secrets.body]:
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                assert form not in content, f"{secret!r} appears in {name} as {form!r}"
    lines = [(name, line) for name, content in logs.items() for line in content.splitlines() if line.strip()]
    entries = [_parsed(name, line) for name, line in lines]
    per_item = [entry for entry in entries if "outcome" in entry]
    outcomes = {entry["outcome"] for entry in per_item}
    assert {"sent", "given_up", "retrying", "processed"} <= outcomes, outcomes
    for entry in per_item:
        assert {"item", "actor", "attempt", "outcome", "message_id"} <= set(entry), entry
    assert _email_lines(per_item, sent) == [(1, "sent", "INFO")]
    assert _email_lines(per_item, refused) == [(1, "given_up", "WARNING")]
    three_attempts = [(1, "retrying", "WARNING"), (2, "retrying", "WARNING"), (3, "given_up", "WARNING")]
    assert _email_lines(per_item, down) == three_attempts
    for email_id in (refused, down):
        about = [entry for entry in entries if _is_about(entry, email_id)]
        dramatiqs = [entry for entry in about if "Failed to process message" in entry["message"]]
        assert not dramatiqs and all("exception" not in entry and entry["level"] != "ERROR" for entry in about), about
    causes = {entry["error"] for entry in per_item if _is_about(entry, down) and "outcome" in entry}
    # A 5xx is the provider-neutral OutcomeUnknown since #18's provider seam (the request went out).
    assert causes == {"OutcomeUnknown: Resend 500 application_error: The recipient was rejected by the fake provider."}


def _drive(
    running: Fleet, base: str, sessions: sessionmaker[Session], provider: FakeResend, secrets: Secrets
) -> list[int]:
    """Emails sent, refused and dead-lettered (their ids); webhooks good, bad and malformed; the ops routes."""
    refused, down = "refused@example.com", "down@example.com"
    provider.fail_recipient(refused, status=422)
    provider.fail_recipient(down, status=500, name="application_error")
    body = {"html": f"<p>{secrets.body}</p>", "text": secrets.body}
    ids = [_insert_alone(sessions, address, **body) for address in ("ok@example.com", refused, down)]
    order_id = add_order(sessions)
    shared = secrets.value("PAYMENT_WEBHOOK_SECRET")
    assert post(base, payment(order_id), secret=shared).status_code == 200
    assert post(base, payment(order_id), secret="wrong-secret").status_code == 401
    assert post(base, b'{"not": "an event"', secret=shared).status_code == 400
    assert post(base, payment(order_id), provider="telebirr", secret=secrets.value("TELEBIRR_WEBHOOK_SECRET"))
    _ops_requests(base, secrets)
    wait_until(lambda: _statuses(sessions, ids) == ["sent", "failed", "failed"], timeout=60, what="emails settled")
    wait_until(lambda: _count(sessions, "SELECT COUNT(*) FROM dead_letters") >= 2, timeout=60, what="dead letters")
    wait_until(
        lambda: _count(sessions, "SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'") >= 1,
        timeout=60,
        what="the payment processed",
    )
    assert all(running.alive().values()), running.logs()
    return ids


def _ops_requests(base: str, secrets: Secrets) -> None:
    """Each ops route with its good token (answered 200) and a bad one (401); the dashboard's sign-in."""
    for method, path, secret in OPS_REQUESTS:
        good = requests.request(
            method, base + path, headers={"Authorization": f"Bearer {secrets.value(secret)}"}, timeout=30
        )
        assert good.status_code == 200, (path, good.status_code, good.text[:300])
        bad = requests.request(method, base + path, headers={"Authorization": "Bearer bad-token"}, timeout=30)
        assert bad.status_code == 401, (path, bad.status_code)
    for token, status in ((secrets.value("OPS_READ_TOKEN"), 200), (secrets.value("CRON_SECRET"), 200), ("bad", 401)):
        signed_in = requests.post(f"{base}/api/ops/session", json={"token": token}, timeout=30)
        assert signed_in.status_code == status, signed_in.text[:300]
    # A client putting the secret in the query: refused, and the access line must not keep it, in any encoding.
    cron = secrets.value("CRON_SECRET")
    for query in (f"token={quote(cron, safe='')}", f"other={quote_plus(cron)}", f"t={cron}"):
        in_query = requests.get(f"{base}/api/cron/retry-webhooks?{query}", timeout=30)
        assert in_query.status_code == 401, (query, in_query.status_code)


@dataclass(frozen=True)
class SecretLocation:
    """Where the fleet's database and vhost are, as the role and the user with secret passwords."""

    database_url: str
    broker_url: str


def _environment(secrets: Secrets, location: SecretLocation, provider: FakeResend) -> dict[str, str]:
    """The shipped defaults, every secret setting distinctive, DEBUG in JSON, fast email retries."""
    named = ("CRON_SECRET", "OPS_READ_TOKEN", "METRICS_TOKEN", "PAYMENT_WEBHOOK_SECRET", "TELEBIRR_WEBHOOK_SECRET")
    return default_environment(
        location,
        provider,
        **{name: secrets.value(name) for name in named},
        ALERT_WEBHOOK_URL=f"http://127.0.0.1:9/{secrets.value('ALERT_WEBHOOK_URL')}",
        OPS_COOKIE_SECURE="false",
        LOG_LEVEL="DEBUG",
        LOG_FORMAT="json",
        EMAIL_MAX_RETRIES="2",
        EMAIL_RETRY_DELAY_MINUTES="0.005",
        EMAIL_MAX_RETRY_DELAY_MINUTES="0.01",
        EMAIL_LEASE_MINUTES="0.5",
        BROKER_MAX_HOLD_MINUTES="0.01",
    )


def _parsed(name: str, line: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        raise AssertionError(f"{name}: not a JSON line: {line[:300]}") from None
    assert {"time", "level", "logger", "process", "message"} <= set(entry), line
    return entry


def _email_lines(per_item: list[dict[str, Any]], email_id: int) -> list[tuple[int, str, str]]:
    """The attempts of ``send_email`` on ``email_id`` that ran (a deferral of an early message aside)."""
    return [
        (entry["attempt"], entry["outcome"], entry["level"])
        for entry in per_item
        if entry["item"] == email_id and entry["actor"] == "send_email" and entry["outcome"] != "deferred"
    ]


def _is_about(entry: dict[str, Any], email_id: int) -> bool:
    """A line of the message ``send_email(email_id)``: its own, or Dramatiq's about it."""
    return (entry.get("item"), entry.get("actor")) == (email_id, "send_email") or (
        f"send_email({email_id})" in entry["message"]
    )


def _insert_alone(sessions: sessionmaker[Session], address: str, **columns: str) -> int:
    """One email, claimed before the next is inserted: each goes alone, not in a batch with the others."""
    with sessions.begin() as session:
        email_id = insert_email(session, address, **columns)
    wait_until(lambda: _statuses(sessions, [email_id]) != ["pending"], timeout=30, what=f"email {email_id} claimed")
    return email_id


def _statuses(sessions: sessionmaker[Session], ids: list[int]) -> list[str]:
    with sessions() as session:
        statement = text("SELECT id, status FROM email_queue WHERE id = ANY(:ids)")
        rows = dict(session.execute(statement, {"ids": ids}).all())
    return [rows.get(email_id, "?") for email_id in ids]


def _count(sessions: sessionmaker[Session], statement: str) -> int:
    with sessions() as session:
        return int(session.execute(text(statement)).scalar_one())


def _answers(base: str) -> bool:
    try:
        requests.get(base + "/", timeout=2)
    except requests.ConnectionError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
