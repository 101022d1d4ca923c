"""Patient identity: when two instances are the same patient, and when what is stored disagrees.

A triage flag on the wrong patient is the worst failure this service can have, so identity
conflicts are never resolved by guessing. They are derived from what is stored rather than
set once as flags: the node asks whether an incoming instance would create one (and refuses
it under the default policy), and `history` and the report show every stored instance that
is part of one, until the records agree again (after a corrected re-send, for example).
"""

from __future__ import annotations

import enum
import functools
import unicodedata
from datetime import date

from sqlalchemy import ColumnElement, Date, Select, and_, bindparam, case, false, func, or_, select
from sqlalchemy.orm import Session

from core.db.schema import Instance, Patient, Series, Study


class Conflict(enum.StrEnum):
    STUDY = "study"
    SERIES = "series"
    DEMOGRAPHICS = "demographics"


DESCRIPTIONS = {
    Conflict.STUDY: "Study Instance UID also filed under another Patient ID",
    Conflict.SERIES: "Series Instance UID also filed under another study or patient",
    Conflict.DEMOGRAPHICS: "Patient ID also received with another name or birth date",
}


def normalise_name(value: str) -> str:
    """PS3.5 6.2: trailing empty name components may be left out, so `DOE^JOHN^^` is
    `DOE^JOHN`; storing one form keeps that from ever looking like a conflict."""
    return "^".join(part.strip() for part in value.split("^")).rstrip("^ ")


def name_key(value: str) -> str:
    """What two names must share to be one name: the normalised name in upper case by
    Python's rules, in one Unicode form (a composed "ü" and "u" with a combining diaeresis
    are one letter; composed after upper-casing, which can leave a letter decomposed).
    Stored beside each name and compared as it is, because the databases' own upper()
    differ: SQLite's changes ASCII letters only ("MüLLER"), PostgreSQL's follows the
    database's locale, so the same two names in other cases were a conflict on one and
    not on the other. Upper case also makes "ß" "SS" and the Turkish dotless i an "I": two
    names that differ only so, under one Patient ID, are taken for one; the other way round
    (a capital sharp s against "ß", say) they are a conflict, which refuses or holds the
    instance for review and never files it under another patient. A change here needs a
    migration that keys the stored names again (0010 did it first)."""
    return unicodedata.normalize("NFC", normalise_name(value).upper())


def _filed(with_patient: bool = True) -> Select:
    """Every stored instance with its series and study (and patient key, which the checks
    over the whole history do without: they group by the study's `patient_fk`)."""
    statement = (
        select()
        .select_from(Instance)
        .join(Series, Instance.series_fk == Series.id)
        .join(Study, Series.study_fk == Study.id)
    )
    return statement.join(Patient, Study.patient_fk == Patient.id) if with_patient else statement


def conflicts_of(
    session: Session,
    *,
    patient_id: str,
    issuer: str,
    study_uid: str,
    series_uid: str,
    keyed_name: str,
    birth_date: date | None,
    excluding: int | None = None,
) -> list[Conflict]:
    """The conflicts an instance with these attributes (its name as `name_key` gives it)
    would have with the stored ones, leaving out `excluding` (the instance itself, when it
    is being corrected)."""
    values = {
        "patient_id": patient_id,
        "issuer": issuer,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "name_key": keyed_name,
        "birth_date": birth_date,
        "excluding": excluding,
    }
    probes = _probes(bool(keyed_name), birth_date is not None, excluding is not None)
    found = session.execute(probes, values).one()
    return [conflict for conflict, present in zip(Conflict, found, strict=True) if present]


@functools.cache
def _probes(with_name: bool, with_birth_date: bool, excluding: bool) -> Select:
    """The three checks as one statement (the node asks this of every instance it
    registers), built once for each shape of the values, which are its parameters: built
    anew for each instance, it cost more CPU than the database took to answer it. An empty
    name or birth date contradicts nothing, so its shape leaves that test out."""
    patient_id, issuer = bindparam("patient_id"), bindparam("issuer")
    study_uid, series_uid = bindparam("study_uid"), bindparam("series_uid")
    other_patient = or_(Patient.patient_id != patient_id, Patient.issuer_of_patient_id != issuer)
    same_patient = and_(Patient.patient_id == patient_id, Patient.issuer_of_patient_id == issuer)
    names_differ: ColumnElement[bool] = false()
    if with_name:
        stored = Instance.patient_name_key
        names_differ = and_(stored != "", stored != bindparam("name_key"))
    dates_differ: ColumnElement[bool] = false()
    if with_birth_date:
        stored_date = Instance.patient_birth_date
        birth = bindparam("birth_date", type_=Date)
        dates_differ = and_(stored_date.is_not(None), stored_date != birth)
    checks = {
        Conflict.STUDY: and_(Study.study_instance_uid == study_uid, other_patient),
        Conflict.SERIES: and_(
            Series.series_instance_uid == series_uid,
            or_(Study.study_instance_uid != study_uid, other_patient),
        ),
        Conflict.DEMOGRAPHICS: and_(same_patient, or_(names_differ, dates_differ)),
    }
    probes = []
    for conflict in Conflict:
        statement = _filed().add_columns(Instance.id).where(checks[conflict])
        if excluding:
            statement = statement.where(Instance.id != bindparam("excluding"))
        probes.append(statement.exists())
    return select(*probes)


def _varies(column: ColumnElement) -> ColumnElement[bool]:
    """More than one distinct non-null value in the group. Said as min != max rather than
    count(DISTINCT) > 1: both ignore nulls and agree, but PostgreSQL sorts every group for a
    DISTINCT count, while min and max it keeps in one pass of a hash aggregate, which
    matters where the worklist's "needs review" asks this of every stored instance."""
    return func.min(column) != func.max(column)


def study_uids_in_conflict() -> Select:
    return (
        _filed(with_patient=False)
        .add_columns(Study.study_instance_uid)
        .group_by(Study.study_instance_uid)
        .having(_varies(Study.patient_fk))
    )


def series_uids_in_conflict() -> Select:
    return (
        _filed(with_patient=False)
        .add_columns(Series.series_instance_uid)
        .group_by(Series.series_instance_uid)
        .having(_varies(Series.study_fk))
    )


def patients_in_conflict() -> Select:
    """Patient keys received with more than one name or birth date (empty ones not counted:
    an anonymous copy does not contradict a named one)."""
    names = case((Instance.patient_name_key != "", Instance.patient_name_key))
    return (
        _filed(with_patient=False)
        .add_columns(Study.patient_fk)
        .group_by(Study.patient_fk)
        .having(or_(_varies(names), _varies(Instance.patient_birth_date)))
    )


def describe(conflicts: list[Conflict]) -> str:
    return "; ".join(DESCRIPTIONS[c] for c in conflicts)
