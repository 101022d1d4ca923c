"""The node's receive step on real files and a real SQLite database, including failures."""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pydicom.uid import generate_uid
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from core.db.engine import make_engine, make_session_factory
from core.db.migrate import upgrade
from core.db.schema import Base, Instance, Patient, Series, Study
from core.registration import InstanceMetadata, StoredFile
from dicom_node.ingest import Receiver, StoreStatus
from dicom_node.storage import InstanceStore, safe_name


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    return make_session_factory(engine)


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "storage")


def received(path: Path) -> Path:
    """A copy, as pynetdicom would have written it: the node takes the received file over."""
    copy = path.with_name(f"received-{uuid.uuid4().hex}.dcm")
    shutil.copyfile(path, copy)
    return copy


def receive(receiver: Receiver, path: Path, sop_uid: str | None = None) -> StoreStatus:
    return receiver.receive(
        received(path), "1.2.840.10008.1.2.1", "MODALITY", sop_uid or path.stem
    ).status


def stored_files(store: InstanceStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()]


def test_stored_file_is_byte_identical_and_registered(
    tmp_path: Path, store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    path = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path)
    assert receive(Receiver(store, sessions, "reject"), path) is StoreStatus.SUCCESS
    (stored,) = stored_files(store)
    assert stored.read_bytes() == path.read_bytes()
    with sessions() as session:
        instance = session.scalars(select(Instance)).one()
    assert store.root / instance.file_path == stored and instance.status == "pending"


def test_database_failure_answers_out_of_resources_and_leaves_no_file(
    tmp_path: Path, store: InstanceStore
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'readonly.db'}")
    upgrade(engine)
    engine.dispose()

    @event.listens_for(engine, "connect")
    def read_only(connection: object, _record: object) -> None:
        connection.execute("PRAGMA query_only = ON")  # type: ignore[attr-defined]

    path = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path)
    receiver = Receiver(store, make_session_factory(engine), "reject")
    assert receive(receiver, path) is StoreStatus.OUT_OF_RESOURCES
    assert stored_files(store) == []


def test_missing_uids_and_garbage_are_refused_with_reasons(
    tmp_path: Path, store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    receiver = Receiver(store, sessions, "reject")
    dataset = make_dataset(grey_pixels(fixture_images()[0]))
    del dataset.StudyInstanceUID
    no_study = write(dataset, tmp_path)
    outcome = receiver.receive(no_study, "1.2.840.10008.1.2.1", "MODALITY", no_study.stem)
    assert outcome.status is StoreStatus.DOES_NOT_MATCH_SOP_CLASS
    assert outcome.comment == "missing StudyInstanceUID"

    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 8)
    outcome = receiver.receive(garbage, "1.2.840.10008.1.2.1", "MODALITY", "1.2.3")
    assert outcome.status is not StoreStatus.SUCCESS and outcome.comment
    assert stored_files(store) == []


def test_uid_of_dataset_must_match_the_request(
    tmp_path: Path, store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    path = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path)
    outcome = Receiver(store, sessions, "reject").receive(
        path, "1.2.840.10008.1.2.1", "M", "1.2.999"
    )
    assert outcome.status is StoreStatus.DOES_NOT_MATCH_SOP_CLASS


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        ("1.2.840.113619.2.55", "1.2.840.113619.2.55"),
        ("../../etc/passwd", None),
        ("1.2.3 ", "1.2.3"),
    ],
)
def test_file_names_come_from_sanitised_uids(uid: str, expected: str | None) -> None:
    name = safe_name(uid)
    if expected is None:
        assert "/" not in name and "." not in name and len(name) == 41
    else:
        assert name == expected


def test_a_nearly_full_storage_answers_out_of_resources_before_writing(
    tmp_path: Path, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    """The floor is set above what this disk has free: the store is refused with a comment,
    at WARNING, and nothing is written or registered; with room again it is stored."""
    path = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path)
    full = InstanceStore(tmp_path / "storage", min_free_mb=1 << 40)
    outcome = Receiver(full, sessions, "reject").receive(
        received(path), "1.2.840.10008.1.2.1", "MODALITY", path.stem
    )
    assert outcome.status is StoreStatus.OUT_OF_RESOURCES
    assert outcome.comment == "storage nearly full, send again later"
    assert [r.levelname for r in caplog.records if "min_free_mb" in r.getMessage()] == ["WARNING"]
    assert stored_files(full) == []
    with sessions() as session:
        assert session.scalars(select(Instance)).all() == []
    roomy = InstanceStore(tmp_path / "storage", min_free_mb=1)
    assert receive(Receiver(roomy, sessions, "reject"), path) is StoreStatus.SUCCESS


def test_a_received_file_on_another_file_system_is_copied(
    tmp_path: Path, store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    """The node moves what it received (same file system as its storage); a file elsewhere
    cannot be moved, so it is copied."""
    elsewhere = Path("/dev/shm")
    if not elsewhere.is_dir() or elsewhere.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system here")
    path = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path)
    source = elsewhere / f"pneumotriage-test-{uuid.uuid4().hex}.dcm"
    shutil.copyfile(path, source)
    try:
        outcome = Receiver(store, sessions, "reject").receive(
            source, "1.2.840.10008.1.2.1", "MODALITY", path.stem
        )
        assert outcome.status is StoreStatus.SUCCESS
        (stored,) = stored_files(store)
        assert stored.read_bytes() == path.read_bytes()
    finally:
        source.unlink(missing_ok=True)


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache: mincore(2) on a mapping of it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    vector = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
    with path.open("rb") as file:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
    assert address != ctypes.c_void_p(-1).value, os.strerror(ctypes.get_errno())
    try:
        assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
    finally:
        libc.munmap(address, size)
    return sum(byte & 1 for byte in vector)


def test_a_stored_file_leaves_the_page_cache(
    tmp_path: Path, store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    """Once durable, a stored file's pages are dropped (storage._make_durable says why)."""
    path = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path)
    probe = received(path)
    descriptor = os.open(probe, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)
    if resident_pages(probe) or not resident_pages(received(path)):
        pytest.skip("this file system does not let its cached pages be dropped")
    assert receive(Receiver(store, sessions, "reject"), path) is StoreStatus.SUCCESS
    (stored,) = stored_files(store)
    assert resident_pages(stored) == 0


def test_a_registration_race_acknowledges_only_an_identical_winner(
    tmp_path: Path,
    store: InstanceStore,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another node registers the same instance between this node's checks and its insert,
    which only a node that does not serialise registration can do (an earlier version,
    during an upgrade): identical, it is a duplicate and acknowledged with the winner's
    file kept; a clash with no such row is sent again."""
    from sqlalchemy.exc import IntegrityError

    import dicom_node.ingest as ingest
    from core.lifecycle import enqueue

    dataset = make_dataset(grey_pixels(fixture_images()[0]))
    path = write(dataset, tmp_path)
    meta = InstanceMetadata.from_dataset(dataset)

    def raced(session: Session, meta_: InstanceMetadata, stored: StoredFile) -> object:
        with sessions() as other:
            enqueue(other, meta, stored)
            other.commit()
        (store.root / stored.relative_path).parent.mkdir(parents=True, exist_ok=True)
        (store.root / stored.relative_path).write_bytes(path.read_bytes())
        return enqueue(session, meta_, stored)

    monkeypatch.setattr(ingest, "serialise", lambda session: None)
    monkeypatch.setattr(ingest, "enqueue", raced)
    assert receive(Receiver(store, sessions, "reject"), path) is StoreStatus.SUCCESS
    (kept,) = stored_files(store)
    assert kept.read_bytes() == path.read_bytes()

    def clash(session: Session, meta_: InstanceMetadata, stored: StoredFile) -> object:
        raise IntegrityError("INSERT", {}, Exception("a concurrent write"))

    other = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path / "second")
    monkeypatch.setattr(ingest, "enqueue", clash)
    outcome = Receiver(store, sessions, "reject").receive(
        received(other), "1.2.840.10008.1.2.1", "MODALITY", other.stem
    )
    assert outcome.status is StoreStatus.OUT_OF_RESOURCES
    assert outcome.comment == "registered concurrently, send again"
    assert stored_files(store) == [kept]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return request.getfixturevalue("postgres_url")


def test_nodes_sharing_a_database_file_a_new_study_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four node processes (a Receiver each: its own lock, its own connections) register the
    four images of one new study at the same moment, each pausing between its identity
    checks and its insert: every image is stored, under one patient, study and series."""
    import dicom_node.ingest as ingest

    engine = make_engine(database_url)
    Base.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    upgrade(engine)
    shared = make_session_factory(engine)
    real_enqueue = ingest.enqueue

    def slow_enqueue(session: Session, meta: InstanceMetadata, stored: StoredFile) -> object:
        time.sleep(0.2)
        return real_enqueue(session, meta, stored)

    monkeypatch.setattr(ingest, "enqueue", slow_enqueue)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = [
        write(
            make_dataset(
                grey_pixels(image), patient_id="RACE1", study_uid=study_uid, series_uid=series_uid
            ),
            tmp_path / f"sent{number}",
        )
        for number, image in enumerate(fixture_images()[:4])
    ]
    store = InstanceStore(tmp_path / "storage")
    start = threading.Barrier(len(paths))

    def node(path: Path) -> StoreStatus:
        receiver = Receiver(store, shared, "reject")
        start.wait()
        return receive(receiver, path)

    try:
        with ThreadPoolExecutor(len(paths)) as pool:
            outcomes = list(pool.map(node, paths))
        with shared() as session:
            rows = [
                session.scalar(select(func.count()).select_from(table))
                for table in (Patient, Study, Series, Instance)
            ]
    finally:
        engine.dispose()
    assert outcomes == [StoreStatus.SUCCESS] * len(paths)
    assert rows == [1, 1, 1, len(paths)]
