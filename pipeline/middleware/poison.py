"""Poison messages: messages no retry can help, dead-lettered without running.

Whether a message is runnable is asked in two steps, each in one place:

1. is the body a well-formed message for the queue it arrived on at all?
   ``pipeline.core.wellformed.decode`` says; the RabbitMQ consumer
   (``pipeline.core.broker``) nacks every body it refuses straight into the
   queue's XQ, before Dramatiq (or any middleware) sees it, and the archiver
   keeps those bodies raw;
2. can this well-formed message run on this process's actors? ``misfit`` says.

Two kinds fail the second step, yet Dramatiq would not notice in time:

* a message for an actor this process does not know: Dramatiq 2 moves it to the
  XQ as it arrives, but not one that arrives delayed (an ``eta``, as every retry
  has): in the worker thread ``ActorNotFound`` is raised, every middleware's
  ``after_process_message`` looking the actor up fails too, and the message is
  *acked*, lost without a trace;
* arguments that do not fit the actor's function (a host or an older release
  sending ``send_email(1, 2)``): the ``TypeError`` would be retried on the full
  schedule, and the item hooks would read the wrong arguments as an item id.

``RejectPoison`` checks both before anything runs, records the reason as the
message's final error (the archiver puts it in ``dead_letters``) and fails the
message, so the worker nacks it into its XQ and goes on with the next one. The
archiver applies the same ``misfit`` check, keeps such messages' bodies in
``raw_body`` and never hands them to the item hooks.
"""

from __future__ import annotations

import inspect
from typing import Optional

from dramatiq import Broker, MessageProxy, Middleware
from dramatiq.errors import ActorNotFound
from dramatiq.logging import get_logger
from dramatiq.middleware import SkipMessage
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.errors import PermanentError
from pipeline.core.messages import AnyMessage
from storage import dead_letters


class PoisonMessage(PermanentError):
    """The message's arguments do not fit its actor; it can never run as sent."""


def misfit(broker: Broker, message: AnyMessage) -> Optional[str]:
    """Why ``message`` can never run on ``broker``'s actors (a ``Type: detail`` line), or None."""
    try:
        actor = broker.get_actor(message.actor_name)
    except (ActorNotFound, TypeError):  # TypeError: a name that is not even a string
        return f"ActorNotFound: no actor named {message.actor_name!r}"
    signature = inspect.signature(actor.fn)
    try:
        signature.bind(*message.args, **message.kwargs)
    except TypeError as exc:
        return f"{PoisonMessage.__name__}: arguments do not fit {actor.actor_name}{_bare(signature)}: {exc}"
    return None


def _bare(signature: inspect.Signature) -> inspect.Signature:
    """``(email_id)``: the parameters without annotations, which are strings under PEP 563."""
    empty = inspect.Parameter.empty
    parameters = [parameter.replace(annotation=empty) for parameter in signature.parameters.values()]
    return signature.replace(parameters=parameters, return_annotation=empty)


class RejectPoison(Middleware):
    """Dead-letters messages of unknown actors or with misfitting arguments, unrun and unretried."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.logger = get_logger(__name__, type(self))
        self.session_factory = session_factory

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        reason = misfit(broker, message)
        if reason is None:
            return
        self.logger.error("Poison message %s dead-lettered without running: %s", message.message_id, reason)
        try:
            with self.session_factory.begin() as session:
                dead_letters.record_final_error(
                    session, message_id=message.message_id, error=reason, traceback=None, retries=0
                )
        except Exception:
            # The archiver then records the same reason from its own check.
            self.logger.exception("Could not record the final error of poison message %s.", message.message_id)
        message.fail()
        raise SkipMessage()
