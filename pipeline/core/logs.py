"""One log format for every process; pika's chatter kept at WARNING."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger("pika").setLevel(logging.WARNING)
