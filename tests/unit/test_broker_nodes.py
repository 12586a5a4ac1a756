"""``BROKER_URL`` with a cluster's nodes: each one a URL of its own, the connections spread over them."""

from __future__ import annotations

from collections import Counter

from pipeline.bootstrap import build_broker
from pipeline.core.broker import RabbitmqBroker
from pipeline.core.settings import Settings

NODES = ["amqp://app:pw@mq1:5672/shop", "amqp://app:pw@mq2:5672/shop", "amqp://app:pw@mq3:5672/shop"]
HOSTS = ["mq1", "mq2", "mq3"]


def test_the_nodes_are_split_on_semicolons_and_trimmed() -> None:
    assert Settings.from_env({"BROKER_URL": " ; ".join(NODES)}).broker_nodes == NODES
    assert Settings.from_env({"BROKER_URL": NODES[0]}).broker_nodes == NODES[:1]


def test_the_broker_confirms_its_publishes_and_each_connection_starts_a_node_further_on() -> None:
    broker = build_broker(Settings.from_env({"BROKER_URL": ";".join(NODES)}))
    assert isinstance(broker, RabbitmqBroker) and broker.confirm_delivery

    orders = [[parameters.host for parameters in broker.parameters] for _ in range(6)]

    start = HOSTS.index(orders[0][0])
    for turn, order in enumerate(orders):  # every node once, in the cycle, each time from the next
        first = (start + turn) % len(HOSTS)
        assert order == HOSTS[first:] + HOSTS[:first]


def test_processes_start_at_any_node() -> None:
    firsts = Counter(
        build_broker(Settings.from_env({"BROKER_URL": ";".join(NODES)})).parameters[0].host for _ in range(60)
    )
    assert set(firsts) == set(HOSTS)


def test_one_node_is_a_list_of_one() -> None:
    broker = build_broker(Settings.from_env({"BROKER_URL": NODES[0]}))
    assert [parameters.host for parameters in broker.parameters] == ["mq1"]
