"""Study-level results: combining a study's image results once the study is complete.

A modality sends a study's images over seconds or minutes, and a radiologist reads the
study, so a study gets its result only when none of its images is waiting for triage and
none has arrived for `worker.study_settle_seconds` (Orthanc's "stable study", MONAI Deploy's
gateway timeout). An image that arrives later and changes the result makes a new version;
the previous one is kept, marked superseded, never overwritten.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta
from statistics import fmean

from sqlalchemy import case, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.schema import Instance, InstanceStatus, Result, Series, Study, StudyResult
from core.db.types import utcnow

log = logging.getLogger(__name__)

SETTLE_BATCH = 100


@dataclass(frozen=True)
class Combined:
    probability: float
    label: str
    flagged: bool
    threshold: float
    model_name: str
    model_version: str
    images: int
    deciding_instance_fk: int

    def same_as(self, stored: StudyResult) -> bool:
        return (
            self.probability,
            self.label,
            self.flagged,
            self.images,
            self.deciding_instance_fk,
        ) == (
            stored.probability,
            stored.label,
            stored.flagged,
            stored.images,
            stored.deciding_instance_fk,
        )


def combine(results: list[Result], rule: str) -> Combined:
    """`max`: the study scores as its most suspicious image, so one flagged view flags it.
    `mean`: the average, with the label at the operating threshold of the deciding model."""
    deciding = max(results, key=lambda r: (r.probability, -r.instance_fk))
    if rule == "max":
        probability, label, flagged = deciding.probability, deciding.label, deciding.flagged
    else:
        probability = fmean(r.probability for r in results)
        flagged = probability >= deciding.threshold
        positive = next((r.label for r in results if r.flagged), None)
        negative = next((r.label for r in results if not r.flagged), None)
        label = (positive if flagged else negative) or deciding.label
    return Combined(
        probability=probability,
        label=label,
        flagged=flagged,
        threshold=deciding.threshold,
        model_name=deciding.model_name,
        model_version=deciding.model_version,
        images=len(results),
        deciding_instance_fk=deciding.instance_fk,
    )


def _due(session: Session, settle_seconds: float) -> list[int]:
    """Studies with no image waiting, none received within the settling time, and an image
    result newer than the study's last combination."""
    current = (
        select(StudyResult.study_fk, StudyResult.checked_at)
        .where(StudyResult.superseded_at.is_(None))
        .subquery()
    )
    waiting = case(
        (Instance.status.in_([InstanceStatus.PENDING, InstanceStatus.PROCESSING]), 1), else_=0
    )
    newest_result = func.max(Result.created_at)
    statement = (
        select(Study.id)
        .join(Series, Series.study_fk == Study.id)
        .join(Instance, Instance.series_fk == Series.id)
        .outerjoin(Result, Result.instance_fk == Instance.id)
        .outerjoin(current, current.c.study_fk == Study.id)
        .group_by(Study.id, current.c.checked_at)
        .having(
            func.sum(waiting) == 0,
            func.max(Instance.received_at) <= utcnow() - timedelta(seconds=settle_seconds),
            newest_result.is_not(None),
            or_(current.c.checked_at.is_(None), newest_result > current.c.checked_at),
        )
        .order_by(func.max(Instance.received_at))
        .limit(SETTLE_BATCH)
    )
    return list(session.scalars(statement))


def _settle_study(session: Session, study_id: int, rule: str) -> StudyResult | None:
    results = list(
        session.scalars(
            select(Result)
            .join(Instance, Result.instance_fk == Instance.id)
            .join(Series, Instance.series_fk == Series.id)
            .where(Series.study_fk == study_id, Instance.status == InstanceStatus.TRIAGED)
        )
    )
    current = session.scalar(
        select(StudyResult).where(
            StudyResult.study_fk == study_id, StudyResult.superseded_at.is_(None)
        )
    )
    now = utcnow()
    combined = combine(results, rule)
    if current is not None and combined.same_as(current):
        current.checked_at = now
        return None
    if current is not None:
        current.superseded_at = now
    version = StudyResult(
        study_fk=study_id,
        version=1 if current is None else current.version + 1,
        rule=rule,
        created_at=now,
        checked_at=now,
        **asdict(combined),
    )
    session.add(version)
    return version


def settle_studies(session: Session, settle_seconds: float, rule: str) -> list[StudyResult]:
    """Give each complete study its result, or a new version of it; return the new ones."""
    created = []
    for study_id in _due(session, settle_seconds):
        try:
            with session.begin_nested():
                version = _settle_study(session, study_id, rule)
        except IntegrityError:
            # Another worker settled the same study at the same moment; its version stands.
            continue
        if version is not None:
            created.append(version)
    session.commit()
    for version in created:
        log.info(
            "study %s: result version %d, %s p=%.3f over %d image(s)%s",
            version.study.study_instance_uid,
            version.version,
            version.label,
            version.probability,
            version.images,
            " FLAGGED" if version.flagged else "",
        )
    return created
