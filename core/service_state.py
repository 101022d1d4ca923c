"""The service's state at a glance, for the status page, /healthz and /metrics.

Everything is read from the database and the storage folder, which every process shares, so
any web process can report on nodes and workers running elsewhere. Nothing here names a
patient: it is shown to monitoring systems without sign-in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.config import StorageConfig, WorkerConfig
from core.db.outage import error_line
from core.db.schema import Instance, InstanceStatus, OutboxItem, OutboxStatus, Result
from core.db.types import utcnow
from core.disk import MB, disk_space
from core.drift import LastCheck
from core.drift import latest as latest_drift
from core.heartbeat import INTERVAL_SECONDS, MISSED_BEATS, Alive, processes
from core.texts import duration

# Rejections and unclean stops are summarised over the last day: what an administrator acts
# on this morning.
SUMMARY_HOURS = 24
SILENCE = INTERVAL_SECONDS * MISSED_BEATS
COMPONENTS = ("node", "worker")


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
    drift: LastCheck | None = None
    checked_at: datetime = field(default_factory=utcnow)

    def alive(self, component: str) -> list[Alive]:
        return [p for p in self.processes if p.component == component and p.alive]

    def stopped_uncleanly(self) -> list[Alive]:
        """Processes that stopped reporting in the last day without the clean stop that
        removes their row: killed, crashed, or crash-looping under a supervisor that starts
        them again under a new process id. With two workers, one of them crash-looping leaves
        the service healthy by `problems` (a worker reports), and only this tells."""
        since = self.checked_at - timedelta(hours=SUMMARY_HOURS)
        return [p for p in self.processes if not p.alive and p.seen_at >= since]

    def summary(self) -> str:
        """One line for the status page when nothing is wrong."""
        counts = [
            f"{n} {component} process{'' if n == 1 else 'es'}"
            for component, n in ((c, len(self.alive(c))) for c in COMPONENTS)
        ]
        return f"The database answers; {' and '.join(counts)} report."

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
        for component in COMPONENTS:
            if not self.alive(component):
                found.append(f"no {component} process has reported in the last {SILENCE:g} s")
        return found


def read_state(sessions: sessionmaker[Session], storage: Path) -> ServiceState:
    free, total = disk_space(storage) or (None, None)
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
            Instance.processed_at >= now - timedelta(hours=SUMMARY_HOURS),
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
        drift=latest_drift(session),
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


@dataclass(frozen=True)
class Verdict:
    """A monitoring check's answer: 0 healthy, 1 warning (someone should look today),
    2 critical (results are not being produced, or soon will not be)."""

    critical: list[str]
    warnings: list[str]

    @property
    def exit_code(self) -> int:
        return 2 if self.critical else 1 if self.warnings else 0

    @property
    def label(self) -> str:
        return ("OK", "WARNING", "CRITICAL")[self.exit_code]


def assess(state: ServiceState, storage: StorageConfig, worker: WorkerConfig) -> Verdict:
    """Critical: the database, a node or a worker is gone, or stores are being refused for
    want of space. Warnings: space within twice the floor, work older than a lease (the
    worker is not keeping up, or is stuck), outputs the PACS never got, scores that have
    drifted from validation's at the last weekly check, processes that stopped uncleanly."""
    critical = state.problems()
    warnings = []
    if state.free_bytes is not None and storage.min_free_mb:
        free = state.free_bytes // MB
        floor = storage.min_free_mb
        if free < floor:
            critical.append(f"storage has {free} MB free, below storage.min_free_mb ({floor})")
        elif free < 2 * floor:
            warnings.append(f"storage has {free} MB free; stores are refused below {floor} MB")
    waiting = state.oldest_pending_seconds
    if waiting is not None and waiting > worker.lease_seconds:
        warnings.append(f"the oldest instance has waited {duration(waiting)} for triage")
    failed = state.outbox.get(OutboxStatus.FAILED.value, 0)
    if failed:
        warnings.append(f"{failed} output(s) failed to reach the PACS (see `pneumotriage outbox`)")
    if state.drift is not None and state.drift.warned:
        warnings.append(f"drift check: {state.drift.summary}")
    stopped = state.stopped_uncleanly()
    for component in COMPONENTS:
        gone = [p for p in stopped if p.component == component]
        if gone:
            latest = max(gone, key=lambda p: p.seen_at)
            ago = duration((state.checked_at - latest.seen_at).total_seconds())
            warnings.append(
                f"{len(gone)} {component} process(es) stopped without a clean stop in the last"
                f" {SUMMARY_HOURS} h (latest {latest.process}, last seen {ago} ago)"
            )
    return Verdict(critical, warnings)
