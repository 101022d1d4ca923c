"""The outbox as a queue: claim what is due, and record each attempt's outcome.

Claims are leased like the worker's, so while a lease holds no other forwarder sends its
rows, and a forwarder that dies leaves them to be sent again after it. A claim is the rows
its own UPDATE changed (RETURNING), not the ids it read before: on SQLite that read takes no
lock, and a second forwarder's rows could otherwise come back to the first. The lease's end
fences the outcome: every claim of a row ends later than the one before (a claim is only
taken once the last has ended), so a forwarder whose lease ran out cannot mark sent or
failed a row that was claimed again since, whatever happened to it in between. A row is sent
again under its own SOP Instance UID: a PACS that stored it before our answer was lost
keeps one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from core.db.schema import OutboxItem, OutboxStatus
from core.db.types import utcnow


@dataclass(frozen=True)
class Due:
    id: int
    destination: str
    sop_class_uid: str
    sop_instance_uid: str
    file_path: str
    attempts: int
    lease_expires_at: datetime


def claim_due(session: Session, limit: int, lease_seconds: float) -> list[Due]:
    """Up to `limit` due rows; `lease_seconds` must cover sending them all."""
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
    rows = session.execute(
        update(OutboxItem)
        .where(OutboxItem.id.in_(ids), due)
        .values(
            status=OutboxStatus.SENDING,
            attempts=OutboxItem.attempts + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
        .returning(
            OutboxItem.id,
            OutboxItem.destination,
            OutboxItem.sop_class_uid,
            OutboxItem.sop_instance_uid,
            OutboxItem.file_path,
            OutboxItem.attempts,
            OutboxItem.lease_expires_at,
        )
    ).all()
    session.commit()
    return sorted((Due(*row) for row in rows), key=lambda due: (due.destination, due.id))


def _held(item: Due) -> ColumnElement[bool]:
    """The row as this claim left it: not since claimed again, retried or settled."""
    return and_(
        OutboxItem.id == item.id,
        OutboxItem.status == OutboxStatus.SENDING,
        OutboxItem.lease_expires_at == item.lease_expires_at,
    )


def gives_up(item: Due, max_attempts: int) -> bool:
    return item.attempts >= max_attempts


def mark_sent(session: Session, item: Due, status: int) -> bool:
    """False when a later claim holds the row: its outcome is that claim's to record."""
    result = session.execute(
        update(OutboxItem)
        .where(_held(item))
        .values(
            status=OutboxStatus.SENT,
            last_status=status,
            last_error="",
            sent_at=utcnow(),
            lease_expires_at=None,
        )
    )
    return result.rowcount == 1


def mark_failed_attempt(
    session: Session,
    item: Due,
    status: int | None,
    error: str,
    max_attempts: int,
    retry_seconds: float,
    retry_max_seconds: float,
) -> bool:
    """Back off exponentially; after `max_attempts` (`gives_up`) the row is failed. False
    when a later claim holds the row, as for `mark_sent`."""
    delay = min(retry_seconds * 2 ** (item.attempts - 1), retry_max_seconds)
    result = session.execute(
        update(OutboxItem)
        .where(_held(item))
        .values(
            status=OutboxStatus.FAILED if gives_up(item, max_attempts) else OutboxStatus.PENDING,
            last_status=status,
            last_error=error[:1000],
            next_attempt_at=utcnow() + timedelta(seconds=delay),
            lease_expires_at=None,
        )
    )
    return result.rowcount == 1


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
