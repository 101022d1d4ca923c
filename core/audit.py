"""The audit trail: a row for every change a person or a peer made to what is on record.

Rows hold the values before and after, which may include patient data; that is why they live
in the database with the rest of it, and why logs name only the action and the UID.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from core.db.schema import AuditEvent
from core.db.types import utcnow


def record(
    session: Session, action: str, actor: str, sop_instance_uid: str = "", **detail: Any
) -> AuditEvent:
    """Add an event to the caller's transaction, so it commits or rolls back with the change."""
    event = AuditEvent(
        at=utcnow(),
        action=action,
        actor=actor[:64],
        sop_instance_uid=sop_instance_uid,
        detail=json.dumps(detail, default=str, sort_keys=True),
    )
    session.add(event)
    return event
