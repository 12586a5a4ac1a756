"""The module ``dramatiq`` imports in each worker process: it bootstraps from the environment.

Only here is Dramatiq's Prometheus middleware added (when ``WORKER_METRICS_PORT`` is
set): the ticker, archiver, ``serve`` and the CLI would each fork an exposition server
on the same port. ``pipeline.worker_main`` has set where its files go before this runs.
"""

from __future__ import annotations

from dramatiq.middleware.prometheus import Prometheus

from pipeline.bootstrap import bootstrap
from pipeline.core.logs import configure_logging
from pipeline.core.settings import Settings

settings = Settings.from_env()
configure_logging(settings)
broker = bootstrap(settings, middleware=[Prometheus()] if settings.worker_metrics_port else []).broker
