"""What the actors of this process share: settings, database sessions, the providers behind ``sending``, alerts.

Set once per process by ``pipeline.bootstrap.bootstrap``; actors read it with ``current()``.
Like Dramatiq's global broker, it is the process's wiring, not state that changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dramatiq import Broker
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.alerts import Alerter
from pipeline.core.settings import Settings
from pipeline.providers.base import Provider
from pipeline.providers.sending import Sending


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    broker: Broker
    sessions: sessionmaker[Session]
    #: The one call of the email actors: the providers of EMAIL_PROVIDERS, paced, paused, failing over.
    sending: Sending
    #: The one alerter of the process (None: no ALERT_* channel is set); the providers' quota and
    #: outage pauses, the actors' alert logs and the archiver's digests all go through it.
    alerter: Optional[Alerter] = None

    @property
    def mailer(self) -> Provider:
        """The first provider (alerts go through it, unpaced)."""
        return self.sending.primary.provider


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
