"""Turning one received C-STORE into a stored file and a registered instance, or a refusal.

Success is answered only after both the file and its row are durable; every other answer
carries an Error Comment a PACS administrator can read in the sender's log.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.db.outage import error_line
from core.identity import Conflict, describe
from core.lifecycle import enqueue
from core.registration import (
    InstanceMetadata,
    Kind,
    MetadataError,
    StoredFile,
    classify,
    conflicts,
    correct_instance,
    existing,
    serialise,
)
from dicom_node.storage import InstanceStore

log = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """C-STORE statuses used by the node (PS3.4 Annex B.2.3); the two identity refusals use
    dcm4chee-arc's codes in the Out of Resources range, so PACS administrators know them."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    CONFLICTING_PATIENT_ID = 0xA778
    CONFLICTING_PATIENT_ATTRIBUTES = 0xA779
    DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC210


@dataclass(frozen=True)
class Outcome:
    status: StoreStatus
    comment: str = ""


# Error Comments are at most 64 characters (VR LO); these name what an administrator must fix.
_REFUSALS = {
    Conflict.STUDY: (
        StoreStatus.CONFLICTING_PATIENT_ID,
        "Study UID is on file for another Patient ID",
    ),
    Conflict.SERIES: (
        StoreStatus.CONFLICTING_PATIENT_ID,
        "Series UID is on file for another study or patient",
    ),
    Conflict.DEMOGRAPHICS: (
        StoreStatus.CONFLICTING_PATIENT_ATTRIBUTES,
        "Patient ID is on file with another name or birth date",
    ),
}
FOREIGN_UID = Outcome(
    StoreStatus.CONFLICTING_PATIENT_ID, "SOP Instance UID is on file in another study"
)
RACED = Outcome(StoreStatus.OUT_OF_RESOURCES, "registered concurrently, send again")
STORAGE_FULL = Outcome(StoreStatus.OUT_OF_RESOURCES, "storage nearly full, send again later")
DATABASE_DOWN = Outcome(StoreStatus.OUT_OF_RESOURCES, "database unavailable, send again later")


class Receiver:
    """Stores and registers received objects; safe to call from many association threads."""

    def __init__(
        self, store: InstanceStore, sessions: sessionmaker[Session], conflict_policy: str
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.conflict_policy = conflict_policy
        # Serialising registration (not the file copy) makes get-or-create of the patient,
        # study and series rows, and the identity checks, race-free on every database at a
        # cost of milliseconds.
        self._register_lock = threading.Lock()

    def receive(
        self, received: Path, transfer_syntax: str, calling_ae: str, sop_uid: str
    ) -> Outcome:
        try:
            dataset = dcmread(received, stop_before_pixels=True)
            meta = InstanceMetadata.from_dataset(dataset)
        except MetadataError as exc:
            log.warning("refused %s from %s: %s", sop_uid, calling_ae, exc)
            return Outcome(StoreStatus.DOES_NOT_MATCH_SOP_CLASS, str(exc))
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            log.warning(
                "refused %s from %s: dataset cannot be parsed (%s)", sop_uid, calling_ae, exc
            )
            return Outcome(StoreStatus.CANNOT_UNDERSTAND, "dataset cannot be parsed")
        if meta.sop_instance_uid != sop_uid:
            log.warning(
                "refused %s from %s: dataset carries SOP Instance UID %s",
                sop_uid,
                calling_ae,
                meta.sop_instance_uid,
            )
            return Outcome(StoreStatus.DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID mismatch")
        # Every database call is inside this handler: a failure to register must answer
        # 0xA7xx (send again later), never the 0xC211 pynetdicom gives an escaped exception.
        # What is on file already (a duplicate, a UID of another study) is found only once
        # registration is serialised: a look before it would cost every new instance a
        # query to spare the rare duplicate a rename and an fsync.
        try:
            return self._store(received, meta, transfer_syntax, calling_ae)
        except SQLAlchemyError as exc:
            log.error("cannot register %s: %s", meta.sop_instance_uid, error_line(exc))
            return DATABASE_DOWN

    @staticmethod
    def _answer_existing(kind: Kind, meta: InstanceMetadata, calling_ae: str) -> Outcome:
        uid = meta.sop_instance_uid
        if kind is Kind.FOREIGN_UID:
            log.warning(
                "refused %s from %s: SOP Instance UID is on file in another study or series",
                uid,
                calling_ae,
            )
            return FOREIGN_UID
        log.info("duplicate %s from %s: already stored, first copy kept", uid, calling_ae)
        return Outcome(StoreStatus.SUCCESS)

    def _store(
        self, received: Path, meta: InstanceMetadata, transfer_syntax: str, calling_ae: str
    ) -> Outcome:
        try:
            staged = self.store.stage(received)
        except OSError as exc:
            log.error("cannot stage %s: %s", meta.sop_instance_uid, exc)
            return Outcome(StoreStatus.OUT_OF_RESOURCES, "cannot write to storage")
        try:
            return self._register(staged, meta, transfer_syntax, calling_ae)
        finally:
            staged.unlink(missing_ok=True)

    def _register(
        self, staged: Path, meta: InstanceMetadata, transfer_syntax: str, calling_ae: str
    ) -> Outcome:
        uid = meta.sop_instance_uid
        placed: Path | None = None
        placed_as = ""
        with self._register_lock, self.sessions() as session:
            try:
                serialise(session)
                instance = existing(session, uid)
                kind = classify(instance, meta)
                if kind in (Kind.DUPLICATE, Kind.FOREIGN_UID):
                    return self._answer_existing(kind, meta, calling_ae)
                # After the duplicate and foreign-UID answers, which take no space and must
                # not become "send again later"; the file is staged, not yet placed.
                size = staged.stat().st_size
                left = self.store.shortage(size)
                if left is not None:
                    log.warning(
                        "refused %s from %s: storage would have %d MB free,"
                        " below storage.min_free_mb (%d)",
                        uid,
                        calling_ae,
                        max(left, 0),
                        self.store.min_free_mb,
                    )
                    return STORAGE_FULL
                found = conflicts(session, meta, excluding=instance.id if instance else None)
                if found and kind is Kind.NEW and self.conflict_policy == "reject":
                    status, comment = _REFUSALS[found[0]]
                    log.warning(
                        "refused %s from %s: identity conflict: %s",
                        uid,
                        calling_ae,
                        describe(found),
                    )
                    return Outcome(status, comment)
                stored = StoredFile(
                    relative_path=self.store.relative_path(
                        meta.study_instance_uid,
                        uid,
                        version=uuid.uuid4().hex[:12] if instance is not None else "",
                    ),
                    size=size,
                    transfer_syntax_uid=transfer_syntax,
                    calling_ae_title=calling_ae,
                )
                if instance is None:
                    enqueue(session, meta, stored)
                else:
                    correct_instance(session, instance, meta, stored)
                session.flush()
                placed_as = stored.relative_path
                placed = self.store.place(staged, placed_as)
                session.commit()
            except IntegrityError:
                # Registration is serialised (a lock here, the database's across nodes), so
                # only a writer that does not take it (a node of an earlier version, during
                # an upgrade) gets here: its row owns the file, acknowledged only when it
                # holds exactly what was sent; anything else the sender tries again.
                session.rollback()
                winner = existing(session, uid)
                if placed is not None and (winner is None or winner.file_path != placed_as):
                    placed.unlink(missing_ok=True)
                duplicate = winner is not None and classify(winner, meta) is Kind.DUPLICATE
                if kind is Kind.NEW and duplicate:
                    log.info(
                        "duplicate %s from %s: registered concurrently, first copy kept",
                        uid,
                        calling_ae,
                    )
                    return Outcome(StoreStatus.SUCCESS)
                log.warning("cannot register %s from %s: a concurrent write", uid, calling_ae)
                return RACED
            except (SQLAlchemyError, OSError) as exc:
                session.rollback()
                if placed is not None:
                    placed.unlink(missing_ok=True)
                log.error("cannot store %s: %s", uid, error_line(exc))
                if isinstance(exc, OperationalError):
                    return DATABASE_DOWN
                return Outcome(StoreStatus.OUT_OF_RESOURCES, "cannot store or register instance")
        if kind is Kind.CORRECTION:
            log.warning(
                "%s from %s: corrected re-send, patient attributes updated (audited)",
                uid,
                calling_ae,
            )
        if found:
            log.warning(
                "%s from %s: stored for review, identity conflict: %s",
                uid,
                calling_ae,
                describe(found),
            )
        log.info(
            "stored %s (%s, %d bytes) from %s",
            uid,
            meta.modality or "no modality",
            stored.size,
            calling_ae,
        )
        return Outcome(StoreStatus.SUCCESS)
