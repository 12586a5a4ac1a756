"""Retries on the shop's schedule, replacing Dramatiq's ``Retries`` middleware.

What to do with a failure is decided by ``pipeline.core.retry_policy.decide``, a pure
function; this middleware applies its answer. Differences from ``Retries``, each a
promise of the issue tracker:

* exact delays, no jitter: ``retry_delay * 2**retries_made``, capped by
  ``max_retry_delay`` (1, 2, 4, 8, 16 … minutes);
* ``PermanentError`` (and the actor's ``throws``) are never retried;
* ``RateLimited`` waits for the provider's ``retry-after`` and spends no retry;
* ``Deferred`` and an unreachable database run the message again later without
  touching its row or its retry count;
* the retry count can come from the database (``pipeline.core.outcomes.counting``),
  so attempts made by workers that died mid-way still count;
* the item's row is told (``ItemHooks``), and the final error is recorded for the
  archiver before the message is nacked into its dead-letter queue;
* delays longer than the broker may hold a message travel in hops (``long_delays``).

Options resolve message → actor → middleware default, as Dramatiq's do.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Optional

from dramatiq import Broker, Message, MessageProxy, Middleware
from dramatiq.common import xq_name
from dramatiq.logging import get_logger
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core import outcomes
from pipeline.core.errors import describe
from pipeline.core.item_hooks import ItemHooks
from pipeline.core.messages import AnyMessage
from pipeline.core.outcomes import Outcome
from pipeline.core.retry_policy import Defer, GiveUp, Policy, Refund, decide
from pipeline.middleware import item_log
from pipeline.middleware.long_delays import send_later
from storage import dead_letters
from storage.clock import utcnow
from storage.dead_letters import DeadMessage

#: An actor that declares no retry policy is never retried; policies live in ``Settings``
#: and reach the actors' options through ``pipeline.core.declare.bind``.
NO_RETRIES = {"max_retries": 0, "retry_delay": 0, "max_retry_delay": 0}

#: How a message that is given up dies: ``(message, hooks, *, error, retries)``.
GiveUpHow = Callable[..., None]


class Backoff(Middleware):
    """Retry failed messages on an exact exponential schedule, or give them up."""

    actor_options = {"max_retries", "retry_delay", "max_retry_delay", "throws", "item_hooks"}

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        max_hold_ms: int,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.session_factory = session_factory
        self.max_hold_ms = max_hold_ms

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        outcomes.clear()

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: Optional[BaseException] = None
    ) -> None:
        retries = self._retries_made(message, exception)
        if exception is None:
            outcome, details = outcomes.take_report()
        else:
            outcome, details = self._settle(broker, message, exception, retries)
        item_log.log_outcome(message, outcome, attempt=retries + 1, **details)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        item_log.log_outcome(message, Outcome.SKIPPED, attempt=self._retries_made(message, None) + 1)

    def settle_apart(self, broker: Broker, message: Message[Any], exception: BaseException) -> None:
        """Settle ``message`` as if it had run and raised ``exception``, though it never ran on its own.

        A group of single emails (``actors.email_groups``) hands each member whose send
        failed to its own message this way, with the member's retry count in its options:
        the member is then retried on its own row and schedule, or given up with a dead
        letter of its own, exactly as had it been sent alone. Its neighbours, answered,
        are not sent again. Must be called in the worker thread running the group.
        """
        retries = int(message.options.get("retries", 0))
        outcome, details = self._settle(broker, message, exception, retries, give_up=self._archive)
        item_log.log_outcome(message, outcome, attempt=retries + 1, **details)

    def _settle(
        self,
        broker: Broker,
        message: AnyMessage,
        exception: BaseException,
        retries: int,
        *,
        give_up: Optional[GiveUpHow] = None,
    ) -> tuple[Outcome, dict[str, Any]]:
        """Decide (``decide``) and apply: retry, defer or give up ``message``; what was done, for its log line.

        ``give_up``: how a message that is given up dies (default: nacked into its dead-letter queue).
        """
        actor_options = broker.get_actor(message.actor_name).options
        hooks: Optional[ItemHooks] = actor_options.get("item_hooks")
        error = describe(exception)
        deferrals = int(message.options.get("deferrals", 0))
        decision = decide(exception, retries, self._policy(message, actor_options), deferrals_made=deferrals)
        if isinstance(decision, Defer):
            if decision.deferrals is not None:
                message.options["deferrals"] = decision.deferrals
            send_later(broker, message, decision.delay_ms, self.max_hold_ms)
            return Outcome.DEFERRED, {"delay_ms": decision.delay_ms, "error": error}
        if isinstance(decision, Refund):
            self._retry(broker, message, hooks, error=error, delay_ms=decision.delay_ms, refund=True)
            return Outcome.DEFERRED, {"delay_ms": decision.delay_ms, "error": error}
        if isinstance(decision, GiveUp):
            (give_up or self._give_up)(message, hooks, error=error, retries=retries)
            return Outcome.GIVEN_UP, {"error": error}
        message.options["retries"] = decision.retries
        message.options["traceback"] = traceback.format_exc(limit=30)
        self._retry(broker, message, hooks, error=error, delay_ms=decision.delay_ms, refund=False)
        return Outcome.RETRYING, {"delay_ms": decision.delay_ms, "error": error}

    def _policy(self, message: AnyMessage, actor_options: dict[str, Any]) -> Policy:
        """The retry options of ``message``: its own, else its actor's, else ``NO_RETRIES``."""
        throws = message.options.get("throws") or actor_options.get("throws") or ()
        return Policy(
            max_retries=self._option(message, actor_options, "max_retries"),
            retry_delay_ms=self._option(message, actor_options, "retry_delay"),
            max_retry_delay_ms=self._option(message, actor_options, "max_retry_delay"),
            throws=_as_tuple(throws),
        )

    def _option(self, message: AnyMessage, actor_options: dict[str, Any], name: str) -> int:
        value = message.options.get(name, actor_options.get(name, NO_RETRIES[name]))
        return int(value)

    @staticmethod
    def _retries_made(message: MessageProxy, exception: Optional[BaseException]) -> int:
        counted = outcomes.retries_counted(exception)
        return int(counted if counted is not None else message.options.get("retries", 0))

    def _retry(
        self,
        broker: Broker,
        message: AnyMessage,
        hooks: Optional[ItemHooks],
        *,
        error: str,
        delay_ms: int,
        refund: bool,
    ) -> None:
        if hooks is not None:
            delay = timedelta(milliseconds=delay_ms)
            self._in_transaction(lambda s: hooks.retrying(s, message, error=error, delay=delay, refund=refund))
        send_later(broker, message, delay_ms, self.max_hold_ms)

    def _give_up(self, message: AnyMessage, hooks: Optional[ItemHooks], *, error: str, retries: int) -> None:
        """Record the final error and mark the item failed, then let the worker nack."""
        final_traceback = traceback.format_exc(limit=30)

        def record(session: Session) -> None:
            dead_letters.record_final_error(
                session,
                message_id=message.message_id,
                error=error,
                traceback=final_traceback,
                retries=retries,
            )
            if hooks is not None:
                hooks.given_up(session, message, error=error)

        self._in_transaction(record)
        assert isinstance(message, MessageProxy)
        message.fail()

    def _archive(self, message: AnyMessage, hooks: Optional[ItemHooks], *, error: str, retries: int) -> None:
        """Give up a message that was never in a queue: its dead letter written here, with its item's failure."""
        final_traceback = traceback.format_exc(limit=30)

        def record(session: Session) -> None:
            if hooks is not None:
                hooks.given_up(session, message, error=error)
            dead = dead_message(message, error=error, traceback=final_traceback, retries=retries)
            dead_letters.archive(session, dead)

        self._in_transaction(record)

    def _in_transaction(self, work: Any) -> None:
        """Run ``work(session)`` in its own transaction; a failure is logged, never raised.

        The message must move on (retried or dead-lettered) even when the database
        is down; the item's lease then hands it back to a fan-out later.
        """
        try:
            with self.session_factory.begin() as session:
                work(session)
        except Exception:
            self.logger.exception("Could not record the outcome of a message in the database.")


def _as_tuple(throws: Any) -> tuple[type[BaseException], ...]:
    return throws if isinstance(throws, tuple) else (throws,)


def backoff_of(broker: Broker) -> Backoff:
    """The broker's ``Backoff`` middleware (every broker ``pipeline.bootstrap`` builds has one)."""
    for middleware in broker.middleware:
        if isinstance(middleware, Backoff):
            return middleware
    raise LookupError("the broker has no Backoff middleware")


def dead_message(message: AnyMessage, *, error: str, traceback: Optional[str], retries: int) -> DeadMessage:
    """``message`` as its dead letter, as had it died on its queue's dead-letter queue now."""
    return DeadMessage(
        message_id=message.message_id,
        queue=xq_name(message.queue_name),
        actor=message.actor_name,
        args=list(message.args),
        kwargs=dict(message.kwargs),
        options=dict(message.options),
        fallback_error=error,
        fallback_traceback=traceback,
        retries=retries,
        dead_at=utcnow(),
    )
