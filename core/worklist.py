"""The radiologists' worklist and study view: studies, not images, ranked for reading.

Flagged studies come first, highest score first; then the others, longest waiting first.
A study whose images are triaged but that has not yet settled into a study-level result
ranks by its images' results, so a flagged image reaches the top of the list within one
triage cycle instead of after `worker.study_settle_seconds`.

The ranking and the filters run over studies with their current study result (indexed
columns, one row per study), and the per-study counts, names and identity checks run only
for the one page shown, so that a page stays fast with a long history behind it
(`benchmarks/worklist_speed.py`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, exists, func, or_, select, true
from sqlalchemy.orm import Session, aliased

from core.db.schema import (
    Feedback,
    Instance,
    InstanceStatus,
    Patient,
    Result,
    Series,
    Study,
    StudyResult,
    User,
)
from core.db.types import utcnow
from core.identity import (
    Conflict,
    describe,
    patients_in_conflict,
    series_uids_in_conflict,
    study_uids_in_conflict,
)


class StudyState(enum.StrEnum):
    AWAITING = "awaiting triage"
    TRIAGED = "triaged"
    REJECTED = "rejected"
    REVIEW = "needs review"


@dataclass(frozen=True)
class WorklistFilter:
    flagged_only: bool = False
    state: StudyState | None = None
    # Received within this many hours; None is the whole history.
    hours: float | None = None
    # Part of a Patient ID, patient name or accession number.
    text: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "flagged_only": self.flagged_only,
            "state": self.state.value if self.state else "",
            "hours": self.hours,
            "text": self.text,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], default_hours: float | None) -> WorklistFilter:
        state = record.get("state") or ""
        hours = record.get("hours", default_hours)
        return cls(
            flagged_only=bool(record.get("flagged_only")),
            state=StudyState(state) if state in StudyState._value2member_map_ else None,
            hours=float(hours) if isinstance(hours, int | float) and hours > 0 else None,
            text=str(record.get("text") or "")[:64],
        )


@dataclass(frozen=True)
class WorklistRow:
    study_id: int
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_date: date | None
    study_time: time | None
    study_description: str
    received_at: datetime
    state: StudyState
    flagged: bool
    provisional: bool
    probability: float | None
    threshold: float | None
    images: int
    waiting: int
    rejected: int
    identity_conflict: str
    thumbnail_instance_id: int | None

    @property
    def waiting_for(self) -> timedelta:
        return utcnow() - self.received_at


@dataclass(frozen=True)
class WorklistPage:
    rows: list[WorklistRow]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def _current_result() -> Any:
    return aliased(StudyResult, name="current")


def _study_instances(condition: Any) -> Any:
    """EXISTS an instance of the outer study matching `condition`."""
    return exists(
        select(Instance.id)
        .join(Series, Instance.series_fk == Series.id)
        .where(Series.study_fk == Study.id, condition)
    )


def _image_score() -> Any:
    """The best score among a study's triaged images, for studies not yet settled."""
    return (
        select(func.max(Result.probability))
        .join(Instance, Result.instance_fk == Instance.id)
        .join(Series, Instance.series_fk == Series.id)
        .where(Series.study_fk == Study.id)
        .scalar_subquery()
    )


def _conflicting_studies() -> Any:
    return or_(
        Study.study_instance_uid.in_(study_uids_in_conflict()),
        Study.patient_fk.in_(patients_in_conflict()),
        _study_instances(Series.series_instance_uid.in_(series_uids_in_conflict())),
    )


def _ranked(query: WorklistFilter) -> tuple[Select[Any], Any]:
    current = _current_result()
    flagged = func.coalesce(
        current.flagged, _study_instances(Instance.result.has(Result.flagged.is_(True)))
    )
    not_rejected = _study_instances(Instance.status != InstanceStatus.REJECTED)
    statement = (
        select(Study.id)
        .join(Patient, Study.patient_fk == Patient.id)
        .outerjoin(current, and_(current.study_fk == Study.id, current.superseded_at.is_(None)))
    )
    if query.hours is not None:
        statement = statement.where(Study.received_at >= utcnow() - timedelta(hours=query.hours))
    if query.flagged_only:
        statement = statement.where(flagged == true())
    if query.state is StudyState.TRIAGED:
        statement = statement.where(current.id.is_not(None))
    elif query.state is StudyState.AWAITING:
        statement = statement.where(current.id.is_(None), not_rejected)
    elif query.state is StudyState.REJECTED:
        statement = statement.where(current.id.is_(None), ~not_rejected)
    elif query.state is StudyState.REVIEW:
        statement = statement.where(_conflicting_studies())
    text = " ".join(query.text.split())
    if text:
        pattern = "%" + text.replace("%", "").replace("_", "").replace(" ", "%") + "%"
        name_pattern = pattern.replace(",", "%")
        statement = statement.where(
            or_(
                Patient.patient_id.ilike(pattern),
                Study.accession_number.ilike(pattern),
                _study_instances(func.replace(Instance.patient_name, "^", " ").ilike(name_pattern)),
            )
        )
    order = (
        case((flagged == true(), 0), else_=1),
        case(
            (flagged == true(), -func.coalesce(current.probability, _image_score())),
            else_=0,
        ),
        Study.received_at,
        Study.id,
    )
    return statement, order


def worklist(session: Session, query: WorklistFilter, page: int, page_size: int) -> WorklistPage:
    statement, order = _ranked(query)
    total = session.scalar(select(func.count()).select_from(statement.subquery()))
    page = max(1, min(page, max(1, -(-total // page_size))))
    ids = list(
        session.scalars(statement.order_by(*order).limit(page_size).offset((page - 1) * page_size))
    )
    rows = {row.study_id: row for row in study_rows(session, ids)}
    return WorklistPage([rows[i] for i in ids if i in rows], total, page, page_size)


def _conflicts_of(session: Session, study_ids: list[int]) -> dict[int, str]:
    """Identity conflicts of the given studies only: the checks group instances, which
    over a whole history would cost more than the page itself."""
    uids = select(Study.study_instance_uid).where(Study.id.in_(study_ids))
    patients = select(Study.patient_fk).where(Study.id.in_(study_ids))
    series = select(Series.series_instance_uid).where(Series.study_fk.in_(study_ids))
    by_study: dict[int, list[Conflict]] = {i: [] for i in study_ids}
    checks = {
        Conflict.STUDY: Study.study_instance_uid.in_(
            study_uids_in_conflict().where(Study.study_instance_uid.in_(uids))
        ),
        Conflict.SERIES: Study.id.in_(
            select(Series.study_fk).where(
                Series.series_instance_uid.in_(
                    series_uids_in_conflict().where(Series.series_instance_uid.in_(series))
                )
            )
        ),
        Conflict.DEMOGRAPHICS: Study.patient_fk.in_(
            patients_in_conflict().where(Study.patient_fk.in_(patients))
        ),
    }
    for kind, condition in checks.items():
        for study_id in session.scalars(select(Study.id).where(Study.id.in_(study_ids), condition)):
            by_study[study_id].append(kind)
    return {study_id: describe(kinds) for study_id, kinds in by_study.items()}


def _count(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def study_rows(session: Session, study_ids: list[int]) -> list[WorklistRow]:
    """The worklist rows of these studies, in no particular order."""
    if not study_ids:
        return []
    current = _current_result()
    waiting = Instance.status.in_([InstanceStatus.PENDING, InstanceStatus.PROCESSING])
    statement = (
        select(
            Study,
            Patient.patient_id,
            func.max(Instance.patient_name).label("patient_name"),
            func.count(Instance.id).label("images"),
            _count(waiting).label("waiting"),
            _count(Instance.status == InstanceStatus.REJECTED).label("rejected"),
            func.max(Result.probability).label("image_score"),
            func.max(Result.threshold).label("image_threshold"),
            func.max(case((Result.flagged.is_(True), 1), else_=0)).label("image_flagged"),
            current,
        )
        .join(Patient, Study.patient_fk == Patient.id)
        .join(Series, Series.study_fk == Study.id)
        .join(Instance, Instance.series_fk == Series.id)
        .outerjoin(Result, Result.instance_fk == Instance.id)
        .outerjoin(current, and_(current.study_fk == Study.id, current.superseded_at.is_(None)))
        .where(Study.id.in_(study_ids))
        .group_by(Study.id, Patient.id, current.id)
    )
    # Ascending, so that each study keeps its highest-scored image: the one to show.
    best = {
        study_id: instance_id
        for study_id, instance_id in session.execute(
            select(Series.study_fk, Instance.id)
            .join(Instance, Instance.series_fk == Series.id)
            .join(Result, Result.instance_fk == Instance.id)
            .where(Series.study_fk.in_(study_ids))
            .order_by(Series.study_fk, Result.probability)
        )
    }
    conflicts = _conflicts_of(session, study_ids)
    rows = []
    for values in session.execute(statement):
        study: Study = values.Study
        result: StudyResult | None = values[-1]
        if conflicts[study.id]:
            state = StudyState.REVIEW
        elif result is not None:
            state = StudyState.TRIAGED
        elif values.rejected == values.images:
            state = StudyState.REJECTED
        else:
            state = StudyState.AWAITING
        rows.append(
            WorklistRow(
                study_id=study.id,
                study_instance_uid=study.study_instance_uid,
                patient_id=values.patient_id,
                patient_name=values.patient_name or "",
                accession_number=study.accession_number,
                study_date=study.study_date,
                study_time=study.study_time,
                study_description=study.study_description,
                received_at=study.received_at,
                state=state,
                flagged=bool(result.flagged if result is not None else values.image_flagged),
                provisional=result is None and values.image_score is not None,
                probability=result.probability if result is not None else values.image_score,
                threshold=result.threshold if result is not None else values.image_threshold,
                images=values.images,
                waiting=values.waiting,
                rejected=values.rejected,
                identity_conflict=conflicts[study.id],
                thumbnail_instance_id=(
                    result.deciding_instance_fk if result is not None else best.get(study.id)
                ),
            )
        )
    return rows


@dataclass(frozen=True)
class FeedbackEntry:
    username: str
    finding: str
    agrees: bool | None
    comment: str
    created_at: datetime
    result_version: int | None


@dataclass(frozen=True)
class ImageEntry:
    instance: Instance
    modality: str
    series_description: str
    result: Result | None


@dataclass
class StudyDetail:
    row: WorklistRow
    result: StudyResult | None
    images: list[ImageEntry] = field(default_factory=list)
    feedback: list[FeedbackEntry] = field(default_factory=list)


def find_study(session: Session, study_id: int) -> StudyDetail | None:
    rows = study_rows(session, [study_id])
    if not rows:
        return None
    result = session.scalar(
        select(StudyResult).where(
            StudyResult.study_fk == study_id, StudyResult.superseded_at.is_(None)
        )
    )
    images = [
        ImageEntry(instance, modality, description, result_row)
        for instance, modality, description, result_row in session.execute(
            select(Instance, Series.modality, Series.series_description, Result)
            .join(Series, Instance.series_fk == Series.id)
            .outerjoin(Result, Result.instance_fk == Instance.id)
            .where(Series.study_fk == study_id)
            .order_by(Series.series_number, Instance.instance_number, Instance.id)
        )
    ]
    feedback = [
        FeedbackEntry(
            username, entry.finding, entry.agrees, entry.comment, entry.created_at, version
        )
        for entry, username, version in session.execute(
            select(Feedback, User.username, StudyResult.version)
            .join(User, Feedback.user_fk == User.id)
            .outerjoin(StudyResult, Feedback.study_result_fk == StudyResult.id)
            .where(Feedback.study_fk == study_id)
            .order_by(Feedback.created_at.desc(), Feedback.id.desc())
        )
    ]
    return StudyDetail(rows[0], result, images, feedback)


def study_ids_by_uid(session: Session, study_instance_uid: str) -> list[int]:
    """A Study UID may be on file under more than one patient (an identity conflict kept
    for review); each is its own study, and the caller shows them apart."""
    return list(
        session.scalars(
            select(Study.id)
            .where(Study.study_instance_uid == study_instance_uid)
            .order_by(Study.id)
        )
    )
