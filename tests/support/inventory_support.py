"""Helpers of the inventory tests on either database."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from storage.models import InventoryReservation


def reservation(sessions: sessionmaker[Session], reservation_id: int) -> InventoryReservation:
    with sessions() as session:
        row = session.get(InventoryReservation, reservation_id)
        assert row is not None
        return row


PAST = timedelta(minutes=-5)


def run_together(workers: list[Callable[[Callable[[], object]], Any]]) -> list[Any]:
    """Run each worker in its own thread; each calls its argument when ready to race.

    Returns each worker's result, or the exception it raised.
    """
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)

    def run(index: int, work: Callable[[Callable[[], object]], Any]) -> None:
        try:
            results[index] = work(lambda: barrier.wait(timeout=10))
        except BaseException as exc:  # reported to the test, not lost in the thread
            results[index] = exc

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return results
