"""A three-node RabbitMQ cluster on this machine, with a vhost whose queues are all quorum queues.

Why: the scale-out promise (issue 13) is that the broker may lose a node in the middle of a
load and lose nothing. That needs a real cluster to break, and the machine's own RabbitMQ
(5672) serves every other test run, so it stays as it is: the three nodes here are private
ones (``bench.harness.private.PrivateRabbitmq``: their own node names, ports in 20000-32000,
data and log folders), clustered by ``join_cluster`` onto the first. They share the Erlang
cookie of the ``rabbitmq`` user, as the Debian wrapper runs every node and ``rabbitmqctl`` as
that user; a cookie is never written here.

``up`` loads the definitions ``docker-compose.yml``'s cluster ships (``deploy/rabbitmq/definitions.json``:
the ``minalesh`` user, the ``minalesh`` vhost whose default queue type is ``quorum``, RabbitMQ 3.10+,
and its policies), so the tests prove that file on a real node. Dramatiq declares its queues
without ``x-queue-type``, so on such a vhost each one (work, ``.DQ``, ``.XQ``) is a quorum queue
with a member on every node. Each test gets a vhost of its own made the same way (``fresh``).

    python -m tests.cluster.rabbit_cluster up      # prints BROKER_URL (the three nodes, ';'-separated)
    python -m tests.cluster.rabbit_cluster down    # stops the nodes and removes their folders

``up`` keeps its state in ``$TMPDIR/minalesh-cluster``; the pytest fixture of ``tests/cluster``
runs one cluster per session in a folder of its own (``rabbit_cluster``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bench.harness.private import PrivateRabbitmq, free_port
from bench.harness.waiting import wait_until

#: The definitions of ``docker-compose.yml``'s cluster: user, quorum vhost, policies.
SHIPPED_DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"
#: The vhost those definitions make.
VHOST = "minalesh"
#: How many nodes: 2 of 3 is a majority, so a quorum queue survives the loss of any one.
NODES = 3
#: Where ``up`` keeps a cluster for ``down`` to find.
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "minalesh-cluster"
#: Longest a node may take to be back in the cluster and its queues' members to catch up.
REJOIN_TIMEOUT_SECONDS = 120.0


@dataclass
class RabbitCluster:
    """Three private nodes in ``root``, clustered, with the quorum vhost ``VHOST``."""

    root: Path
    nodes: list[PrivateRabbitmq] = field(default_factory=list)
    start_seconds: float = 0.0

    @classmethod
    def planned(cls, root: Path) -> RabbitCluster:
        """Names and ports for three nodes; nothing is started."""
        tag = uuid.uuid4().hex[:6]
        nodes = [
            PrivateRabbitmq(root / f"node{n}", node=f"cluster{n}-{tag}@localhost", port=free_port(),
                            dist_port=free_port())
            for n in range(1, NODES + 1)
        ]
        return cls(root, nodes)

    @property
    def first(self) -> PrivateRabbitmq:
        return self.nodes[0]

    def broker_url(self, vhost: str = VHOST) -> str:
        """Every node's URL for ``vhost``, ';'-separated: a ``BROKER_URL`` of the cluster."""
        return ";".join(node.url(vhost) for node in self.nodes)

    def up(self) -> None:
        """Start the three nodes (together: each takes seconds), cluster them, create the vhost."""
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for node in self.nodes:
            node.init()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(PrivateRabbitmq.start, self.nodes))
        for node in self.nodes[1:]:
            node.stop_app()
            node.ctl("join_cluster", self.first.node)
            node.start_app()
        self.first.ctl("import_definitions", str(SHIPPED_DEFINITIONS))
        self.first.ctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        wait_until(self.complete, timeout=REJOIN_TIMEOUT_SECONDS, what="three running nodes in the cluster",
                   interval=0.5)
        self.start_seconds = time.monotonic() - started

    def add_quorum_vhost(self, name: str) -> None:
        """A vhost like the shipped one: quorum by default, with its policies; guest may use it."""
        self.first.ctl("add_vhost", name, "--default-queue-type", "quorum")
        self.first.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        for policy in json.loads(SHIPPED_DEFINITIONS.read_text())["policies"]:
            self.first.ctl("set_policy", "-p", name, "--apply-to", policy["apply-to"], "--priority",
                           str(policy["priority"]), policy["name"], policy["pattern"], json.dumps(policy["definition"]))

    @contextmanager
    def fresh(self, name: str) -> Iterator[str]:
        """A quorum vhost of one test, its ``BROKER_URL``; the cluster whole again and the vhost gone after."""
        self.restore()
        self.add_quorum_vhost(name)
        try:
            yield self.broker_url(name)
        finally:
            self.restore()
            self.first.ctl("delete_vhost", name)

    def running_nodes(self) -> set[str]:
        """The nodes a live node sees running."""
        status = json.loads(self.live()[0].ctl("cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    def complete(self) -> bool:
        """Every node answers and sees every other one running."""
        names = {node.node for node in self.nodes}
        return all(node.answers() for node in self.nodes) and self.running_nodes() == names

    def live(self) -> list[PrivateRabbitmq]:
        return [node for node in self.nodes if node.answers()]

    def node(self, name: str) -> PrivateRabbitmq:
        return next(node for node in self.nodes if node.node == name)

    def queues(self, vhost: str) -> dict[str, dict[str, str]]:
        """Each queue of ``vhost``: its type, leader and messages (ready and unacknowledged), as a live node says."""
        listed = self.live()[0].ctl(
            "list_queues", "-p", vhost, "name", "type", "leader", "messages", "--formatter", "json"
        )
        return {row["name"]: {key: str(value) for key, value in row.items()} for row in json.loads(listed)}

    def leader_of(self, vhost: str, queue: str) -> PrivateRabbitmq:
        return self.node(self.queues(vhost)[queue]["leader"])

    def connections_by_node(self, vhost: str) -> dict[str, int]:
        """How many client connections each node holds on ``vhost`` (told by the port they came in on)."""
        listed = json.loads(self.live()[0].ctl("list_connections", "vhost", "port", "--formatter", "json"))
        by_port = {node.port: node.node for node in self.nodes}
        counts = {node.node: 0 for node in self.nodes}
        for row in listed:
            if row["vhost"] == vhost:
                counts[by_port[int(row["port"])]] += 1
        return counts

    def restore(self) -> None:
        """Start whatever node a test stopped or killed, and wait until the three run together again."""
        for node in self.nodes:
            node.ensure_running()
        wait_until(self.complete, timeout=REJOIN_TIMEOUT_SECONDS, what="the cluster whole again", interval=0.5)

    def down(self) -> None:
        for node in self.nodes:
            node.teardown()
        shutil.rmtree(self.root, ignore_errors=True)

    def save(self) -> None:
        state = [{"root": str(n.root), "node": n.node, "port": n.port, "dist_port": n.dist_port} for n in self.nodes]
        (self.root / "cluster.json").write_text(json.dumps(state))

    @classmethod
    def load(cls, root: Path) -> RabbitCluster:
        state = json.loads((root / "cluster.json").read_text())
        return cls(root, [PrivateRabbitmq(Path(n["root"]), node=n["node"], port=n["port"],
                                          dist_port=n["dist_port"]) for n in state])


@contextmanager
def rabbit_cluster(root: Optional[Path] = None) -> Iterator[RabbitCluster]:
    """A cluster up for the block, torn down after it (on failure too)."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: no RabbitMQ cluster can run")
    cluster = RabbitCluster.planned(root or Path(tempfile.mkdtemp(prefix="minalesh-cluster-")))
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"the cluster's folder ({DEFAULT_ROOT})")
    options = parser.parse_args(argv)
    if options.command == "down":
        if (options.root / "cluster.json").exists():
            RabbitCluster.load(options.root).down()
        return
    if (options.root / "cluster.json").exists():
        raise SystemExit(f"a cluster is up in {options.root}: run `down` first")
    cluster = RabbitCluster.planned(options.root)
    try:
        cluster.up()
    except BaseException:
        cluster.down()
        raise
    cluster.save()
    print(f"# three nodes clustered in {cluster.start_seconds:.0f} s; `down` stops them", file=sys.stderr)
    print(f"BROKER_URL={cluster.broker_url()}")


if __name__ == "__main__":
    main()
