"""An ASGI app under uvicorn in a thread of this process, on a free port: for tests and benchmarks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from bench.harness.waiting import wait_until


@contextmanager
def serving(config: uvicorn.Config) -> Iterator[str]:
    """A uvicorn server of ``config`` (port 0: a free one) in a thread of this process; yields its URL."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10, what="uvicorn to start")
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
