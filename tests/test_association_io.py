"""What an accepted association costs the node: its contexts copied cheaply, its PDUs read
in large reads, its threads waiting rather than polling; and nothing about what it does
changed by that."""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, free_port, wait_until
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification
from pynetdicom.transport import AssociationSocket

from core.config import load_config
from core.db.engine import make_engine, make_session_factory
from core.db.migrate import upgrade
from dicom_node.association_waits import WAIT_SECONDS, WaitingDimse, WaitingDul
from dicom_node.contexts import TRANSFER_SYNTAXES, accepted_contexts
from dicom_node.pdu_limit import P_DATA_TF, PDU_HEADER, PduLimitedSocket
from dicom_node.pdu_reading import ChunkedAssociationSocket
from dicom_node.server import DicomNode

PDU_BYTES = 256 * 1024
PDUS = 40


def test_every_storage_class_is_accepted_and_each_association_gets_its_own_copy() -> None:
    contexts = accepted_contexts()
    by_syntax = {str(context.abstract_syntax): context for context in contexts}
    storage = {str(context.abstract_syntax) for context in AllStoragePresentationContexts}
    assert set(by_syntax) == storage | {Verification}
    assert by_syntax[DigitalXRayImageStorageForPresentation].transfer_syntax == TRANSFER_SYNTAXES
    assert by_syntax[Verification].transfer_syntax == TRANSFER_SYNTAXES[:3]

    copies = copy.deepcopy(contexts)
    for original, copied in zip(contexts, copies, strict=True):
        assert copied is not original
        assert copied.abstract_syntax is original.abstract_syntax  # immutable, shared
        assert copied.transfer_syntax is not original.transfer_syntax
        copied.context_id = 1
        copied.result = 0x00
        copied.add_transfer_syntax("1.2.840.10008.1.2.4.100")
        assert original.context_id is None and original.result is None
        assert "1.2.840.10008.1.2.4.100" not in original.transfer_syntax


class CountingSocket(PduLimitedSocket):
    reads = 0

    def recv_into(self, buffer: object, nbytes: int = 0, flags: int = 0) -> int:
        CountingSocket.reads += 1
        return super().recv_into(buffer, nbytes, flags)


def reading_end() -> tuple[socket.socket, AssociationSocket]:
    """A loopback connection; the accepted end read as the node reads it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    limited = CountingSocket.wrap(accepted, PDU_BYTES, 10)
    reader = AssociationSocket(Association(AE(), "acceptor"), client_socket=limited)
    reader.__class__ = ChunkedAssociationSocket
    return sender, reader


def test_a_pdu_is_read_in_a_few_reads_and_cut_short_where_the_connection_ends() -> None:
    sender, reader = reading_end()
    connection = reader.socket
    bodies = [bytes([k]) * PDU_BYTES for k in range(PDUS)]
    stream = b"".join(PDU_HEADER.pack(P_DATA_TF, 0, PDU_BYTES) + body for body in bodies)
    writer = threading.Thread(target=sender.sendall, args=(stream,))
    CountingSocket.reads = 0
    writer.start()
    for body in bodies:
        _, _, length = PDU_HEADER.unpack(reader.recv(PDU_HEADER.size))
        assert reader.recv(length) == body
    writer.join()
    # pynetdicom's own wrapper reads 4 KiB at a time: 64 reads per PDU.
    assert CountingSocket.reads < PDUS * 16

    sender.sendall(PDU_HEADER.pack(P_DATA_TF, 0, PDU_BYTES) + bytes(1000))
    sender.close()
    _, _, length = PDU_HEADER.unpack(reader.recv(PDU_HEADER.size))
    assert len(reader.recv(length)) == 1000
    connection.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[DicomNode]:
    """The node in this process, so that its association threads can be watched."""
    config = load_config(ROOT / "config.toml")
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    dicom = config.dicom.model_copy(update={"port": free_port(), "shutdown_grace_seconds": 1})
    storage = config.storage.model_copy(update={"directory": tmp_path / "storage"})
    node = DicomNode(dicom, storage, make_session_factory(engine), config.identity.conflict_policy)
    node.start()
    try:
        yield node
    finally:
        node.stop()
        engine.dispose()


def associate(node: DicomNode) -> tuple[Association, WaitingDul]:
    """A Verification association to the node, and the node's side of it (its DUL)."""
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", node.config.port, ae_title=node.config.ae_title)
    assert association.is_established
    wait_until(lambda: node.ae.active_associations, 5, "the node to hold the association")
    accepted = node.ae.active_associations[0].dul
    assert isinstance(accepted, WaitingDul)
    return association, accepted


def test_an_idle_association_waits_and_still_answers(
    node: DicomNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    wakes = {"dul": 0, "reactor": 0}
    dul_wait, reactor_wait = WaitingDul._wait, WaitingDimse.get_msg

    def counted_dul(self: WaitingDul) -> None:
        wakes["dul"] += 1
        dul_wait(self)

    def counted_reactor(self: WaitingDimse, block: bool = False) -> object:
        wakes["reactor"] += 1
        return reactor_wait(self, block)

    monkeypatch.setattr(WaitingDul, "_wait", counted_dul)
    monkeypatch.setattr(WaitingDimse, "get_msg", counted_reactor)
    association, accepted = associate(node)
    wait_until(lambda: wakes["dul"] and wakes["reactor"], 5, "the association's threads")

    idle = 1.0
    before = dict(wakes)
    time.sleep(idle)
    # pynetdicom polls every millisecond: about 1,000 wakes a second per thread.
    for thread in wakes:
        assert wakes[thread] - before[thread] <= 2 * idle / WAIT_SECONDS, thread

    assert association.send_c_echo().Status == 0x0000
    association.release()
    assert association.is_released
    wait_until(lambda: not node.ae.active_associations, 5, "the node to let the association go")
    # The thread that ran the association closed its wake-up pair and woke the reactor.
    assert accepted._wake_reader.fileno() == -1 and accepted._wake_writer.fileno() == -1


def test_a_peer_that_aborts_an_idle_association_is_let_go(node: DicomNode) -> None:
    association, accepted = associate(node)
    association.abort()
    wait_until(lambda: not node.ae.active_associations, 5, "the node to let the association go")
    wait_until(lambda: accepted._wake_reader.fileno() == -1, 5, "the wake-up pair to close")


def test_the_node_stopping_ends_an_idle_association(node: DicomNode) -> None:
    association, _ = associate(node)
    node.stop()
    wait_until(lambda: not association.is_established, 10, "the peer to see the end")
    assert not node.ae.active_associations
