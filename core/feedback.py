"""Radiologists' readings of studies, kept beside the results they judge.

Each entry records the finding (pneumonia present or absent) and whether it agrees with the
result shown at that moment, with the result version, so that a later local validation of
the model compares like with like even after a late image changed the study's result.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.accounts import Principal
from core.db.schema import Feedback, Finding, Study, StudyResult
from core.worklist import study_rows

MAX_COMMENT = 2000


class FeedbackError(Exception):
    """Feedback that cannot be recorded; the message says why."""


def record_feedback(
    session: Session, study_id: int, who: Principal, finding: Finding, comment: str
) -> Feedback:
    if who.user_id is None:
        raise FeedbackError("feedback is recorded by a signed-in radiologist")
    study = session.get(Study, study_id)
    if study is None:
        raise FeedbackError("no such study")
    result = session.scalar(
        select(StudyResult).where(
            StudyResult.study_fk == study_id, StudyResult.superseded_at.is_(None)
        )
    )
    rows = study_rows(session, [study_id])
    flagged = rows[0].flagged if rows and rows[0].probability is not None else None
    agrees = None if flagged is None else flagged == (finding is Finding.PRESENT)
    entry = Feedback(
        study_fk=study_id,
        study_result_fk=result.id if result is not None else None,
        user_fk=who.user_id,
        finding=finding,
        agrees=agrees,
        comment=comment.strip()[:MAX_COMMENT],
    )
    session.add(entry)
    audit.record(
        session,
        "feedback_recorded",
        who.name,
        study_instance_uid=study.study_instance_uid,
        finding=finding.value,
        agrees=agrees,
        result_version=result.version if result is not None else None,
    )
    session.commit()
    return entry
