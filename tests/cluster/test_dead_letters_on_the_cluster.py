"""Dead letters on the cluster's quorum queues: a message redelivered past its ``delivery-limit``.

A quorum queue counts the deliveries of a message that comes back unacked (its worker
killed, its connection lost with a node) and, past the ``delivery-limit`` a policy sets
(RabbitMQ 4.x: 20 unless set), dead-letters it. Ours must land in our XQ, be archived with
a cause that says so, mark its email failed, and come back through ``dlq replay`` to be sent
once, all on the cluster's quorum vhost.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

import pika
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.fake_resend import FakeResend
from bench.harness.private import Endpoints
from bench.harness.processes import run_cli
from bench.harness.shipped import Fleet, default_environment, insert_emails, sessions_of, statuses
from bench.harness.waiting import wait_until
from pipeline.archiver import DELIVERY_LIMIT_ERROR
from tests.cluster.rabbit_cluster import RabbitCluster
from tests.support.dlq_support import dramatiq_body, publish
from tests.support.helpers import unique_address

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: Deliveries a message may have before the queue dead-letters it (the test's policy; ours is 20).
DELIVERY_LIMIT = 2


def test_a_message_redelivered_past_the_delivery_limit_is_archived_and_replayed_once(
    cluster: RabbitCluster, cluster_run: Endpoints, tmp_path: Path
) -> None:
    vhost = cluster_run.broker_url.rsplit("/", 1)[1]
    node_url = cluster_run.broker_url.split(";")[1]
    cluster.first.ctl("set_policy", "-p", vhost, "--apply-to", "queues", "--priority", "1", "test-delivery-limit",
                      "^emails$", json.dumps({"delivery-limit": DELIVERY_LIMIT}))  # over the shipped one
    sessions = sessions_of(cluster_run)
    with FakeResend(api_key="re_cluster") as provider:
        env = default_environment(cluster_run, provider)
        assert run_cli("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
        address = unique_address("limit")
        [email_id] = insert_emails(sessions, [address], status="sending")
        message_id, body = dramatiq_body("send_email", [email_id])
        with ExitStack() as stack:
            fleet = Fleet(env=env, cwd=tmp_path, stack=stack)
            fleet.start("archiver", "archiver")  # declares every queue; no worker yet
            wait_until(lambda: "emails.XQ" in cluster.queues(vhost), timeout=60, what="the queues declared")
            publish(node_url, "emails", [body])
            for _ in range(DELIVERY_LIMIT + 1):
                _take_and_drop(node_url, "emails")  # as a worker killed while it held the message
            wait_until(lambda: _dead_letter(sessions, message_id), timeout=60, what="the message archived")
            archived = _dead_letter(sessions, message_id)
            failed = statuses(sessions, [email_id])
            replayed = run_cli("dlq", "replay", str(archived["id"]), env=env, cwd=tmp_path)
            fleet.start("worker", "worker", "--processes", "1", "--threads", "2")
            wait_until(lambda: statuses(sessions, [email_id]) == {"sent": 1}, timeout=60, what="the replay sent")
        types = {queue: row["type"] for queue, row in cluster.queues(vhost).items()}
    assert set(types.values()) == {"quorum"}, types
    assert archived["queue"] == "emails.XQ" and archived["actor"] == "send_email", archived
    assert archived["error"] == DELIVERY_LIMIT_ERROR, archived
    assert failed == {"failed": 1}
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert [delivery.to for delivery in provider.deliveries] == [[address]]


def _take_and_drop(url: str, queue: str) -> None:
    """Receive the message and close the connection without an ack: RabbitMQ returns it and counts a delivery."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        method = wait_until(lambda: channel.basic_get(queue)[0], timeout=30, what=f"a message in {queue}")
        assert method is not None
    finally:
        connection.close()


def _dead_letter(sessions: sessionmaker[Session], message_id: str) -> Optional[dict[str, Any]]:
    with sessions() as session:
        row = session.execute(
            text("SELECT id, queue, actor, error FROM dead_letters WHERE message_id = :id"), {"id": message_id}
        ).mappings().first()
        return dict(row) if row is not None else None
