"""Poison detection against the run's broker: misfit names what cannot run."""

from __future__ import annotations

import pytest
from dramatiq import Message

from pipeline.core.runtime import Runtime
from pipeline.middleware.poison import misfit

pytestmark = pytest.mark.usefixtures("runtime")


def test_misfit_names_what_cannot_run(runtime: Runtime) -> None:
    def message(actor: str, *args: object, **kwargs: object) -> Message:  # type: ignore[type-arg]
        return Message(queue_name="emails", actor_name=actor, args=args, kwargs=kwargs, options={})

    assert misfit(runtime.broker, message("send_email", 1)) is None
    assert misfit(runtime.broker, message("send_email", email_id=1)) is None
    assert "missing a required argument: 'email_id'" in (misfit(runtime.broker, message("send_email")) or "")
    assert "unexpected keyword argument 'to'" in (misfit(runtime.broker, message("send_email", 1, to="x")) or "")
    assert misfit(runtime.broker, message("gone")) == "ActorNotFound: no actor named 'gone'"
