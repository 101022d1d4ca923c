"""The audit trail: a row for every change a person or a peer made to what is on record.

Rows hold the values before and after, which may include patient data; that is why they live
in the database with the rest of it, and why logs name only the action and the UID.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.schema import AuditEvent
from core.db.types import utcnow


def record(
    session: Session,
    action: str,
    actor: str,
    sop_instance_uid: str = "",
    study_instance_uid: str = "",
    **detail: Any,
) -> AuditEvent:
    """Add an event to the caller's transaction, so it commits or rolls back with the change."""
    event = AuditEvent(
        at=utcnow(),
        action=action,
        actor=actor[:64],
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_instance_uid,
        detail=json.dumps(detail, default=str, sort_keys=True),
    )
    session.add(event)
    return event


def events(
    session: Session,
    *,
    since: datetime | None = None,
    action: str | None = None,
    actor: str | None = None,
    study_instance_uid: str | None = None,
    limit: int = 500,
) -> list[AuditEvent]:
    """Newest first, for `pneumotriage audit` and the admins' page."""
    statement = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
    if since is not None:
        statement = statement.where(AuditEvent.at >= since)
    if action:
        statement = statement.where(AuditEvent.action == action)
    if actor:
        statement = statement.where(AuditEvent.actor == actor)
    if study_instance_uid:
        statement = statement.where(AuditEvent.study_instance_uid == study_instance_uid)
    return list(session.scalars(statement.limit(limit)))


def as_record(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at,
        "action": event.action,
        "actor": event.actor,
        "study_instance_uid": event.study_instance_uid,
        "sop_instance_uid": event.sop_instance_uid,
        "detail": event.detail,
    }
