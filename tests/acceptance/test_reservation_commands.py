"""`tick reservations` and `stats --json` as an operator runs them, on real PostgreSQL."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.harness.processes import CLI, run_cli
from storage import inventory
from storage.database import get_sessionmaker

pytestmark = pytest.mark.slow


@pytest.fixture
def sessions(environment: dict[str, str]) -> sessionmaker[Session]:
    factory = get_sessionmaker(environment["DATABASE_URL"])
    with factory.begin() as session:  # other tests' leftovers would be expired by our ticks too
        session.execute(text("UPDATE inventory_reservations SET status = 'released' WHERE status = 'active'"))
    return factory


def seed(sessions: sessionmaker[Session]) -> tuple[list[int], dict[int, int]]:
    """Products and reservations inserted by SQL, some expired; the expired ids and stock."""
    expired: list[int] = []
    with sessions.begin() as session:
        products = [
            inventory.create_product(session, sku=f"SKU-{uuid.uuid4().hex[:8]}", name=f"Item {n}", stock=100)
            for n in range(3)
        ]
        insert = text(
            "INSERT INTO inventory_reservations (product_id, quantity, expires_at) "
            "VALUES (:product, :quantity, NOW() + make_interval(mins => :minutes)) RETURNING id"
        )
        for index in range(30):
            product, quantity = products[index % 3], 1 + index % 4
            minutes = -5 if index % 2 == 0 else 10
            reservation_id = session.execute(insert, {"product": product, "quantity": quantity, "minutes": minutes})
            if minutes < 0:
                expired.append(int(reservation_id.scalar_one()))
        available = {product: inventory.available(session, product) for product in products}
    return expired, available


def expired_quantities(sessions: sessionmaker[Session], ids: list[int]) -> dict[int, int]:
    with sessions() as session:
        rows = session.execute(
            text(
                "SELECT product_id, SUM(quantity) FROM inventory_reservations "
                "WHERE id = ANY(:ids) GROUP BY product_id"
            ),
            {"ids": ids},
        ).all()
        return {int(product): int(total) for product, total in rows}


def test_one_tick_expires_exactly_the_expired_and_restores_their_quantities(
    environment: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    expired, before = seed(sessions)
    overdue = "SELECT COUNT(*) FROM inventory_reservations WHERE status = 'active' AND expires_at < NOW()"
    with sessions() as session:
        assert session.scalar(text(overdue)) == 15

    result = run_cli("tick", "reservations", env=environment, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    released = {int(m) for m in re.findall(r"released reservation (\d+)", result.stdout)}
    assert released == set(expired)
    restored = expired_quantities(sessions, expired)
    with sessions() as session:
        assert session.scalar(text(overdue)) == 0
        for product, available in before.items():
            assert inventory.available(session, product) == available + restored[product]
        statuses = dict(
            session.execute(
                text("SELECT status, COUNT(*) FROM inventory_reservations WHERE id = ANY(:ids) GROUP BY status"),
                {"ids": expired},
            ).all()
        )
    assert statuses == {"expired": 15}
    stats = json.loads(run_cli("stats", "--json", env=environment, cwd=tmp_path).stdout)
    assert stats["reservations"]["expired_not_released"] == 0
    assert stats["reservations"]["active"] == 15
    assert stats["reservations"]["released_last_hour"] >= 15


def test_two_concurrent_ticks_restore_stock_once(
    environment: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    expired, before = seed(sessions)

    ticks = [
        subprocess.Popen(
            [CLI, "tick", "reservations"], env=environment, cwd=tmp_path, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [tick.communicate(timeout=120)[0] for tick in ticks]

    released = [int(m) for output in outputs for m in re.findall(r"released reservation (\d+)", output)]
    assert sorted(released) == sorted(expired)  # each exactly once across both ticks
    restored = expired_quantities(sessions, expired)
    with sessions() as session:
        for product, available in before.items():
            assert inventory.available(session, product) == available + restored[product]
