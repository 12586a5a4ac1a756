"""``BROKER_URL`` with a cluster's nodes: each one a URL of its own, each process starting at a random one."""

from __future__ import annotations

from dramatiq.brokers.rabbitmq import RabbitmqBroker

from pipeline.bootstrap import build_broker, spread
from pipeline.core.settings import Settings

NODES = ["amqp://app:pw@mq1:5672/shop", "amqp://app:pw@mq2:5672/shop", "amqp://app:pw@mq3:5672/shop"]


def test_the_nodes_are_split_on_semicolons_and_trimmed() -> None:
    assert Settings.from_env({"BROKER_URL": " ; ".join(NODES)}).broker_nodes == NODES
    assert Settings.from_env({"BROKER_URL": NODES[0]}).broker_nodes == NODES[:1]


def test_each_process_keeps_the_cycle_and_starts_at_any_node() -> None:
    starts = set()
    for _ in range(200):
        order = spread(NODES)
        start = NODES.index(order[0])
        assert order == NODES[start:] + NODES[:start]
        starts.add(order[0])
    assert starts == set(NODES)


def test_the_broker_knows_every_node_and_confirms_its_publishes() -> None:
    broker = build_broker(Settings.from_env({"BROKER_URL": ";".join(NODES)}))
    assert isinstance(broker, RabbitmqBroker) and broker.confirm_delivery
    assert sorted(parameters.host for parameters in broker.parameters) == ["mq1", "mq2", "mq3"]
