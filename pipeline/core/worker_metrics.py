"""Where a worker command's Dramatiq Prometheus metrics live, and whether there are any.

Dramatiq's ``Prometheus`` middleware (``dramatiq[prometheus]``) counts messages in
each worker process into files of ``PROMETHEUS_MULTIPROC_DIR`` and forks an HTTP
server that sums them on ``dramatiq_prom_port`` (``/``, any path). It reads those
variables when it is imported, so they are set here, in the command's main process,
before the worker processes start (``pipeline.worker_main``).

``WORKER_METRICS_PORT`` turns it on (0, the default: off, since two worker commands
on one host would both bind the port). The files go to a directory per port, emptied
at start (counters of an earlier run would otherwise be added in) and removed at exit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.settings import Settings

#: The interface the exposition server listens on: every one (Prometheus scrapes from another host).
METRICS_HOST = "0.0.0.0"


def directory_for(port: int) -> Path:
    """The Prometheus files of the worker command serving ``port``."""
    return Path(tempfile.gettempdir()) / f"minalesh-worker-metrics-{port}"


@contextmanager
def metrics_directory(settings: Settings) -> Iterator[None]:
    """An empty metrics directory for the worker processes while they run; nothing when metrics are off."""
    port = settings.worker_metrics_port
    if not port:
        yield
        return
    path = directory_for(port)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ.update(
        {
            "dramatiq_prom_db": str(path),
            "dramatiq_prom_host": METRICS_HOST,
            "dramatiq_prom_port": str(port),
            "PROMETHEUS_MULTIPROC_DIR": str(path),
        }
    )
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)
