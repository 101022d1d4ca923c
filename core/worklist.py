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

from sqlalchemy import Select, and_, case, exists, func, or_, select, union_all
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
    """Studies in an identity conflict. The UID checks group every filed instance, but a
    UID can be in conflict only where it is on file twice, which the (indexed) studies and
    series tables tell alone; so the checks group only the instances of those UIDs."""
    twice_studies = (
        select(Study.study_instance_uid)
        .group_by(Study.study_instance_uid)
        .having(func.count() > 1)
        .correlate(None)
    )
    twice_series = (
        select(Series.series_instance_uid)
        .group_by(Series.series_instance_uid)
        .having(func.count() > 1)
        .correlate(None)
    )
    return or_(
        Study.study_instance_uid.in_(
            study_uids_in_conflict().where(Study.study_instance_uid.in_(twice_studies))
        ),
        Study.patient_fk.in_(patients_in_conflict()),
        _study_instances(
            Series.series_instance_uid.in_(
                series_uids_in_conflict().where(Series.series_instance_uid.in_(twice_series))
            )
        ),
    )


# Sets of studies that a page view finds once and then names by id (those a search or a
# state matches, the provisional flagged studies) while they have at most this many members;
# a larger one is asked for by its condition in each query instead: slower, but the number
# of bound values is limited (SQLite to 32,766 per statement, PostgreSQL to 65,535).
BY_ID_LIMIT = 5000

# Marks a `%` or `_` of the search text as itself in a LIKE pattern.
LIKE_ESCAPE = "\\"


@dataclass(frozen=True)
class _Plan:
    """How a page view asks "is this study in that set", for SQLite and PostgreSQL alike.

    Over the whole history, each set is best built once: SQLite builds an IN list, where
    probing `study_results` study by study would cost a table read each (no index holds
    `superseded_at`), and PostgreSQL plans IN as a semi-join and NOT EXISTS as an anti-join
    (NOT IN it would run as a scan per row once its hash passed `work_mem`). Over a period,
    or the few studies a search found, probing just those studies is cheaper than building
    the set from the whole history, so the test is a count per study, which PostgreSQL
    keeps as a subquery per row instead of hashing the whole `study_results` table.
    """

    whole_history: bool
    sqlite: bool

    def among(self, column: Any, ids: Select[Any]) -> Any:
        if self.whole_history:
            return column.in_(ids)
        return self._probe(column, ids) > 0

    def outside(self, column: Any, ids: Select[Any]) -> Any:
        if not self.whole_history:
            return self._probe(column, ids) == 0
        if self.sqlite:
            return column.not_in(ids)
        return ~exists(ids.where(ids.selected_columns[0] == column))

    @staticmethod
    def _probe(column: Any, ids: Select[Any]) -> Any:
        """How many of `ids` are `column`: a subquery per row, as no planner flattens it."""
        return (
            ids.where(ids.selected_columns[0] == column)
            .with_only_columns(func.count(), maintain_column_froms=True)
            .scalar_subquery()
        )

    def contains(self, column: Any, pattern: str) -> Any:
        """ILIKE, which SQLAlchemy writes for SQLite as lower(x) LIKE lower(p). SQLite's
        LIKE already ignores ASCII case and its lower() folds nothing else, so plain LIKE
        finds the same rows without two function calls per row, most of what a search over
        every instance's patient name costs."""
        if self.sqlite:
            return column.like(pattern, escape=LIKE_ESCAPE)
        return column.ilike(pattern, escape=LIKE_ESCAPE)


def _current_ids(flagged_only: bool = False) -> Select[Any]:
    """Studies with a current study result (a flagged one), under an alias of their own so
    that the subquery never correlates with a study result the outer query joins."""
    result = aliased(StudyResult)
    statement = select(result.study_fk).where(result.superseded_at.is_(None))
    return statement.where(result.flagged.is_(True)) if flagged_only else statement


def _text_condition(text: str, plan: _Plan) -> Any:
    """Part of a Patient ID, accession number or patient name (components apart, in order).

    Spaces, commas and the `^` between name components all become wildcards, so "beta bob",
    "Beta, Bob" and "Beta^Bob" find Beta^Bob; a `%` or `_` typed is taken literally (a
    search for "a_c" finds no "abc"); the stored column is matched as it is, which
    lets PostgreSQL's trigram indexes answer instead of a scan of every instance.
    """
    literal = "".join(LIKE_ESCAPE + c if c in "%_" + LIKE_ESCAPE else c for c in text)
    pattern = "%" + literal.replace(" ", "%") + "%"
    name_pattern = pattern.replace(",", "%").replace("^", "%")
    return or_(
        plan.among(
            Study.patient_fk, select(Patient.id).where(plan.contains(Patient.patient_id, pattern))
        ),
        plan.contains(Study.accession_number, pattern),
        plan.among(
            Study.id,
            select(Series.study_fk)
            .join(Instance, Instance.series_fk == Series.id)
            .where(plan.contains(Instance.patient_name, name_pattern)),
        ),
    )


def _state_conditions(state: StudyState | None, plan: _Plan) -> list[Any]:
    settled = _current_ids()
    not_rejected = _study_instances(Instance.status != InstanceStatus.REJECTED)
    if state is StudyState.TRIAGED:
        return [plan.among(Study.id, settled)]
    if state is StudyState.AWAITING:
        return [plan.outside(Study.id, settled), not_rejected]
    if state is StudyState.REJECTED:
        return [plan.outside(Study.id, settled), ~not_rejected]
    if state is StudyState.REVIEW:
        return [_conflicting_studies()]
    return []


def _by_id(session: Session, condition: Any) -> Any | None:
    """The studies matching `condition`, named by id, or None when there are too many."""
    ids = list(session.scalars(select(Study.id).where(condition).limit(BY_ID_LIMIT + 1)))
    return Study.id.in_(ids) if len(ids) <= BY_ID_LIMIT else None


def _settled_flagged(conditions: list[Any], plan: _Plan) -> Select[Any]:
    """Studies whose current study result is flagged, with its score.

    Over the whole history from the flagged results (a quarter of them, by their index);
    over a period from the period's studies, each probed for its result, which neither
    database would choose itself: SQLite takes an indexed `flagged IS 1` as the better
    start, PostgreSQL hashes the whole `study_results` table rather than probe its index.
    """
    current = _current_result()
    if plan.whole_history:
        return (
            select(Study.id, current.probability.label("score"), Study.received_at)
            .join(
                current,
                and_(
                    current.study_fk == Study.id,
                    current.superseded_at.is_(None),
                    current.flagged.is_(True),
                ),
            )
            .where(*conditions)
        )
    score = (
        select(func.max(current.probability))
        .where(
            current.study_fk == Study.id,
            current.superseded_at.is_(None),
            current.flagged.is_(True),
        )
        .scalar_subquery()
    )
    return select(Study.id, score.label("score"), Study.received_at).where(
        *conditions, score.is_not(None)
    )


def _pages(total: int, page_size: int) -> int:
    return max(1, -(-total // page_size))


def worklist(session: Session, query: WorklistFilter, page: int, page_size: int) -> WorklistPage:
    """Flagged studies by score, then the others by waiting time, in separate queries.

    One ordered query over every study would work out each study's flag and score before
    it could sort, which over a long history costs far more than the page. Apart, the
    flagged part starts from the flagged study results, the others walk the `received_at`
    index and stop at the page, and what several queries need (the free-text matches, the
    provisional flagged studies, which are flagged by an image and not yet settled) is
    found once.
    """
    plan = _Plan(query.hours is None, session.get_bind().dialect.name == "sqlite")
    conditions: list[Any] = []
    if query.hours is not None:
        conditions.append(Study.received_at >= utcnow() - timedelta(hours=query.hours))
    text = " ".join(query.text.split())
    if text:
        conditions.append(_text_condition(text, plan))
    conditions += _state_conditions(query.state, plan)
    if text or query.state not in (None, StudyState.TRIAGED):
        # A search or a state that few studies match is found once and named by id, so
        # that the queries below neither repeat it (a scan of every instance's name, the
        # identity checks over every instance) nor build sets from the whole history.
        named = _by_id(session, and_(*conditions))
        if named is not None:
            conditions = [named]
            plan = _Plan(False, plan.sqlite)

    # Provisional: flagged by an image, with no study result yet; so never a triaged one.
    provisional: Any = Study.id.in_([])
    if query.state is not StudyState.TRIAGED:
        provisional = and_(
            *conditions,
            plan.outside(Study.id, _current_ids()),
            _study_instances(Instance.result.has(Result.flagged.is_(True))),
        )
        named = _by_id(session, provisional)
        provisional = provisional if named is None else named
    flagged = union_all(
        _settled_flagged(conditions, plan),
        select(Study.id, _image_score().label("score"), Study.received_at).where(provisional),
    ).subquery()
    ranked = select(flagged.c.id, func.count().over().label("flagged_total")).order_by(
        flagged.c.score.desc(), flagged.c.received_at, flagged.c.id
    )

    def flagged_page(offset: int) -> tuple[list[int], int | None]:
        """The page's flagged studies, and how many there are in all (None if none is on
        this page: the window count comes with the rows)."""
        rows = session.execute(ranked.limit(page_size).offset(offset)).all()
        return [row.id for row in rows], rows[0].flagged_total if rows else None

    total = None
    if not query.flagged_only:
        total = session.scalar(select(func.count(Study.id)).where(*conditions)) or 0
        page = min(page, _pages(total, page_size))
    page = max(1, page)
    ids, flagged_total = flagged_page((page - 1) * page_size)
    if flagged_total is None:
        flagged_total = session.scalar(select(func.count()).select_from(flagged)) or 0
        if query.flagged_only and page > _pages(flagged_total, page_size):
            page = _pages(flagged_total, page_size)
            ids, _ = flagged_page((page - 1) * page_size)
    if total is None:
        total = flagged_total
    offset = (page - 1) * page_size
    if not query.flagged_only and len(ids) < page_size:
        ids += session.scalars(
            select(Study.id)
            .where(
                *conditions,
                plan.outside(Study.id, _current_ids(flagged_only=True)),
                ~provisional,
            )
            .order_by(Study.received_at, Study.id)
            .limit(page_size - len(ids))
            .offset(max(0, offset - flagged_total))
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
