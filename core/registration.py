"""Filing a received instance: the patient, study and series rows it belongs to.

A study is looked up under the instance's own patient and a series under its own study, so a
reused UID can never file an instance under somebody else. What is already stored decides
what an incoming instance is: new, an exact duplicate (acknowledged, ignored), a corrected
re-send (same UIDs, corrected patient attributes: the record follows it and the change is
audited), or a SOP Instance UID that belongs to another study (always refused: no later
DICOM peer could tell the two apart).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime, time

from pydicom import Dataset
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.orm import Session

from core.audit import record
from core.db.schema import (
    Feedback,
    Instance,
    Patient,
    Series,
    Study,
    StudyResult,
)
from core.db.types import utcnow
from core.identity import Conflict, conflicts_of, name_key, normalise_name


class MetadataError(Exception):
    """The object lacks what every DICOM instance must carry; the message says what."""


_CONTROL = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    """The value as text a database can hold: PostgreSQL refuses NUL bytes outright (and
    would refuse the same row on every retry), and no control character belongs in a name."""
    value = ds.get(keyword, "")
    text = "" if value is None else str(value)
    text = text.encode("utf-8", "replace").decode("utf-8").translate(_CONTROL)
    return text.strip()[:limit]


def _integer(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _time(ds: Dataset, keyword: str) -> time | None:
    """TM as HHMMSS.FFFFFF with any trailing part left out (PS3.5 6.2); a value that is
    not one is dropped rather than refusing the instance over a display field."""
    text = _text(ds, keyword, 16).replace(":", "")
    hours, minutes, seconds = text[:2], text[2:4] or "00", text[4:6] or "00"
    fraction = text[7:13] if text[6:7] == "." else ""
    try:
        return time(int(hours), int(minutes), int(seconds), int(fraction.ljust(6, "0") or 0))
    except ValueError:
        return None


def _date(ds: Dataset, keyword: str) -> date | None:
    text = _text(ds, keyword, 8)
    try:
        return datetime.strptime(text, "%Y%m%d").date() if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class InstanceMetadata:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_name_key: str
    birth_date: date | None
    sex: str
    study_date: date | None
    study_time: time | None
    accession_number: str
    study_description: str
    modality: str
    body_part_examined: str
    series_description: str
    series_number: int | None
    instance_number: int | None
    view_position: str

    @classmethod
    def from_dataset(cls, ds: Dataset) -> InstanceMetadata:
        required = {
            "SOPInstanceUID": _text(ds, "SOPInstanceUID", 64),
            "SOPClassUID": _text(ds, "SOPClassUID", 64),
            "StudyInstanceUID": _text(ds, "StudyInstanceUID", 64),
            "SeriesInstanceUID": _text(ds, "SeriesInstanceUID", 64),
        }
        missing = [name for name, value in required.items() if not value]
        if missing:
            raise MetadataError(f"missing {', '.join(missing)}")
        name = normalise_name(_text(ds, "PatientName", 324))
        return cls(
            sop_instance_uid=required["SOPInstanceUID"],
            sop_class_uid=required["SOPClassUID"],
            study_instance_uid=required["StudyInstanceUID"],
            series_instance_uid=required["SeriesInstanceUID"],
            patient_id=_text(ds, "PatientID", 64),
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
            patient_name=name,
            patient_name_key=name_key(name),
            birth_date=_date(ds, "PatientBirthDate"),
            sex=_text(ds, "PatientSex", 16),
            study_date=_date(ds, "StudyDate"),
            study_time=_time(ds, "StudyTime"),
            accession_number=_text(ds, "AccessionNumber", 16),
            study_description=_text(ds, "StudyDescription", 64),
            modality=_text(ds, "Modality", 16).upper(),
            body_part_examined=_text(ds, "BodyPartExamined", 64),
            series_description=_text(ds, "SeriesDescription", 64),
            series_number=_integer(ds, "SeriesNumber"),
            instance_number=_integer(ds, "InstanceNumber"),
            view_position=_text(ds, "ViewPosition", 16).upper(),
        )

    @property
    def demographics(self) -> dict[str, object]:
        return {
            "patient_id": self.patient_id,
            "issuer_of_patient_id": self.issuer_of_patient_id,
            "patient_name": self.patient_name,
            "patient_birth_date": self.birth_date,
            "patient_sex": self.sex,
        }


@dataclass(frozen=True)
class StoredFile:
    relative_path: str
    size: int
    transfer_syntax_uid: str
    calling_ae_title: str


class Kind(enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CORRECTION = "correction"
    FOREIGN_UID = "foreign"


def _demographics(instance: Instance) -> dict[str, object]:
    patient = instance.series.study.patient
    return {
        "patient_id": patient.patient_id,
        "issuer_of_patient_id": patient.issuer_of_patient_id,
        "patient_name": instance.patient_name,
        "patient_birth_date": instance.patient_birth_date,
        "patient_sex": instance.patient_sex,
    }


# The node's per-instance look-ups, built once with their values as parameters: building a
# statement costs more CPU than SQLite takes to answer it.
_INSTANCE_BY_UID = select(Instance).where(Instance.sop_instance_uid == bindparam("uid"))
_PATIENT_BY_KEY = select(Patient).where(
    Patient.patient_id == bindparam("patient_id"),
    Patient.issuer_of_patient_id == bindparam("issuer"),
)
_STUDY_OF_PATIENT = select(Study).where(
    Study.patient_fk == bindparam("patient"), Study.study_instance_uid == bindparam("uid")
)
_SERIES_OF_STUDY = select(Series).where(
    Series.study_fk == bindparam("study"), Series.series_instance_uid == bindparam("uid")
)


def existing(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalar(_INSTANCE_BY_UID, {"uid": sop_instance_uid})


def classify(instance: Instance | None, meta: InstanceMetadata) -> Kind:
    """What an incoming copy is, given the instance already stored under its SOP UID."""
    if instance is None:
        return Kind.NEW
    series = instance.series
    if (series.series_instance_uid, series.study.study_instance_uid) != (
        meta.series_instance_uid,
        meta.study_instance_uid,
    ):
        return Kind.FOREIGN_UID
    if _demographics(instance) == meta.demographics:
        return Kind.DUPLICATE
    return Kind.CORRECTION


def conflicts(
    session: Session, meta: InstanceMetadata, excluding: int | None = None
) -> list[Conflict]:
    return conflicts_of(
        session,
        patient_id=meta.patient_id,
        issuer=meta.issuer_of_patient_id,
        study_uid=meta.study_instance_uid,
        series_uid=meta.series_instance_uid,
        keyed_name=meta.patient_name_key,
        birth_date=meta.birth_date,
        excluding=excluding,
    )


def _patient(session: Session, meta: InstanceMetadata) -> Patient:
    patient = session.scalar(
        _PATIENT_BY_KEY, {"patient_id": meta.patient_id, "issuer": meta.issuer_of_patient_id}
    )
    if patient is None:
        patient = Patient(
            patient_id=meta.patient_id, issuer_of_patient_id=meta.issuer_of_patient_id
        )
        session.add(patient)
    return patient


def _study(session: Session, meta: InstanceMetadata, patient: Patient) -> Study:
    study = None
    if patient.id is not None:
        study = session.scalar(
            _STUDY_OF_PATIENT, {"patient": patient.id, "uid": meta.study_instance_uid}
        )
    if study is None:
        study = Study(
            study_instance_uid=meta.study_instance_uid,
            patient=patient,
            study_date=meta.study_date,
            study_time=meta.study_time,
            accession_number=meta.accession_number,
            study_description=meta.study_description,
        )
        session.add(study)
    return study


def _series(session: Session, meta: InstanceMetadata, study: Study) -> Series:
    series = None
    if study.id is not None:
        series = session.scalar(
            _SERIES_OF_STUDY, {"study": study.id, "uid": meta.series_instance_uid}
        )
    if series is None:
        series = Series(
            series_instance_uid=meta.series_instance_uid,
            study=study,
            modality=meta.modality,
            body_part_examined=meta.body_part_examined,
            series_description=meta.series_description,
            series_number=meta.series_number,
        )
        session.add(series)
    return series


# The key of PostgreSQL's advisory lock that serialises registration across every node
# process sharing the database: any fixed 64-bit number ("ptriage" in ASCII).
REGISTRATION_LOCK = 0x70747269616765


def serialise(session: Session) -> None:
    """Registration reads (the identity checks, get-or-create of the patient, study and
    series rows) and then writes: two nodes doing it at once for one new study would both
    create its row, or both accept two instances that contradict each other. A node's own
    threads take a lock; across the node processes sharing the database, PostgreSQL's take
    this advisory lock and SQLite's its write lock (BEGIN IMMEDIATE, which waits out the
    busy timeout for the writer before it), each held until the registration commits or
    rolls back. So it must be the session's first statement; SQLite's processes are those
    of one host (docs/deployment.md)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REGISTRATION_LOCK})
    elif dialect == "sqlite":
        session.execute(text("BEGIN IMMEDIATE"))


def file_under(session: Session, meta: InstanceMetadata) -> Series:
    """The series an instance with this identity belongs to, with its study and patient,
    created where they do not exist yet."""
    patient = _patient(session, meta)
    return _series(session, meta, _study(session, meta, patient))


def correct_instance(
    session: Session, instance: Instance, meta: InstanceMetadata, stored: StoredFile
) -> None:
    """Re-file a corrected re-send under the identity it now carries, keep its result (the
    image is the same; its header was fixed), and audit the values before and after. The
    earlier file is kept as the previous version, named in the audit event."""
    before = {**_demographics(instance), "file_path": instance.file_path}
    previous = instance.series
    instance.series = file_under(session, meta)
    instance.patient_name = meta.patient_name
    instance.patient_name_key = meta.patient_name_key
    instance.patient_birth_date = meta.birth_date
    instance.patient_sex = meta.sex
    instance.file_path = stored.relative_path
    instance.file_size = stored.size
    instance.purged_at = None
    instance.transfer_syntax_uid = stored.transfer_syntax_uid
    session.flush()
    _drop_if_empty(session, previous)
    record(
        session,
        "identity_corrected",
        stored.calling_ae_title,
        meta.sop_instance_uid,
        before=before,
        after={**meta.demographics, "file_path": stored.relative_path},
    )


def _drop_if_empty(session: Session, series: Series) -> None:
    """A correction can leave the old patient's series, study and patient rows empty; left
    in place they would keep showing a conflict that no longer exists. A study that already
    had a result keeps its row, with that result superseded: what was published and what
    radiologists said about it stay on record, and the moved image is settled anew under
    its own patient."""
    study, patient = series.study, series.study.patient
    for row, children in (
        (series, select(Instance.id).where(Instance.series_fk == series.id)),
        (study, select(Series.id).where(Series.study_fk == study.id)),
        (patient, select(Study.id).where(Study.patient_fk == patient.id)),
    ):
        if session.scalar(children.limit(1)) is not None:
            return
        if row is study and _has_results(session, study):
            session.execute(
                update(StudyResult)
                .where(StudyResult.study_fk == study.id, StudyResult.superseded_at.is_(None))
                .values(superseded_at=utcnow())
            )
            return
        session.delete(row)
        session.flush()


def _has_results(session: Session, study: Study) -> bool:
    referring = (
        select(StudyResult.id).where(StudyResult.study_fk == study.id),
        select(Feedback.id).where(Feedback.study_fk == study.id),
    )
    return any(session.scalar(statement.limit(1)) is not None for statement in referring)
