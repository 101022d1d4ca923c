"""The node's receive step on real files and a real SQLite database, including failures."""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import uuid
from pathlib import Path

import pytest
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from core.db.engine import make_engine, make_session_factory
from core.db.migrate import upgrade
from core.db.schema import Instance
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
        path, "1.2.840.10008.1.2.1", "MODALITY", path.stem
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
    assert resident_pages(path) > 0, "this file system keeps no page cache to test with"
    assert receive(Receiver(store, sessions, "reject"), path) is StoreStatus.SUCCESS
    (stored,) = stored_files(store)
    assert resident_pages(stored) == 0


def test_a_registration_race_acknowledges_only_an_identical_winner(
    tmp_path: Path,
    store: InstanceStore,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another node registers the same instance between this node's checks and its insert
    (only possible without the advisory lock, e.g. SQLite): identical, it is a duplicate and
    acknowledged with the winner's file kept; a clash with no such row is sent again."""
    from sqlalchemy.exc import IntegrityError

    import dicom_node.ingest as ingest
    from core.lifecycle import enqueue
    from core.registration import InstanceMetadata, StoredFile

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
