"""The ``worker`` command's process: the ``dramatiq`` command, logging and metrics set up first.

``minalesh-workers worker`` execs this module rather than ``python -m dramatiq``, so
that Dramatiq's own processes (the main one and the forked exposition server) log
in LOG_FORMAT with secrets masked like every other line (``--skip-logging`` keeps
Dramatiq from configuring its own format), and so that the Prometheus files of
this worker command live in a directory of its own, made empty at start and
removed at exit (``pipeline.core.worker_metrics``), before any process imports
Dramatiq's Prometheus middleware, which reads where they go when it is imported.
"""

from __future__ import annotations

import sys

from dramatiq.cli import main as dramatiq_main

from pipeline.core.logs import configure_logging
from pipeline.core.settings import Settings
from pipeline.core.worker_metrics import metrics_directory


def main() -> int:
    settings = Settings.from_env()
    configure_logging(settings)
    with metrics_directory(settings):
        return int(dramatiq_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
