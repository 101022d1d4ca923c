"""Patient identity at the node's receive step, on real SQLite and PostgreSQL databases.

Each case is one way a result could end up shown under the wrong patient: a UID reused for
another patient, a Patient ID shared by two people, a corrected re-send. The running service
is driven through the same cases with DCMTK in test_identity_interop.py.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db.engine import make_engine, make_session_factory
from core.db.schema import AuditEvent, Instance
from core.history import HistoryQuery, HistoryRow, find
from core.identity import patients_in_conflict
from dicom_node.ingest import Receiver, StoreStatus
from dicom_node.storage import InstanceStore


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "storage")


def instance(name: str, patient_id: str, birth: str = "19700101", **uids: str) -> Dataset:
    dataset = make_dataset(
        grey_pixels(fixture_images()[0]), patient_name=name, patient_id=patient_id, **uids
    )
    dataset.PatientBirthDate = birth
    return dataset


class Node:
    def __init__(self, store: InstanceStore, sessions: sessionmaker[Session], policy: str):
        self.receiver = Receiver(store, sessions, policy)
        self.sessions = sessions
        self.outbox = store.root.parent / "sent"

    def send(self, dataset: Dataset) -> tuple[StoreStatus, str]:
        path = write(dataset, self.outbox, f"{generate_uid()}.dcm")
        outcome = self.receiver.receive(
            path, "1.2.840.10008.1.2.1", "MODALITY", str(dataset.SOPInstanceUID)
        )
        return outcome.status, outcome.comment

    def history(self) -> dict[str, HistoryRow]:
        with self.sessions() as session:
            return {row.sop_instance_uid: row for row in find(session, HistoryQuery())}


def test_a_reused_series_uid_is_refused_by_default(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    node = Node(store, sessions, "reject")
    first = instance("Adams^Ann", "PA1")
    assert node.send(first)[0] is StoreStatus.SUCCESS
    intruder = instance(
        "Baker^Bob",
        "PB1",
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
    )
    status, comment = node.send(intruder)
    assert status is StoreStatus.CONFLICTING_PATIENT_ID
    assert comment == "Study UID is on file for another Patient ID"
    assert list(node.history()) == [first.SOPInstanceUID]


@pytest.mark.parametrize("reused", ["study", "series"])
def test_under_review_a_reused_uid_files_each_instance_under_its_own_patient(
    store: InstanceStore, sessions: sessionmaker[Session], reused: str
) -> None:
    node = Node(store, sessions, "review")
    first = instance("Adams^Ann", "PA1")
    bystander = instance("Cole^Cid", "PC1")
    uids = {"study_uid": str(first.StudyInstanceUID)}
    if reused == "series":
        # Another study, but the series UID of Ann's.
        uids = {"series_uid": str(first.SeriesInstanceUID)}
    intruder = instance("Baker^Bob", "PB1", **uids)
    for dataset in (first, bystander, intruder):
        assert node.send(dataset)[0] is StoreStatus.SUCCESS
    rows = node.history()
    assert (rows[first.SOPInstanceUID].patient_name, rows[first.SOPInstanceUID].patient_id) == (
        "Adams^Ann",
        "PA1",
    )
    assert (
        rows[intruder.SOPInstanceUID].patient_name,
        rows[intruder.SOPInstanceUID].patient_id,
    ) == (
        "Baker^Bob",
        "PB1",
    )
    expected = "Study Instance UID" if reused == "study" else "Series Instance UID"
    assert expected in rows[first.SOPInstanceUID].identity_conflict
    assert expected in rows[intruder.SOPInstanceUID].identity_conflict
    assert rows[bystander.SOPInstanceUID].identity_conflict == ""
    with sessions() as session:
        flagged = find(session, HistoryQuery(conflicts_only=True))
    assert {r.sop_instance_uid for r in flagged} == {first.SOPInstanceUID, intruder.SOPInstanceUID}


@pytest.mark.parametrize("policy", ["reject", "review"])
def test_a_sop_instance_uid_from_another_study_is_always_refused(
    store: InstanceStore, sessions: sessionmaker[Session], policy: str
) -> None:
    node = Node(store, sessions, policy)
    first = instance("Adams^Ann", "PA1")
    assert node.send(first)[0] is StoreStatus.SUCCESS
    collision = instance("Baker^Bob", "PB1", sop_uid=str(first.SOPInstanceUID))
    status, comment = node.send(collision)
    assert status is StoreStatus.CONFLICTING_PATIENT_ID
    assert comment == "SOP Instance UID is on file in another study"
    (row,) = node.history().values()
    assert (row.patient_name, row.patient_id) == ("Adams^Ann", "PA1")


def test_one_patient_id_with_another_name_and_birth_date(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    first = instance("Adams^Ann", "SHARED", "19700101")
    namesake = instance("Dunn^Dora", "SHARED", "19851231")
    rejecting = Node(store, sessions, "reject")
    assert rejecting.send(first)[0] is StoreStatus.SUCCESS
    status, comment = rejecting.send(namesake)
    assert status is StoreStatus.CONFLICTING_PATIENT_ATTRIBUTES
    assert comment == "Patient ID is on file with another name or birth date"
    # An anonymised or trailing-caret spelling of the same person is no conflict.
    same_person = instance("ADAMS^ANN^^", "SHARED", "19700101")
    assert rejecting.send(same_person)[0] is StoreStatus.SUCCESS

    reviewing = Node(store, sessions, "review")
    assert reviewing.send(namesake)[0] is StoreStatus.SUCCESS
    rows = reviewing.history()
    # The first patient's results keep the first patient's name and birth date.
    assert rows[first.SOPInstanceUID].patient_name == "Adams^Ann"
    assert str(rows[first.SOPInstanceUID].patient_birth_date) == "1970-01-01"
    assert rows[namesake.SOPInstanceUID].patient_name == "Dunn^Dora"
    for uid in (first.SOPInstanceUID, namesake.SOPInstanceUID):
        assert "another name or birth date" in rows[uid].identity_conflict


def test_a_name_beyond_ascii_sent_twice_is_no_conflict(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    """One name whatever its case and Unicode form, on either database: SQLite's upper()
    of "Müller" is "MüLLER", and a second image of the same patient was once refused on
    SQLite as another name; then one from a modality that sends names in capitals was, where
    PostgreSQL took it."""
    node = Node(store, sessions, "reject")
    decomposed = unicodedata.normalize("NFD", "Müller^Jürgen")
    names = ("Müller^Jürgen", "Müller^Jürgen", "MÜLLER^JÜRGEN", decomposed)
    for image, name in enumerate(names):
        dataset = instance(name, "UMLAUT1")
        dataset.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: both forms can be sent
        assert node.send(dataset) == (StoreStatus.SUCCESS, ""), f"image {image + 1}"
    other = instance("Møller^Jürgen", "UMLAUT1")
    assert node.send(other)[0] is StoreStatus.CONFLICTING_PATIENT_ATTRIBUTES
    with sessions() as session:
        assert not session.scalars(patients_in_conflict()).all()
    # Greek with dialytika and tonos: its capital is not composed; keyed after composing it.
    greek = "Διονύσιος^Ευΐα"
    for image, name in enumerate((greek, greek.upper())):
        dataset = instance(name, "GREEK1")
        dataset.SpecificCharacterSet = "ISO_IR 192"
        assert node.send(dataset) == (StoreStatus.SUCCESS, ""), f"Greek image {image + 1}"


def test_a_corrected_resend_updates_the_record_and_is_audited(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    node = Node(store, sessions, "reject")
    wrong = [instance("Adams^Ann", "PA1") for _ in range(2)]
    wrong[1].StudyInstanceUID = wrong[0].StudyInstanceUID
    wrong[1].SeriesInstanceUID = wrong[0].SeriesInstanceUID
    for dataset in wrong:
        assert node.send(dataset)[0] is StoreStatus.SUCCESS
    with sessions() as session:
        first_file = session.scalar(
            select(Instance.file_path).where(Instance.sop_instance_uid == wrong[0].SOPInstanceUID)
        )

    corrected = []
    for dataset in wrong:
        fixed = instance(
            "Evans^Eve",
            "PE1",
            "19991111",
            study_uid=str(dataset.StudyInstanceUID),
            series_uid=str(dataset.SeriesInstanceUID),
            sop_uid=str(dataset.SOPInstanceUID),
        )
        corrected.append(fixed)
    assert node.send(corrected[0])[0] is StoreStatus.SUCCESS
    rows = node.history()
    assert rows[wrong[0].SOPInstanceUID].patient_name == "Evans^Eve"
    assert rows[wrong[0].SOPInstanceUID].patient_id == "PE1"
    # Until the rest of the study is re-sent it spans two patients, and says so.
    assert "Study Instance UID" in rows[wrong[1].SOPInstanceUID].identity_conflict

    assert node.send(corrected[1])[0] is StoreStatus.SUCCESS
    rows = node.history()
    assert {(r.patient_name, r.patient_id, r.identity_conflict) for r in rows.values()} == {
        ("Evans^Eve", "PE1", "")
    }
    # A second identical copy of the correction is a plain duplicate.
    assert node.send(corrected[1])[0] is StoreStatus.SUCCESS
    with sessions() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        new_file = session.scalar(
            select(Instance.file_path).where(Instance.sop_instance_uid == wrong[0].SOPInstanceUID)
        )
    assert [(e.action, e.sop_instance_uid) for e in events] == [
        ("identity_corrected", str(wrong[0].SOPInstanceUID)),
        ("identity_corrected", str(wrong[1].SOPInstanceUID)),
    ]
    detail = json.loads(events[0].detail)
    assert detail["before"]["patient_name"] == "Adams^Ann"
    assert detail["after"]["patient_name"] == "Evans^Eve"
    assert detail["before"]["file_path"] == first_file != new_file
    # The corrected file replaced nothing: the earlier version is kept, the new one is read.
    assert (store.root / first_file).is_file() and (store.root / new_file).is_file()


def test_values_a_database_cannot_hold_are_cleaned(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    node = Node(store, sessions, "reject")
    dataset = instance("Nul\x00l^Ned\x07", "PN\x001")
    assert node.send(dataset)[0] is StoreStatus.SUCCESS
    (row,) = node.history().values()
    assert (row.patient_name, row.patient_id) == ("Null^Ned", "PN1")


def test_a_database_outage_answers_out_of_resources_with_a_comment(
    tmp_path: Path, store: InstanceStore
) -> None:
    """Senders treat 0xCxxx as permanent: an outage must be 0xA7xx, "send again later"."""
    unreachable = make_session_factory(make_engine("postgresql+psycopg://postgres@127.0.0.1:9/x"))
    node = Node(store, unreachable, "reject")
    status, comment = node.send(instance("Adams^Ann", "PA1"))
    assert status is StoreStatus.OUT_OF_RESOURCES
    assert comment == "database unavailable, send again later"
    assert [p for p in store.root.rglob("*.dcm")] == []
