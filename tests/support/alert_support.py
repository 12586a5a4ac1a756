"""Helpers of the alert tests: a loopback stand-in for a Slack webhook, a quiet start, a refused URL."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from storage import alerts, dead_letters
from storage.clock import utcnow
from tests.support.dlq_support import own_sessions  # noqa: F401  (the fixture quiet uses)


@dataclass
class Post:
    arrived_at: float
    path: str
    body: dict[str, Any]


@dataclass
class HookServer:
    """A loopback stand-in for a Slack incoming webhook: records every POST, answers ``ok`` (200 unless told)."""

    url: str
    posts: list[Post] = field(default_factory=list)


@contextmanager
def hook_server(*, status: int = 200) -> Iterator[HookServer]:
    """A running stand-in for a Slack webhook answering ``status``, shut down at the end of the block."""
    server_box: dict[str, HookServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            server_box["hook"].posts.append(Post(time.monotonic(), self.path, json.loads(body)))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_box["hook"] = HookServer(url=f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/hook")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server_box["hook"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def hook() -> Iterator[HookServer]:
    with hook_server() as server:
        yield server


@pytest.fixture
def quiet(own_sessions: sessionmaker[Session], hook: HookServer) -> None:  # noqa: F811
    """No alert sent yet, every dead letter already alerted, no POST recorded."""
    now = utcnow()
    with own_sessions.begin() as session:
        alerts.reset(session, now=now)
        dead_letters.take_unalerted(session, at=now)
    hook.posts.clear()


def refused_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/services/T0/B0/s3cr3t-path"
