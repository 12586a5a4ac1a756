"""The cluster profile's RabbitMQ definitions (``deploy/rabbitmq/definitions.json``), loaded on a real node.

``rabbit_cluster.up`` imports the file; here the shipped user logs in with the shipped password,
and the queues our processes declare in the shipped vhost are quorum queues, the work and delay
queues under the ``delivery-limit`` policy and the dead-letter queues not (a limit there would
drop a dead letter whose archiver kept dying: an XQ has nowhere to dead-letter to).
"""

from __future__ import annotations

import json

import pika
import pytest

from pipeline.bootstrap import build_broker
from pipeline.core.settings import Settings
from tests.cluster.rabbit_cluster import SHIPPED_DEFINITIONS, VHOST, RabbitCluster

pytestmark = [pytest.mark.cluster]

#: The user and password ``docker-compose.yml`` gives the processes.
USER = "minalesh:minalesh"


def test_the_shipped_vhost_makes_quorum_queues_and_limits_redeliveries_on_all_but_the_xqs(
    cluster: RabbitCluster,
) -> None:
    urls = [node.url(VHOST).replace("guest:guest", USER) for node in cluster.nodes]
    pika.BlockingConnection([pika.URLParameters(url) for url in urls]).close()  # the password hash is right
    settings = Settings.from_env({"BROKER_URL": ";".join(urls)})
    broker = build_broker(settings)
    try:
        for queue in ("emails", "webhooks"):
            broker.declare_queue(queue, ensure=True)
    finally:
        broker.close()
    listed = json.loads(cluster.first.ctl("list_queues", "-p", VHOST, "name", "type", "policy", "--formatter", "json"))
    queues = {row["name"]: row for row in listed}
    vhosts = json.loads(cluster.first.ctl("list_vhosts", "name", "default_queue_type", "--formatter", "json"))
    assert {"name": VHOST, "default_queue_type": "quorum"} in vhosts
    assert {row["type"] for row in queues.values()} == {"quorum"}, queues
    [policy] = json.loads(SHIPPED_DEFINITIONS.read_text())["policies"]
    for name in ("emails", "emails.DQ", "webhooks", "webhooks.DQ"):
        assert queues[name]["policy"] == policy["name"], queues[name]
    for name in ("emails.XQ", "webhooks.XQ"):
        assert queues[name]["policy"] in ("", None), queues[name]
