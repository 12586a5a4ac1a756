"""Inventory reservations without services: the TTL setting, and the same statements on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings
from storage.clock import utcnow
from storage.database import get_engine, get_sessionmaker
from storage.inventory import (
    InsufficientStock,
    available,
    commit_order,
    create_product,
    expire_all_due,
    reservation_stats,
    reserve,
)
from storage.migrate import upgrade
from storage.models import InventoryReservation
from tests.support.inventory_support import PAST, reservation


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan"])
def test_invalid_ttl_in_the_environment_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="RESERVATION_TIMEOUT_MINUTES"):
        Settings.from_env({"RESERVATION_TIMEOUT_MINUTES": value})


def test_the_same_statements_run_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    upgrade(url)
    lite = get_sessionmaker(url)
    try:
        with lite.begin() as session:
            product = create_product(session, sku="lite", name="Mitad", stock=3)
            kept = reserve(session, product, 2, ttl_minutes=15, order_id="lite-order")
        with lite.begin() as session:
            session.add(InventoryReservation(product_id=product, quantity=1, expires_at=utcnow() + PAST))
        with lite() as session, pytest.raises(InsufficientStock):
            reserve(session, product, 1, ttl_minutes=15)
        assert [(e.product_id, e.quantity) for e in expire_all_due(lite, batch_size=500)] == [(product, 1)]
        with lite.begin() as session:
            assert commit_order(session, "lite-order") == 1
            assert available(session, product) == 1
            assert reservation_stats(session)["released_last_hour"] == 1
        assert reservation(lite, kept).status == "committed"
    finally:
        get_engine(url).dispose()
