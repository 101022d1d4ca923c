"""Schema, registration, claims with leases and history queries on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from alembic import command
from dicom_factory import fixture_images, grey_pixels, make_dataset
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.db.migrate import alembic_config, is_current, upgrade
from core.db.schema import Base, Instance, InstanceStatus, Patient, schema_objects
from core.db.types import utcnow
from core.history import HistoryQuery, find
from core.identity import patients_in_conflict
from core.lifecycle import Triage, claim, complete, enqueue, reject, reject_exhausted, retry_later
from core.registration import InstanceMetadata, StoredFile
from core.worklist import WorklistFilter, worklist


def register(sessions: sessionmaker[Session], **fields: object) -> str:
    dataset = make_dataset(grey_pixels(fixture_images()[0]), **fields)
    with sessions() as session:
        enqueue(
            session,
            InstanceMetadata.from_dataset(dataset),
            StoredFile(
                relative_path=f"{dataset.StudyInstanceUID}/{dataset.SOPInstanceUID}.dcm",
                size=1234,
                transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
                calling_ae_title="MODALITY",
            ),
        )
        session.commit()
    return str(dataset.SOPInstanceUID)


def expire_leases(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        session.execute(update(Instance).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()


TRIAGE = Triage(0.91, "PNEUMONIA", True, 0.5, "m", "v1", "", b"png")


def test_migrations_reach_head(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert is_current(session.get_bind())


def test_registration_shares_patient_and_study_rows(sessions: sessionmaker[Session]) -> None:
    first = register(sessions, patient_id="P1", study_uid="1.2.3.4", series_uid="1.2.3.4.1")
    second = register(sessions, patient_id="P1", study_uid="1.2.3.4", series_uid="1.2.3.4.1")
    rows = find_all(sessions)
    assert {r.sop_instance_uid for r in rows} == {first, second}
    assert {r.study_instance_uid for r in rows} == {"1.2.3.4"}


def find_all(sessions: sessionmaker[Session], **query: object) -> list:
    with sessions() as session:
        return find(session, HistoryQuery(**query))


def test_a_claim_is_exclusive_until_its_lease_expires(sessions: sessionmaker[Session]) -> None:
    uid = register(sessions)
    with sessions() as session:
        (first,) = claim(session, "worker-a", 10, lease_seconds=300)
        session.commit()
    assert first.sop_instance_uid == uid and first.attempts == 1
    with sessions() as session:
        assert claim(session, "worker-b", 10, lease_seconds=300) == []
    expire_leases(sessions)
    with sessions() as session:
        (again,) = claim(session, "worker-b", 10, lease_seconds=300)
        session.commit()
        assert again.instance_id == first.instance_id and again.attempts == 2
        # The first worker lost its lease: its late result is not recorded.
        assert complete(session, first, "worker-a", TRIAGE) is False
        assert complete(session, again, "worker-b", TRIAGE) is True
        session.commit()
    (row,) = find_all(sessions)
    assert row.status == "triaged" and row.probability == pytest.approx(0.91)


def test_instances_whose_workers_keep_dying_are_rejected(sessions: sessionmaker[Session]) -> None:
    register(sessions)
    for _ in range(3):
        with sessions() as session:
            assert reject_exhausted(session, max_attempts=3) == 0
            assert len(claim(session, "worker", 10, lease_seconds=300)) == 1
            session.commit()
        expire_leases(sessions)
    with sessions() as session:
        assert reject_exhausted(session, max_attempts=3) == 1
        assert claim(session, "worker", 10, lease_seconds=300) == []
        session.commit()
    (row,) = find_all(sessions)
    assert row.status == "rejected" and "3 attempts" in row.reason


def test_unexpected_failures_are_retried_then_rejected(sessions: sessionmaker[Session]) -> None:
    register(sessions)
    for attempt in (1, 2):
        with sessions() as session:
            (work,) = claim(session, "worker", 10, lease_seconds=300)
            assert work.attempts == attempt
            assert retry_later(session, work, "worker", "disk hiccup", max_attempts=2)
            session.commit()
    (row,) = find_all(sessions)
    assert row.status == "rejected" and row.reason == "processing failed 2 times: disk hiccup"


def test_history_filters(sessions: sessionmaker[Session]) -> None:
    flagged = register(
        sessions, patient_id="PA", accession_number="ACC-A", study_date=date(2026, 1, 10)
    )
    register(sessions, patient_id="PB", accession_number="ACC-B", study_date=date(2026, 3, 1))
    rejected = register(
        sessions, patient_id="PC", accession_number="ACC-C", study_date=date(2026, 3, 2)
    )
    with sessions() as session:
        works = {w.sop_instance_uid: w for w in claim(session, "w", 10, lease_seconds=300)}
        complete(session, works[flagged], "w", TRIAGE)
        reject(session, works[rejected], "w", "not a chest radiograph: modality CT")
        session.commit()

    def uids(**query: object) -> set[str]:
        return {r.sop_instance_uid for r in find_all(sessions, **query)}

    assert uids(patient_id="PA") == {flagged}
    assert uids(accession_number="ACC-C") == {rejected}
    assert uids(flagged_only=True) == {flagged}
    assert uids(status=InstanceStatus.REJECTED) == {rejected}
    assert len(uids(study_date_from=date(2026, 3, 1))) == 2
    assert uids(study_date_to=date(2026, 2, 1)) == {flagged}
    assert uids(received_from=utcnow() + timedelta(hours=1)) == set()
    assert len(uids(limit=2)) == 2


def test_migration_moves_demographics_onto_each_instance(
    sessions: sessionmaker[Session],
) -> None:
    """A database written by the first release keeps showing the names it showed."""
    engine = sessions.kw["bind"]
    Base.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    upgrade(engine, "0001")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO patients (id, patient_id, issuer_of_patient_id, patient_name, "
            "birth_date, sex) VALUES (1, 'P1', '', 'Old^Name', '1970-01-01', 'F')"
        )
        connection.exec_driver_sql(
            "INSERT INTO studies (id, study_instance_uid, patient_fk, accession_number, "
            "study_description) VALUES (1, '1.2.3', 1, 'A1', '')"
        )
        connection.exec_driver_sql(
            "INSERT INTO series (id, series_instance_uid, study_fk, modality, "
            "body_part_examined, series_description) VALUES (1, '1.2.3.1', 1, 'CR', '', '')"
        )
        connection.exec_driver_sql(
            "INSERT INTO instances (id, sop_instance_uid, sop_class_uid, series_fk, "
            "view_position, transfer_syntax_uid, file_path, file_size, calling_ae_title, "
            "received_at, status, reason, attempts) VALUES (1, '1.2.3.1.1', '1.2', 1, 'PA', "
            "'1.2', 'x.dcm', 1, 'M', '2026-11-21 10:00:00', 'pending', '', 0)"
        )
    upgrade(engine)
    (row,) = find_all(sessions)
    assert (row.patient_id, row.patient_name, row.patient_birth_date) == (
        "P1",
        "Old^Name",
        date(1970, 1, 1),
    )


def test_migration_gives_stored_names_their_keys(sessions: sessionmaker[Session]) -> None:
    """Names stored before the keys existed are compared as new ones are: a database that
    is upgraded sees no conflict where it saw none, and one where the names differ."""
    engine = sessions.kw["bind"]
    register(sessions, patient_name="Müller^Jürgen", patient_id="K1")
    register(sessions, patient_name="MÜLLER^JÜRGEN", patient_id="K1")
    register(sessions, patient_name="Meyer^Jo", patient_id="K2")
    register(sessions, patient_name="Mayer^Jo", patient_id="K2")
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # as upgrade() does
            connection.commit()
        config = alembic_config()
        config.attributes["connection"] = connection
        with connection.begin():
            command.downgrade(config, "0009")
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
    upgrade(engine)
    with sessions() as session:
        keys = set(session.scalars(select(Instance.patient_name_key)))
        assert keys == {"MÜLLER^JÜRGEN", "MEYER^JO", "MAYER^JO"}
        (conflicted,) = session.scalars(patients_in_conflict()).all()
        assert session.get(Patient, conflicted).patient_id == "K2"


def test_database_errors_never_carry_their_parameters(sessions: sessionmaker[Session]) -> None:
    """The node and the worker log the first line of a database error; its parameters (and
    PostgreSQL's DETAIL line, which repeats the row) would be patient data."""
    name = "Featherstonehaugh^Wilhelmina"
    register(sessions, patient_name=name)
    with sessions() as session, pytest.raises(IntegrityError) as raised:
        session.execute(update(Instance).values(patient_name=name, sop_instance_uid=None))
    assert "parameters hidden" in str(raised.value)
    assert name not in str(raised.value).split("\n", 1)[0]
    assert name not in str(raised.value).split("[SQL:", 1)[1]


def test_migrations_build_exactly_the_schema_the_code_declares(
    sessions: sessionmaker[Session],
) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with sessions() as session:
        connection = session.connection()
        options = {"include_object": schema_objects(connection.dialect.name)}
        context = MigrationContext.configure(connection, opts=options)
        drift = compare_metadata(context, Base.metadata)
    assert drift == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("beta bob", True),
        ("Beta^Bob", True),
        ("BETA, bob", True),
        ("bob beta", False),
        ("ID_7", True),
        ("ID%7", False),
        ("50%", True),
    ],
)
def test_worklist_search_takes_name_parts_and_literal_wildcards(
    sessions: sessionmaker[Session], text: str, found: bool
) -> None:
    """On PostgreSQL the search goes through the trigram indexes; the rows must be the same."""
    register(sessions, patient_name="Beta^Bob", patient_id="ID_7", accession_number="A50%")
    register(sessions, patient_name="Other^Olga", patient_id="IDX7", accession_number="A50")
    with sessions() as session:
        page = worklist(session, WorklistFilter(text=text), 1, 50)
    assert [row.patient_name for row in page.rows] == (["Beta^Bob"] if found else [])
