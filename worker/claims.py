"""Claiming pending instances with a lease, and settling them.

Claims are conditional updates, correct on SQLite and PostgreSQL alike (PostgreSQL also
skips rows another worker has locked). A worker that dies keeps its claim only until the
lease expires; an instance whose leases keep expiring is rejected after `max_attempts`, so a
file that crashes the decoder cannot crash the service in a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
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


def _expired(now: datetime):  # noqa: ANN202 - a SQL expression
    return and_(Instance.status == InstanceStatus.PROCESSING, Instance.lease_expires_at < now)


def reject_exhausted(session: Session, max_attempts: int) -> int:
    """Reject instances whose every attempt ended with the worker gone."""
    now = utcnow()
    result = session.execute(
        update(Instance)
        .where(_expired(now), Instance.attempts >= max_attempts)
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
    now = utcnow()
    claimable = or_(Instance.status == InstanceStatus.PENDING, _expired(now))
    candidates = session.scalars(
        select(Instance.id)
        .where(claimable)
        .order_by(Instance.received_at, Instance.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not candidates:
        session.rollback()
        return []
    session.execute(
        update(Instance)
        .where(Instance.id.in_(candidates), claimable)
        .values(
            status=InstanceStatus.PROCESSING,
            claimed_by=worker_id,
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
