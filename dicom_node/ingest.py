"""Turning one received C-STORE into a stored file and a registered instance, or a refusal.

Success is answered only after both the file and its row are durable; every other answer
carries an Error Comment a PACS administrator can read in the sender's log.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.registration import InstanceMetadata, MetadataError, add_instance, is_registered
from dicom_node.storage import InstanceStore

log = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """C-STORE statuses used by the node (PS3.4 Annex B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC210


@dataclass(frozen=True)
class Outcome:
    status: StoreStatus
    comment: str = ""


class Receiver:
    """Stores and registers received objects; safe to call from many association threads."""

    def __init__(self, store: InstanceStore, sessions: sessionmaker[Session]) -> None:
        self.store = store
        self.sessions = sessions
        # Serialising registration (not the file copy) makes get-or-create of the patient,
        # study and series rows race-free on every database at a cost of milliseconds.
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

        with self.sessions() as session:
            if is_registered(session, meta.sop_instance_uid):
                log.info(
                    "duplicate %s from %s: already stored, first copy kept",
                    meta.sop_instance_uid,
                    calling_ae,
                )
                return Outcome(StoreStatus.SUCCESS)
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
        relative = self.store.relative_path(meta.study_instance_uid, meta.sop_instance_uid)
        size = staged.stat().st_size
        placed: Path | None = None
        with self._register_lock, self.sessions() as session:
            try:
                add_instance(
                    session,
                    meta,
                    transfer_syntax_uid=transfer_syntax,
                    file_path=relative,
                    file_size=size,
                    calling_ae_title=calling_ae,
                )
                session.flush()
                placed = self.store.place(staged, relative)
                session.commit()
            except IntegrityError:
                # Only another registration of the same UID gets here; its row owns the file.
                session.rollback()
                log.info(
                    "duplicate %s from %s: registered concurrently, first copy kept",
                    meta.sop_instance_uid,
                    calling_ae,
                )
                return Outcome(StoreStatus.SUCCESS)
            except (SQLAlchemyError, OSError) as exc:
                session.rollback()
                if placed is not None:
                    placed.unlink(missing_ok=True)
                log.error("cannot store %s: %s", meta.sop_instance_uid, exc)
                return Outcome(StoreStatus.OUT_OF_RESOURCES, "cannot store or register instance")
        log.info(
            "stored %s (%s, %d bytes) from %s",
            meta.sop_instance_uid,
            meta.modality or "no modality",
            size,
            calling_ae,
        )
        return Outcome(StoreStatus.SUCCESS)
