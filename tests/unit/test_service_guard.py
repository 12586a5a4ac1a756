"""The unit tier's guard refuses PostgreSQL and RabbitMQ, however they are reached."""

from __future__ import annotations

import socket
import threading

import pika
import psycopg2
import pytest
from sqlalchemy import create_engine

from tests.support.service_guard import ServiceAccess, ServiceGuard


def test_sockets_to_the_service_ports_and_psycopg2_are_refused(service_guard: ServiceGuard) -> None:
    with pytest.raises(ServiceAccess, match="RabbitMQ"):
        socket.create_connection(("127.0.0.1", 5672), timeout=1)
    with pytest.raises(ServiceAccess, match="PostgreSQL"):
        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    with pytest.raises(ServiceAccess, match="PostgreSQL"):
        create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres").connect()
    with pytest.raises(Exception):  # noqa: B017  pika wraps whatever the socket raised
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672, connection_attempts=1))
    assert len(service_guard.attempts) == 4, service_guard.attempts
    service_guard.clear()  # refused on purpose: this test passes


def test_other_loopback_ports_stay_open(service_guard: ServiceGuard) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=1):
            pass
    assert service_guard.attempts == []


def test_threads_the_test_starts_are_guarded_too(service_guard: ServiceGuard) -> None:
    raised: list[BaseException] = []

    def connect() -> None:
        try:
            psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=connect)
    thread.start()
    thread.join()
    assert [type(exc) for exc in raised] == [ServiceAccess]
    service_guard.clear()
