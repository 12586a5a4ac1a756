"""A message as the pipeline's code is handed it: Dramatiq's ``Message``, or the worker's proxy of one.

A middleware's processing hooks get a ``MessageProxy``, which forwards every attribute of
its message and adds ``fail``; the archiver and ``dlq`` decode a plain ``Message``. The
helpers that both call (an item's hooks, the poison check, the delayed send) take either.
"""

from __future__ import annotations

from typing import Any, Union

from dramatiq import Message, MessageProxy

#: A message, or the ``MessageProxy`` a worker wraps it in.
AnyMessage = Union[Message[Any], MessageProxy]
