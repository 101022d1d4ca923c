"""Registering a received instance: the patient/study/series/instance rows it belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.schema import Instance, InstanceStatus, Patient, Series, Study
from core.db.types import utcnow


class MetadataError(Exception):
    """The object lacks what every DICOM instance must carry; the message says what."""


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword, "")
    return ("" if value is None else str(value)).strip()[:limit]


def _integer(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
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
    birth_date: date | None
    sex: str
    study_date: date | None
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
        return cls(
            sop_instance_uid=required["SOPInstanceUID"],
            sop_class_uid=required["SOPClassUID"],
            study_instance_uid=required["StudyInstanceUID"],
            series_instance_uid=required["SeriesInstanceUID"],
            patient_id=_text(ds, "PatientID", 64),
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
            patient_name=_text(ds, "PatientName", 324),
            birth_date=_date(ds, "PatientBirthDate"),
            sex=_text(ds, "PatientSex", 16),
            study_date=_date(ds, "StudyDate"),
            accession_number=_text(ds, "AccessionNumber", 16),
            study_description=_text(ds, "StudyDescription", 64),
            modality=_text(ds, "Modality", 16).upper(),
            body_part_examined=_text(ds, "BodyPartExamined", 64),
            series_description=_text(ds, "SeriesDescription", 64),
            series_number=_integer(ds, "SeriesNumber"),
            instance_number=_integer(ds, "InstanceNumber"),
            view_position=_text(ds, "ViewPosition", 16).upper(),
        )


def is_registered(session: Session, sop_instance_uid: str) -> bool:
    found = session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid))
    return found is not None


def _patient(session: Session, meta: InstanceMetadata) -> Patient:
    patient = session.scalar(
        select(Patient).where(
            Patient.patient_id == meta.patient_id,
            Patient.issuer_of_patient_id == meta.issuer_of_patient_id,
        )
    )
    if patient is None:
        patient = Patient(
            patient_id=meta.patient_id, issuer_of_patient_id=meta.issuer_of_patient_id
        )
        session.add(patient)
    patient.patient_name = meta.patient_name or patient.patient_name
    patient.birth_date = meta.birth_date or patient.birth_date
    patient.sex = meta.sex or patient.sex
    return patient


def _study(session: Session, meta: InstanceMetadata, patient: Patient) -> Study:
    study = session.scalar(select(Study).where(Study.study_instance_uid == meta.study_instance_uid))
    if study is None:
        study = Study(
            study_instance_uid=meta.study_instance_uid,
            patient=patient,
            study_date=meta.study_date,
            accession_number=meta.accession_number,
            study_description=meta.study_description,
        )
        session.add(study)
    return study


def _series(session: Session, meta: InstanceMetadata, study: Study) -> Series:
    series = session.scalar(
        select(Series).where(Series.series_instance_uid == meta.series_instance_uid)
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


def add_instance(
    session: Session,
    meta: InstanceMetadata,
    *,
    transfer_syntax_uid: str,
    file_path: str,
    file_size: int,
    calling_ae_title: str,
) -> Instance:
    """Add the rows for one instance to the session; the caller flushes and commits."""
    patient = _patient(session, meta)
    study = _study(session, meta, patient)
    series = _series(session, meta, study)
    instance = Instance(
        sop_instance_uid=meta.sop_instance_uid,
        sop_class_uid=meta.sop_class_uid,
        series=series,
        instance_number=meta.instance_number,
        view_position=meta.view_position,
        transfer_syntax_uid=transfer_syntax_uid,
        file_path=file_path,
        file_size=file_size,
        calling_ae_title=calling_ae_title[:16],
        received_at=utcnow(),
        status=InstanceStatus.PENDING,
        reason="",
        attempts=0,
    )
    session.add(instance)
    return instance
