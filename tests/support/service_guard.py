"""The unit tier's guard: any attempt to reach PostgreSQL or RabbitMQ fails the test.

Python sockets to the services' ports are refused, and so is ``psycopg2.connect``
(libpq opens its own sockets, which Python never sees). Each attempt is also
recorded, so code that catches and logs the error (the backoff middleware does,
by design) cannot hide it: the test fails all the same.

Threads that were running before the guard went on are left alone: in a full run
they are the integration tiers' in-process worker and archiver, not the test's.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2

#: The ports of the services a unit test must not need, and what listens there.
SERVICE_PORTS = {5432: "PostgreSQL", 5672: "RabbitMQ"}


class ServiceAccess(RuntimeError):
    """A unit test tried to reach PostgreSQL or RabbitMQ."""


class ServiceGuard:
    def __init__(self) -> None:
        #: What was attempted while the guard was on, since the last ``clear``.
        self.attempts: list[str] = []

    def refuse(self, what: str) -> ServiceAccess:
        self.attempts.append(what)
        return ServiceAccess(f"a unit test tried to reach {what}: it belongs in tests/integration")

    def clear(self) -> None:
        self.attempts.clear()

    @contextmanager
    def on(self) -> Iterator[None]:
        """Refuse service connections inside the block."""
        guard = self
        background = {thread.ident for thread in threading.enumerate()} - {threading.get_ident()}
        connect, connect_ex, pg_connect = socket.socket.connect, socket.socket.connect_ex, psycopg2.connect

        def checked(sock: socket.socket, address: Any) -> None:
            port = address[1] if isinstance(address, tuple) and len(address) >= 2 else None
            if port in SERVICE_PORTS and threading.get_ident() not in background:
                sock.close()  # callers close on OSError only; this is not one
                raise guard.refuse(f"{SERVICE_PORTS[port]} ({address[0]}:{port})")

        def guarded_connect(self: socket.socket, address: Any) -> None:
            checked(self, address)
            return connect(self, address)

        def guarded_connect_ex(self: socket.socket, address: Any) -> int:
            checked(self, address)
            return connect_ex(self, address)

        def guarded_pg_connect(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() in background:
                return pg_connect(*args, **kwargs)
            raise guard.refuse("PostgreSQL (psycopg2.connect)")

        socket.socket.connect = guarded_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
        psycopg2.connect = guarded_pg_connect
        try:
            yield
        finally:
            socket.socket.connect = connect  # type: ignore[method-assign]
            socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
            psycopg2.connect = pg_connect
