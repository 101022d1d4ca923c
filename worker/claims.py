"""Claiming pending instances with a lease, and settling them.

Claims are conditional updates, correct on SQLite and PostgreSQL alike (PostgreSQL also
skips rows another worker has locked). A worker that dies keeps its claim only until the
lease expires, or until a worker restarted on its host sees that its process is gone.

Work that was in flight when a worker died is claimed again one instance at a time: only one
image of a batch may have crashed the decoder, and the rest must not share its fate. An
instance is rejected as "worker stopped" only after `max_attempts`, the last of them alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.orm import Session

from core.db.schema import Instance, InstanceStatus, Result
from core.db.types import utcnow


@dataclass(frozen=True)
class Claim:
    instance_id: int
    sop_instance_uid: str
    file_path: str
    attempts: int


@dataclass(frozen=True)
class Triage:
    probability: float
    label: str
    flagged: bool
    threshold: float
    model_name: str
    model_version: str
    notes: str
    thumbnail_png: bytes
    heatmap_png: bytes | None = None


def _expired(now: datetime):  # noqa: ANN202 - a SQL expression
    return and_(Instance.status == InstanceStatus.PROCESSING, Instance.lease_expires_at < now)


def reject_exhausted(session: Session, max_attempts: int) -> int:
    """Reject instances whose every attempt ended with the worker gone, the last one alone."""
    now = utcnow()
    result = session.execute(
        update(Instance)
        .where(_expired(now), Instance.attempts >= max_attempts, Instance.claimed_alone.is_(True))
        .values(
            status=InstanceStatus.REJECTED,
            reason=f"processing did not finish in {max_attempts} attempts (worker stopped)",
            claimed_by=None,
            lease_expires_at=None,
            processed_at=now,
        )
    )
    session.commit()
    return result.rowcount


def claim(session: Session, worker_id: str, limit: int, lease_seconds: float) -> list[Claim]:
    """A batch of pending instances, or a single one whose last worker died with it."""
    now = utcnow()
    claimable = _expired(now)
    candidates = _candidates(session, claimable, 1)
    if not candidates:
        claimable = Instance.status == InstanceStatus.PENDING
        candidates = _candidates(session, claimable, limit)
    if not candidates:
        session.rollback()
        return []
    session.execute(
        update(Instance)
        .where(Instance.id.in_(candidates), claimable)
        .values(
            status=InstanceStatus.PROCESSING,
            claimed_by=worker_id,
            claimed_alone=len(candidates) == 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Instance.attempts + 1,
        )
    )
    session.commit()
    rows = session.execute(
        select(Instance.id, Instance.sop_instance_uid, Instance.file_path, Instance.attempts)
        .where(
            Instance.id.in_(candidates),
            Instance.claimed_by == worker_id,
            Instance.status == InstanceStatus.PROCESSING,
        )
        .order_by(Instance.received_at, Instance.id)
    ).all()
    return [Claim(*row) for row in rows]


def _candidates(session: Session, claimable: ColumnElement[bool], limit: int) -> list[int]:
    return list(
        session.scalars(
            select(Instance.id)
            .where(claimable)
            .order_by(Instance.received_at, Instance.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
    )


def expire_dead_leases(session: Session, host: str, alive: Callable[[int], bool]) -> int:
    """End at once the leases of workers on this host whose process is gone, rather than
    letting their work wait out `lease_seconds` after a crash and restart. A worker ID is
    `host:pid:token`; a PID that is alive again (reused) just means waiting for the lease."""
    holders = session.scalars(
        select(Instance.claimed_by)
        .distinct()
        .where(Instance.status == InstanceStatus.PROCESSING, Instance.claimed_by.like(f"{host}:%"))
    ).all()
    dead = [h for h in holders if h and not alive(int(h.split(":")[-2]))]
    if not dead:
        session.rollback()
        return 0
    result = session.execute(
        update(Instance)
        .where(Instance.status == InstanceStatus.PROCESSING, Instance.claimed_by.in_(dead))
        .values(lease_expires_at=utcnow() - timedelta(seconds=1))
    )
    session.commit()
    return result.rowcount


def _owned(claim: Claim, worker_id: str):  # noqa: ANN202 - a SQL expression
    return and_(
        Instance.id == claim.instance_id,
        Instance.claimed_by == worker_id,
        Instance.status == InstanceStatus.PROCESSING,
    )


def _settle(session: Session, claim: Claim, worker_id: str, **values: object) -> bool:
    """Update a claimed instance if this worker still holds it; False if the lease was lost."""
    result = session.execute(
        update(Instance)
        .where(_owned(claim, worker_id))
        .values(claimed_by=None, lease_expires_at=None, **values)
    )
    return result.rowcount == 1


def complete(session: Session, claim: Claim, worker_id: str, triage: Triage) -> bool:
    now = utcnow()
    if not _settle(
        session, claim, worker_id, status=InstanceStatus.TRIAGED, reason="", processed_at=now
    ):
        return False
    session.add(
        Result(
            instance_fk=claim.instance_id,
            probability=triage.probability,
            label=triage.label,
            flagged=triage.flagged,
            threshold=triage.threshold,
            model_name=triage.model_name,
            model_version=triage.model_version,
            notes=triage.notes,
            thumbnail_png=triage.thumbnail_png,
            heatmap_png=triage.heatmap_png,
            created_at=now,
        )
    )
    return True


def reject(session: Session, claim: Claim, worker_id: str, reason: str) -> bool:
    return _settle(
        session,
        claim,
        worker_id,
        status=InstanceStatus.REJECTED,
        reason=reason,
        processed_at=utcnow(),
    )


def retry_later(
    session: Session, claim: Claim, worker_id: str, reason: str, max_attempts: int
) -> bool:
    """An unexpected failure: try again on a later run, or give up with the last error."""
    if claim.attempts >= max_attempts:
        return reject(
            session, claim, worker_id, f"processing failed {claim.attempts} times: {reason}"
        )
    return _settle(session, claim, worker_id, status=InstanceStatus.PENDING, reason=reason)
