"""The module ``dramatiq`` imports in each worker process: it bootstraps from the environment."""

from __future__ import annotations

from pipeline.bootstrap import bootstrap
from pipeline.core.logs import configure_logging
from pipeline.core.settings import Settings

settings = Settings.from_env()
configure_logging(settings.log_level)
broker = bootstrap(settings).broker
