"""The scores the service gave to studies whose truth a department knows.

For a department's acceptance test (`pneumotriage validate`): the truth comes either from a
list of Study or SOP Instance UIDs with labels, or from the radiologists' readings recorded
in the web application (the latest per study). A Study UID is scored by its current study
result, a SOP Instance UID by its image result: what the worklist showed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.schema import Feedback, Finding, Instance, Result, Study, StudyResult


@dataclass(frozen=True)
class Labelled:
    uid: str
    truth: int
    score: float


def scores_of(session: Session, truths: dict[str, int]) -> tuple[list[Labelled], list[str]]:
    """The labelled UIDs with a score, and those without one (not on file, or not
    triaged), which the caller reports rather than silently drops."""
    uids = list(truths)
    found: dict[str, float] = {}
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        found |= dict(
            session.execute(
                select(Study.study_instance_uid, func.max(StudyResult.probability))
                .join(StudyResult, StudyResult.study_fk == Study.id)
                .where(Study.study_instance_uid.in_(chunk), StudyResult.superseded_at.is_(None))
                .group_by(Study.study_instance_uid)
            ).all()
        )
        found |= dict(
            session.execute(
                select(Instance.sop_instance_uid, Result.probability)
                .join(Result, Result.instance_fk == Instance.id)
                .where(Instance.sop_instance_uid.in_(chunk))
            ).all()
        )
    scored = [Labelled(uid, truths[uid], float(found[uid])) for uid in uids if uid in found]
    return scored, [uid for uid in uids if uid not in found]


def readings(
    session: Session, since: datetime | None = None, until: datetime | None = None
) -> dict[str, int]:
    """Truth from the radiologists' readings: each study's latest, present or absent."""
    latest = (
        select(Feedback.study_fk, func.max(Feedback.id).label("id"))
        .group_by(Feedback.study_fk)
        .subquery()
    )
    statement = (
        select(Study.study_instance_uid, Feedback.finding)
        .join(latest, latest.c.id == Feedback.id)
        .join(Study, Study.id == Feedback.study_fk)
    )
    if since is not None:
        statement = statement.where(Feedback.created_at >= since)
    if until is not None:
        statement = statement.where(Feedback.created_at < until)
    return {
        uid: int(finding is Finding.PRESENT) for uid, finding in session.execute(statement).all()
    }
