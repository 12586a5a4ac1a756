"""The fleet's pace at one email provider: take a slot, follow what the provider says, pause for it.

One ``SendLimiter`` per provider, on that provider's row of ``rate_limit_slots``
(``storage.rate_limits``); the provider's own answers arrive here already neutral
(``pipeline.providers.base``): ``Pacing`` hints, ``ProviderRateLimited``,
``QuotaExhausted``, ``ProviderUnavailable``.

Every worker thread about to call the provider first ``acquire``\\ s a slot of the
shared rate (``storage.rate_limits``). A thread that cannot have one now takes
nothing and sleeps until the next slot could be its own, then asks again: waiting
is normal (logged at DEBUG), spends no retry and holds no slot. Only a long wait
(the provider paused us for longer than ``MAX_HOLD_SECONDS``) hands the email back
to the broker, delayed until the pause ends, so no worker thread sits out a quota.

What the provider says is followed (``observe``, ``refused``, ``failed``):

* ``Pacing.limit``: the provider's requests per second, used from the next slot on
  (less ``Rate.headroom``) instead of EMAIL_RATE_LIMIT_PER_SECOND, raised or
  lowered, never above EMAIL_RATE_LIMIT_CAP;
* ``Pacing.remaining == 0``: another app of the team used the window; the fleet
  waits for ``Pacing.reset``;
* ``ProviderRateLimited`` (a 429): the whole fleet pauses for its ``retry_after``;
* ``QuotaExhausted``: the fleet pauses until the provider's reset (or
  EMAIL_QUOTA_PAUSE_MINUTES), one alert goes out, and after the pause one request
  probes: it resumes sending when it gets through, or the pause starts over;
* ``ProviderUnavailable`` (5xx, timeouts, refused connections): counted on the row;
  ``OUTAGE_FAILURES`` of them over at least ``OUTAGE_MIN_SECONDS`` (and within
  ``OUTAGE_WINDOW_SECONDS``), or ``OUTAGE_BURST_FAILURES`` however fast, with no
  success between, start an **outage pause**: the
  same pause as a quota's, reason ``outage``, whose probe comes every
  ``probe_interval`` seconds (EMAIL_OUTAGE_PROBE_SECONDS) instead of at a reset.
  While it lasts, every send to this provider raises ``ProviderPaused`` at once,
  which refunds the attempt (or lets failover try the next provider); a failure
  that finds the pause on (the probe's, or a request that was in flight) is
  refunded too. One alert when it starts, one when a probe is answered and it ends
  (``on_outage``). A single email's 4xx is not a failure of the provider and counts
  for nothing.

  "No success between" is the fleet's: every success clears the row's count, at
  once in a process that failed since its last clear and otherwise at most every
  ``SUCCESS_CLEAR_SECONDS`` (a write every half second per process, not per email).
  The span is what tells an outage from a storm: a provider failing 30% of requests
  answers 16 requests in flight with five 500s before any success is recorded, but
  not with two seconds of them, while a provider that is down fails everything for
  as long as it is down. The burst count keeps a fast fleet (SMTP unpaced, a raised
  Resend limit) from sending two seconds' worth of requests to a dead provider: it
  reaches twenty failures in well under a second. Any answer to a probe but a failure (a success, a 429, a
  refused email) shows the provider up and ends the pause; a quota's answer keeps
  its quota pause.

A process's first request goes alone (``WARM_UP_HOLD_SECONDS``): a cold process's
first request reaches the provider late (its first connection, its threads busy
rendering their first batches), and a late request paced by its slot could share
the provider's one-second window with the two after it. So the fleet holds every
other slot until its answer, and paces the next ones from that answer. This costs
one round trip per process start, and is what keeps a fleet that starts or
restarts from overrunning the provider in its first second, at the pace the fleet
already knows (the row) and never above it before the provider has spoken.

Transactional sends go first: one that finds no free slot claims precedence for
two slot intervals, during which bulk sends take none.

**The bank.** At a rate so fast that ``BANK_SECONDS`` hold two slots or more (200
requests/s and up: a raised Resend limit, far above the load), one UPDATE of the
fleet's row takes the slots of the next ``BANK_SECONDS`` together (at most
``MAX_BANKED_SLOTS``), and this process's next requests of the same kind take them
from memory: the row, which every request of the fleet writes, is written once per
ten requests instead of once each, the largest cost of a request paced far below
its limit (issue 21). A banked slot keeps its time, so the pace is the same; one not
used within ``BANKED_SLOT_LIFE_SECONDS`` of its time is dropped, and the bank is
emptied at any 429 or failure. Each slot is still used once, at most that long after
its time (or ``EARLY_SECONDS`` before), so the fleet's requests in any second stay
under the rate times 1.105: 99.5% of the provider's limit at the 10% headroom,
whatever the number of processes. A banked slot is used without asking the row again,
so a pause or a transactional precedence set meanwhile holds it back only after those
0.1 s. The life was measured: 10 ms dropped most banked slots on a busy worker (0.73
writes of the row per request against 0.11 at 0.1 s; 1 in 5 of the drain's rate). At
Resend's default 2 requests/s a slot is taken alone, as before.

An operator's pause (all sending, or bulk only) is ``pipeline.core.operator_pauses``'s;
the limiter asks it before pacing, and ``pause``, ``resume`` and ``holds`` pass
through to it (``limiter.pauses``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.errors import DEFAULT_RETRY_AFTER_SECONDS, RateLimited
from pipeline.core.operator_pauses import OperatorPauses, held_wait
from pipeline.providers.base import (
    NO_HINTS,
    EmailRefused,
    Pacing,
    ProviderPaused,
    ProviderRateLimited,
    ProviderUnavailable,
    QuotaExhausted,
)
from storage import notifications, rate_limits
from storage.database import statement_by_statement
from storage.rate_limits import Rate, Slot, SlotState

logger = logging.getLogger(__name__)

#: The rate-limit row of Resend (each provider's row is named after it).
RESEND = "resend"
#: ``pause_reason`` of an outage pause (the provider failed as a whole).
OUTAGE = "outage"
#: Failures of the provider as a whole (``ProviderUnavailable``) that start an outage pause...
OUTAGE_FAILURES = 5
#: ...when they come within this many seconds of the first, with no success between...
OUTAGE_WINDOW_SECONDS = 60.0
#: ...and the first of them is at least this old (a burst of failures among successes is no outage)...
OUTAGE_MIN_SECONDS = 2.0
#: ...or this many come, however fast.
OUTAGE_BURST_FAILURES = 20
#: A process that has not failed clears the fleet's failure count on a success at most this often.
SUCCESS_CLEAR_SECONDS = 0.5
#: During an outage a send asks again after this long (seconds), its attempt given back.
OUTAGE_REQUEUE_SECONDS = 5.0
#: The probe every few seconds during an outage, when the limiter is given no ``probe_interval``.
DEFAULT_PROBE_SECONDS = 3.0
#: A slot may be taken at most this far ahead; the taker sleeps until it.
HORIZON_SECONDS = 1.0
#: A thread waits in the limiter at most this long before its email goes back to the broker.
MAX_HOLD_SECONDS = 30.0
#: A pause longer than this is not waited out in a thread: the email is re-queued until it ends.
MAX_PAUSE_HOLD_SECONDS = 5.0
#: How long the probe after a quota pause holds the fleet back while its answer comes.
PROBE_WINDOW_SECONDS = 30.0
#: How long a process's first request holds the fleet if its answer never comes (the process died).
WARM_UP_HOLD_SECONDS = 15.0
#: Poll bounds of a waiting thread (seconds).
MIN_POLL_SECONDS = 0.005
MAX_POLL_SECONDS = 1.0
#: A thread waiting for another process's first answer asks again this often (seconds): it is short.
WARM_UP_POLL_SECONDS = 0.02
#: At a fast rate a slot is taken with the next ones due within this many seconds (the bank)...
BANK_SECONDS = 0.01
#: ...at most this many in all...
MAX_BANKED_SLOTS = 10
#: ...and a banked slot not used within this long after its time is dropped (see the module's docstring).
BANKED_SLOT_LIFE_SECONDS = 0.1
#: A request whose slot is less than this ahead goes at once: so short a sleep gives the GIL
#: away for up to Python's switch interval (5 ms) on a busy worker, and the headroom of the
#: rate (``Rate.headroom``, 10%) covers requests a few milliseconds early.
EARLY_SECONDS = 0.005


@dataclass(frozen=True, kw_only=True)
class QuotaPause:
    """A quota pause that just began, for the alert."""

    reason: str
    until: float
    detail: str
    provider: str = RESEND


@dataclass(frozen=True, kw_only=True)
class Outage:
    """An outage pause that began (``ended`` False) or ended, for the alert."""

    provider: str
    ended: bool
    since: float
    detail: str


def _raise_if_held(until: Optional[float], now: float) -> None:
    """An operator's pause (ending at ``until``) holds this send: back to the broker, to ask again later."""
    wait = held_wait(until, now)
    if wait is not None:
        raise RateLimited("sending paused by an operator", retry_after=max(wait, MIN_POLL_SECONDS))


def fleet_pause_seconds(error: RateLimited, *, quota_pause_seconds: float) -> Optional[float]:
    """How long a refusal by the provider pauses the whole fleet; None: it pauses nothing.

    A quota waits for the provider's reset (``retry_after``) or ``quota_pause_seconds``;
    a rate limit for ``retry_after`` or ``DEFAULT_RETRY_AFTER_SECONDS``; a refusal of
    one email (``KeyInFlight``) or our own limiter's pauses no one else.
    """
    if not isinstance(error, (QuotaExhausted, ProviderRateLimited)):
        return None
    wait = error.retry_after if error.retry_after > 0 else None
    if isinstance(error, QuotaExhausted):
        return wait or quota_pause_seconds
    return wait or DEFAULT_RETRY_AFTER_SECONDS


class SendLimiter:
    """Paces this process's requests to the provider within the fleet's shared rate."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        rate: Rate,
        quota_pause_seconds: float,
        on_quota_pause: Optional[Callable[[QuotaPause], None]] = None,
        on_outage: Optional[Callable[[Outage], None]] = None,
        name: str = RESEND,
        probe_interval: float = DEFAULT_PROBE_SECONDS,
        paced: bool = True,
    ) -> None:
        self.sessions = sessions
        self.rate = rate
        self.quota_pause_seconds = quota_pause_seconds
        self.on_quota_pause = on_quota_pause
        self.on_outage = on_outage
        self.name = name
        self.probe_interval = probe_interval
        #: False for a provider with no rate to share (the outbox): no slot, no row write per email.
        self.paced = paced
        #: The operators' pauses, asked before every slot.
        self.pauses = OperatorPauses(sessions)
        #: The last ``ratelimit-limit`` this process recorded, so an unchanged one costs no write.
        self._known_limit: Optional[float] = None
        #: Whether this process's first request was answered (until then each slot taken is a warm-up).
        self._warm = False
        #: When this process last counted a failure of the provider (a success after it clears the count).
        self._failed_at: Optional[float] = None
        #: When this process last cleared the fleet's failure count on a success.
        self._cleared_at = 0.0
        #: Outage pauses are read at most once a second by unpaced senders: (until, read at).
        self._outage_cache: tuple[Optional[float], float] = (None, 0.0)
        #: Slots taken ahead at a fast rate (the bank), by kind (transactional or not): their times.
        self._bank: dict[bool, deque[float]] = {True: deque(), False: deque()}
        self._bank_lock = threading.Lock()
        #: How many slots the next take asks for (1 until a slot told the rate).
        self._bank_size = 1

    @property
    def unlimited(self) -> bool:
        """EMAIL_RATE_LIMIT_PER_SECOND=0, or an unpaced provider: no pacing, no database write per email."""
        return self.rate.configured == 0 or not self.paced

    def acquire(self, *, transactional: bool) -> Slot:
        """Return when this request's slot has come; raise ``RateLimited`` to re-queue the email.

        ``ProviderPaused`` (a ``RateLimited``) when this provider is paused (an outage, a
        quota, a 429 longer than ``MAX_PAUSE_HOLD_SECONDS``): failover may try the next.
        """
        if self.unlimited:
            now = time.time()
            _raise_if_held(self.pauses.held_until_cached(transactional=transactional, now=now), now)
            return self._unpaced_slot(now)
        give_up_at = time.monotonic() + MAX_HOLD_SECONDS
        while True:
            now = time.time()
            slot = self._from_bank(transactional, now)
            if slot is None:
                slot, state = self._try(now, transactional)
            if slot is not None:
                self._keep_rest(slot, transactional)
                _sleep_until(slot.at)
                return slot
            assert state is not None
            self._raise_if_paused_long(state, now)
            wait = self._wait(state, now, transactional)
            if time.monotonic() + wait > give_up_at:
                raise RateLimited(f"no send slot within {MAX_HOLD_SECONDS:.0f}s", retry_after=wait)
            logger.debug("Waiting %.3fs for a send slot.", wait)
            time.sleep(wait)

    def _unpaced_slot(self, now: float) -> Slot:
        """No pacing, but an outage pause still holds: read (once a second) and probe as paced senders do."""
        until, read_at = self._outage_cache
        if now - read_at >= 1.0:
            with self.sessions.begin() as session:
                state = rate_limits.current(session, self.name, now=now)
            until = state.paused_until if state.pause_reason == OUTAGE and state.paused_since is not None else None
            if state.paused_since is not None and state.pause_reason == OUTAGE and (until is None or until <= now):
                # The pause's probe is due: this request is it; this process's others wait an interval
                # (each process probes for itself: unpaced senders keep no slot in the row).
                self._outage_cache = (now + self.probe_interval, now)
                return Slot(at=now, probe=True)
            self._outage_cache = (until, now)
        if until is not None and until > now:
            raise ProviderPaused(
                f"{self.name} paused ({OUTAGE})", retry_after=OUTAGE_REQUEUE_SECONDS, reason=OUTAGE, provider=self.name
            )
        return Slot(at=now, probe=False)

    @contextmanager
    def request(self, *, transactional: bool) -> Iterator[Request]:
        """One request to the provider: wait for its slot; follow its answer; pause the fleet for it.

        The caller reports a successful answer's hints with ``answered``; a
        ``RateLimited`` raised inside the block is handed to ``refused`` and re-raised,
        waiting as long as the fleet's pause it began, if any; a ``ProviderUnavailable``
        is handed to ``failed``, and becomes ``ProviderPaused`` (its attempt refunded)
        when the provider is in an outage pause.
        """
        request = Request(self, self.acquire(transactional=transactional))
        try:
            yield request
        except RateLimited as error:
            pause = self.refused(error, request.slot)
            if pause is not None:
                error.retry_after = pause
            raise
        except EmailRefused:
            self._succeeded(request.slot)  # an answer about one email: the provider is up
            raise
        except ProviderUnavailable as error:
            if self.failed(error, request.slot):
                raise ProviderPaused(
                    f"{self.name} paused ({OUTAGE}): {error}",
                    retry_after=OUTAGE_REQUEUE_SECONDS,
                    reason=OUTAGE,
                    provider=self.name,
                ) from error
            raise
        finally:
            self._end_warm_up(request.slot)

    def _from_bank(self, transactional: bool, now: float) -> Optional[Slot]:
        """A slot this process took ahead of this kind, dropping the stale ones; None when there is none."""
        with self._bank_lock:
            bank = self._bank[transactional]
            while bank:
                at = bank.popleft()
                if at >= now - BANKED_SLOT_LIFE_SECONDS:
                    return Slot(at=at, probe=False)
        return None

    def _keep_rest(self, slot: Slot, transactional: bool) -> None:
        """Bank the slots taken with ``slot``, and size the next take from the rate it was taken at."""
        if slot.interval > 0:
            self._bank_size = max(1, min(MAX_BANKED_SLOTS, int(BANK_SECONDS / slot.interval)))
        if slot.taken < 2 or slot.probe or slot.warming_until is not None:
            return  # a probe or a warm-up goes alone; the slots taken with it are left unused
        with self._bank_lock:
            self._bank[transactional].extend(slot.at + n * slot.interval for n in range(1, slot.taken))

    def _empty_bank(self) -> None:
        """The provider refused or failed a request: no slot taken before it is used."""
        with self._bank_lock:
            for bank in self._bank.values():
                bank.clear()

    def _try(self, now: float, transactional: bool) -> tuple[Optional[Slot], Optional[SlotState]]:
        # Statement by statement: the fleet's one row is locked only while the slot's UPDATE runs.
        with statement_by_statement(self.sessions) as session:
            slot = rate_limits.take_slot(
                session,
                self.name,
                now=now,
                rate=self.rate,
                horizon=HORIZON_SECONDS,
                transactional=transactional,
                probe_window=PROBE_WINDOW_SECONDS,
                warm_up=None if self._warm else WARM_UP_HOLD_SECONDS,
                slots=self._bank_size if self._warm else 1,
            )
            if slot is not None:
                return slot, None
            # take_slot refuses a held kind too: tell that apart before claiming precedence (a write).
            _raise_if_held(self.pauses.held_until(session, transactional=transactional, now=now), now)
            state = rate_limits.current(session, self.name, now=now)
            if transactional and not _paused(state, now):
                interval = 1.0 / state.per_second(self.rate)
                rate_limits.claim_precedence(session, self.name, until=now + 2 * interval)
            return None, state

    def _end_warm_up(self, slot: Slot) -> None:
        """This process's first request was answered (or failed): the fleet goes on, paced from now."""
        if slot.warming_until is None:
            return
        self._warm = True
        with self.sessions.begin() as session:
            rate_limits.end_warm_up(
                session, self.name, warming_until=slot.warming_until, now=time.time(), rate=self.rate
            )

    def holds(self, *, transactional: bool) -> bool:
        """Whether an operator's pause holds sends of this kind now (``OperatorPauses.holds``)."""
        return self.pauses.holds(transactional=transactional)

    def pause(self, scope: str, *, minutes: Optional[float], reason: Optional[str], by: str) -> None:
        """An operator's pause of ``scope`` (``OperatorPauses.pause``)."""
        self.pauses.pause(scope, minutes=minutes, reason=reason, by=by)

    def resume(self, scope: str) -> bool:
        """End an operator's pause of ``scope`` (``OperatorPauses.resume``)."""
        return self.pauses.resume(scope)

    def _raise_if_paused_long(self, state: SlotState, now: float) -> None:
        if _paused(state, now) and state.paused_until is not None:
            remaining = state.paused_until - now
            if state.pause_reason == OUTAGE:
                raise ProviderPaused(
                    f"{self.name} paused ({OUTAGE}) since {state.paused_since}",
                    retry_after=OUTAGE_REQUEUE_SECONDS,
                    reason=OUTAGE,
                    provider=self.name,
                )
            if remaining > MAX_PAUSE_HOLD_SECONDS:
                raise ProviderPaused(
                    f"sending paused ({state.pause_reason}) for {remaining:.0f}s",
                    retry_after=remaining,
                    reason=state.pause_reason or "paused",
                    provider=self.name,
                )

    def _wait(self, state: SlotState, now: float, transactional: bool) -> float:
        """Until the next slot could be ours: its time less the horizon, a pause's end, a precedence's end."""
        candidates = [state.next_slot - HORIZON_SECONDS - now]
        if _paused(state, now) and state.paused_until is not None:
            candidates.append(state.paused_until - now)
        if not transactional and state.priority_until is not None:
            candidates.append(state.priority_until - now)
        longest = MAX_POLL_SECONDS
        if state.warming_until is not None and state.warming_until > now:
            longest = WARM_UP_POLL_SECONDS
        return min(max(max(candidates), MIN_POLL_SECONDS), longest)

    # --- what the provider says -------------------------------------------------------------

    def observe(self, hints: Pacing, slot: Slot) -> None:
        """A request got through: follow its pacing hints; a probe ends the quota or outage pause."""
        now = self._succeeded(slot)
        if self.unlimited:
            return
        limit, remaining, reset = hints.limit, hints.remaining, hints.reset
        if not ((limit and limit != self._known_limit) or remaining == 0):
            return
        with self.sessions.begin() as session:
            if limit and limit != self._known_limit:
                rate_limits.record_limit(session, self.name, limit=limit, now=now)
                logger.info("The provider allows %g requests/s; pacing at %g/s.", limit, self.rate.per_second(limit))
                self._known_limit = limit
            if remaining == 0:
                rate_limits.hold_until(session, self.name, until=now + max(reset or 1.0, 0.0), now=now)

    def _succeeded(self, slot: Slot) -> float:
        """The provider answered: clear the fleet's failure count (see the module's docstring); return now."""
        now = time.time()
        if slot.probe or self._failed_at is not None or now - self._cleared_at >= SUCCESS_CLEAR_SECONDS:
            self._recovered(slot, now)
        return now

    def _recovered(self, slot: Slot, now: float) -> None:
        """A success clears the failure count; a probe's ends the pause (an outage: its second alert)."""
        self._failed_at = None
        self._cleared_at = now
        with self.sessions.begin() as session:
            rate_limits.clear_failures(session, self.name)
            state = rate_limits.current(session, self.name, now=now) if slot.probe else None
            resumed = slot.probe and rate_limits.resume(session, self.name)
            if resumed:
                notifications.wake_listeners(session)  # what the pause held back in the table goes now
        self._outage_cache = (None, now)
        if not resumed or state is None:
            return
        logger.warning("%s accepts requests again: sending resumed.", self.name)
        if state.pause_reason == OUTAGE and self.on_outage is not None:
            since = state.paused_since or now
            self.on_outage(Outage(provider=self.name, ended=True, since=since, detail=f"down for {now - since:.0f}s"))

    def failed(self, error: ProviderUnavailable, slot: Slot) -> bool:
        """The provider failed as a whole: count it; True when an outage pause is on (the attempt is refunded).

        ``OUTAGE_FAILURES`` over ``OUTAGE_MIN_SECONDS``, or ``OUTAGE_BURST_FAILURES``, start the pause (one alert); a
        failed probe (of an outage or of a quota pause) starts its next wait of ``probe_interval``.
        """
        now = time.time()
        self._failed_at = now
        self._empty_bank()
        with self.sessions.begin() as session:
            state = rate_limits.current(session, self.name, now=now)
            in_outage = slot.probe or (state.pause_reason == OUTAGE and state.paused_since is not None)
            failures, since = rate_limits.record_failure(session, self.name, now=now, window=OUTAGE_WINDOW_SECONDS)
            if not in_outage and not _outage_begins(failures, now - since):
                return False
            began = rate_limits.pause(
                session, self.name, until=now + self.probe_interval, reason=OUTAGE, quota=True, now=now, replace=True
            )
        self._outage_cache = (now + self.probe_interval, now)
        if began:
            logger.error(
                "%s fails as a whole (%s): sending to it paused, probed every %.0fs.",
                self.name,
                error,
                self.probe_interval,
            )
            if self.on_outage is not None:
                self.on_outage(Outage(provider=self.name, ended=False, since=now, detail=str(error)))
        elif slot.probe:
            logger.info("The probe of %s failed (%s): next probe in %.0fs.", self.name, error, self.probe_interval)
        return True

    def refused(self, error: RateLimited, slot: Slot) -> Optional[float]:
        """A rate limit or quota: pause the whole fleet for as long as the provider said (a quota: until its reset).

        Returns the pause (seconds) the refused request should wait too; None when it paused nothing.
        A probe refused for anything but the quota was answered: the pause it probed ends first.
        """
        self._empty_bank()
        if not isinstance(error, QuotaExhausted):
            self._succeeded(slot)
        seconds = None if self.unlimited else fleet_pause_seconds(error, quota_pause_seconds=self.quota_pause_seconds)
        if seconds is None:
            return None
        now = time.time()
        until, quota = now + seconds, isinstance(error, QuotaExhausted)
        with self.sessions.begin() as session:
            began = rate_limits.pause(session, self.name, until=until, reason=error.reason, quota=quota, now=now)
        if began:
            logger.error("Provider quota reached (%s): sending paused for %.0fs.", error.reason, seconds)
            if self.on_quota_pause is not None:
                self.on_quota_pause(QuotaPause(reason=error.reason, until=until, detail=str(error), provider=self.name))
        else:
            logger.info("The provider refused a request (%s): the fleet waits %.1fs.", error.reason, seconds)
        return seconds

    def outage_wait(self, now: Optional[float] = None) -> Optional[float]:
        """In an outage pause: seconds until its next probe is due (0: now); None when not in one."""
        now = time.time() if now is None else now
        with self.sessions.begin() as session:
            return self.outage_wait_in(session, now)

    def outage_wait_in(self, session: Session, now: float) -> Optional[float]:
        """``outage_wait`` in the caller's transaction (the fan-out reads all it decides on in one)."""
        state = rate_limits.current(session, self.name, now=now)
        if state.pause_reason != OUTAGE or state.paused_since is None:
            return None
        return max((state.paused_until or now) - now, 0.0)

    def per_second(self) -> float:
        """The requests per second the fleet uses now (what the provider said, within the cap)."""
        with self.sessions.begin() as session:
            return self.per_second_in(session, time.time())

    def per_second_in(self, session: Session, now: float) -> float:
        """``per_second`` in the caller's transaction."""
        return rate_limits.current(session, self.name, now=now).per_second(self.rate)

    def state(self) -> dict[str, Any]:
        """For ``stats``: the rate in use, what the provider said, any pause."""
        now = time.time()
        with self.sessions.begin() as session:
            state = rate_limits.current(session, self.name, now=now)
            operator = self.pauses.state(session, now=now)
        paused = _paused(state, now) and state.pause_reason is not None
        return {
            **operator,
            "provider": self.name,
            "outage": state.pause_reason == OUTAGE and state.paused_since is not None,
            "per_second": 0 if self.unlimited else round(state.per_second(self.rate), 3),
            "configured_per_second": self.rate.configured,
            "cap_per_second": self.rate.cap,
            "provider_limit": state.provider_limit,
            "paused": paused or state.paused_since is not None,
            "pause_reason": state.pause_reason,
            "paused_until": state.paused_until,
            "paused_since": state.paused_since,
        }


@dataclass(frozen=True)
class Request:
    """A request whose slot has come (see ``SendLimiter.request``)."""

    limiter: SendLimiter
    slot: Slot

    def answered(self, hints: Pacing = NO_HINTS) -> None:
        """The provider took it: follow the answer's pacing hints."""
        self.limiter.observe(hints, self.slot)


def _sleep_until(at: float) -> None:
    """Sleep until a slot's time, unless it is less than ``EARLY_SECONDS`` away: then go at once."""
    wait = at - time.time()
    if wait >= EARLY_SECONDS:
        time.sleep(wait)


def _outage_begins(failures: int, span: float) -> bool:
    """Whether ``failures`` with no success between, the first ``span`` seconds ago, make an outage."""
    return failures >= OUTAGE_BURST_FAILURES or (failures >= OUTAGE_FAILURES and span >= OUTAGE_MIN_SECONDS)


def _paused(state: SlotState, now: float) -> bool:
    return state.paused_until is not None and state.paused_until > now
