"""The shape we ship: the README's production processes on default settings, against a fake
provider that enforces a real rate, on a database and vhost of their own.

Only the connection variables and the provider's address are set; every other
setting is its default, so a figure measured here is a figure of the defaults.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import services
from bench.harness.fake_resend import FakeResend
from bench.harness.processes import run_cli, running, stop
from storage.database import get_sessionmaker

#: Every variable the project reads; none leaks in from the test run's own environment.
_OURS = (
    "DATABASE_URL",
    "BROKER_URL",
    "RESEND_",
    "EMAIL_",
    "WEBHOOK",
    "PAYMENT_",
    "TELEBIRR_",
    "CBE_",
    "AWASH_",
    "GENERIC_",
    "ALERT_",
    "DEAD_LETTER_",
    "RESERVATION_",
    "BROKER_",
    "LOG_",
    "CRON_",
    "OPS_",
    "STARTUP_",
)

#: The README's production worker: ``worker --processes 2 --threads 8``.
WORKER = ("worker", "--processes", "2", "--threads", "8")


def default_environment(run: services.Located, provider: FakeResend, **extra: str) -> dict[str, str]:
    """Defaults for everything but where the services and the provider are."""
    base = {name: value for name, value in os.environ.items() if not name.startswith(_OURS)}
    return {
        **base,
        "DATABASE_URL": run.database_url,
        "BROKER_URL": run.broker_url,
        "RESEND_API_KEY": provider.api_key,
        "RESEND_API_URL": provider.url,
        "LOG_LEVEL": "INFO",
        **extra,
    }


@dataclass
class Fleet:
    """The production processes of one test, by name, and where they log."""

    env: dict[str, str]
    cwd: Path
    stack: ExitStack
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        process = self.stack.enter_context(running(*args, env=self.env, cwd=self.cwd, log=self.cwd / f"{name}.log"))
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """``kill -9`` of the command and every process it forked."""
        stop(self.processes.pop(name), kill=True)

    def terminate(self, name: str, *, timeout: float = 60.0) -> int:
        """SIGTERM to the command's own process only, as a supervisor stops it; its exit status.

        Why not the whole process group: a supervisor (docker, systemd's default
        ``KillMode`` aside) signals the main process, which stops its children itself.
        """
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(process, kill=True)
            raise AssertionError(f"{name} did not stop within {timeout}s of SIGTERM") from None

    def alive(self) -> dict[str, bool]:
        """Whether each started command is still running."""
        return {name: process.poll() is None for name, process in self.processes.items()}

    def logs(self, *, tail: Optional[int] = 3000) -> str:
        """Every process's log: its last ``tail`` characters (None: all of it)."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-tail if tail else 0:]}"
            for path in self.cwd.glob("*.log")
        )


@contextmanager
def fleet(env: dict[str, str], cwd: Path, *, workers: int = 1) -> Iterator[Fleet]:
    """Migrated database; ``workers`` worker commands, the ticker and the archiver, stopped at the end."""
    upgraded = run_cli("db", "upgrade", env=env, cwd=cwd)
    assert upgraded.returncode == 0, upgraded.stderr
    with ExitStack() as stack:
        running_fleet = Fleet(env=env, cwd=cwd, stack=stack)
        for number in range(workers):
            running_fleet.start(f"worker-{number}", *WORKER)
        running_fleet.start("ticker", "ticker")
        running_fleet.start("archiver", "archiver")
        yield running_fleet


def insert_emails(sessions: sessionmaker[Session], addresses: list[str], **columns: Any) -> list[int]:
    """One INSERT of many rows, as a host queues a burst."""
    rows = [
        {"recipient": address, "subject": f"Hello {address}", "html": "<p>hi</p>", **columns} for address in addresses
    ]
    names = ", ".join(rows[0])
    placeholders = ", ".join(f":{name}" for name in rows[0])
    with sessions.begin() as session:
        return [
            int(
                session.execute(
                    text(f"INSERT INTO email_queue ({names}) VALUES ({placeholders}) RETURNING id"), row
                ).scalar_one()
            )
            for row in rows
        ]


def statuses(sessions: sessionmaker[Session], ids: list[int]) -> dict[str, int]:
    with sessions() as session:
        rows = session.execute(
            text("SELECT status, COUNT(*) FROM email_queue WHERE id = ANY(:ids) GROUP BY status"), {"ids": ids}
        )
        return {status: int(count) for status, count in rows}


def sessions_of(run: services.Located) -> sessionmaker[Session]:
    return get_sessionmaker(run.database_url)
