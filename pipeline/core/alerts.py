"""Dead-letter alerts: a digest to ALERT_WEBHOOK_URL and/or ALERT_EMAIL, at most one per interval.

How, and why so:

* The archiver, the one process that sees every dead letter arrive, ``poke``\\ s its
  alerter after archiving a new one. The alerter works in a thread of its own, so
  archiving never waits for an alert channel, and it looks again on its own while
  a digest is held back, so the tail of a burst does not wait for the next death.
* At most one digest per ALERT_MIN_INTERVAL_MINUTES across every archiver: the
  decision is made under a lock on the one row of ``alert_state``.
* A digest counts exactly the dead letters no digest has counted yet: they are
  stamped ``alerted_at`` by the statement that reads them (see
  ``storage.dead_letters.take_unalerted``), so none is counted twice or never.
* The state is committed *before* delivery. A channel that fails (Slack down, a
  refused connection, a provider error) is logged and the digest counts as sent:
  the next one carries only newer counts, and a broken channel cannot loop.
* The email goes straight through the process's providers with its own idempotency
  key, never through ``email_queue``: an alert about failing email must not become
  one more email that fails and alerts again. It tries them in EMAIL_PROVIDERS'
  order, the next after any failure: the alert that Resend is down must not depend
  on Resend, and an alert delivered twice costs less than one lost.

The same channels carry the few alerts that are not digests: a quota pause
(``announce_quota_pause``) and, through ``AlertLogHandler``, what the actors log
for a person to act on (a paid order whose stock was gone), once each.
"""

from __future__ import annotations

import enum
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Optional

import requests
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.errors import describe
from pipeline.core.settings import Settings
from pipeline.providers.base import OutgoingEmail
from pipeline.providers.base import Provider as Mailer
from pipeline.providers.pacing import Outage, QuotaPause
from storage import alerts as alert_state
from storage import dead_letters
from storage.clock import minutes, utcnow
from storage.dead_letters import UNDECODABLE, AlertedLetter

logger = logging.getLogger(__name__)

#: Seconds before an alert webhook that does not answer counts as failed.
WEBHOOK_TIMEOUT_SECONDS = 5.0
#: Dead letters quoted in a digest.
SAMPLE_COUNT = 5
#: Characters of an error quoted in a digest.
SAMPLE_ERROR_CHARS = 300
#: Longest wait before looking again at a digest held back by the interval (seconds).
MAX_RECHECK_SECONDS = 30.0
#: How often the alerter's thread notices that its archiver stopped (seconds).
POLL_SECONDS = 0.25


class Outcome(enum.Enum):
    """What one check decided."""

    #: No dead letter waits for an alert.
    NOTHING = "nothing"
    #: Some wait, but the last alert is more recent than the interval.
    HELD = "held"
    #: A digest was made, committed, and handed to the channels.
    SENT = "sent"


@dataclass(frozen=True, kw_only=True)
class Digest:
    """What one alert says: the dead letters since the last one."""

    since: datetime
    until: datetime
    total: int
    by_queue: dict[str, int]
    by_actor: dict[str, int]
    samples: list[dict[str, Any]]
    host: str

    @classmethod
    def of(cls, letters: list[AlertedLetter], *, since: datetime, until: datetime) -> Digest:
        latest = sorted(letters, key=lambda letter: letter.id, reverse=True)[:SAMPLE_COUNT]
        return cls(
            since=since,
            until=until,
            total=len(letters),
            by_queue=dict(Counter(letter.queue for letter in letters).most_common()),
            by_actor=dict(Counter(letter.actor or UNDECODABLE for letter in letters).most_common()),
            samples=[
                {
                    "id": letter.id,
                    "queue": letter.queue,
                    "actor": letter.actor,
                    "message_id": letter.message_id,
                    "error": letter.error[:SAMPLE_ERROR_CHARS],
                    "dead_at": letter.dead_at.isoformat(),
                }
                for letter in latest
            ],
            host=socket.gethostname(),
        )

    @property
    def subject(self) -> str:
        noun = "message" if self.total == 1 else "messages"
        return f"[minalesh-workers] {self.total} {noun} dead-lettered"

    @property
    def text(self) -> str:
        """The human summary (Slack shows ``text``; the email's body starts with it)."""
        actors = ", ".join(f"{name} ×{count}" for name, count in self.by_actor.items())
        lines = [
            f"{self.subject} since {self.since:%Y-%m-%d %H:%M:%S} UTC ({actors}).",
            *(f"• #{s['id']} {s['actor'] or UNDECODABLE} on {s['queue']}: {s['error']}" for s in self.samples),
            f"Inspect and redrive: `minalesh-workers dlq list --unreplayed`, then `dlq replay`. (from {self.host})",
        ]
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        """The JSON POSTed to ALERT_WEBHOOK_URL."""
        return {
            "text": self.text,
            "counts": {"total": self.total, "by_queue": self.by_queue, "by_actor": self.by_actor},
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "samples": self.samples,
            "host": self.host,
        }


class Alerter:
    """Sends dead-letter digests to the configured channels; see the module docstring."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        min_interval: timedelta,
        webhook_url: Optional[str] = None,
        email: Optional[str] = None,
        sender: str = "",
        mailers: Sequence[Mailer] = (),
    ) -> None:
        if email is not None and not mailers:
            raise ValueError("an email alert needs a provider")
        self.sessions = sessions
        self.min_interval = min_interval
        self.webhook_url = webhook_url
        self.email = email
        self.sender = sender
        self.mailers = list(mailers)
        self._poked = threading.Event()

    # --- the decision and the delivery ---------------------------------------------------------

    def check(self, *, now: Optional[datetime] = None) -> tuple[Outcome, Optional[Digest]]:
        """Send a digest if one is due; every delivery failure is logged, never raised."""
        outcome, digest, _ = self._check(now=now)
        return outcome, digest

    def _check(self, *, now: Optional[datetime] = None) -> tuple[Outcome, Optional[Digest], timedelta]:
        outcome, digest, held_for = self.take_digest(now=now)
        if digest is not None:
            self.deliver(digest)
        return outcome, digest, held_for

    def take_digest(self, *, now: Optional[datetime] = None) -> tuple[Outcome, Optional[Digest], timedelta]:
        """Decide under the lock of ``alert_state``; a digest made here is committed as sent.

        Also says how long a held digest still waits for the interval to pass.
        """
        now = now or utcnow()
        with self.sessions.begin() as session:
            state = alert_state.lock_state(session, now=now)
            if not dead_letters.has_unalerted(session):
                return Outcome.NOTHING, None, timedelta(0)
            if state.last_alert_at is not None and now - state.last_alert_at < self.min_interval:
                return Outcome.HELD, None, state.last_alert_at + self.min_interval - now
            letters = dead_letters.take_unalerted(session, at=now)
            since = state.counted_since
            alert_state.record_alert(session, at=now)
        if not letters:  # another archiver's digest took them between the probe and the update
            return Outcome.NOTHING, None, timedelta(0)
        return Outcome.SENT, Digest.of(letters, since=since, until=now), timedelta(0)

    def deliver(self, digest: Digest) -> dict[str, bool]:
        """Hand ``digest`` to every configured channel; which of them took it."""
        delivered = self.notify(
            subject=digest.subject,
            text=digest.text,
            payload=digest.payload(),
            key=f"minalesh-alert-{digest.until.isoformat()}",
        )
        logger.warning("Dead-letter alert: %d dead letters %s; delivered %s.", digest.total, digest.by_actor, delivered)
        return delivered

    def notify(self, *, subject: str, text: str, payload: dict[str, Any], key: str) -> dict[str, bool]:
        """One alert to every configured channel (the webhook gets ``payload``, the email ``text``)."""
        delivered: dict[str, bool] = {}
        if self.webhook_url:
            delivered["webhook"] = self._post(payload)
        if self.email:
            delivered["email"] = self._mail(subject, text, key)
        return delivered

    def _post(self, payload: dict[str, Any]) -> bool:
        assert self.webhook_url is not None
        try:
            response = requests.post(self.webhook_url, json=payload, timeout=WEBHOOK_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            # The exception's text may quote the URL, whose path is the webhook's secret.
            logger.error("The alert webhook is unreachable (%s); this alert is dropped.", type(exc).__name__)
            return False
        if not response.ok:  # a 4xx or 5xx: what raise_for_status raises for
            logger.error("The alert webhook answered %s; this alert is dropped.", response.status_code)
            return False
        return True

    def _mail(self, subject: str, text: str, key: str) -> bool:
        """Through the first provider that takes it (see the module's docstring)."""
        assert self.email is not None
        email = OutgoingEmail(
            sender=self.sender, recipient=self.email, subject=subject, html=None, text=text, idempotency_key=key
        )
        for mailer in self.mailers:
            try:
                mailer.send(email)
            except Exception as exc:
                logger.error("The alert email could not be sent through %s (%s).", mailer.name, describe(exc))
                continue
            return True
        logger.error("No provider took the alert email; this alert is dropped.")
        return False

    # --- the thread -----------------------------------------------------------------------------

    def poke(self) -> None:
        """A dead letter was archived: check soon (never blocks the caller)."""
        self._poked.set()

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run ``run`` in a daemon thread until ``stop`` is set."""
        thread = threading.Thread(target=self.run, args=(stop,), name="dead-letter-alerts", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        """Check when poked, and while a digest is held, again when the interval has passed.

        Starts with a check: an archiver that was down may come back to a backlog.
        """
        look_at: Optional[float] = time.monotonic()
        while not stop.is_set():
            poked = self._poked.wait(timeout=POLL_SECONDS)
            self._poked.clear()
            now = time.monotonic()
            if (look_at is None and not poked) or (look_at is not None and now < look_at):
                continue  # nothing held and nothing new, or held and not due yet
            wait = self._check_safely()
            look_at = None if wait is None else time.monotonic() + wait

    def _check_safely(self) -> Optional[float]:
        """One check; the seconds until the next look if a digest is held (or the database failed)."""
        try:
            outcome, _, held_for = self._check()
            if outcome is not Outcome.HELD:
                return None
            return min(max(held_for.total_seconds(), POLL_SECONDS), MAX_RECHECK_SECONDS)
        except Exception:
            logger.exception("Dead-letter alert check failed; trying again later.")
            return MAX_RECHECK_SECONDS


def announce_quota_pause(alerter: Optional[Alerter], pause: QuotaPause) -> None:
    """The one alert of a quota pause, through the dead-letter channels (sent once per pause)."""
    until = datetime.fromtimestamp(pause.until, UTC)
    text = (
        f"[minalesh-workers] Email sending paused: the provider answered {pause.reason}. "
        f"Sending resumes by itself after {until:%Y-%m-%d %H:%M:%S} UTC, when one probe gets through. "
        f"({pause.detail})"
    )
    logger.error("%s", text)
    if alerter is None:
        return
    payload = {
        "text": text,
        "paused": {"reason": pause.reason, "until": until.isoformat()},
        "host": socket.gethostname(),
    }
    alerter.notify(
        subject=f"[minalesh-workers] email sending paused ({pause.reason})",
        text=text,
        payload=payload,
        key=f"minalesh-pause-{pause.reason}-{int(pause.until)}",
    )


def announce_outage(alerter: Optional[Alerter], outage: Outage) -> None:
    """One alert when a provider's outage pause starts, one when a probe ends it (each sent once per pause)."""
    since = datetime.fromtimestamp(outage.since, UTC)
    if outage.ended:
        text = (
            f"[minalesh-workers] {outage.provider} accepts emails again after an outage since "
            f"{since:%Y-%m-%d %H:%M:%S} UTC ({outage.detail}); the emails that waited are being sent."
        )
        subject = f"[minalesh-workers] {outage.provider} is back: email sending resumed"
        logger.warning("%s", text)
    else:
        text = (
            f"[minalesh-workers] {outage.provider} fails as a whole ({outage.detail}). Sending to it is paused "
            f"for the whole fleet; emails wait without spending retries (or go to the next of EMAIL_PROVIDERS), "
            f"and one probe every few seconds resumes sending when it gets through."
        )
        subject = f"[minalesh-workers] {outage.provider} is down: email sending paused"
        logger.error("%s", text)
    if alerter is None:
        return
    payload = {
        "text": text,
        "outage": {"provider": outage.provider, "ended": outage.ended, "since": since.isoformat()},
        "host": socket.gethostname(),
    }
    state = "ended" if outage.ended else "began"
    alerter.notify(
        subject=subject,
        text=text,
        payload=payload,
        key=f"minalesh-outage-{outage.provider}-{int(outage.since)}-{state}",
    )


#: The logger whose ERROR records may carry an alert: the actors', which log once their transaction committed.
ALERT_LOGGER = "actors"


class AlertLogHandler(logging.Handler):
    """Forwards ERROR records that carry an ``alert`` to the channels of ``alerter``.

    An actor that must tell a person something logs it at ERROR, after its
    transaction committed, with ``extra={"alert": {"subject": ..., "key": ...,
    "details": {...}}}``: the record's message becomes the alert's text,
    ``details`` go into the webhook's JSON, ``key`` is the email's idempotency key.
    Actors sit below this module and cannot call an ``Alerter``; ``bootstrap``
    installs this handler instead, so the log line and the alert say the same.
    A record without ``alert`` is ignored; a channel failure is logged by ``notify``.
    """

    def __init__(self, alerter: Alerter) -> None:
        super().__init__(level=logging.ERROR)
        self.alerter = alerter

    def emit(self, record: logging.LogRecord) -> None:
        alert = getattr(record, "alert", None)
        if not isinstance(alert, dict):
            return
        try:
            text = f"[minalesh-workers] {record.getMessage()}"
            payload = {"text": text, **alert.get("details", {}), "host": socket.gethostname()}
            self.alerter.notify(subject=str(alert["subject"]), text=text, payload=payload, key=str(alert["key"]))
        except Exception:
            self.handleError(record)


def forward_alert_logs(alerter: Optional[Alerter]) -> None:
    """Install this process's ``AlertLogHandler`` on ``ALERT_LOGGER`` (replacing any), or with None remove it."""
    target = logging.getLogger(ALERT_LOGGER)
    for handler in [h for h in target.handlers if isinstance(h, AlertLogHandler)]:
        target.removeHandler(handler)
    if alerter is not None:
        target.addHandler(AlertLogHandler(alerter))


def from_settings(
    settings: Settings, sessions: sessionmaker[Session], mailers: Sequence[Mailer]
) -> Optional[Alerter]:
    """The alerter ALERT_* configure, or None when no channel is set."""
    if not settings.alert_webhook_url and not settings.alert_email:
        return None
    return Alerter(
        sessions,
        min_interval=minutes(settings.alert_min_interval_minutes),
        webhook_url=settings.alert_webhook_url,
        email=settings.alert_email,
        sender=settings.email_from,
        mailers=mailers,
    )
