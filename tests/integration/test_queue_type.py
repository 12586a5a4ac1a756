"""The run's queues are of the type its vhost makes (``TEST_RABBITMQ_QUEUE_TYPE``, classic by default).

``tests/cluster/test_quorum_vhost.py`` runs the dead-letter, archiving, replay and delay tests again
with ``quorum``: this test is what proves they then ran on quorum queues, dead-letter queues and
their seven-day message TTL included.
"""

from __future__ import annotations

import json
import subprocess

from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL

from bench.harness import services
from pipeline.core.runtime import Runtime


def test_every_queue_of_the_run_is_of_the_vhost_s_type_and_dead_letters_expire_after_7_days(
    runtime: Runtime, test_services: services.RunServices
) -> None:
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "-p", test_services.vhost, "name", "type", "arguments", "--formatter", "json"],
        check=True, capture_output=True, text=True, timeout=60,
    )
    queues = {row["name"]: row for row in json.loads(listed.stdout)}
    assert {"emails", "emails.DQ", "emails.XQ", "webhooks.XQ"} <= set(queues)
    assert {row["type"] for row in queues.values()} == {services.QUEUE_TYPE}, queues
    assert ["x-message-ttl", "signedint", DEAD_MESSAGE_TTL] in queues["emails.XQ"]["arguments"]
    assert DEAD_MESSAGE_TTL == 7 * 24 * 3600 * 1000
