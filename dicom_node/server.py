"""The DICOM node: Verification and Storage SCP, bound the way pynetdicom's storescp binds.

It accepts what contexts.py lists. Datasets are received in chunks straight to a file under
the storage directory, which bounds memory for very large radiographs and for many
simultaneous senders. The listening server admits a connection only once its
A-ASSOCIATE-RQ is in (admission.py), reads every connection through a socket that refuses
oversized PDUs (pdu_limit.py), and runs each association with cheaper reads and waits
(NodeRequestHandler).

With DICOM TLS the same AE listens on `tls_port` beside the plain port, or on `port` alone,
each listener with the same handlers and limits.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from core.config import DicomConfig, StorageConfig
from core.tls import server_context
from dicom_node.admission import Admission
from dicom_node.association_waits import wait_instead_of_polling
from dicom_node.contexts import accepted_contexts
from dicom_node.ingest import Receiver
from dicom_node.pdu_limit import PduLimitedSocket, PduLimitedSSLSocket
from dicom_node.pdu_reading import ChunkedAssociationSocket
from dicom_node.receive_files import ReceiveFolder
from dicom_node.storage import InstanceStore

log = logging.getLogger(__name__)


def _configure_pynetdicom() -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


class NodeRequestHandler(RequestHandler):
    """pynetdicom's handler of an accepted connection, with the association it builds made
    cheaper to run: each PDU read in large reads (pdu_reading.py) and its threads waiting
    for work rather than polling (association_waits.py). pynetdicom builds the association
    with its socket wrapper in this method and has no hook for either."""

    def _create_association(self) -> Association:
        association = super()._create_association()
        association.dul.socket.__class__ = ChunkedAssociationSocket
        wait_instead_of_polling(association)
        return association


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with connection admission and PDU length and time limits.

    Threads waiting for a request are daemons and are not joined at close: a stop must not
    wait for a silent peer, which the admission deadline ends anyway. The listen backlog
    holds as many connections as may wait: with socketserver's default of 5, a burst of
    connections overflowed it and the peers' kernels retried for many seconds, a real
    sender among them.

    With `tls`, the handshake is made on the connection's own thread, within the admission
    time. pynetdicom's own `ssl_context` would make it on the listening thread, where one
    silent peer held up every other connection and a failed handshake went unlogged.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        *args: Any,
        admission: Admission,
        pdata_bytes: int,
        pdu_seconds: float,
        tls: ssl.SSLContext | None,
        reuse_port: bool,
        **kwargs: Any,
    ) -> None:
        self.reuse_port = reuse_port
        self.admission = admission
        self.pdata_bytes = pdata_bytes
        self.pdu_seconds = pdu_seconds
        self.tls = tls
        if tls is not None:
            tls.sslsocket_class = PduLimitedSSLSocket
        self.request_queue_size = admission.max_pending
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """pynetdicom's bind, with the port shared among the node processes of this host
        when `dicom.reuse_port` says so (its own bind sets only SO_REUSEADDR)."""
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        connection, address = super().get_request()
        if self.tls is not None:
            return connection, address
        return PduLimitedSocket.wrap(connection, self.pdata_bytes, self.pdu_seconds), address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.admission.enter(request, client_address[0], answer=self.tls is None)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        address = client_address[0]
        if self.tls is None:
            if self.admission.await_request(request, address):
                super().process_request_thread(request, client_address)
            else:
                self.shutdown_request(request)
            return
        secure = self.admission.await_tls_request(request, address, self.tls)
        if secure is None:
            self.shutdown_request(request)
            return
        secure.limit(self.pdata_bytes, self.pdu_seconds)
        super().process_request_thread(secure, client_address)


class DicomNode:
    def __init__(
        self,
        config: DicomConfig,
        storage: StorageConfig,
        sessions: sessionmaker[Session],
        conflict_policy: str,
    ) -> None:
        _configure_pynetdicom()
        self.config = config
        store = InstanceStore(storage.directory, storage.min_free_mb)
        self.receive_folder = ReceiveFolder(storage.directory)
        discarded = store.discard_leftovers() + self.receive_folder.clear()
        if discarded:
            log.warning("discarded %d partial file(s) left by an interrupted run", discarded)
        self.receive_folder.install()
        self.receiver = Receiver(store, sessions, conflict_policy)
        self.ae = self._application_entity()
        self.contexts = accepted_contexts()
        self._servers: list[NodeServer] = []

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.require_calling_aet = list(self.config.allowed_calling_aes)
        ae.require_called_aet = self.config.check_called_ae_title
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.announced_pdu_bytes
        ae.network_timeout = self.config.network_timeout_seconds
        ae.acse_timeout = self.config.acse_timeout_seconds
        ae.dimse_timeout = self.config.dimse_timeout_seconds
        return ae

    def _on_store(self, event: Event) -> Dataset:
        received = Path(event.dataset_path)
        try:
            outcome = self.receiver.receive(
                received,
                str(event.context.transfer_syntax),
                event.assoc.requestor.ae_title,
                str(event.request.AffectedSOPInstanceUID),
            )
        finally:
            self.receive_folder.done(received)
        status = Dataset()
        status.Status = int(outcome.status)
        if outcome.comment:
            status.ErrorComment = outcome.comment[:64]
        return status

    @staticmethod
    def _on_echo(event: Event) -> int:
        log.info("echo from %s", event.assoc.requestor.ae_title)
        return 0x0000

    def _on_connection_closed(self, event: Event) -> None:
        """Fires on the association's reader thread for a release, an abort or a reset."""
        discarded = self.receive_folder.discard(event.assoc.dul)
        if discarded:
            log.warning(
                "removed %d partly received data set(s) of a connection from %s that ended",
                discarded,
                event.address[0],
            )

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
        # One admission for all listeners: max_pending_connections bounds the node's threads.
        admission = Admission(
            self.config.max_pending_connections,
            self.config.association_request_timeout_seconds,
        )
        address = self.config.bind_address
        if self.config.plain_port is not None:
            self._listen(self.config.plain_port, admission, None)
            log.info(
                "DICOM node %s listening on %s:%d",
                self.config.ae_title,
                address,
                self.config.plain_port,
            )
        if self.config.tls:
            self._listen(self.config.tls_listen_port, admission, server_context(self.config))
            log.info(
                "DICOM node %s: DICOM TLS on %s:%d (client certificates %s)",
                self.config.ae_title,
                address,
                self.config.tls_listen_port,
                self._client_certificates(),
            )

    def _client_certificates(self) -> str:
        if self.config.tls_require_client_certificate:
            return "required"
        return "optional" if self.config.tls_ca_certificates else "not requested"

    def _listen(self, port: int, admission: Admission, tls: ssl.SSLContext | None) -> None:
        server = self.ae.make_server(
            (self.config.bind_address, port),
            contexts=self.contexts,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_C_ECHO, self._on_echo),
                (evt.EVT_REJECTED, self._on_rejected),
                (evt.EVT_CONN_CLOSE, self._on_connection_closed),
            ],
            server_class=NodeServer,
            request_handler=NodeRequestHandler,
            admission=admission,
            pdata_bytes=self.config.announced_pdu_bytes,
            pdu_seconds=self.config.network_timeout_seconds,
            tls=tls,
            reuse_port=self.config.reuse_port,
        )
        # What AE.start_server(block=False) does with its own server class: serve on a
        # daemon thread and register the server with the AE, whose shutdown removes it.
        timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
        threading.Thread(
            target=server.serve_forever, name=f"AcceptorServer@{timestamp}:{port}", daemon=True
        ).start()
        self.ae._servers.append(server)  # no public way to register it
        self._servers.append(server)

    def stop(self) -> None:
        """Stop listening, let open associations finish within the grace period, then abort."""
        if not self._servers:
            return
        for server in self._servers:
            server.shutdown()
        deadline = time.monotonic() + self.config.shutdown_grace_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for association in self.ae.active_associations:
            log.warning("aborting association with %s at shutdown", association.requestor.ae_title)
            association.abort()
        self.receive_folder.clear()
        self._servers = []
        log.info("DICOM node stopped")
