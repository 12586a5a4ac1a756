"""The audit trail of operators' actions: who (a role, or ``cli``), what, which selection, how many.

One INFO line per action on the ``pipeline.audit`` logger, so it can be routed
apart. Never a token, never an email's body: callers pass roles and counts.
"""

from __future__ import annotations

import json
import logging
from typing import Any

logger = logging.getLogger("pipeline.audit")


def audit(who: str, action: str, **details: Any) -> None:
    """Log one action: ``audit role=admin action=replay selection={...} matched=3 replayed=2``."""
    shown = " ".join(f"{name}={json.dumps(value, default=str)}" for name, value in details.items())
    logger.info("audit role=%s action=%s %s", who, action, shown)
