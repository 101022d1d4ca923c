"""The outbox as a queue: claim what is due, and record each attempt's outcome.

Claims are leased like the worker's, so two forwarders never send the same row at once and a
forwarder that dies leaves its rows to be sent again after the lease. A row is sent again
under its own SOP Instance UID: a PACS that stored it before our answer was lost keeps one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from core.db.schema import OutboxItem, OutboxStatus
from core.db.types import utcnow

LEASE_SECONDS = 600


@dataclass(frozen=True)
class Due:
    id: int
    destination: str
    sop_class_uid: str
    sop_instance_uid: str
    file_path: str
    attempts: int


def claim_due(session: Session, limit: int) -> list[Due]:
    now = utcnow()
    due = or_(
        and_(OutboxItem.status == OutboxStatus.PENDING, OutboxItem.next_attempt_at <= now),
        and_(OutboxItem.status == OutboxStatus.SENDING, OutboxItem.lease_expires_at < now),
    )
    ids = list(
        session.scalars(
            select(OutboxItem.id)
            .where(due)
            .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not ids:
        session.rollback()
        return []
    session.execute(
        update(OutboxItem)
        .where(OutboxItem.id.in_(ids), due)
        .values(
            status=OutboxStatus.SENDING,
            attempts=OutboxItem.attempts + 1,
            lease_expires_at=now + timedelta(seconds=LEASE_SECONDS),
        )
    )
    session.commit()
    rows = session.execute(
        select(
            OutboxItem.id,
            OutboxItem.destination,
            OutboxItem.sop_class_uid,
            OutboxItem.sop_instance_uid,
            OutboxItem.file_path,
            OutboxItem.attempts,
        )
        .where(OutboxItem.id.in_(ids), OutboxItem.status == OutboxStatus.SENDING)
        .order_by(OutboxItem.destination, OutboxItem.id)
    ).all()
    return [Due(*row) for row in rows]


def mark_sent(session: Session, item: Due, status: int) -> None:
    session.execute(
        update(OutboxItem)
        .where(OutboxItem.id == item.id)
        .values(
            status=OutboxStatus.SENT,
            last_status=status,
            last_error="",
            sent_at=utcnow(),
            lease_expires_at=None,
        )
    )


def mark_failed_attempt(
    session: Session,
    item: Due,
    status: int | None,
    error: str,
    max_attempts: int,
    retry_seconds: float,
    retry_max_seconds: float,
) -> bool:
    """Back off exponentially; after `max_attempts` the row is failed. True if it failed."""
    final = item.attempts >= max_attempts
    delay = min(retry_seconds * 2 ** (item.attempts - 1), retry_max_seconds)
    session.execute(
        update(OutboxItem)
        .where(OutboxItem.id == item.id)
        .values(
            status=OutboxStatus.FAILED if final else OutboxStatus.PENDING,
            last_status=status,
            last_error=error[:1000],
            next_attempt_at=utcnow() + timedelta(seconds=delay),
            lease_expires_at=None,
        )
    )
    return final


def retry(session: Session, ids: list[int] | None) -> int:
    """Queue failed rows (all of them, or the given ones) again with fresh attempts."""
    statement = update(OutboxItem).where(OutboxItem.status == OutboxStatus.FAILED)
    if ids is not None:
        statement = statement.where(OutboxItem.id.in_(ids))
    result = session.execute(
        statement.values(
            status=OutboxStatus.PENDING, attempts=0, next_attempt_at=utcnow(), last_error=""
        )
    )
    session.commit()
    return result.rowcount
