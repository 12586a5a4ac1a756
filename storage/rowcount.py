"""How many rows an INSERT, UPDATE or DELETE took, read the one way the type checker accepts.

``Session.execute`` is typed to return a ``Result`` whatever it runs, and ``rowcount``
is an attribute of its subclass ``CursorResult``, which is what executing a data-changing
statement returns. Saying so once here spares a ``cast`` at every statement.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import UpdateBase


def rows_affected(session: Session, statement: UpdateBase) -> int:
    """Execute ``statement`` in ``session``; the number of rows it inserted, matched or deleted."""
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount
