"""What the actors of this process share: settings, database sessions, the mailer, its pace, its alerts.

Set once per process by ``pipeline.bootstrap.bootstrap``; actors read it with ``current()``.
Like Dramatiq's global broker, it is the process's wiring, not state that changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dramatiq import Broker
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.alerts import Alerter
from pipeline.core.limiter import SendLimiter
from pipeline.core.mailer import Mailer
from pipeline.core.settings import Settings


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    broker: Broker
    sessions: sessionmaker[Session]
    mailer: Mailer
    limiter: SendLimiter
    #: The one alerter of the process (None: no ALERT_* channel is set); the limiter's quota
    #: pauses, the actors' alert logs and the archiver's digests all go through it.
    alerter: Optional[Alerter] = None


_current: Optional[Runtime] = None


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    """The runtime of this process; bootstrap first."""
    if _current is None:
        raise RuntimeError("minalesh-workers is not bootstrapped: call pipeline.bootstrap.bootstrap() first")
    return _current


def is_installed() -> bool:
    return _current is not None
