"""The result history as rows: one per received instance, with its study and result.

`pneumotriage history` and the reports read the same rows, so what a radiologist looks up
is exactly what the nightly report showed. Each row shows the patient name and birth date its
own instance carried, and any identity conflict it is part of (see `core.identity`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select
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
from core.identity import (
    Conflict,
    describe,
    patients_in_conflict,
    series_uids_in_conflict,
    study_uids_in_conflict,
)


@dataclass(frozen=True)
class HistoryQuery:
    patient_id: str | None = None
    study_instance_uid: str | None = None
    accession_number: str | None = None
    study_date_from: date | None = None
    study_date_to: date | None = None
    received_from: datetime | None = None
    received_until: datetime | None = None
    flagged_only: bool = False
    conflicts_only: bool = False
    status: InstanceStatus | None = None
    limit: int | None = None


@dataclass(frozen=True)
class HistoryRow:
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: date | None
    accession_number: str
    study_instance_uid: str
    study_date: date | None
    study_time: time | None
    study_description: str
    series_instance_uid: str
    modality: str
    body_part_examined: str
    view_position: str
    sop_instance_uid: str
    status: str
    probability: float | None
    label: str | None
    flagged: bool
    threshold: float | None
    model_name: str | None
    model_version: str | None
    received_at: datetime
    processed_at: datetime | None
    reason: str
    notes: str
    identity_conflict: str
    study_probability: float | None
    study_label: str | None
    study_flagged: bool | None
    study_result_version: int | None
    feedback_finding: str | None
    feedback_agrees: bool | None
    feedback_by: str | None
    feedback_at: datetime | None
    feedback_comment: str | None
    thumbnail_png: bytes | None = None
    heatmap_png: bytes | None = None

    def as_record(self) -> dict[str, Any]:
        """The fields for printing; pictures stay out of text formats."""
        pictures = {"thumbnail_png", "heatmap_png"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in pictures}


STUDY_CONDITIONS: dict[str, Callable[[Any], Any]] = {
    "patient_id": lambda v: Patient.patient_id == v,
    "study_instance_uid": lambda v: Study.study_instance_uid == v,
    "accession_number": lambda v: Study.accession_number == v,
    "study_date_from": lambda v: Study.study_date >= v,
    "study_date_to": lambda v: Study.study_date <= v,
}


def _where(
    statement: Select[Any], query: HistoryQuery, conditions: dict[str, Callable[[Any], Any]]
) -> Select[Any]:
    for name, condition in conditions.items():
        value = getattr(query, name)
        if value is not None:
            statement = statement.where(condition(value))
    return statement


def _with_feedback(statement: Select[Any], grouped: bool = False) -> Select[Any]:
    """The latest radiologist feedback on each row's study, if any: what local validation
    of the model reads. A grouped statement groups by the feedback's keys too, on which its
    columns depend."""
    latest = (
        select(Feedback.study_fk, func.max(Feedback.id).label("feedback_id"))
        .group_by(Feedback.study_fk)
        .subquery()
    )
    entry = aliased(Feedback)
    author = aliased(User)
    statement = (
        statement.add_columns(
            entry.finding.label("feedback_finding"),
            entry.agrees.label("feedback_agrees"),
            author.username.label("feedback_by"),
            entry.created_at.label("feedback_at"),
            entry.comment.label("feedback_comment"),
        )
        .outerjoin(latest, latest.c.study_fk == Study.id)
        .outerjoin(entry, entry.id == latest.c.feedback_id)
        .outerjoin(author, author.id == entry.user_fk)
    )
    return statement.group_by(entry.id, author.id) if grouped else statement


def _conflict_columns() -> dict[Conflict, Any]:
    return {
        Conflict.STUDY: Study.study_instance_uid.in_(study_uids_in_conflict()),
        Conflict.SERIES: Series.series_instance_uid.in_(series_uids_in_conflict()),
        Conflict.DEMOGRAPHICS: Study.patient_fk.in_(patients_in_conflict()),
    }


def _statement(query: HistoryQuery, with_thumbnails: bool) -> Select[Any]:
    conflicts = _conflict_columns()
    columns = [
        Patient.patient_id,
        Patient.issuer_of_patient_id,
        Instance.patient_name,
        Instance.patient_birth_date,
        Study.accession_number,
        Study.study_instance_uid,
        Study.study_date,
        Study.study_time,
        Study.study_description,
        Series.series_instance_uid,
        Series.modality,
        Series.body_part_examined,
        Instance.view_position,
        Instance.sop_instance_uid,
        Instance.status,
        Result.probability,
        Result.label,
        Result.flagged,
        Result.threshold,
        Result.model_name,
        Result.model_version,
        Instance.received_at,
        Instance.processed_at,
        Instance.reason,
        Result.notes,
        *(condition.label(f"conflict_{kind}") for kind, condition in conflicts.items()),
        StudyResult.probability.label("study_probability"),
        StudyResult.label.label("study_label"),
        StudyResult.flagged.label("study_flagged"),
        StudyResult.version.label("study_result_version"),
    ]
    if with_thumbnails:
        columns += [Result.thumbnail_png, Result.heatmap_png]
    statement = (
        select(*columns)
        .join(Series, Instance.series_fk == Series.id)
        .join(Study, Series.study_fk == Study.id)
        .join(Patient, Study.patient_fk == Patient.id)
        .outerjoin(Result, Result.instance_fk == Instance.id)
        .outerjoin(
            StudyResult,
            and_(StudyResult.study_fk == Study.id, StudyResult.superseded_at.is_(None)),
        )
        .order_by(Instance.received_at.desc(), Instance.id.desc())
    )
    statement = _with_feedback(statement)
    statement = _where(
        statement,
        query,
        {
            **STUDY_CONDITIONS,
            "received_from": lambda v: Instance.received_at >= v,
            "received_until": lambda v: Instance.received_at < v,
            "status": lambda v: Instance.status == v,
        },
    )
    if query.flagged_only:
        statement = statement.where(Result.flagged.is_(True))
    if query.conflicts_only:
        statement = statement.where(or_(*conflicts.values()))
    if query.limit is not None:
        statement = statement.limit(query.limit)
    return statement


def find(session: Session, query: HistoryQuery, with_thumbnails: bool = False) -> list[HistoryRow]:
    """Rows newest first; selected column names are the HistoryRow field names, apart from
    the conflict columns, which become one readable `identity_conflict`."""
    rows = []
    for row in session.execute(_statement(query, with_thumbnails)):
        values = dict(row._mapping)
        found = [kind for kind in Conflict if values.pop(f"conflict_{kind}")]
        values |= {
            "status": InstanceStatus(row.status).value,
            "flagged": bool(row.flagged),
            "notes": row.notes or "",
            "identity_conflict": describe(found),
        } | _feedback_values(values)
        rows.append(HistoryRow(**values))
    return rows


@dataclass(frozen=True)
class StudyRow:
    """A study as a radiologist reads it: its current study-level result, if it has one."""

    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    accession_number: str
    study_instance_uid: str
    study_date: date | None
    study_time: time | None
    study_description: str
    status: str
    images: int
    triaged: int
    rejected: int
    waiting: int
    first_received_at: datetime
    last_received_at: datetime
    probability: float | None
    label: str | None
    flagged: bool
    threshold: float | None
    model_name: str | None
    model_version: str | None
    result_version: int | None
    result_at: datetime | None
    identity_conflict: str
    feedback_finding: str | None
    feedback_agrees: bool | None
    feedback_by: str | None
    feedback_at: datetime | None
    feedback_comment: str | None

    def as_record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _count(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _study_statement(query: HistoryQuery) -> Select[Any]:
    conflicts = _conflict_columns()
    waiting = Instance.status.in_([InstanceStatus.PENDING, InstanceStatus.PROCESSING])
    rejected = _count(Instance.status == InstanceStatus.REJECTED)
    statement = (
        select(
            Patient.patient_id,
            Patient.issuer_of_patient_id,
            func.max(Instance.patient_name).label("patient_name"),
            Study.accession_number,
            Study.study_instance_uid,
            Study.study_date,
            Study.study_time,
            Study.study_description,
            func.count(Instance.id).label("images"),
            _count(Instance.status == InstanceStatus.TRIAGED).label("triaged"),
            rejected.label("rejected"),
            _count(waiting).label("waiting"),
            func.min(Instance.received_at).label("first_received_at"),
            func.max(Instance.received_at).label("last_received_at"),
            StudyResult.probability,
            StudyResult.label,
            StudyResult.flagged,
            StudyResult.threshold,
            StudyResult.model_name,
            StudyResult.model_version,
            StudyResult.version.label("result_version"),
            StudyResult.created_at.label("result_at"),
            *(func.max(case((c, 1), else_=0)).label(f"conflict_{k}") for k, c in conflicts.items()),
        )
        .select_from(Study)
        .join(Patient, Study.patient_fk == Patient.id)
        .join(Series, Series.study_fk == Study.id)
        .join(Instance, Instance.series_fk == Series.id)
        .outerjoin(
            StudyResult,
            and_(StudyResult.study_fk == Study.id, StudyResult.superseded_at.is_(None)),
        )
        .group_by(Study.id, Patient.id, StudyResult.id)
        .order_by(func.max(Instance.received_at).desc(), Study.id.desc())
    )
    statement = _with_feedback(statement, grouped=True)
    statement = _where(statement, query, STUDY_CONDITIONS)
    if query.received_from is not None:
        statement = statement.having(func.max(Instance.received_at) >= query.received_from)
    if query.received_until is not None:
        statement = statement.having(func.max(Instance.received_at) < query.received_until)
    if query.flagged_only:
        statement = statement.where(StudyResult.flagged.is_(True))
    if query.conflicts_only:
        statement = statement.having(
            or_(*(func.max(case((c, 1), else_=0)) == 1 for c in conflicts.values()))
        )
    if query.status is InstanceStatus.TRIAGED:
        statement = statement.where(StudyResult.id.is_not(None))
    elif query.status is InstanceStatus.REJECTED:
        statement = statement.having(rejected == func.count(Instance.id))
    elif query.status is not None:
        statement = statement.where(StudyResult.id.is_(None)).having(
            rejected < func.count(Instance.id)
        )
    if query.limit is not None:
        statement = statement.limit(query.limit)
    return statement


def _feedback_values(values: dict[str, Any]) -> dict[str, Any]:
    finding = values["feedback_finding"]
    return {
        "feedback_finding": None if finding is None else str(getattr(finding, "value", finding))
    }


def find_studies(session: Session, query: HistoryQuery) -> list[StudyRow]:
    """One row per study, newest image first. A study is `triaged` once it has a study-level
    result, `rejected` when every image was, and `pending` until then (images waiting for
    triage, or the study waiting to settle); processing counts as pending here."""
    rows = []
    for row in session.execute(_study_statement(query)):
        values = dict(row._mapping)
        found = [kind for kind in Conflict if values.pop(f"conflict_{kind}")]
        if values["result_version"] is not None:
            status = "triaged"
        elif values["rejected"] == values["images"]:
            status = "rejected"
        else:
            status = "pending"
        values |= {
            "status": status,
            "flagged": bool(values["flagged"]),
            "identity_conflict": describe(found),
        } | _feedback_values(values)
        rows.append(StudyRow(**values))
    return rows
