"""The DICOM node: Verification and Storage SCP, bound the way pynetdicom's storescp binds.

Every storage SOP class is accepted, so whatever a PACS routes here is kept and later shown
as triaged or rejected with a reason; nothing is refused merely for being unexpected.
Datasets are received in chunks straight to a temporary file, which bounds memory for very
large radiographs and for many simultaneous senders.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from core.config import DicomConfig
from dicom_node.ingest import Receiver
from dicom_node.storage import InstanceStore

log = logging.getLogger(__name__)

# Every transfer syntax the worker can decode with the installed pydicom plugins
# (pylibjpeg-libjpeg: JPEG and JPEG-LS; pylibjpeg-openjpeg: JPEG 2000 and HTJ2K;
# pylibjpeg-rle: RLE), so that a sender never has to transcode; docs/conversion.md lists
# them. The three uncompressed ones come first and also serve Verification.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]


def _configure_pynetdicom() -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


class DicomNode:
    def __init__(
        self,
        config: DicomConfig,
        storage_root: Path,
        sessions: sessionmaker[Session],
        conflict_policy: str,
    ) -> None:
        _configure_pynetdicom()
        self.config = config
        store = InstanceStore(storage_root)
        discarded = store.discard_leftovers()
        if discarded:
            log.warning("discarded %d partial file(s) left by an interrupted run", discarded)
        self.receiver = Receiver(store, sessions, conflict_policy)
        self.ae = self._application_entity()
        self._server: ThreadedAssociationServer | None = None

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:3])
        ae.require_calling_aet = list(self.config.allowed_calling_aes)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        ae.network_timeout = self.config.network_timeout_seconds
        ae.acse_timeout = self.config.acse_timeout_seconds
        ae.dimse_timeout = self.config.dimse_timeout_seconds
        return ae

    def _on_store(self, event: Event) -> Dataset:
        outcome = self.receiver.receive(
            Path(event.dataset_path),
            str(event.context.transfer_syntax),
            event.assoc.requestor.ae_title,
            str(event.request.AffectedSOPInstanceUID),
        )
        status = Dataset()
        status.Status = int(outcome.status)
        if outcome.comment:
            status.ErrorComment = outcome.comment[:64]
        return status

    @staticmethod
    def _on_echo(event: Event) -> int:
        log.info("echo from %s", event.assoc.requestor.ae_title)
        return 0x0000

    @staticmethod
    def _on_rejected(event: Event) -> None:
        """Log what pynetdicom actually sent: a wrong calling AE title and a full node are
        different problems for the administrator reading this."""
        requestor = event.assoc.requestor
        sent = event.assoc.acceptor.primitive
        reason = f"{sent.result_str.lower()}, {sent.reason_str.lower()}" if sent else "no reason"
        log.warning(
            "association from %s (%s) rejected: %s", requestor.ae_title, requestor.address, reason
        )

    def start(self) -> None:
        if not self.config.allowed_calling_aes:
            log.warning("allowed_calling_aes is empty: every calling AE title is accepted")
        self._server = self.ae.start_server(
            (self.config.bind_address, self.config.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_C_ECHO, self._on_echo),
                (evt.EVT_REJECTED, self._on_rejected),
            ],
        )
        log.info(
            "DICOM node %s listening on %s:%d",
            self.config.ae_title,
            self.config.bind_address,
            self.config.port,
        )

    def stop(self) -> None:
        """Stop listening, let open associations finish within the grace period, then abort."""
        if self._server is None:
            return
        self._server.shutdown()
        deadline = time.monotonic() + self.config.shutdown_grace_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for association in self.ae.active_associations:
            log.warning("aborting association with %s at shutdown", association.requestor.ae_title)
            association.abort()
        self._server = None
        log.info("DICOM node stopped")
