"""Each periodic job's last success and last failure: one row per job, upserted.

Written after each scheduled run (``pipeline.core.declare``): the job's actor's,
emitted by the ticker, or a call of the shop's cron endpoint (an outside scheduler),
never by a run by hand (``minalesh-workers tick``): the row says whether the
*scheduled* job still runs, which is what an alert on it must know.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import PeriodicRun


@dataclass(frozen=True, kw_only=True)
class JobRuns:
    """What the row of one job says."""

    job: str
    last_success_at: Optional[datetime]
    last_failure_at: Optional[datetime]
    last_error: Optional[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "last_failure_at": self.last_failure_at.isoformat() if self.last_failure_at else None,
            "last_error": self.last_error,
        }


def record_success(session: Session, job: str, *, at: datetime) -> None:
    """``job`` finished a run at ``at``."""
    _upsert(session, job, {"last_success_at": at})


def record_failure(session: Session, job: str, *, at: datetime, error: str) -> None:
    """``job`` failed a run at ``at`` with ``error``."""
    _upsert(session, job, {"last_failure_at": at, "last_error": error})


def all_runs(session: Session) -> list[JobRuns]:
    """Every job that ever ran, by name."""
    rows = session.scalars(select(PeriodicRun).order_by(PeriodicRun.job))
    return [
        JobRuns(
            job=row.job,
            last_success_at=row.last_success_at,
            last_failure_at=row.last_failure_at,
            last_error=row.last_error,
        )
        for row in rows
    ]


def _upsert(session: Session, job: str, values: dict[str, Any]) -> None:
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(PeriodicRun).values(job=job, **values)
    session.execute(statement.on_conflict_do_update(index_elements=[PeriodicRun.job], set_=values))
