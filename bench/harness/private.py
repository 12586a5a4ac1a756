"""A PostgreSQL cluster and a RabbitMQ node of one's own, for the runs that break them.

Why: the chaos suite and the recovery tests restart, stop and kill the database and
the broker in the middle of a load. The machine's own PostgreSQL (5432) and
RabbitMQ (5672) serve every other test run on it at the same moment, so a fault
injected there would break runs that have nothing to do with it. Here each run gets
a throwaway cluster and node on free loopback ports, in one temporary folder, that
it may stop, start, restart and kill at will; ``private_services`` tears both down
at the end, on failure too, and the next run reaps what a run killed outright
left behind.

PostgreSQL refuses to run as root, so the cluster runs as the ``postgres`` OS user
(``initdb``/``pg_ctl`` from ``/usr/lib/postgresql/*/bin``, trust auth on
127.0.0.1). The RabbitMQ node is a second node beside the machine's own: its own
node name, ports, data and log folders, config file (the machine's pins port
5672) and an empty plugin list; ``rabbitmqctl -n <node>`` controls it, and the
Debian wrapper runs both as the ``rabbitmq`` user, whose Erlang cookie they share.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pika
import pika.exceptions
import psycopg2

from bench.harness.waiting import wait_until


def run_sql(url: str, statement: str) -> None:
    """One statement in autocommit, as CREATE/DROP DATABASE and roles need."""
    connection = psycopg2.connect(url, connect_timeout=10)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


#: Every private folder starts so, under the system's temporary folder: how stale ones are found.
FOLDER_PREFIX = "minalesh-private-"
#: Longest a service may take to come up (RabbitMQ takes a few seconds on a busy 2-core machine).
START_TIMEOUT_SECONDS = 120.0
#: Longest one control command (pg_ctl, rabbitmqctl) may take.
COMMAND_TIMEOUT_SECONDS = 120.0


#: Private services listen in this range, below the kernel's ephemeral ports (32768 and up here):
#: a port picked among those can be taken, while a node is stopped, by some client's outgoing
#: connection, and the node then cannot listen again (seen: RabbitMQ's start_app failing).
PRIVATE_PORTS = range(20_000, 32_000)


def free_port() -> int:
    """A TCP port of 127.0.0.1 below the ephemeral range that nothing listens on now."""
    for _ in range(200):
        port = random.choice(PRIVATE_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PRIVATE_PORTS}")


def _as_user(user: str, command: list[str]) -> list[str]:
    """``command`` run as ``user`` when we are root (PostgreSQL refuses root); as ourselves otherwise."""
    return ["runuser", "-u", user, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], *, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """Run a control command; its output goes into the error when it fails."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stdout}{result.stderr}")
    return result


def _own(path: Path, user: str) -> None:
    """Give ``path`` (recursively) to ``user`` when we are root, so the service may write there."""
    if os.geteuid() == 0:
        shutil.chown(path, user=user)
        for child in path.rglob("*"):
            shutil.chown(child, user=user)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class PrivatePostgres:
    """One PostgreSQL cluster in ``root``, listening on 127.0.0.1:``port`` with trust auth."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _bin(self, name: str) -> str:
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
        return found[-1] if found else name

    def _pg_ctl(self, *args: str) -> None:
        _run(_as_user("postgres", [self._bin("pg_ctl"), "-D", str(self.data), *args]))

    def init(self) -> None:
        """A fresh cluster: trust auth, loopback only, its socket in ``root``, no fsync (throwaway data)."""
        self.root.mkdir(parents=True, exist_ok=True)
        _own(self.root, "postgres")
        _run(_as_user("postgres", [self._bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                                   "--no-sync", "-E", "UTF8"]))
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        self._pg_ctl("-l", str(self.root / "postgres.log"), "-w", "-t", str(int(START_TIMEOUT_SECONDS)), "start")
        wait_until(self.answers, timeout=START_TIMEOUT_SECONDS, what=f"private PostgreSQL on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop``: ``fast`` rolls back open transactions, ``immediate`` is a crash."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def restart(self) -> None:
        """``pg_ctl restart`` (fast): every connection is cut, the server is back when it returns."""
        self._pg_ctl("-m", "fast", "-w", "-t", str(int(START_TIMEOUT_SECONDS)), "-l", str(self.root / "postgres.log"),
                     "restart")
        wait_until(self.answers, timeout=START_TIMEOUT_SECONDS, what=f"private PostgreSQL on port {self.port}")

    def kill(self) -> None:
        """``kill -9`` of the postmaster: its backends die with it; ``start`` recovers the cluster."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), timeout=30, what="the postmaster gone")
            wait_until(lambda: not self.answers(), timeout=30, what="PostgreSQL's backends gone")

    def pid(self) -> Optional[int]:
        pidfile = self.data / "postmaster.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def answers(self) -> bool:
        try:
            psycopg2.connect(self.admin_url, connect_timeout=2).close()
        except psycopg2.Error:
            return False
        return True

    def execute(self, statement: str) -> None:
        run_sql(self.admin_url, statement)

    def teardown(self) -> None:
        """Stop at once (a crash is fine: the data is thrown away); kill if that fails."""
        if self.pid() is None:
            return
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pid = self.pid()
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGKILL)


@dataclass
class PrivateRabbitmq:
    """One RabbitMQ node in ``root``, AMQP on 127.0.0.1:``port``, guest/guest over loopback."""

    root: Path
    node: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:8]}@localhost")
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)

    def url(self, vhost: str = "%2F") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def environment(self) -> dict[str, str]:
        """The node's identity and folders; the CLI reads the same variables."""
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": str(self.root / "rabbitmq.pid"),
        }

    def init(self) -> None:
        """The node's folders, an empty plugin list, and a config naming its own port (the machine's pins 5672)."""
        for folder in ("mnesia", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        (self.root / "enabled_plugins").write_text("")
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
        )
        self.root.chmod(0o755)
        _own(self.root, "rabbitmq")

    def ctl(self, *args: str) -> str:
        return _run(["rabbitmqctl", "-n", self.node, *args], env=self.environment()).stdout

    def start(self) -> None:
        """Boot the whole node (Erlang VM and app) in the background; back when AMQP answers."""
        _run(["rabbitmq-server", "-detached"], env=self.environment())
        wait_until(self.answers, timeout=START_TIMEOUT_SECONDS, what=f"private RabbitMQ node {self.node}")

    def stop(self) -> None:
        """Stop the node and its Erlang VM."""
        self.ctl("stop")

    def stop_app(self) -> None:
        """Stop the RabbitMQ application, the VM staying up: every connection is closed."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")
        wait_until(self.answers, timeout=START_TIMEOUT_SECONDS, what=f"private RabbitMQ node {self.node} back")

    def messages(self, vhost: str, queue: str) -> int:
        """Messages in ``queue``, ready and unacknowledged alike (what a passive declare does not count)."""
        listed = self.ctl("list_queues", "-p", vhost, "name", "messages", "--quiet", "--no-table-headers")
        for line in listed.splitlines():
            name, _, count = line.strip().rpartition("\t")
            if name == queue:
                return int(count)
        raise LookupError(f"no queue {queue!r} in vhost {vhost!r}: {listed!r}")

    def kill(self) -> None:
        """``kill -9`` of the node's VM; ``start`` boots it again from its data."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), timeout=30, what="the RabbitMQ VM gone")

    def ensure_running(self) -> None:
        """Start the node if a test stopped it (``start_app``) or killed it (``start``: boot it again)."""
        if self.answers():
            return
        pid = self.pid()
        if pid is not None and _alive(pid):
            try:
                self.start_app()
                return
            except RuntimeError:
                self.kill()
        self.start()

    def pid(self) -> Optional[int]:
        try:
            return int((self.root / "rabbitmq.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def answers(self) -> bool:
        try:
            pika.BlockingConnection(pika.URLParameters(self.url() + "?connection_attempts=1&socket_timeout=2")).close()
        except (pika.exceptions.AMQPError, OSError):
            return False
        return True

    def teardown(self) -> None:
        """Stop the node; kill its VM if it will not stop."""
        pid = self.pid()
        if pid is None or not _alive(pid):
            return
        try:
            self.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Endpoints:
    """Where one test's database and vhost are; what ``shipped.default_environment`` reads."""

    database_url: str
    broker_url: str


@dataclass
class PrivateServices:
    """The private cluster and node of one run, and how long each took to start (seconds)."""

    root: Path
    postgres: PrivatePostgres
    rabbitmq: PrivateRabbitmq
    start_seconds: dict[str, float] = field(default_factory=dict)

    def ensure_running(self) -> None:
        """Start whatever a test left stopped or killed, so the next test finds both up."""
        if not self.postgres.answers():
            pid = self.postgres.pid()
            if pid is not None and _alive(pid):
                self.postgres.stop("immediate")
            self.postgres.start()
        self.rabbitmq.ensure_running()

    @contextmanager
    def fresh(self, name: str) -> Iterator[Endpoints]:
        """A database and a vhost named ``name`` for one test, dropped at the end."""
        self.ensure_running()
        self.postgres.execute(f'CREATE DATABASE "{name}"')
        self.rabbitmq.ctl("add_vhost", name)
        self.rabbitmq.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        try:
            yield Endpoints(database_url=self.postgres.url(name), broker_url=self.rabbitmq.url(name))
        finally:
            self.ensure_running()
            self.postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.rabbitmq.ctl("delete_vhost", name)


def _state_file(root: Path) -> Path:
    return root / "owner.json"


def reap_stale() -> list[Path]:
    """Tear down the private services of runs whose process is gone (killed before its teardown)."""
    reaped = []
    for root in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        try:
            state = json.loads(_state_file(root).read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(state["owner"])):
            continue
        PrivatePostgres(root / "postgres", port=int(state["pg_port"])).teardown()
        PrivateRabbitmq(root / "rabbitmq", node=state["node"], port=int(state["amqp_port"])).teardown()
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


@contextmanager
def private_services() -> Iterator[PrivateServices]:
    """A private PostgreSQL cluster and RabbitMQ node, up for the block and torn down after it."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: no private RabbitMQ node can run")
    reap_stale()
    root = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
    root.chmod(0o755)
    running = PrivateServices(root, PrivatePostgres(root / "postgres"), PrivateRabbitmq(root / "rabbitmq"))
    _state_file(root).write_text(
        json.dumps({"owner": os.getpid(), "pg_port": running.postgres.port, "node": running.rabbitmq.node,
                    "amqp_port": running.rabbitmq.port})
    )
    try:
        for name, service in (("postgresql", running.postgres), ("rabbitmq", running.rabbitmq)):
            started = time.monotonic()
            service.init()
            service.start()
            running.start_seconds[name] = time.monotonic() - started
        yield running
    finally:
        running.rabbitmq.teardown()
        running.postgres.teardown()
        shutil.rmtree(root, ignore_errors=True)
