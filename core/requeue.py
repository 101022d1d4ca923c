"""Putting rejected instances back in the queue, for an administrator who fixed the cause.

Rejections caused by something outside the image (a worker that kept dying, a model that
could not be loaded, a file system that was full) stop being true once the cause is fixed;
requeueing gives those instances a fresh set of attempts and leaves an audit event each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.audit import record
from core.db.schema import Instance, InstanceStatus, Series, Study


@dataclass(frozen=True)
class RequeueQuery:
    sop_instance_uids: tuple[str, ...] = ()
    study_instance_uid: str | None = None
    reason_contains: str | None = None
    received_from: datetime | None = None
    received_until: datetime | None = None

    @property
    def is_empty(self) -> bool:
        return not (
            self.sop_instance_uids
            or self.study_instance_uid
            or self.reason_contains
            or self.received_from
            or self.received_until
        )


def requeue(session: Session, query: RequeueQuery, actor: str, dry_run: bool = False) -> list[str]:
    """The SOP Instance UIDs of the rejected instances that match, requeued unless `dry_run`."""
    statement = (
        select(Instance.id, Instance.sop_instance_uid, Instance.reason)
        .join(Series, Instance.series_fk == Series.id)
        .join(Study, Series.study_fk == Study.id)
        .where(Instance.status == InstanceStatus.REJECTED)
        .order_by(Instance.received_at, Instance.id)
    )
    if query.sop_instance_uids:
        statement = statement.where(Instance.sop_instance_uid.in_(query.sop_instance_uids))
    if query.study_instance_uid:
        statement = statement.where(Study.study_instance_uid == query.study_instance_uid)
    if query.reason_contains:
        statement = statement.where(
            Instance.reason.contains(query.reason_contains, autoescape=True)
        )
    if query.received_from:
        statement = statement.where(Instance.received_at >= query.received_from)
    if query.received_until:
        statement = statement.where(Instance.received_at < query.received_until)
    matches = session.execute(statement).all()
    if dry_run or not matches:
        return [row.sop_instance_uid for row in matches]
    session.execute(
        update(Instance)
        .where(Instance.id.in_([row.id for row in matches]))
        .values(
            status=InstanceStatus.PENDING,
            reason="",
            attempts=0,
            claimed_alone=False,
            processed_at=None,
        )
    )
    for row in matches:
        record(session, "requeued", actor, row.sop_instance_uid, previous_reason=row.reason)
    session.commit()
    return [row.sop_instance_uid for row in matches]
