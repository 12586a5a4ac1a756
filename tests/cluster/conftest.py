"""Fixtures of the cluster tier: one three-node RabbitMQ cluster for the session, a quorum vhost and a
database of the machine's PostgreSQL for each test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from bench.harness import services
from bench.harness.private import Endpoints
from storage.database import get_engine
from tests.cluster.rabbit_cluster import RabbitCluster, rabbit_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[RabbitCluster]:
    """Three nodes clustered (about 30 s on 2 cores), shared by the tier, torn down at the end of the run."""
    with ExitStack() as stack:
        yield services.entered(stack, rabbit_cluster(), "a three-node RabbitMQ cluster")


@pytest.fixture
def cluster_run(cluster: RabbitCluster) -> Iterator[Endpoints]:
    """A quorum vhost of the cluster (every node in ``BROKER_URL``) and a database, for one test."""
    name = f"mw_cluster_{uuid.uuid4().hex[:10]}"
    database_url = services.create_database(name)
    try:
        with cluster.fresh(name) as broker_url:
            yield Endpoints(database_url=database_url, broker_url=broker_url)
    finally:
        get_engine(database_url).dispose()
        services.drop_database(name)
