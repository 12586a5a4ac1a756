"""Helpers of the inventory tests on either database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from storage.models import InventoryReservation


def reservation(sessions: sessionmaker[Session], reservation_id: int) -> InventoryReservation:
    with sessions() as session:
        row = session.get(InventoryReservation, reservation_id)
        assert row is not None
        return row


PAST = timedelta(minutes=-5)
