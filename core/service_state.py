"""The service's state at a glance, for the status page, /healthz and /metrics.

Everything is read from the database and the storage folder, which every process shares, so
any web process can report on nodes and workers running elsewhere. Nothing here names a
patient: it is shown to monitoring systems without sign-in.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.db.outage import error_line
from core.db.schema import Instance, InstanceStatus, OutboxItem, OutboxStatus, Result
from core.db.types import utcnow
from core.heartbeat import INTERVAL_SECONDS, MISSED_BEATS, Alive, processes

# Rejections are summarised over the last day: what an administrator acts on this morning.
REJECTION_HOURS = 24
SILENCE = INTERVAL_SECONDS * MISSED_BEATS


@dataclass
class ServiceState:
    database_ok: bool
    database_error: str = ""
    processes: list[Alive] = field(default_factory=list)
    queue_depth: int = 0
    oldest_pending_at: datetime | None = None
    results_last_hour: int = 0
    last_result_at: datetime | None = None
    rejections: list[tuple[str, int]] = field(default_factory=list)
    outbox: dict[str, int] = field(default_factory=dict)
    free_bytes: int | None = None
    total_bytes: int | None = None
    checked_at: datetime = field(default_factory=utcnow)

    def alive(self, component: str) -> list[Alive]:
        return [p for p in self.processes if p.component == component and p.alive]

    @property
    def oldest_pending_seconds(self) -> float | None:
        if self.oldest_pending_at is None:
            return None
        return max(0.0, (self.checked_at - self.oldest_pending_at).total_seconds())

    def problems(self) -> list[str]:
        """Why the service is not healthy, in words; empty when node, worker and database
        are fine."""
        if not self.database_ok:
            return ["database unavailable"]
        found = []
        for component in ("node", "worker"):
            if not self.alive(component):
                found.append(f"no {component} process has reported in the last {SILENCE:g} s")
        return found


def _disk(storage: Path) -> tuple[int | None, int | None]:
    try:
        usage = shutil.disk_usage(storage)
    except OSError:
        return None, None
    return usage.free, usage.total


def read_state(sessions: sessionmaker[Session], storage: Path) -> ServiceState:
    free, total = _disk(storage)
    try:
        with sessions() as session:
            return _from_database(session, free, total)
    except SQLAlchemyError as exc:
        return ServiceState(
            database_ok=False, database_error=error_line(exc), free_bytes=free, total_bytes=total
        )


def _from_database(session: Session, free: int | None, total: int | None) -> ServiceState:
    session.execute(text("SELECT 1"))
    now = utcnow()
    waiting = Instance.status.in_([InstanceStatus.PENDING, InstanceStatus.PROCESSING])
    depth, oldest = session.execute(
        select(func.count(Instance.id), func.min(Instance.received_at)).where(waiting)
    ).one()
    hour, last = session.execute(
        select(
            func.count(Result.id).filter(Result.created_at >= now - timedelta(hours=1)),
            func.max(Result.created_at),
        )
    ).one()
    rejections = session.execute(
        select(Instance.reason, func.count(Instance.id))
        .where(
            Instance.status == InstanceStatus.REJECTED,
            Instance.processed_at >= now - timedelta(hours=REJECTION_HOURS),
        )
        .group_by(Instance.reason)
        .order_by(func.count(Instance.id).desc())
    ).all()
    outbox = {
        OutboxStatus(status).value: count
        for status, count in session.execute(
            select(OutboxItem.status, func.count(OutboxItem.id)).group_by(OutboxItem.status)
        )
    }
    return ServiceState(
        database_ok=True,
        processes=processes(session),
        queue_depth=depth,
        oldest_pending_at=oldest,
        results_last_hour=hour,
        last_result_at=last,
        rejections=[(reason, count) for reason, count in rejections],
        outbox=outbox,
        free_bytes=free,
        total_bytes=total,
        checked_at=now,
    )
