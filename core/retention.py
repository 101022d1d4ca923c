"""Retention: received files older than `storage.keep_days` are removed, results stay.

A file goes only once nothing needs it any more: its instance is settled (triaged or
rejected), and a triaged one's study result has been published (the SR and Secondary
Captures are built from the received headers). What remains on record is everything a
radiologist or an auditor reads afterwards: the result, the thumbnail, the heatmap, the
published objects under `storage/outputs/`, the feedback and the audit trail; the instance
row says when its file went.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Exists, and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from core.audit import record
from core.db.schema import Instance, InstanceStatus, Series, StudyResult
from core.db.types import utcnow

log = logging.getLogger(__name__)

# Files removed per transaction: a crash part-way leaves at most this many rows to mark
# again (their files already gone, which the next run accepts).
BATCH = 500


@dataclass(frozen=True)
class Expired:
    instance_id: int
    sop_instance_uid: str
    file_path: str
    file_size: int
    received_at: datetime


@dataclass(frozen=True)
class PurgeSummary:
    files: int
    bytes: int
    before: datetime


def _current(published: bool) -> Exists:
    result = aliased(StudyResult)
    state = result.published_at.is_not(None) if published else result.published_at.is_(None)
    return exists(
        select(result.id).where(
            result.study_fk == Series.study_fk, result.superseded_at.is_(None), state
        )
    )


def expired(
    session: Session, keep_days: int, now: datetime, limit: int | None = None
) -> list[Expired]:
    """Settled instances received before `keep_days` ago whose file is still there."""
    before = now - timedelta(days=keep_days)
    statement = (
        select(
            Instance.id,
            Instance.sop_instance_uid,
            Instance.file_path,
            Instance.file_size,
            Instance.received_at,
        )
        .join(Series, Instance.series_fk == Series.id)
        .where(
            Instance.received_at < before,
            Instance.purged_at.is_(None),
            ~_current(published=False),
            or_(
                Instance.status == InstanceStatus.REJECTED,
                and_(Instance.status == InstanceStatus.TRIAGED, _current(published=True)),
            ),
        )
        .order_by(Instance.received_at, Instance.id)
        .limit(limit)
    )
    return [Expired(*row) for row in session.execute(statement)]


def purge(session: Session, storage: Path, keep_days: int, actor: str) -> PurgeSummary:
    """Remove the expired files batch by batch. Unlike a lifecycle step this commits
    itself: a purge of a long history is many units of work, and each must land on its own.

    Each batch is first marked, with the conditions checked again in the same statement and
    the file path read back from it, and committed with its audit event; only then are the
    files removed. An instance requeued or corrected in between is left alone, and a crash
    between the two steps leaves a file on disk, never a row without its file. A file that
    cannot be removed is logged and left; the run goes on.
    """
    now = utcnow()
    files = size = 0
    while batch := expired(session, keep_days, now, BATCH):
        marked = session.execute(
            update(Instance)
            .where(
                Instance.id.in_([item.instance_id for item in batch]),
                Instance.purged_at.is_(None),
                Instance.status.in_([InstanceStatus.TRIAGED, InstanceStatus.REJECTED]),
            )
            .values(purged_at=now)
            .returning(Instance.file_path, Instance.file_size)
        ).all()
        removed = sum(row.file_size for row in marked)
        record(
            session, "retention_purge", actor, files=len(marked), bytes=removed, keep_days=keep_days
        )
        session.commit()
        for row in marked:
            try:
                (storage / row.file_path).unlink(missing_ok=True)
            except OSError as exc:
                log.error("retention could not remove %s: %s", row.file_path, exc.strerror)
        files += len(marked)
        size += removed
    return PurgeSummary(files, size, now - timedelta(days=keep_days))
